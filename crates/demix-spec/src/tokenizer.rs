//! The tokenizer: how it is trained, as the manifest's `tokenizer` step and
//! the ML library both say it, and what it was trained on.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The end-of-text token of the tokenizers demix trains.
pub const DEFAULT_EOS: &str = "<|endoftext|>";

/// How a byte-level BPE is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenizerConfig {
    /// Vocabulary size, including the 256 byte tokens and the special tokens.
    #[serde(default = "default_vocab")]
    pub vocab_size: u32,
    /// Special tokens; the first separates documents.
    #[serde(default = "default_specials")]
    pub special_tokens: Vec<String>,
    #[serde(default = "default_min_freq")]
    pub min_frequency: u64,
    /// Learn from at most this many bytes of text (0 = all of every dataset),
    /// shared out over the datasets by their shares: each dataset's documents
    /// are sampled from all over it, and the one that crosses its share is cut.
    #[serde(default)]
    pub max_bytes: u64,
    /// Seeds which documents are sampled.
    #[serde(default)]
    pub seed: u64,
}

fn default_vocab() -> u32 {
    8192
}
fn default_specials() -> Vec<String> {
    vec![DEFAULT_EOS.into()]
}
fn default_min_freq() -> u64 {
    2
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            vocab_size: default_vocab(),
            special_tokens: default_specials(),
            min_frequency: default_min_freq(),
            max_bytes: 0,
            seed: 0,
        }
    }
}

/// What the tokenizer read from one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSample {
    pub name: String,
    /// The configured share, normalised over the datasets.
    pub share: f64,
    /// Bytes this dataset was allotted (its share, plus what smaller datasets
    /// could not use); `null` without a budget.
    pub budget: Option<u64>,
    pub documents_available: u64,
    pub bytes_available: u64,
    pub documents_used: u64,
    pub bytes_used: u64,
    /// Documents cut to fit the budget (at most one per dataset).
    pub documents_cut: u64,
}

/// The sample a tokenizer was trained on (`tokenizer-sample.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSample {
    /// The byte budget (0: every document of every dataset).
    pub max_bytes: u64,
    pub seed: u64,
    pub datasets: Vec<DatasetSample>,
}
