//! `kind: sample`: N random mixtures over the candidates, drawn exactly as the
//! search draws its pool (RegMix's Dirichlet with the token-count prior, caps,
//! rounding, deduplication; seeded). Reference models are trained on them to
//! validate a search: `foreach: {range: N}` with `mixture:` and `pick: ${item}`.

use std::collections::BTreeMap;

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ml::{dataset_names, span_of as span};
use super::{Plan, RunCtx, StepError, StepKind};
use crate::manifest::template::Split;
use crate::manifest::{Diags, serde_diag};

/// Fields of a `sample` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleFields {
    /// `${steps.ID.tokenizer}`: the prior is each candidate's token count under it.
    pub tokenizer: String,
    /// The candidate datasets: the mixtures' keys.
    pub candidates: Vec<String>,
    /// How many mixtures (the paper trains 96 references).
    pub count: usize,
    /// Seed of the draws; give it a different one from the search's so the
    /// references are not the search's own pool.
    #[serde(default)]
    pub seed: u64,
}

pub struct Sample;

impl StepKind for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "draws N random mixtures as the search's sampler does (for reference models)"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<SampleFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let f: SampleFields = match marked_yaml::from_node(body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "sample step", e);
                return None;
            }
        };
        let before = d.problems.len();
        let mut paths = Vec::new();
        super::ml::check_ref_or_path(d, body, "tokenizer", &f.tokenizer, &mut paths);
        if f.candidates.len() < 2 {
            d.error(
                &span(body, "candidates"),
                "mixtures need at least two candidates",
                "candidates",
            );
        }
        if f.count < 3 {
            d.error(
                &span(body, "count"),
                format!(
                    "`count` must be at least 3 to rank anything, not {}",
                    f.count
                ),
                "count",
            );
        }
        if d.problems.len() > before {
            return None;
        }
        let datasets = dataset_names(body, "candidates", &f.candidates, Split::Train);
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths,
            outputs: BTreeMap::from([("mixtures".to_string(), "mixtures.json".to_string())]),
            runtime_refs: false,
            datasets,
            counts: Vec::new(),
            memory: None,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        #[cfg(feature = "torch")]
        return super::run::sample(ctx);
        #[cfg(not(feature = "torch"))]
        {
            let _ = ctx;
            Err(StepError::Failed(
                "`sample` steps count tokens with libtorch's data pipeline, and this demix was built without it: build with `--features torch` (scripts/demix does)".into(),
            ))
        }
    }
}
