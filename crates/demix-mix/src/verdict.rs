//! The verdict on a chosen mixture: final models trained on it and on a
//! baseline mixture (uniform, RegMix's) with the same seeds, compared seed by
//! seed, on the search objective and per target, with a t interval.
//!
//! Pairing by seed removes what the seeds share (the same initialisation noise
//! draws on both sides when the seed fixes them), and the interval says how
//! much a difference can be trusted with the seeds there are. One seed gives a
//! difference but no verdict.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT, StudentsTError};

use super::search::{Objective, Target};
use super::stats::Direction;

/// The confidence level of every interval here.
pub const LEVEL: f64 = 0.9;

/// A paired mean difference with its interval (chosen minus baseline, in the
/// score's own direction: for losses, negative is better).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub mean: f64,
    /// The `LEVEL` t interval; `None` with one pair.
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub pairs: usize,
}

/// Why two sides cannot be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerdictError {
    /// The sides' model counts (seeds), which must be equal and not 0.
    #[error("{0} against {1} models: compare as many seeds on each side, in the same order")]
    Unpaired(usize, usize),
    #[error("a score is not a finite number")]
    NotFinite,
    #[error("{0}")]
    Interval(#[from] StudentsTError),
    #[error("a model has {scores} scores for {targets} targets")]
    Scores { scores: usize, targets: usize },
    /// The comparison on the objective of `chosen` against `baseline`.
    #[error("`{chosen}` against `{baseline}`: {source}")]
    Objective {
        chosen: String,
        baseline: String,
        source: Box<VerdictError>,
    },
}

/// The mean of `a - b` with a two-sided t interval at `level`.
pub fn paired(a: &[f64], b: &[f64], level: f64) -> Result<Difference, VerdictError> {
    if a.len() != b.len() || a.is_empty() {
        return Err(VerdictError::Unpaired(a.len(), b.len()));
    }
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return Err(VerdictError::NotFinite);
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    if d.len() < 2 {
        return Ok(Difference {
            mean,
            lo: None,
            hi: None,
            pairs: 1,
        });
    }
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let t = StudentsT::new(0.0, 1.0, n - 1.0)?.inverse_cdf(0.5 + level / 2.0);
    let half = t * (var / n).sqrt();
    Ok(Difference {
        mean,
        lo: Some(mean - half),
        hi: Some(mean + half),
        pairs: d.len(),
    })
}

/// How the comparison came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The interval lies wholly on the better side.
    Better,
    /// The interval lies wholly on the worse side.
    Worse,
    /// The interval holds 0.
    NoDifference,
    /// One seed: no interval, no verdict.
    Undetermined,
}

/// One target's paired difference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetDifference {
    pub target: String,
    pub direction: Direction,
    pub difference: Difference,
    pub outcome: Outcome,
}

/// The chosen mixture's final models against a baseline's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub chosen: String,
    pub baseline: String,
    /// The objective's manifest name (lower is better).
    pub objective: String,
    pub seeds: usize,
    pub level: f64,
    /// The objective's paired difference, chosen minus baseline.
    pub difference: Difference,
    pub outcome: Outcome,
    pub targets: Vec<TargetDifference>,
    /// The verdict in one sentence.
    pub sentence: String,
}

