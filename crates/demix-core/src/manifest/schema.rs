//! The manifest's JSON Schema, generated from the Rust types so it cannot drift.

use serde_json::{Value, json};

use super::{DatasetDecl, ExecutorDecl, Resources};
use crate::kind::{Registry, fields_schema};

fn root<T: schemars::JsonSchema>() -> Value {
    fields_schema::<T>()
}

/// Moves `definitions` of a generated root schema into `defs`, returning the rest.
fn take_defs(mut v: Value, defs: &mut serde_json::Map<String, Value>) -> Value {
    if let Some(Value::Object(d)) = v.as_object_mut().and_then(|o| o.remove("definitions")) {
        defs.extend(d);
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    v
}

/// The schema of a whole manifest whose steps are of `registry`'s kinds.
pub fn manifest_schema(registry: &Registry) -> Value {
    let mut defs = serde_json::Map::new();
    let dataset = take_defs(root::<DatasetDecl>(), &mut defs);
    let resources = take_defs(root::<Resources>(), &mut defs);
    defs.insert("Dataset".into(), dataset);
    defs.insert("Resources".into(), resources);
    let executor = take_defs(root::<ExecutorDecl>(), &mut defs);
    defs.insert("Executor".into(), executor);
    let common = json!({
        "id": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$", "description": "Unique step id; a fan-out step's nodes are `id[item]`." },
        "foreach": {
            "description": "Expand into one node per item: a list, `${params.NAME}` naming a list, or `{range: N}` for the items 0 to N-1. `${item}` is the item.",
            "anyOf": [
                { "type": "array", "items": { "type": ["string", "number", "boolean"] } },
                {
                    "type": "object",
                    "properties": { "range": { "anyOf": [ { "type": "integer", "minimum": 1 }, { "type": "string", "pattern": "^\\$\\{params\\.[A-Za-z0-9_.-]+\\}$" } ] } },
                    "required": ["range"],
                    "additionalProperties": false
                },
                { "type": "string", "pattern": "^\\$\\{params\\.[A-Za-z0-9_.-]+\\}$" }
            ]
        },
        "matrix": {
            "description": "Expand into one node per combination of the axes' values (the first axis outermost), like DVC's `matrix`: each axis is a list, `${params.NAME}` or `{range: N}`. A node's item is its values joined by `-` (e.g. `3-1`); `${item.AXIS}` is one axis's value.",
            "type": "object",
            "additionalProperties": {
                "anyOf": [
                    { "type": "array", "items": { "type": ["string", "number", "boolean"] } },
                    {
                        "type": "object",
                        "properties": { "range": { "anyOf": [ { "type": "integer", "minimum": 1 }, { "type": "string", "pattern": "^\\$\\{params\\.[A-Za-z0-9_.-]+\\}$" } ] } },
                        "required": ["range"],
                        "additionalProperties": false
                    },
                    { "type": "string", "pattern": "^\\$\\{params\\.[A-Za-z0-9_.-]+\\}$" }
                ]
            }
        },
        "resources": { "$ref": "#/definitions/Resources" },
        "after": {
            "description": "Steps this one waits for without reading their outputs.",
            "anyOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" } } ]
        },
        "description": { "type": "string" }
    });
    let mut variants = Vec::new();
    for k in registry.iter() {
        let fields = take_defs(k.schema(), &mut defs);
        let mut props = common.as_object().expect("object").clone();
        props.insert(
            "kind".into(),
            json!({ "const": k.name(), "description": k.summary() }),
        );
        if let Some(Value::Object(p)) = fields.get("properties") {
            props.extend(p.clone());
        }
        let mut required = vec![json!("id"), json!("kind")];
        if let Some(Value::Array(r)) = fields.get("required") {
            required.extend(r.iter().cloned());
        }
        variants.push(json!({
            "title": k.name(),
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false
        }));
    }
    let kinds: Vec<&str> = registry.names();
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://demix.dev/schemas/manifest.schema.json",
        "title": "demix manifest",
        "description": "A demix workflow: datasets, parameters and steps. See docs/manifests.md.",
        "type": "object",
        "properties": {
            "version": { "const": 1, "description": "Manifest format version." },
            "name": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$", "description": "Workflow name; the store keeps each workflow's state under it." },
            "description": { "type": "string" },
            "params": { "type": "object", "description": "Values steps refer to as `${params.NAME}`." },
            "datasets": { "type": "object", "additionalProperties": { "$ref": "#/definitions/Dataset" } },
            "executor": { "$ref": "#/definitions/Executor" },
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "kind"],
                    "properties": { "kind": { "enum": kinds } },
                    "oneOf": variants
                }
            }
        },
        "required": ["version", "name", "steps"],
        "additionalProperties": false,
        "definitions": Value::Object(defs)
    })
}

/// The schema as committed in `schemas/manifest.schema.json`.
pub fn manifest_schema_text(registry: &Registry) -> String {
    let mut s =
        serde_json::to_string_pretty(&manifest_schema(registry)).expect("schemas serialize");
    s.push('\n');
    s
}
