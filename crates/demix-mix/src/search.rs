//! The search rounds (method.md, steps 6-7), independent of how proxies are
//! built and evaluated.
//!
//! Round 1 evaluates a seeded random subset of the pool. Each later round fits
//! one predictor per target on every proxy evaluated so far, scores the whole
//! pool, and evaluates the best-predicted mixtures not yet evaluated. At the
//! end the predictors are refitted and the chosen mixture is the average of the
//! `top_k` best-predicted pool mixtures.
//!
//! [`Search`] is a state machine (`next_batch` / `record` / `finish`) so the
//! engine can evaluate a round as cached steps and resume; [`Search::run`]
//! drives it with an [`Evaluator`] in one call.

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::predict::{
    CvReport, ModelKind, PredictError, Predictor, PredictorConfig, cross_validate,
};
use super::stats::{Direction, percentile_ranks};

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search config: {0}")]
    Config(String),
    #[error("search pool: {0}")]
    Pool(String),
    #[error("evaluating round {round}: {source}")]
    Evaluate {
        round: usize,
        #[source]
        source: BoxError,
    },
    #[error("scores of round {round}: {reason}")]
    Scores { round: usize, reason: String },
    #[error("fitting target `{target}`: {source}")]
    Predict {
        target: String,
        #[source]
        source: PredictError,
    },
    #[error("{0}")]
    State(String),
}

/// Any error an evaluator returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A score the proxies are evaluated on (e.g. validation loss on one domain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    #[serde(default)]
    pub direction: Direction,
}

impl Target {
    /// A lower-is-better target (a loss).
    pub fn loss(name: &str) -> Target {
        Target {
            name: name.to_string(),
            direction: Direction::LowerIsBetter,
        }
    }
}

/// What the search minimises over mixtures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Objective {
    /// The paper's: the mean over targets of each mixture's percentile rank
    /// (0 = best, 1 = worst) among the mixtures being compared. Every target
    /// weighs the same, however little it moves, so a target whose spread is
    /// mostly noise drags the ranking towards noise.
    #[default]
    MeanPercentileRank,
    /// The mean of the targets' scores (higher-is-better ones negated): each
    /// target weighs as much as it actually moves.
    MeanLoss,
    /// `sum_t weight_t * score_t`, with higher-is-better scores negated.
    WeightedSum { weights: Vec<f64> },
    /// The mean of the scores, each divided by its target's spread (standard
    /// deviation) over a population: the search's first, random round of
    /// proxies, or the references in a validation. Empty `scales` mean the
    /// spread of the rows being compared.
    Standardized {
        #[serde(default)]
        scales: Vec<f64>,
    },
}

/// The objectives by their manifest names, in the order tables show them.
pub const OBJECTIVE_NAMES: [&str; 4] = ["mean_rank", "mean_loss", "standardized", "weighted_loss"];

fn sd(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return 0.0;
    }
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Each target's spread (sample standard deviation) over rows of scores.
pub fn spreads(rows: &[Vec<f64>], targets: usize) -> Vec<f64> {
    (0..targets)
        .map(|t| sd(&rows.iter().map(|r| r[t]).collect::<Vec<_>>()))
        .collect()
}

impl Objective {
    /// The objective a manifest names (`weights` for `weighted_loss`, one per
    /// target; default equal).
    pub fn named(name: &str, weights: Option<&[f64]>, targets: usize) -> Option<Objective> {
        Some(match name {
            "mean_rank" => Objective::MeanPercentileRank,
            "mean_loss" => Objective::MeanLoss,
            "weighted_loss" => Objective::WeightedSum {
                weights: weights.map_or_else(|| vec![1.0; targets], <[f64]>::to_vec),
            },
            "standardized" => Objective::Standardized { scales: Vec::new() },
            _ => return None,
        })
    }

