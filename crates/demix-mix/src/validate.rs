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

use super::search::{OBJECTIVE_NAMES, Objective, Target};
use super::stats::{
    Direction, Interval, Regret, bootstrap_spearman, kendall_tau_b, rank_among, spearman,
    top_fraction_spearman, top_pick_regret,
};
use super::verdict::{Verdict, verdict};

/// A target (or objective) whose signal across mixtures is under this many
/// times its seed-to-seed noise is flagged: at a ratio of 2 a single
/// replicate's reliability is 0.8 (`snr^2 / (1 + snr^2)`), the level below
/// which its ranking cannot be trusted.
pub const FLAG_SNR: f64 = 2.0;

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
    /// Final models to compare, seed by seed: (chosen, baseline) labels.
    #[serde(default)]
    pub verdicts: Vec<(String, String)>,
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
    /// `spearman` as a fraction of the noise ceiling (with replicas).
    #[serde(default)]
    pub of_ceiling: Option<f64>,
}

/// How much of a ranking of the references is seed noise, from replicas: the
/// same mixtures trained again with other seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    pub replicas: usize,
    /// Spearman rho between replicate sets (mean over pairs of replicas).
    pub replicate_rho: f64,
    /// The rho a noiseless predictor would reach against the references as
    /// validated (the mean of the replicas): `sqrt(R r / (1 + (R - 1) r))`,
    /// the Spearman-Brown reliability of a mean of R replicas with
    /// replicate correlation r, under the square root (the attenuation of a
    /// correlation by noise on one side). r below 0 counts as 0.
    pub ceiling: f64,
}

impl Ceiling {
    /// The ceiling of `sets`: one score list per replica, over the same mixtures.
    pub fn of(sets: &[Vec<f64>]) -> Option<Ceiling> {
        let r = sets.len();
        if r < 2 {
            return None;
        }
        let mut rhos = Vec::new();
        for i in 0..r {
            for j in i + 1..r {
                rhos.push(spearman(&sets[i], &sets[j]).unwrap_or(0.0));
            }
        }
        let rho = rhos.iter().sum::<f64>() / rhos.len() as f64;
        let rc = rho.max(0.0);
        let rf = r as f64;
        Some(Ceiling {
            replicas: r,
            replicate_rho: rho,
            ceiling: (rf * rc / (1.0 + (rf - 1.0) * rc)).sqrt(),
        })
    }
}

/// One target's signal against its seed noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedNoise {
    pub target: String,
    /// Standard deviation across mixtures of the replica means.
    pub spread: f64,
    /// Seed-to-seed standard deviation, pooled within mixtures.
    pub noise: f64,
    /// `spread / noise`.
    pub signal_to_noise: f64,
    pub ceiling: Option<Ceiling>,
    /// Signal under `FLAG_SNR` times the noise.
    pub flagged: bool,
}

