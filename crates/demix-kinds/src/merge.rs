//! `kind: merge`: a streaming merge of component checkpoints into one Hugging Face
//! checkpoint (linear, task arithmetic, TIES, DARE). Needs no libtorch.

use std::collections::BTreeMap;
use std::path::PathBuf;

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::key::Origin;
use demix_core::kind::{CountCheck, Expected, Kind, Plan, RunCtx, StepError};
use demix_core::manifest::template::{self, Piece, Ref};
use demix_core::manifest::{Diags, listify};
use demix_mix::merge::{Components, DareCombine, MergeReport, MergeSpec, Method};

use crate::card;
use crate::fields::span_of as field_span;

/// How models are merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MergeMethod {
    /// Weights normalised to sum to 1, tensor by tensor (the paper's).
    #[default]
    Linear,
    /// base + scale * sum w_i (model_i - base).
    TaskArithmetic,
    /// TIES: trim each task vector to its largest entries, elect signs, merge.
    Ties,
    /// DARE: drop task-vector entries at random, rescale, add.
    Dare,
}

/// Fields of a `merge` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct MergeFields {
    /// The models to merge, in order: `${steps.ID[*].checkpoint}` and/or single references.
    pub models: Vec<String>,
    /// One weight per model (after `[*]` expansion). `linear` normalises them to sum to 1.
    pub weights: Vec<f64>,
    /// `linear` (the paper's), `task_arithmetic`, `ties` or `dare`.
    #[serde(default)]
    pub method: MergeMethod,
    /// The shared base, for task arithmetic, TIES and DARE.
    #[serde(default)]
    pub base: Option<String>,
    /// Task-vector scale (task_arithmetic, ties, dare).
    #[serde(default)]
    pub scale: Option<f64>,
    /// TIES: share of each task vector's largest entries kept.
    #[serde(default)]
    pub density: Option<f64>,
    /// DARE: drop probability.
    #[serde(default)]
    pub drop: Option<f64>,
    /// DARE: seed of the drop masks.
    #[serde(default)]
    pub seed: u64,
}

impl MergeFields {
    pub fn spec(&self, weights: Vec<f64>) -> MergeSpec {
        let scale = self.scale.unwrap_or(1.0);
        let method = match self.method {
            MergeMethod::Linear => Method::Linear,
            MergeMethod::TaskArithmetic => Method::TaskArithmetic { scale },
            MergeMethod::Ties => Method::Ties {
                density: self.density.unwrap_or(0.2),
                scale,
            },
            MergeMethod::Dare => Method::Dare {
                drop: self.drop.unwrap_or(0.9),
                seed: self.seed,
                combine: DareCombine::TaskArithmetic,
                scale,
            },
        };
        MergeSpec {
            method,
            weights,
            out_dtype: None,
        }
    }
}

pub struct Merge;

impl Kind for Merge {
    const NAME: &'static str = "merge";
    // 2: the merged folder carries bos/eos ids, generation_config.json and a
    // model card.
    const VERSION: u32 = 2;
    const SUMMARY: &'static str =
        "merges component checkpoints tensor by tensor (linear, task arithmetic, TIES, DARE)";
    type Fields = MergeFields;
    type Params = MergeFields;

    fn prepare(body: &mut Node) {
        if let Some(m) = body.as_mapping_mut() {
            listify(m, "models");
            listify(m, "weights");
        }
    }

