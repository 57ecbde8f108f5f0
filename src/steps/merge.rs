//! `kind: merge`: a streaming merge of component checkpoints into one Hugging Face
//! checkpoint (linear, task arithmetic, TIES, DARE). Needs no libtorch.

use std::collections::BTreeMap;
use std::path::PathBuf;

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Plan, RunCtx, StepError, StepKind};
use crate::manifest::template::{self, Piece, Ref};
use crate::manifest::{Diags, listify, serde_diag};
use crate::mix::merge::{Components, DareCombine, MergeSpec, Method};

/// Fields of a `merge` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeFields {
    /// The models to merge, in order: `${steps.ID[*].checkpoint}` and/or single references.
    pub models: Vec<String>,
    /// One weight per model (after `[*]` expansion). `linear` normalises them to sum to 1.
    pub weights: Vec<f64>,
    /// `linear` (the paper's), `task_arithmetic`, `ties` or `dare`.
    #[serde(default = "default_method")]
    pub method: String,
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

fn default_method() -> String {
    "linear".into()
}

impl MergeFields {
    pub fn spec(&self, weights: Vec<f64>) -> Result<MergeSpec, String> {
        let scale = self.scale.unwrap_or(1.0);
        let method = match self.method.as_str() {
            "linear" => Method::Linear,
            "task_arithmetic" => Method::TaskArithmetic { scale },
            "ties" => Method::Ties {
                density: self.density.unwrap_or(0.2),
                scale,
            },
            "dare" => Method::Dare {
                drop: self.drop.unwrap_or(0.9),
                seed: self.seed,
                combine: DareCombine::TaskArithmetic,
                scale,
            },
            other => {
                return Err(format!(
                    "unknown merge method `{other}` (linear, task_arithmetic, ties, dare)"
                ));
            }
        };
        Ok(MergeSpec {
            method,
            weights,
            out_dtype: None,
        })
    }
}

pub struct Merge;

fn field_span(body: &Node, key: &str) -> marked_yaml::Span {
    body.as_mapping()
        .and_then(|m| m.get_node(key))
        .map(|n| *n.span())
        .unwrap_or(*body.span())
}

impl StepKind for Merge {
    fn name(&self) -> &'static str {
        "merge"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "merges component checkpoints tensor by tensor (linear, task arithmetic, TIES, DARE)"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<MergeFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut body = body.clone();
        if let Some(m) = body.as_mapping_mut() {
            listify(m, "models");
            listify(m, "weights");
        }
        let f: MergeFields = match marked_yaml::from_node(&body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "merge step", e);
                return None;
            }
        };
        let before = d.problems.len();
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
        if let Err(e) = f.spec(f.weights.clone()) {
            d.error(&field_span(&body, "method"), e, "method");
        } else if f.method != "linear" && f.base.is_none() {
            d.error(
                &field_span(&body, "method"),
                format!(
                    "`{}` needs `base` (the shared starting checkpoint)",
                    f.method
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
        if f.method == "linear" && !f.weights.is_empty() && f.weights.iter().all(|w| *w == 0.0) {
            d.error(
                &field_span(&body, "weights"),
                "a linear merge's weights are all 0: they cannot be normalised",
                "weights",
            );
        }
        if d.problems.len() > before {
            return None;
        }
        let counts = vec![super::CountCheck {
            inputs: f.models.clone(),
            expected: super::Expected::Number(f.weights.len(), "weights".into()),
            what: "models".into(),
            span: field_span(&body, "weights"),
        }];
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths,
            outputs: BTreeMap::from([("checkpoint".to_string(), "checkpoint/".to_string())]),
            runtime_refs: false,
            datasets: Vec::new(),
            counts,
            memory: None,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        let f: MergeFields = serde_json::from_value(ctx.spec.params.clone())
            .map_err(|e| StepError::Failed(format!("bad step spec: {e}")))?;
        let mut models: Vec<PathBuf> = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        for m in &f.models {
            let paths = ctx.input(m)?;
            models.extend(paths.iter().cloned());
            labels.extend(input_labels(ctx, m, paths.len()));
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
        let spec = f.spec(f.weights.clone()).map_err(StepError::Failed)?;
        let base_label = f
            .base
            .as_deref()
            .and_then(|b| input_labels(ctx, b, 1).into_iter().next());
        let comps = Components::open(&models, base.as_deref())
            .map_err(|e| StepError::Failed(e.to_string()))?
            .with_labels(labels, base_label);
        comps
            .merge_to_dir(&spec, ctx.out_dir.join("checkpoint"))
            .map_err(|e| StepError::Failed(e.to_string()))?;
        Ok(())
    }
}

/// How `merge.json` names an input: the step output it came from
/// (`component[math].checkpoint`), or the path as the manifest wrote it.
fn input_labels(ctx: &RunCtx, key: &str, n: usize) -> Vec<String> {
    match ctx.spec.record.inputs.get(key).map(|i| &i.origin) {
        Some(crate::key::Origin::Steps { outputs }) if outputs.len() == n => outputs
            .iter()
            .map(|u| format!("{}.{}", u.step, u.output))
            .collect(),
        _ => vec![key.to_string(); n],
    }
}
