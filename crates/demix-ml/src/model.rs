//! Qwen3 decoder-only transformer on tch, with Hugging Face parameter names,
//! laid out like candle's `candle-transformers/src/models/qwen3.rs`: one
//! struct per Hugging Face module (`Attention`, `Mlp`, `DecoderLayer`,
//! `Qwen3`), each built by `new` from a `VarPath` and run by `forward`.
//! Checkpoint files are read and written by [`crate::checkpoint`].
//!
//! Parameters are plain tensors kept in f32 ("master weights"); a compute
//! kind (f32, or bf16 on CUDA) casts them per use, which is what autocast
//! does for matmuls, while norms, RoPE tables and the loss stay in f32.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;

use tch::{Device, Kind, Tensor};

pub use demix_spec::model::Qwen3Config;

use crate::error::{MlError, Result};
use demix_spec::rng::fnv1a64;

/// Serialises use of torch's process-wide CPU generator.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where the tensors that modules ask for come from.
enum Source {
    /// A dry run: names and shapes are recorded, tensors are left undefined.
    Shapes,
    /// Each tensor is taken from a checked state dict and placed on `device`.
    StateDict {
        sd: BTreeMap<String, Tensor>,
        device: Device,
    },
}

/// Every tensor the modules asked for, by Hugging Face name, in the order
/// they asked (the canonical order). Since each name is written once, in the
/// module that owns the tensor, shapes, loading and the parameter list all
/// come from the constructors.
struct VarStore {
    source: Source,
    vars: Vec<(String, Vec<i64>, Tensor)>,
}

impl VarStore {
    fn new(source: Source) -> RefCell<Self> {
        RefCell::new(Self {
            source,
            vars: vec![],
        })
    }
}

/// A name prefix such as `model.layers.3.self_attn` into a [`VarStore`]
/// (candle's `VarBuilder`).
#[derive(Clone)]
struct VarPath<'a> {
    store: &'a RefCell<VarStore>,
    prefix: String,
}

impl<'a> VarPath<'a> {
    fn root(store: &'a RefCell<VarStore>) -> Self {
        Self {
            store,
            prefix: String::new(),
        }
    }

    /// The path one level down (`pp` as in candle).
    fn pp(&self, name: impl Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            store: self.store,
            prefix,
        }
    }

    /// The tensor `{prefix}.{name}` of `shape`, registered in the store.
    fn get(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        let full = format!("{}.{name}", self.prefix);
        let mut store = self.store.borrow_mut();
        let t = match &mut store.source {
            Source::Shapes => Tensor::new(),
            Source::StateDict { sd, device } => {
                // Present with this shape: checked before building.
                let t = sd
                    .remove(&full)
                    .ok_or_else(|| MlError::StateDict(format!("missing tensor {full}")))?;
                let device = *device;
                t.f_to_device(device)
                    .and_then(|t| t.f_to_kind(Kind::Float))
                    .map(|t| t.detach())
                    .map_err(|e| {
                        MlError::StateDict(format!("{full}: cannot place it on {device:?}: {e}"))
                    })?
            }
        };
        store.vars.push((full, shape.to_vec(), t.shallow_clone()));
        Ok(t)
    }
}

/// A bias-free linear layer (`nn.Linear(bias=False)`).
struct Linear {
    weight: Tensor,
}

impl Linear {
    fn new(in_dim: i64, out_dim: i64, vb: VarPath) -> Result<Self> {
        Ok(Self {
            weight: vb.get(&[out_dim, in_dim], "weight")?,
        })
    }

    fn forward(&self, x: &Tensor, ck: Kind) -> Tensor {
        linear(x, &self.weight, ck)
    }
}

/// `x @ w.T` with `w` cast to the compute kind.
fn linear(x: &Tensor, w: &Tensor, ck: Kind) -> Tensor {
    x.linear::<&Tensor>(&w.to_kind(ck), None)
}

