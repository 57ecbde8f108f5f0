//! Documents: where they are, how they are stored, which of them a split keeps,
//! and DeMix's component recipe of candidate and general data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rng::fnv1a64;

/// How a dataset's documents are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// From the extension (after stripping .gz/.zst): .jsonl/.json/.ndjson,
    /// .parquet, anything else is plain text.
    #[default]
    Auto,
    Text,
    Jsonl,
    Parquet,
}

/// One source of documents: a file, or a directory read recursively in
/// sorted order (hidden files skipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// JSON field / Parquet column with the text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// JSON field / Parquet column with the document id (optional in data).
    #[serde(default = "default_id_field")]
    pub id_field: String,
}

fn default_text_field() -> String {
    "text".into()
}
fn default_id_field() -> String {
    "id".into()
}

impl SourceSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: Format::Auto,
            text_field: default_text_field(),
            id_field: default_id_field(),
        }
    }
}

/// Which documents of a source to keep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Keep only this part; `all` keeps everything.
    #[serde(default)]
    pub part: SplitPart,
    /// Fraction of documents that go to validation.
    #[serde(default = "default_val_fraction")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_val_fraction() -> f64 {
    0.01
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SplitPart {
    #[default]
    All,
    Train,
    Validation,
}

/// Deterministic by-document split: hash of (seed, id) against the fraction.
/// Independent of document order and of the other documents.
pub fn is_validation(id: &str, fraction: f64, seed: u64) -> bool {
    let mut buf = seed.to_le_bytes().to_vec();
    buf.extend_from_slice(id.as_bytes());
    let h = fnv1a64(&buf);
    // Mix so the top bits depend on every input byte.
    let h = crate::rng::SplitMix64::new(h).next_u64();
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

impl SplitSpec {
    pub fn keeps(&self, id: &str) -> bool {
        match self.part {
            SplitPart::All => true,
            SplitPart::Validation => is_validation(id, self.validation_fraction, self.seed),
            SplitPart::Train => !is_validation(id, self.validation_fraction, self.seed),
        }
    }
}

/// DeMix's component recipe: candidate data mixed with general data at share
/// `beta` of the general data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentMix {
    pub candidate: String,
    pub general: String,
    /// Share of general data (paper: 0.5).
    #[serde(default = "default_beta")]
    pub beta: f64,
}

fn default_beta() -> f64 {
    0.5
}

/// Why a training mixture has no weights: the component recipe's `beta` or the
/// weights by dataset name are out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MixError {
    #[error("beta {0} not in [0, 1]")]
    Beta(f64),
    #[error("mixture weight of `{name}` must be a finite number >= 0, not {weight}")]
    Weight { name: String, weight: f64 },
    #[error("mixture weights sum to 0")]
    ZeroSum,
}

/// `mixture: uniform`: equal weights over a train step's `datasets`.
pub const UNIFORM_MIXTURE: &str = "uniform";

/// Why a mixture file holds no usable mixture.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickError {
    #[error("`pick: {pick}` but the file holds {len} mixtures")]
    OutOfRange { pick: u64, len: usize },
    #[error("a list of mixtures; say which with `pick`")]
    NeedsPick,
    #[error("`pick` needs a list of mixtures, and this is {0}")]
    NotAList(&'static str),
    #[error("not a mixture (an object of weights by dataset): {0}")]
    NotAMixture(String),
}

/// The mixture in a mixture file's JSON: an object of weights by dataset, or
/// with `pick` the N-th of a list (a `sample` step's file).
pub fn pick_mixture(
    v: serde_json::Value,
    pick: Option<u64>,
) -> Result<BTreeMap<String, f64>, PickError> {
    use serde_json::Value;
    let one = match (v, pick) {
        (Value::Array(list), Some(i)) => {
            let len = list.len();
            list.into_iter()
                .nth(i as usize)
                .ok_or(PickError::OutOfRange { pick: i, len })?
        }
        (Value::Array(_), None) => return Err(PickError::NeedsPick),
        (v, Some(_)) => {
            return Err(PickError::NotAList(if v.is_object() {
                "one mixture"
            } else {
                "not a mixture"
            }));
        }
        (v, None) => v,
    };
    serde_json::from_value(one).map_err(|e| PickError::NotAMixture(e.to_string()))
}

/// Weights (non-negative, with a positive sum) normalised to share
/// `1 - beta`, with `general` at share `beta`: how a mixture is trained in
/// the components' recipe.
pub fn with_general(w: BTreeMap<String, f64>, general: &str, beta: f64) -> BTreeMap<String, f64> {
    let total: f64 = w.values().sum();
    let mut w: BTreeMap<String, f64> = w
        .into_iter()
        .map(|(k, x)| (k, x * (1.0 - beta) / total))
        .collect();
    if beta > 0.0 {
        w.insert(general.to_string(), beta);
    }
    w
}

impl ComponentMix {
    /// `{candidate: math, general: sotu, beta: 0.25}` -> {math: 0.75, sotu: 0.25}.
    pub fn weights(&self) -> Result<BTreeMap<String, f64>, MixError> {
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(MixError::Beta(self.beta));
        }
        let mut m = BTreeMap::new();
        if self.candidate == self.general {
            m.insert(self.candidate.clone(), 1.0);
            return Ok(m);
        }
        if self.beta < 1.0 {
            m.insert(self.candidate.clone(), 1.0 - self.beta);
        }
        if self.beta > 0.0 {
            m.insert(self.general.clone(), self.beta);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mixture_files_pick_and_general() {
        let one = json!({"a": 3.0, "b": 1.0});
        let w = pick_mixture(one.clone(), None).unwrap();
        assert_eq!(w["a"], 3.0);
        let list = json!([{"a": 1.0}, {"b": 2.0}]);
        assert_eq!(pick_mixture(list.clone(), Some(1)).unwrap()["b"], 2.0);
        assert_eq!(
            pick_mixture(list.clone(), Some(2)),
            Err(PickError::OutOfRange { pick: 2, len: 2 })
        );
        assert_eq!(pick_mixture(list, None), Err(PickError::NeedsPick));
        assert_eq!(
            pick_mixture(one, Some(0)),
            Err(PickError::NotAList("one mixture"))
        );
        assert!(matches!(
            pick_mixture(json!({"a": "x"}), None),
            Err(PickError::NotAMixture(_))
        ));
        // {a: 3, b: 1} at 1 - beta = 0.5, then the general data at 0.5.
        let g = with_general(w, "g", 0.5);
        assert_eq!((g["a"], g["b"], g["g"]), (0.375, 0.125, 0.5));
    }
}
