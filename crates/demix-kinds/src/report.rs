//! `kind: report`: a self-contained HTML report and a Markdown summary of a
//! DeMix run, from other steps' outputs (see [`demix_report`]). Needs no libtorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::{Node, Span, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::key::Origin;
use demix_core::kind::{Kind, Plan, RunCtx, StepError, write_json};
use demix_core::manifest::Diags;
use demix_core::manifest::template::{self, Piece, Ref};
use demix_core::store::{ResultRecord, Store};
use demix_mix::search::SearchResult;
use demix_mix::verdict::Verdict;
use demix_report::{Labeled, ReadError, Report, data};

use crate::fields::span_of;
use crate::validate::{VerdictFields, check_verdict, verdict_counts};

pub struct ReportKind;

/// Fields of a `report` step. Every input is one `${steps.ID.OUTPUT}` reference
/// (`[KEY]` and `[*]` work too) or a path relative to the manifest.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct ReportFields {
    /// The report's title (default: `DeMix report: <workflow>`).
    #[serde(default)]
    pub title: Option<String>,
    /// A search step's result: `${steps.ID.result}` (search.json).
    #[serde(default)]
    pub search: Option<String>,
    /// A validate step's result: `${steps.ID.result}` (validation.json).
    #[serde(default)]
    pub validation: Option<String>,
    /// Names of the mixture's candidates in the search's order, e.g.
    /// `${params.domains}` (default: c0, c1, ...).
    #[serde(default)]
    pub candidates: Option<Vec<String>>,
    /// Loss curves: label -> a train step's `${steps.ID.metrics}` (metrics.jsonl).
    #[serde(default)]
    pub training: BTreeMap<String, String>,
    /// Evaluation table: label -> an evaluate step's `${steps.ID.metrics}`
    /// (metrics.json), or `${steps.ID[*].metrics}` for one model per seed.
    #[serde(default)]
    pub evaluations: BTreeMap<String, String>,
    /// Compare the model trained on the chosen mixture with baselines, seed by
    /// seed, on the search's objective and targets: labels of `evaluations`
    /// with as many seeds each, in the same order. Needs `search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictFields>,
    /// The tokenizer's sample: `${steps.ID.sample}` (tokenizer-sample.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// Mixtures to compare with the uniform one: label -> a JSON object of
    /// dataset name -> weight, e.g. `${steps.search.mixture}`.
    #[serde(default)]
    pub mixtures: BTreeMap<String, String>,
}

/// One labelled input: the label and the input key (the normalised reference,
/// or the path as written).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Entry {
    pub label: String,
    pub input: String,
}

/// The resolved fields as the key hashes them and the step runs them; lists keep
/// the manifest's order, which is the report's.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ReportSpec {
    pub title: Option<String>,
    pub search: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    pub candidates: Option<Vec<String>>,
    pub training: Vec<Entry>,
    pub evaluations: Vec<Entry>,
    pub mixtures: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
}

pub const HTML: &str = "report.html";
pub const MARKDOWN: &str = "report.md";
/// What came out, for `demix run` and other tools: the verdicts and the chosen mixture.
pub const SUMMARY: &str = "summary.json";

/// Checks one input value; returns its input key, adding a path to `paths`.
fn input_key(
    d: &mut Diags,
    span: Span,
    what: &str,
    v: &str,
    paths: &mut Vec<Spanned<String>>,
) -> Option<String> {
    match template::parse(v) {
        Ok(p) => match p.as_slice() {
            [Piece::Ref(r @ Ref::Step { .. })] => Some(r.to_string()),
            [Piece::Lit(l)] if !l.trim().is_empty() => {
                paths.push(Spanned::new(span, v.to_string()));
                Some(v.to_string())
            }
            _ => {
                d.push(
                    &span,
                    format!("`{what}` takes one `${{steps.ID.OUTPUT}}` reference or a path"),
                    what,
                    Some("e.g. `${steps.search.result}`".into()),
                );
                None
            }
        },
        Err(e) => {
            d.error(&span, e.to_string(), what);
            None
        }
    }
}

