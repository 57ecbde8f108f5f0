//! `kind: validate`: judges proxies against reference models trained on random
//! mixtures (the paper's validation, see [`demix_mix::validate`]).
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
//! Without `components` the step runs in the engine, without libtorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{CountCheck, Expected, Kind, Plan, RunCtx, Runner, StepError, write_json};
use demix_core::manifest::template::Split;
use demix_core::manifest::{Diags, OneOrMany, did_you_mean};
use demix_mix::predict::Predictor;
use demix_mix::search::Target;
use demix_mix::validate::{
    FLAG_SNR, PredictorKind, ScoreSet, ValidateConfig, Validation, linear_baseline, merge_warnings,
    validate, weights_baseline,
};
use demix_report::data::{read_evaluation, read_search};
use demix_spec::evaluate::{EvalConfig, PROXY_MAX_TOKENS, PROXY_SEQ_LEN};

use crate::fields::{
    check_any_step_ref, check_step_ref, dataset_names, entry_span, report_problems, span_of as span,
};
use crate::search::{ObjectiveChoice, check_objective_weights};

/// Fields of a `validate` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// (`merged`, `linear` and your labels). Default: read from the lineage (a
    /// training's tokens, the budget of a `tokens_N` checkpoint, a search's
    /// components plus the proxies it trained); give a label to override it.
    #[serde(default)]
    pub costs: BTreeMap<String, u64>,
    /// The headline objective (every other one is reported beside it).
    #[serde(default)]
    pub objective: ObjectiveChoice,
    /// Weights of `weighted_loss`, one per target (default: equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_weights: Option<Vec<f64>>,
    /// The paper's top-25 %.
    #[serde(default = "default_top")]
    pub top_fraction: f64,
    /// Bootstrap resamples of the rho confidence intervals (0: none).
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
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
    /// How merged proxies are scored, as in `search` (default 16,384 tokens in
    /// windows of 256).
    #[serde(flatten)]
    pub eval: EvalConfig,
}

/// Which final models a verdict compares.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct VerdictFields {
    /// The label of the model trained on the chosen mixture, or a list of them
    /// (e.g. one per search seed), each compared with every baseline.
    #[serde(deserialize_with = "one_or_many")]
    #[schemars(with = "OneOrMany")]
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

fn default_top() -> f64 {
    0.25
}
fn default_bootstrap() -> usize {
    1000
}

pub const JSON: &str = "validation.json";
pub const MARKDOWN: &str = "validation.md";

pub struct Validate;

