//! The YAML manifest: parsing with source spans, validation, and the JSON Schema.
//!
//! Parsing is two-level: the top level and each step's common fields are walked by
//! hand (so every node keeps its span and unknown keys get a did-you-mean), and the
//! leaves (datasets, resources, each kind's fields) go through serde on span-carrying
//! nodes, so type errors point at the offending node too.

pub mod diag;
pub mod schema;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node, Span, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use demix_spec::data::Format;
pub use diag::{Diags, ManifestDiag, ManifestError, SourceFile, did_you_mean};

/// The manifest file used when none is given on the command line.
pub const DEFAULT_MANIFESTS: &[&str] = &[
    "demix.yaml",
    "workflows/demix-tiny.yaml",
    "workflows/commands.yaml",
];

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    // The I/O error is in the message, not a `source`: miette would print it twice.
    #[error("cannot read manifest {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} is not a regular file; a manifest is a YAML file")]
    NotAFile(PathBuf),
    #[error("{0} is larger than {max} MiB; a manifest is a small YAML file", max = MAX_MANIFEST_BYTES >> 20)]
    TooLarge(PathBuf),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] ManifestError),
}

/// A parsed manifest. Steps are not yet expanded; see [`crate::graph`].
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    /// Folder that relative paths in the manifest are resolved against.
    pub dir: PathBuf,
    pub src: SourceFile,
    pub name: String,
    pub params: serde_json::Map<String, Value>,
    pub datasets: BTreeMap<String, DatasetDecl>,
    pub steps: Vec<StepDecl>,
    /// Where the steps run (`executor:`); `None` is the local machine.
    pub executor: Option<ExecutorDecl>,
}

/// A named text source. Globs are relative to the manifest's folder.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetDecl {
    /// Glob(s) of the training documents (a string or a list).
    #[schemars(with = "OneOrMany")]
    pub files: Vec<Spanned<String>>,
    /// Glob(s) of held-out validation documents. Without it, documents are split
    /// deterministically by `validation_fraction`.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub validation: Vec<Spanned<String>>,
    /// How documents are stored: `text` (one file, one document), `jsonl` (one line,
    /// one document; `.gz`/`.zst` allowed) or `parquet`. `auto` goes by extension.
    #[serde(default)]
    pub format: Format,
    /// The text field (JSON Lines) or column (Parquet).
    #[serde(default = "default_field")]
    pub field: String,
    /// Share of documents held out when no `validation` files are given.
    #[serde(default)]
    pub validation_fraction: Option<f64>,
    /// Free text shown in `demix dag` and the report.
    #[serde(default)]
    pub description: Option<String>,
}

fn default_field() -> String {
    "text".into()
}

/// A string or a list of strings.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// What a step needs from the machine (or from the cluster).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (default 1).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// GPUs (default 0). Each step that asks for GPUs gets its own.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Memory, e.g. `512MiB`, `4GiB`, or bytes.
    #[serde(default)]
    pub memory: Option<String>,
    /// Wall-clock limit on a cluster, e.g. `2h`, `30m`, `01:30:00`.
    #[serde(default)]
    pub time: Option<String>,
    /// Data-parallel processes per node of a `train` step (or a `proxy:
    /// trained` search): each takes a slice of every global batch and, with
    /// GPUs, one GPU. Default: `gpus` when more than 0, else 1. Started by Open
    /// MPI's `mpirun` here, by `srun` on Slurm.
    #[serde(default)]
    pub ranks: Option<u32>,
    /// Nodes for a data-parallel step on Slurm (default 1); `cpus`, `gpus`,
    /// `memory` and `ranks` are per node.
    #[serde(default)]
    pub nodes: Option<u32>,
}

impl Resources {
    pub fn cpus(&self) -> u32 {
        self.cpus.unwrap_or(1)
    }
    pub fn gpus(&self) -> u32 {
        self.gpus.unwrap_or(0)
    }
    pub fn nodes(&self) -> u32 {
        self.nodes.unwrap_or(1)
    }
    /// Ranks per node of a data-parallel step.
    pub fn ranks(&self) -> u32 {
        self.ranks.unwrap_or(self.gpus().max(1))
    }
    pub fn memory_bytes(&self) -> u64 {
        self.memory
            .as_deref()
            .and_then(|m| parse_bytes(m).ok())
            .unwrap_or(0)
    }
}

/// Why a string is not a size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size (expected e.g. 512MiB, 4GiB)")]
    NotASize(String),
    #[error("unknown size unit `{unit}` in `{size}`")]
    UnknownUnit { unit: String, size: String },
}

/// Parses `4GiB`, `512M`, `1.5G`, `1000` into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| SizeError::NotASize(s.to_string()))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_string(),
                size: s.to_string(),
            });
        }
    };
    Ok((n * mult) as u64)
}