/// The labelled inputs of a mapping field, in the manifest's order.
fn entries(
    d: &mut Diags,
    body: &Node,
    field: &str,
    values: &BTreeMap<String, String>,
    paths: &mut Vec<Spanned<String>>,
) -> Vec<Entry> {
    let map = body.as_mapping().and_then(|m| m.get_mapping(field));
    let order: Vec<(String, Span)> = match map {
        Some(m) => m
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v.span()))
            .collect(),
        None => values
            .keys()
            .map(|k| (k.clone(), span_of(body, field)))
            .collect(),
    };
    let mut out = Vec::new();
    for (label, span) in order {
        let Some(v) = values.get(&label) else {
            continue;
        };
        if label.trim().is_empty() {
            d.error(&span, format!("a label in `{field}` is empty"), field);
            continue;
        }
        if let Some(input) = input_key(d, span, &format!("{field}.{label}"), v, paths) {
            out.push(Entry { label, input });
        }
    }
    out
}

impl Kind for ReportKind {
    const NAME: &'static str = "report";
    // 2: verdicts, the tokenizer's sample, noise tables, summary.json.
    // 3: opens with the verdict and mixture; components, intervals, token costs.
    // 4: the lineage section summarises the steps that made the inputs.
    const VERSION: u32 = 4;
    const SUMMARY: &'static str = "renders a self-contained HTML report and a Markdown summary of a run: loss curves, mixtures, search, evaluations, lineage";
    type Fields = ReportFields;
    type Params = ReportSpec;

    fn plan(&self, f: ReportFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut paths = Vec::new();
        let title = f.title.as_deref().and_then(|t| literal_title(t, body, d));
        let search = f
            .search
            .as_ref()
            .and_then(|s| input_key(d, span_of(body, "search"), "search", s, &mut paths));
        let validation = f
            .validation
            .as_ref()
            .and_then(|s| input_key(d, span_of(body, "validation"), "validation", s, &mut paths));
        if let Some(c) = &f.candidates {
            let span = span_of(body, "candidates");
            if c.is_empty() {
                d.error(&span, "`candidates` is empty", "candidates");
            }
            for (i, n) in c.iter().enumerate() {
                if n.trim().is_empty() {
                    d.error(&span, "a candidate name is empty", "candidates");
                } else if c[..i].contains(n) {
                    d.error(
                        &span,
                        format!("candidate `{n}` appears twice"),
                        "candidates",
                    );
                }
            }
        }
        let training = entries(d, body, "training", &f.training, &mut paths);
        let evaluations = entries(d, body, "evaluations", &f.evaluations, &mut paths);
        let mixtures = entries(d, body, "mixtures", &f.mixtures, &mut paths);
        let tokenizer = f
            .tokenizer
            .as_ref()
            .and_then(|s| input_key(d, span_of(body, "tokenizer"), "tokenizer", s, &mut paths));
        if let Some(v) = &f.verdict {
            check_verdict(d, body, v, &f.evaluations);
            if f.search.is_none() {
                d.error(
                    &span_of(body, "verdict"),
                    "a verdict compares on the search's objective and targets: give `search`",
                    "verdict",
                );
            }
        }
        if f.search.is_none()
            && f.validation.is_none()
            && f.training.is_empty()
            && f.evaluations.is_empty()
            && f.mixtures.is_empty()
        {
            d.push(
                body.span(),
                "a report step needs something to report",
                "report",
                Some("give at least one of `search`, `validation`, `training`, `evaluations`, `mixtures`".into()),
            );
        }
        let spec = ReportSpec {
            title,
            search,
            validation,
            candidates: f.candidates,
            training,
            evaluations,
            mixtures,
            verdict: f.verdict,
            tokenizer,
        };
        let counts = match &spec.verdict {
            Some(v) => verdict_counts(body, v, &f.evaluations),
            None => Vec::new(),
        };
        Some(Plan {
            paths,
            outputs: BTreeMap::from([
                ("html".to_string(), HTML.to_string()),
                ("markdown".to_string(), MARKDOWN.to_string()),
                ("summary".to_string(), SUMMARY.to_string()),
            ]),
            counts,
            ..Plan::new(&spec)
        })
    }

