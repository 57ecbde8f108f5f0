//! What a predictor cost in training tokens, read from the lineage of its
//! inputs instead of written by hand: a training's `tokens` (or the budget of
//! the `tokens_N` checkpoint used), an evaluation's model's, a search's
//! components' plus the proxies it trained.

use demix_core::key::KeyRecord;
use demix_core::store::{ResultRecord, Store};
use serde_json::Value;

/// Training tokens behind the input `key` of `record`: the sum over the
/// results it names. `None` when some part cannot be traced (a path that no
/// step made, a record gone from the store, a kind that does not say).
pub fn of_input(store: &Store, record: &KeyRecord, key: &str) -> Option<u64> {
    of_upstream(store, record, key, 0)
}

/// The sum over the results input `key` of `record` came from.
fn of_upstream(store: &Store, record: &KeyRecord, key: &str, depth: usize) -> Option<u64> {
    let outputs = record.upstream(key);
    if outputs.is_empty() {
        return None;
    }
    outputs
        .iter()
        .map(|u| of_output(store, &store.read_result(&u.key)?, &u.output, depth))
        .sum()
}

/// How deep the lineage is followed (an evaluation of a search's components'
/// models is three links).
const MAX_DEPTH: usize = 8;

fn of_output(store: &Store, r: &ResultRecord, output: &str, depth: usize) -> Option<u64> {
    if depth > MAX_DEPTH {
        return None;
    }
    match r.kind.as_str() {
        // A budget checkpoint saw its budget; the final one the step's tokens.
        "train" => output
            .strip_prefix("tokens_")
            .and_then(|n| n.parse().ok())
            .or_else(|| r.record.params.get("tokens").and_then(Value::as_u64)),
        // The model it evaluated.
        "evaluate" => inputs_named(store, r, "checkpoint", depth),
        // Its components' training, and the proxies it trained.
        "search" => {
            let trained = read_search(store, r)?;
            let components = match r.record.params.get("components") {
                Some(_) => inputs_named(store, r, "components", depth)?,
                None => 0,
            };
            Some(components + trained)
        }
        _ => None,
    }
}

/// The tokens behind the input the step's field `field` names.
fn inputs_named(store: &Store, r: &ResultRecord, field: &str, depth: usize) -> Option<u64> {
    let reference = r.record.params.get(field)?.as_str()?;
    of_upstream(store, &r.record, reference, depth + 1)
}

/// A search's `cost.tokens_trained` (0 for merged proxies).
fn read_search(store: &Store, r: &ResultRecord) -> Option<u64> {
    let out = r.outputs.get("result")?;
    let bytes = std::fs::read(store.tree_dir(&r.tree).join(&out.path)).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(v["cost"]["tokens_trained"].as_u64().unwrap_or(0))
}