/// Where steps run: the top-level `executor:` block. It never changes a step's key.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecutorDecl {
    /// `local` (the default: child processes on this machine) or `slurm` (one
    /// `sbatch` job per step, or per batch of steps). `demix run --executor` overrides it.
    #[serde(rename = "type", default)]
    pub kind: ExecutorKind,
    /// Slurm partition (`--partition`).
    #[serde(default)]
    pub partition: Option<String>,
    /// Slurm account (`--account`).
    #[serde(default)]
    pub account: Option<String>,
    /// Time limit of a step that sets no `resources.time`, e.g. `30m`, `2h`, `01:30:00`.
    #[serde(default)]
    pub time: Option<String>,
    /// Extra `sbatch` arguments, e.g. `[--qos=high, --constraint=a100]`.
    #[serde(default)]
    #[schemars(with = "OneOrMany")]
    pub flags: Vec<String>,
    /// How often a preempted, timed-out or requeued step is run again (default 2).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// `sbatch --signal` (default `B:USR1@60`: the step is told to stop 60 s before
    /// its time limit, and is then run again).
    #[serde(default)]
    pub signal: Option<String>,
    /// Submit ready steps with equal requests as one job array (default true).
    #[serde(default)]
    pub array: Option<bool>,
    /// Run up to this many ready steps with equal requests one after another in one
    /// job (or array task), so tiny steps share a job's start-up cost (default 1).
    #[serde(default)]
    pub batch: Option<u32>,
    /// Seconds between two `squeue` polls of the run's jobs (default 1).
    #[serde(default)]
    pub poll: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

/// A step as written, before fan-out expansion.
#[derive(Debug, Clone)]
pub struct StepDecl {
    pub id: String,
    pub id_span: Span,
    pub kind: String,
    pub kind_span: Span,
    pub foreach: Option<Foreach>,
    pub resources: Resources,
    /// Where `resources` is written (else the step's id).
    pub resources_span: Span,
    /// The kind-specific fields, with the common ones removed.
    pub body: MarkedMappingNode,
    /// Explicit ordering edges, for steps that must wait without consuming outputs.
    pub after: Vec<Spanned<String>>,
    /// Its common fields had errors (already reported); the graph skips it.
    pub broken: bool,
}

#[derive(Debug, Clone)]
pub struct Foreach {
    pub items: Vec<String>,
    pub span: Span,
    /// With `matrix`: each item's value per axis, for `${item.AXIS}`.
    pub fields: Vec<BTreeMap<String, Value>>,
}

/// Keys every step has; the rest belong to its kind.
pub const COMMON_KEYS: &[&str] = &[
    "id",
    "kind",
    "foreach",
    "matrix",
    "resources",
    "after",
    "description",
];
const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "params",
    "datasets",
    "steps",
    "executor",
];

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Turns a serde error from a node into a diagnostic at the node it names.
pub fn serde_diag(d: &mut Diags, at: &Span, what: &str, e: marked_yaml::FromNodeError) {
    let span = e.start_mark().map(Span::new_start).unwrap_or_else(|| *at);
    let path = e.path().map(str::to_string);
    let inner = e.into_inner().to_string();
    // Strip the path prefix serde_path_to_error adds; we show our own.
    let msg = match &path {
        Some(p) => inner
            .strip_prefix(&format!("{p}: "))
            .unwrap_or(&inner)
            .to_string(),
        None => inner,
    };
    let msg = msg.replace(
        "invalid digit found in string",
        "expected a non-negative integer",
    );
    let label = match &path {
        Some(p) => format!("in {what}.{p}"),
        None => format!("in {what}"),
    };
    let hint = unknown_variant_hint(&msg);
    d.push(&span, msg, label, hint);
}

/// For serde's "unknown variant `x`, expected one of `a`, `b`": the closest choice.
pub fn unknown_variant_hint(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown variant `")?;
    let (given, expected) = rest.split_once('`')?;
    let choices: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    did_you_mean(given, choices.iter().copied())
}

/// Wraps a scalar in a one-element sequence so `key: x` and `key: [x]` read alike.
pub fn listify(map: &mut MarkedMappingNode, key: &str) {
    let k = MarkedScalarNode::from(key);
    if let Some(Node::Scalar(s)) = map.get(&k).cloned() {
        let span = *s.span();
        let seq = marked_yaml::types::MarkedSequenceNode::new(span, vec![Node::Scalar(s)]);
        map.insert(k, Node::Sequence(seq));
    }
}

/// Converts a YAML node to JSON, typing plain scalars as YAML 1.2's core schema does.
pub fn node_to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => scalar_to_json(s),
        Node::Sequence(seq) => Value::Array(seq.iter().map(node_to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), node_to_json(v)))
                .collect(),
        ),
    }
}