    fn run(&self, spec: ReportSpec, ctx: &RunCtx) -> Result<(), StepError> {
        let mut r = Report {
            title: spec
                .title
                .clone()
                .unwrap_or_else(|| format!("DeMix report: {}", ctx.spec.manifest)),
            workflow: ctx.spec.manifest.clone(),
            step: ctx.spec.step.clone(),
            key: ctx.spec.key.clone(),
            candidates: spec.candidates.clone(),
            ..Report::default()
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        if let Some(key) = &spec.search {
            fields.push((key.clone(), "search".into()));
            let mut got = load(ctx, "search", "search", key, data::read_search)?;
            if got.len() != 1 {
                return Err(StepError::Failed(format!(
                    "`search` takes one search result, but `{key}` names {}",
                    got.len()
                )));
            }
            r.search = got.pop();
        }
        if let Some(key) = &spec.validation {
            fields.push((key.clone(), "validation".into()));
            let mut got = load(ctx, "validation", "validation", key, data::read_validation)?;
            if got.len() != 1 {
                return Err(StepError::Failed(format!(
                    "`validation` takes one validation result, but `{key}` names {}",
                    got.len()
                )));
            }
            r.validation = got.pop();
        }
        for (field, list) in [
            ("training", &spec.training),
            ("evaluations", &spec.evaluations),
            ("mixtures", &spec.mixtures),
        ] {
            for e in list {
                fields.push((e.input.clone(), format!("{field}.{}", e.label)));
            }
        }
        if let Some(key) = &spec.tokenizer {
            fields.push((key.clone(), "tokenizer".into()));
            let mut got = load(
                ctx,
                "tokenizer",
                "tokenizer",
                key,
                data::read_tokenizer_sample,
            )?;
            if got.len() != 1 {
                return Err(StepError::Failed(format!(
                    "`tokenizer` takes one tokenizer sample, but `{key}` names {}",
                    got.len()
                )));
            }
            r.tokenizer = got.pop();
        }
        r.training = load_all(ctx, "training", &spec.training, data::read_training)?;
        // Wall time from the record of the step that trained each run.
        let keys = training_keys(ctx, &spec.training);
        for t in &mut r.training {
            let record = t
                .step
                .as_ref()
                .and_then(|s| keys.get(s))
                .and_then(|k| ctx.store.read_result(k));
            t.data.duration_s = record.as_ref().map(|r| r.duration_s);
            t.data.start = record.as_ref().and_then(|r| start_of(ctx.store, r, 0));
        }
        if let Some(key) = &spec.search {
            r.components = component_runs(ctx.store, &ctx.spec.record, key);
        }
        r.evaluations = load_all(ctx, "evaluations", &spec.evaluations, data::read_evaluation)?;
        r.mixtures = load_all(ctx, "mixtures", &spec.mixtures, data::read_mixture)?;
        if let (Some(v), Some(search)) = (&spec.verdict, &r.search) {
            r.verdicts = verdicts(ctx, &spec, v, &search.data)?;
        }
        r.lineage = Some(data::lineage_summary(ctx.store, &ctx.spec.record, &fields));
        let out = r.render().map_err(StepError::library)?;
        write(ctx, "html", &out.html)?;
        write(ctx, "markdown", &out.markdown)?;
        let chosen = r.search.as_ref().map(|s| {
            let names = r
                .search_candidates()
                .unwrap_or_else(|| (0..s.data.chosen.len()).map(|i| format!("c{i}")).collect());
            names
                .into_iter()
                .zip(s.data.chosen.iter().copied())
                .collect::<BTreeMap<String, f64>>()
        });
        let summary = serde_json::json!({
            "verdicts": r.all_verdicts(),
            "chosen": chosen,
            "objective": r.search.as_ref().map(|s| s.data.objective.name()),
        });
        write_json(ctx, SUMMARY, &summary)
    }
}

/// The chosen model's evaluations against each baseline's, seed by seed, on the
/// search's targets and objective (ranked among the search's proxies).
fn verdicts(
    ctx: &RunCtx,
    spec: &ReportSpec,
    v: &VerdictFields,
    search: &SearchResult,
) -> Result<Vec<Verdict>, StepError> {
    let rows = |label: &str| -> Result<Vec<Vec<f64>>, StepError> {
        let e = spec
            .evaluations
            .iter()
            .find(|e| e.label == label)
            .ok_or_else(|| StepError::Failed(format!("verdict: no evaluation `{label}`")))?;
        load(ctx, "evaluations", label, &e.input, data::read_evaluation)?
            .iter()
            .map(|l| {
                search
                    .targets
                    .iter()
                    .map(|t| {
                        l.data
                            .datasets
                            .iter()
                            .find(|m| m.name == t.name)
                            .and_then(|m| m.get("loss"))
                            .ok_or_else(|| {
                                StepError::Failed(format!(
                                    "verdict: evaluation `{}` ({}) has no loss on search target `{}`; evaluate the finals on every target",
                                    l.label, l.file, t.name
                                ))
                            })
                    })
                    .collect()
            })
            .collect()
    };
    let population: Vec<Vec<f64>> = search.proxies.iter().map(|p| p.scores.clone()).collect();
    v.pairs()
        .iter()
        .map(|(c, b)| {
            demix_mix::verdict::verdict(
                (c, &rows(c)?),
                (b, &rows(b)?),
                &search.targets,
                &search.objective,
                &population,
            )
            .map_err(StepError::library)
        })
        .collect()
}

/// The results of the steps that made input `key` of `record`.
fn upstream(store: &Store, record: &demix_core::key::KeyRecord, key: &str) -> Vec<ResultRecord> {
    record
        .upstream(key)
        .iter()
        .filter_map(|u| store.read_result(&u.key))
        .collect()
}

/// A train step's metrics, from its committed `metrics` output.
fn train_metrics(store: &Store, r: &ResultRecord) -> Option<data::Training> {
    if r.kind != "train" {
        return None;
    }
    let o = r.outputs.get("metrics")?;
    data::read_training(&store.tree_dir(&r.tree).join(&o.path)).ok()
}

/// Where a train step's run started: the step whose checkpoint its `init`
/// names and the tokens that checkpoint had seen (its run's last `tokens`,
/// plus where that run started in turn).
fn start_of(store: &Store, r: &ResultRecord, depth: usize) -> Option<(String, f64)> {
    if r.kind != "train" || depth > 16 {
        return None;
    }
    let init = r.record.params.get("init")?.as_str()?;
    let from = upstream(store, &r.record, init).into_iter().next()?;
    let own = train_metrics(store, &from)?.last()?.tokens;
    let before = start_of(store, &from, depth + 1).map_or(0.0, |s| s.1);
    Some((from.step.clone(), before + own))
}

/// The training runs of a merged search's components: the train steps whose
/// checkpoints its `components` input names, labelled by step.
fn component_runs(
    store: &Store,
    record: &demix_core::key::KeyRecord,
    search_key: &str,
) -> Vec<Labeled<data::Training>> {
    let Some(search) = upstream(store, record, search_key).into_iter().next() else {
        return Vec::new();
    };
    let Some(components) = search
        .record
        .params
        .get("components")
        .and_then(|v| v.as_str())
    else {
        return Vec::new();
    };
    upstream(store, &search.record, components)
        .iter()
        .filter_map(|c| {
            let data = train_metrics(store, c)?;
            Some(Labeled {
                label: c.step.clone(),
                file: format!("metrics.jsonl of step {}", c.step),
                step: Some(c.step.clone()),
                data,
            })
        })
        .collect()
}

/// The result key of each step that produced a training input, by step.
fn training_keys(ctx: &RunCtx, entries: &[Entry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .filter_map(
            |e| match ctx.spec.record.inputs.get(&e.input).map(|i| &i.origin) {
                Some(Origin::Steps { outputs }) => Some(outputs),
                _ => None,
            },
        )
        .flatten()
        .map(|u| (u.step.clone(), u.key.clone()))
        .collect()
}

fn write(ctx: &RunCtx, output: &str, text: &str) -> Result<(), StepError> {
    let rel = ctx.spec.outputs.get(output).map_or(
        if output == "html" { HTML } else { MARKDOWN },
        String::as_str,
    );
    let p = ctx.out_dir.join(rel);
    std::fs::write(&p, text).map_err(StepError::io(format!("writing {}", p.display())))
}

/// The upstream step of each path of input `key`, when it came from steps.
fn producers(ctx: &RunCtx, key: &str) -> Vec<Option<String>> {
    match ctx.spec.record.inputs.get(key).map(|i| &i.origin) {
        Some(Origin::Steps { outputs }) => outputs.iter().map(|u| Some(u.step.clone())).collect(),
        _ => Vec::new(),
    }
}

/// Reads every path of one input; several paths (a `[*]` reference) are
/// labelled by the step that made each.
fn load<T>(
    ctx: &RunCtx,
    field: &str,
    label: &str,
    key: &str,
    read: fn(&Path) -> Result<T, ReadError>,
) -> Result<Vec<Labeled<T>>, StepError> {
    let paths: Vec<PathBuf> = ctx.input(key)?.to_vec();
    let steps = producers(ctx, key);
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let step = steps.get(i).cloned().flatten();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = match &step {
            Some(s) => format!("{name} of step {s}"),
            None => key.to_string(),
        };
        let data = read(p).map_err(|e| {
            StepError::Failed(match &step {
                Some(s) => format!("{field} `{label}` (output of step `{s}`): {e}"),
                None => format!("{field} `{label}`: {e}"),
            })
        })?;
        let label = match (&step, paths.len()) {
            (_, 1) => label.to_string(),
            (Some(s), _) => s.clone(),
            (None, _) => format!("{label}[{i}]"),
        };
        out.push(Labeled {
            label,
            file,
            step,
            data,
        });
    }
    Ok(out)
}

fn load_all<T>(
    ctx: &RunCtx,
    field: &str,
    entries: &[Entry],
    read: fn(&Path) -> Result<T, ReadError>,
) -> Result<Vec<Labeled<T>>, StepError> {
    let mut out: Vec<Labeled<T>> = Vec::new();
    for e in entries {
        for mut l in load(ctx, field, &e.label, &e.input, read)? {
            // Labels name columns and series, so they stay unique.
            let base = l.label.clone();
            let mut n = 2;
            while out.iter().any(|o| o.label == l.label) {
                l.label = format!("{base} ({n})");
                n += 1;
            }
            out.push(l);
        }
    }
    Ok(out)
}

/// Why a report step has no report to show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LatestError {
    #[error("report step `{step}` has not run yet")]
    NotRun { step: String },
    #[error("the latest run of `{step}` recorded no `{output}` output")]
    NoOutput { step: String, output: String },
    #[error("the latest report of `{step}` ({}) is no longer in the store", path.display())]
    Gone { step: String, path: PathBuf },
}

