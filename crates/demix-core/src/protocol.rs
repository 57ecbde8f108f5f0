//! The serialized form of one step run, and the completion record it leaves.
//!
//! A spec holds everything a step needs, with every input resolved to paths, so any
//! process on any machine that sees the store can run it: that is how the local
//! executor runs steps in child processes and how a cluster executor submits them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::KeyRecord;
use crate::manifest::Resources;
use crate::store::OutputRecord;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputSpec {
    pub paths: Vec<PathBuf>,
    /// For a dataset: how to read its documents.
    #[serde(default)]
    pub dataset: Option<DatasetInput>,
}

/// A dataset split as a step reads it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatasetInput {
    pub name: String,
    pub split: crate::manifest::template::Split,
    pub format: crate::manifest::Format,
    pub field: String,
    /// The split is done by document at this fraction, because the dataset has no
    /// validation files; `paths` are then all its files.
    pub split_fraction: Option<f64>,
}

impl DatasetInput {
    pub fn of(
        m: &crate::manifest::Manifest,
        name: &str,
        split: crate::manifest::template::Split,
    ) -> Option<DatasetInput> {
        let d = m.datasets.get(name)?;
        Some(DatasetInput {
            name: name.to_string(),
            split,
            format: d.format,
            field: d.field.clone(),
            split_fraction: d
                .validation
                .is_empty()
                .then(|| d.validation_fraction.unwrap_or(0.1)),
        })
    }

    /// How to read this split's documents from its files `paths`: each file
    /// as the dataset's format and field say, and which documents the split
    /// keeps (all of them, or its share of a by-document split).
    pub fn sources(
        &self,
        paths: &[PathBuf],
    ) -> (
        Vec<demix_spec::data::SourceSpec>,
        demix_spec::data::SplitSpec,
    ) {
        use demix_spec::data::{SourceSpec, SplitPart, SplitSpec};
        let srcs = paths
            .iter()
            .map(|p| {
                let mut s = SourceSpec::new(p);
                s.format = self.format;
                s.text_field = self.field.clone();
                s
            })
            .collect();
        let split = match self.split_fraction {
            // No validation files: split this dataset's files by document.
            Some(f) => SplitSpec {
                part: match self.split {
                    crate::manifest::template::Split::Train => SplitPart::Train,
                    crate::manifest::template::Split::Validation => SplitPart::Validation,
                },
                validation_fraction: f,
                seed: 0,
            },
            None => SplitSpec {
                part: SplitPart::All,
                validation_fraction: 0.0,
                seed: 0,
            },
        };
        (srcs, split)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepSpec {
    pub engine_version: String,
    pub manifest: String,
    pub manifest_path: PathBuf,
    pub step: String,
    pub kind: String,
    /// Which binary runs it (the Slurm executor writes it into the job).
    #[serde(default)]
    pub runner: crate::kind::Runner,
    /// Data-parallel processes per node; more than 1 starts it under MPI.
    #[serde(default = "one")]
    pub ranks: u32,
    pub key: String,
    pub record: KeyRecord,
    pub params: Value,
    pub inputs: BTreeMap<String, InputSpec>,
    pub outputs: BTreeMap<String, String>,
    /// The manifest's folder: relative paths in the step resolve against it.
    pub workdir: PathBuf,
    pub store: PathBuf,
    pub resources: Resources,
    /// `--force`: run even when the store already holds this key's result.
    #[serde(default)]
    pub force: bool,
}

/// What a step run left behind: written by the process that ran it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Completion {
    pub step: String,
    pub key: String,
    pub ok: bool,
    /// Another process had already produced the result.
    pub cached: bool,
    pub cancelled: bool,
    pub exit_code: i32,
    pub error: Option<String>,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub duration_s: f64,
    pub host: String,
    pub log: PathBuf,
}

impl Completion {
    pub fn read(path: &Path) -> Option<Completion> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// A failed step's record, before anything is known of why: what a
    /// watchdog writes if the step never gets further.
    pub fn failed(step: &str, key: &str, host: String, log: PathBuf) -> Completion {
        Completion {
            step: step.to_string(),
            key: key.to_string(),
            ok: false,
            cached: false,
            cancelled: false,
            exit_code: EXIT_FAILED,
            error: None,
            outputs: BTreeMap::new(),
            duration_s: 0.0,
            host,
            log,
        }
    }

    /// A step cancelled before it ran, with why.
    pub fn cancelled(step: &str, key: &str, error: &str, host: String, log: PathBuf) -> Completion {
        Completion {
            cancelled: true,
            exit_code: EXIT_CANCELLED,
            error: Some(error.to_string()),
            ..Completion::failed(step, key, host, log)
        }
    }
}

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_CANCELLED: i32 = 130;

fn one() -> u32 {
    1
}