    /// The manifest name of this objective.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::MeanPercentileRank => "mean_rank",
            Objective::MeanLoss => "mean_loss",
            Objective::WeightedSum { .. } => "weighted_loss",
            Objective::Standardized { .. } => "standardized",
        }
    }

    /// Whether two objectives are the same function, standardised scales aside.
    pub fn same_kind(&self, other: &Objective) -> bool {
        match (self, other) {
            (Objective::WeightedSum { weights: a }, Objective::WeightedSum { weights: b }) => {
                a == b
            }
            _ => self.name() == other.name(),
        }
    }

    /// This objective with its scales fixed to the spreads of `rows` (only
    /// `standardized` has scales).
    pub fn scaled_by(&self, rows: &[Vec<f64>], targets: usize) -> Objective {
        match self {
            Objective::Standardized { scales } if scales.is_empty() => Objective::Standardized {
                scales: spreads(rows, targets),
            },
            other => other.clone(),
        }
    }

    /// Objective values (lower is better) of rows of per-target scores.
    pub fn values(&self, targets: &[Target], scores: &[Vec<f64>]) -> Vec<f64> {
        let n = scores.len();
        let sign = |t: &Target| match t.direction {
            Direction::LowerIsBetter => 1.0,
            Direction::HigherIsBetter => -1.0,
        };
        let weighted = |weights: &[f64]| -> Vec<f64> {
            scores
                .iter()
                .map(|s| {
                    targets
                        .iter()
                        .zip(weights)
                        .zip(s)
                        .map(|((t, w), x)| w * sign(t) * x)
                        .sum()
                })
                .collect()
        };
        let m = targets.len().max(1) as f64;
        match self {
            Objective::MeanPercentileRank => {
                let mut out = vec![0.0; n];
                for (t, target) in targets.iter().enumerate() {
                    let col: Vec<f64> = scores.iter().map(|s| s[t]).collect();
                    for (o, p) in out.iter_mut().zip(percentile_ranks(&col, target.direction)) {
                        *o += p / m;
                    }
                }
                out
            }
            Objective::MeanLoss => weighted(&vec![1.0 / m; targets.len()]),
            Objective::WeightedSum { weights } => weighted(weights),
            Objective::Standardized { scales } => {
                let scales = if scales.is_empty() {
                    spreads(scores, targets.len())
                } else {
                    scales.clone()
                };
                // A target that does not move at all carries no information.
                let w: Vec<f64> = scales
                    .iter()
                    .map(|s| if *s > 0.0 { 1.0 / (s * m) } else { 0.0 })
                    .collect();
                weighted(&w)
            }
        }
    }
}

fn default_rounds() -> Vec<usize> {
    vec![64, 32, 16]
}
fn default_top_k() -> usize {
    128
}
fn default_folds() -> usize {
    5
}

/// Search settings; defaults are the paper's (112 proxies as 64 + 32 + 16,
/// top 128 averaged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub targets: Vec<Target>,
    #[serde(default = "default_rounds")]
    pub rounds: Vec<usize>,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub objective: Objective,
    #[serde(default)]
    pub predictor: PredictorConfig,
    /// Folds of the cross-validated diagnostics (0 turns them off).
    #[serde(default = "default_folds")]
    pub cv_folds: usize,
    #[serde(default)]
    pub seed: u64,
}

impl SearchConfig {
    /// The paper's settings for these targets.
    pub fn new(targets: Vec<Target>) -> SearchConfig {
        SearchConfig {
            targets,
            rounds: default_rounds(),
            top_k: default_top_k(),
            objective: Objective::default(),
            predictor: PredictorConfig::default(),
            cv_folds: default_folds(),
            seed: 0,
        }
    }
}

