//! `kind: evaluate`: a checkpoint's validation loss, perplexity and bits per
//! byte on datasets (a seeded sample spread over each split, the same for
//! every model), and its scores on benchmark tasks.

use std::collections::BTreeMap;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{Kind, Plan, Runner};
#[cfg(feature = "torch")]
use demix_core::kind::{RunCtx, StepError};
use demix_core::manifest::Diags;
use demix_core::manifest::template::{self, Split};
use demix_spec::evaluate::{EVALUATE_MAX_TOKENS, EVALUATE_SEQ_LEN, EvalConfig};

use crate::fields::{check_ref_or_path, dataset_names, entry_span, report_problems};

/// Fields of an `evaluate` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct EvalFields {
    /// `${steps.ID.checkpoint}` or a Hugging Face model folder.
    pub checkpoint: String,
    /// Datasets (by name) whose validation documents give loss, perplexity and bits per byte.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Benchmark tasks: name -> JSON Lines file (multiple choice or question/answer).
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    #[serde(flatten)]
    pub eval: EvalConfig,
}

pub struct Evaluate;

impl Kind for Evaluate {
    const NAME: &'static str = "evaluate";
    // 2: a seeded sample spread over the split, not its first documents.
    // 3: multiple-choice tasks record their chance level.
    const VERSION: u32 = 3;
    const SUMMARY: &'static str =
        "evaluates a checkpoint: validation loss, perplexity, bits per byte, benchmark tasks";
    type Fields = EvalFields;
    type Params = EvalFields;

    fn plan(&self, mut f: EvalFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut paths = Vec::new();
        check_ref_or_path(d, body, "checkpoint", &f.checkpoint, &mut paths);
        for (name, p) in &f.tasks {
            let at = entry_span(body, "tasks", name);
            if template::has_refs(p) {
                d.error(&at, "task files are paths relative to the manifest", "task");
            } else {
                paths.push(Spanned::new(at, p.clone()));
            }
        }
        if f.datasets.is_empty() && f.tasks.is_empty() {
            d.error(
                body.span(),
                "an evaluate step needs `datasets` or `tasks`",
                "evaluate",
            );
        }
        report_problems(d, body, f.eval.problems());
        // The defaults written in, so the key and the lineage say what was used.
        f.eval = f.eval.with_defaults(EVALUATE_MAX_TOKENS, EVALUATE_SEQ_LEN);
        Some(Plan {
            paths,
            outputs: BTreeMap::from([("metrics".to_string(), "metrics.json".to_string())]),
            datasets: dataset_names(body, "datasets", &f.datasets, Split::Validation),
            ..Plan::new(&f)
        })
    }

    fn runner(&self, _: &EvalFields) -> Runner {
        Runner::Worker
    }

    #[cfg(feature = "torch")]
    fn run(&self, f: EvalFields, ctx: &RunCtx) -> Result<(), StepError> {
        use crate::ml_run::{ml_err, one_path, progress, shard, tokenizer_hash};
        use demix_ml as ml;
        let ckpt = one_path(ctx, &f.checkpoint)?.to_path_buf();
        let tok_path = ckpt.join("tokenizer.json");
        let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
        let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
        let mut validation = BTreeMap::new();
        for name in &f.datasets {
            validation.insert(
                name.clone(),
                shard(ctx, name, Split::Validation, &tok, &tok_hash)?,
            );
        }
        let mut tasks = BTreeMap::new();
        for (name, p) in &f.tasks {
            tasks.insert(name.clone(), one_path(ctx, p)?.to_path_buf());
        }
        let paths = ml::evaluate::EvalPaths {
            validation,
            tasks,
            output: None,
        };
        let mut report =
            ml::evaluate::evaluate_checkpoint(&ckpt, &f.eval, &paths, &progress(ctx), ctx.cancel)
                .map_err(ml_err)?;
        // The device it ran on (what `auto` came to), for lineage.
        let device = ml::device::resolve_device(f.eval.device).map_err(ml_err)?;
        ctx.fact("device", ml::device::device_name(device));
        // Name the checkpoint as the manifest does, not by its path in this store,
        // so the same evaluation gives the same bytes in any store.
        report.checkpoint = Some(f.checkpoint.clone().into());
        demix_core::kind::write_json(ctx, "metrics.json", &report)
    }
}
