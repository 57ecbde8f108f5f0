//! `kind: validate`: judges proxies against reference models trained on random
//! mixtures (the paper's validation, see [`crate::mix::validate`]).
//!
//! Score sets, one row per reference mixture:
//! - `merged`: the components merged at each mixture and evaluated (needs
//!   libtorch; only with `components`);
//! - `proxies`: other models evaluated at the same mixtures (RegMix's trained
//!   proxies, early checkpoints of the references);
//! - `searches`: a search step's predictor, refitted from its proxy table;
//! - the baselines `weights` and `linear` (the components' own scores,
//!   weighted by the mixture; needs `components`).
//!
//! Without `components` the step needs no libtorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ml::{dataset_names, span_of as span};
use super::{Plan, RunCtx, StepError, StepKind};
use crate::manifest::template::{self, Piece, Ref, Select, Split};
use crate::manifest::{Diags, serde_diag};
use crate::mix::predict::Predictor;
use crate::mix::search::{OBJECTIVE_NAMES, Objective, Target};
use crate::mix::validate::{
    PredictorKind, ScoreSet, ValidateConfig, Validation, linear_baseline, merge_warnings, validate,
    weights_baseline,
};
use crate::report::data::{read_evaluation, read_search};

/// Fields of a `validate` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateFields {
    /// The reference mixtures: a `sample` step's `${steps.ID.mixtures}`.
    pub mixtures: String,
    /// The references' evaluations, one per mixture in order:
    /// `${steps.ID[*].metrics}` of an evaluate step. With `replicas: R`,
    /// R per mixture, one after another (a `matrix` over mixtures, then seeds).
    pub references: String,
    /// Models trained per reference mixture with different seeds (default 1).
    /// With 2 or more, the references are their mean, and the validation
    /// measures each target's seed noise and the noise ceiling of every rho.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The candidate datasets, in the components' (and the searches') order.
    pub candidates: Vec<String>,
    /// Datasets whose validation loss is compared.
    pub targets: Vec<String>,
    /// The component checkpoints, `${steps.ID[*].checkpoint}`: merged proxies at
    /// every reference mixture, and the `linear` baseline.
    #[serde(default)]
    pub components: Option<String>,
    /// Other proxies evaluated at the reference mixtures: label ->
    /// `${steps.ID[*].metrics}`, one per mixture in order.
    #[serde(default)]
    pub proxies: BTreeMap<String, String>,
    /// Search steps whose predictor is judged: label -> `${steps.ID.result}`.
    #[serde(default)]
    pub searches: BTreeMap<String, String>,
    /// Final models to rank among the references: label -> `${steps.ID.metrics}`,
    /// or `${steps.ID[*].metrics}` for one model per seed.
    #[serde(default)]
    pub finals: BTreeMap<String, String>,
    /// Final models to compare seed by seed: the chosen one's label and its
    /// baselines' (labels of `finals`, with as many seeds each, in the same order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictFields>,
    /// Total training tokens each predictor cost, for the table: label -> tokens
    /// (`merged`, `linear` and your labels).
    #[serde(default)]
    pub costs: BTreeMap<String, u64>,
    /// The headline objective: `mean_rank`, `mean_loss`, `standardized` or
    /// `weighted_loss` (every other one is reported beside it).
    #[serde(default = "default_objective")]
    pub objective: String,
    #[serde(default)]
    pub objective_weights: Option<Vec<f64>>,
    /// The paper's top-25 %.
    #[serde(default = "default_top")]
    pub top_fraction: f64,
    /// Bootstrap resamples of the rho confidence intervals (0: none).
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    #[serde(default)]
    pub seed: u64,
    /// Evaluation of merged proxies, as in `search`.
    #[serde(default = "default_eval_tokens")]
    pub max_tokens: u64,
    #[serde(default = "default_seq")]
    pub seq_len: u32,
    #[serde(default = "default_batch")]
    pub batch_size: u32,
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

