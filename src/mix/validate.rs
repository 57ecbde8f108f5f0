//! Validation against trained references (method.md, "How they judge it"):
//! how well each way of predicting a mixture's scores ranks models actually
//! trained on those mixtures, and where final models land among them.
//!
//! The headline is the trade-off objective (the one the search optimises), not
//! a single domain's loss: a domain's loss is ranked almost perfectly by that
//! domain's own weight, so per-domain rho flatters any proxy. Trivial
//! predictors ([`weights_baseline`], [`linear_baseline`]) are judged by the same
//! measures on the same references so a proxy can be seen to beat them.

use serde::{Deserialize, Serialize};

use super::search::{Objective, Target};
use super::stats::{
    Direction, Interval, Regret, bootstrap_spearman, kendall_tau_b, rank_among, spearman,
    top_fraction_spearman, top_pick_regret,
};

/// Errors of a validation.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("validation: {0}")]
    Input(String),
}

/// What kind of predictor a score set is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictorKind {
    /// Models evaluated at the references' mixtures (merged or trained proxies).
    Proxy,
    /// A search's fitted predictor, refitted from its proxy table.
    Search,
    /// A trivial baseline the proxies must beat.
    Baseline,
}

/// Per-reference scores from one way of predicting them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSet {
    pub name: String,
    pub kind: PredictorKind,
    /// One row per reference, one score per target.
    pub scores: Vec<Vec<f64>>,
    /// Whether the scores are in the targets' units (capability recovery is
    /// only meaningful then).
    pub in_units: bool,
    /// Training tokens the predictor cost, when known.
    #[serde(default)]
    pub training_tokens: Option<u64>,
}

/// Settings of the measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidateConfig {
    pub targets: Vec<Target>,
    pub objective: Objective,
    /// The paper's top-25 %.
    pub top_fraction: f64,
    /// Bootstrap resamples for the confidence intervals (0: none).
    pub bootstrap: usize,
    pub level: f64,
    pub seed: u64,
}

/// One predictor on one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    /// Spearman's rho against the references (None when undefined, e.g. a
    /// constant prediction).
    pub spearman: Option<f64>,
    pub kendall: Option<f64>,
    /// Rho over the best `top_fraction` of references.
    pub top_spearman: Option<f64>,
    pub interval: Option<Interval>,
    /// Capability recovery, oriented so 1 is parity and less is worse: sum of
    /// proxy over sum of reference scores for higher-is-better targets, the
    /// inverse for losses.
    pub recovery: Option<f64>,
    /// The reference the predictor ranks best, and what picking it costs.
    pub regret: Option<Regret>,
}

/// Everything measured for one predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorReport {
    pub name: String,
    pub kind: PredictorKind,
    pub training_tokens: Option<u64>,
    /// Per target, in the targets' order.
    pub targets: Vec<Measures>,
    /// Mean over targets of the per-target rhos (the paper's macro rho); an
    /// undefined rho (a constant prediction) counts as 0.
    pub macro_spearman: Option<f64>,
    pub macro_top_spearman: Option<f64>,
    pub macro_recovery: Option<f64>,
    /// The headline: the measures on the search objective's values.
    pub objective: Measures,
}

/// Where a final model lands among the references.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalReport {
    pub name: String,
    pub scores: Vec<f64>,
    /// Rank among the references per target (1 = best, ties averaged).
    pub ranks: Vec<f64>,
    /// Mean of `ranks` (the paper's macro rank; lower is better).
    pub macro_rank: f64,
    /// Rank of its objective value among the references' (recomputed over
    /// the references plus this model).
    pub objective_rank: f64,
}

/// The result of a validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub targets: Vec<Target>,
    pub objective: Objective,
    pub references: usize,
    pub mixtures: Vec<Vec<f64>>,
    pub reference_scores: Vec<Vec<f64>>,
    /// The references' objective values (lower is better).
    pub reference_objective: Vec<f64>,
    pub predictors: Vec<PredictorReport>,
    /// The per-reference scores of each predictor, in `predictors`' order.
    pub predicted: Vec<Vec<Vec<f64>>>,
    pub finals: Vec<FinalReport>,
    pub top_fraction: f64,
    /// Problems a reader must see (e.g. merges that do not work).
    pub warnings: Vec<String>,
}

