//! The step-kind protocol: what a step of each `kind:` is to the engine. The
//! engine knows only [`StepKind`] and a [`Registry`] of them; each kind
//! implements the typed [`Kind`], and a blanket implementation does the
//! parsing (with located diagnostics), the schema and the run-time decode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use marked_yaml::{Node, Span, Spanned};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::template::Split;
use crate::manifest::{Diags, node_to_json, serde_diag};
use crate::protocol::StepSpec;

/// What planning a step yields: everything its cache key and its run need.
#[derive(Default)]
pub struct Plan {
    /// Canonical parameters (references kept symbolic, as written).
    pub params: Value,
    /// Workspace files and folders the step reads, relative to the manifest.
    pub paths: Vec<Spanned<String>>,
    /// Declared outputs: name -> path inside the output directory (`/` ends a folder).
    pub outputs: BTreeMap<String, String>,
    /// Whether runtime references (`${inputs.*}`, `${outputs.*}`, `${out}`) may
    /// appear in the step's fields.
    pub runtime_refs: bool,
    /// Datasets the step reads by name (not through a `${datasets.*}` reference),
    /// such as the keys of a training mixture.
    pub datasets: Vec<(Spanned<String>, Split)>,
    /// How many paths some inputs must resolve to, checked once the graph
    /// knows how many nodes each `[*]` reference names.
    pub counts: Vec<CountCheck>,
    /// Memory the step will need at least, what for, and where that is set:
    /// checked against the step's `resources.memory`.
    pub memory: Option<(u64, String, marked_yaml::Span)>,
    /// The step can run as several data-parallel ranks (`resources.ranks`).
    pub data_parallel: bool,
}

/// A rule on how many paths inputs resolve to: the total over `inputs` (their
/// references as written) must equal `expected`, or, with `same_as`, the
/// count of that other input.
#[derive(Clone, Debug)]
pub struct CountCheck {
    pub inputs: Vec<String>,
    pub expected: Expected,
    /// What the counted paths are, for the message ("models", "components").
    pub what: String,
    pub span: marked_yaml::Span,
}

#[derive(Clone, Debug)]
pub enum Expected {
    /// A number and what it counts ("weights").
    Number(usize, String),
    /// The count of another input, and what it is.
    SameAs(String, String),
}

/// Progress a running step reports; the scheduler shows it.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
    pub unit: String,
    pub message: Option<String>,
}

impl Plan {
    /// A plan whose key and run take `params` (usually the kind's fields).
    pub fn new(params: &impl Serialize) -> Plan {
        Plan {
            params: serde_json::to_value(params).expect("a kind's params serialize"),
            ..Plan::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// What went wrong, said for the user (inputs, data, settings).
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The spec's params do not decode as the kind's: a spec of another demix.
    #[error("the step spec does not fit this demix's `{kind}` kind: {source}")]
    Spec {
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "`{0}` steps run in demix-worker, the process with libtorch; this one has none (run them through `demix run`, which starts the worker)"
    )]
    NeedsWorker(&'static str),
    /// A library's error, its message kept and its source chained.
    #[error(transparent)]
    Library(Box<dyn std::error::Error + Send + Sync>),
}

impl StepError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StepError {
        let context = context.into();
        move |source| StepError::Io { context, source }
    }

    /// Wraps a library's error (a merge's, a search's) keeping its source chain.
    pub fn library(e: impl std::error::Error + Send + Sync + 'static) -> StepError {
        StepError::Library(Box::new(e))
    }

    /// A panic caught from a library call (libtorch panics in tch on, say,
    /// an allocation it cannot make) as a failure: `what` and the message.
    pub fn from_panic(what: &str, p: &(dyn std::any::Any + Send)) -> StepError {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        StepError::Failed(format!("{what}: {msg}"))
    }
}

/// What a step sees while it runs.
pub struct RunCtx<'a> {
    pub spec: &'a StepSpec,
    /// The store the step runs against (shards, resume state, lineage).
    pub store: &'a crate::store::Store,
    /// Where the step writes its outputs; committed to the store if the step succeeds.
    pub out_dir: &'a Path,
    /// Where the step's own output (stdout, stderr, messages) goes.
    pub log: &'a Path,
    pub cancel: &'a AtomicBool,
    pub progress: &'a dyn Fn(Progress),
    /// Facts for the result record (see [`crate::store::ResultRecord::facts`]).
    pub facts: &'a std::sync::Mutex<BTreeMap<String, serde_json::Value>>,
}

