//! Provenance: from any cached artifact back to the data and parameters that made it.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::key::Origin;
use crate::store::{ResultRecord, Store};

#[derive(Debug, Serialize)]
pub struct Lineage {
    pub step: String,
    pub manifest: String,
    pub kind: String,
    pub kind_version: u32,
    pub key: String,
    pub params: Value,
    pub params_used: std::collections::BTreeMap<String, Value>,
    pub outputs: Vec<OutputLine>,
    pub started: jiff::Timestamp,
    pub duration_s: f64,
    pub host: String,
    pub engine_version: String,
    pub inputs: Vec<InputLineage>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputLine {
    pub name: String,
    pub path: String,
    pub hash: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct InputLineage {
    pub name: String,
    pub hash: String,
    #[serde(flatten)]
    pub origin: Origin,
    /// The results that produced this input, when it came from other steps.
    pub producers: Vec<Producer>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Producer {
    Found(Box<Lineage>),
    /// A result already shown earlier in the tree (a diamond in the workflow).
    ShownAbove {
        step: String,
        key: String,
        shown_above: bool,
    },
    /// A result whose record is no longer in the store.
    Missing {
        step: String,
        key: String,
        missing: bool,
    },
}

/// Why [`resolve`] finds no single result; `what` is what the user asked for.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A path that exists but cannot be read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no result in the store matches `{0}`")]
    NoMatch(String),
    #[error("`{0}` is not a step, a path in the store, or a known hash")]
    Unknown(String),
    /// `manifests` lists the workflows, comma-separated.
    #[error("step `{what}` exists in several workflows ({manifests}); pass the manifest")]
    Ambiguous { what: String, manifests: String },
}

/// Finds the result a user means: a step id (of the given manifest), a path into the
/// store, or a prefix of a key or of an output, tree or file hash.
pub fn resolve(
    store: &Store,
    manifest: Option<&str>,
    what: &str,
) -> Result<ResultRecord, ResolveError> {
    if let Some(m) = manifest
        && let Some(r) = store.read_state(m, what)
    {
        return Ok(r);
    }
    let results = store.all_results();
    // A path: into a tree, or an object, or a workspace file identical to an output.
    let path = std::path::Path::new(what);
    if path.exists() {
        let io = |source| ResolveError::Io {
            what: what.to_string(),
            source,
        };
        let abs = std::fs::canonicalize(path).map_err(io)?;
        let trees = std::fs::canonicalize(store.root.join("trees")).ok();
        if let Some(t) = &trees
            && let Ok(rel) = abs.strip_prefix(t)
        {
            let mut parts = rel.components().skip(1);
            if let Some(tree) = parts.next() {
                let tree = tree.as_os_str().to_string_lossy().into_owned();
                let inner: std::path::PathBuf = parts.collect();
                return pick(
                    &results,
                    |r| {
                        r.tree == tree
                            && (inner.as_os_str().is_empty()
                                || r.files
                                    .iter()
                                    .any(|f| std::path::Path::new(&f.path).starts_with(&inner)))
                    },
                    what,
                );
            }
        }
        if abs.is_file() {
            let h = crate::hash::hash_file(&abs, &|_, _| {}).map_err(io)?;
            return pick(&results, |r| r.files.iter().any(|f| f.hash == h), what);
        }
    }
    let prefix = what.trim_start_matches("blake3:");
    if prefix.len() >= 6 && prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return pick(
            &results,
            |r| {
                r.key.starts_with(prefix)
                    || r.tree.starts_with(prefix)
                    || r.outputs.values().any(|o| o.hash.starts_with(prefix))
                    || r.files.iter().any(|f| f.hash.starts_with(prefix))
            },
            what,
        );
    }
    // A step id of another manifest in the store.
    let by_step: Vec<ResultRecord> = store
        .all_states()
        .into_iter()
        .filter(|r| r.step == what)
        .collect();
    match by_step.len() {
        1 => Ok(by_step.into_iter().next().expect("one")),
        0 => Err(ResolveError::Unknown(what.to_string())),
        _ => Err(ResolveError::Ambiguous {
            what: what.to_string(),
            manifests: by_step
                .iter()
                .map(|r| r.manifest.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn pick(
    results: &[ResultRecord],
    f: impl Fn(&ResultRecord) -> bool,
    what: &str,
) -> Result<ResultRecord, ResolveError> {
    let mut hits: Vec<&ResultRecord> = results.iter().filter(|r| f(r)).collect();
    // The newest producer is the one the user most likely means.
    hits.sort_by_key(|r| std::cmp::Reverse(r.finished));
    hits.first()
        .map(|r| (*r).clone())
        .ok_or_else(|| ResolveError::NoMatch(what.to_string()))
}

/// The provenance tree of a result, down to source files.
pub fn lineage(store: &Store, r: &ResultRecord) -> Lineage {
    build(store, r, &mut BTreeSet::new())
}

fn build(store: &Store, r: &ResultRecord, seen: &mut BTreeSet<String>) -> Lineage {
    seen.insert(r.key.clone());
    let inputs = r
        .record
        .inputs
        .iter()
        .map(|(name, inp)| {
            let producers = match &inp.origin {
                Origin::Steps { outputs } => outputs
                    .iter()
                    .map(|u| match store.read_result(&u.key) {
                        Some(up) if !seen.contains(&up.key) => {
                            Producer::Found(Box::new(build(store, &up, seen)))
                        }
                        Some(_) => Producer::ShownAbove {
                            step: u.step.clone(),
                            key: u.key.clone(),
                            shown_above: true,
                        },
                        None => Producer::Missing {
                            step: u.step.clone(),
                            key: u.key.clone(),
                            missing: true,
                        },
                    })
                    .collect(),
                _ => Vec::new(),
            };
            InputLineage {
                name: name.clone(),
                hash: inp.hash.clone(),
                origin: inp.origin.clone(),
                producers,
            }
        })
        .collect();
    Lineage {
        step: r.step.clone(),
        manifest: r.manifest.clone(),
        kind: r.kind.clone(),
        kind_version: r.record.kind_version,
        key: r.key.clone(),
        params: r.record.params.clone(),
        params_used: r.record.params_used.clone(),
        outputs: output_lines(store, r),
        started: r.started,
        duration_s: r.duration_s,
        host: r.host.clone(),
        engine_version: r.engine_version.clone(),
        inputs,
    }
}

fn output_lines(store: &Store, r: &ResultRecord) -> Vec<OutputLine> {
    r.outputs
        .iter()
        .map(|(n, o)| OutputLine {
            name: n.clone(),
            path: store.tree_dir(&r.tree).join(&o.path).display().to_string(),
            hash: o.hash.clone(),
            size: o.size,
        })
        .collect()
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// The tree as indented text.
pub fn render(l: &Lineage) -> String {
    render_to_depth(l, None)
}

/// The tree as indented text, down to `max` levels of producers (0: the
/// result alone), or all of it.
pub fn render_to_depth(l: &Lineage, max: Option<usize>) -> String {
    let mut out = String::new();
    render_into(l, 0, max, &mut BTreeSet::new(), &mut out);
    out
}

fn render_into(
    l: &Lineage,
    level: usize,
    max: Option<usize>,
    printed: &mut BTreeSet<String>,
    out: &mut String,
) {
    printed.insert(l.key.clone());
    let depth = level * 2;
    let pad = "  ".repeat(depth);
    out.push_str(&format!(
        "{pad}step {} ({} v{}) of workflow {}\n{pad}  key      {}\n{pad}  ran      {} on {}, {}, demix {}\n",
        l.step,
        l.kind,
        l.kind_version,
        l.manifest,
        l.key,
        l.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        l.host,
        crate::outcome::human_duration(l.duration_s),
        l.engine_version
    ));
    for (k, v) in &l.params_used {
        out.push_str(&format!("{pad}  param    {k} = {v}\n"));
    }
    if let Value::Object(o) = &l.params {
        for (k, v) in o {
            if v.is_null() || v.as_object().is_some_and(|m| m.is_empty()) {
                continue;
            }
            out.push_str(&format!("{pad}  field    {k} = {v}\n"));
        }
    }
    for o in &l.outputs {
        out.push_str(&format!(
            "{pad}  output   {} = {} (blake3 {}, {})\n",
            o.name,
            o.path,
            short(&o.hash),
            crate::store::human_bytes(o.size)
        ));
    }
    for i in &l.inputs {
        out.push_str(&format!(
            "{pad}  input    {} (blake3 {})\n",
            i.name,
            short(&i.hash)
        ));
        match &i.origin {
            Origin::Path { files, .. } | Origin::Dataset { files, .. } => {
                const MAX: usize = 20;
                for (p, h) in files.iter().take(MAX) {
                    out.push_str(&format!("{pad}    file   {p} (blake3 {})\n", short(h)));
                }
                if files.len() > MAX {
                    out.push_str(&format!(
                        "{pad}    ... and {} more files\n",
                        files.len() - MAX
                    ));
                }
            }
            Origin::Steps { .. } => {
                for p in &i.producers {
                    match p {
                        Producer::Found(up) if max.is_none_or(|m| level < m) => {
                            render_into(up, level + 1, max, printed, out)
                        }
                        Producer::Found(up) => {
                            out.push_str(&format!(
                                "{pad}    step {} ({} v{}, key {}; below --depth)\n",
                                up.step,
                                up.kind,
                                up.kind_version,
                                short(&up.key)
                            ));
                        }
                        Producer::ShownAbove { step, key, .. } => {
                            let why = if printed.contains(key) {
                                "shown above"
                            } else {
                                "below --depth"
                            };
                            out.push_str(&format!(
                                "{pad}    step {step} (key {}; {why})\n",
                                short(key)
                            ));
                        }
                        Producer::Missing { step, key, .. } => {
                            out.push_str(&format!("{pad}    step {step} (key {}; its record is no longer in the store)\n", short(key)));
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The summary: what a person asks of a result, in a screenful.

/// A result's provenance in a screenful: what it read (datasets with their
/// mixture weights and bytes, other inputs), with what settings, what it
/// continued from, and when and where it ran. `demix lineage` prints it by
/// default; `--full` prints the whole [`Lineage`] tree instead.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub step: String,
    pub kind: String,
    pub kind_version: u32,
    pub workflow: String,
    pub key: String,
    pub host: String,
    pub started: jiff::Timestamp,
    pub duration_s: f64,
    /// The demix version that ran it.
    pub demix: String,
    /// A command step's argv with its `${inputs.*}`, `${outputs.*}` and
    /// `${out}` resolved to where those files are in the store now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// The datasets the step read, with their weights when it trained on a mixture.
    pub data: Vec<DataLine>,
    /// Where the weights came from (`data`, a `mixture` file, `uniform`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixture: Option<String>,
    /// The step's settings as it ran them: defaults filled in, no `null`s, no
    /// references (those are `inputs`), nested objects as dotted names.
    pub params: std::collections::BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceLine>,
    /// What the model came from, oldest first, ending with this step's direct
    /// parent: each link the results an `init`, `checkpoint`, `models`,
    /// `components`, `base` or `tokenizer` input names.
    pub chain: Vec<ChainLink>,
    /// The inputs that are not datasets: files, folders and other steps' outputs.
    pub inputs: Vec<InputLine>,
    pub outputs: Vec<OutputLine>,
    pub upstream: Upstream,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataLine {
    pub dataset: String,
    pub split: crate::manifest::template::Split,
    /// The normalised mixture weight the step trained with, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Bytes of all its files; `None` when a file is no longer there.
    pub bytes: Option<u64>,
    pub files: Vec<FileLine>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileLine {
    /// As the record holds it (relative paths are relative to the manifest).
    pub path: String,
    /// Its size now; `None` when it is no longer there.
    pub bytes: Option<u64>,
    /// False when the file's stat no longer matches the hash the step read
    /// (or this store never hashed it): the size may not be what the step read.
    pub verified: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceLine {
    /// The `device` setting: `auto`, `cpu`, `cuda`, `cuda:N`.
    pub requested: String,
    /// The device that ran the step (with the compute dtype and ranks of a
    /// training), as its result records it; for older results only a `cpu`
    /// request is certain.
    pub used: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainLink {
    /// The results of this link (several for `components`/`models`).
    pub steps: Vec<String>,
    pub kind: String,
    /// The field of the next link (or of the summarised step) that names them.
    pub via: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputLine {
    /// The field that names it (`init`, `training.base`, a command's input name).
    pub name: String,
    /// `step.output` of each producer, or the path as written.
    pub from: Vec<String>,
    pub bytes: Option<u64>,
    /// A producer whose record is gone from the store.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_in_store: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Upstream {
    /// Distinct results upstream.
    pub results: usize,
    /// Their step time in all.
    pub duration_s: f64,
    /// Producers whose record is no longer in the store.
    pub not_in_store: usize,
}

/// Fields that name what a model continues from, in the order they are followed.
const CHAIN_FIELDS: [&str; 6] = [
    "init",
    "checkpoint",
    "models",
    "components",
    "base",
    "tokenizer",
];
/// Mixture fields, shown as the `mixture` line rather than as parameters.
const MIXTURE_FIELDS: [&str; 6] = ["data", "mixture", "datasets", "general", "beta", "pick"];
/// A command step's fields, shown as its argv and inputs.
const COMMAND_FIELDS: [&str; 5] = ["run", "shell", "inputs", "outputs", "workdir"];

/// The summary of `r`. Relative paths in the records are looked up under
/// `base` (the manifest's folder) when given, else under the folder of the
/// manifest path the result records, else the current folder.
pub fn summary(store: &Store, r: &ResultRecord, base: Option<&std::path::Path>) -> Summary {
    let locate = |p: &str| locate(r, base, p);
    let (weights, mixture) = weights(store, r);
    let mut data = Vec::new();
    let mut inputs = Vec::new();
    for (reference, inp) in &r.record.inputs {
        match &inp.origin {
            Origin::Dataset { name, split, files } => {
                let files: Vec<FileLine> = files
                    .iter()
                    .map(|(p, h)| {
                        let at = locate(p);
                        FileLine {
                            path: p.clone(),
                            bytes: std::fs::metadata(&at).ok().map(|m| m.len()),
                            // The stat cache holds the path as the plan hashed it.
                            verified: store.stat.unchanged(&at, h)
                                || std::fs::canonicalize(&at)
                                    .is_ok_and(|c| store.stat.unchanged(&c, h)),
                        }
                    })
                    .collect();
                data.push(DataLine {
                    dataset: name.clone(),
                    split: *split,
                    weight: weights.as_ref().and_then(|w| w.get(name).copied()),
                    bytes: files.iter().map(|f| f.bytes).sum(),
                    files,
                });
            }
            Origin::Path { path, files } => inputs.push(InputLine {
                name: input_name(r, reference),
                from: vec![path.clone()],
                bytes: files
                    .iter()
                    .map(|(f, _)| std::fs::metadata(locate(f)).ok().map(|m| m.len()))
                    .sum(),
                not_in_store: false,
            }),
            Origin::Steps { outputs } => {
                let name = input_name(r, reference);
                let mut bytes = Some(0u64);
                let mut missing = false;
                for u in outputs {
                    match store.read_result(&u.key) {
                        Some(up) => {
                            let size = up.outputs.get(&u.output).map(|o| o.size);
                            bytes = bytes.zip(size).map(|(a, b)| a + b);
                        }
                        None => {
                            missing = true;
                            bytes = None;
                        }
                    }
                }
                inputs.push(InputLine {
                    name,
                    from: outputs
                        .iter()
                        .map(|u| format!("{}.{}", u.step, u.output))
                        .collect(),
                    bytes,
                    not_in_store: missing,
                });
            }
        }
    }
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    data.sort_by(|a, b| (&a.dataset, a.split).cmp(&(&b.dataset, b.split)));
    let device = device_line(r);
    Summary {
        step: r.step.clone(),
        kind: r.kind.clone(),
        kind_version: r.record.kind_version,
        workflow: r.manifest.clone(),
        key: r.key.clone(),
        host: r.host.clone(),
        started: r.started,
        duration_s: r.duration_s,
        demix: r.engine_version.clone(),
        argv: (r.kind == "command")
            .then(|| argv(store, r, &locate))
            .flatten(),
        data,
        mixture,
        params: settings(r),
        device,
        chain: chain(store, r),
        inputs,
        outputs: output_lines(store, r),
        upstream: upstream(store, r),
    }
}

/// Where a path a record holds is now: relative ones under `base`, else under
/// the folder of the manifest path the result records.
fn locate(r: &ResultRecord, base: Option<&std::path::Path>, p: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let recorded = r.manifest_path.parent().map(|d| d.join(p));
    [base.map(|b| b.join(p)), recorded]
        .into_iter()
        .flatten()
        .find(|c| c.exists())
        .and_then(|c| std::path::absolute(c).ok())
        .unwrap_or_else(|| p.to_path_buf())
}

/// How a summary names an input: by the field that names it (a command's
/// inputs by their own names).
fn input_name(r: &ResultRecord, reference: &str) -> String {
    let name = field_of(&r.record.params, reference).unwrap_or_else(|| reference.to_string());
    match name.strip_prefix("inputs.") {
        Some(n) if r.kind == "command" => n.to_string(),
        _ => name,
    }
}

/// The dotted name of the field of `params` whose value (or an item of it) is
/// `reference`, e.g. `init` or `training.base`.
fn field_of(params: &Value, reference: &str) -> Option<String> {
    let Value::Object(o) = params else {
        return None;
    };
    o.iter().find_map(|(k, v)| match v {
        Value::String(s) if s == reference => Some(k.clone()),
        Value::Array(a) => a.iter().find_map(|x| match x {
            Value::String(s) if s == reference => Some(k.clone()),
            // A labelled list (a report's `training`): by its label.
            Value::Object(e) => {
                field_of(x, reference).map(|inner| match e.get("label").and_then(Value::as_str) {
                    Some(label) => format!("{k}.{label}"),
                    None => format!("{k}.{inner}"),
                })
            }
            _ => None,
        }),
        Value::Object(_) => field_of(v, reference).map(|inner| format!("{k}.{inner}")),
        _ => None,
    })
}

/// The step's settings: no `null`s or empty values, no references, nested
/// objects flattened to dotted names; and for `train`, the warmup and micro
/// batch the trainer derives when they are not given.
fn settings(r: &ResultRecord) -> std::collections::BTreeMap<String, Value> {
    // Inputs (references, and paths the plan hashed) are shown as inputs.
    let input = |s: &str| s.contains("${") || r.record.inputs.contains_key(s);

    fn walk(
        prefix: &str,
        v: &Value,
        input: &dyn Fn(&str) -> bool,
        out: &mut std::collections::BTreeMap<String, Value>,
    ) {
        match v {
            Value::Null => {}
            Value::Object(o) if o.is_empty() => {}
            Value::Array(a) if a.is_empty() => {}
            Value::String(s) if input(s) => {}
            Value::Array(a) if a.iter().any(|x| names_input(x, input)) => {}
            Value::Object(o) => {
                for (k, v) in o {
                    walk(&format!("{prefix}{k}."), v, input, out);
                }
            }
            _ => {
                out.insert(prefix.trim_end_matches('.').to_string(), v.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    let Value::Object(o) = &r.record.params else {
        return out;
    };
    for (k, v) in o {
        let shown_elsewhere = k == "device"
            || (r.kind == "train" && MIXTURE_FIELDS.contains(&k.as_str()))
            || (r.kind == "command" && COMMAND_FIELDS.contains(&k.as_str()));
        if !shown_elsewhere {
            walk(&format!("{k}."), v, &input, &mut out);
        }
    }
    if r.kind == "train" {
        let num = |k: &str| o.get(k).and_then(Value::as_f64);
        if !out.contains_key("warmup_tokens")
            && let (Some(t), Some(f)) = (num("tokens"), num("warmup_fraction"))
        {
            out.insert("warmup_tokens".into(), Value::from((t * f) as u64));
        }
        if !out.contains_key("micro_batch_size")
            && let Some(b) = o.get("batch_size")
        {
            out.insert("micro_batch_size".into(), b.clone());
        }
    }
    out
}

/// Whether `v` or anything in it is an input.
fn names_input(v: &Value, input: &dyn Fn(&str) -> bool) -> bool {
    match v {
        Value::String(s) => input(s),
        Value::Array(a) => a.iter().any(|x| names_input(x, input)),
        Value::Object(o) => o.values().any(|x| names_input(x, input)),
        _ => false,
    }
}

/// The mixture a `train` step trained on, normalised, and where it came from:
/// the step's `data`, `mixture: uniform` over `datasets`, or a `mixture` file
/// (another step's output) with `pick` and the `general` share applied as the
/// trainer applies them. A tokenizer's `shares`, when given.
fn weights(
    store: &Store,
    r: &ResultRecord,
) -> (
    Option<std::collections::BTreeMap<String, f64>>,
    Option<String>,
) {
    use demix_spec::train::DataMix;
    let p = &r.record.params;
    let normalise = |w: std::collections::BTreeMap<String, f64>| DataMix::Weights(w).weights().ok();
    if r.kind == "tokenizer" {
        return match p.get("shares") {
            Some(Value::Object(o)) if !o.is_empty() => {
                let w = o
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect();
                (normalise(w), Some("`shares`".into()))
            }
            _ => (None, None),
        };
    }
    if r.kind != "train" {
        return (None, None);
    }
    if let Some(d) = p.get("data").filter(|d| !d.is_null()) {
        let Ok(mix) = serde_json::from_value::<DataMix>(d.clone()) else {
            return (None, None);
        };
        let source = match &mix {
            DataMix::Component(c) => format!(
                "component recipe: candidate {} with general {} at share {}",
                c.candidate, c.general, c.beta
            ),
            DataMix::Weights(_) => format!("data: {d}"),
        };
        return (mix.weights().ok(), Some(source));
    }
    let Some(m) = p.get("mixture").and_then(Value::as_str) else {
        return (None, None);
    };
    let datasets: Vec<String> = p
        .get("datasets")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let pick = p.get("pick").and_then(Value::as_u64);
    let (w, mut source) = if m == demix_spec::data::UNIFORM_MIXTURE {
        (
            Some(datasets.iter().map(|d| (d.clone(), 1.0)).collect()),
            "uniform over `datasets`".to_string(),
        )
    } else {
        mixture_file(store, r, m, pick)
    };
    if let Some(i) = pick {
        source.push_str(&format!(", pick {i}"));
    }
    let Some(w) = w.and_then(normalise) else {
        return (None, Some(source));
    };
    let general = p.get("general").and_then(Value::as_str);
    let w = match general {
        Some(g) => {
            let beta = p.get("beta").and_then(Value::as_f64).unwrap_or(0.5);
            source.push_str(&format!(", with general {g} at share {beta}"));
            demix_spec::data::with_general(w, g, beta)
        }
        None => w,
    };
    (Some(w), Some(source))
}

/// The weights in a `mixture` file (`pick` one of a list), and how to say
/// where they came from.
fn mixture_file(
    store: &Store,
    r: &ResultRecord,
    m: &str,
    pick: Option<u64>,
) -> (Option<std::collections::BTreeMap<String, f64>>, String) {
    let file = match r.record.inputs.get(m).map(|i| &i.origin) {
        Some(Origin::Steps { outputs }) if outputs.len() == 1 => {
            let u = &outputs[0];
            let source = format!("mixture file {}.{}", u.step, u.output);
            let path = store.read_result(&u.key).and_then(|up| {
                let o = up.outputs.get(&u.output)?;
                Some(store.tree_dir(&up.tree).join(&o.path))
            });
            (path, source)
        }
        Some(Origin::Path { path, .. }) => (
            Some(
                r.manifest_path
                    .parent()
                    .map_or_else(|| path.into(), |d| d.join(path)),
            ),
            format!("mixture file {path}"),
        ),
        _ => (None, format!("mixture {m}")),
    };
    let read = file.0.and_then(|f| {
        let v: Value = serde_json::from_slice(&std::fs::read(f).ok()?).ok()?;
        demix_spec::data::pick_mixture(v, pick).ok()
    });
    (read, file.1)
}

/// What the model came from: follows the first of [`CHAIN_FIELDS`] that names
/// other steps' `checkpoint` or `tokenizer` outputs, from each result to its
/// parent, and returns the links oldest first.
fn chain(store: &Store, r: &ResultRecord) -> Vec<ChainLink> {
    let mut links = Vec::new();
    let mut seen = BTreeSet::from([r.key.clone()]);
    let mut at = r.clone();
    while links.len() < 32 {
        let Some((via, ups, steps)) = parents(store, &at) else {
            break;
        };
        let kind = ups
            .first()
            .map_or_else(|| "?".to_string(), |u| u.kind.clone());
        links.push(ChainLink { steps, kind, via });
        match ups.into_iter().next() {
            Some(next) if seen.insert(next.key.clone()) => at = next,
            _ => break,
        }
    }
    links.reverse();
    links
}

/// The field of `r` that names what it continues from, its producers found in
/// the store, and the step ids of all its producers.
fn parents(store: &Store, r: &ResultRecord) -> Option<(String, Vec<ResultRecord>, Vec<String>)> {
    let p = &r.record.params;
    for field in CHAIN_FIELDS {
        let refs: Vec<&str> = match p.get(field) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let ups: Vec<&crate::key::UpstreamOutput> = refs
            .iter()
            .filter_map(|s| match r.record.inputs.get(*s).map(|i| &i.origin) {
                Some(Origin::Steps { outputs }) => Some(outputs),
                _ => None,
            })
            .flatten()
            .filter(|u| u.output == "checkpoint" || u.output == "tokenizer")
            .collect();
        if ups.is_empty() {
            continue;
        }
        let found = ups
            .iter()
            .filter_map(|u| store.read_result(&u.key))
            .collect();
        let steps = ups.iter().map(|u| u.step.clone()).collect();
        return Some((field.to_string(), found, steps));
    }
    None
}

/// Every result upstream of `r`, each once.
fn upstream(store: &Store, r: &ResultRecord) -> Upstream {
    let mut seen = BTreeSet::new();
    let mut queue: std::collections::VecDeque<String> = step_keys(&r.record).collect();
    let mut up = Upstream::default();
    while let Some(k) = queue.pop_front() {
        if !seen.insert(k.clone()) {
            continue;
        }
        match store.read_result(&k) {
            Some(u) => {
                up.results += 1;
                up.duration_s += u.duration_s;
                queue.extend(step_keys(&u.record));
            }
            None => up.not_in_store += 1,
        }
    }
    up
}

fn step_keys(rec: &crate::key::KeyRecord) -> impl Iterator<Item = String> + '_ {
    rec.inputs.values().flat_map(|i| match &i.origin {
        Origin::Steps { outputs } => outputs.iter().map(|u| u.key.clone()).collect(),
        _ => Vec::new(),
    })
}

/// A command step's argv as it ran, with paths where they are in the store now.
fn argv(
    store: &Store,
    r: &ResultRecord,
    locate: &dyn Fn(&str) -> std::path::PathBuf,
) -> Option<Vec<String>> {
    use crate::manifest::template::{Piece, Ref, parse};
    let p = &r.record.params;
    let tree = store.tree_dir(&r.tree);
    let input_paths = |name: &str| -> Vec<String> {
        let Some(reference) = p
            .get("inputs")
            .and_then(|i| i.get(name))
            .and_then(Value::as_str)
        else {
            return vec![format!("${{inputs.{name}}}")];
        };
        match r.record.inputs.get(reference).map(|i| &i.origin) {
            Some(Origin::Steps { outputs }) => outputs
                .iter()
                .map(|u| match store.read_result(&u.key) {
                    Some(up) => match up.outputs.get(&u.output) {
                        Some(o) => store
                            .tree_dir(&up.tree)
                            .join(o.path.trim_end_matches('/'))
                            .display()
                            .to_string(),
                        None => format!("{}.{}", u.step, u.output),
                    },
                    None => format!("{}.{} (no longer in the store)", u.step, u.output),
                })
                .collect(),
            Some(Origin::Path { path, .. }) => vec![locate(path).display().to_string()],
            Some(Origin::Dataset { files, .. }) => files
                .iter()
                .map(|(f, _)| locate(f).display().to_string())
                .collect(),
            None => vec![reference.to_string()],
        }
    };
    let expand = |s: &str| -> Vec<String> {
        let Ok(pieces) = parse(s) else {
            return vec![s.to_string()];
        };
        let value = |rf: &Ref| -> Vec<String> {
            match rf {
                Ref::Input(n) => input_paths(n),
                Ref::Output(n) => match p
                    .get("outputs")
                    .and_then(|o| o.get(n))
                    .and_then(Value::as_str)
                {
                    Some(rel) => vec![tree.join(rel.trim_end_matches('/')).display().to_string()],
                    None => vec![rf.to_string()],
                },
                Ref::OutDir => vec![tree.display().to_string()],
                other => vec![other.to_string()],
            }
        };
        if let [Piece::Ref(rf)] = pieces.as_slice() {
            return value(rf);
        }
        let mut out = String::new();
        for piece in &pieces {
            match piece {
                Piece::Lit(l) => out.push_str(l),
                Piece::Ref(rf) => out.push_str(&value(rf).join(" ")),
            }
        }
        vec![out]
    };
    match p.get("run")? {
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .flat_map(expand)
                .collect(),
        ),
        Value::String(s) => Some(vec!["sh".into(), "-c".into(), expand(s).join(" ")]),
        _ => None,
    }
}

/// A weight as a person reads it: at most four decimals, no trailing zeros.
pub fn weight(w: f64) -> String {
    let s = format!("{w:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.into() }
}

/// Step ids of one link: `component[chat|math]` for a fan-out's nodes.
pub fn steps_label(steps: &[String]) -> String {
    let split = |s: &str| {
        s.split_once('[')
            .map(|(a, b)| (a.to_string(), b.trim_end_matches(']').to_string()))
    };
    if steps.len() > 1
        && let Some((id, _)) = split(&steps[0])
        && let Some(items) = steps
            .iter()
            .map(|s| split(s).filter(|(i, _)| *i == id).map(|(_, item)| item))
            .collect::<Option<Vec<_>>>()
    {
        return format!("{id}[{}]", items.join("|"));
    }
    steps.join(", ")
}

/// The init chain as one line: `tok (tokenizer) -> base (train) -> comp (train)`.
pub fn chain_text(s: &Summary) -> String {
    let mut parts: Vec<String> = s
        .chain
        .iter()
        .map(|l| format!("{} ({})", steps_label(&l.steps), l.kind))
        .collect();
    parts.push(format!("{} ({})", s.step, s.kind));
    parts.join(" -> ")
}

/// The device asked for, and the one the step recorded using; results from
/// before steps recorded it leave only a `cpu` request certain.
fn device_line(r: &ResultRecord) -> Option<DeviceLine> {
    let recorded = |key: &str| r.facts.get(key).and_then(Value::as_str).map(str::to_string);
    let ranks = r.facts.get("ranks").and_then(Value::as_u64);
    let requested = r.record.params.get("device").and_then(Value::as_str)?;
    let used = recorded("device")
        .map(|u| match (recorded("compute"), ranks) {
            (Some(c), Some(n)) if n > 1 => format!("{u}, {c}, {n} ranks"),
            (Some(c), _) => format!("{u}, {c}"),
            _ => u,
        })
        .or_else(|| {
            requested
                .eq_ignore_ascii_case("cpu")
                .then(|| "cpu".to_string())
        });
    Some(DeviceLine {
        requested: requested.to_string(),
        used,
    })
}

/// What the device line says.
pub fn device_text(d: &DeviceLine) -> String {
    match &d.used {
        Some(u) => u.clone(),
        None => format!(
            "{} requested (the device that ran it is not recorded)",
            d.requested
        ),
    }
}

/// Bytes, or why there are none.
fn bytes_text(b: Option<u64>) -> String {
    b.map_or_else(|| "missing".into(), crate::store::human_bytes)
}

/// An argv word as a shell would need it.
fn quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// The parameters as `name value` pairs, wrapped to lines of about `width`.
pub fn params_lines(
    params: &std::collections::BTreeMap<String, Value>,
    width: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for (k, v) in params {
        let v = match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let item = format!("{k} {v}");
        if !line.is_empty() && line.len() + 2 + item.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&item);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// One line per dataset: name, weight, bytes, split when not `train`, files.
pub fn data_lines(data: &[DataLine]) -> Vec<String> {
    let name_w = data.iter().map(|d| d.dataset.len()).max().unwrap_or(0);
    let weight_w = data
        .iter()
        .map(|d| d.weight.map_or(0, |w| weight(w).len()))
        .max()
        .unwrap_or(0);
    data.iter()
        .map(|d| {
            let mut text = format!("{:<name_w$}", d.dataset);
            if weight_w > 0 {
                let w = d.weight.map_or("–".into(), weight);
                text.push_str(&format!("  weight {w:<weight_w$}"));
            }
            text.push_str(&format!("  {:>9}", bytes_text(d.bytes)));
            if d.split == crate::manifest::template::Split::Validation {
                text.push_str("  validation");
            }
            match d.files.as_slice() {
                [one] => text.push_str(&format!("  {}", one.path)),
                [first, rest @ ..] => text.push_str(&format!(
                    "  {} and {} more file{}",
                    first.path,
                    rest.len(),
                    if rest.len() == 1 { "" } else { "s" }
                )),
                [] => text.push_str("  (no files)"),
            }
            if d.files.iter().any(|f| f.bytes.is_some() && !f.verified) {
                text.push_str(" (size now; unverified)");
            }
            text
        })
        .collect()
}

fn push_line(out: &mut String, label: &str, text: &str) {
    out.push_str(&format!("  {label:<9} {text}\n"));
}

fn ran_text(s: &Summary) -> String {
    format!(
        "{} on {}, took {}, demix {}",
        s.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        s.host,
        crate::outcome::human_duration(s.duration_s),
        s.demix
    )
}

/// What made the result, labelled: the device, the chain of checkpoints, the
/// data and its weights, the mixture, the settings.
fn model_lines(s: &Summary) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    if let Some(d) = &s.device {
        lines.push(("device", device_text(d)));
    }
    if !s.chain.is_empty() {
        lines.push(("init", chain_text(s)));
    }
    for (i, text) in data_lines(&s.data).into_iter().enumerate() {
        lines.push((if i == 0 { "data" } else { "" }, text));
    }
    if let Some(m) = &s.mixture {
        lines.push(("mixture", m.clone()));
    }
    for (i, l) in params_lines(&s.params, 88).into_iter().enumerate() {
        lines.push((if i == 0 { "params" } else { "" }, l));
    }
    lines
}

/// The summary without what only makes sense on the machine that ran it (the
/// key's store, paths in the store, the resolved argv): for a report.
pub fn render_portable(s: &Summary) -> String {
    let mut out = format!("{} ({} v{})\n", s.step, s.kind, s.kind_version);
    push_line(&mut out, "ran", &ran_text(s));
    for (label, text) in model_lines(s) {
        push_line(&mut out, label, &text);
    }
    out
}

/// The summary as text: about a dozen lines.
pub fn render_summary(s: &Summary) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: &str| push_line(&mut out, label, text);
    let head = format!(
        "step {} ({} v{}) of workflow {}\n",
        s.step, s.kind, s.kind_version, s.workflow
    );
    line("key", &s.key);
    line("ran", &ran_text(s));
    if let Some(a) = &s.argv {
        line(
            "argv",
            &a.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
        );
    }
    for (label, text) in model_lines(s) {
        line(label, &text);
    }
    for i in &s.inputs {
        const SHOWN: usize = 3;
        let mut from = i
            .from
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if i.from.len() > SHOWN {
            from.push_str(&format!(" and {} more", i.from.len() - SHOWN));
        }
        let size = if i.not_in_store {
            "a record is no longer in the store".to_string()
        } else {
            bytes_text(i.bytes)
        };
        line("input", &format!("{} = {from} ({size})", i.name));
    }
    for o in &s.outputs {
        line(
            "output",
            &format!(
                "{} = {} ({})",
                o.name,
                o.path,
                crate::store::human_bytes(o.size)
            ),
        );
    }
    let u = &s.upstream;
    let mut text = if u.results == 0 {
        "none".to_string()
    } else {
        format!(
            "{} result{}, {} of step time",
            u.results,
            if u.results == 1 { "" } else { "s" },
            crate::outcome::human_duration(u.duration_s)
        )
    };
    if u.not_in_store > 0 {
        text.push_str(&format!(", {} no longer in the store", u.not_in_store));
    }
    if u.results + u.not_in_store > 0 {
        text.push_str(&format!("; `demix lineage {} --full` shows each", s.step));
    }
    line("upstream", &text);
    format!("{head}{out}")
}