/// Which final models a verdict compares.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictFields {
    /// The label of the model trained on the chosen mixture, or a list of them
    /// (e.g. one per search seed), each compared with every baseline.
    #[serde(deserialize_with = "one_or_many")]
    #[schemars(with = "crate::manifest::OneOrMany")]
    pub chosen: Vec<String>,
    /// The labels of the models it is compared with (uniform, RegMix's).
    pub against: Vec<String>,
}

impl VerdictFields {
    /// Every (chosen, baseline) pair, in order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.chosen
            .iter()
            .flat_map(|c| self.against.iter().map(move |b| (c.clone(), b.clone())))
            .collect()
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => vec![s],
        Either::Many(v) => v,
    })
}

fn default_replicas() -> u32 {
    1
}

fn default_objective() -> String {
    super::search::DEFAULT_OBJECTIVE.into()
}
fn default_top() -> f64 {
    0.25
}
fn default_bootstrap() -> usize {
    1000
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

pub const JSON: &str = "validation.json";
pub const MARKDOWN: &str = "validation.md";

pub struct Validate;

/// Checks that `v` is one step reference, fanned out (`[*]`) or not as `all` says.
fn check_ref(d: &mut Diags, sp: marked_yaml::Span, key: &str, v: &str, all: bool) {
    let ok = match template::parse(v) {
        Ok(p) => match p.as_slice() {
            [Piece::Ref(Ref::Step { select, .. })] => (*select == Select::All) == all,
            _ => false,
        },
        Err(_) => false,
    };
    if !ok {
        let want = if all {
            "one `${steps.ID[*].OUTPUT}` reference (every node of a fan-out, in order)"
        } else {
            "one `${steps.ID.OUTPUT}` reference"
        };
        d.error(&sp, format!("`{key}` takes {want}"), key);
    }
}

/// Checks that `v` is one step reference, fanned out or not.
fn check_ref_any(d: &mut Diags, sp: marked_yaml::Span, key: &str, v: &str) {
    let ok = matches!(
        template::parse(v).as_deref(),
        Ok([Piece::Ref(Ref::Step { .. })])
    );
    if !ok {
        d.error(
            &sp,
            format!(
                "`{key}` takes one `${{steps.ID.OUTPUT}}` or `${{steps.ID[*].OUTPUT}}` reference"
            ),
            key,
        );
    }
}

/// A verdict's labels must name final models (or evaluations, for a report).
pub(super) fn check_verdict(
    d: &mut Diags,
    body: &Node,
    v: &VerdictFields,
    labels: &BTreeMap<String, String>,
) {
    let at = |k: &str| {
        body.as_mapping()
            .and_then(|m| m.get_mapping("verdict"))
            .and_then(|m| m.get_node(k))
            .map(|n| *n.span())
            .unwrap_or(span(body, "verdict"))
    };
    let field = if body
        .as_mapping()
        .is_some_and(|m| m.get_node("finals").is_some())
    {
        "finals"
    } else {
        "evaluations"
    };
    let named = v
        .chosen
        .iter()
        .map(|l| ("chosen", l))
        .chain(v.against.iter().map(|l| ("against", l)));
    for (k, label) in named {
        if !labels.contains_key(label) {
            d.push(
                &at(k),
                format!("the verdict names `{label}`, which is not a label of `{field}`"),
                "verdict",
                crate::manifest::did_you_mean(label, labels.keys().map(String::as_str)).or_else(
                    || {
                        Some(format!(
                            "labels: {}",
                            labels.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    },
                ),
            );
        }
    }
    if v.against.is_empty() {
        d.error(
            &at("against"),
            "a verdict needs at least one model to compare against",
            "verdict",
        );
    }
    if v.chosen.is_empty() {
        d.error(&at("chosen"), "a verdict needs a chosen model", "verdict");
    }
    if let Some(c) = v.chosen.iter().find(|c| v.against.contains(c)) {
        d.error(
            &at("against"),
            format!("`{c}` is compared with itself"),
            "verdict",
        );
    }
}

/// A verdict compares seed by seed: every model it names needs as many seeds.
pub(super) fn verdict_counts(
    body: &Node,
    v: &VerdictFields,
    labels: &BTreeMap<String, String>,
) -> Vec<super::CountCheck> {
    let mut out = Vec::new();
    for (c, b) in v.pairs() {
        if let (Some(cr), Some(br)) = (labels.get(&c), labels.get(&b)) {
            out.push(super::CountCheck {
                inputs: vec![br.clone()],
                expected: super::Expected::SameAs(cr.clone(), format!("of `{c}`")),
                what: format!("models of `{b}`"),
                span: span(body, "verdict"),
            });
        }
    }
    out
}

fn entry_span(body: &Node, field: &str, label: &str) -> marked_yaml::Span {
    body.as_mapping()
        .and_then(|m| m.get_mapping(field))
        .and_then(|m| m.get_node(label))
        .map(|n| *n.span())
        .unwrap_or(span(body, field))
}

impl StepKind for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }
    fn version(&self) -> u32 {
        // 2: replicas, noise ceilings, every objective, verdicts; sampled evaluation.
        2
    }
    fn summary(&self) -> &'static str {
        "judges proxies against reference models trained on random mixtures (Spearman, recovery, ranks)"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<ValidateFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let f: ValidateFields = match marked_yaml::from_node(body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "validate step", e);
                return None;
            }
        };
        let before = d.problems.len();
        check_ref(d, span(body, "mixtures"), "mixtures", &f.mixtures, false);
        check_ref(
            d,
            span(body, "references"),
            "references",
            &f.references,
            true,
        );
        if let Some(c) = &f.components {
            check_ref(d, span(body, "components"), "components", c, true);
        }
        for (label, v) in &f.proxies {
            check_ref(d, entry_span(body, "proxies", label), "proxies", v, true);
        }
        for (label, v) in &f.searches {
            check_ref(d, entry_span(body, "searches", label), "searches", v, false);
        }
        for (label, v) in &f.finals {
            check_ref_any(d, entry_span(body, "finals", label), "finals", v);
        }
        if f.replicas == 0 {
            d.error(
                &span(body, "replicas"),
                "`replicas` must be at least 1",
                "replicas",
            );
        }
        if let Some(v) = &f.verdict {
            check_verdict(d, body, v, &f.finals);
        }
        if f.candidates.len() < 2 {
            d.error(
                &span(body, "candidates"),
                "validation needs at least two candidates",
                "candidates",
            );
        }
        if f.targets.is_empty() {
            d.error(
                &span(body, "targets"),
                "validation needs at least one target dataset",
                "targets",
            );
        }
        if f.components.is_none() && f.proxies.is_empty() && f.searches.is_empty() {
            d.error(
                body.span(),
                "nothing to validate: give `components` (merged proxies), `proxies` or `searches`",
                "validate",
            );
        }
        if !(f.top_fraction > 0.0 && f.top_fraction <= 1.0) {
            d.error(
                &span(body, "top_fraction"),
                format!("`top_fraction` must be in (0, 1], not {}", f.top_fraction),
                "top_fraction",
            );
        }
        if f.max_tokens == 0 || f.seq_len == 0 || f.batch_size == 0 {
            d.error(
                body.span(),
                "`max_tokens`, `seq_len` and `batch_size` must be more than 0",
                "validate",
            );
        }
        let labels: Vec<&String> = f.proxies.keys().chain(f.searches.keys()).collect();
        for reserved in ["merged", "weights", "linear"] {
            if labels.iter().any(|l| *l == reserved) {
                d.error(
                    body.span(),
                    format!("`{reserved}` names a built-in predictor; label yours otherwise"),
                    "validate",
                );
            }
        }
        if let Some(l) = f.proxies.keys().find(|l| f.searches.contains_key(*l)) {
            d.error(
                &entry_span(body, "searches", l),
                format!("`{l}` labels both a proxy set and a search"),
                "searches",
            );
        }
        check_objective(d, body, &f.objective, &f.objective_weights, f.targets.len());
        super::ml::check_device(d, body, &f.device);
        if d.problems.len() > before {
            return None;
        }
        // Merged proxies are evaluated on the targets' validation data.
        let datasets = if f.components.is_some() {
            dataset_names(body, "targets", &f.targets, Split::Validation)
        } else {
            Vec::new()
        };
        let mut counts: Vec<super::CountCheck> = f
            .components
            .iter()
            .map(|c| super::CountCheck {
                inputs: vec![c.clone()],
                expected: super::Expected::Number(f.candidates.len(), "candidates".into()),
                what: "components".into(),
                span: span(body, "components"),
            })
            .collect();
        if let Some(v) = &f.verdict {
            counts.extend(verdict_counts(body, v, &f.finals));
        }
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths: Vec::new(),
            outputs: BTreeMap::from([
                ("result".to_string(), JSON.to_string()),
                ("summary".to_string(), MARKDOWN.to_string()),
            ]),
            runtime_refs: false,
            datasets,
            counts,
            memory: None,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        let f: ValidateFields = serde_json::from_value(ctx.spec.params.clone())
            .map_err(|e| StepError::Failed(format!("bad step spec: {e}")))?;
        let merged = match &f.components {
            None => None,
            Some(_) => {
                #[cfg(feature = "torch")]
                {
                    let mixtures = read_mixtures(one(ctx, &f.mixtures)?, &f.candidates)?;
                    Some(super::run::merged_scores(ctx, &f, &mixtures)?)
                }
                #[cfg(not(feature = "torch"))]
                return Err(StepError::Failed(
                    "`validate` with `components` evaluates merged proxies with libtorch, and this demix was built without it: build with `--features torch` (scripts/demix does)".into(),
                ));
            }
        };
        let v = run_with(ctx, &f, merged)?;
        super::write_json(ctx, JSON, &v)?;
        std::fs::write(
            ctx.out_dir.join(MARKDOWN),
            crate::report::markdown::validation(&v),
        )
        .map_err(StepError::io("writing validation.md"))?;
        Ok(())
    }
}