impl RunCtx<'_> {
    /// Records a fact of this run in its result (the device it used, say).
    pub fn fact(&self, name: &str, value: impl Serialize) {
        if let Ok(v) = serde_json::to_value(value) {
            self.facts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string(), v);
        }
    }

    /// Absolute paths of an input, by the key the step declared it under.
    pub fn input(&self, key: &str) -> Result<&[PathBuf], StepError> {
        self.spec
            .inputs
            .get(key)
            .map(|i| i.paths.as_slice())
            .ok_or_else(|| {
                StepError::Failed(format!("input `{key}` was not resolved by the engine"))
            })
    }
}

/// Where a step runs: in a process of the engine's own binary, or in
/// demix-worker, the one binary that maps libtorch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runner {
    #[default]
    Engine,
    Worker,
}

/// A step kind as the engine holds it (object safe). Implement [`Kind`] instead.
pub trait StepKind: Sync + Send {
    fn name(&self) -> &'static str;
    /// Bumped whenever the kind's implementation changes what it produces, which
    /// makes every step of this kind stale.
    fn version(&self) -> u32;
    /// One line for the schema and error messages.
    fn summary(&self) -> &'static str;
    /// The JSON Schema of the kind's fields; see [`fields_schema`].
    fn schema(&self) -> Value;
    /// Checks the kind's fields (params and `item` already substituted) and returns
    /// the plan, or reports problems with their locations.
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan>;
    /// Which binary runs a step with these (planned) params.
    fn runner(&self, params: &Value) -> Runner;
    /// Runs the step in this process.
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError>;
}

/// A step kind with typed fields: what each kind's module implements.
pub trait Kind: Sync + Send + 'static {
    const NAME: &'static str;
    /// See [`StepKind::version`].
    const VERSION: u32;
    const SUMMARY: &'static str;
    /// The fields as a manifest writes them (the schema is generated from it).
    type Fields: DeserializeOwned + JsonSchema;
    /// What the cache key hashes and the run reads: often the fields themselves.
    type Params: Serialize + DeserializeOwned;
    /// Reshapes the body before it is read, e.g. a scalar as a one-item list.
    fn prepare(_body: &mut Node) {}
    /// Checks what types cannot say, reporting into `d` at the fields' places
    /// in `body`. Returns the plan; any problem reported makes it void.
    fn plan(&self, fields: Self::Fields, body: &Node, d: &mut Diags) -> Option<Plan>;
    fn runner(&self, _params: &Self::Params) -> Runner {
        Runner::Engine
    }
    /// Runs the step. Kinds that need libtorch implement it only in the build
    /// with it (demix-worker); elsewhere this default refuses.
    fn run(&self, _params: Self::Params, _ctx: &RunCtx) -> Result<(), StepError> {
        Err(StepError::NeedsWorker(Self::NAME))
    }
}

impl<K: Kind> StepKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn version(&self) -> u32 {
        K::VERSION
    }
    fn summary(&self) -> &'static str {
        K::SUMMARY
    }
    fn schema(&self) -> Value {
        fields_schema::<K::Fields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut body = body.clone();
        K::prepare(&mut body);
        // Fields may flatten a shared config, which serde cannot check for
        // unknown keys; the schema knows every key, so the check is here.
        if !unknown_keys(&body, &self.schema(), K::NAME, d) {
            return None;
        }
        let fields: K::Fields = read_fields(&body, K::NAME, d)?;
        let before = d.problems.len();
        let plan = Kind::plan(self, fields, &body, d)?;
        (d.problems.len() == before).then_some(plan)
    }
    fn runner(&self, params: &Value) -> Runner {
        // Params come from this kind's own plan, so they decode.
        serde_json::from_value(params.clone()).map_or(Runner::Engine, |p| Kind::runner(self, &p))
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        let params =
            serde_json::from_value(ctx.spec.params.clone()).map_err(|source| StepError::Spec {
                kind: K::NAME,
                source,
            })?;
        Kind::run(self, params, ctx)
    }
}