/// HF Qwen3RMSNorm: in f32, then cast back, then scale.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: i64, eps: f64, vb: VarPath) -> Result<Self> {
        Ok(Self {
            weight: vb.get(&[size], "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let y = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        y * self.weight.to_kind(kind)
    }
}

/// Cached cos/sin tables of one sequence length and kind.
struct RopeTables {
    len: i64,
    kind: Kind,
    cos: Tensor,
    sin: Tensor,
}

/// Rotary embeddings as HF's Qwen3RotaryEmbedding. The tables are built once
/// per (sequence length, kind) on the model's device and reused; built at
/// exactly the length used, so values match a fresh build bit for bit.
struct RotaryEmbedding {
    head_dim: i64,
    theta: f64,
    device: Device,
    cache: RefCell<Vec<RopeTables>>,
}

/// Training uses one length and evaluation a few; more are dropped.
const ROPE_CACHE_ENTRIES: usize = 8;

impl RotaryEmbedding {
    fn new(cfg: &Qwen3Config, device: Device) -> Self {
        Self {
            head_dim: cfg.head_dim,
            theta: cfg.rope_theta,
            device,
            cache: RefCell::new(vec![]),
        }
    }

    /// cos/sin `[t, head_dim]` in `kind`.
    fn tables(&self, t: i64, kind: Kind) -> (Tensor, Tensor) {
        let mut cache = self.cache.borrow_mut();
        if let Some(e) = cache.iter().find(|e| e.len == t && e.kind == kind) {
            return (e.cos.shallow_clone(), e.sin.shallow_clone());
        }
        let (cos, sin) = self.build(t);
        let (cos, sin) = (cos.to_kind(kind), sin.to_kind(kind));
        if cache.len() >= ROPE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.push(RopeTables {
            len: t,
            kind,
            cos: cos.shallow_clone(),
            sin: sin.shallow_clone(),
        });
        (cos, sin)
    }

    /// The f32 tables for positions `0..t`.
    fn build(&self, t: i64) -> (Tensor, Tensor) {
        let pos = Tensor::arange(t, (Kind::Float, self.device));
        let freqs = pos.unsqueeze(1) * self.inv_freq().unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    fn inv_freq(&self) -> Tensor {
        let hd = self.head_dim;
        let exps = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, self.device))
            .to_kind(Kind::Float)
            / hd as f64;
        Tensor::from(self.theta as f32)
            .to_device(self.device)
            .pow(&exps)
            .reciprocal()
    }

    /// cos/sin `[b, 1, t, head_dim]` in `kind` for the positions `[b, t]`
    /// (i64) of each row: the same arithmetic as [`Self::build`], row by row.
    fn at(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let pos = positions.to_device(self.device).to_kind(Kind::Float);
        let freqs = pos.unsqueeze(-1) * self.inv_freq();
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// Rotates `x` `[b, heads, t, head_dim]`.
    fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        x * cos + rotate_half(x) * sin
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// Causal grouped-query self-attention with per-head RMSNorm on q and k.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(cfg: &Qwen3Config, vb: VarPath) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            q_proj: Linear::new(d, h * hd, vb.pp("q_proj"))?,
            k_proj: Linear::new(d, kv * hd, vb.pp("k_proj"))?,
            v_proj: Linear::new(d, kv * hd, vb.pp("v_proj"))?,
            o_proj: Linear::new(h * hd, d, vb.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, eps, vb.pp("k_norm"))?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    /// `x` `[b, t, hidden]` to `[b, t, hidden]`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, ck: Kind) -> Tensor {
        let (q, k, v) = self.qkv(x, cos, sin, ck);
        self.attend(&q, k, v, &AttnMask::Causal, ck)
    }

    /// As [`Self::forward`] for tokens that follow those in `slot` (this
    /// layer's keys and values so far), which gets theirs appended.
    fn forward_cached(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        ck: Kind,
        slot: &mut Option<(Tensor, Tensor)>,
        mask: &AttnMask,
    ) -> Tensor {
        let (q, k, v) = self.qkv(x, rope.0, rope.1, ck);
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.shallow_clone(), v.shallow_clone()));
        self.attend(&q, k, v, mask, ck)
    }

    /// Queries, keys and values `[b, heads, t, head_dim]`, normed and rotated.
    fn qkv(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, ck: Kind) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |p: &Linear, n: i64| p.forward(x, ck).view([b, t, n, hd]);
        let q = self.q_norm.forward(&heads(&self.q_proj, h)).transpose(1, 2);
        let k = self
            .k_norm
            .forward(&heads(&self.k_proj, kv))
            .transpose(1, 2);
        let v = heads(&self.v_proj, kv).transpose(1, 2);
        let q = RotaryEmbedding::apply(&q, cos, sin);
        let k = RotaryEmbedding::apply(&k, cos, sin);
        (q, k, v)
    }

    /// Attention of `q` `[b, h, t, hd]` over `k`, `v` `[b, kv, s, hd]`, then
    /// the output projection: `[b, t, hidden]`.
    fn attend(&self, q: &Tensor, k: Tensor, v: Tensor, mask: &AttnMask, ck: Kind) -> Tensor {
        let (b, t) = (q.size()[0], q.size()[2]);
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (k, v) = (repeat_kv(k, h / kv), repeat_kv(v, h / kv));
        let (m, causal) = match mask {
            AttnMask::Causal => (None, true),
            AttnMask::All => (None, false),
            AttnMask::Allowed(m) => (Some(m), false),
        };
        let a = Tensor::scaled_dot_product_attention(q, &k, &v, m, 0.0, causal, None, false);
        let a = a.transpose(1, 2).reshape([b, t, h * hd]);
        self.o_proj.forward(&a, ck)
    }
}

