//! The machine-learning step kinds: `tokenizer`, `train`, `evaluate`.
//!
//! Their fields are checked here, without libtorch, so any demix validates and
//! plans an ML manifest; running them needs the `torch` feature (see `run.rs`).

use std::collections::BTreeMap;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Plan, RunCtx, StepError, StepKind};
use crate::manifest::template::{self, Piece, Ref, Split};
use crate::manifest::{Diags, serde_diag};

/// An ML step cannot run in a demix built without libtorch.
#[cfg(not(feature = "torch"))]
fn no_torch(kind: &str) -> StepError {
    StepError::Failed(format!(
        "`{kind}` steps need libtorch, and this demix was built without it: build with `--features torch` (scripts/demix does)"
    ))
}

pub(super) fn span_of(body: &Node, key: &str) -> marked_yaml::Span {
    body.as_mapping()
        .and_then(|m| m.get_node(key))
        .map(|n| *n.span())
        .unwrap_or(*body.span())
}

/// A field that must hold exactly one `${steps.ID.OUTPUT}` reference (or a path).
pub(super) fn check_ref_or_path(
    d: &mut Diags,
    body: &Node,
    key: &str,
    v: &str,
    paths: &mut Vec<Spanned<String>>,
) {
    let span = span_of(body, key);
    match template::parse(v) {
        Ok(p) => match p.as_slice() {
            [Piece::Ref(Ref::Step { .. })] => {}
            [Piece::Lit(_)] => paths.push(Spanned::new(span, v.to_string())),
            _ => d.error(
                &span,
                format!("`{key}` takes one `${{steps.ID.OUTPUT}}` reference or a path"),
                key,
            ),
        },
        Err(e) => d.error(&span, e, key),
    }
}

fn positive(d: &mut Diags, body: &Node, key: &str, v: f64, what: &str) {
    if v.is_nan() || v <= 0.0 {
        d.error(
            &span_of(body, key),
            format!("`{key}` must be more than 0 ({what}), not {v}"),
            key,
        );
    }
}

pub(super) fn dataset_names(
    body: &Node,
    key: &str,
    names: &[String],
    split: Split,
) -> Vec<(Spanned<String>, Split)> {
    let spans: Vec<marked_yaml::Span> = body
        .as_mapping()
        .and_then(|m| m.get_sequence(key))
        .map(|s| s.iter().map(|n| *n.span()).collect())
        .unwrap_or_default();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                Spanned::new(
                    spans.get(i).copied().unwrap_or(span_of(body, key)),
                    n.clone(),
                ),
                split,
            )
        })
        .collect()
}

// ---------------------------------------------------------------- tokenizer

/// Fields of a `tokenizer` step: train a byte-level BPE, or take a tokenizer.json.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizerFields {
    /// Datasets (by name) whose training documents the BPE learns from.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Vocabulary size, including the 256 byte tokens and the special tokens.
    #[serde(default = "default_vocab")]
    pub vocab_size: u32,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Learn from at most this many bytes of text (0 = all of every dataset),
    /// shared out over the datasets by `shares`: each dataset's documents are
    /// sampled from all over it, and the one that crosses its share is cut.
    #[serde(default)]
    pub max_bytes: u64,
    /// Each dataset's share of `max_bytes` (default: equal shares; a dataset
    /// not named here has share 1). A dataset with fewer bytes than its share
    /// gives the rest to the others.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shares: BTreeMap<String, f64>,
    /// Seeds which documents are sampled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seed: u64,
    /// Special tokens; the first separates documents.
    #[serde(default)]
    pub special_tokens: Option<Vec<String>>,
    /// An existing Hugging Face tokenizer.json to use instead of training one.
    #[serde(default)]
    pub file: Option<String>,
}

fn default_vocab() -> u32 {
    8192
}
fn is_zero(x: &u64) -> bool {
    *x == 0
}
fn default_min_frequency() -> u64 {
    2
}

pub struct Tokenizer;

