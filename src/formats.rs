//! File formats that several parts of demix write and read (the ML steps, the
//! report, external tools through command steps), free of libtorch.

use serde::{Deserialize, Serialize};

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
