//! How a model is trained, as the manifest's `train` step and the ML library
//! both say it: one type, read from the manifest and handed to the trainer.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::data::{ComponentMix, MixError};

/// Where computation runs: `auto` (the first GPU if there is one, else the
/// CPU), `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(u32),
}

/// A device that is not `auto`, `cpu`, `cuda` or `cuda:N`; holds it as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}` (auto, cpu, cuda or cuda:N)")]
pub struct UnknownDevice(pub String);

impl FromStr for DeviceChoice {
    type Err = UnknownDevice;
    fn from_str(s: &str) -> Result<Self, UnknownDevice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            t => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| UnknownDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DeviceChoice {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Device".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(auto|cpu|cuda|cuda:[0-9]+)$",
            "description": "`auto` (the first GPU if there is one), `cpu`, `cuda` or `cuda:N`."
        })
    }
}

/// Compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 compute on CUDA, f32 on CPU.
    #[default]
    Auto,
    F32,
    Bf16,
}

/// The trajectory and where it runs: budget, batches, AdamW, the warmup and
/// cosine schedule, checkpoints, device. Defaults are the paper's optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainConfig {
    /// Token budget (steps of batch_size x seq_len tokens).
    pub tokens: u64,
    pub batch_size: u32,
    pub seq_len: u32,
    /// Rows per forward pass, accumulating gradients up to `batch_size` (the
    /// paper's 512 x 8192-token batch does not fit one GPU at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<u32>,
    /// Seeds the initial weights (a fresh model) and the order of batches.
    #[serde(default)]
    pub seed: u64,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Cosine decay floor as a share of the peak (paper: 0.2).
    #[serde(default = "d_min_lr")]
    pub min_lr_ratio: f64,
    /// Warmup in tokens; when absent, `warmup_fraction` of the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_tokens: Option<u64>,
    #[serde(default = "d_warm_frac")]
    pub warmup_fraction: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Global gradient-norm clip (0 disables).
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    /// Token budgets at which to also save a checkpoint; each is an output
    /// `tokens_<budget>` other steps can reference.
    #[serde(default)]
    pub checkpoints: Vec<u64>,
    #[serde(default)]
    pub device: DeviceChoice,
    /// CPU threads (0: libtorch's default).
    #[serde(default)]
    pub threads: u32,
    #[serde(default)]
    pub precision: Precision,
    /// Save the resumable state every N optimizer steps (and on cancellation).
    #[serde(default = "d_state_every")]
    pub state_every_steps: u64,
    #[serde(default = "d_one")]
    pub log_every_steps: u64,
}

fn d_lr() -> f64 {
    3e-4
}
fn d_min_lr() -> f64 {
    0.2
}
fn d_warm_frac() -> f64 {
    0.01
}
fn d_wd() -> f64 {
    0.1
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> f64 {
    1.0
}
fn d_state_every() -> u64 {
    100
}
fn d_one() -> u64 {
    1
}

impl TrainConfig {
    /// A budget and batch shape with every other setting at its default.
    pub fn new(tokens: u64, batch_size: u32, seq_len: u32) -> TrainConfig {
        TrainConfig {
            tokens,
            batch_size,
            seq_len,
            micro_batch_size: None,
            seed: 0,
            lr: d_lr(),
            min_lr_ratio: d_min_lr(),
            warmup_tokens: None,
            warmup_fraction: d_warm_frac(),
            weight_decay: d_wd(),
            betas: d_betas(),
            eps: d_eps(),
            grad_clip: d_clip(),
            checkpoints: Vec::new(),
            device: DeviceChoice::Auto,
            threads: 0,
            precision: Precision::Auto,
            state_every_steps: d_state_every(),
            log_every_steps: d_one(),
        }
    }

    pub fn tokens_per_step(&self) -> u64 {
        u64::from(self.batch_size) * u64::from(self.seq_len)
    }

    pub fn total_steps(&self) -> u64 {
        self.tokens.div_ceil(self.tokens_per_step().max(1))
    }

    /// What is wrong with these settings, for any caller (the manifest check
    /// locates the same problems at their fields).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.batch_size == 0 || self.seq_len == 0 || self.tokens == 0 {
            out.push("tokens, batch_size and seq_len must be positive".into());
        }
        if let Some(m) = self.micro_batch_size
            && (m == 0 || !self.batch_size.is_multiple_of(m))
        {
            out.push(format!(
                "micro_batch_size ({m}) must divide batch_size ({})",
                self.batch_size
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            out.push(format!("lr must be positive, not {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            out.push(format!(
                "min_lr_ratio must be in [0, 1], not {}",
                self.min_lr_ratio
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_fraction) {
            out.push(format!(
                "warmup_fraction must be in [0, 1], not {}",
                self.warmup_fraction
            ));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            out.push(format!("betas must be in [0, 1), not {:?}", self.betas));
        }
        if let Some(b) = self
            .checkpoints
            .iter()
            .find(|&&b| b == 0 || b > self.tokens)
        {
            out.push(format!(
                "checkpoint budget {b} is not within the token budget (1..={})",
                self.tokens
            ));
        }
        out
    }
}

/// The training mixture: weights over dataset names, or DeMix's component recipe.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DataMix {
    /// The candidate dataset mixed with general data at share `beta` (paper: 0.5).
    Component(ComponentMix),
    /// `{sotu: 0.5, math: 0.5}`: normalised to sum to 1.
    Weights(BTreeMap<String, f64>),
}

// Told apart by shape: untagged enums buffer their input, and YAML scalars
// reach them as strings, so a weight would never match a number.
impl<'de> Deserialize<'de> for DataMix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DataMix;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("weights by dataset name, or {candidate, general, beta}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DataMix, A::Error> {
                use serde::de::Error;
                let (mut candidate, mut general, mut beta) = (None, None, None);
                let mut weights = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "candidate" => candidate = Some(map.next_value::<String>()?),
                        "general" => general = Some(map.next_value::<String>()?),
                        "beta" => beta = Some(map.next_value::<f64>()?),
                        _ => {
                            let w = map.next_value::<f64>()?;
                            weights.insert(k, w);
                        }
                    }
                }
                match (candidate, general) {
                    (Some(candidate), Some(general)) if weights.is_empty() => {
                        Ok(DataMix::Component(ComponentMix {
                            candidate,
                            general,
                            beta: beta.unwrap_or(0.5),
                        }))
                    }
                    (None, None) if beta.is_none() => Ok(DataMix::Weights(weights)),
                    _ => Err(A::Error::custom(
                        "`data` is either weights by dataset name or {candidate, general, beta} (both `candidate` and `general`), not a mix",
                    )),
                }
            }
        }
        d.deserialize_map(V)
    }
}

impl DataMix {
    /// Normalised weights (> 0 only), sorted by name.
    pub fn weights(&self) -> Result<BTreeMap<String, f64>, MixError> {
        let w = match self {
            DataMix::Component(c) => c.weights()?,
            DataMix::Weights(w) => w.clone(),
        };
        if let Some((n, v)) = w.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(MixError::Weight {
                name: n.clone(),
                weight: *v,
            });
        }
        let sum: f64 = w.values().sum();
        if sum <= 0.0 {
            return Err(MixError::ZeroSum);
        }
        Ok(w.into_iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| (k, v / sum))
            .collect())
    }
}
