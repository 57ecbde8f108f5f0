//! `kind: search`: the DeMix merge-search. Mixtures are sampled as RegMix does, each
//! proxy is the components merged in memory by the mixture's weights and evaluated
//! on the targets' validation data, and a predictor picks each next round.

use std::collections::BTreeMap;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Plan, RunCtx, StepError, StepKind};
use crate::manifest::template::{self, Piece, Ref, Split};
use crate::manifest::{Diags, serde_diag};

/// Fields of a `search` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFields {
    /// The component checkpoints, one per candidate: `${steps.ID[*].checkpoint}`.
    pub components: String,
    /// The candidate datasets, in the components' order. Their token counts are the
    /// sampler's prior.
    pub candidates: Vec<String>,
    /// Datasets whose validation loss scores each proxy.
    pub targets: Vec<String>,
    /// Proxies evaluated per round (paper: 64, 32, 16).
    #[serde(default = "default_rounds")]
    pub rounds: Vec<usize>,
    /// The chosen mixture is the average of the top-k predicted (paper: 128).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Mixtures kept in the candidate pool (paper: 200,000 of 512,000 draws).
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// Draws from which the pool is kept (default: 2.5 x pool).
    #[serde(default)]
    pub draws: Option<usize>,
    /// `mean_rank` (the paper's mean percentile rank over targets) or `weighted_loss`.
    #[serde(default = "default_objective")]
    pub objective: String,
    /// Weights of `weighted_loss`, one per target (default: equal).
    #[serde(default)]
    pub objective_weights: Option<Vec<f64>>,
    /// Tokens of each target's validation data per proxy evaluation.
    #[serde(default = "default_eval_tokens")]
    pub max_tokens: u64,
    #[serde(default = "default_seq")]
    pub seq_len: u32,
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub threads: Option<u32>,
}

fn default_rounds() -> Vec<usize> {
    vec![64, 32, 16]
}
fn default_top_k() -> usize {
    128
}
fn default_pool() -> usize {
    20_000
}
fn default_objective() -> String {
    "mean_rank".into()
}
fn default_eval_tokens() -> u64 {
    16_384
}
fn default_seq() -> u32 {
    256
}
fn default_batch() -> u32 {
    8
}

pub struct Search;

fn span(body: &Node, key: &str) -> marked_yaml::Span {
    body.as_mapping()
        .and_then(|m| m.get_node(key))
        .map(|n| *n.span())
        .unwrap_or(*body.span())
}

fn names(body: &Node, key: &str, v: &[String], split: Split) -> Vec<(Spanned<String>, Split)> {
    let spans: Vec<marked_yaml::Span> = body
        .as_mapping()
        .and_then(|m| m.get_sequence(key))
        .map(|s| s.iter().map(|n| *n.span()).collect())
        .unwrap_or_default();
    v.iter()
        .enumerate()
        .map(|(i, n)| {
            (
                Spanned::new(spans.get(i).copied().unwrap_or(span(body, key)), n.clone()),
                split,
            )
        })
        .collect()
}

impl StepKind for Search {
    fn name(&self) -> &'static str {
        "search"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "searches mixture weights on merged proxies (RegMix sampling, rounds, a predictor), chooses a mixture"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<SearchFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let f: SearchFields = match marked_yaml::from_node(body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "search step", e);
                return None;
            }
        };
        let before = d.problems.len();
        match template::parse(&f.components) {
            Ok(p) if matches!(p.as_slice(), [Piece::Ref(Ref::Step { .. })]) => {}
            _ => d.error(
                &span(body, "components"),
                "`components` takes one `${steps.ID[*].checkpoint}` reference",
                "components",
            ),
        }
        if f.candidates.len() < 2 {
            d.error(
                &span(body, "candidates"),
                "a search needs at least two candidates",
                "candidates",
            );
        }
        if f.targets.is_empty() {
            d.error(
                &span(body, "targets"),
                "a search needs at least one target dataset",
                "targets",
            );
        }
        if f.rounds.is_empty() || f.rounds.contains(&0) {
            d.error(
                &span(body, "rounds"),
                "`rounds` are positive proxy counts, e.g. [64, 32, 16]",
                "rounds",
            );
        }
        if f.top_k == 0 || f.pool == 0 || f.max_tokens == 0 || f.seq_len == 0 || f.batch_size == 0 {
            d.error(
                body.span(),
                "`top_k`, `pool`, `max_tokens`, `seq_len` and `batch_size` must be more than 0",
                "search",
            );
        }
        let total: usize = f.rounds.iter().sum();
        if total > f.pool {
            d.error(
                &span(body, "pool"),
                format!(
                    "the pool ({}) is smaller than the proxies to evaluate ({total})",
                    f.pool
                ),
                "pool",
            );
        }
        match f.objective.as_str() {
            "mean_rank" => {}
            "weighted_loss" => {
                if let Some(w) = &f.objective_weights
                    && (w.len() != f.targets.len() || w.iter().any(|x| !x.is_finite() || *x < 0.0))
                {
                    d.error(
                        &span(body, "objective_weights"),
                        "one finite weight >= 0 per target",
                        "objective_weights",
                    );
                }
            }
            other => d.error(
                &span(body, "objective"),
                format!("unknown objective `{other}` (mean_rank or weighted_loss)"),
                "objective",
            ),
        }
        super::ml::check_device(d, body, &f.device);
        if d.problems.len() > before {
            return None;
        }
        let mut datasets = names(body, "candidates", &f.candidates, Split::Train);
        datasets.extend(names(body, "targets", &f.targets, Split::Validation));
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths: Vec::new(),
            outputs: BTreeMap::from([
                ("result".to_string(), "search.json".to_string()),
                ("mixture".to_string(), "mixture.json".to_string()),
            ]),
            runtime_refs: false,
            datasets,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        #[cfg(feature = "torch")]
        return super::run::search(ctx);
        #[cfg(not(feature = "torch"))]
        {
            let _ = ctx;
            Err(StepError::Failed(
                "`search` steps evaluate proxies with libtorch, and this demix was built without it: build with `--features torch` (scripts/demix does)".into(),
            ))
        }
    }
}
