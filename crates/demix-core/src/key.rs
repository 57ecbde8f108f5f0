//! Cache keys and the reasons a step is stale.
//!
//! A key is a blake3 hash over the step kind, the kind's implementation version, the
//! canonical resolved parameters and the content hashes of all inputs. Nothing else:
//! not the upstream keys (so byte-identical upstream outputs keep dependents fresh),
//! not paths of the store, not the time.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where an input's content came from, for status messages and lineage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Origin {
    /// A file or folder in the workspace.
    Path {
        path: String,
        files: Vec<(String, String)>,
    },
    /// A dataset's files (one split).
    Dataset {
        name: String,
        split: crate::manifest::template::Split,
        files: Vec<(String, String)>,
    },
    /// Outputs of other steps; a `[*]` reference lists several.
    Steps { outputs: Vec<UpstreamOutput> },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamOutput {
    pub step: String,
    pub output: String,
    pub key: String,
    pub hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputRecord {
    pub hash: String,
    pub origin: Origin,
}

/// Everything a step's result depends on. Stored with each result so a later plan
/// can say exactly what changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub kind: String,
    pub kind_version: u32,
    pub params: Value,
    /// Manifest parameters the step refers to, by dotted name.
    pub params_used: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, InputRecord>,
}

impl KeyRecord {
    /// The outputs of other steps that input `key` was (none for a file, a
    /// dataset, or a key the record does not have).
    pub fn upstream(&self, key: &str) -> &[UpstreamOutput] {
        match self.inputs.get(key).map(|i| &i.origin) {
            Some(Origin::Steps { outputs }) => outputs,
            _ => &[],
        }
    }

    pub fn key(&self) -> String {
        let material = serde_json::json!({
            "kind": self.kind,
            "kind_version": self.kind_version,
            "params": canonical(&self.params),
            "inputs": self.inputs.iter().map(|(k, v)| (k.clone(), Value::String(v.hash.clone()))).collect::<serde_json::Map<_, _>>(),
        });
        let bytes = serde_json::to_vec(&canonical(&material)).expect("JSON values serialize");
        let mut h = blake3::Hasher::new();
        h.update(b"demix-key-v1\n");
        h.update(&bytes);
        crate::hash::hex(&h.finalize())
    }
}

/// Sorts object keys recursively so equal values hash equally.
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&o[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        _ => v.clone(),
    }
}

/// Why a step must run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Never run under this manifest.
    New,
    /// `--force`.
    Forced,
    ImplementationChanged {
        kind: String,
        old: u32,
        new: u32,
    },
    ParamChanged {
        name: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    InputAdded {
        input: String,
    },
    InputRemoved {
        input: String,
    },
    InputChanged {
        input: String,
        detail: String,
    },
    /// An upstream step will run first, so this step's inputs are not known yet.
    UpstreamPending {
        step: String,
    },
    OutputMissing {
        path: String,
    },
    OutputCorrupt {
        path: String,
    },
    /// Same inputs and parameters as a result that is no longer in the store.
    ResultMissing,
    /// Its result record is there but cannot be read (a truncated file).
    ResultCorrupt {
        path: String,
        error: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(unset)".to_string(),
            Some(v) => v.to_string(),
        };
        match self {
            Reason::New => write!(f, "new step"),
            Reason::Forced => write!(f, "forced with --force"),
            Reason::ImplementationChanged { kind, old, new } => {
                write!(f, "implementation of `{kind}` changed (v{old} -> v{new})")
            }
            Reason::ParamChanged { name, old, new } => {
                write!(
                    f,
                    "parameter `{name}` changed: {} -> {}",
                    show(old),
                    show(new)
                )
            }
            Reason::InputAdded { input } => write!(f, "new input {input}"),
            Reason::InputRemoved { input } => write!(f, "input {input} removed"),
            Reason::InputChanged { input, detail } => write!(f, "input {input} changed: {detail}"),
            Reason::UpstreamPending { step } => write!(f, "upstream step `{step}` runs first"),
            Reason::OutputMissing { path } => write!(f, "output {path} is missing from the store"),
            Reason::OutputCorrupt { path } => write!(f, "output {path} is corrupt in the store"),
            Reason::ResultMissing => write!(f, "its result is no longer in the store"),
            Reason::ResultCorrupt { path, error } => {
                write!(f, "its result record {path} is corrupt ({error})")
            }
        }
    }
}