pub(super) fn check_objective(
    d: &mut Diags,
    body: &Node,
    objective: &str,
    weights: &Option<Vec<f64>>,
    targets: usize,
) {
    if Objective::named(objective, None, targets).is_none() {
        d.push(
            &span(body, "objective"),
            format!("unknown objective `{objective}`"),
            "objective",
            crate::manifest::did_you_mean(objective, OBJECTIVE_NAMES.iter().copied())
                .or_else(|| Some(format!("objectives: {}", OBJECTIVE_NAMES.join(", ")))),
        );
        return;
    }
    if let Some(w) = weights {
        if objective != "weighted_loss" {
            d.error(
                &span(body, "objective_weights"),
                "`objective_weights` go with `objective: weighted_loss`",
                "objective_weights",
            );
        } else if w.len() != targets || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
            d.error(
                &span(body, "objective_weights"),
                format!("one finite weight >= 0 per target ({targets})"),
                "objective_weights",
            );
        }
    }
}

pub(super) fn objective(name: &str, weights: &Option<Vec<f64>>, targets: usize) -> Objective {
    Objective::named(name, weights.as_deref(), targets).unwrap_or_default()
}

fn one<'a>(ctx: &'a RunCtx, key: &str) -> Result<&'a Path, StepError> {
    ctx.input(key)?
        .first()
        .map(PathBuf::as_path)
        .ok_or_else(|| StepError::Failed(format!("input `{key}` has no path")))
}

