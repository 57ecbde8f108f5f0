//! `kind: search`: the DeMix merge-search. Mixtures are sampled as RegMix does, each
//! proxy is the components merged in memory by the mixture's weights and evaluated
//! on the targets' validation data, and a predictor picks each next round.

use std::collections::BTreeMap;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ml::{dataset_names, span_of as span};
use super::{Plan, RunCtx, StepError, StepKind};
use crate::manifest::template::{self, Piece, Ref, Split};
use crate::manifest::{Diags, serde_diag};

/// Fields of a `search` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFields {
    /// `merged` (DeMix: proxies are the components merged by the mixture's
    /// weights) or `trained` (RegMix/CLIMB: a small model trained per mixture).
    #[serde(default = "default_proxy", skip_serializing_if = "is_merged")]
    pub proxy: String,
    /// The component checkpoints, one per candidate: `${steps.ID[*].checkpoint}`
    /// (merged proxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<String>,
    /// Trained proxies start from this checkpoint: `${steps.ID.checkpoint}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Trained proxies mix this dataset in at share `beta`, as the components do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<String>,
    /// The general share (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// How each trained proxy is trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainedProxy>,
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
    /// What the search minimises: `mean_rank` (the paper's mean percentile
    /// rank over targets), `mean_loss`, `standardized` (each target's loss
    /// divided by its spread over the first, random round) or `weighted_loss`.
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
    /// Merged proxies evaluated at once (default: one per visible GPU, else 1);
    /// each worker holds its own merged model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Keep the components on the evaluation device and merge there (default:
    /// on CUDA yes, on the CPU stream merges from the files instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident: Option<bool>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub threads: Option<u32>,
}

/// The training of one trained proxy (`proxy: trained`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainedProxy {
    /// Token budget of each proxy: for a like-for-like comparison, the
    /// components' total budget divided by the proxies evaluated.
    pub tokens: u64,
    pub batch_size: u32,
    pub seq_len: u32,
    /// Rows per forward pass, accumulating gradients up to `batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<u32>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub min_lr_ratio: Option<f64>,
    #[serde(default)]
    pub seed: u64,
}

fn default_proxy() -> String {
    "merged".into()
}
fn is_merged(p: &String) -> bool {
    p == "merged"
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
/// The objective a search and a validation use unless told otherwise.
pub const DEFAULT_OBJECTIVE: &str = "mean_loss";

fn default_objective() -> String {
    DEFAULT_OBJECTIVE.into()
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

impl StepKind for Search {
    fn name(&self) -> &'static str {
        "search"
    }
    fn version(&self) -> u32 {
        // 2: sampled evaluation, predictors chosen by cross-validation, noise per target.
        2
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
        let one_ref = |v: &str| {
            matches!(
                template::parse(v).as_deref(),
                Ok([Piece::Ref(Ref::Step { .. })])
            )
        };
        let mut paths = Vec::new();
        match f.proxy.as_str() {
            "merged" => {
                match &f.components {
                    Some(c) if one_ref(c) => {}
                    Some(_) => d.error(
                        &span(body, "components"),
                        "`components` takes one `${steps.ID[*].checkpoint}` reference",
                        "components",
                    ),
                    None => d.error(
                        body.span(),
                        "a merge-search needs `components: ${steps.ID[*].checkpoint}`",
                        "search",
                    ),
                }
                for k in ["base", "general", "beta", "train"] {
                    if body.as_mapping().and_then(|m| m.get_node(k)).is_some() {
                        d.error(
                            &span(body, k),
                            format!("`{k}` is for `proxy: trained`; merged proxies are made of the components"),
                            k,
                        );
                    }
                }
            }
            "trained" => {
                if f.components.is_some() {
                    d.error(
                        &span(body, "components"),
                        "`proxy: trained` trains its proxies from `base`; it merges no components",
                        "components",
                    );
                }
                match &f.base {
                    Some(b) => super::ml::check_ref_or_path(d, body, "base", b, &mut paths),
                    None => d.error(
                        body.span(),
                        "`proxy: trained` needs `base: ${steps.ID.checkpoint}` to train proxies from",
                        "search",
                    ),
                }
                match &f.train {
                    Some(t) if t.tokens == 0 || t.batch_size == 0 || t.seq_len == 0 => d.error(
                        &span(body, "train"),
                        "`train.tokens`, `train.batch_size` and `train.seq_len` must be more than 0",
                        "train",
                    ),
                    Some(t)
                        if t
                            .micro_batch_size
                            .is_some_and(|m| m == 0 || !t.batch_size.is_multiple_of(m)) =>
                    {
                        d.error(
                            &span(body, "train"),
                            "`train.micro_batch_size` must divide `train.batch_size`",
                            "train",
                        )
                    }
                    Some(_) => {}
                    None => d.error(
                        body.span(),
                        "`proxy: trained` needs `train: {tokens, batch_size, seq_len}`",
                        "search",
                    ),
                }
                if let Some(g) = &f.general
                    && f.candidates.contains(g)
                {
                    d.error(
                        &span(body, "general"),
                        format!("`{g}` is a candidate too; the general data is mixed in at share `beta`, not searched over"),
                        "general",
                    );
                }
                for k in ["workers", "resident"] {
                    if body.as_mapping().and_then(|m| m.get_node(k)).is_some() {
                        d.error(
                            &span(body, k),
                            format!(
                                "`{k}` is for merged proxies; trained proxies train one at a time"
                            ),
                            k,
                        );
                    }
                }
                if let Some(b) = f.beta
                    && (!(0.0..1.0).contains(&b) || f.general.is_none())
                {
                    d.error(
                        &span(body, "beta"),
                        "`beta` is the share of `general`, in [0, 1)",
                        "beta",
                    );
                }
            }
            other => d.error(
                &span(body, "proxy"),
                format!("unknown proxy `{other}` (merged or trained)"),
                "proxy",
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
        super::validate::check_objective(
            d,
            body,
            &f.objective,
            &f.objective_weights,
            f.targets.len(),
        );
        super::ml::check_device(d, body, &f.device);
        if d.problems.len() > before {
            return None;
        }
        let mut datasets = dataset_names(body, "candidates", &f.candidates, Split::Train);
        datasets.extend(dataset_names(
            body,
            "targets",
            &f.targets,
            Split::Validation,
        ));
        if let Some(g) = &f.general {
            datasets.push((Spanned::new(span(body, "general"), g.clone()), Split::Train));
        }
        let counts = f
            .components
            .iter()
            .map(|c| super::CountCheck {
                inputs: vec![c.clone()],
                expected: super::Expected::Number(f.candidates.len(), "candidates".into()),
                what: "components".into(),
                span: span(body, "components"),
            })
            .collect();
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths,
            outputs: BTreeMap::from([
                ("result".to_string(), "search.json".to_string()),
                ("mixture".to_string(), "mixture.json".to_string()),
            ]),
            runtime_refs: false,
            datasets,
            counts,
            memory: None,
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