/// Evaluates proxies: one row of per-target scores per mixture, in order.
pub trait Evaluator {
    fn evaluate(&mut self, round: usize, mixtures: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, BoxError>;
}

impl<F> Evaluator for F
where
    F: FnMut(&[Vec<f64>]) -> Result<Vec<Vec<f64>>, BoxError>,
{
    fn evaluate(
        &mut self,
        _round: usize,
        mixtures: &[Vec<f64>],
    ) -> Result<Vec<Vec<f64>>, BoxError> {
        self(mixtures)
    }
}

/// Mixtures to evaluate in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// 1-based round number.
    pub round: usize,
    pub pool_indices: Vec<usize>,
    pub mixtures: Vec<Vec<f64>>,
    /// Predicted per-target scores (rounds after the first).
    pub predicted: Option<Vec<Vec<f64>>>,
}

/// One evaluated proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub round: usize,
    pub pool_index: usize,
    pub weights: Vec<f64>,
    pub scores: Vec<f64>,
    pub predicted: Option<Vec<f64>>,
    /// Objective among all evaluated proxies (lower is better).
    pub objective: f64,
}

/// A predictor fitted for one target, with its cross-validated error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetFit {
    pub target: String,
    pub model: ModelKind,
    pub cv: Option<CvReport>,
    /// Every kind's cross-validated error when the kind was chosen by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CvReport>,
}

/// What happened in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: usize,
    pub proxies: usize,
    /// Predictors that chose this round (empty for the random first round).
    pub fits: Vec<TargetFit>,
}

/// Cost counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub proxies_evaluated: usize,
    pub evaluate_seconds: f64,
    pub fit_seconds: f64,
    pub total_seconds: f64,
    /// Validation tokens scored over all proxies (set by the step that evaluates them).
    #[serde(default)]
    pub tokens_evaluated: u64,
    /// Training tokens the proxies cost (trained proxies; merged ones cost none).
    #[serde(default)]
    pub tokens_trained: u64,
}

/// A best-predicted pool mixture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopMixture {
    pub pool_index: usize,
    pub weights: Vec<f64>,
    pub predicted: Vec<f64>,
    pub objective: f64,
}

/// The outcome of a search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Names of the weights' columns, when the caller knows them (the step does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
    /// The average of the `top` mixtures: the mixture to train on.
    pub chosen: Vec<f64>,
    /// Predicted per-target scores of `chosen`.
    pub chosen_predicted: Vec<f64>,
    pub targets: Vec<Target>,
    pub objective: Objective,
    pub top: Vec<TopMixture>,
    pub proxies: Vec<ProxyRecord>,
    /// Index into `proxies` of the best evaluated proxy.
    pub best_proxy: usize,
    pub rounds: Vec<RoundRecord>,
    /// The final predictors (fitted on every proxy).
    pub final_fits: Vec<TargetFit>,
    pub pool_size: usize,
    pub seed: u64,
    pub cost: Cost,
    /// Per target: how far apart the proxies are and how much of that the
    /// evaluation's sampling alone could make (set by the step that evaluates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_noise: Vec<TargetNoise>,
    /// The predictor settings the fits used, so a refit (validation) is the same.
    #[serde(default)]
    pub predictor: PredictorConfig,
}

/// A target's spread between proxies against the noise of scoring them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetNoise {
    pub target: String,
    /// Standard deviation of the target's score over the first, random round.
    pub spread: f64,
    /// Standard error of the difference between two proxies' scores from the
    /// finite evaluation sample (paired: they are scored on the same text),
    /// averaged over pairs of first-round proxies.
    pub noise: f64,
    /// `spread / noise`: below 1 the ranking on this target is mostly noise.
    pub ratio: f64,
}

/// The search state machine.
#[derive(Debug)]
pub struct Search {
    config: SearchConfig,
    pool: Vec<Vec<f64>>,
    evaluated: Vec<bool>,
    proxies: Vec<ProxyRecord>,
    rounds: Vec<RoundRecord>,
    pending: Option<Batch>,
    pending_since: Option<Instant>,
    cost: Cost,
    started: Instant,
}