fn scalar_to_json(s: &MarkedScalarNode) -> Value {
    let t = s.as_str();
    if !s.may_coerce() {
        return Value::String(t.to_string());
    }
    match t {
        "~" | "null" | "" => return Value::Null,
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
        && t.chars().any(|c| c.is_ascii_digit())
    {
        return Value::from(f);
    }
    Value::String(t.to_string())
}

/// Builds a node from a JSON value, every part carrying `span`.
pub fn json_to_node(v: &Value, span: &Span) -> Node {
    match v {
        Value::Null => Node::Scalar(MarkedScalarNode::new(*span, "")),
        Value::Bool(b) => Node::Scalar(MarkedScalarNode::new(*span, b.to_string())),
        Value::Number(n) => Node::Scalar(MarkedScalarNode::new(*span, n.to_string())),
        Value::String(s) => {
            let mut n = MarkedScalarNode::new(*span, s.as_str());
            n.set_coerce(false);
            Node::Scalar(n)
        }
        Value::Array(a) => Node::Sequence(marked_yaml::types::MarkedSequenceNode::new(
            *span,
            a.iter().map(|x| json_to_node(x, span)).collect(),
        )),
        Value::Object(o) => {
            let mut m = MarkedMappingNode::new_empty(*span);
            for (k, x) in o {
                m.insert(
                    MarkedScalarNode::new(*span, k.as_str()),
                    json_to_node(x, span),
                );
            }
            Node::Mapping(m)
        }
    }
}

impl Manifest {
    /// Reads and checks a manifest file. Nothing is written anywhere.
    pub fn load(path: &Path) -> Result<Manifest, LoadError> {
        Ok(Self::parse(path, read(path)?)?)
    }

    pub fn parse(path: &Path, text: String) -> Result<Manifest, ManifestError> {
        let (m, problems) = Self::parse_partial(path, text)?;
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(ManifestError {
                file: m.src.name.clone(),
                problems,
            })
        }
    }

    /// Parses as much as it can: a syntax error is fatal, other problems are returned
    /// beside the manifest so the graph checks can add theirs.
    pub fn parse_partial(
        path: &Path,
        text: String,
    ) -> Result<(Manifest, Vec<ManifestDiag>), ManifestError> {
        let src = SourceFile::new(path, text);
        let mut d = Diags::new(&src);
        let opts = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .toplevel_mapping();
        let root = match marked_yaml::parse_yaml_with_options(0, src.text.as_str(), opts) {
            Ok(n) => n,
            Err(e) => {
                load_error(&mut d, e);
                return Err(d.finish().unwrap_err());
            }
        };
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        match parse_root(&mut d, &root, path, dir) {
            Some(m) => Ok((m, d.problems)),
            None => Err(d.finish().unwrap_err()),
        }
    }

    pub fn step(&self, id: &str) -> Option<&StepDecl> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// Manifests are small text files; anything larger is not one (`/dev/zero`).
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

fn read(path: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let io = |error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    };
    let md = std::fs::metadata(path).map_err(io)?;
    if !md.is_file() {
        return Err(LoadError::NotAFile(path.to_path_buf()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(LoadError::TooLarge(path.to_path_buf()));
    }
    Ok(text)
}

/// Reads a manifest and builds its graph with the kinds of `registry`,
/// reporting every problem of both at once.
pub fn load_graph(
    path: &Path,
    registry: &crate::kind::Registry,
) -> Result<crate::graph::Graph, LoadError> {
    let (m, problems) = Manifest::parse_partial(path, read(path)?)?;
    Ok(crate::graph::Graph::build_checked(m, problems, registry)?)
}

fn load_error(d: &mut Diags, e: marked_yaml::LoadError) {
    use marked_yaml::LoadError as E;
    let (mark, msg) = match &e {
        E::TopLevelMustBeMapping(m) => (*m, "the top level must be a mapping".to_string()),
        E::TopLevelMustBeSequence(m) => (*m, "the top level must be a sequence".to_string()),
        E::UnexpectedAnchor(m) => (*m, "YAML anchors are not supported".to_string()),
        E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_string()),
        E::UnexpectedTag(m) => (*m, "YAML tags are not supported".to_string()),
        E::ScanError(m, se) => (*m, format!("YAML syntax error: {}", se.info())),
        E::DuplicateKey(k) => (
            *k.key.span().start().expect("keys have spans"),
            format!(
                "duplicate key `{}` (first at line {})",
                k.key.as_str(),
                k.prev_key.span().start().map_or(0, |m| m.line())
            ),
        ),
        #[allow(unreachable_patterns)]
        _ => (marked_yaml::Marker::new(0, 0, 1, 1), e.to_string()),
    };
    d.error(&Span::new_start(mark), msg, "here");
}

/// Parameters are values: a `${...}` in one would be resolved by nothing (a
/// parameter naming another, or itself, never becomes a value), so it is an
/// error where it is written. `$${` stays a literal.
fn check_param_values(d: &mut Diags, node: &Node) {
    match node {
        Node::Mapping(m) => m.values().for_each(|v| check_param_values(d, v)),
        Node::Sequence(s) => s.iter().for_each(|v| check_param_values(d, v)),
        Node::Scalar(s) => {
            if let Ok(pieces) = template::parse(s.as_str())
                && pieces.iter().any(|p| matches!(p, template::Piece::Ref(_)))
            {
                d.push(
                    s.span(),
                    format!(
                        "a parameter's value cannot hold a reference (`{}`)",
                        s.as_str()
                    ),
                    "params",
                    Some("write the value itself, or `$${` for a literal `${`".into()),
                );
            }
        }
    }
}

/// Where a mapping starts, for "missing field" errors: its first key.
fn start_of(map: &MarkedMappingNode) -> Span {
    map.keys()
        .next()
        .map(|k| *k.span())
        .unwrap_or_else(|| *map.span())
}

fn parse_root(d: &mut Diags, root: &Node, path: &Path, dir: PathBuf) -> Option<Manifest> {
    let map = root.as_mapping()?;
    let top = start_of(map);
    check_keys(d, map, TOP_KEYS, "the manifest");
    check_version(d, map, &top);
    let name = parse_name(d, map, &top);
    let params = parse_params(d, map);
    let datasets = parse_datasets(d, map, &params);
    let executor = map.get_node("executor").and_then(|n| parse_executor(d, n));
    let mut steps = Vec::new();
    match map.get_node("steps") {
        Some(Node::Sequence(seq)) => {
            for n in seq.iter() {
                if let Some(s) = parse_step(d, n, &params) {
                    steps.push(s);
                }
            }
        }
        Some(n) => d.error(n.span(), "`steps` must be a list of steps", "steps"),
        None => d.push(
            &top,
            "missing `steps`",
            "manifest",
            Some("add a `steps:` list".into()),
        ),
    }
    check_duplicate_ids(d, &steps);
    Some(Manifest {
        path: path.to_path_buf(),
        dir,
        src: d.src.clone(),
        name,
        params,
        datasets,
        steps,
        executor,
    })
}

/// `version: 1`, the only version this demix reads; `top` is where a missing
/// one is reported.
fn check_version(d: &mut Diags, map: &MarkedMappingNode, top: &Span) {
    match map.get_node("version") {
        None => d.push(
            top,
            "missing `version`",
            "manifest",
            Some("add `version: 1` at the top".into()),
        ),
        Some(v) => {
            if v.as_scalar().map(|s| s.as_str()) != Some("1") {
                d.error(
                    v.span(),
                    "unsupported manifest version (this demix reads `version: 1`)",
                    "version",
                );
            }
        }
    }
}

/// The workflow's `name` (empty, with an error, when missing or not a plain name).
fn parse_name(d: &mut Diags, map: &MarkedMappingNode, top: &Span) -> String {
    match map.get_node("name") {
        Some(Node::Scalar(s)) if is_id(s.as_str()) => s.as_str().to_string(),
        Some(n) => {
            d.error(
                n.span(),
                "`name` must be a plain name (letters, digits, `-`, `_`)",
                "name",
            );
            String::new()
        }
        None => {
            d.error(top, "missing `name`", "manifest");
            String::new()
        }
    }
}

/// The `params` mapping as JSON (empty when missing or not a mapping).
fn parse_params(d: &mut Diags, map: &MarkedMappingNode) -> serde_json::Map<String, Value> {
    match map.get_node("params") {
        Some(Node::Mapping(p)) => {
            check_param_values(d, &Node::Mapping(p.clone()));
            match node_to_json(&Node::Mapping(p.clone())) {
                Value::Object(o) => o,
                _ => unreachable!("a mapping converts to an object"),
            }
        }
        Some(n) => {
            d.error(
                n.span(),
                "`params` must be a mapping of names to values",
                "params",
            );
            Default::default()
        }
        None => Default::default(),
    }
}

/// The `datasets` mapping: each valid declaration by name.
fn parse_datasets(
    d: &mut Diags,
    map: &MarkedMappingNode,
    params: &serde_json::Map<String, Value>,
) -> BTreeMap<String, DatasetDecl> {
    let mut datasets = BTreeMap::new();
    match map.get_node("datasets") {
        Some(Node::Mapping(ds)) => {
            for (k, v) in ds.iter() {
                if !is_id(k.as_str()) {
                    d.error(
                        k.span(),
                        "dataset names are plain names (letters, digits, `-`, `_`)",
                        "dataset",
                    );
                    continue;
                }
                if let Some(decl) = parse_dataset(d, k.as_str(), v, params) {
                    datasets.insert(k.as_str().to_string(), decl);
                }
            }
        }
        Some(n) => d.error(
            n.span(),
            "`datasets` must be a mapping of names to sources",
            "datasets",
        ),
        None => {}
    }
    datasets
}

/// One dataset declaration, its globs with their parameters substituted;
/// `None` when it does not deserialize (a declaration with other errors is
/// kept: the errors stop the load).
fn parse_dataset(
    d: &mut Diags,
    name: &str,
    v: &Node,
    params: &serde_json::Map<String, Value>,
) -> Option<DatasetDecl> {
    let mut v = v.clone();
    if let Some(m) = v.as_mapping_mut() {
        listify(m, "files");
        listify(m, "validation");
    }
    let mut decl = match marked_yaml::from_node::<DatasetDecl>(&v) {
        Ok(decl) => decl,
        Err(e) => {
            serde_diag(d, v.span(), &format!("datasets.{name}"), e);
            return None;
        }
    };
    // `${params.NAME}` in a glob: corpora live where the params say.
    for g in decl.files.iter_mut().chain(decl.validation.iter_mut()) {
        if let Some(s) = param_glob(d, g, params) {
            *g = Spanned::new(*g.span(), s);
        }
    }
    if decl.files.is_empty() {
        d.error(v.span(), "a dataset needs at least one `files` glob", name);
    }
    if let Some(f) = decl.validation_fraction
        && !(0.0..1.0).contains(&f)
    {
        d.error(
            v.span(),
            format!("`validation_fraction` must be in [0, 1), not {f}"),
            "validation_fraction",
        );
    }
    for g in decl.files.iter().chain(&decl.validation) {
        check_glob(d, g);
    }
    Some(decl)
}

/// Duplicate ids, pointing at the second with the first named.
fn check_duplicate_ids(d: &mut Diags, steps: &[StepDecl]) {
    let mut seen: BTreeMap<&str, &Span> = BTreeMap::new();
    for s in steps {
        if let Some(first) = seen.get(s.id.as_str()) {
            let line = first.start().map_or(0, |m| m.line());
            d.error(
                &s.id_span,
                format!(
                    "duplicate step id `{}` (first defined at line {line})",
                    s.id
                ),
                "duplicate id",
            );
        } else {
            seen.insert(&s.id, &s.id_span);
        }
    }
}

fn parse_executor(d: &mut Diags, node: &Node) -> Option<ExecutorDecl> {
    let mut node = node.clone();
    if let Some(m) = node.as_mapping_mut() {
        listify(m, "flags");
    }
    let e = match marked_yaml::from_node::<ExecutorDecl>(&node) {
        Ok(e) => e,
        Err(e) => {
            serde_diag(d, node.span(), "executor", e);
            return None;
        }
    };
    let at = |key: &str| {
        node.as_mapping()
            .and_then(|m| m.get_node(key))
            .map(|n| *n.span())
            .unwrap_or_else(|| *node.span())
    };
    if let Some(t) = &e.time
        && parse_duration(t).is_err()
    {
        d.error(
            &at("time"),
            format!("`{t}` is not a duration (expected e.g. 30m, 2h, 01:30:00)"),
            "time",
        );
    }
    if e.batch == Some(0) {
        d.error(&at("batch"), "`batch` must be at least 1", "batch");
    }
    if let Some(p) = e.poll
        && !(0.05..=600.0).contains(&p)
    {
        d.error(
            &at("poll"),
            format!("`poll` is in seconds, between 0.05 and 600, not {p}"),
            "poll",
        );
    }
    Some(e)
}

/// A glob with its `${params.NAME}` references substituted (None: unchanged or broken).
fn param_glob(
    d: &mut Diags,
    g: &Spanned<String>,
    params: &serde_json::Map<String, Value>,
) -> Option<String> {
    if !template::has_refs(g.as_str()) {
        return None;
    }
    let pieces = match template::parse(g.as_str()) {
        Ok(p) => p,
        Err(e) => {
            d.error(g.span(), e.to_string(), "glob");
            return None;
        }
    };
    let mut out = String::new();
    for p in pieces {
        match p {
            template::Piece::Lit(l) => out.push_str(&l),
            template::Piece::Ref(template::Ref::Param(path)) => match lookup_param(params, &path) {
                Some(Value::String(v)) => out.push_str(v),
                Some(Value::Number(n)) => out.push_str(&n.to_string()),
                Some(_) => {
                    d.error(
                        g.span(),
                        format!("`params.{}` is not a string or number", path.join(".")),
                        "glob",
                    );
                    return None;
                }
                None => {
                    let help = did_you_mean(&path[0], params.keys().map(String::as_str));
                    d.push(
                        g.span(),
                        format!("unknown parameter `params.{}`", path.join(".")),
                        "glob",
                        help,
                    );
                    return None;
                }
            },
            template::Piece::Ref(r) => {
                d.error(
                    g.span(),
                    format!("a dataset glob takes only `${{params.NAME}}`, not `{r}`"),
                    "glob",
                );
                return None;
            }
        }
    }
    Some(out)
}

fn check_glob(d: &mut Diags, g: &Spanned<String>) {
    if let Err(e) = glob::Pattern::new(g.as_str()) {
        d.error(g.span(), format!("bad glob `{}`: {e}", g.as_str()), "glob");
    }
    if Path::new(g.as_str()).is_absolute() {
        // Absolute globs are allowed (corpora on a shared filesystem).
    }
}

/// Reports keys of `map` that are not in `known`, with a did-you-mean.
pub fn check_keys(d: &mut Diags, map: &MarkedMappingNode, known: &[&str], what: &str) {
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            let help = did_you_mean(k.as_str(), known.iter().copied())
                .or_else(|| Some(format!("{what} takes: {}", known.join(", "))));
            d.push(
                k.span(),
                format!("unknown field `{}` in {what}", k.as_str()),
                "unknown field",
                help,
            );
        }
    }
}

