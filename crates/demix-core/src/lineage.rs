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

#[derive(Debug, Serialize)]
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

/// Finds the result a user means: a step id (of the given manifest), a path into the
/// store, or a prefix of a key or of an output, tree or file hash.
pub fn resolve(store: &Store, manifest: Option<&str>, what: &str) -> Result<ResultRecord, String> {
    if let Some(m) = manifest
        && let Some(r) = store.read_state(m, what)
    {
        return Ok(r);
    }
    let results = store.all_results();
    // A path: into a tree, or an object, or a workspace file identical to an output.
    let path = std::path::Path::new(what);
    if path.exists() {
        let abs = std::fs::canonicalize(path).map_err(|e| format!("{what}: {e}"))?;
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
            let h = crate::hash::hash_file(&abs, &|_, _| {}).map_err(|e| format!("{what}: {e}"))?;
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
        0 => Err(format!(
            "`{what}` is not a step, a path in the store, or a known hash"
        )),
        _ => Err(format!(
            "step `{what}` exists in several workflows ({}); pass the manifest",
            by_step
                .iter()
                .map(|r| r.manifest.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn pick(
    results: &[ResultRecord],
    f: impl Fn(&ResultRecord) -> bool,
    what: &str,
) -> Result<ResultRecord, String> {
    let mut hits: Vec<&ResultRecord> = results.iter().filter(|r| f(r)).collect();
    // The newest producer is the one the user most likely means.
    hits.sort_by_key(|r| std::cmp::Reverse(r.finished));
    hits.first()
        .map(|r| (*r).clone())
        .ok_or_else(|| format!("no result in the store matches `{what}`"))
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
        outputs: r
            .outputs
            .iter()
            .map(|(n, o)| OutputLine {
                name: n.clone(),
                path: store.tree_dir(&r.tree).join(&o.path).display().to_string(),
                hash: o.hash.clone(),
                size: o.size,
            })
            .collect(),
        started: r.started,
        duration_s: r.duration_s,
        host: r.host.clone(),
        engine_version: r.engine_version.clone(),
        inputs,
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// The tree as indented text.
pub fn render(l: &Lineage) -> String {
    let mut out = String::new();
    render_into(l, 0, &mut out);
    out
}

fn render_into(l: &Lineage, depth: usize, out: &mut String) {
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
                        Producer::Found(up) => render_into(up, depth + 2, out),
                        Producer::ShownAbove { step, key, .. } => {
                            out.push_str(&format!(
                                "{pad}    step {step} (key {}; shown above)\n",
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
