//! The model's configuration: Hugging Face's `Qwen3Config` (config.json), as
//! the manifest, the ML library and the checkpoints all read and write it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What this implementation does not compute, said for the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The dtypes weights may be stored in.
pub const STORAGE_DTYPES: [&str; 3] = ["float32", "bfloat16", "float16"];

/// Hugging Face `Qwen3Config` fields (config.json). Unknown fields of real
/// checkpoints are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen3Config {
    #[serde(default = "default_arch")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Dtype the weights are stored in: float32, bfloat16 or float16.
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default = "default_true")]
    pub use_cache: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_arch() -> Vec<String> {
    vec!["Qwen3ForCausalLM".into()]
}
fn default_model_type() -> String {
    "qwen3".into()
}
fn default_max_pos() -> i64 {
    40960
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    1_000_000.0
}
fn default_dtype() -> String {
    "float32".into()
}
fn default_act() -> String {
    "silu".into()
}
fn default_init_range() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}

impl Qwen3Config {
    /// A config with the given shape and Qwen3 defaults elsewhere.
    pub fn new(vocab: i64, hidden: i64, inter: i64, layers: i64, heads: i64, kv: i64) -> Self {
        Self {
            architectures: default_arch(),
            model_type: default_model_type(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads.max(1),
            max_position_embeddings: default_max_pos(),
            rms_norm_eps: default_eps(),
            rope_theta: default_theta(),
            tie_word_embeddings: false,
            torch_dtype: default_dtype(),
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: default_act(),
            attention_bias: false,
            attention_dropout: 0.0,
            initializer_range: default_init_range(),
            rope_scaling: None,
            use_sliding_window: false,
            sliding_window: None,
            use_cache: true,
            extra: BTreeMap::new(),
        }
    }

    /// Qwen3-1.7B's shape, with its embeddings tied to the output projection
    /// as in the released model (`tie_word_embeddings`).
    pub fn qwen3_1_7b() -> Self {
        let mut c = Self::new(151936, 2048, 6144, 28, 16, 8);
        c.head_dim = 128;
        c.tie_word_embeddings = true;
        c.torch_dtype = "bfloat16".into();
        c.bos_token_id = Some(151643);
        c.eos_token_id = Some(151645);
        c
    }

    /// Sets `bos_token_id` and `eos_token_id` for the tokenizer a checkpoint
    /// is saved with, whose end-of-text token is `separator` (see
    /// [`crate::card::token_id_for`]: ids that are special tokens of this
    /// tokenizer stay, others become the separator). Without a tokenizer
    /// nothing says which ids these are: they stay as they are, `null`
    /// included.
    pub fn set_special_ids(&mut self, separator: u32, is_special: &dyn Fn(i64) -> bool) {
        self.bos_token_id = Some(crate::card::token_id_for(
            self.bos_token_id,
            separator,
            is_special,
        ));
        self.eos_token_id = Some(crate::card::token_id_for(
            self.eos_token_id,
            separator,
            is_special,
        ));
    }

    /// Rejects what this implementation does not compute.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.model_type != "qwen3" {
            return bad(format!("model_type '{}' is not qwen3", self.model_type));
        }
        for (n, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v <= 0 {
                return bad(format!("{n} must be positive, got {v}"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if self.head_dim % 2 != 0 {
            return bad("head_dim must be even (rotary embeddings)".into());
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act '{}' unsupported (silu only)",
                self.hidden_act
            ));
        }
        if self.attention_bias {
            return bad("attention_bias = true unsupported".into());
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("rope_scaling unsupported".into());
        }
        if self.use_sliding_window {
            return bad("use_sliding_window unsupported".into());
        }
        if !STORAGE_DTYPES.contains(&self.torch_dtype.as_str()) {
            return bad(format!(
                "torch_dtype '{}' unsupported ({})",
                self.torch_dtype,
                STORAGE_DTYPES.join(", ")
            ));
        }
        Ok(())
    }

    /// Parameter names and shapes, in Hugging Face naming and canonical order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let (d, hd) = (self.hidden_size, self.head_dim);
        let (h, kv) = (self.num_attention_heads, self.num_key_value_heads);
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, d],
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.input_layernorm.weight"), vec![d]));
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![h * hd, d]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, d]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, d]));
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, h * hd]));
            v.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            v.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            v.push((
                format!("{p}.mlp.gate_proj.weight"),
                vec![self.intermediate_size, d],
            ));
            v.push((
                format!("{p}.mlp.up_proj.weight"),
                vec![self.intermediate_size, d],
            ));
            v.push((
                format!("{p}.mlp.down_proj.weight"),
                vec![d, self.intermediate_size],
            ));
        }
        v.push(("model.norm.weight".into(), vec![d]));
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".into(), vec![self.vocab_size, d]));
        }
        v
    }

    /// The shape, for memory estimates.
    pub fn shape(&self) -> crate::estimate::ModelShape {
        let u = |x: i64| x.max(0) as u64;
        crate::estimate::ModelShape {
            vocab: u(self.vocab_size),
            hidden: u(self.hidden_size),
            intermediate: u(self.intermediate_size),
            layers: u(self.num_hidden_layers),
            heads: u(self.num_attention_heads),
            kv_heads: u(self.num_key_value_heads),
            head_dim: u(self.head_dim),
            tied: self.tie_word_embeddings,
        }
    }

    pub fn num_params(&self) -> i64 {
        self.param_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum()
    }

    /// Training FLOPs per token (forward + backward = 3 x forward):
    /// 6 * N_matmul + 6 * (2 * layers * seq * heads * head_dim), where
    /// N_matmul counts every parameter except the embedding lookup (the
    /// lm_head counts, tied or not) and the attention term covers QK^T and
    /// AV over the full (not causally halved) window, as in the PaLM appendix.
    pub fn train_flops_per_token(&self, seq_len: i64) -> f64 {
        let n = self.num_params() - self.vocab_size * self.hidden_size
            + if self.tie_word_embeddings {
                self.vocab_size * self.hidden_size
            } else {
                0
            };
        let attn = 2 * self.num_hidden_layers * seq_len * self.num_attention_heads * self.head_dim;
        6.0 * n as f64 + 6.0 * attn as f64
    }
}