fn parse_step(
    d: &mut Diags,
    n: &Node,
    params: &serde_json::Map<String, Value>,
) -> Option<StepDecl> {
    let Some(map) = n.as_mapping() else {
        d.error(
            n.span(),
            "a step must be a mapping with `id` and `kind`",
            "step",
        );
        return None;
    };
    let id = step_id(d, map)?;
    let kind = step_kind(d, map, &id)?;
    let before = d.problems.len();
    let foreach = match (map.get_node("foreach"), map.get_node("matrix")) {
        (None, None) => None,
        (Some(node), None) => parse_foreach(d, node, params),
        (None, Some(node)) => parse_matrix(d, node, params),
        (Some(_), Some(m)) => {
            d.error(
                m.span(),
                "give either `foreach` or `matrix`, not both",
                "matrix",
            );
            None
        }
    };
    let resources = parse_resources(d, map);
    let after = parse_after(d, map);
    if let Some(desc) = map.get_node("description")
        && desc.as_scalar().is_none()
    {
        d.error(desc.span(), "`description` must be a string", "description");
    }
    let mut body = map.clone();
    for k in COMMON_KEYS {
        body.remove(*k);
    }
    Some(StepDecl {
        id: id.0,
        id_span: id.1,
        kind: kind.0,
        kind_span: kind.1,
        foreach,
        resources,
        resources_span: map.get_node("resources").map_or(id.1, |r| *r.span()),
        body,
        after,
        broken: d.problems.len() > before,
    })
}