/// The reference mixtures as weight rows in the candidates' order.
pub(super) fn read_mixtures(
    path: &Path,
    candidates: &[String],
) -> Result<Vec<Vec<f64>>, StepError> {
    let bad = |why: String| StepError::Failed(format!("{}: {why}", path.display()));
    let bytes =
        std::fs::read(path).map_err(StepError::io(format!("reading {}", path.display())))?;
    let list: Vec<BTreeMap<String, f64>> = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "not a list of mixtures (a sample step's mixtures.json): {e}"
        ))
    })?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            if let Some(k) = m.keys().find(|k| !candidates.contains(k)) {
                return Err(bad(format!(
                    "mixture {i} weights `{k}`, which is not a candidate"
                )));
            }
            let row: Vec<f64> = candidates
                .iter()
                .map(|c| m.get(c).copied().unwrap_or(0.0))
                .collect();
            let s: f64 = row.iter().sum();
            if s.is_nan() || s <= 0.0 || row.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(bad(format!(
                    "mixture {i} is not weights >= 0 with a positive sum"
                )));
            }
            Ok(row.into_iter().map(|x| x / s).collect())
        })
        .collect()
}

/// Target losses from evaluate steps' metrics.json files.
fn losses(paths: &[PathBuf], targets: &[String]) -> Result<Vec<Vec<f64>>, StepError> {
    paths
        .iter()
        .map(|p| {
            let e = read_evaluation(p).map_err(StepError::Failed)?;
            targets
                .iter()
                .map(|t| {
                    e.datasets
                        .iter()
                        .find(|m| m.name == *t)
                        .and_then(|m| m.get("loss"))
                        .ok_or_else(|| {
                            StepError::Failed(format!(
                                "{}: no validation loss for target `{t}`; evaluate it on the target datasets",
                                p.display()
                            ))
                        })
                })
                .collect()
        })
        .collect()
}