/// Reads a kind's fields from its step body. A config flattened into the
/// fields (`#[serde(flatten)]`) is read through serde's buffer, which sees every
/// YAML scalar as a string; such fields are read again from the body with
/// plain scalars typed as YAML's core schema types them. When both fail, the
/// problem is real and is reported where it is.
fn read_fields<T: DeserializeOwned>(body: &Node, kind: &str, d: &mut Diags) -> Option<T> {
    let located = match marked_yaml::from_node(body) {
        Ok(f) => return Some(f),
        Err(e) => e,
    };
    let typed = match serde_json::from_value::<T>(node_to_json(body)) {
        Ok(f) => return Some(f),
        Err(e) => e,
    };
    let what = format!("{kind} step");
    // An error placed at a field is about that field; one placed at the whole
    // body came out of the buffer and may name a field that is fine.
    let at_body = located
        .start_mark()
        .is_some_and(|m| Some(m) == body.span().start().copied());
    if !at_body {
        serde_diag(d, body.span(), &what, located);
        return None;
    }
    let msg = typed.to_string();
    let hint = crate::manifest::unknown_variant_hint(&msg);
    let (span, label) = match quoted_value(body, &msg) {
        Some((key, span)) => (span, format!("in {what}.{key}")),
        None => (*body.span(), format!("in {what}")),
    };
    d.push(&span, msg, label, hint);
    None
}

/// The top-level field whose scalar a serde message quotes (`invalid type:
/// string "abc"`, `unknown variant `x``), and where it is written.
fn quoted_value(body: &Node, msg: &str) -> Option<(String, Span)> {
    body.as_mapping()?
        .iter()
        .filter_map(|(k, v)| Some((k, v.as_scalar()?)))
        .find(|(_, v)| {
            let t = v.as_str();
            msg.contains(&format!("\"{t}\"")) || msg.contains(&format!("`{t}`"))
        })
        .map(|(k, v)| (k.as_str().to_string(), *v.span()))
}

/// Reports keys of `body` that are not properties of `schema`, as serde words
/// it; returns whether all are known.
fn unknown_keys(body: &Node, schema: &Value, kind: &str, d: &mut Diags) -> bool {
    let (Some(map), Some(props)) = (body.as_mapping(), schema["properties"].as_object()) else {
        return true;
    };
    let known: Vec<&str> = props.keys().map(String::as_str).collect();
    let mut ok = true;
    for k in map.keys() {
        if known.contains(&k.as_str()) {
            continue;
        }
        ok = false;
        let expected = match known.as_slice() {
            [] => "there are no fields".to_string(),
            [one] => format!("expected `{one}`"),
            [a, b] => format!("expected `{a}` or `{b}`"),
            [rest @ .., last] => format!(
                "expected one of {}, or `{last}`",
                rest.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let at = k
            .span()
            .start()
            .map(|m| marked_yaml::Span::new_start(*m))
            .unwrap_or(*k.span());
        d.error(
            &at,
            format!("Unknown field `{}`, {expected}", k.as_str()),
            format!("in {kind} step.{}", k.as_str()),
        );
    }
    ok
}

/// The kinds a demix knows, in the order the schema lists them.
#[derive(Clone)]
pub struct Registry {
    kinds: Vec<&'static dyn StepKind>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    pub fn new(kinds: Vec<&'static dyn StepKind>) -> Registry {
        Registry { kinds }
    }

    pub fn get(&self, name: &str) -> Option<&'static dyn StepKind> {
        self.kinds.iter().copied().find(|k| k.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static dyn StepKind> + '_ {
        self.kinds.iter().copied()
    }
}

/// Writes `v` as pretty JSON (with a final newline) to `name` in the step's output folder.
pub fn write_json(ctx: &RunCtx, name: &str, v: &impl Serialize) -> Result<(), StepError> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("serializing owned values cannot fail");
    bytes.push(b'\n');
    std::fs::write(ctx.out_dir.join(name), bytes).map_err(StepError::io(format!("writing {name}")))
}

/// The JSON Schema of a kind's fields, as a root schema object (its `properties`,
/// `required` and `definitions` are merged into the manifest schema).
pub fn fields_schema<T: schemars::JsonSchema>() -> serde_json::Value {
    let g = schemars::generate::SchemaSettings::draft07().into_generator();
    serde_json::to_value(g.into_root_schema_for::<T>()).expect("schemas serialize")
}