/// A fresh model as a manifest asks for it: a preset name, or the Qwen3
/// fields that set its shape (Hugging Face config.json names), the rest left
/// to defaults and the vocabulary to the tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelField {
    /// `qwen3-1.7b`: the paper's size.
    Preset(String),
    Config(ModelConfig),
}

/// The presets `model:` may name.
pub const PRESETS: [&str; 1] = ["qwen3-1.7b"];

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    /// Default: hidden_size / num_attention_heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
    /// Default: the tokenizer's vocabulary size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    /// Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> u32 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

impl ModelField {
    /// The full config, with `vocab` (the tokenizer's) where none is given.
    pub fn resolve(&self, vocab: i64) -> Result<Qwen3Config, ConfigError> {
        let c = match self {
            ModelField::Preset(p) if p == "qwen3-1.7b" => {
                let mut c = Qwen3Config::qwen3_1_7b();
                c.vocab_size = vocab;
                c
            }
            ModelField::Preset(p) => {
                return Err(ConfigError(format!(
                    "unknown model preset `{p}` (known: {})",
                    PRESETS.join(", ")
                )));
            }
            ModelField::Config(m) => {
                let mut c = Qwen3Config::new(
                    m.vocab_size.map_or(vocab, i64::from),
                    m.hidden_size.into(),
                    m.intermediate_size.into(),
                    m.num_hidden_layers.into(),
                    m.num_attention_heads.into(),
                    m.num_key_value_heads.into(),
                );
                c.head_dim = m.head_dim().into();
                c.tie_word_embeddings = m.tie_word_embeddings.unwrap_or(true);
                if let Some(x) = m.max_position_embeddings {
                    c.max_position_embeddings = x.into();
                }
                if let Some(x) = m.rope_theta {
                    c.rope_theta = x;
                }
                if let Some(x) = m.rms_norm_eps {
                    c.rms_norm_eps = x;
                }
                c
            }
        };
        c.validate()?;
        Ok(c)
    }
}

// Untagged enums buffer their input, and YAML scalars reach them as strings, so a
// number would never match: these are told apart by their shape instead.
impl<'de> Deserialize<'de> for ModelField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ModelField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a preset name (qwen3-1.7b) or a mapping of Qwen3 config fields")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelField, E> {
                Ok(ModelField::Preset(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ModelField, A::Error> {
                ModelConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ModelField::Config)
            }
        }
        d.deserialize_any(V)
    }
}