fn check_rows(what: &str, rows: &[Vec<f64>], n: usize, t: usize) -> Result<(), ValidateError> {
    if rows.len() != n {
        return Err(ValidateError::Input(format!(
            "{what}: {} rows for {n} references",
            rows.len()
        )));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.len() != t || r.iter().any(|x| !x.is_finite()) {
            return Err(ValidateError::Input(format!(
                "{what}: row {i} is not {t} finite scores: {r:?}"
            )));
        }
    }
    Ok(())
}

fn col(rows: &[Vec<f64>], t: usize) -> Vec<f64> {
    rows.iter().map(|r| r[t]).collect()
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn measures(
    cfg: &ValidateConfig,
    pred: &[f64],
    reference: &[f64],
    dir: Direction,
    in_units: bool,
) -> Measures {
    // A predictor predicts scores, so rho compares scores with scores whatever
    // their direction; regret and the top set use the target's direction.
    let interval = (cfg.bootstrap > 0)
        .then(|| bootstrap_spearman(pred, reference, cfg.bootstrap, cfg.level, cfg.seed).ok())
        .flatten();
    let recovery = in_units
        .then(|| {
            let (p, r): (f64, f64) = (pred.iter().sum(), reference.iter().sum());
            match dir {
                Direction::HigherIsBetter if r != 0.0 => Some(p / r),
                Direction::LowerIsBetter if p != 0.0 => Some(r / p),
                _ => None,
            }
        })
        .flatten();
    // Fewer than 3 references in the top set rank nothing (2 points give +-1).
    let top_n = (cfg.top_fraction * reference.len() as f64).ceil() as usize;
    Measures {
        spearman: spearman(pred, reference).ok(),
        kendall: kendall_tau_b(pred, reference).ok(),
        top_spearman: (top_n >= 3)
            .then(|| top_fraction_spearman(pred, reference, cfg.top_fraction, dir).ok())
            .flatten(),
        interval,
        recovery,
        regret: top_pick_regret(pred, reference, dir).ok(),
    }
}

/// Measures every predictor against the references and ranks the finals.
pub fn validate(
    cfg: &ValidateConfig,
    mixtures: Vec<Vec<f64>>,
    references: Vec<Vec<f64>>,
    sets: Vec<ScoreSet>,
    finals: Vec<(String, Vec<f64>)>,
) -> Result<Validation, ValidateError> {
    let n = references.len();
    let t = cfg.targets.len();
    if t == 0 {
        return Err(ValidateError::Input("no targets".into()));
    }
    if n < 3 {
        return Err(ValidateError::Input(format!(
            "{n} references are too few to rank (need at least 3)"
        )));
    }
    if mixtures.len() != n {
        return Err(ValidateError::Input(format!(
            "{} mixtures for {n} references",
            mixtures.len()
        )));
    }
    check_rows("reference scores", &references, n, t)?;
    let reference_objective = cfg.objective.values(&cfg.targets, &references);
    let mut predictors = Vec::new();
    let mut predicted = Vec::new();
    for s in sets {
        check_rows(&s.name, &s.scores, n, t)?;
        let targets: Vec<Measures> = (0..t)
            .map(|k| {
                measures(
                    cfg,
                    &col(&s.scores, k),
                    &col(&references, k),
                    cfg.targets[k].direction,
                    s.in_units,
                )
            })
            .collect();
        let top_defined = (cfg.top_fraction * n as f64).ceil() as usize >= 3;
        let obj = cfg.objective.values(&cfg.targets, &s.scores);
        let objective = measures(
            cfg,
            &obj,
            &reference_objective,
            Direction::LowerIsBetter,
            false,
        );
        predictors.push(PredictorReport {
            name: s.name,
            kind: s.kind,
            training_tokens: s.training_tokens,
            // A target the predictor says nothing about (a constant) counts as
            // rho 0, so a predictor cannot look good by skipping the hard targets.
            macro_spearman: mean(targets.iter().map(|m| m.spearman.unwrap_or(0.0))),
            macro_top_spearman: (top_defined)
                .then(|| mean(targets.iter().map(|m| m.top_spearman.unwrap_or(0.0))))
                .flatten(),
            macro_recovery: mean(targets.iter().filter_map(|m| m.recovery)),
            targets,
            objective,
        });
        predicted.push(s.scores);
    }
    let mut out_finals = Vec::new();
    for (name, scores) in finals {
        if scores.len() != t || scores.iter().any(|x| !x.is_finite()) {
            return Err(ValidateError::Input(format!(
                "final `{name}`: {scores:?} is not {t} finite scores"
            )));
        }
        let ranks: Vec<f64> = (0..t)
            .map(|k| rank_among(scores[k], &col(&references, k), cfg.targets[k].direction))
            .collect();
        let mut all = references.clone();
        all.push(scores.clone());
        let obj = cfg.objective.values(&cfg.targets, &all);
        let (mine, rest) = obj.split_last().expect("not empty");
        out_finals.push(FinalReport {
            name,
            macro_rank: ranks.iter().sum::<f64>() / t as f64,
            ranks,
            objective_rank: rank_among(*mine, rest, Direction::LowerIsBetter),
            scores,
        });
    }
    Ok(Validation {
        targets: cfg.targets.clone(),
        objective: cfg.objective.clone(),
        references: n,
        mixtures,
        reference_scores: references,
        reference_objective,
        predictors,
        predicted,
        finals: out_finals,
        top_fraction: cfg.top_fraction,
        warnings: Vec::new(),
    })
}

/// The weights alone: a target that is a candidate is predicted by that
/// candidate's weight (more weight, better score); any other target gets no
/// information (a constant).
pub fn weights_baseline(
    targets: &[Target],
    candidates: &[String],
    mixtures: &[Vec<f64>],
) -> Vec<Vec<f64>> {
    mixtures
        .iter()
        .map(|w| {
            targets
                .iter()
                .map(|t| match candidates.iter().position(|c| *c == t.name) {
                    Some(i) => match t.direction {
                        Direction::LowerIsBetter => -w[i],
                        Direction::HigherIsBetter => w[i],
                    },
                    None => 0.0,
                })
                .collect()
        })
        .collect()
}

/// The weighted sum of the components' own scores: `sum_i w_i * s_t(i)`.
/// `components[i][t]` is component i's score on target t.
pub fn linear_baseline(components: &[Vec<f64>], mixtures: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let t = components.first().map_or(0, Vec::len);
    mixtures
        .iter()
        .map(|w| {
            (0..t)
                .map(|k| w.iter().zip(components).map(|(a, c)| a * c[k]).sum())
                .collect()
        })
        .collect()
}

/// Warnings when merged proxies are worse than every component they merge on
/// most mixtures: the sign that the components do not share a base, so a
/// weighted average of their weights is no model of a mixture.
pub fn merge_warnings(
    targets: &[Target],
    components: &[Vec<f64>],
    merged: &[Vec<f64>],
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, t) in targets.iter().enumerate() {
        let comp: Vec<f64> = components.iter().map(|c| c[k]).collect();
        let worst = match t.direction {
            Direction::LowerIsBetter => comp.iter().copied().fold(f64::MIN, f64::max),
            Direction::HigherIsBetter => comp.iter().copied().fold(f64::MAX, f64::min),
        };
        let worse = merged
            .iter()
            .filter(|r| match t.direction {
                Direction::LowerIsBetter => r[k] > worst,
                Direction::HigherIsBetter => r[k] < worst,
            })
            .count();
        if worse * 2 > merged.len() {
            out.push(format!(
                "merged proxies are worse than every component on `{}` for {worse} of {} mixtures (worst component {worst:.4}): the components do not look like fine-tunes of one base, so their merges do not model mixtures",
                t.name,
                merged.len()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets: Vec<Target>) -> ValidateConfig {
        ValidateConfig {
            targets,
            objective: Objective::MeanPercentileRank,
            top_fraction: 0.25,
            bootstrap: 200,
            level: 0.9,
            seed: 1,
        }
    }

    #[test]
    fn perfect_and_reversed_predictors() {
        let targets = vec![Target::loss("a"), Target::loss("b")];
        let mixtures: Vec<Vec<f64>> = (0..8)
            .map(|i| vec![i as f64 / 7.0, 1.0 - i as f64 / 7.0])
            .collect();
        // Loss a falls with weight a; loss b falls with weight b.
        let refs: Vec<Vec<f64>> = mixtures
            .iter()
            .map(|w| vec![3.0 - w[0], 3.0 - w[1] + 0.1 * w[0] * w[0]])
            .collect();
        let exact = ScoreSet {
            name: "exact".into(),
            kind: PredictorKind::Proxy,
            scores: refs.clone(),
            in_units: true,
            training_tokens: Some(10),
        };
        let reversed = ScoreSet {
            name: "reversed".into(),
            kind: PredictorKind::Baseline,
            scores: refs
                .iter()
                .map(|r| r.iter().map(|x| -x).collect())
                .collect(),
            in_units: false,
            training_tokens: None,
        };
        let finals = vec![("best".to_string(), vec![1.0, 1.0])];
        let v = validate(
            &cfg(targets.clone()),
            mixtures.clone(),
            refs,
            vec![exact, reversed],
            finals,
        )
        .unwrap();
        let e = &v.predictors[0];
        assert_eq!(e.macro_spearman, Some(1.0));
        assert_eq!(e.targets[0].kendall, Some(1.0));
        assert_eq!(e.macro_recovery, Some(1.0));
        assert_eq!(e.objective.regret.as_ref().unwrap().regret, 0.0);
        let r = &v.predictors[1];
        assert_eq!(r.macro_spearman, Some(-1.0));
        assert_eq!(r.macro_recovery, None, "not in the targets' units");
        assert_eq!(v.finals[0].ranks, vec![1.0, 1.0]);
        assert_eq!(v.finals[0].macro_rank, 1.0);
        assert_eq!(v.finals[0].objective_rank, 1.0);
        // The weights baseline ranks each own-domain loss perfectly: the trap.
        let w = weights_baseline(&targets, &["a".into(), "b".into()], &mixtures);
        assert_eq!(spearman(&col(&w, 0), &col(&v.reference_scores, 0)), Ok(1.0));
    }

    #[test]
    fn baselines_and_merge_warnings() {
        let comps = vec![vec![2.0, 4.0], vec![4.0, 2.0]];
        let lin = linear_baseline(&comps, &[vec![0.25, 0.75]]);
        assert_eq!(lin, vec![vec![3.5, 2.5]]);
        let targets = vec![Target::loss("a"), Target::loss("b")];
        let w = weights_baseline(&targets, &["b".into(), "x".into()], &[vec![0.3, 0.7]]);
        assert_eq!(w, vec![vec![0.0, -0.3]]);
        assert!(merge_warnings(&targets, &comps, &[vec![3.0, 3.0], vec![2.5, 3.5]]).is_empty());
        let bad = merge_warnings(&targets, &comps, &[vec![7.0, 3.0], vec![8.0, 9.0]]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("`a`"), "{bad:?}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = cfg(vec![Target::loss("a")]);
        let m = vec![vec![1.0]; 3];
        assert!(validate(&c, m.clone(), vec![vec![1.0]; 2], vec![], vec![]).is_err());
        assert!(
            validate(
                &c,
                m.clone(),
                vec![vec![1.0], vec![2.0], vec![f64::NAN]],
                vec![],
                vec![]
            )
            .is_err()
        );
        let short = ScoreSet {
            name: "s".into(),
            kind: PredictorKind::Proxy,
            scores: vec![vec![1.0]; 2],
            in_units: true,
            training_tokens: None,
        };
        let e = validate(
            &c,
            m,
            vec![vec![1.0], vec![2.0], vec![3.0]],
            vec![short],
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 rows for 3"), "{e}");
    }
}