impl StepKind for Tokenizer {
    fn name(&self) -> &'static str {
        "tokenizer"
    }
    fn version(&self) -> u32 {
        // 2: every dataset is sampled by its share of `max_bytes`.
        2
    }
    fn summary(&self) -> &'static str {
        "trains a byte-level BPE tokenizer (Hugging Face tokenizer.json) or takes an existing one"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<TokenizerFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let f: TokenizerFields = match marked_yaml::from_node(body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "tokenizer step", e);
                return None;
            }
        };
        let before = d.problems.len();
        let mut paths = Vec::new();
        match (&f.file, f.datasets.is_empty()) {
            (Some(file), true) => check_ref_or_path(d, body, "file", file, &mut paths),
            (Some(_), false) => d.error(
                &span_of(body, "file"),
                "give either `file` or `datasets`, not both",
                "file",
            ),
            (None, true) => d.error(
                body.span(),
                "a tokenizer step needs `datasets` to learn from (or an existing `file`)",
                "tokenizer",
            ),
            (None, false) => {}
        }
        if f.vocab_size < 260 {
            d.error(
                &span_of(body, "vocab_size"),
                format!(
                    "`vocab_size` must be at least 260 (256 bytes and special tokens), not {}",
                    f.vocab_size
                ),
                "vocab_size",
            );
        }
        for (name, &share) in &f.shares {
            let at = body
                .as_mapping()
                .and_then(|m| m.get_mapping("shares"))
                .and_then(|m| m.get_node(name))
                .map(|n| *n.span())
                .unwrap_or(span_of(body, "shares"));
            if !f.datasets.contains(name) {
                d.push(
                    &at,
                    format!("`shares` names `{name}`, which is not in `datasets`"),
                    "shares",
                    crate::manifest::did_you_mean(name, f.datasets.iter().map(String::as_str)),
                );
            }
            if !(share.is_finite() && share >= 0.0) {
                d.error(
                    &at,
                    format!("a share must be a finite number >= 0, not {share}"),
                    "shares",
                );
            }
        }
        if !f.shares.is_empty()
            && f.datasets
                .iter()
                .all(|n| f.shares.get(n).copied().unwrap_or(1.0) == 0.0)
        {
            d.error(&span_of(body, "shares"), "every share is 0", "shares");
        }
        if d.problems.len() > before {
            return None;
        }
        let datasets = dataset_names(body, "datasets", &f.datasets, Split::Train);
        let mut outputs = BTreeMap::from([("tokenizer".to_string(), "tokenizer.json".to_string())]);
        if f.file.is_none() {
            outputs.insert("sample".into(), "tokenizer-sample.json".into());
        }
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths,
            outputs,
            runtime_refs: false,
            datasets,
            counts: Vec::new(),
            memory: None,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        #[cfg(feature = "torch")]
        return super::run::tokenizer(ctx);
        #[cfg(not(feature = "torch"))]
        {
            let _ = ctx;
            Err(no_torch(self.name()))
        }
    }
}

// ---------------------------------------------------------------- train

/// Model architecture (Qwen3; Hugging Face config.json names), or a preset name.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelField {
    /// `qwen3-1.7b`: the paper's size.
    Preset(String),
    Config(ModelConfig),
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    /// Default: hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<u32>,
    /// Default: the tokenizer's vocabulary size.
    #[serde(default)]
    pub vocab_size: Option<u32>,
    #[serde(default)]
    pub max_position_embeddings: Option<u32>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

/// The training mixture: weights over dataset names, or DeMix's component recipe.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DataField {
    /// The candidate dataset mixed with general data at share `beta` (paper: 0.5).
    Component {
        candidate: String,
        general: String,
        beta: Option<f64>,
    },
    /// `{sotu: 0.5, math: 0.5}`: normalised to sum to 1.
    Weights(BTreeMap<String, f64>),
}

// Untagged enums buffer their input, and YAML scalars reach them as strings, so a
// number would never match: these two are told apart by their shape instead.
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