/// Which keys each query may attend to.
enum AttnMask {
    /// Query `i` sees keys `0..=i` (queries and keys aligned at the start).
    Causal,
    /// Every key.
    All,
    /// Bool `[b, 1, t, s]`, true where query `i` may see key `j`.
    Allowed(Tensor),
}

/// HF repeat_kv: each kv head of `x` `[b, kv, t, hd]` serves `rep`
/// consecutive query heads.
fn repeat_kv(x: Tensor, rep: i64) -> Tensor {
    if rep == 1 {
        return x;
    }
    let s = x.size();
    let (b, kv, t, hd) = (s[0], s[1], s[2], s[3]);
    x.unsqueeze(2)
        .expand([b, kv, rep, t, hd], false)
        .reshape([b, kv * rep, t, hd])
}

/// The SwiGLU feed-forward block.
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &Qwen3Config, vb: VarPath) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::new(d, i, vb.pp("gate_proj"))?,
            up_proj: Linear::new(d, i, vb.pp("up_proj"))?,
            down_proj: Linear::new(i, d, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor, ck: Kind) -> Tensor {
        let m = self.gate_proj.forward(x, ck).silu() * self.up_proj.forward(x, ck);
        self.down_proj.forward(&m, ck)
    }
}

/// One pre-norm transformer block.
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// Built in Hugging Face's canonical tensor order: input_layernorm,
    /// self_attn, post_attention_layernorm, mlp.
    fn new(cfg: &Qwen3Config, vb: VarPath) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::new(d, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(d, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    // `x + h`, never `x += h`: on tch tensors `+=` adds in place, which would
    // break autograd (x is saved for the norms' backward).
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, ck: Kind) -> Tensor {
        let h = self.input_layernorm.forward(x);
        let x = x + self.self_attn.forward(&h, cos, sin, ck);
        let h = self.post_attention_layernorm.forward(&x);
        &x + self.mlp.forward(&h, ck)
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        ck: Kind,
        slot: &mut Option<(Tensor, Tensor)>,
        mask: &AttnMask,
    ) -> Tensor {
        let h = self.input_layernorm.forward(x);
        let x = x + self.self_attn.forward_cached(&h, rope, ck, slot, mask);
        let h = self.post_attention_layernorm.forward(&x);
        &x + self.mlp.forward(&h, ck)
    }
}