/// A step's `id` and where it is; without a valid one the step is left out.
fn step_id(d: &mut Diags, map: &MarkedMappingNode) -> Option<(String, Span)> {
    match map.get_node("id") {
        Some(Node::Scalar(s)) if is_id(s.as_str()) => Some((s.as_str().to_string(), *s.span())),
        Some(other) => {
            d.push(
                other.span(),
                "step ids are plain names (letters, digits, `-`, `_`)",
                "id",
                None,
            );
            None
        }
        None => {
            d.error(&start_of(map), "a step needs an `id`", "step");
            None
        }
    }
}

/// A step's `kind` and where it is; a missing one is reported at the step's `id`.
fn step_kind(
    d: &mut Diags,
    map: &MarkedMappingNode,
    id: &(String, Span),
) -> Option<(String, Span)> {
    match map.get_node("kind") {
        Some(Node::Scalar(s)) => Some((s.as_str().to_string(), *s.span())),
        Some(other) => {
            d.error(other.span(), "`kind` must be a string", "kind");
            None
        }
        None => {
            d.push(
                &id.1,
                format!("step `{}` has no `kind`", id.0),
                "step",
                Some("add `kind:` naming a step kind (`demix schema` lists them)".into()),
            );
            None
        }
    }
}

/// A step's `resources` (the defaults when missing or broken).
fn parse_resources(d: &mut Diags, map: &MarkedMappingNode) -> Resources {
    match map.get_node("resources") {
        None => Resources::default(),
        Some(r) => match marked_yaml::from_node::<Resources>(r) {
            Ok(res) => {
                check_resources(d, r, &res);
                res
            }
            Err(e) => {
                serde_diag(d, r.span(), "resources", e);
                Resources::default()
            }
        },
    }
}