fn sd(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = x.iter().sum::<f64>() / x.len() as f64;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Spread, noise and ceiling of one score per replica and mixture
/// (`sets[r][i]`).
pub fn seed_noise(target: &str, sets: &[Vec<f64>]) -> SeedNoise {
    let (r, n) = (sets.len(), sets.first().map_or(0, Vec::len));
    let means: Vec<f64> = (0..n)
        .map(|i| sets.iter().map(|s| s[i]).sum::<f64>() / r as f64)
        .collect();
    let ss: f64 = (0..n)
        .map(|i| sets.iter().map(|s| (s[i] - means[i]).powi(2)).sum::<f64>())
        .sum();
    let dof = (n * r.saturating_sub(1)).max(1) as f64;
    let noise = (ss / dof).sqrt();
    let spread = sd(&means);
    let snr = if noise > 0.0 {
        spread / noise
    } else {
        f64::INFINITY
    };
    SeedNoise {
        target: target.to_string(),
        spread,
        noise,
        signal_to_noise: snr,
        ceiling: Ceiling::of(sets),
        flagged: snr < FLAG_SNR,
    }
}

/// One objective's view of a validation: the headline rho of every predictor
/// on it, against its noise ceiling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveView {
    /// The objective, standardised scales fixed to the references' spreads.
    pub objective: Objective,
    pub ceiling: Option<Ceiling>,
    /// The objective's own signal against its seed noise (with replicas).
    pub noise: Option<SeedNoise>,
    /// Per predictor, in `predictors`' order.
    pub predictors: Vec<ObjectiveMeasure>,
    /// Per final model: its rank among the references on this objective.
    pub finals: Vec<(String, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveMeasure {
    pub name: String,
    pub spearman: Option<f64>,
    pub interval: Option<Interval>,
    pub of_ceiling: Option<f64>,
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
    /// Scores, averaged over its seeds.
    pub scores: Vec<f64>,
    /// Each seed's scores, in order.
    #[serde(default)]
    pub seeds: Vec<Vec<f64>>,
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
    /// Replicas per reference mixture (1: no noise measure).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Per target, with replicas: signal against seed noise.
    #[serde(default)]
    pub noise: Vec<SeedNoise>,
    /// Every objective side by side: the headline first.
    #[serde(default)]
    pub objectives: Vec<ObjectiveView>,
    /// Final models compared seed by seed.
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
}

fn one() -> usize {
    1
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
        of_ceiling: None,
    }
}

fn of_ceiling(rho: Option<f64>, c: Option<&Ceiling>) -> Option<f64> {
    match (rho, c) {
        (Some(r), Some(c)) if c.ceiling > 0.0 => Some(r / c.ceiling),
        _ => None,
    }
}

/// Measures every predictor against the references and ranks the finals.
///
/// `replicas` holds one set of reference rows per replica (the same mixtures
/// trained with another seed); the references are their mean. `finals` holds
/// one row per seed for each final model.
pub fn validate(
    cfg: &ValidateConfig,
    mixtures: Vec<Vec<f64>>,
    replicas: Vec<Vec<Vec<f64>>>,
    sets: Vec<ScoreSet>,
    finals: Vec<(String, Vec<Vec<f64>>)>,
) -> Result<Validation, ValidateError> {
    let (n, t) = check_references(cfg, &mixtures, &replicas)?;
    let r = replicas.len();
    let references: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..t)
                .map(|k| replicas.iter().map(|s| s[i][k]).sum::<f64>() / r as f64)
                .collect()
        })
        .collect();
    let noise: Vec<SeedNoise> = if r >= 2 {
        cfg.targets
            .iter()
            .enumerate()
            .map(|(k, target)| {
                let per: Vec<Vec<f64>> = replicas.iter().map(|s| col(s, k)).collect();
                seed_noise(&target.name, &per)
            })
            .collect()
    } else {
        Vec::new()
    };
    let headline = cfg.objective.scaled_by(&references, t);
    let reference_objective = headline.values(&cfg.targets, &references);
    let headline_ceiling = Ceiling::of(
        &replicas
            .iter()
            .map(|s| headline.values(&cfg.targets, s))
            .collect::<Vec<_>>(),
    );
    let mut predictors = Vec::new();
    let mut predicted = Vec::new();
    for s in sets {
        check_rows(&s.name, &s.scores, n, t)?;
        predictors.push(predictor_report(
            cfg,
            &s,
            &references,
            &noise,
            &headline,
            &reference_objective,
            headline_ceiling.as_ref(),
        ));
        predicted.push(s.scores);
    }
    let mut out_finals = Vec::new();
    for (name, seeds) in &finals {
        out_finals.push(final_report(cfg, name, seeds, &references, &headline)?);
    }
    let objectives = objective_views(
        cfg,
        &headline,
        &references,
        &replicas,
        &predictors,
        &predicted,
        &out_finals,
    );
    let verdicts = verdicts(cfg, &finals, &headline, &references)?;
    Ok(Validation {
        targets: cfg.targets.clone(),
        objective: headline,
        references: n,
        mixtures,
        reference_scores: references,
        reference_objective,
        predictors,
        predicted,
        finals: out_finals,
        top_fraction: cfg.top_fraction,
        warnings: Vec::new(),
        replicas: r,
        noise,
        objectives,
        verdicts,
    })
}

/// Checks that there are targets, enough references to rank, one mixture per
/// reference and a full row of finite scores per reference in each replica;
/// returns the number of references and of targets.
fn check_references(
    cfg: &ValidateConfig,
    mixtures: &[Vec<f64>],
    replicas: &[Vec<Vec<f64>>],
) -> Result<(usize, usize), ValidateError> {
    let n = replicas.first().map_or(0, Vec::len);
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
    for (r, rows) in replicas.iter().enumerate() {
        check_rows(&format!("reference scores (replica {})", r + 1), rows, n, t)?;
    }
    Ok((n, t))
}

/// How well one predictor's scores rank the references: per target, and on
/// the headline objective (with its replica ceiling).
fn predictor_report(
    cfg: &ValidateConfig,
    s: &ScoreSet,
    references: &[Vec<f64>],
    noise: &[SeedNoise],
    headline: &Objective,
    reference_objective: &[f64],
    headline_ceiling: Option<&Ceiling>,
) -> PredictorReport {
    let targets: Vec<Measures> = (0..cfg.targets.len())
        .map(|k| {
            let mut m = measures(
                cfg,
                &col(&s.scores, k),
                &col(references, k),
                cfg.targets[k].direction,
                s.in_units,
            );
            m.of_ceiling = of_ceiling(m.spearman, noise.get(k).and_then(|x| x.ceiling.as_ref()));
            m
        })
        .collect();
    let top_defined = (cfg.top_fraction * references.len() as f64).ceil() as usize >= 3;
    let obj = headline.values(&cfg.targets, &s.scores);
    let mut objective = measures(
        cfg,
        &obj,
        reference_objective,
        Direction::LowerIsBetter,
        false,
    );
    objective.of_ceiling = of_ceiling(objective.spearman, headline_ceiling);
    PredictorReport {
        name: s.name.clone(),
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
    }
}

