//! `kind: sample`: N random mixtures over the candidates, drawn exactly as the
//! search draws its pool (RegMix's Dirichlet with the token-count prior, caps,
//! rounding, deduplication; seeded). Reference models are trained on them to
//! validate a search: `foreach: {range: N}` with `mixture:` and `pick: ${item}`.

use std::collections::BTreeMap;

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{Kind, Plan, Runner};
#[cfg(feature = "torch")]
use demix_core::kind::{RunCtx, StepError};
use demix_core::manifest::Diags;
use demix_core::manifest::template::Split;

use crate::fields::{check_ref_or_path, dataset_names, span_of};

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

impl Kind for Sample {
    const NAME: &'static str = "sample";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "draws N random mixtures as the search's sampler does (for reference models)";
    type Fields = SampleFields;
    type Params = SampleFields;

    fn plan(&self, f: SampleFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut paths = Vec::new();
        check_ref_or_path(d, body, "tokenizer", &f.tokenizer, &mut paths);
        if f.candidates.len() < 2 {
            d.error(
                &span_of(body, "candidates"),
                "mixtures need at least two candidates",
                "candidates",
            );
        }
        if f.count < 3 {
            d.error(
                &span_of(body, "count"),
                format!(
                    "`count` must be at least 3 to rank anything, not {}",
                    f.count
                ),
                "count",
            );
        }
        Some(Plan {
            paths,
            outputs: BTreeMap::from([("mixtures".to_string(), "mixtures.json".to_string())]),
            datasets: dataset_names(body, "candidates", &f.candidates, Split::Train),
            ..Plan::new(&f)
        })
    }

    // The prior counts tokens through the ML library's data pipeline.
    fn runner(&self, _: &SampleFields) -> Runner {
        Runner::Worker
    }

    #[cfg(feature = "torch")]
    fn run(&self, f: SampleFields, ctx: &RunCtx) -> Result<(), StepError> {
        use crate::ml_run::{ml_err, one_path, token_counts, tokenizer_hash};
        use demix_mix::sampler::{SamplerConfig, sample};
        use demix_ml as ml;
        let tok_path = one_path(ctx, &f.tokenizer)?.to_path_buf();
        let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
        let tok_hash = tokenizer_hash(ctx, Some(&f.tokenizer), &tok_path)?;
        let counts = token_counts(ctx, &f.candidates, &tok, &tok_hash)?;
        let config = SamplerConfig {
            keep: f.count,
            // Enough draws that the kept ones are a random subset of distinct mixtures.
            draws: f.count * 4,
            seed: f.seed,
            ..Default::default()
        };
        let pool = sample(&counts, &config)
            .map_err(|e| StepError::Failed(format!("sampling mixtures: {e}")))?;
        if pool.len() < f.count {
            return Err(StepError::Failed(format!(
                "only {} distinct mixtures of {} candidates exist at this resolution, fewer than `count: {}`",
                pool.len(),
                f.candidates.len(),
                f.count
            )));
        }
        let list: Vec<BTreeMap<&str, f64>> = pool
            .to_weights()
            .iter()
            .map(|w| {
                f.candidates
                    .iter()
                    .map(String::as_str)
                    .zip(w.iter().copied())
                    .collect()
            })
            .collect();
        demix_core::kind::write_json(ctx, "mixtures.json", &list)
    }
}