/// The report step's committed outputs, from the store's record of its latest
/// run: (html, markdown) paths, or why there are none.
pub fn latest(
    store: &Store,
    workflow: &str,
    step: &str,
) -> Result<(ResultRecord, PathBuf, PathBuf), LatestError> {
    let r = store
        .read_state(workflow, step)
        .ok_or_else(|| LatestError::NotRun {
            step: step.to_string(),
        })?;
    let path = |name: &str| -> Result<PathBuf, LatestError> {
        let o = r.outputs.get(name).ok_or_else(|| LatestError::NoOutput {
            step: step.to_string(),
            output: name.to_string(),
        })?;
        let p = store.tree_dir(&r.tree).join(&o.path);
        if p.is_file() {
            Ok(p)
        } else {
            Err(LatestError::Gone {
                step: step.to_string(),
                path: p,
            })
        }
    };
    let (html, md) = (path("html")?, path("markdown")?);
    Ok((r, html, md))
}

/// The title, which may hold only what the manifest resolves (params, item).
fn literal_title(t: &str, body: &Node, d: &mut Diags) -> Option<String> {
    match template::parse(t) {
        Ok(pieces) => {
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Lit(l) => out.push_str(&l),
                    Piece::Ref(_) => {
                        d.error(
                            &span_of(body, "title"),
                            "`title` is text: only `${params.NAME}` and `${item}` may appear in it",
                            "title",
                        );
                        return None;
                    }
                }
            }
            Some(out)
        }
        Err(e) => {
            d.error(&span_of(body, "title"), e.to_string(), "title");
            None
        }
    }
}