/// Flattens a JSON value into `a.b[2].c` paths for parameter-level diffs.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

fn diff_maps(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
    prefix: &str,
    out: &mut Vec<Reason>,
) {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (a, b) = (old.get(k), new.get(k));
        if a != b {
            out.push(Reason::ParamChanged {
                name: format!("{prefix}{k}"),
                old: a.cloned(),
                new: b.cloned(),
            });
        }
    }
}

/// A value as it reads when interpolated into a string.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The (old, new) texts of every scalar of the parameters that changed.
fn param_changes(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, b) in new {
        let Some(a) = old.get(k).filter(|a| *a != b) else {
            continue;
        };
        let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
        flatten("", a, &mut fa);
        flatten("", b, &mut fb);
        for (p, y) in &fb {
            if let Some(x) = fa.get(p).filter(|x| *x != y) {
                let (x, y) = (text(x), text(y));
                if !y.is_empty() {
                    out.push((x, y));
                }
            }
        }
    }
    out
}

/// The reasons `new` differs from the `old` record of the same step.
pub fn diff(old: &KeyRecord, new: &KeyRecord) -> Vec<Reason> {
    let mut out = Vec::new();
    if old.kind != new.kind || old.kind_version != new.kind_version {
        out.push(Reason::ImplementationChanged {
            kind: new.kind.clone(),
            old: old.kind_version,
            new: new.kind_version,
        });
    }
    diff_maps(&old.params_used, &new.params_used, "params.", &mut out);
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &old.params, &mut a);
    flatten("", &new.params, &mut b);
    // A field that changed only because a `params.*` it uses changed is that
    // one cause: `params.top_k` is reported, its copy in `run[2]` is not.
    let mut fields = Vec::new();
    diff_maps(&a, &b, "", &mut fields);
    let changed = param_changes(&old.params_used, &new.params_used);
    out.extend(fields.into_iter().filter(|r| {
        match r {
            Reason::ParamChanged {
                old: Some(x),
                new: Some(y),
                ..
            } => !changed
                .iter()
                .any(|(pa, pb)| text(y).replace(pb.as_str(), pa) == text(x)),
            _ => true,
        }
    }));
    for (name, inp) in &new.inputs {
        match old.inputs.get(name) {
            None => out.push(Reason::InputAdded {
                input: name.clone(),
            }),
            Some(o) if o.hash != inp.hash => out.push(Reason::InputChanged {
                input: name.clone(),
                detail: describe_change(&o.origin, &inp.origin),
            }),
            Some(_) => {}
        }
    }
    for name in old.inputs.keys() {
        if !new.inputs.contains_key(name) {
            out.push(Reason::InputRemoved {
                input: name.clone(),
            });
        }
    }
    out
}

fn describe_files(old: &[(String, String)], new: &[(String, String)]) -> String {
    let o: BTreeMap<&str, &str> = old.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let n: BTreeMap<&str, &str> = new.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut parts = Vec::new();
    for (p, h) in &n {
        match o.get(p) {
            None => parts.push(format!("{p} added")),
            Some(x) if x != h => parts.push(format!("{p} modified")),
            _ => {}
        }
    }
    for p in o.keys() {
        if !n.contains_key(p) {
            parts.push(format!("{p} deleted"));
        }
    }
    const MAX: usize = 5;
    let more = parts.len().saturating_sub(MAX);
    parts.truncate(MAX);
    let mut s = parts.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    if s.is_empty() {
        s = "content changed".into();
    }
    s
}

fn describe_change(old: &Origin, new: &Origin) -> String {
    match (old, new) {
        (Origin::Path { files: a, .. }, Origin::Path { files: b, .. })
        | (Origin::Dataset { files: a, .. }, Origin::Dataset { files: b, .. }) => {
            describe_files(a, b)
        }
        (Origin::Steps { outputs: a }, Origin::Steps { outputs: b }) => {
            let changed: Vec<String> = b
                .iter()
                .filter(|u| {
                    !a.iter()
                        .any(|o| o.step == u.step && o.output == u.output && o.hash == u.hash)
                })
                .map(|u| format!("`{}` produced new `{}`", u.step, u.output))
                .collect();
            if changed.is_empty() {
                "the set of upstream steps changed".into()
            } else {
                changed.join(", ")
            }
        }
        _ => "its source changed".into(),
    }
}
