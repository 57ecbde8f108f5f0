//! What several kinds' checks share: where a field is, references or paths,
//! dataset names read from a list.

use marked_yaml::{Node, Span, Spanned};

use demix_core::manifest::Diags;
use demix_core::manifest::template::{self, Piece, Ref, Split};

/// Where `key` is written in a step's body (the body itself when absent).
pub fn span_of(body: &Node, key: &str) -> Span {
    body.as_mapping()
        .and_then(|m| m.get_node(key))
        .map(|n| *n.span())
        .unwrap_or(*body.span())
}

/// Where `key` of the mapping `field` is written (else the field).
pub fn entry_span(body: &Node, field: &str, key: &str) -> Span {
    body.as_mapping()
        .and_then(|m| m.get_mapping(field))
        .and_then(|m| m.get_node(key))
        .map(|n| *n.span())
        .unwrap_or(span_of(body, field))
}

/// A field that must hold exactly one `${steps.ID.OUTPUT}` reference, or a
/// path (added to `paths`, relative to the manifest).
pub fn check_ref_or_path(
    d: &mut Diags,
    body: &Node,
    key: &str,
    v: &str,
    paths: &mut Vec<Spanned<String>>,
) {
    let span = span_of(body, key);
    match template::parse(v) {
        Ok(p) => match p.as_slice() {
            [Piece::Ref(Ref::Step { .. })] => {}
            [Piece::Lit(_)] => paths.push(Spanned::new(span, v.to_string())),
            _ => d.error(
                &span,
                format!("`{key}` takes one `${{steps.ID.OUTPUT}}` reference or a path"),
                key,
            ),
        },
        Err(e) => d.error(&span, e.to_string(), key),
    }
}

/// Checks that `v` is one step reference, fanned out (`[*]`) or not as `all` says.
pub fn check_step_ref(d: &mut Diags, sp: Span, key: &str, v: &str, all: bool) {
    let ok = match template::parse(v).as_deref() {
        Ok([Piece::Ref(Ref::Step { select, .. })]) => (*select == template::Select::All) == all,
        _ => false,
    };
    if !ok {
        let want = if all {
            "one `${steps.ID[*].OUTPUT}` reference (every node of a fan-out, in order)"
        } else {
            "one `${steps.ID.OUTPUT}` reference"
        };
        d.error(&sp, format!("`{key}` takes {want}"), key);
    }
}

/// Checks that `v` is one step reference, fanned out or not.
pub fn check_any_step_ref(d: &mut Diags, sp: Span, key: &str, v: &str) {
    if !matches!(
        template::parse(v).as_deref(),
        Ok([Piece::Ref(Ref::Step { .. })])
    ) {
        d.error(
            &sp,
            format!(
                "`{key}` takes one `${{steps.ID.OUTPUT}}` or `${{steps.ID[*].OUTPUT}}` reference"
            ),
            key,
        );
    }
}

/// `v` must be more than 0.
pub fn positive(d: &mut Diags, body: &Node, key: &str, v: f64, what: &str) {
    if v.is_nan() || v <= 0.0 {
        d.error(
            &span_of(body, key),
            format!("`{key}` must be more than 0 ({what}), not {v}"),
            key,
        );
    }
}

/// The names of a list field as datasets a step reads, each at its place.
pub fn dataset_names(
    body: &Node,
    key: &str,
    names: &[String],
    split: Split,
) -> Vec<(Spanned<String>, Split)> {
    let spans: Vec<Span> = body
        .as_mapping()
        .and_then(|m| m.get_sequence(key))
        .map(|s| s.iter().map(|n| *n.span()).collect())
        .unwrap_or_default();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                Spanned::new(
                    spans.get(i).copied().unwrap_or(span_of(body, key)),
                    n.clone(),
                ),
                split,
            )
        })
        .collect()
}

/// Reports each message of a config's own check at the step.
pub fn report_problems(d: &mut Diags, body: &Node, problems: Vec<String>) {
    for p in problems {
        d.error(body.span(), p, "step");
    }
}