impl Search {
    /// Checks the config and pool (rows of equal width, on the simplex).
    pub fn new(config: SearchConfig, pool: Vec<Vec<f64>>) -> Result<Search, SearchError> {
        let t = config.targets.len();
        if t == 0 {
            return Err(SearchError::Config("at least one target is needed".into()));
        }
        if config.rounds.is_empty() || config.rounds.contains(&0) {
            return Err(SearchError::Config(
                "rounds must be non-empty sizes > 0".into(),
            ));
        }
        if config.top_k == 0 {
            return Err(SearchError::Config("top_k must be positive".into()));
        }
        if let Objective::WeightedSum { weights } = &config.objective
            && (weights.len() != t || weights.iter().any(|w| !w.is_finite()))
        {
            return Err(SearchError::Config(format!(
                "weighted_sum needs {t} finite weights, got {weights:?}"
            )));
        }
        let d = pool
            .first()
            .ok_or_else(|| SearchError::Pool("the pool is empty".into()))?
            .len();
        for (i, w) in pool.iter().enumerate() {
            let sum: f64 = w.iter().sum();
            if w.len() != d
                || d == 0
                || w.iter().any(|x| !(x.is_finite() && *x >= 0.0))
                || (sum - 1.0).abs() > 1e-6
            {
                return Err(SearchError::Pool(format!(
                    "mixture {i} is not {d} non-negative weights summing to 1: {w:?}"
                )));
            }
        }
        Ok(Search {
            evaluated: vec![false; pool.len()],
            config,
            pool,
            proxies: Vec::new(),
            rounds: Vec::new(),
            pending: None,
            pending_since: None,
            cost: Cost::default(),
            started: Instant::now(),
        })
    }

    /// Runs every round with `evaluator` and finishes.
    pub fn run<E: Evaluator + ?Sized>(
        config: SearchConfig,
        pool: Vec<Vec<f64>>,
        evaluator: &mut E,
    ) -> Result<SearchResult, SearchError> {
        let mut s = Search::new(config, pool)?;
        while let Some(batch) = s.next_batch()? {
            let round = batch.round;
            let mixtures = batch.mixtures.clone();
            let scores = evaluator
                .evaluate(round, &mixtures)
                .map_err(|source| SearchError::Evaluate { round, source })?;
            s.record(scores)?;
        }
        s.finish()
    }

    /// The predictor settings, the model chosen with the search's CV folds.
    fn predictor_config(&self) -> PredictorConfig {
        let mut c = self.config.predictor.clone();
        if self.config.cv_folds >= 2 {
            c.folds = self.config.cv_folds;
        }
        c
    }

    /// Proxies evaluated so far.
    pub fn proxies(&self) -> &[ProxyRecord] {
        &self.proxies
    }

    fn fit_all(
        &mut self,
        diagnostics: bool,
    ) -> Result<(Vec<Predictor>, Vec<TargetFit>), SearchError> {
        let t0 = Instant::now();
        let xs: Vec<Vec<f64>> = self.proxies.iter().map(|p| p.weights.clone()).collect();
        let mut predictors = Vec::new();
        let mut fits = Vec::new();
        for (t, target) in self.config.targets.iter().enumerate() {
            let ys: Vec<f64> = self.proxies.iter().map(|p| p.scores[t]).collect();
            let err = |source| SearchError::Predict {
                target: target.name.clone(),
                source,
            };
            let (p, selection) =
                Predictor::fit_select(&self.predictor_config(), &xs, &ys).map_err(err)?;
            // The chosen kind's error from the choice itself, else measured.
            let cv = match selection.candidates.iter().find(|c| c.model == p.kind()) {
                Some(c) => Some(c.clone()),
                None if diagnostics && self.config.cv_folds >= 2 && xs.len() >= 2 => Some(
                    cross_validate(
                        p.kind(),
                        &self.config.predictor,
                        &xs,
                        &ys,
                        self.config.cv_folds,
                        self.config.seed,
                    )
                    .map_err(err)?,
                ),
                None => None,
            };
            fits.push(TargetFit {
                target: target.name.clone(),
                model: p.kind(),
                cv,
                candidates: selection.candidates,
            });
            predictors.push(p);
        }
        self.cost.fit_seconds += t0.elapsed().as_secs_f64();
        Ok((predictors, fits))
    }

