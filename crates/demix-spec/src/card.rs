//! What a checkpoint folder holds besides its weights, for Hugging Face:
//! the special token ids of the tokenizer it was trained with (config.json
//! and `generation_config.json`, so `generate` knows where text ends) and a
//! model card (`README.md`) saying where the model came from.
//!
//! Everything here is a pure function of its arguments: a step's outputs are
//! content-hashed, so a rerun must write the same bytes (no times, no paths
//! of the machine it ran on).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::tokenizer::DEFAULT_EOS;

/// Hugging Face's generation defaults file in a checkpoint folder.
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The model card in a checkpoint folder.
pub const MODEL_CARD: &str = "README.md";

/// Names an end-of-text token goes by, in order of preference. A tokenizer
/// with none of them ends text with its lowest special token; one with no
/// special token at all has no end-of-text token.
pub const EOS_NAMES: [&str; 4] = [DEFAULT_EOS, "</s>", "<eos>", "<|im_end|>"];

/// The id a checkpoint's `bos_token_id` or `eos_token_id` gets from the
/// tokenizer it is saved with. `separator` is the tokenizer's end-of-text
/// token, which demix puts before every document of a token shard: the model
/// learns it both as what ends a text and as what starts one (as GPT-2's and
/// Qwen's `<|endoftext|>`), so it is the bos and the eos. An id already set
/// stays when it names a special token of this tokenizer (Qwen3's chat models
/// end at `<|im_end|>`); any other (another tokenizer's id, or none) becomes
/// the separator.
pub fn token_id_for(current: Option<i64>, separator: u32, is_special: &dyn Fn(i64) -> bool) -> i64 {
    match current {
        Some(id) if is_special(id) => id,
        _ => i64::from(separator),
    }
}

/// What a `tokenizer.json` says about its special tokens, read without the
/// tokenizers library (the ML library's tokenizer applies the same rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerSpecials {
    /// The end-of-text token, by [`EOS_NAMES`]; `None` when the tokenizer has
    /// no special token at all.
    pub eos: Option<u32>,
    /// Ids of the added tokens marked special.
    pub special: BTreeSet<u32>,
}

impl TokenizerSpecials {
    /// Reads a `tokenizer.json` document.
    pub fn from_json(tokenizer: &serde_json::Value) -> Self {
        let added: Vec<(&str, u32, bool)> = tokenizer["added_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some((
                            t["content"].as_str()?,
                            u32::try_from(t["id"].as_u64()?).ok()?,
                            t["special"].as_bool().unwrap_or(false),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let special: BTreeSet<u32> = added.iter().filter(|t| t.2).map(|t| t.1).collect();
        let id_of = |name: &str| {
            added.iter().find(|t| t.0 == name).map(|t| t.1).or_else(|| {
                tokenizer["model"]["vocab"][name]
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
            })
        };
        let eos = EOS_NAMES
            .iter()
            .find_map(|n| id_of(n))
            .or_else(|| special.first().copied());
        TokenizerSpecials { eos, special }
    }
}

/// `generation_config.json` for a model whose config says these ids: what
/// `generate` starts with, stops at, and pads with (the end-of-text token,
/// as `tokenizer_config.json` says of its pad token). Ids not known are left
/// out, so transformers keeps its defaults.
pub fn generation_config(bos: Option<i64>, eos: Option<i64>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(b) = bos {
        m.insert("bos_token_id".into(), b.into());
    }
    if let Some(e) = eos {
        m.insert("eos_token_id".into(), e.into());
        m.insert("pad_token_id".into(), e.into());
    }
    serde_json::Value::Object(m)
}

/// Who wrote a checkpoint: the step of a workflow, by its cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// The workflow's (manifest's) `name`.
    pub workflow: String,
    pub step: String,
    pub kind: String,
    /// The step's cache key: a hash of its kind, parameters and inputs.
    pub key: String,
    pub demix_version: String,
}

/// A model card: Hugging Face YAML front matter, then Markdown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCard {
    /// Tags besides `demix`.
    pub tags: Vec<String>,
    /// Dataset names (the workflow's, not Hub ids).
    pub datasets: Vec<String>,
    pub title: String,
    /// Paragraphs under the title.
    pub intro: Vec<String>,
    /// Sections: a heading, paragraphs, and a table (a header row and rows).
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    pub heading: String,
    pub text: Vec<String>,
    pub table: Vec<Vec<String>>,
}

impl Section {
    pub fn new(heading: &str) -> Self {
        Section {
            heading: heading.into(),
            ..Default::default()
        }
    }
    pub fn text(mut self, t: impl Into<String>) -> Self {
        self.text.push(t.into());
        self
    }
    /// The table's header row.
    pub fn header(mut self, cols: &[&str]) -> Self {
        self.table
            .insert(0, cols.iter().map(|c| c.to_string()).collect());
        self
    }
    pub fn row(mut self, cells: Vec<String>) -> Self {
        self.table.push(cells);
        self
    }
    /// A two-column row: a name and a value shown as code.
    pub fn pair(self, name: &str, value: impl std::fmt::Display) -> Self {
        self.row(vec![name.to_string(), code(&value.to_string())])
    }
}

/// `s` as a YAML scalar: a JSON string is a valid double-quoted YAML one.
pub fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `s` as inline code in a table cell: backticks long enough, pipes escaped.
pub fn code(s: &str) -> String {
    let mut fence = "`".to_string();
    while s.contains(fence.as_str()) {
        fence.push('`');
    }
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", s.replace('|', "\\|"))
}

