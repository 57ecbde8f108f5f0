//! `kind: tokenizer`: trains a byte-level BPE (Hugging Face tokenizer.json) on a
//! sample of every dataset by its share, or takes an existing tokenizer.json.

use std::collections::BTreeMap;

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{Kind, Plan, Runner};
#[cfg(feature = "torch")]
use demix_core::kind::{RunCtx, StepError};
use demix_core::manifest::template::Split;
use demix_core::manifest::{Diags, did_you_mean};
use demix_spec::tokenizer::TokenizerConfig;

use crate::fields::{check_ref_or_path, dataset_names, entry_span, span_of};

/// Fields of a `tokenizer` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct TokenizerFields {
    /// Datasets (by name) whose training documents the BPE learns from.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Each dataset's share of `max_bytes` (default: equal shares; a dataset
    /// not named here has share 1). A dataset with fewer bytes than its share
    /// gives the rest to the others.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shares: BTreeMap<String, f64>,
    /// An existing Hugging Face tokenizer.json to use instead of training one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(flatten)]
    pub config: TokenizerConfig,
}

pub struct Tokenizer;

impl Kind for Tokenizer {
    const NAME: &'static str = "tokenizer";
    // 2: every dataset is sampled by its share of `max_bytes`.
    const VERSION: u32 = 2;
    const SUMMARY: &'static str =
        "trains a byte-level BPE tokenizer (Hugging Face tokenizer.json) or takes an existing one";
    type Fields = TokenizerFields;
    type Params = TokenizerFields;

    fn plan(&self, f: TokenizerFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut paths = Vec::new();
        match (&f.file, f.datasets.is_empty()) {
            (Some(file), true) => check_ref_or_path(d, body, "file", file, &mut paths),
            (Some(_), false) => d.error(
                &span_of(body, "file"),
                "give either `file` or `datasets`, not both",
                "file",
            ),
            (None, true) => d.error(
                body.span(),
                "a tokenizer step needs `datasets` to learn from (or an existing `file`)",
                "tokenizer",
            ),
            (None, false) => {}
        }
        if f.config.vocab_size < 260 {
            d.error(
                &span_of(body, "vocab_size"),
                format!(
                    "`vocab_size` must be at least 260 (256 bytes and special tokens), not {}",
                    f.config.vocab_size
                ),
                "vocab_size",
            );
        }
        if f.config.special_tokens.is_empty() {
            d.error(
                &span_of(body, "special_tokens"),
                "a tokenizer needs at least one special token (the first separates documents)",
                "special_tokens",
            );
        }
        for (name, &share) in &f.shares {
            let at = entry_span(body, "shares", name);
            if !f.datasets.contains(name) {
                d.push(
                    &at,
                    format!("`shares` names `{name}`, which is not in `datasets`"),
                    "shares",
                    did_you_mean(name, f.datasets.iter().map(String::as_str)),
                );
            }
            if !(share.is_finite() && share >= 0.0) {
                d.error(
                    &at,
                    format!("a share must be a finite number >= 0, not {share}"),
                    "shares",
                );
            }
        }
        if !f.shares.is_empty()
            && f.datasets
                .iter()
                .all(|n| f.shares.get(n).copied().unwrap_or(1.0) == 0.0)
        {
            d.error(&span_of(body, "shares"), "every share is 0", "shares");
        }
        let mut outputs = BTreeMap::from([("tokenizer".to_string(), "tokenizer.json".to_string())]);
        if f.file.is_none() {
            outputs.insert("sample".into(), "tokenizer-sample.json".into());
        }
        Some(Plan {
            paths,
            outputs,
            datasets: dataset_names(body, "datasets", &f.datasets, Split::Train),
            ..Plan::new(&f)
        })
    }

    fn runner(&self, _: &TokenizerFields) -> Runner {
        Runner::Worker
    }

    #[cfg(feature = "torch")]
    fn run(&self, f: TokenizerFields, ctx: &RunCtx) -> Result<(), StepError> {
        use crate::ml_run::{dataset, ml_err, one_path, progress};
        use demix_ml as ml;
        let out = ctx.out_dir.join("tokenizer.json");
        if let Some(file) = &f.file {
            let src = one_path(ctx, file)?;
            ml::tokenizer::Tok::load(src).map_err(ml_err)?;
            std::fs::copy(src, &out)
                .map_err(StepError::io(format!("copying {}", src.display())))?;
            return Ok(());
        }
        let mut datasets = Vec::new();
        for name in &f.datasets {
            let (inp, d) = dataset(ctx, name, Split::Train)?;
            let (sources, split) = d.sources(&inp.paths);
            datasets.push(ml::tokenizer::TokenizerSource {
                name: name.clone(),
                sources,
                split,
                share: f.shares.get(name).copied().unwrap_or(1.0),
            });
        }
        let (_, sample) =
            ml::tokenizer::train_tokenizer(&datasets, &f.config, &out, &progress(ctx), ctx.cancel)
                .map_err(ml_err)?;
        demix_core::kind::write_json(ctx, "tokenizer-sample.json", &sample)
    }
}