/// Every layer's keys and values (`[b, kv_heads, s, head_dim]`, in the
/// compute kind, after the k norm and RoPE) of the `s` tokens a model has
/// seen so far, for incremental decoding with [`Qwen3::forward_cached`].
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Qwen3) -> Self {
        Self {
            layers: (0..model.layers.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Tokens (columns) held per row.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Qwen3 {
    pub config: Qwen3Config,
    pub device: Device,
    /// Kind of activations and matmuls: Float, or BFloat16 for mixed precision.
    pub compute_kind: Kind,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when tied: the output projection is then the embedding matrix
    /// itself (`tie_word_embeddings`), which has no tensor of its own.
    lm_head: Option<Linear>,
    rotary: RotaryEmbedding,
    /// Handles to every parameter, by name, in canonical order.
    params: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for Qwen3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish()
    }
}

impl Qwen3 {
    /// Builds the modules, which ask `vb` for their tensors; the caller
    /// collects `params` from the store.
    fn new(cfg: &Qwen3Config, device: Device, vb: VarPath) -> Result<Self> {
        let embed_tokens = vb
            .pp("model.embed_tokens")
            .get(&[cfg.vocab_size, cfg.hidden_size], "weight")?;
        let vb_l = vb.pp("model.layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb_l.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(
                cfg.hidden_size,
                cfg.vocab_size,
                vb.pp("lm_head"),
            )?)
        };
        Ok(Self {
            config: cfg.clone(),
            device,
            compute_kind: Kind::Float,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: RotaryEmbedding::new(cfg, device),
            params: vec![],
        })
    }

    /// Parameter names and shapes in canonical order, from a dry run of the
    /// constructors (equal to [`Qwen3Config::param_shapes`], which estimates
    /// use without libtorch; a test keeps the two in step).
    pub fn param_shapes(config: &Qwen3Config) -> Result<Vec<(String, Vec<i64>)>> {
        let store = VarStore::new(Source::Shapes);
        Self::new(config, Device::Cpu, VarPath::root(&store))?;
        let vars = store.into_inner().vars;
        Ok(vars.into_iter().map(|(n, s, _)| (n, s)).collect())
    }

    /// Fresh weights: normal(0, initializer_range) for matrices, ones for
    /// norms. Each tensor is drawn on the CPU from torch's generator seeded by
    /// (seed, name), so the result is independent of device and order.
    pub fn init(config: &Qwen3Config, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let mut sd = BTreeMap::new();
        for (name, shape) in Self::param_shapes(config)? {
            // Fallible: a shape the user's config makes too large is an error
            // naming the tensor, not an abort inside libtorch.
            let alloc = |e: tch::TchError| {
                MlError::Config(format!(
                    "cannot allocate {name} {shape:?} ({} bytes): {e}",
                    shape.iter().product::<i64>().saturating_mul(4)
                ))
            };
            let t = if name.ends_with("norm.weight") {
                Tensor::f_ones(&shape, (Kind::Float, Device::Cpu)).map_err(alloc)?
            } else {
                let s = fnv1a64(format!("{seed}/{name}").as_bytes());
                // torch's CPU generator is one per process: hold it from the
                // seed to the draw, or a model built on another thread at the
                // same time (tests, in-process proxies) draws in between.
                let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
                tch::manual_seed((s >> 1) as i64);
                Tensor::f_randn(&shape, (Kind::Float, Device::Cpu))
                    .and_then(|t| t.f_mul_scalar(config.initializer_range))
                    .map_err(alloc)?
            };
            sd.insert(name, t);
        }
        Self::from_state_dict(config, sd, device)
    }

    /// Builds a model from tensors named as Hugging Face names them (any
    /// float dtype, any device; converted to f32 on `device`). Missing,
    /// unexpected or misshapen tensors are errors. A tied model accepts and
    /// ignores an `lm_head.weight`.
    pub fn from_state_dict(
        config: &Qwen3Config,
        mut sd: BTreeMap<String, Tensor>,
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        if config.tie_word_embeddings {
            sd.remove("lm_head.weight");
        }
        check_state_dict(&Self::param_shapes(config)?, &sd)?;
        let store = VarStore::new(Source::StateDict { sd, device });
        let mut model = Self::new(config, device, VarPath::root(&store))?;
        let vars = store.into_inner().vars;
        model.params = vars.into_iter().map(|(n, _, t)| (n, t)).collect();
        Ok(model)
    }

    /// Parameters (shallow handles sharing storage) in canonical order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.named_parameters().into_iter().collect()
    }

    pub fn set_requires_grad(&self, on: bool) {
        for (_, p) in &self.params {
            let _ = p.set_requires_grad(on);
        }
    }

    /// Logits in f32, `[batch, seq, vocab]`, for token ids `[batch, seq]` (i64).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let ck = self.compute_kind;
        let (cos, sin) = self.rotary.tables(ids.size()[1], ck);
        let mut x = Tensor::embedding(&self.embed_tokens.to_kind(ck), ids, -1, false, false);
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin, ck);
        }
        let x = self.norm.forward(&x);
        let head = self
            .lm_head
            .as_ref()
            .map_or(&self.embed_tokens, |h| &h.weight);
        linear(&x, head, ck).to_kind(Kind::Float)
    }

    /// Logits in f32 `[b, t, vocab]` of `ids` `[b, t]` that follow the `s`
    /// tokens in `cache`, whose keys and values are appended to it.
    ///
    /// `positions` `[b, t]` (i64): each token's RoPE position; `None`:
    /// `s..s + t` in every row. `allowed` bool `[b, 1, t, s + t]`: which keys
    /// each query may attend to (for padded rows; keep a query's own key
    /// allowed so no row is all masked); `None`: causal. On an empty cache
    /// with neither, this is [`Self::forward`], op for op.
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        positions: Option<&Tensor>,
        allowed: Option<&Tensor>,
    ) -> Tensor {
        let x = self.hidden_cached(ids, cache, positions, allowed);
        self.logits(&x)
    }

    /// As [`Self::forward_cached`], but only the last position's logits
    /// `[b, vocab]`: what greedy decoding needs, without the output
    /// projection of every prompt token.
    pub fn next_token_logits(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        positions: Option<&Tensor>,
        allowed: Option<&Tensor>,
    ) -> Tensor {
        let x = self.hidden_cached(ids, cache, positions, allowed);
        let t = x.size()[1];
        self.logits(&x.narrow(1, t - 1, 1)).squeeze_dim(1)
    }

    /// The final normed hidden states of [`Self::forward_cached`].
    fn hidden_cached(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        positions: Option<&Tensor>,
        allowed: Option<&Tensor>,
    ) -> Tensor {
        let ck = self.compute_kind;
        let (s, t) = (cache.len, ids.size()[1]);
        let (cos, sin) = match positions {
            None if s == 0 => self.rotary.tables(t, ck),
            None => {
                let p = Tensor::arange_start(s, s + t, (Kind::Int64, self.device));
                self.rotary.at(&p.unsqueeze(0), ck)
            }
            Some(p) => self.rotary.at(p, ck),
        };
        let mask = match allowed {
            Some(m) => AttnMask::Allowed(m.to_device(self.device)),
            None if s == 0 => AttnMask::Causal,
            None if t == 1 => AttnMask::All,
            None => {
                // Query i (position s + i) sees keys 0..=s + i.
                let q = Tensor::arange_start(s, s + t, (Kind::Int64, self.device));
                let k = Tensor::arange(s + t, (Kind::Int64, self.device));
                AttnMask::Allowed(
                    k.unsqueeze(0)
                        .le_tensor(&q.unsqueeze(1))
                        .view([1, 1, t, s + t]),
                )
            }
        };
        let mut x = Tensor::embedding(&self.embed_tokens.to_kind(ck), ids, -1, false, false);
        for (layer, slot) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.forward_cached(&x, (&cos, &sin), ck, slot, &mask);
        }
        cache.len += t;
        self.norm.forward(&x)
    }

    /// f32 logits of final hidden states.
    fn logits(&self, x: &Tensor) -> Tensor {
        let head = self
            .lm_head
            .as_ref()
            .map_or(&self.embed_tokens, |h| &h.weight);
        linear(x, head, self.compute_kind).to_kind(Kind::Float)
    }

    /// Mean next-token cross-entropy (f32 scalar) of `targets` given `inputs`.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.forward(inputs);
        let v = self.config.vocab_size;
        logits
            .view([-1, v])
            .cross_entropy_for_logits(&targets.reshape([-1]))
    }
}