    /// Predicted scores and objective values of the whole pool.
    fn score_pool(&self, predictors: &[Predictor]) -> (Vec<Vec<f64>>, Vec<f64>) {
        let preds: Vec<Vec<f64>> = self
            .pool
            .iter()
            .map(|w| predictors.iter().map(|p| p.predict(w)).collect())
            .collect();
        let obj = self.config.objective.values(&self.config.targets, &preds);
        (preds, obj)
    }

    /// Pool indices by objective, best first (ties by index).
    fn ranked(obj: &[f64]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..obj.len()).collect();
        idx.sort_by(|&a, &b| obj[a].total_cmp(&obj[b]).then(a.cmp(&b)));
        idx
    }

    /// The next round's mixtures, or `None` when every round is done. Calling
    /// it again before [`Search::record`] returns the same batch.
    pub fn next_batch(&mut self) -> Result<Option<&Batch>, SearchError> {
        if self.pending.is_none() {
            let Some(batch) = self.plan_next()? else {
                return Ok(None);
            };
            self.pending = Some(batch);
            self.pending_since = Some(Instant::now());
        }
        Ok(self.pending.as_ref())
    }

    fn plan_next(&mut self) -> Result<Option<Batch>, SearchError> {
        loop {
            let r = self.rounds.len();
            let Some(&size) = self.config.rounds.get(r) else {
                return Ok(None);
            };
            let left: Vec<usize> = (0..self.pool.len())
                .filter(|&i| !self.evaluated[i])
                .collect();
            let size = size.min(left.len());
            let (indices, predicted, fits) = if size == 0 {
                (Vec::new(), None, Vec::new())
            } else if self.proxies.is_empty() {
                let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
                let pick = index::sample(&mut rng, left.len(), size);
                (
                    pick.into_iter().map(|k| left[k]).collect(),
                    None,
                    Vec::new(),
                )
            } else {
                let (predictors, fits) = self.fit_all(true)?;
                let (preds, obj) = self.score_pool(&predictors);
                let indices: Vec<usize> = Self::ranked(&obj)
                    .into_iter()
                    .filter(|&i| !self.evaluated[i])
                    .take(size)
                    .collect();
                let predicted = indices.iter().map(|&i| preds[i].clone()).collect();
                (indices, Some(predicted), fits)
            };
            if indices.is_empty() {
                // The pool is used up: the round is empty.
                self.rounds.push(RoundRecord {
                    round: r + 1,
                    proxies: 0,
                    fits,
                });
                continue;
            }
            self.rounds.push(RoundRecord {
                round: r + 1,
                proxies: 0,
                fits,
            });
            let mixtures = indices.iter().map(|&i| self.pool[i].clone()).collect();
            return Ok(Some(Batch {
                round: r + 1,
                pool_indices: indices,
                mixtures,
                predicted,
            }));
        }
    }

    /// Records the scores of the pending batch: one row per mixture, one
    /// finite score per target.
    pub fn record(&mut self, scores: Vec<Vec<f64>>) -> Result<(), SearchError> {
        let Some(batch) = self.pending.as_ref() else {
            return Err(SearchError::State("no batch is pending".into()));
        };
        let round = batch.round;
        let bad = |reason: String| SearchError::Scores { round, reason };
        if scores.len() != batch.mixtures.len() {
            return Err(bad(format!(
                "{} rows for {} mixtures",
                scores.len(),
                batch.mixtures.len()
            )));
        }
        let t = self.config.targets.len();
        for (i, row) in scores.iter().enumerate() {
            if row.len() != t {
                return Err(bad(format!(
                    "row {i} has {} scores for {t} targets",
                    row.len()
                )));
            }
            if row.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("row {i} has a non-finite score: {row:?}")));
            }
        }
        let Some(batch) = self.pending.take() else {
            return Err(SearchError::State("no batch is pending".into()));
        };
        if let Some(since) = self.pending_since.take() {
            self.cost.evaluate_seconds += since.elapsed().as_secs_f64();
        }
        for (k, (&i, s)) in batch.pool_indices.iter().zip(scores).enumerate() {
            self.evaluated[i] = true;
            self.proxies.push(ProxyRecord {
                round,
                pool_index: i,
                weights: self.pool[i].clone(),
                scores: s,
                predicted: batch.predicted.as_ref().map(|p| p[k].clone()),
                objective: f64::NAN,
            });
        }
        if let Some(r) = self.rounds.last_mut() {
            r.proxies = batch.pool_indices.len();
        }
        // `standardized` scales by the spread of the first, random round: later
        // rounds crowd around the optimum and would shrink it.
        if round == 1 {
            let rows: Vec<Vec<f64>> = self.proxies.iter().map(|p| p.scores.clone()).collect();
            self.config.objective = self.config.objective.scaled_by(&rows, t);
        }
        self.cost.proxies_evaluated = self.proxies.len();
        Ok(())
    }

    /// The objective's name and its best (lowest) value among the proxies
    /// recorded so far, for progress; `None` before the first round.
    pub fn best_so_far(&self) -> Option<(&'static str, f64)> {
        let rows: Vec<Vec<f64>> = self.proxies.iter().map(|p| p.scores.clone()).collect();
        let best = self
            .config
            .objective
            .values(&self.config.targets, &rows)
            .into_iter()
            .min_by(f64::total_cmp)?;
        Some((self.config.objective.name(), best))
    }

    /// Refits on every proxy and chooses the mixture.
    pub fn finish(mut self) -> Result<SearchResult, SearchError> {
        if self.pending.is_some() {
            return Err(SearchError::State("a batch is still pending".into()));
        }
        if self.proxies.is_empty() {
            return Err(SearchError::State("no proxy was evaluated".into()));
        }
        let scores: Vec<Vec<f64>> = self.proxies.iter().map(|p| p.scores.clone()).collect();
        for (p, o) in self
            .proxies
            .iter_mut()
            .zip(self.config.objective.values(&self.config.targets, &scores))
        {
            p.objective = o;
        }
        let best_proxy =
            Self::ranked(&self.proxies.iter().map(|p| p.objective).collect::<Vec<_>>())[0];
        let (predictors, final_fits) = self.fit_all(true)?;
        let (preds, obj) = self.score_pool(&predictors);
        let k = self.config.top_k.min(self.pool.len());
        let top: Vec<TopMixture> = Self::ranked(&obj)
            .into_iter()
            .take(k)
            .map(|i| TopMixture {
                pool_index: i,
                weights: self.pool[i].clone(),
                predicted: preds[i].clone(),
                objective: obj[i],
            })
            .collect();
        let d = self.pool[0].len();
        let mut chosen = vec![0.0; d];
        for m in &top {
            for (c, w) in chosen.iter_mut().zip(&m.weights) {
                *c += w / k as f64;
            }
        }
        // Undo rounding drift so the mixture sums to 1.
        let s: f64 = chosen.iter().sum();
        chosen.iter_mut().for_each(|c| *c /= s);
        let chosen_predicted = predictors.iter().map(|p| p.predict(&chosen)).collect();
        self.cost.total_seconds = self.started.elapsed().as_secs_f64();
        let predictor = self.predictor_config();
        Ok(SearchResult {
            candidates: Vec::new(),
            chosen,
            chosen_predicted,
            targets: self.config.targets,
            objective: self.config.objective,
            top,
            proxies: self.proxies,
            best_proxy,
            rounds: self.rounds,
            final_fits,
            pool_size: self.pool.len(),
            seed: self.config.seed,
            cost: self.cost,
            target_noise: Vec::new(),
            predictor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{SamplerConfig, sample};

    const OPT: [f64; 5] = [0.35, 0.25, 0.2, 0.15, 0.05];

    /// Two domain losses, both lowest at `OPT`, with different curvatures.
    fn losses(w: &[f64]) -> Vec<f64> {
        let d = |c: [f64; 5]| -> f64 {
            w.iter()
                .zip(OPT)
                .zip(c)
                .map(|((a, o), c)| c * (a - o).powi(2))
                .sum()
        };
        vec![
            2.0 + d([4.0, 1.0, 2.0, 3.0, 1.0]),
            3.5 + d([1.0, 3.0, 2.0, 1.0, 4.0]),
        ]
    }

    fn pool(n: usize) -> Vec<Vec<f64>> {
        let c = SamplerConfig {
            draws: n + n / 5,
            keep: n,
            seed: 11,
            ..SamplerConfig::default()
        };
        sample(&[30.0, 25.0, 20.0, 15.0, 10.0], &c)
            .unwrap()
            .to_weights()
    }

    fn eval(m: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, BoxError> {
        Ok(m.iter().map(|w| losses(w)).collect())
    }

    fn l1(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
    }

    #[test]
    fn finds_a_known_optimum() {
        let cfg = SearchConfig::new(vec![Target::loss("general"), Target::loss("code")]);
        let r = Search::run(cfg, pool(4000), &mut eval).unwrap();
        assert_eq!(r.proxies.len(), 112);
        assert_eq!(r.cost.proxies_evaluated, 112);
        assert_eq!(r.top.len(), 128);
        assert_eq!(
            r.proxies.iter().map(|p| p.round).fold([0; 3], |mut a, x| {
                a[x - 1] += 1;
                a
            }),
            [64, 32, 16]
        );
        let uniform = [0.2; 5];
        let dist = l1(&r.chosen, &OPT);
        assert!(
            dist < 0.25,
            "chosen {:?} is {dist} from the optimum",
            r.chosen
        );
        assert!(dist < l1(&uniform, &OPT));
        let (lc, lu) = (losses(&r.chosen), losses(&uniform));
        assert!(
            lc[0] < lu[0] && lc[1] < lu[1],
            "chosen {lc:?} vs uniform {lu:?}"
        );
        assert!((r.chosen.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Later rounds are predicted, and better on average than the random first.
        let mean = |round| {
            let v: Vec<f64> = r
                .proxies
                .iter()
                .filter(|p| p.round == round)
                .map(|p| losses(&p.weights)[0])
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(
            mean(3) < mean(1),
            "round 3 {} vs round 1 {}",
            mean(3),
            mean(1)
        );
        assert!(
            r.proxies
                .iter()
                .all(|p| (p.round == 1) == p.predicted.is_none())
        );
        assert!(r.rounds[0].fits.is_empty() && r.rounds[1].fits.len() == 2);
        assert!(
            r.final_fits
                .iter()
                .all(|f| f.candidates.len() == 3 && f.cv.is_some())
        );
        // The result serialises.
        let json = serde_json::to_string(&r).unwrap();
        let back: SearchResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.chosen, r.chosen);
    }

    #[test]
    fn weighted_sum_objective_and_accuracy_targets() {
        // Accuracy-like targets: higher is better, so negate the losses.
        let cfg = SearchConfig {
            objective: Objective::WeightedSum {
                weights: vec![1.0, 0.5],
            },
            rounds: vec![48, 24],
            top_k: 32,
            ..SearchConfig::new(vec![
                Target {
                    name: "a".into(),
                    direction: Direction::HigherIsBetter,
                },
                Target {
                    name: "b".into(),
                    direction: Direction::HigherIsBetter,
                },
            ])
        };
        let mut acc = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, BoxError> {
            Ok(m.iter()
                .map(|w| losses(w).into_iter().map(|l| -l).collect())
                .collect())
        };
        let r = Search::run(cfg, pool(2000), &mut acc).unwrap();
        assert_eq!(r.proxies.len(), 72);
        assert!(l1(&r.chosen, &OPT) < l1(&[0.2; 5], &OPT), "{:?}", r.chosen);
        let best = &r.proxies[r.best_proxy];
        assert!(r.proxies.iter().all(|p| p.objective >= best.objective));
    }

    #[test]
    fn step_by_step_matches_run() {
        let cfg = SearchConfig {
            rounds: vec![40, 8],
            top_k: 10,
            cv_folds: 0,
            ..SearchConfig::new(vec![Target::loss("x")])
        };
        let one = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, BoxError> {
            Ok(m.iter().map(|w| vec![losses(w)[0]]).collect())
        };
        let mut s = Search::new(cfg.clone(), pool(500)).unwrap();
        assert!(s.record(vec![]).is_err(), "nothing pending");
        let first = s.next_batch().unwrap().unwrap().clone();
        assert_eq!(
            s.next_batch().unwrap().unwrap(),
            &first,
            "idempotent until recorded"
        );
        assert!(s.record(vec![vec![1.0]]).is_err(), "wrong row count");
        let mut bad = one(&first.mixtures).unwrap();
        bad[3] = vec![f64::NAN];
        assert!(s.record(bad).is_err(), "non-finite");
        s.record(one(&first.mixtures).unwrap()).unwrap();
        let second = s.next_batch().unwrap().unwrap().clone();
        assert_eq!(second.round, 2);
        assert!(
            second
                .pool_indices
                .iter()
                .all(|i| !first.pool_indices.contains(i))
        );
        s.record(one(&second.mixtures).unwrap()).unwrap();
        assert!(s.next_batch().unwrap().is_none());
        let stepped = s.finish().unwrap();
        let mut f = one;
        let ran = Search::run(cfg, pool(500), &mut f).unwrap();
        assert_eq!(stepped.chosen, ran.chosen);
        assert_eq!(stepped.proxies, ran.proxies);
    }

    #[test]
    fn small_pools_and_bad_configs() {
        // A pool smaller than the rounds: every mixture is evaluated once.
        let cfg = SearchConfig::new(vec![Target::loss("x")]);
        let mut e = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, BoxError> {
            Ok(m.iter().map(|w| vec![losses(w)[0]]).collect())
        };
        let r = Search::run(cfg.clone(), pool(70), &mut e).unwrap();
        assert_eq!(r.proxies.len(), 70);
        assert_eq!(r.top.len(), 70);
        assert_eq!(
            r.rounds.iter().map(|x| x.proxies).collect::<Vec<_>>(),
            [64, 6, 0]
        );
        let mut failing =
            |_: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, BoxError> { Err("gpu on fire".into()) };
        let e = Search::run(cfg.clone(), pool(70), &mut failing).unwrap_err();
        assert!(e.to_string().contains("gpu on fire"), "{e}");
        assert!(Search::new(SearchConfig::new(vec![]), pool(10)).is_err());
        assert!(Search::new(cfg.clone(), vec![]).is_err());
        assert!(Search::new(cfg.clone(), vec![vec![0.5, 0.6]]).is_err());
        let weighted = SearchConfig {
            objective: Objective::WeightedSum {
                weights: vec![1.0, 2.0],
            },
            ..cfg.clone()
        };
        assert!(Search::new(weighted, pool(10)).is_err());
        let empty_round = SearchConfig {
            rounds: vec![4, 0],
            ..cfg
        };
        assert!(Search::new(empty_round, pool(10)).is_err());
    }

    #[test]
    fn config_deserialises_with_paper_defaults() {
        let c: SearchConfig = serde_json::from_str(r#"{"targets": [{"name": "math"}]}"#).unwrap();
        assert_eq!(c, SearchConfig::new(vec![Target::loss("math")]));
        let c: SearchConfig =
            serde_json::from_str(r#"{"targets": [{"name": "m"}], "objective": {"kind": "weighted_sum", "weights": [1]}}"#).unwrap();
        assert_eq!(c.objective, Objective::WeightedSum { weights: vec![1.0] });
    }
}
