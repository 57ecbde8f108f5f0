//! How a model is evaluated, as the `evaluate` step, the searches and the ML
//! library all say it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::train::DeviceChoice;

/// Evaluation settings. `max_tokens` and `seq_len` are left unset in a
/// manifest to take the step kind's default, which its plan writes in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EvalConfig {
    /// Tokens scored per dataset: a seeded sample of windows spread over the
    /// whole validation split (all of it when the split is smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Seeds the sample of windows (default 0). Models evaluated with the same
    /// sample seed, `max_tokens` and `seq_len` are scored on the same text.
    #[serde(default)]
    pub sample_seed: u64,
    /// Window length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<u32>,
    /// Windows per forward pass.
    #[serde(default = "d_batch")]
    pub batch_size: u32,
    /// Examples per task (0: all).
    #[serde(default)]
    pub max_examples: u32,
    /// Tokens a question-answer task may generate.
    #[serde(default = "d_new")]
    pub max_new_tokens: u32,
    #[serde(default)]
    pub device: DeviceChoice,
    /// CPU threads (0: libtorch's default).
    #[serde(default)]
    pub threads: u32,
    /// bf16 compute on CUDA; f32 otherwise.
    #[serde(default)]
    pub bf16: bool,
}

fn d_batch() -> u32 {
    8
}
fn d_new() -> u32 {
    32
}

/// The `evaluate` kind's defaults: a large sample of long windows.
pub const EVALUATE_MAX_TOKENS: u64 = 1 << 20;
pub const EVALUATE_SEQ_LEN: u32 = 512;
/// A search's and a validation's defaults: many proxies, each scored on less.
pub const PROXY_MAX_TOKENS: u64 = 16_384;
pub const PROXY_SEQ_LEN: u32 = 256;

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_tokens: None,
            sample_seed: 0,
            seq_len: None,
            batch_size: d_batch(),
            max_examples: 0,
            max_new_tokens: d_new(),
            device: DeviceChoice::Auto,
            threads: 0,
            bf16: false,
        }
    }
}

impl EvalConfig {
    /// Fills what was left unset with a kind's defaults.
    pub fn with_defaults(mut self, max_tokens: u64, seq_len: u32) -> Self {
        self.max_tokens.get_or_insert(max_tokens);
        self.seq_len.get_or_insert(seq_len);
        self
    }

    pub fn max_tokens(&self) -> u64 {
        self.max_tokens.unwrap_or(EVALUATE_MAX_TOKENS)
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len.unwrap_or(EVALUATE_SEQ_LEN) as usize
    }

    /// What is wrong with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_tokens == Some(0) || self.seq_len == Some(0) || self.batch_size == 0 {
            out.push("`max_tokens`, `seq_len` and `batch_size` must be more than 0".into());
        }
        out
    }
}

/// The version of the metrics format below (`metrics.json`).
pub const METRICS_FORMAT: &str = "demix-metrics-v1";

fn metrics_format() -> String {
    METRICS_FORMAT.into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMetrics {
    /// Predicted tokens.
    pub tokens: u64,
    /// Documents the sampled windows touch.
    pub documents: u64,
    /// UTF-8 bytes of the scored text (pro rata for partly scored documents).
    pub bytes: u64,
    /// Mean NLL per token (nats).
    pub loss: f64,
    /// Standard error of `loss` over the sampled windows (a ratio estimator's,
    /// windows as the units): what the sample alone leaves uncertain.
    #[serde(default)]
    pub loss_se: Option<f64>,
    pub perplexity: f64,
    pub bits_per_byte: f64,
    /// Which text was scored.
    #[serde(default)]
    pub sample: Option<EvalSample>,
    /// Summed NLL and predicted tokens per window, in `sample.windows` order:
    /// what paired comparisons between models need. Not written out.
    #[serde(skip)]
    pub per_window: Vec<(f64, u64)>,
}

/// The windows of a shard that an evaluation scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSample {
    pub seed: u64,
    pub seq_len: usize,
    /// Windows scored, of `of_windows` in the shard (stratified: one drawn from
    /// each of `windows` equal stretches of the shard).
    pub windows: u64,
    pub of_windows: u64,
    /// Position (0-based, in reading order) of every document a scored window
    /// touches.
    pub documents: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// "multiple_choice" or "qa".
    pub kind: String,
    pub examples: u64,
    /// Multiple choice: argmax of summed log-likelihood.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Multiple choice: argmax of log-likelihood per UTF-8 byte of the choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_norm: Option<f64>,
    /// Multiple choice: the accuracy of guessing, the mean over examples of
    /// 1 / (number of choices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance: Option<f64>,
    /// QA: mean over examples of the answer's mean token log-likelihood.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_logprob: Option<f64>,
    /// QA: greedy generation equals the answer (both stripped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// [`METRICS_FORMAT`]: what a reader of this file may rely on.
    #[serde(default = "metrics_format")]
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    pub datasets: BTreeMap<String, DatasetMetrics>,
    pub tasks: BTreeMap<String, TaskMetrics>,
    /// Mean of the datasets' losses (the usual small-model mixture signal).
    pub mean_loss: Option<f64>,
}