fn outcome(d: &Difference, dir: Direction) -> Outcome {
    let (Some(lo), Some(hi)) = (d.lo, d.hi) else {
        return Outcome::Undetermined;
    };
    let (better, worse) = match dir {
        Direction::LowerIsBetter => (hi < 0.0, lo > 0.0),
        Direction::HigherIsBetter => (lo > 0.0, hi < 0.0),
    };
    if better {
        Outcome::Better
    } else if worse {
        Outcome::Worse
    } else {
        Outcome::NoDifference
    }
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

/// Each model's objective value, ranked or scaled within `population` (the
/// search's proxies, or the references) so it means what it means there.
pub fn objective_of(
    objective: &Objective,
    targets: &[Target],
    population: &[Vec<f64>],
    rows: &[Vec<f64>],
) -> Vec<f64> {
    let obj = objective.scaled_by(population, targets.len());
    rows.iter()
        .map(|r| {
            let mut all = population.to_vec();
            all.push(r.clone());
            *obj.values(targets, &all).last().expect("not empty")
        })
        .collect()
}

/// Compares `chosen` with `baseline`: one row of per-target scores per seed on
/// each side, in the same seed order.
pub fn verdict(
    chosen: (&str, &[Vec<f64>]),
    baseline: (&str, &[Vec<f64>]),
    targets: &[Target],
    objective: &Objective,
    population: &[Vec<f64>],
) -> Result<Verdict, VerdictError> {
    let (cn, c) = chosen;
    let (bn, b) = baseline;
    let t = targets.len();
    if let Some(r) = c.iter().chain(b).find(|r| r.len() != t) {
        return Err(VerdictError::Scores {
            scores: r.len(),
            targets: t,
        });
    }
    let oc = objective_of(objective, targets, population, c);
    let ob = objective_of(objective, targets, population, b);
    let difference = paired(&oc, &ob, LEVEL).map_err(|e| VerdictError::Objective {
        chosen: cn.to_string(),
        baseline: bn.to_string(),
        source: Box::new(e),
    })?;
    let out = outcome(&difference, Direction::LowerIsBetter);
    let mut per_target = Vec::new();
    for (k, target) in targets.iter().enumerate() {
        let a: Vec<f64> = c.iter().map(|r| r[k]).collect();
        let z: Vec<f64> = b.iter().map(|r| r[k]).collect();
        let d = paired(&a, &z, LEVEL)?;
        per_target.push(TargetDifference {
            target: target.name.clone(),
            direction: target.direction,
            outcome: outcome(&d, target.direction),
            difference: d,
        });
    }
    let n = c.len();
    let gain = -difference.mean;
    // Each sentence states its number and interval the way it reads: as a
    // gain for "beats" and "no difference", as a loss for "is worse".
    let interval = |sign: f64| match (difference.lo, difference.hi) {
        (Some(lo), Some(hi)) => {
            let (a, b) = (sign * lo, sign * hi);
            format!(" [{}, {}]", num(a.min(b)), num(a.max(b)))
        }
        _ => String::new(),
    };
    let name = objective.name();
    let sentence = match out {
        Outcome::Better => format!(
            "`{cn}` beats `{bn}` on the objective ({name}) by {}{} over {n} seeds ({:.0}% interval).",
            num(gain),
            interval(-1.0),
            LEVEL * 100.0
        ),
        Outcome::Worse => format!(
            "`{cn}` is worse than `{bn}` on the objective ({name}) by {}{} over {n} seeds ({:.0}% interval).",
            num(-gain),
            interval(1.0),
            LEVEL * 100.0
        ),
        Outcome::NoDifference => format!(
            "no difference between `{cn}` and `{bn}` on the objective ({name}) is detectable with {n} seeds: {}{} in `{cn}`'s favour ({:.0}% interval).",
            num(gain),
            interval(-1.0),
            LEVEL * 100.0
        ),
        Outcome::Undetermined => format!(
            "one seed: `{cn}` is {} than `{bn}` on the objective ({name}) by {}, which says nothing without more seeds (train the finals with several).",
            if gain >= 0.0 { "better" } else { "worse" },
            num(gain.abs())
        ),
    };
    Ok(Verdict {
        chosen: cn.to_string(),
        baseline: bn.to_string(),
        objective: name.to_string(),
        seeds: n,
        level: LEVEL,
        difference,
        outcome: out,
        targets: per_target,
        sentence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<Target> {
        vec![Target::loss("a"), Target::loss("b")]
    }

    #[test]
    fn paired_interval_matches_the_t_distribution() {
        // d = (1, 2, 3): mean 2, sd 1, t(0.95, 2) = 2.919986.
        let d = paired(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0], 0.9).unwrap();
        assert!((d.mean - 2.0).abs() < 1e-12);
        let half = 2.919_986 / 3f64.sqrt();
        assert!((d.lo.unwrap() - (2.0 - half)).abs() < 1e-5, "{d:?}");
        assert!((d.hi.unwrap() - (2.0 + half)).abs() < 1e-5, "{d:?}");
        let one = paired(&[1.0], &[0.5], 0.9).unwrap();
        assert_eq!((one.lo, one.hi, one.pairs), (None, None, 1));
        assert_eq!(
            paired(&[1.0, 2.0], &[1.0], 0.9).unwrap_err().to_string(),
            "2 against 1 models: compare as many seeds on each side, in the same order"
        );
        assert_eq!(
            paired(&[f64::NAN], &[1.0], 0.9).unwrap_err().to_string(),
            "a score is not a finite number"
        );
    }

    #[test]
    fn win_loss_and_tie() {
        let t = targets();
        let base = vec![vec![3.0, 2.0], vec![3.1, 2.1], vec![2.9, 1.9]];
        let shift = |dx: f64, jitter: [f64; 3]| -> Vec<Vec<f64>> {
            base.iter()
                .zip(jitter)
                .map(|(r, j)| r.iter().map(|x| x + dx + j).collect())
                .collect()
        };
        let obj = Objective::MeanLoss;
        // Clearly lower losses on every seed: a win, per target too.
        let v = verdict(
            ("demix", &shift(-0.1, [0.0, 0.01, -0.01])),
            ("uniform", &base),
            &t,
            &obj,
            &[],
        )
        .unwrap();
        assert_eq!(v.outcome, Outcome::Better, "{}", v.sentence);
        assert!(
            v.sentence.starts_with("`demix` beats `uniform`"),
            "{}",
            v.sentence
        );
        assert!(v.targets.iter().all(|d| d.outcome == Outcome::Better));
        // Clearly higher: a loss.
        let v = verdict(
            ("demix", &shift(0.1, [0.0, 0.01, -0.01])),
            ("uniform", &base),
            &t,
            &obj,
            &[],
        )
        .unwrap();
        assert_eq!(v.outcome, Outcome::Worse);
        assert!(v.sentence.contains("is worse than"), "{}", v.sentence);
        // Differences that change sign from seed to seed: no verdict.
        let v = verdict(
            ("demix", &shift(0.0, [0.05, -0.06, 0.02])),
            ("uniform", &base),
            &t,
            &obj,
            &[],
        )
        .unwrap();
        assert_eq!(v.outcome, Outcome::NoDifference);
        assert!(v.sentence.contains("no difference"), "{}", v.sentence);
        // One seed: a difference, no verdict.
        let v = verdict(
            ("demix", &shift(-0.1, [0.0; 3])[..1]),
            ("uniform", &base[..1]),
            &t,
            &obj,
            &[],
        )
        .unwrap();
        assert_eq!(v.outcome, Outcome::Undetermined);
        assert!(v.sentence.starts_with("one seed"), "{}", v.sentence);
    }

    #[test]
    fn rank_objectives_rank_within_the_population() {
        let t = targets();
        let population: Vec<Vec<f64>> = (0..10).map(|i| vec![i as f64, 10.0 - i as f64]).collect();
        // Best on both targets: rank 0 among the population plus itself.
        let v = objective_of(
            &Objective::MeanPercentileRank,
            &t,
            &population,
            &[vec![-1.0, -1.0]],
        );
        assert_eq!(v, vec![0.0]);
        // Standardised by the population's spreads, not its own.
        let s = objective_of(
            &Objective::Standardized { scales: vec![] },
            &t,
            &population,
            &[vec![1.0, 1.0]],
        );
        let sd = super::super::search::spreads(&population, 2);
        assert!((s[0] - (1.0 / sd[0] + 1.0 / sd[1]) / 2.0).abs() < 1e-9);
    }
}