impl<'de> Deserialize<'de> for DataField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DataField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("weights by dataset name, or {candidate, general, beta}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DataField, A::Error> {
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
                    (Some(c), Some(g)) if weights.is_empty() => Ok(DataField::Component {
                        candidate: c,
                        general: g,
                        beta,
                    }),
                    (None, None) if beta.is_none() => Ok(DataField::Weights(weights)),
                    _ => Err(A::Error::custom(
                        "`data` is either weights by dataset name or {candidate, general, beta} (both `candidate` and `general`), not a mix",
                    )),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// Fields of a `train` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainFields {
    /// `${steps.ID.tokenizer}`: the tokenizer (copied into every checkpoint).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// A fresh model of this architecture (exclusive with `init`).
    #[serde(default)]
    pub model: Option<ModelField>,
    /// Continue from a checkpoint: `${steps.ID.checkpoint}` or a Hugging Face model folder.
    #[serde(default)]
    pub init: Option<String>,
    /// The mixture: weights by dataset name, or the component recipe.
    #[serde(default)]
    pub data: Option<DataField>,
    /// Or a mixture chosen by another step: `${steps.ID.mixture}` (a JSON object of
    /// weights by dataset name), over the datasets listed in `datasets`.
    #[serde(default)]
    pub mixture: Option<String>,
    /// The datasets a `mixture` file may weight.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// When the `mixture` file is a list of mixtures (a `sample` step's), train on
    /// the one at this index, e.g. `pick: ${item}` under `foreach: {range: N}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pick: Option<u64>,
    /// Mix this dataset into a `mixture` at share `beta`, as the components are
    /// (`{candidate, general, beta}`): references then match merged proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<String>,
    /// The general share with `general` (default 0.5, the paper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Token budget.
    pub tokens: u64,
    pub batch_size: u32,
    pub seq_len: u32,
    /// Rows per forward pass, accumulating gradients up to `batch_size` (the
    /// paper's 512 x 8192-token batch does not fit one GPU at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<u32>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub lr: Option<f64>,
    /// Cosine decay floor as a share of the peak (paper: 0.2).
    #[serde(default)]
    pub min_lr_ratio: Option<f64>,
    #[serde(default)]
    pub warmup_tokens: Option<u64>,
    #[serde(default)]
    pub warmup_fraction: Option<f64>,
    #[serde(default)]
    pub weight_decay: Option<f64>,
    #[serde(default)]
    pub betas: Option<[f64; 2]>,
    #[serde(default)]
    pub eps: Option<f64>,
    /// Global gradient-norm clip (0 disables).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Token budgets at which to also save a checkpoint; each is an output
    /// `tokens_<budget>` that other steps can reference.
    #[serde(default)]
    pub checkpoints: Vec<u64>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: Option<String>,
    /// CPU threads (0: libtorch's default).
    #[serde(default)]
    pub threads: Option<u32>,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32` or `bf16`.
    #[serde(default)]
    pub precision: Option<String>,
    /// Save the resumable state every N optimizer steps.
    #[serde(default)]
    pub state_every_steps: Option<u64>,
}

pub fn check_device(d: &mut Diags, body: &Node, dev: &Option<String>) {
    if let Some(dev) = dev {
        let ok = matches!(dev.as_str(), "auto" | "cpu" | "cuda")
            || dev
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !ok {
            d.error(
                &span_of(body, "device"),
                format!("unknown device `{dev}` (auto, cpu, cuda or cuda:N)"),
                "device",
            );
        }
    }
}

pub struct Train;

impl StepKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        // 2: metrics.jsonl holds only what the trajectory decides.
        2
    }
    fn summary(&self) -> &'static str {
        "trains a Qwen3-architecture model on a mixture of datasets (AdamW, warmup + cosine), resumable"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<TrainFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let f: TrainFields = match marked_yaml::from_node(body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "train step", e);
                return None;
            }
        };
        let before = d.problems.len();
        let mut paths = Vec::new();
        match (&f.model, &f.init) {
            (Some(_), Some(_)) => d.error(
                &span_of(body, "init"),
                "give either `model` (a fresh model) or `init` (a checkpoint), not both",
                "init",
            ),
            (None, None) => d.error(
                body.span(),
                "a train step needs `model` (a fresh model) or `init` (a checkpoint)",
                "train",
            ),
            (None, Some(i)) => check_ref_or_path(d, body, "init", i, &mut paths),
            (Some(ModelField::Preset(p)), None) if p != "qwen3-1.7b" => d.error(
                &span_of(body, "model"),
                format!("unknown model preset `{p}` (known: qwen3-1.7b)"),
                "model",
            ),
            (Some(ModelField::Config(c)), None) => {
                if c.num_attention_heads == 0
                    || c.num_key_value_heads == 0
                    || c.num_attention_heads % c.num_key_value_heads != 0
                {
                    d.error(&span_of(body, "model"), "`num_attention_heads` must be a positive multiple of `num_key_value_heads`", "model");
                }
                if c.head_dim.is_none() && c.hidden_size % c.num_attention_heads.max(1) != 0 {
                    d.error(
                        &span_of(body, "model"),
                        "`hidden_size` is not divisible by `num_attention_heads`; set `head_dim`",
                        "model",
                    );
                }
            }
            _ => {}
        }
        if f.model.is_some() && f.tokenizer.is_none() {
            d.error(
                body.span(),
                "a fresh model needs `tokenizer: ${steps.ID.tokenizer}`",
                "train",
            );
        }
        if let Some(t) = &f.tokenizer {
            check_ref_or_path(d, body, "tokenizer", t, &mut paths);
        }
        let batch_tokens = u64::from(f.batch_size) * u64::from(f.seq_len);
        if f.tokens == 0 {
            d.error(
                &span_of(body, "tokens"),
                "`tokens` (the token budget) must be more than 0",
                "tokens",
            );
        } else if f.tokens < batch_tokens {
            d.error(
                &span_of(body, "tokens"),
                format!(
                    "`tokens` ({}) is less than one batch (batch_size {} x seq_len {} = {batch_tokens} tokens): training would take a whole batch anyway",
                    f.tokens, f.batch_size, f.seq_len
                ),
                "tokens",
            );
        }
        if f.batch_size == 0 {
            d.error(
                &span_of(body, "batch_size"),
                "`batch_size` must be more than 0",
                "batch_size",
            );
        }
        if let Some(m) = f.micro_batch_size
            && (m == 0 || !f.batch_size.is_multiple_of(m))
        {
            d.error(
                &span_of(body, "micro_batch_size"),
                format!(
                    "`micro_batch_size` ({m}) must divide `batch_size` ({})",
                    f.batch_size
                ),
                "micro_batch_size",
            );
        }
        if f.seq_len == 0 {
            d.error(
                &span_of(body, "seq_len"),
                "`seq_len` must be more than 0",
                "seq_len",
            );
        }
        if let Some(lr) = f.lr {
            positive(d, body, "lr", lr, "the peak learning rate");
        }
        if let Some(r) = f.min_lr_ratio
            && !(0.0..=1.0).contains(&r)
        {
            d.error(
                &span_of(body, "min_lr_ratio"),
                format!("`min_lr_ratio` must be in [0, 1], not {r}"),
                "min_lr_ratio",
            );
        }
        for &c in &f.checkpoints {
            if c == 0 || c > f.tokens {
                d.error(
                    &span_of(body, "checkpoints"),
                    format!(
                        "checkpoint budget {c} is not within the token budget (1..={})",
                        f.tokens
                    ),
                    "checkpoints",
                );
            }
        }
        check_device(d, body, &f.device);
        if let Some(p) = &f.precision
            && !matches!(p.as_str(), "auto" | "f32" | "bf16")
        {
            d.error(
                &span_of(body, "precision"),
                format!("unknown precision `{p}` (auto, f32 or bf16)"),
                "precision",
            );
        }
        // The mixture: names are datasets, weights are non-negative and not all zero.
        let data_span = span_of(body, "data");
        let weight_span = |k: &str| {
            body.as_mapping()
                .and_then(|m| m.get_mapping("data"))
                .and_then(|m| m.get_node(k))
                .map(|n| *n.span())
                .unwrap_or(data_span)
        };
        let key_span = |k: &str| {
            body.as_mapping()
                .and_then(|m| m.get_mapping("data"))
                .and_then(|m| m.keys().find(|x| x.as_str() == k).map(|x| *x.span()))
                .unwrap_or(data_span)
        };
        let mut datasets = Vec::new();
        match (&f.data, &f.mixture) {
            (Some(_), Some(_)) => d.error(
                &span_of(body, "mixture"),
                "give either `data` or `mixture`, not both",
                "mixture",
            ),
            (None, None) => d.error(
                body.span(),
                "a train step needs `data` (a mixture) or `mixture: ${steps.ID.mixture}`",
                "train",
            ),
            (None, Some(m)) => {
                check_ref_or_path(d, body, "mixture", m, &mut paths);
                if f.datasets.is_empty() {
                    d.error(
                        &span_of(body, "mixture"),
                        "a `mixture` file needs `datasets`: the datasets it may weight",
                        "mixture",
                    );
                }
                datasets.extend(dataset_names(body, "datasets", &f.datasets, Split::Train));
                if let Some(g) = &f.general {
                    datasets.push((
                        Spanned::new(span_of(body, "general"), g.clone()),
                        Split::Train,
                    ));
                    if f.datasets.contains(g) {
                        d.error(
                            &span_of(body, "general"),
                            format!("`{g}` is in `datasets` too; the general data is mixed in at share `beta`, not weighted by the mixture"),
                            "general",
                        );
                    }
                }
                if let Some(b) = f.beta
                    && !(0.0..1.0).contains(&b)
                {
                    d.error(
                        &span_of(body, "beta"),
                        format!("`beta` (the general share) must be in [0, 1), not {b}"),
                        "beta",
                    );
                }
                if f.beta.is_some() && f.general.is_none() {
                    d.error(
                        &span_of(body, "beta"),
                        "`beta` is the share of `general`: name the general dataset",
                        "beta",
                    );
                }
            }
            (Some(_), None) if f.pick.is_some() || f.general.is_some() || f.beta.is_some() => {
                d.error(
                    &span_of(body, "data"),
                    "`pick`, `general` and `beta` go with `mixture`; `data` says its mixture itself",
                    "data",
                )
            }
            (Some(_), None) if !f.datasets.is_empty() => d.error(
                &span_of(body, "datasets"),
                "`datasets` goes with `mixture`; `data` names its datasets itself",
                "datasets",
            ),
            (Some(data), None) => match data {
                DataField::Weights(w) => {
                    if w.is_empty() {
                        d.error(&data_span, "the mixture is empty", "data");
                    }
                    for (name, &x) in w {
                        if !x.is_finite() || x < 0.0 {
                            d.error(
                            &weight_span(name),
                            format!(
                                "mixture weight of `{name}` must be a finite number >= 0, not {x}"
                            ),
                            "weight",
                        );
                        }
                        datasets.push((Spanned::new(key_span(name), name.clone()), Split::Train));
                    }
                    if !w.is_empty() && w.values().all(|&x| x == 0.0) {
                        d.error(&data_span, "mixture weights are all 0", "data");
                    }
                }
                DataField::Component {
                    candidate,
                    general,
                    beta,
                } => {
                    if let Some(b) = beta
                        && !(0.0..=1.0).contains(b)
                    {
                        d.error(
                            &weight_span("beta"),
                            format!(
                                "`beta` (the share of general data) must be in [0, 1], not {b}"
                            ),
                            "beta",
                        );
                    }
                    datasets.push((
                        Spanned::new(weight_span("candidate"), candidate.clone()),
                        Split::Train,
                    ));
                    if general != candidate {
                        datasets.push((
                            Spanned::new(weight_span("general"), general.clone()),
                            Split::Train,
                        ));
                    }
                }
            },
        }
        if d.problems.len() > before {
            return None;
        }
        // A fresh model's shape is known here; its vocabulary only when given,
        // so this is a lower bound.
        let memory = match &f.model {
            Some(ModelField::Config(c)) => {
                let heads = u64::from(c.num_attention_heads.max(1));
                let shape = crate::estimate::ModelShape {
                    vocab: c.vocab_size.map_or(0, u64::from),
                    hidden: c.hidden_size.into(),
                    intermediate: c.intermediate_size.into(),
                    layers: c.num_hidden_layers.into(),
                    heads,
                    kv_heads: c.num_key_value_heads.into(),
                    head_dim: c
                        .head_dim
                        .map_or(u64::from(c.hidden_size) / heads, u64::from),
                    tied: c.tie_word_embeddings.unwrap_or(true),
                };
                let rows = f.micro_batch_size.unwrap_or(f.batch_size);
                Some((
                    shape.training_bytes(rows.into(), f.seq_len.into()),
                    format!(
                        "training this model ({} parameters or more: hidden_size {}, intermediate_size {}, num_hidden_layers {})",
                        shape.params(),
                        c.hidden_size,
                        c.intermediate_size,
                        c.num_hidden_layers
                    ),
                    span_of(body, "model"),
                ))
            }
            _ => None,
        };
        let mut outputs = BTreeMap::from([
            ("checkpoint".to_string(), "checkpoint/".to_string()),
            ("metrics".to_string(), "metrics.jsonl".to_string()),
        ]);
        for c in &f.checkpoints {
            outputs.insert(format!("tokens_{c}"), format!("checkpoints/tokens-{c}/"));
        }
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths,
            outputs,
            runtime_refs: false,
            datasets,
            counts: Vec::new(),
            memory,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        #[cfg(feature = "torch")]
        return super::run::train(ctx);
        #[cfg(not(feature = "torch"))]
        {
            let _ = ctx;
            Err(no_torch(self.name()))
        }
    }
}

// ---------------------------------------------------------------- evaluate

/// Fields of an `evaluate` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalFields {
    /// `${steps.ID.checkpoint}` or a Hugging Face model folder.
    pub checkpoint: String,
    /// Datasets (by name) whose validation documents give loss, perplexity and bits per byte.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Benchmark tasks: name -> JSON Lines file (multiple choice or question/answer).
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    /// Tokens evaluated per dataset: a seeded sample of windows spread over the
    /// whole validation split (all of it when the split is smaller).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Seeds the sample (default 0). Models evaluated with the same seed,
    /// `max_tokens` and `seq_len` are scored on the same text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub seq_len: Option<u32>,
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// Examples per task (0 = all).
    #[serde(default)]
    pub max_examples: Option<u32>,
    #[serde(default)]
    pub max_new_tokens: Option<u32>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub threads: Option<u32>,
}

pub struct Evaluate;

impl StepKind for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        // 2: a seeded sample spread over the split, not its first documents.
        2
    }
    fn summary(&self) -> &'static str {
        "evaluates a checkpoint: validation loss, perplexity, bits per byte, benchmark tasks"
    }
    fn schema(&self) -> serde_json::Value {
        super::fields_schema::<EvalFields>()
    }
    fn plan(&self, body: &Node, d: &mut Diags) -> Option<Plan> {
        let f: EvalFields = match marked_yaml::from_node(body) {
            Ok(f) => f,
            Err(e) => {
                serde_diag(d, body.span(), "evaluate step", e);
                return None;
            }
        };
        let before = d.problems.len();
        let mut paths = Vec::new();
        check_ref_or_path(d, body, "checkpoint", &f.checkpoint, &mut paths);
        let task_spans = |k: &str| {
            body.as_mapping()
                .and_then(|m| m.get_mapping("tasks"))
                .and_then(|m| m.get_node(k))
                .map(|n| *n.span())
                .unwrap_or(span_of(body, "tasks"))
        };
        for (name, p) in &f.tasks {
            if template::has_refs(p) {
                d.error(
                    &task_spans(name),
                    "task files are paths relative to the manifest",
                    "task",
                );
            } else {
                paths.push(Spanned::new(task_spans(name), p.clone()));
            }
        }
        if f.datasets.is_empty() && f.tasks.is_empty() {
            d.error(
                body.span(),
                "an evaluate step needs `datasets` or `tasks`",
                "evaluate",
            );
        }
        if f.max_tokens == Some(0) || f.seq_len == Some(0) || f.batch_size == Some(0) {
            d.error(
                body.span(),
                "`max_tokens`, `seq_len` and `batch_size` must be more than 0",
                "evaluate",
            );
        }
        check_device(d, body, &f.device);
        if d.problems.len() > before {
            return None;
        }
        let datasets = dataset_names(body, "datasets", &f.datasets, Split::Validation);
        Some(Plan {
            params: serde_json::to_value(&f).expect("serializes"),
            paths,
            outputs: BTreeMap::from([("metrics".to_string(), "metrics.json".to_string())]),
            runtime_refs: false,
            datasets,
            counts: Vec::new(),
            memory: None,
        })
    }
    fn run(&self, ctx: &RunCtx) -> Result<(), StepError> {
        #[cfg(feature = "torch")]
        return super::run::evaluate(ctx);
        #[cfg(not(feature = "torch"))]
        {
            let _ = ctx;
            Err(no_torch(self.name()))
        }
    }
}
