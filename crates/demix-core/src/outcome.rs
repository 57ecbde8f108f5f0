//! What a run produced, for the lines `demix run` ends with: the outputs of the
//! targets it ran, the mixtures chosen, the verdicts of the report and validate
//! steps, and where the reports are.

pub use demix_fs::human_duration;
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::exec::{Outcome, RunSummary};
use crate::graph::{Graph, NodeId};
use crate::store::{ResultRecord, Store};

/// One output of a target step.
#[derive(Clone, Debug, Serialize)]
pub struct Produced {
    pub step: String,
    pub output: String,
    pub path: PathBuf,
}

/// A mixture a step chose: its `mixture` output, dataset name -> weight.
#[derive(Clone, Debug, Serialize)]
pub struct Mixture {
    pub step: String,
    pub weights: BTreeMap<String, f64>,
    pub path: PathBuf,
}

/// A verdict sentence of a report or validate step.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub step: String,
    pub sentence: String,
}

/// A report a `report` step wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub step: String,
    pub html: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
}

/// Everything a run ends with.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Closing {
    pub outputs: Vec<Produced>,
    pub mixtures: Vec<Mixture>,
    pub verdicts: Vec<Verdict>,
    pub reports: Vec<Report>,
}

/// The steps of the run that completed (ran or were fresh), in run order, with
/// their node and result record.
fn completed<'a>(
    graph: &'a Graph,
    store: &'a Store,
    run: &'a RunSummary,
) -> impl Iterator<Item = (NodeId, ResultRecord)> + 'a {
    run.steps.iter().filter_map(move |s| {
        if !matches!(s.outcome, Outcome::Ran | Outcome::Fresh) {
            return None;
        }
        let n = graph.find(&s.id)?;
        let r = s.key.as_deref().and_then(|k| store.read_result(k))?;
        Some((n, r))
    })
}

fn read_json(path: &std::path::Path) -> Option<serde_json::Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// What the run produced. `targets` are the steps asked for (`--target`); with
/// none, the steps nothing else in the workflow depends on.
pub fn closing(graph: &Graph, store: &Store, run: &RunSummary, targets: &[NodeId]) -> Closing {
    let wanted: Vec<NodeId> = if targets.is_empty() {
        graph
            .ids()
            .filter(|&i| graph.dependents(i).is_empty())
            .collect()
    } else {
        targets.to_vec()
    };
    let mut c = Closing::default();
    for (n, r) in completed(graph, store, run) {
        let node = &graph[n];
        let kind = node.kind.name();
        let dir = store.tree_dir(&r.tree);
        let out = |name: &str| r.outputs.get(name).map(|o| dir.join(&o.path));
        if kind == "report" {
            c.reports.push(Report {
                step: r.step.clone(),
                html: out("html"),
                markdown: out("markdown"),
            });
        } else if wanted.contains(&n) {
            for (name, o) in &r.outputs {
                c.outputs.push(Produced {
                    step: r.step.clone(),
                    output: name.clone(),
                    path: dir.join(&o.path),
                });
            }
        }
        // A `search` step's chosen mixture, or any step's `mixture` output that
        // is a JSON object of weights (an external search in a command step).
        if let Some(p) = out("mixture")
            && let Some(serde_json::Value::Object(m)) = read_json(&p)
            && !m.is_empty()
            && m.values().all(|v| v.is_number())
        {
            let weights = m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            c.mixtures.push(Mixture {
                step: r.step.clone(),
                weights,
                path: p,
            });
        }
        let verdicts = match kind {
            "report" => out("summary"),
            "validate" => out("result"),
            _ => None,
        };
        if let Some(v) = verdicts.as_deref().and_then(read_json) {
            for sentence in v["verdicts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["sentence"].as_str())
            {
                c.verdicts.push(Verdict {
                    step: r.step.clone(),
                    sentence: sentence.to_string(),
                });
            }
        }
    }
    c
}