/// A verdict's labels must name final models (or evaluations, for a report).
pub fn check_verdict(
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
                did_you_mean(label, labels.keys().map(String::as_str)).or_else(|| {
                    Some(format!(
                        "labels: {}",
                        labels.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }),
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
pub fn verdict_counts(
    body: &Node,
    v: &VerdictFields,
    labels: &BTreeMap<String, String>,
) -> Vec<CountCheck> {
    let mut out = Vec::new();
    for (c, b) in v.pairs() {
        if let (Some(cr), Some(br)) = (labels.get(&c), labels.get(&b)) {
            out.push(CountCheck {
                inputs: vec![br.clone()],
                expected: Expected::SameAs(cr.clone(), format!("of `{c}`")),
                what: format!("models of `{b}`"),
                span: span(body, "verdict"),
            });
        }
    }
    out
}

impl Kind for Validate {
    const NAME: &'static str = "validate";
    // 2: replicas, noise ceilings, every objective, verdicts; sampled evaluation.
    const VERSION: u32 = 2;
    const SUMMARY: &'static str = "judges proxies against reference models trained on random mixtures (Spearman, recovery, ranks)";
    type Fields = ValidateFields;
    type Params = ValidateFields;

    fn plan(&self, mut f: ValidateFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        check_refs(&f, body, d);
        check_settings(&f, body, d);
        f.eval = f.eval.with_defaults(PROXY_MAX_TOKENS, PROXY_SEQ_LEN);
        // Merged proxies are evaluated on the targets' validation data.
        let datasets = if f.components.is_some() {
            dataset_names(body, "targets", &f.targets, Split::Validation)
        } else {
            Vec::new()
        };
        let mut counts: Vec<CountCheck> = f
            .components
            .iter()
            .map(|c| CountCheck {
                inputs: vec![c.clone()],
                expected: Expected::Number(f.candidates.len(), "candidates".into()),
                what: "components".into(),
                span: span(body, "components"),
            })
            .collect();
        if let Some(v) = &f.verdict {
            counts.extend(verdict_counts(body, v, &f.finals));
        }
        Some(Plan {
            outputs: BTreeMap::from([
                ("result".to_string(), JSON.to_string()),
                ("summary".to_string(), MARKDOWN.to_string()),
            ]),
            datasets,
            counts,
            ..Plan::new(&f)
        })
    }

    fn runner(&self, f: &ValidateFields) -> Runner {
        // Only merged proxies need libtorch.
        if f.components.is_some() {
            Runner::Worker
        } else {
            Runner::Engine
        }
    }

    fn run(&self, f: ValidateFields, ctx: &RunCtx) -> Result<(), StepError> {
        let merged = match &f.components {
            None => None,
            #[cfg(feature = "torch")]
            Some(_) => {
                let mixtures = read_mixtures(one(ctx, &f.mixtures)?, &f.candidates)?;
                Some(merged_scores(ctx, &f, &mixtures)?)
            }
            #[cfg(not(feature = "torch"))]
            Some(_) => return Err(StepError::NeedsWorker("validate")),
        };
        let v = run_with(ctx, &f, merged)?;
        write_json(ctx, JSON, &v)?;
        std::fs::write(
            ctx.out_dir.join(MARKDOWN),
            demix_report::markdown::validation(&v),
        )
        .map_err(StepError::io("writing validation.md"))?;
        Ok(())
    }
}

/// Every input is a step reference of the right shape.
fn check_refs(f: &ValidateFields, body: &Node, d: &mut Diags) {
    check_step_ref(d, span(body, "mixtures"), "mixtures", &f.mixtures, false);
    check_step_ref(
        d,
        span(body, "references"),
        "references",
        &f.references,
        true,
    );
    if let Some(c) = &f.components {
        check_step_ref(d, span(body, "components"), "components", c, true);
    }
    for (label, v) in &f.proxies {
        check_step_ref(d, entry_span(body, "proxies", label), "proxies", v, true);
    }
    for (label, v) in &f.searches {
        check_step_ref(d, entry_span(body, "searches", label), "searches", v, false);
    }
    for (label, v) in &f.finals {
        check_any_step_ref(d, entry_span(body, "finals", label), "finals", v);
    }
    if let Some(v) = &f.verdict {
        check_verdict(d, body, v, &f.finals);
    }
}

/// Counts, fractions, labels and the objective.
fn check_settings(f: &ValidateFields, body: &Node, d: &mut Diags) {
    if f.replicas == 0 {
        d.error(
            &span(body, "replicas"),
            "`replicas` must be at least 1",
            "replicas",
        );
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
    report_problems(d, body, f.eval.problems());
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
    check_objective_weights(d, body, f.objective, &f.objective_weights, f.targets.len());
}

fn one<'a>(ctx: &'a RunCtx, key: &str) -> Result<&'a Path, StepError> {
    ctx.input(key)?
        .first()
        .map(PathBuf::as_path)
        .ok_or_else(|| StepError::Failed(format!("input `{key}` has no path")))
}

/// The reference mixtures as weight rows in the candidates' order.
pub fn read_mixtures(path: &Path, candidates: &[String]) -> Result<Vec<Vec<f64>>, StepError> {
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
            let e = read_evaluation(p).map_err(StepError::library)?;
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
    // The manifest's `costs`, else what the components' lineage says.
    let components_cost = f
        .components
        .as_deref()
        .and_then(|c| crate::cost::of_input(ctx.store, &ctx.spec.record, c));
    let cost = |label: &str| f.costs.get(label).copied().or(components_cost);
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
        sets.push(proxy_set(ctx, f, label, key, mixtures.len())?);
    }
    for (label, key) in &f.searches {
        sets.push(search_set(ctx, f, label, key, &mixtures, &mut warnings)?);
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
    let cfg = validate_config(f, targets);
    let mut v = validate(&cfg, mixtures, replicas, sets, finals)
        .map_err(|e| StepError::Failed(e.to_string()))?;
    for n in v.noise.iter().filter(|n| n.flagged) {
        warnings.push(format!(
            "target `{}`: its spread across mixtures ({:.4}) is under {} times its seed noise ({:.4}), so its ranking is mostly noise",
            n.target,
            n.spread,
            FLAG_SNR,
            n.noise
        ));
    }
    v.warnings = warnings;
    Ok(v)
}

/// What the predictor `label` (reading input `key`) cost in training tokens:
/// the manifest's `costs`, else what the lineage of its input says.
fn cost_of(ctx: &RunCtx, f: &ValidateFields, label: &str, key: &str) -> Option<u64> {
    f.costs
        .get(label)
        .copied()
        .or_else(|| crate::cost::of_input(ctx.store, &ctx.spec.record, key))
}

/// A trained-proxy predictor: one evaluation per reference mixture.
fn proxy_set(
    ctx: &RunCtx,
    f: &ValidateFields,
    label: &str,
    key: &str,
    n_mixtures: usize,
) -> Result<ScoreSet, StepError> {
    let paths = ctx.input(key)?;
    if paths.len() != n_mixtures {
        return Err(StepError::Failed(format!(
            "proxies `{label}`: {} evaluations for {} mixtures",
            paths.len(),
            n_mixtures
        )));
    }
    Ok(ScoreSet {
        name: label.to_string(),
        kind: PredictorKind::Proxy,
        scores: losses(paths, &f.targets)?,
        in_units: true,
        training_tokens: cost_of(ctx, f, label, key),
    })
}

/// A search's predictor, refit on its proxies per target (with the model kind
/// the search chose, when it says) and scored at the reference mixtures.
fn search_set(
    ctx: &RunCtx,
    f: &ValidateFields,
    label: &str,
    key: &str,
    mixtures: &[Vec<f64>],
    warnings: &mut Vec<String>,
) -> Result<ScoreSet, StepError> {
    let path = one(ctx, key)?;
    let r = read_search(path).map_err(StepError::library)?;
    if !r.candidates.is_empty() && r.candidates != f.candidates {
        return Err(StepError::Failed(format!(
            "{}: the search's candidates are {:?}, this step names {:?}: give them in the search's order",
            path.display(),
            r.candidates,
            f.candidates
        )));
    }
    if !r
        .objective
        .same_kind(&f.objective.objective(&f.objective_weights, f.targets.len()))
    {
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
        let p = fit.map_err(|e| StepError::Failed(format!("refitting `{label}` on `{t}`: {e}")))?;
        cols.push(p.predict_many(mixtures));
    }
    let scores = (0..mixtures.len())
        .map(|i| cols.iter().map(|c| c[i]).collect())
        .collect();
    Ok(ScoreSet {
        name: label.to_string(),
        kind: PredictorKind::Search,
        scores,
        in_units: true,
        training_tokens: cost_of(ctx, f, label, key),
    })
}

/// The validation's settings from the step's fields.
fn validate_config(f: &ValidateFields, targets: Vec<Target>) -> ValidateConfig {
    ValidateConfig {
        objective: f.objective.objective(&f.objective_weights, targets.len()),
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
    }
}

/// Merged proxies at the reference mixtures, and the components' own scores (a
/// one-hot linear merge is the component itself).
#[cfg(feature = "torch")]
fn merged_scores(
    ctx: &RunCtx,
    f: &ValidateFields,
    mixtures: &[Vec<f64>],
) -> Result<Merged, StepError> {
    let comps: Vec<PathBuf> = ctx
        .input(f.components.as_deref().unwrap_or_default())?
        .to_vec();
    if comps.len() != f.candidates.len() {
        return Err(StepError::Failed(format!(
            "{} components but {} candidates: give one candidate dataset per component, in the same order",
            comps.len(),
            f.candidates.len()
        )));
    }
    use crate::proxies::{Proxied, eval_parallel, proxy_workers};
    use demix_core::kind::Progress;
    let mut workers = proxy_workers(
        ctx,
        &comps,
        &f.targets,
        f.eval.clone(),
        f.workers,
        f.resident,
    )?;
    let k = comps.len();
    let total = (k + mixtures.len()) as u64;
    let mut done = 0u64;
    let mut tick = || {
        done += 1;
        (ctx.progress)(Progress {
            done,
            total: Some(total),
            unit: "models".into(),
            message: Some(
                if done <= k as u64 {
                    "components"
                } else {
                    "merged proxies"
                }
                .into(),
            ),
        });
    };
    // A one-hot linear merge is the component itself.
    let one_hot: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let scores = |v: Vec<Proxied>| v.into_iter().map(|p| p.scores).collect();
    let mut done = |_: usize, _: &Proxied| {
        tick();
        Ok(())
    };
    let components = scores(eval_parallel(
        &mut workers,
        &one_hot,
        ctx.cancel,
        &mut done,
    )?);
    let proxies = scores(eval_parallel(
        &mut workers,
        mixtures,
        ctx.cancel,
        &mut done,
    )?);
    Ok(Merged {
        proxies,
        components,
    })
}