/// Merged proxies' scores at the reference mixtures, and the components' own.
pub struct Merged {
    pub proxies: Vec<Vec<f64>>,
    pub components: Vec<Vec<f64>>,
}

fn run_with(
    ctx: &RunCtx,
    f: &ValidateFields,
    merged: Option<Merged>,
) -> Result<Validation, StepError> {
    let mixtures = read_mixtures(one(ctx, &f.mixtures)?, &f.candidates)?;
    let refs_paths = ctx.input(&f.references)?;
    let r = f.replicas.max(1) as usize;
    if refs_paths.len() != mixtures.len() * r {
        return Err(StepError::Failed(format!(
            "{} reference evaluations for {} mixtures x {r} replicas: `references` must evaluate {r} model(s) per mixture, mixture by mixture",
            refs_paths.len(),
            mixtures.len()
        )));
    }
    let all = losses(refs_paths, &f.targets)?;
    // Replica k of mixture i is evaluation i * r + k.
    let replicas: Vec<Vec<Vec<f64>>> = (0..r)
        .map(|k| all.iter().skip(k).step_by(r).cloned().collect())
        .collect();
    let targets: Vec<Target> = f.targets.iter().map(|t| Target::loss(t)).collect();
    let cost = |label: &str| f.costs.get(label).copied();
    let mut sets = Vec::new();
    let mut warnings = Vec::new();
    if let Some(m) = merged {
        warnings.extend(merge_warnings(&targets, &m.components, &m.proxies));
        sets.push(ScoreSet {
            name: "merged".into(),
            kind: PredictorKind::Proxy,
            scores: m.proxies,
            in_units: true,
            training_tokens: cost("merged"),
        });
        sets.push(ScoreSet {
            name: "linear".into(),
            kind: PredictorKind::Baseline,
            scores: linear_baseline(&m.components, &mixtures),
            in_units: true,
            training_tokens: cost("linear"),
        });
    }
    for (label, key) in &f.proxies {
        let paths = ctx.input(key)?;
        if paths.len() != mixtures.len() {
            return Err(StepError::Failed(format!(
                "proxies `{label}`: {} evaluations for {} mixtures",
                paths.len(),
                mixtures.len()
            )));
        }
        sets.push(ScoreSet {
            name: label.clone(),
            kind: PredictorKind::Proxy,
            scores: losses(paths, &f.targets)?,
            in_units: true,
            training_tokens: cost(label),
        });
    }
    for (label, key) in &f.searches {
        let path = one(ctx, key)?;
        let r = read_search(path).map_err(StepError::Failed)?;
        if !r.candidates.is_empty() && r.candidates != f.candidates {
            return Err(StepError::Failed(format!(
                "{}: the search's candidates are {:?}, this step names {:?}: give them in the search's order",
                path.display(),
                r.candidates,
                f.candidates
            )));
        }
        if !r.objective.same_kind(&objective(
            &f.objective,
            &f.objective_weights,
            f.targets.len(),
        )) {
            warnings.push(format!(
                "search `{label}` optimised a different objective than this validation's headline"
            ));
        }
        if r.chosen.len() != f.candidates.len() {
            return Err(StepError::Failed(format!(
                "{}: the search mixes {} candidates, this step names {}",
                path.display(),
                r.chosen.len(),
                f.candidates.len()
            )));
        }
        let xs: Vec<Vec<f64>> = r.proxies.iter().map(|p| p.weights.clone()).collect();
        let mut cols = Vec::new();
        for t in &f.targets {
            let Some(k) = r.targets.iter().position(|x| x.name == *t) else {
                return Err(StepError::Failed(format!(
                    "{}: the search did not score target `{t}`",
                    path.display()
                )));
            };
            let ys: Vec<f64> = r.proxies.iter().map(|p| p.scores[k]).collect();
            // The kind the search itself chose for this target, when it says.
            let fit = match r.final_fits.iter().find(|x| x.target == *t) {
                Some(x) => Predictor::fit_kind(x.model, &r.predictor, &xs, &ys),
                None => Predictor::fit(&r.predictor, &xs, &ys),
            };
            let p =
                fit.map_err(|e| StepError::Failed(format!("refitting `{label}` on `{t}`: {e}")))?;
            cols.push(p.predict_many(&mixtures));
        }
        let scores = (0..mixtures.len())
            .map(|i| cols.iter().map(|c| c[i]).collect())
            .collect();
        sets.push(ScoreSet {
            name: label.clone(),
            kind: PredictorKind::Search,
            scores,
            in_units: true,
            training_tokens: cost(label),
        });
    }
    sets.push(ScoreSet {
        name: "weights".into(),
        kind: PredictorKind::Baseline,
        scores: weights_baseline(&targets, &f.candidates, &mixtures),
        in_units: false,
        training_tokens: None,
    });
    let mut finals = Vec::new();
    for (label, key) in &f.finals {
        finals.push((label.clone(), losses(ctx.input(key)?, &f.targets)?));
    }
    let cfg = ValidateConfig {
        objective: objective(&f.objective, &f.objective_weights, targets.len()),
        targets,
        top_fraction: f.top_fraction,
        bootstrap: f.bootstrap,
        level: 0.9,
        seed: f.seed,
        verdicts: f
            .verdict
            .as_ref()
            .map(VerdictFields::pairs)
            .unwrap_or_default(),
    };
    let mut v = validate(&cfg, mixtures, replicas, sets, finals)
        .map_err(|e| StepError::Failed(e.to_string()))?;
    for n in v.noise.iter().filter(|n| n.flagged) {
        warnings.push(format!(
            "target `{}`: its spread across mixtures ({:.4}) is under {} times its seed noise ({:.4}), so its ranking is mostly noise",
            n.target,
            n.spread,
            crate::mix::validate::FLAG_SNR,
            n.noise
        ));
    }
    v.warnings = warnings;
    Ok(v)
}
