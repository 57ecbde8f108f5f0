//! `demix data check`: what to check of a manifest's corpora, and what was
//! found. The engine resolves the datasets (files, format, split) into a
//! [`CheckSpec`]; demix-worker reads the documents (and tokenizes them with
//! a tokenizer when one is given) and answers with a [`CheckReport`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{SourceSpec, SplitSpec};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckSpec {
    pub datasets: Vec<DatasetCheck>,
    /// A tokenizer.json: token counts per split, bytes per token.
    pub tokenizer: Option<PathBuf>,
    /// Documents larger than this are counted as oversized.
    pub max_document_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetCheck {
    pub name: String,
    /// `train` then `validation`.
    pub splits: Vec<SplitSource>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitSource {
    pub split: String,
    pub files: Vec<PathBuf>,
    pub sources: Vec<SourceSpec>,
    /// Which documents of the files belong to this split.
    pub keep: SplitSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub datasets: Vec<DatasetReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    pub name: String,
    pub splits: Vec<SplitReport>,
    /// Documents whose text is in both splits (by a hash of the text).
    pub overlap: u64,
    /// Ids (in the validation split) of a few of them.
    pub overlap_examples: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub split: String,
    pub files: usize,
    pub documents: u64,
    /// UTF-8 bytes of the documents' text.
    pub bytes: u64,
    /// Documents with no text but whitespace.
    pub empty: u64,
    /// Documents over `max_document_bytes`.
    pub oversized: u64,
    /// The largest document: its id and bytes.
    pub largest: Option<(String, u64)>,
    /// Documents whose text another document of the split has already.
    pub duplicates: u64,
    /// Tokens under the tokenizer, when one was given.
    pub tokens: Option<u64>,
}

impl DatasetReport {
    /// What is wrong enough to fail the check: no documents in a split, or
    /// the same text in both splits.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.splits {
            if s.documents == 0 {
                out.push(format!("`{}` has no {} documents", self.name, s.split));
            }
        }
        if self.overlap > 0 {
            out.push(format!(
                "`{}`: {} document(s) of validation are also in train (e.g. {})",
                self.name,
                self.overlap,
                self.overlap_examples.join(", ")
            ));
        }
        out
    }
}