/// Text for a Markdown line: no line breaks, pipes escaped (a table cell).
pub fn cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

impl ModelCard {
    /// The card's bytes: the same for the same card.
    pub fn render(&self) -> String {
        let mut s =
            String::from("---\nlibrary_name: transformers\npipeline_tag: text-generation\n");
        s.push_str("tags:\n- demix\n");
        for t in self.tags.iter().filter(|t| t.as_str() != "demix") {
            let _ = writeln!(s, "- {}", yaml_str(t));
        }
        if !self.datasets.is_empty() {
            s.push_str("datasets:\n");
            for d in &self.datasets {
                let _ = writeln!(s, "- {}", yaml_str(d));
            }
        }
        s.push_str("---\n\n");
        let _ = writeln!(s, "# {}\n", cell(&self.title));
        for p in &self.intro {
            let _ = writeln!(s, "{p}\n");
        }
        for sec in &self.sections {
            let _ = writeln!(s, "## {}\n", cell(&sec.heading));
            for p in &sec.text {
                let _ = writeln!(s, "{p}\n");
            }
            if let Some((head, rows)) = sec.table.split_first() {
                let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
                s.push_str(&line(head));
                s.push_str(&line(&vec!["---".to_string(); head.len()]));
                for r in rows {
                    s.push_str(&line(r));
                }
                s.push('\n');
            }
        }
        // One newline at the end.
        while s.ends_with("\n\n") {
            s.pop();
        }
        s
    }
}

/// The provenance section every demix model card ends with.
pub fn provenance_section(p: &Provenance) -> Section {
    Section::new("Provenance")
        .text(format!(
            "Written by [demix]({}) as an output of one step of a workflow. The step key is \
             a hash of the step's kind, its resolved parameters and the content of its inputs: \
             the same key, the same files.",
            env!("CARGO_PKG_REPOSITORY")
        ))
        .header(&["field", "value"])
        .pair("workflow", &p.workflow)
        .pair("step", &p.step)
        .pair("kind", &p.kind)
        .pair("step key", &p.key)
        .pair("demix version", &p.demix_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_tokenizer_unless_already_one_of_its_specials() {
        let special = |id: i64| id == 3 || id == 7;
        assert_eq!(token_id_for(None, 3, &special), 3);
        assert_eq!(token_id_for(Some(7), 3, &special), 7);
        // Another tokenizer's id (here out of the vocabulary) is replaced.
        assert_eq!(token_id_for(Some(151645), 3, &special), 3);
    }

    #[test]
    fn tokenizer_json_specials() {
        let t = serde_json::json!({
            "added_tokens": [
                {"id": 5, "content": "<pad>", "special": true},
                {"id": 9, "content": "</s>", "special": true},
                {"id": 11, "content": "word", "special": false}
            ],
            "model": {"vocab": {"a": 0}}
        });
        let s = TokenizerSpecials::from_json(&t);
        assert_eq!(s.eos, Some(9));
        assert_eq!(s.special, BTreeSet::from([5, 9]));
        // No known name: the lowest special token.
        let t = serde_json::json!({"added_tokens": [
            {"id": 8, "content": "<b>", "special": true},
            {"id": 4, "content": "<a>", "special": true}]});
        assert_eq!(TokenizerSpecials::from_json(&t).eos, Some(4));
        // A name in the model's vocabulary counts too; no specials, no eos.
        let t = serde_json::json!({"model": {"vocab": {"<|endoftext|>": 2}}});
        assert_eq!(TokenizerSpecials::from_json(&t).eos, Some(2));
        assert_eq!(
            TokenizerSpecials::from_json(&serde_json::json!({})).eos,
            None
        );
    }

    #[test]
    fn generation_config_says_the_ids() {
        assert_eq!(
            generation_config(Some(0), Some(0)).to_string(),
            r#"{"bos_token_id":0,"eos_token_id":0,"pad_token_id":0}"#
        );
        assert_eq!(generation_config(None, None).to_string(), "{}");
    }

    #[test]
    fn cards_render_front_matter_and_tables() {
        let card = ModelCard {
            tags: vec!["qwen3".into()],
            datasets: vec!["math".into(), "we\"ird: name".into()],
            title: "demo / base".into(),
            intro: vec!["A model.".into()],
            sections: vec![
                Section::new("Data")
                    .header(&["dataset", "weight"])
                    .row(vec![code("a|b"), "0.5".into()]),
                provenance_section(&Provenance {
                    workflow: "demo".into(),
                    step: "base".into(),
                    kind: "train".into(),
                    key: "abc".into(),
                    demix_version: "0.1.0".into(),
                }),
            ],
        };
        let s = card.render();
        assert!(s.starts_with(
            "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- demix\n- \"qwen3\"\ndatasets:\n- \"math\"\n- \"we\\\"ird: name\"\n---\n\n# demo / base\n\nA model.\n\n## Data\n\n| dataset | weight |\n| --- | --- |\n| `a\\|b` | 0.5 |\n"
        ), "{s}");
        assert!(s.contains("| step key | `abc` |"), "{s}");
        assert!(s.ends_with("| demix version | `0.1.0` |\n"), "{s}");
        assert_eq!(s, card.render());
        assert_eq!(code("a`b"), "``a`b``");
    }
}