/// A step's `after`: one step id or a list of them.
fn parse_after(d: &mut Diags, map: &MarkedMappingNode) -> Vec<Spanned<String>> {
    let Some(a) = map.get_node("after") else {
        return Vec::new();
    };
    let mut a = a.clone();
    if let Node::Scalar(s) = &a {
        a = Node::Sequence(marked_yaml::types::MarkedSequenceNode::new(
            *s.span(),
            vec![a.clone()],
        ));
    }
    match marked_yaml::from_node::<Vec<Spanned<String>>>(&a) {
        Ok(v) => v,
        Err(e) => {
            serde_diag(d, a.span(), "after", e);
            Vec::new()
        }
    }
}

fn check_resources(d: &mut Diags, node: &Node, r: &Resources) {
    let at = |key: &str| {
        node.as_mapping()
            .and_then(|m| m.get_node(key))
            .map(|n| *n.span())
            .unwrap_or_else(|| *node.span())
    };
    if r.cpus == Some(0) {
        d.error(&at("cpus"), "`cpus` must be at least 1", "cpus");
    }
    for (key, v) in [("ranks", r.ranks), ("nodes", r.nodes)] {
        if v == Some(0) {
            d.error(&at(key), format!("`{key}` must be at least 1"), key);
        }
    }
    if let (Some(ranks), Some(gpus)) = (r.ranks, r.gpus)
        && gpus > 0
        && ranks != gpus
    {
        d.error(
            &at("ranks"),
            format!(
                "each rank takes one GPU: with `gpus: {gpus}`, `ranks` is {gpus} (or leave it out)"
            ),
            "ranks",
        );
    }
    if let Some(m) = &r.memory {
        match parse_bytes(m) {
            Ok(0) => d.error(&at("memory"), "`memory` must be more than 0", "memory"),
            Ok(_) => {}
            Err(e) => d.error(&at("memory"), e.to_string(), "memory"),
        }
    }
    if let Some(t) = &r.time
        && parse_duration(t).is_err()
    {
        d.error(
            &at("time"),
            format!("`{t}` is not a duration (expected e.g. 30m, 2h, 01:30:00)"),
            "time",
        );
    }
}

