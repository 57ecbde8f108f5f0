//! Progress reports passed to the engine's callback.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    /// What is running, e.g. "tokenize", "train", "evaluate".
    pub stage: &'static str,
    pub current: u64,
    /// 0 when unknown.
    pub total: u64,
    /// Unit of current/total, e.g. "tokens", "documents", "steps".
    pub unit: &'static str,
    /// Free text such as "loss 3.21, 2,950 tokens/s".
    pub message: String,
}

/// A callback that ignores progress, for callers that do not care.
pub fn no_progress(_: &Progress) {}