/// Checks `sd` holds exactly the tensors of `shapes`, of those shapes and
/// floating point. A misshapen tensor is reported first, then all missing
/// ones, then unexpected ones.
fn check_state_dict(shapes: &[(String, Vec<i64>)], sd: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut missing = vec![];
    for (name, shape) in shapes {
        match sd.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != *shape => {
                return Err(MlError::StateDict(format!(
                    "{name}: shape {:?}, config wants {shape:?}",
                    t.size()
                )));
            }
            Some(t) if !t.is_floating_point() => {
                return Err(MlError::StateDict(format!(
                    "{name}: dtype {:?} is not floating point",
                    t.kind()
                )));
            }
            _ => {}
        }
    }
    if !missing.is_empty() {
        return Err(MlError::StateDict(format!(
            "missing {} tensor(s): {}",
            missing.len(),
            missing.join(", ")
        )));
    }
    if sd.len() > shapes.len() {
        let known: HashSet<_> = shapes.iter().map(|(n, _)| n).collect();
        let extra: Vec<_> = sd.keys().filter(|k| !known.contains(k)).cloned().collect();
        return Err(MlError::StateDict(format!(
            "unexpected tensor(s): {}",
            extra.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tiny_config() -> Qwen3Config {
        let mut c = Qwen3Config::new(64, 32, 64, 2, 4, 2);
        c.head_dim = 8;
        c.max_position_embeddings = 128;
        c
    }

    #[test]
    fn names_shapes_and_forward() {
        let c = tiny_config();
        let m = Qwen3::init(&c, 1, Device::Cpu).unwrap();
        let names: Vec<_> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.1.self_attn.q_norm.weight".to_string()));
        assert!(names.contains(&"lm_head.weight".to_string()));
        assert_eq!(names.len(), 1 + 2 * 11 + 2);
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
        let y = m.forward(&ids);
        assert_eq!(y.size(), vec![2, 3, 64]);
        // Causality: changing a later token does not change earlier logits.
        let ids2 = Tensor::from_slice(&[1i64, 2, 9, 4, 5, 6]).view([2, 3]);
        let y2 = m.forward(&ids2);
        assert!(
            y.narrow(1, 0, 2)
                .allclose(&y2.narrow(1, 0, 2), 0.0, 0.0, false)
        );
        assert!(
            !y.narrow(1, 2, 1)
                .allclose(&y2.narrow(1, 2, 1), 1e-6, 1e-6, false)
        );
        // Same seed, same weights; other seed, other weights.
        let m2 = Qwen3::init(&c, 1, Device::Cpu).unwrap();
        assert!(m2.forward(&ids).equal(&y));
        let m3 = Qwen3::init(&c, 2, Device::Cpu).unwrap();
        assert!(!m3.forward(&ids).equal(&y));
        assert_eq!(c.num_params(), 22720);
    }

    #[test]
    fn param_shapes_match_the_spec_and_the_parameters() {
        for (tied, kv) in [(false, 2), (true, 4)] {
            let mut c = tiny_config();
            c.tie_word_embeddings = tied;
            c.num_key_value_heads = kv;
            c.intermediate_size = 48;
            let shapes = Qwen3::param_shapes(&c).unwrap();
            assert_eq!(shapes, c.param_shapes(), "tied={tied}");
            let m = Qwen3::init(&c, 3, Device::Cpu).unwrap();
            let params: Vec<_> = m
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect();
            assert_eq!(params, shapes);
        }
    }

    #[test]
    fn rope_tables_are_cached_and_equal_a_fresh_build() {
        let c = tiny_config();
        let m = Qwen3::init(&c, 1, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let y = m.forward(&ids);
        assert!(m.forward(&ids).equal(&y));
        assert_eq!(m.rotary.cache.borrow().len(), 1);
        let (cos, sin) = m.rotary.tables(6, Kind::Float);
        let (cos2, sin2) = m.rotary.build(6);
        assert!(cos.equal(&cos2) && sin.equal(&sin2));
        for t in 1..=ROPE_CACHE_ENTRIES as i64 + 1 {
            let _ = m.forward(&ids.narrow(1, 0, t.min(6)));
            let _ = m.rotary.tables(t + 10, Kind::Float);
        }
        assert!(m.rotary.cache.borrow().len() <= ROPE_CACHE_ENTRIES);
    }

    /// Equal to `tol` relative to the largest of `b` (at least 1).
    fn close(a: &Tensor, b: &Tensor, tol: f64) {
        let d = (a - b).abs().max().double_value(&[]);
        let scale = b.abs().max().double_value(&[]).max(1.0);
        assert!(d < tol * scale, "max difference {d}, scale {scale}");
    }

    #[test]
    fn kv_cache_matches_forward() {
        let mut c = tiny_config();
        // Large weights: logits of order 1 and more, so the checks bite.
        c.initializer_range = 0.5;
        let m = Qwen3::init(&c, 1, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[5i64, 9, 2, 33, 7, 1, 60, 4, 12, 8, 3, 40]).view([2, 6]);
        let full = m.forward(&ids);
        let mut cache = KvCache::new(&m);
        assert!(cache.is_empty());
        // The prompt pass on an empty cache is `forward`, op for op.
        let first = m.forward_cached(&ids.narrow(1, 0, 3), &mut cache, None, None);
        assert!(first.equal(&m.forward(&ids.narrow(1, 0, 3))));
        // Then one token, then two at once (an offset causal mask).
        let one = m.forward_cached(&ids.narrow(1, 3, 1), &mut cache, None, None);
        close(&one, &full.narrow(1, 3, 1), 1e-5);
        let two = m.forward_cached(&ids.narrow(1, 4, 2), &mut cache, None, None);
        close(&two, &full.narrow(1, 4, 2), 1e-5);
        assert_eq!(cache.len(), 6);
        let mut cache = KvCache::new(&m);
        let last = m.next_token_logits(&ids, &mut cache, None, None);
        close(&last, &full.select(1, 5), 1e-5);
    }

    #[test]
    fn left_padding_with_positions_and_mask_matches_unpadded() {
        let mut c = tiny_config();
        c.initializer_range = 0.5;
        let m = Qwen3::init(&c, 2, Device::Cpu).unwrap();
        let long = [5i64, 9, 2, 33, 7, 1];
        let short = [60i64, 4, 12];
        // The short row left-padded by 3 (with a token that must not matter).
        let ids = Tensor::from_slice(&[&long[..], &[63, 63, 63], &short[..]].concat()).view([2, 6]);
        let pos = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 0, 0, 0, 0, 1, 2]).view([2, 6]);
        let q = Tensor::arange(6, (Kind::Int64, Device::Cpu)).view([1, 1, 6, 1]);
        let k = Tensor::arange(6, (Kind::Int64, Device::Cpu)).view([1, 1, 1, 6]);
        let pad = Tensor::from_slice(&[0i64, 3]).view([2, 1, 1, 1]);
        let allowed = k
            .le_tensor(&q)
            .logical_and(&k.ge_tensor(&pad).logical_or(&k.eq_tensor(&q)));
        let mut cache = KvCache::new(&m);
        let y = m.forward_cached(&ids, &mut cache, Some(&pos), Some(&allowed));
        close(&y.get(0), &m.forward(&ids.narrow(0, 0, 1)).get(0), 1e-5);
        let alone = m.forward(&Tensor::from_slice(&short).view([1, 3]));
        close(&y.get(1).narrow(0, 3, 3), &alone.get(0), 1e-5);
        // Neither positions nor mask: the padding shows.
        let naive = m.forward(&ids);
        let d = (naive.get(1).narrow(0, 3, 3) - alone.get(0)).abs().max();
        assert!(d.double_value(&[]) > 1e-2);
        // A next token for each row, at each row's own position.
        let next = Tensor::from_slice(&[11i64, 22]).view([2, 1]);
        let pos = Tensor::from_slice(&[6i64, 3]).view([2, 1]);
        let allowed = Tensor::arange(7, (Kind::Int64, Device::Cpu))
            .view([1, 1, 1, 7])
            .ge_tensor(&pad);
        let y = m.next_token_logits(&next, &mut cache, Some(&pos), Some(&allowed));
        let want = m.forward(&Tensor::from_slice(&[60i64, 4, 12, 22]).view([1, 4]));
        close(&y.get(1), &want.get(0).get(3), 1e-5);
        let want = m.forward(&Tensor::from_slice(&[&long[..], &[11]].concat()).view([1, 7]));
        close(&y.get(0), &want.get(0).get(6), 1e-5);
    }

    #[test]
    fn state_dict_errors() {
        let c = tiny_config();
        let m = Qwen3::init(&c, 5, Device::Cpu).unwrap();
        let mut c2 = tiny_config();
        c2.hidden_size = 48;
        let e = Qwen3::from_state_dict(&c2, m.state_dict(), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("shape"), "{e}");
        let mut sd = m.state_dict();
        sd.remove("model.norm.weight");
        let e = Qwen3::from_state_dict(&c, sd, Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("model.norm.weight"), "{e}");
        let mut sd = m.state_dict();
        sd.insert(
            "extra.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        );
        let e = Qwen3::from_state_dict(&c, sd, Device::Cpu).unwrap_err();
        assert!(
            e.to_string().contains("unexpected tensor(s): extra.weight"),
            "{e}"
        );
        let mut c3 = tiny_config();
        c3.hidden_act = "gelu".into();
        assert!(Qwen3::init(&c3, 0, Device::Cpu).is_err());
    }

    #[test]
    fn bf16_compute_close_to_f32() {
        let c = tiny_config();
        let mut m = Qwen3::init(&c, 1, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let a = m.forward(&ids);
        m.compute_kind = Kind::BFloat16;
        let b = m.forward(&ids);
        assert_eq!(b.kind(), Kind::Float);
        let d = (&a - &b).abs().max().double_value(&[]);
        assert!(d < 0.05, "{d}");
    }

    #[test]
    fn config_json_matches_hf_fields() {
        let c = Qwen3Config::qwen3_1_7b();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["architectures"][0], "Qwen3ForCausalLM");
        assert_eq!(v["model_type"], "qwen3");
        for k in [
            "head_dim",
            "rope_theta",
            "rms_norm_eps",
            "num_key_value_heads",
            "torch_dtype",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        // A real HF config with fields we do not model parses and keeps them.
        let hf = r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
          "bos_token_id":151643,"eos_token_id":151645,"head_dim":128,"hidden_act":"silu","hidden_size":2048,
          "initializer_range":0.02,"intermediate_size":6144,"max_position_embeddings":40960,"max_window_layers":28,
          "model_type":"qwen3","num_attention_heads":16,"num_hidden_layers":28,"num_key_value_heads":8,
          "rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
          "tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.51.0",
          "use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#;
        let p: Qwen3Config = serde_json::from_str(hf).unwrap();
        p.validate().unwrap();
        assert_eq!(p.extra["max_window_layers"], 28);
        assert_eq!(p.num_params(), 1_720_574_976);
    }
}
