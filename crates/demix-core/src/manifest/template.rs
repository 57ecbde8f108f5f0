//! `${...}` templates inside manifest strings.
//!
//! Plan-time references (`params.*`, `item`) are substituted while a manifest is
//! expanded; graph references (`steps.*`, `datasets.*`) become edges; run-time
//! references (`inputs.*`, `outputs.*`, `out`) are filled in by the step that runs.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Lit(String),
    Ref(Ref),
}

/// Which expanded node(s) of a fan-out step a reference takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Select {
    /// The step has no fan-out.
    One,
    /// `step[key]`
    Key(String),
    /// `step[*]`: every expanded node, in manifest order.
    All,
    /// `step[final-*]`: the nodes whose item matches a glob, in manifest order.
    Glob(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Ref {
    Param(Vec<String>),
    Item,
    /// `${item.AXIS}`: one axis's value in a `matrix` step.
    ItemField(String),
    Dataset {
        name: String,
        split: Split,
    },
    Step {
        id: String,
        select: Select,
        output: String,
    },
    Input(String),
    Output(String),
    OutDir,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Param(p) => write!(f, "${{params.{}}}", p.join(".")),
            Ref::Item => write!(f, "${{item}}"),
            Ref::ItemField(a) => write!(f, "${{item.{a}}}"),
            Ref::Dataset {
                name,
                split: Split::Train,
            } => write!(f, "${{datasets.{name}}}"),
            Ref::Dataset {
                name,
                split: Split::Validation,
            } => {
                write!(f, "${{datasets.{name}.validation}}")
            }
            Ref::Step { id, select, output } => match select {
                Select::One => write!(f, "${{steps.{id}.{output}}}"),
                Select::Key(k) => write!(f, "${{steps.{id}[{k}].{output}}}"),
                Select::All => write!(f, "${{steps.{id}[*].{output}}}"),
                Select::Glob(g) => write!(f, "${{steps.{id}[{g}].{output}}}"),
            },
            Ref::Input(n) => write!(f, "${{inputs.{n}}}"),
            Ref::Output(n) => write!(f, "${{outputs.{n}}}"),
            Ref::OutDir => write!(f, "${{out}}"),
        }
    }
}

/// Why a string is not a valid template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `${` without its `}`; holds the whole string.
    #[error("unclosed `${{` in {0:?}")]
    Unclosed(String),
    /// A `${...}` whose body is not a reference.
    #[error("bad reference `${{{expr}}}`: {why}")]
    BadRef { expr: String, why: String },
}

/// Splits a string into literal text and references. `$${` is a literal `${`.
pub fn parse(s: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            lit.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(s.to_string()))?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Ref(parse_ref(body[..end].trim())?));
            rest = &body[end + 1..];
        } else {
            lit.push('$');
            rest = &after[1..];
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// True when the string holds any `${`.
pub fn has_refs(s: &str) -> bool {
    s.contains("${")
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_ref(expr: &str) -> Result<Ref, TemplateError> {
    let bad = |why: &str| TemplateError::BadRef {
        expr: expr.to_string(),
        why: why.to_string(),
    };
    if expr == "item" {
        return Ok(Ref::Item);
    }
    if expr == "out" {
        return Ok(Ref::OutDir);
    }
    let (head, tail) = expr.split_once('.').unwrap_or((expr, ""));
    match head {
        "params" => {
            let path: Vec<String> = tail.split('.').map(str::to_string).collect();
            if path.iter().any(|p| !is_name(p)) {
                return Err(bad("expected `params.NAME`"));
            }
            Ok(Ref::Param(path))
        }
        "datasets" => {
            let mut parts = tail.split('.');
            let name = parts.next().unwrap_or_default();
            if !is_name(name) && name != "$item" {
                return Err(bad(
                    "expected `datasets.NAME` or `datasets.NAME.validation`",
                ));
            }
            let split = match parts.next() {
                None | Some("train") => Split::Train,
                Some("validation") => Split::Validation,
                Some(other) => {
                    return Err(bad(&format!(
                        "unknown split `{other}` (expected `train` or `validation`)"
                    )));
                }
            };
            if parts.next().is_some() {
                return Err(bad("too many parts"));
            }
            Ok(Ref::Dataset {
                name: name.to_string(),
                split,
            })
        }
        "steps" => {
            let (id_sel, output) = tail
                .rsplit_once('.')
                .ok_or_else(|| bad("expected `steps.ID.OUTPUT` or `steps.ID[KEY].OUTPUT`"))?;
            let (id, select) = match id_sel.split_once('[') {
                Some((id, key)) => {
                    let key = key.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?;
                    let sel = if key == "*" {
                        Select::All
                    } else if key.contains(['*', '?'])
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.:+@*?$".contains(c))
                    {
                        Select::Glob(key.to_string())
                    } else if is_name(key) || is_item_key(&key.replace("$item", "x")) {
                        Select::Key(key.to_string())
                    } else {
                        return Err(bad(
                            "expected `[KEY]`, `[$item]`, `[*]` or a glob such as `[final-*]`",
                        ));
                    };
                    (id, sel)
                }
                None => (id_sel, Select::One),
            };
            if !(is_name(id) || id == "$item") || !is_name(output) {
                return Err(bad("expected `steps.ID.OUTPUT`"));
            }
            Ok(Ref::Step {
                id: id.to_string(),
                select,
                output: output.to_string(),
            })
        }
        "item" if is_name(tail) => Ok(Ref::ItemField(tail.to_string())),
        "item" => Err(bad("expected `item` or `item.AXIS`")),
        "inputs" if is_name(tail) => Ok(Ref::Input(tail.to_string())),
        "outputs" if is_name(tail) => Ok(Ref::Output(tail.to_string())),
        "inputs" | "outputs" => Err(bad(&format!("expected `{head}.NAME`"))),
        _ => Err(bad(
            "expected one of params.*, item, datasets.*, steps.*, inputs.*, outputs.*, out",
        )),
    }
}

fn is_item_key(k: &str) -> bool {
    k.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:+@".contains(c))
        && !k.is_empty()
}

/// Fan-out items are used in ids and paths, so they must be plain names.
pub fn valid_item(s: &str) -> bool {
    is_item_key(s) && !s.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pieces() {
        let p = parse("a ${params.x} $${lit} ${steps.s[$item].out}").unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[1], Piece::Ref(Ref::Param(vec!["x".into()])));
        assert_eq!(p[2], Piece::Lit(" ${lit} ".into()));
        assert_eq!(
            p[3],
            Piece::Ref(Ref::Step {
                id: "s".into(),
                select: Select::Key("$item".into()),
                output: "out".into()
            })
        );
        assert!(parse("${nope}").is_err());
        assert!(parse("${params.x").is_err());
    }

    #[test]
    fn errors_read_as_before() {
        assert_eq!(
            parse("a ${params.x").unwrap_err().to_string(),
            "unclosed `${` in \"a ${params.x\""
        );
        assert_eq!(
            parse("${steps.a[b.out}").unwrap_err().to_string(),
            "bad reference `${steps.a[b.out}`: unclosed `[`"
        );
    }
}