/// Parses `90s`, `30m`, `2h`, `1d`, `HH:MM:SS` or `MM:SS` into seconds.
#[allow(clippy::result_unit_err)] // the caller words the error with the node's context
pub fn parse_duration(s: &str) -> Result<u64, ()> {
    let s = s.trim();
    if s.contains(':') {
        let parts: Vec<u64> = s
            .split(':')
            .map(|p| p.parse().map_err(|_| ()))
            .collect::<Result<_, _>>()?;
        return match parts.as_slice() {
            [m, s] => Ok(m * 60 + s),
            [h, m, s] => Ok(h * 3600 + m * 60 + s),
            _ => Err(()),
        };
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| ())?;
    let secs = match unit {
        "" | "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(()),
    };
    if secs == 0 { Err(()) } else { Ok(secs) }
}

/// The values of a fan-out: a list, `${params.NAME}` naming a list, or `{range: N}`.
fn fanout_values(
    d: &mut Diags,
    node: &Node,
    params: &serde_json::Map<String, Value>,
    what: &str,
) -> Option<Vec<Value>> {
    let span = *node.span();
    Some(match node {
        Node::Sequence(seq) => seq.iter().map(node_to_json).collect(),
        Node::Scalar(s) => {
            // `${params.NAME}` takes a list from the params.
            let pieces = match template::parse(s.as_str()) {
                Ok(p) => p,
                Err(e) => {
                    d.error(&span, e.to_string(), what);
                    return None;
                }
            };
            match pieces.as_slice() {
                [template::Piece::Ref(template::Ref::Param(path))] => {
                    match lookup_param(params, path) {
                        Some(Value::Array(a)) => a.clone(),
                        Some(_) => {
                            d.error(
                                &span,
                                format!("`params.{}` is not a list", path.join(".")),
                                what,
                            );
                            return None;
                        }
                        None => {
                            let help = did_you_mean(&path[0], params.keys().map(String::as_str));
                            d.push(
                                &span,
                                format!("unknown parameter `params.{}`", path.join(".")),
                                what,
                                help,
                            );
                            return None;
                        }
                    }
                }
                _ => {
                    d.error(
                        &span,
                        format!("`{what}` takes a list, or `${{params.NAME}}` naming a list"),
                        what,
                    );
                    return None;
                }
            }
        }
        Node::Mapping(m) => {
            // `{range: N}`: the items 0 .. N-1, e.g. one per reference model.
            let n = match (m.len(), m.get_node("range")) {
                (1, Some(Node::Scalar(s))) => range_len(s.as_str(), params),
                _ => Err(FanoutError::NotAList {
                    what: what.to_string(),
                }),
            };
            match n {
                Ok(n) => (0..n).map(|i| Value::from(i as u64)).collect(),
                Err(e) => {
                    d.error(&span, e.to_string(), what);
                    return None;
                }
            }
        }
    })
}

/// Why a `foreach` or `matrix` value does not expand to items.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
enum FanoutError {
    #[error("`{what}` items must be plain names or numbers")]
    NotAName { what: String },
    #[error("`{what}` item `{item}` is not a plain name (letters, digits, `_-.:+@`)")]
    BadItem { what: String, item: String },
    #[error("`{what}` takes a list, `${{params.NAME}}` naming a list, or `{{range: N}}`")]
    NotAList { what: String },
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error("unknown parameter `params.{}`", .0.join("."))]
    UnknownParam(Vec<String>),
    #[error("`range: {0}` is more than the {MAX_FANOUT} nodes a step may expand to")]
    RangeTooLarge(u64),
    /// Holds the value as written.
    #[error("`range` takes a positive integer or `${{params.NAME}}` naming one, not `{0}`")]
    BadRange(String),
}

/// A fan-out value as an item name, or why it cannot be one.
fn item_name(v: &Value, what: &str) -> Result<String, FanoutError> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => {
            return Err(FanoutError::NotAName {
                what: what.to_string(),
            });
        }
    };
    if !template::valid_item(&s) {
        return Err(FanoutError::BadItem {
            what: what.to_string(),
            item: s,
        });
    }
    Ok(s)
}

/// The most nodes one step may expand to.
pub const MAX_FANOUT: usize = 100_000;

