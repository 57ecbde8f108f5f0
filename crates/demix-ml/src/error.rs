//! One error type for the whole library; every variant that comes from a file
//! names the file, because the engine shows these to users verbatim.

use std::path::PathBuf;

pub type Result<T, E = MlError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    BadLine {
        path: PathBuf,
        line: u64,
        msg: String,
    },
    #[error("{path}: invalid JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path}: parquet: {msg}")]
    Parquet { path: PathBuf, msg: String },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    TokenizerOp(String),
    #[error("{path}: bad checkpoint: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: bad shard: {msg}")]
    Shard { path: PathBuf, msg: String },
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("state dict: {0}")]
    StateDict(String),
    #[error("invalid device '{0}': expected auto, cpu, cuda or cuda:N")]
    Device(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    NonFinite(String),
    #[error("non-finite loss at step {step}")]
    NonFiniteLoss { step: u64 },
    #[error("cancelled")]
    Cancelled,
}

impl From<demix_spec::model::ConfigError> for MlError {
    fn from(e: demix_spec::model::ConfigError) -> Self {
        MlError::Config(e.0)
    }
}

impl From<demix_mix::checkpoint::CheckpointError> for MlError {
    fn from(e: demix_mix::checkpoint::CheckpointError) -> Self {
        use demix_mix::checkpoint::{CheckpointError as E, INDEX_FILE, MODEL_FILE};
        // Each variant names its file; keep it as the path, not in the message.
        let (path, msg) = match e {
            E::Io { path, source } => return MlError::Io { path, source },
            E::NotACheckpoint { path } => (path, format!("neither {MODEL_FILE} nor {INDEX_FILE}")),
            E::Header { path, reason } => (path, format!("bad safetensors header: {reason}")),
            E::Index { path, reason } => (path, format!("bad shard index: {reason}")),
            E::Write { path, reason } => (path, reason),
        };
        MlError::Checkpoint { path, msg }
    }
}

impl MlError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MlError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl ToString) -> Self {
        MlError::Checkpoint {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

/// `result.with_path(p)?` turns an io::Error into one that names the file.
pub trait IoContext<T> {
    fn with_path(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn with_path(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| MlError::io(path, e))
    }
}