/// A final model's mean scores over its seeds and its rank among the
/// references, per target and on the headline objective.
fn final_report(
    cfg: &ValidateConfig,
    name: &str,
    seeds: &[Vec<f64>],
    references: &[Vec<f64>],
    headline: &Objective,
) -> Result<FinalReport, ValidateError> {
    let t = cfg.targets.len();
    if seeds.is_empty()
        || seeds
            .iter()
            .any(|r| r.len() != t || r.iter().any(|x| !x.is_finite()))
    {
        return Err(ValidateError::Input(format!(
            "final `{name}`: {seeds:?} is not one row of {t} finite scores per seed"
        )));
    }
    let scores: Vec<f64> = (0..t)
        .map(|k| seeds.iter().map(|r| r[k]).sum::<f64>() / seeds.len() as f64)
        .collect();
    let ranks: Vec<f64> = (0..t)
        .map(|k| rank_among(scores[k], &col(references, k), cfg.targets[k].direction))
        .collect();
    Ok(FinalReport {
        name: name.to_string(),
        macro_rank: ranks.iter().sum::<f64>() / t as f64,
        ranks,
        objective_rank: final_rank(headline, &cfg.targets, references, &scores),
        scores,
        seeds: seeds.to_vec(),
    })
}

/// Every objective side by side, the headline first: each one's replica
/// ceiling and noise, how each predictor ranks on it and each final's rank.
fn objective_views(
    cfg: &ValidateConfig,
    headline: &Objective,
    references: &[Vec<f64>],
    replicas: &[Vec<Vec<f64>>],
    predictors: &[PredictorReport],
    predicted: &[Vec<Vec<f64>>],
    finals: &[FinalReport],
) -> Vec<ObjectiveView> {
    let t = cfg.targets.len();
    let mut names: Vec<&str> = vec![headline.name()];
    for n in OBJECTIVE_NAMES {
        if !names.contains(&n) && n != "weighted_loss" {
            names.push(n);
        }
    }
    let mut objectives = Vec::new();
    for name in names {
        let o = if name == headline.name() {
            headline.clone()
        } else {
            Objective::named(name, None, t)
                .expect("known name")
                .scaled_by(references, t)
        };
        let reference = o.values(&cfg.targets, references);
        let per_replica: Vec<Vec<f64>> =
            replicas.iter().map(|s| o.values(&cfg.targets, s)).collect();
        let ceiling = Ceiling::of(&per_replica);
        let noise = (replicas.len() >= 2).then(|| seed_noise(name, &per_replica));
        let measures =
            objective_measures(cfg, &o, &reference, ceiling.as_ref(), predictors, predicted);
        let finals = finals
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    final_rank(&o, &cfg.targets, references, &f.scores),
                )
            })
            .collect();
        objectives.push(ObjectiveView {
            objective: o,
            ceiling,
            noise,
            predictors: measures,
            finals,
        });
    }
    objectives
}

/// How each predictor's scores rank the references on objective `o`
/// (`reference` is the references' values of it).
fn objective_measures(
    cfg: &ValidateConfig,
    o: &Objective,
    reference: &[f64],
    ceiling: Option<&Ceiling>,
    predictors: &[PredictorReport],
    predicted: &[Vec<Vec<f64>>],
) -> Vec<ObjectiveMeasure> {
    predictors
        .iter()
        .zip(predicted)
        .map(|(p, rows)| {
            let v = o.values(&cfg.targets, rows);
            let rho = spearman(&v, reference).ok();
            ObjectiveMeasure {
                name: p.name.clone(),
                spearman: rho,
                interval: (cfg.bootstrap > 0)
                    .then(|| {
                        bootstrap_spearman(&v, reference, cfg.bootstrap, cfg.level, cfg.seed).ok()
                    })
                    .flatten(),
                of_ceiling: of_ceiling(rho, ceiling),
            }
        })
        .collect()
}