fn parse_foreach(
    d: &mut Diags,
    node: &Node,
    params: &serde_json::Map<String, Value>,
) -> Option<Foreach> {
    let span = *node.span();
    let values = fanout_values(d, node, params, "foreach")?;
    let mut items = Vec::new();
    for v in values {
        let s = match item_name(&v, "foreach") {
            Ok(s) => s,
            Err(e) => {
                d.error(&span, e.to_string(), "foreach");
                return None;
            }
        };
        if items.contains(&s) {
            d.error(
                &span,
                format!("`foreach` item `{s}` appears twice"),
                "foreach",
            );
            return None;
        }
        items.push(s);
    }
    if items.is_empty() {
        d.error(
            &span,
            "`foreach` is empty: the step would expand to nothing",
            "foreach",
        );
        return None;
    }
    Some(Foreach {
        items,
        span,
        fields: Vec::new(),
    })
}

/// `matrix: {AXIS: values, ...}`: one node per combination, the first axis
/// outermost, items named by their values joined with `-`.
fn parse_matrix(
    d: &mut Diags,
    node: &Node,
    params: &serde_json::Map<String, Value>,
) -> Option<Foreach> {
    let span = *node.span();
    let Some(map) = node.as_mapping() else {
        d.error(
            &span,
            "`matrix` maps axis names to their values, e.g. `{mixture: {range: 32}, seed: [0, 1]}`",
            "matrix",
        );
        return None;
    };
    if map.is_empty() {
        d.error(&span, "`matrix` has no axes", "matrix");
        return None;
    }
    let mut axes: Vec<(String, Vec<(String, Value)>)> = Vec::new();
    let mut total = 1usize;
    for (k, v) in map.iter() {
        let axis = k.as_str();
        if !is_id(axis) || axis.contains('-') {
            d.error(
                k.span(),
                format!("matrix axis `{axis}` is not a plain name (letters, digits, `_`)"),
                "matrix",
            );
            return None;
        }
        let values = fanout_values(d, v, params, "matrix")?;
        let mut named = Vec::new();
        for x in values {
            match item_name(&x, "matrix") {
                Ok(n) if n.contains('-') => {
                    d.error(
                        v.span(),
                        format!(
                            "matrix value `{n}` holds `-`, which joins the values of a node's item"
                        ),
                        "matrix",
                    );
                    return None;
                }
                Ok(n) if named.iter().any(|(m, _)| *m == n) => {
                    d.error(
                        v.span(),
                        format!("matrix value `{n}` appears twice in axis `{axis}`"),
                        "matrix",
                    );
                    return None;
                }
                Ok(n) => named.push((n, x)),
                Err(e) => {
                    d.error(v.span(), e.to_string(), "matrix");
                    return None;
                }
            }
        }
        if named.is_empty() {
            d.error(v.span(), format!("matrix axis `{axis}` is empty"), "matrix");
            return None;
        }
        total = total.saturating_mul(named.len());
        if total > MAX_FANOUT {
            d.error(
                &span,
                format!("`matrix` expands to more than {MAX_FANOUT} nodes"),
                "matrix",
            );
            return None;
        }
        axes.push((axis.to_string(), named));
    }
    let mut items = vec![(Vec::<String>::new(), BTreeMap::new())];
    for (axis, values) in &axes {
        let mut next = Vec::with_capacity(items.len() * values.len());
        for (names, fields) in &items {
            for (n, v) in values {
                let mut names = names.clone();
                names.push(n.clone());
                let mut fields = fields.clone();
                fields.insert(axis.clone(), v.clone());
                next.push((names, fields));
            }
        }
        items = next;
    }
    let (names, fields): (Vec<String>, Vec<BTreeMap<String, Value>>) =
        items.into_iter().map(|(n, f)| (n.join("-"), f)).unzip();
    Some(Foreach {
        items: names,
        span,
        fields,
    })
}

/// The N of `foreach: {range: N}`: a positive integer or `${params.NAME}` naming one.
fn range_len(s: &str, params: &serde_json::Map<String, Value>) -> Result<usize, FanoutError> {
    let v = match template::parse(s)?.as_slice() {
        [template::Piece::Ref(template::Ref::Param(path))] => match lookup_param(params, path) {
            Some(v) => v.clone(),
            None => return Err(FanoutError::UnknownParam(path.clone())),
        },
        _ => Value::String(s.to_string()),
    };
    let n = match &v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n > 0 && n <= MAX_FANOUT as u64 => Ok(n as usize),
        Some(n) if n > 0 => Err(FanoutError::RangeTooLarge(n)),
        _ => Err(FanoutError::BadRange(
            v.to_string().trim_matches('"').to_string(),
        )),
    }
}

pub fn lookup_param<'v>(
    params: &'v serde_json::Map<String, Value>,
    path: &[String],
) -> Option<&'v Value> {
    let mut v = params.get(&path[0])?;
    for p in &path[1..] {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}
