//! What a run produced, for the lines `demix run` ends with: the verdicts of
//! the report and validate steps it ran or found fresh.

use crate::exec::{Outcome, RunSummary};
use crate::graph::Graph;
use crate::store::Store;

/// The verdict sentences of every report or validate step the run completed,
/// in step order, each prefixed with its step id.
pub fn verdicts(graph: &Graph, store: &Store, run: &RunSummary) -> Vec<String> {
    let mut out = Vec::new();
    for s in &run.steps {
        if !matches!(s.outcome, Outcome::Ran | Outcome::Fresh) {
            continue;
        }
        let Some(node) = graph.nodes().find(|n| n.id == s.id) else {
            continue;
        };
        let output = match node.kind.name() {
            "report" => "summary",
            "validate" => "result",
            _ => continue,
        };
        let Some(r) = s.key.as_deref().and_then(|k| store.read_result(k)) else {
            continue;
        };
        let Some(o) = r.outputs.get(output) else {
            continue;
        };
        let path = store.tree_dir(&r.tree).join(&o.path);
        let Some(v) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        for sentence in v["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["sentence"].as_str())
        {
            out.push(format!("{}: {sentence}", s.id));
        }
    }
    out
}
