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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepSpec {
    pub engine_version: String,
    pub manifest: String,
    pub manifest_path: PathBuf,
    pub step: String,
    pub kind: String,
    pub key: String,
    pub record: KeyRecord,
    pub params: Value,
    pub inputs: BTreeMap<String, InputSpec>,
    pub outputs: BTreeMap<String, String>,
    /// The manifest's folder: relative paths in the step resolve against it.
    pub workdir: PathBuf,
    pub store: PathBuf,
    pub resources: Resources,
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
}

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_CANCELLED: i32 = 130;