    fn plan(&self, f: MergeFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let body = body.clone();
        let mut paths = Vec::new();
        for m in f.models.iter().chain(&f.base) {
            match template::parse(m) {
                Ok(p) if matches!(p.as_slice(), [Piece::Ref(Ref::Step { .. })]) => {}
                Ok(p) if matches!(p.as_slice(), [Piece::Lit(_)]) => paths.push(
                    marked_yaml::Spanned::new(field_span(&body, "models"), m.clone()),
                ),
                _ => d.error(
                    &field_span(&body, "models"),
                    format!("`{m}` is not a `${{steps.ID.OUTPUT}}` reference or a path"),
                    "models",
                ),
            }
        }
        if f.models.is_empty() {
            d.error(&field_span(&body, "models"), "nothing to merge", "models");
        }
        for w in &f.weights {
            if !w.is_finite() || *w < 0.0 {
                d.error(
                    &field_span(&body, "weights"),
                    format!("merge weights must be finite and >= 0, not {w}"),
                    "weights",
                );
            }
        }
        if f.method != MergeMethod::Linear && f.base.is_none() {
            d.error(
                &field_span(&body, "method"),
                format!(
                    "`{}` needs `base` (the shared starting checkpoint)",
                    serde_json::to_value(f.method)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or_default()
                ),
                "method",
            );
        }
        if let Some(x) = f.density
            && !(x > 0.0 && x <= 1.0)
        {
            d.error(
                &field_span(&body, "density"),
                format!("`density` must be in (0, 1], not {x}"),
                "density",
            );
        }
        if let Some(x) = f.drop
            && !(0.0..1.0).contains(&x)
        {
            d.error(
                &field_span(&body, "drop"),
                format!("`drop` must be in [0, 1), not {x}"),
                "drop",
            );
        }
        if f.method == MergeMethod::Linear
            && !f.weights.is_empty()
            && f.weights.iter().all(|w| *w == 0.0)
        {
            d.error(
                &field_span(&body, "weights"),
                "a linear merge's weights are all 0: they cannot be normalised",
                "weights",
            );
        }
        let counts = vec![CountCheck {
            inputs: f.models.clone(),
            expected: Expected::Number(f.weights.len(), "weights".into()),
            what: "models".into(),
            span: field_span(&body, "weights"),
        }];
        Some(Plan {
            paths,
            outputs: BTreeMap::from([("checkpoint".to_string(), "checkpoint/".to_string())]),
            counts,
            ..Plan::new(&f)
        })
    }
    fn run(&self, f: MergeFields, ctx: &RunCtx) -> Result<(), StepError> {
        let mut models: Vec<PathBuf> = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        for m in &f.models {
            let paths = ctx.input(m)?;
            models.extend(paths.iter().cloned());
            labels.extend(card::input_labels(ctx, m, paths.len()));
        }
        if models.len() != f.weights.len() {
            return Err(StepError::Failed(format!(
                "{} models but {} weights: give one weight per model (a `[*]` reference counts every node)",
                models.len(),
                f.weights.len()
            )));
        }
        let base = f
            .base
            .as_deref()
            .map(|b| ctx.input(b).map(|p| p[0].clone()))
            .transpose()?;
        let spec = f.spec(f.weights.clone());
        let base_label = f
            .base
            .as_deref()
            .and_then(|b| card::input_labels(ctx, b, 1).into_iter().next());
        let comps = Components::open(&models, base.as_deref())
            .map_err(StepError::library)?
            .with_labels(labels.clone(), base_label);
        let out = ctx.out_dir.join("checkpoint");
        let report = comps
            .merge_to_dir(&spec, &out)
            .map_err(StepError::library)?;
        write_card(ctx, &f, &models, &labels, &report, &out)
    }
}

/// The merged folder's special token ids, generation_config.json and model
/// card (see [`crate::card`]).
fn write_card(
    ctx: &RunCtx,
    f: &MergeFields,
    models: &[PathBuf],
    labels: &[String],
    report: &MergeReport,
    out: &std::path::Path,
) -> Result<(), StepError> {
    let config = card::finish_merged(out)?;
    // Each input's content hash: one per reference, a `[*]` one per node.
    let mut hashes = Vec::new();
    for m in &f.models {
        let n = ctx.input(m)?.len();
        match ctx.spec.record.inputs.get(m).map(|i| &i.origin) {
            Some(Origin::Steps { outputs }) if outputs.len() == n => {
                hashes.extend(outputs.iter().map(|u| Some(u.hash.clone())));
            }
            _ if n == 1 => hashes.push(ctx.spec.record.inputs.get(m).map(|r| r.hash.clone())),
            _ => hashes.extend(std::iter::repeat_n(None, n)),
        }
    }
    let method = serde_json::to_value(&report.spec.method).unwrap_or_default();
    let mut datasets: Vec<String> = models.iter().flat_map(|m| card::card_datasets(m)).collect();
    datasets.sort();
    datasets.dedup();
    let c = card::MergeCard {
        provenance: card::provenance(ctx),
        method: method["method"].as_str().unwrap_or_default().to_string(),
        parameters: method
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "method")
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect(),
        inputs: labels
            .iter()
            .enumerate()
            .map(|(i, l)| card::MergeInput {
                label: l.clone(),
                hash: hashes.get(i).cloned().flatten(),
                weight: f.weights.get(i).copied().unwrap_or_default(),
                coefficient: report.coefficients.get(i).copied().unwrap_or_default(),
            })
            .collect(),
        base: f.base.as_deref().map(|b| card::describe_input(ctx, b)),
        datasets,
        config,
    };
    card::write_card(out, &c.render())
}
