//! Step kinds: what a step of each `kind:` does. The engine only knows this trait;
//! the machine-learning kinds plug in behind it.

pub mod command;
pub mod merge;
pub mod ml;
pub mod report;
#[cfg(feature = "torch")]
mod run;
pub mod sample;
pub mod search;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use marked_yaml::{Node, Spanned};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exec::spec::StepSpec;
use crate::manifest::Diags;
use crate::manifest::template::Split;

/// What planning a step yields: everything its cache key and its run need.
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

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl From<crate::mix::merge::MergeError> for StepError {
    fn from(e: crate::mix::merge::MergeError) -> Self {
        StepError::Failed(e.to_string())
    }
}

impl StepError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StepError {
        let context = context.into();
        move |source| StepError::Io { context, source }
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
}

impl RunCtx<'_> {
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

pub trait StepKind: Sync + Send {
    fn name(&self) -> &'static str;
    /// Bumped whenever the kind's implementation changes what it produces, which
    /// makes every step of this kind stale.
    fn version(&self) -> u32;
    /// Checks the kind's fields (params and `item` already substituted) and returns
    /// the plan, or reports problems with their locations.
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan>;
    /// Runs the step in this process.
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError>;
    /// The JSON Schema of the kind's fields; see [`fields_schema`].
    fn schema(&self) -> serde_json::Value;
    /// One line for `demix schema --kinds` and error messages.
    fn summary(&self) -> &'static str;
}

static COMMAND: command::Command = command::Command;
static TOKENIZER: ml::Tokenizer = ml::Tokenizer;
static TRAIN: ml::Train = ml::Train;
static EVALUATE: ml::Evaluate = ml::Evaluate;
static MERGE: merge::Merge = merge::Merge;
static SEARCH: search::Search = search::Search;
static REPORT: report::ReportKind = report::ReportKind;
static SAMPLE: sample::Sample = sample::Sample;
static VALIDATE: validate::Validate = validate::Validate;

/// Every kind this build knows. The ML kinds plan everywhere and run only with the
/// `torch` feature.
pub fn kinds() -> Vec<&'static dyn StepKind> {
    vec![
        &COMMAND, &TOKENIZER, &TRAIN, &EVALUATE, &MERGE, &SAMPLE, &SEARCH, &VALIDATE, &REPORT,
    ]
}

pub fn kind(name: &str) -> Option<&'static dyn StepKind> {
    kinds().into_iter().find(|k| k.name() == name)
}

pub fn kind_names() -> Vec<&'static str> {
    kinds().iter().map(|k| k.name()).collect()
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