/// The verdict of each (chosen, baseline) pair of final models the config asks for.
fn verdicts(
    cfg: &ValidateConfig,
    finals: &[(String, Vec<Vec<f64>>)],
    headline: &Objective,
    references: &[Vec<f64>],
) -> Result<Vec<Verdict>, ValidateError> {
    let mut verdicts = Vec::new();
    for (chosen, baseline) in &cfg.verdicts {
        let side = |label: &str| {
            finals
                .iter()
                .find(|(n, _)| n == label)
                .map(|(_, rows)| rows.as_slice())
                .ok_or_else(|| ValidateError::Input(format!("verdict: no final model `{label}`")))
        };
        let v = verdict(
            (chosen, side(chosen)?),
            (baseline, side(baseline)?),
            &cfg.targets,
            headline,
            references,
        )
        .map_err(|e| ValidateError::Input(e.to_string()))?;
        verdicts.push(v);
    }
    Ok(verdicts)
}

/// Rank of a model's objective value among the references' (recomputed over
/// the references plus this model, for rank-based objectives).
fn final_rank(o: &Objective, targets: &[Target], references: &[Vec<f64>], scores: &[f64]) -> f64 {
    let mut all = references.to_vec();
    all.push(scores.to_vec());
    let obj = o.values(targets, &all);
    let (mine, rest) = obj.split_last().expect("not empty");
    rank_among(*mine, rest, Direction::LowerIsBetter)
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
            verdicts: vec![],
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
        let finals = vec![("best".to_string(), vec![vec![1.0, 1.0]])];
        let v = validate(
            &cfg(targets.clone()),
            mixtures.clone(),
            vec![refs],
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
        assert!(validate(&c, m.clone(), vec![vec![vec![1.0]; 2]], vec![], vec![]).is_err());
        assert!(
            validate(
                &c,
                m.clone(),
                vec![vec![vec![1.0], vec![2.0], vec![f64::NAN]]],
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
            vec![vec![vec![1.0], vec![2.0], vec![3.0]]],
            vec![short],
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 rows for 3"), "{e}");
    }

    /// References with a known signal and known seed noise: the measured noise,
    /// spread and ceiling come out near what was put in.
    #[test]
    fn ceiling_and_signal_to_noise_on_known_noise() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 400;
        let signal = Normal::new(0.0, 1.0).unwrap();
        // Target a: noise sd 0.5 (snr 2); target b: noise sd 2 (snr 0.5).
        let truth: Vec<[f64; 2]> = (0..n)
            .map(|_| [signal.sample(&mut rng), signal.sample(&mut rng)])
            .collect();
        let replica = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<Vec<f64>> {
            let (na, nb) = (
                Normal::new(0.0, 0.5).unwrap(),
                Normal::new(0.0, 2.0).unwrap(),
            );
            truth
                .iter()
                .map(|t| vec![t[0] + na.sample(rng), t[1] + nb.sample(rng)])
                .collect()
        };
        let reps = vec![replica(&mut rng), replica(&mut rng)];
        let mixtures: Vec<Vec<f64>> = (0..n)
            .map(|i| vec![i as f64 / n as f64, 1.0 - i as f64 / n as f64])
            .collect();
        let truth_set = ScoreSet {
            name: "truth".into(),
            kind: PredictorKind::Proxy,
            scores: truth.iter().map(|t| t.to_vec()).collect(),
            in_units: true,
            training_tokens: None,
        };
        let mut c = cfg(vec![Target::loss("a"), Target::loss("b")]);
        c.bootstrap = 0;
        c.objective = Objective::MeanLoss;
        let v = validate(&c, mixtures, reps, vec![truth_set], vec![]).unwrap();
        assert_eq!(v.replicas, 2);
        let (a, b) = (&v.noise[0], &v.noise[1]);
        assert!((a.noise - 0.5).abs() < 0.06, "{a:?}");
        assert!((b.noise - 2.0).abs() < 0.2, "{b:?}");
        // The spread of replica means holds signal plus noise / R.
        assert!(
            (a.spread - (1.0f64 + 0.25 / 2.0).sqrt()).abs() < 0.12,
            "{a:?}"
        );
        assert!(!a.flagged && b.flagged, "{a:?} {b:?}");
        // Replicate correlation: var(s) / (var(s) + var(noise)) = 0.8 for a.
        let ca = a.ceiling.as_ref().unwrap();
        assert!((ca.replicate_rho - 0.8).abs() < 0.06, "{ca:?}");
        let expected = (2.0 * ca.replicate_rho / (1.0 + ca.replicate_rho)).sqrt();
        assert!((ca.ceiling - expected).abs() < 1e-12);
        // The noiseless predictor reaches about its ceiling, so about 1 of it.
        let m = &v.predictors[0].targets[0];
        assert!((m.of_ceiling.unwrap() - 1.0).abs() < 0.08, "{m:?}");
        // Every objective is reported, the headline first, each with a ceiling.
        let names: Vec<&str> = v.objectives.iter().map(|o| o.objective.name()).collect();
        assert_eq!(names, ["mean_loss", "mean_rank", "standardized"]);
        assert!(v.objectives.iter().all(|o| o.ceiling.is_some()));
    }
}
