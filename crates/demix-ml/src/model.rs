//! Qwen3 decoder-only transformer on tch, with Hugging Face parameter names
//! and checkpoint layout (`config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json`).
//!
//! Parameters are plain tensors kept in f32 ("master weights"); a compute
//! kind (f32, or bf16 on CUDA) casts them per use, which is what autocast
//! does for matmuls, while norms, RoPE tables and the loss stay in f32.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

pub use demix_spec::model::Qwen3Config;

use crate::error::{IoContext, MlError, Result};
use demix_spec::rng::fnv1a64;
use crate::util;

pub(crate) fn storage_kind(s: &str) -> Result<Kind> {
    match s {
        "float32" => Ok(Kind::Float),
        "bfloat16" => Ok(Kind::BFloat16),
        "float16" => Ok(Kind::Half),
        o => Err(MlError::Config(format!(
            "torch_dtype '{o}' unsupported (float32, bfloat16, float16)"
        ))),
    }
}

struct Layer {
    ln1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    ln2: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

pub struct Qwen3 {
    pub config: Qwen3Config,
    pub device: Device,
    /// Kind of activations and matmuls: Float, or BFloat16 for mixed precision.
    pub compute_kind: Kind,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Option<Tensor>,
}

impl std::fmt::Debug for Qwen3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish()
    }
}

/// HF Qwen3RMSNorm: in f32, then cast back, then scale.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.square().mean_dim(-1, true, Kind::Float);
    let y = (xf * (var + eps).rsqrt()).to_kind(kind);
    y * w.to_kind(kind)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

impl Qwen3 {
    /// Fresh weights: normal(0, initializer_range) for matrices, ones for
    /// norms. Each tensor is drawn on the CPU from torch's generator seeded by
    /// (seed, name), so the result is independent of device and order.
    pub fn init(config: &Qwen3Config, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let mut sd = BTreeMap::new();
        for (name, shape) in config.param_shapes() {
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
        let shapes = config.param_shapes();
        let mut missing = vec![];
        for (name, shape) in &shapes {
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
            let known: std::collections::HashSet<_> = shapes.iter().map(|(n, _)| n).collect();
            let extra: Vec<_> = sd.keys().filter(|k| !known.contains(k)).cloned().collect();
            return Err(MlError::StateDict(format!(
                "unexpected tensor(s): {}",
                extra.join(", ")
            )));
        }
        let mut take = |n: &str| -> Result<Tensor> {
            // Present: checked above.
            let t = sd
                .remove(n)
                .ok_or_else(|| MlError::StateDict(format!("missing tensor {n}")))?;
            t.f_to_device(device)
                .and_then(|t| t.f_to_kind(Kind::Float))
                .map(|t| t.detach())
                .map_err(|e| MlError::StateDict(format!("{n}: cannot place it on {device:?}: {e}")))
        };
        let embed = take("model.embed_tokens.weight")?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    ln1: take(&format!("{p}.input_layernorm.weight"))?,
                    q: take(&format!("{p}.self_attn.q_proj.weight"))?,
                    k: take(&format!("{p}.self_attn.k_proj.weight"))?,
                    v: take(&format!("{p}.self_attn.v_proj.weight"))?,
                    o: take(&format!("{p}.self_attn.o_proj.weight"))?,
                    q_norm: take(&format!("{p}.self_attn.q_norm.weight"))?,
                    k_norm: take(&format!("{p}.self_attn.k_norm.weight"))?,
                    ln2: take(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate: take(&format!("{p}.mlp.gate_proj.weight"))?,
                    up: take(&format!("{p}.mlp.up_proj.weight"))?,
                    down: take(&format!("{p}.mlp.down_proj.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = take("model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight")?)
        };
        Ok(Self {
            config: config.clone(),
            device,
            compute_kind: Kind::Float,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Parameters (shallow handles sharing storage) in canonical order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed.shallow_clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            for (n, t) in [
                ("input_layernorm", &l.ln1),
                ("self_attn.q_proj", &l.q),
                ("self_attn.k_proj", &l.k),
                ("self_attn.v_proj", &l.v),
                ("self_attn.o_proj", &l.o),
                ("self_attn.q_norm", &l.q_norm),
                ("self_attn.k_norm", &l.k_norm),
                ("post_attention_layernorm", &l.ln2),
                ("mlp.gate_proj", &l.gate),
                ("mlp.up_proj", &l.up),
                ("mlp.down_proj", &l.down),
            ] {
                v.push((format!("{p}.{n}.weight"), t.shallow_clone()));
            }
        }
        v.push(("model.norm.weight".into(), self.norm.shallow_clone()));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".into(), h.shallow_clone()));
        }
        v
    }

    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.named_parameters().into_iter().collect()
    }

    pub fn set_requires_grad(&self, on: bool) {
        for (_, p) in self.named_parameters() {
            let _ = p.set_requires_grad(on);
        }
    }

    /// Logits in f32, `[batch, seq, vocab]`, for token ids `[batch, seq]` (i64).
    // `x += y` on tch tensors is an in-place add, which would break autograd
    // (x is saved for the norms' backward), hence `x = x + y`.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let c = &self.config;
        let ck = self.compute_kind;
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let (h, kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let eps = c.rms_norm_eps;
        let (cos, sin) = self.rope(t);
        let (cos, sin) = (cos.to_kind(ck), sin.to_kind(ck));
        let lin = |x: &Tensor, w: &Tensor| x.linear::<&Tensor>(&w.to_kind(ck), None);
        let mut x = Tensor::embedding(&self.embed.to_kind(ck), ids, -1, false, false);
        for l in &self.layers {
            let hs = rms_norm(&x, &l.ln1, eps);
            let q = rms_norm(&lin(&hs, &l.q).view([b, t, h, hd]), &l.q_norm, eps).transpose(1, 2);
            let k = rms_norm(&lin(&hs, &l.k).view([b, t, kv, hd]), &l.k_norm, eps).transpose(1, 2);
            let v = lin(&hs, &l.v).view([b, t, kv, hd]).transpose(1, 2);
            let q = &q * &cos + rotate_half(&q) * &sin;
            let mut k = &k * &cos + rotate_half(&k) * &sin;
            let mut v = v;
            if kv < h {
                // HF repeat_kv: each kv head serves h/kv consecutive q heads.
                let rep = h / kv;
                k = k
                    .unsqueeze(2)
                    .expand([b, kv, rep, t, hd], false)
                    .reshape([b, h, t, hd]);
                v = v
                    .unsqueeze(2)
                    .expand([b, kv, rep, t, hd], false)
                    .reshape([b, h, t, hd]);
            }
            let a = Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, None, false,
            );
            let a = a.transpose(1, 2).reshape([b, t, h * hd]);
            x = x + lin(&a, &l.o);
            let hs = rms_norm(&x, &l.ln2, eps);
            let m = lin(&hs, &l.gate).silu() * lin(&hs, &l.up);
            x = x + lin(&m, &l.down);
        }
        let x = rms_norm(&x, &self.norm, eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        lin(&x, head).to_kind(Kind::Float)
    }

    /// cos/sin tables `[t, head_dim]` in f32, as HF's Qwen3RotaryEmbedding.
    fn rope(&self, t: i64) -> (Tensor, Tensor) {
        let hd = self.config.head_dim;
        let opts = (Kind::Float, self.device);
        let exps = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, self.device))
            .to_kind(Kind::Float)
            / hd as f64;
        let inv_freq = Tensor::from(self.config.rope_theta as f32)
            .to_device(self.device)
            .pow(&exps)
            .reciprocal();
        let pos = Tensor::arange(t, opts);
        let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    /// Mean next-token cross-entropy (f32 scalar) of `targets` given `inputs`.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.forward(inputs);
        let v = self.config.vocab_size;
        logits
            .view([-1, v])
            .cross_entropy_for_logits(&targets.reshape([-1]))
    }

    /// Saves a Hugging Face checkpoint directory atomically: config.json,
    /// model.safetensors (in `config.torch_dtype`), and the tokenizer files.
    pub fn save(&self, dir: &Path, tokenizer_json: Option<&Path>) -> Result<()> {
        save_checkpoint(&self.config, &self.named_parameters(), dir, tokenizer_json)
    }

    /// Loads a checkpoint directory onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = load_config(dir)?;
        let sd = load_checkpoint_tensors(dir, Device::Cpu)?;
        Self::from_state_dict(&config, sd, device)
            .map_err(|e| MlError::checkpoint(dir, e.to_string()))
    }
}

pub fn load_config(dir: &Path) -> Result<Qwen3Config> {
    let p = dir.join("config.json");
    let c: Qwen3Config = util::read_json(&p)?;
    c.validate().map_err(|e| MlError::checkpoint(&p, e))?;
    Ok(c)
}

/// Writes a checkpoint directory from named tensors (e.g. a merged state dict).
pub fn save_checkpoint(
    config: &Qwen3Config,
    tensors: &[(String, Tensor)],
    dir: &Path,
    tokenizer_json: Option<&Path>,
) -> Result<()> {
    config.validate()?;
    let kind = storage_kind(&config.torch_dtype)?;
    util::write_dir_atomic(dir, |tmp| {
        util::write_json_atomic(&tmp.join("config.json"), config)?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let named: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(n, _)| !(config.tie_word_embeddings && n == "lm_head.weight"))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        save_safetensors(
            &tmp.join("model.safetensors"),
            &named,
            Some(kind),
            Some(meta),
        )?;
        if let Some(tj) = tokenizer_json {
            // Copied byte for byte (its hash ties shards to it), plus a
            // tokenizer_config.json so AutoTokenizer loads the directory.
            std::fs::copy(tj, tmp.join("tokenizer.json")).with_path(tj)?;
            crate::tokenizer::Tok::load(tj)?.write_tokenizer_config(tmp)?;
        }
        Ok(())
    })
}

/// A tensor written lazily: converted and copied to host memory only when the
/// safetensors writer asks for its bytes, so saving streams tensor by tensor.
struct LazyView {
    t: Tensor,
    kind: Kind,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl View for &LazyView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let t = self
            .t
            .detach()
            .to_kind(self.kind)
            .to_device(Device::Cpu)
            .contiguous();
        let n = t.numel();
        let mut buf = vec![0u8; self.data_len()];
        t.copy_data_u8(&mut buf, n);
        Cow::Owned(buf)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.kind.elt_size_in_bytes()
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        k => return Err(MlError::StateDict(format!("cannot save dtype {k:?}"))),
    })
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

/// Writes tensors to a safetensors file (temp file + rename), converting each
/// to `kind` if given.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    kind: Option<Kind>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        let k = kind.unwrap_or_else(|| t.kind());
        views.push((
            n.clone(),
            LazyView {
                t: t.shallow_clone(),
                kind: k,
                dtype: dtype_of(k)?,
                shape: t.size().iter().map(|&s| s as usize).collect(),
            },
        ));
    }
    let tmp = util::tmp_sibling(path);
    safetensors::tensor::serialize_to_file(views.iter().map(|(n, v)| (n, v)), &metadata, &tmp)
        .map_err(|e| MlError::checkpoint(path, e))?;
    std::fs::rename(&tmp, path).with_path(path)
}

/// Reads all tensors of a safetensors file (dtype kept) onto `device`, plus
/// its metadata.
pub fn load_safetensors(
    path: &Path,
    device: Device,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let f = std::fs::File::open(path).with_path(path)?;
    // SAFETY: read-only map of a file we do not modify while it is mapped.
    let mmap = unsafe { memmap2::Mmap::map(&f) }.with_path(path)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| MlError::checkpoint(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| MlError::checkpoint(path, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            MlError::checkpoint(
                path,
                format!("{name}: unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?.to_device(device);
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// All tensors of a checkpoint directory: `model.safetensors`, or the files
/// listed by `model.safetensors.index.json`.
pub fn load_checkpoint_tensors(dir: &Path, device: Device) -> Result<BTreeMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(load_safetensors(&single, device)?.0);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(MlError::checkpoint(
            dir,
            "neither model.safetensors nor model.safetensors.index.json",
        ));
    }
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let idx: Index = util::read_json(&index)?;
    let files: std::collections::BTreeSet<PathBuf> =
        idx.weight_map.values().map(|f| dir.join(f)).collect();
    let mut out = BTreeMap::new();
    for f in files {
        let (t, _) = load_safetensors(&f, device)?;
        out.extend(t);
    }
    for name in idx.weight_map.keys() {
        if !out.contains_key(name) {
            return Err(MlError::checkpoint(
                &index,
                format!("{name} listed but not found in its file"),
            ));
        }
    }
    Ok(out)
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
    fn save_load_identical_logits_and_errors() {
        let t = tempfile::tempdir().unwrap();
        for tied in [false, true] {
            let mut c = tiny_config();
            c.tie_word_embeddings = tied;
            let m = Qwen3::init(&c, 5, Device::Cpu).unwrap();
            let dir = t.path().join(format!("ck{tied}"));
            m.save(&dir, None).unwrap();
            let l = Qwen3::load(&dir, Device::Cpu).unwrap();
            let ids = Tensor::from_slice(&[3i64, 1, 4, 1, 5]).view([1, 5]);
            assert!(m.forward(&ids).equal(&l.forward(&ids)));
            let (sd, meta) = load_safetensors(&dir.join("model.safetensors"), Device::Cpu).unwrap();
            assert_eq!(sd.contains_key("lm_head.weight"), !tied);
            assert_eq!(meta["format"], "pt");
        }
        // Sharded checkpoint.
        let c = tiny_config();
        let m = Qwen3::init(&c, 5, Device::Cpu).unwrap();
        let dir = t.path().join("sharded");
        std::fs::create_dir_all(&dir).unwrap();
        util::write_json_atomic(&dir.join("config.json"), &c).unwrap();
        let params = m.named_parameters();
        let (a, b) = params.split_at(10);
        save_safetensors(&dir.join("model-00001-of-00002.safetensors"), a, None, None).unwrap();
        save_safetensors(&dir.join("model-00002-of-00002.safetensors"), b, None, None).unwrap();
        let mut wm = serde_json::Map::new();
        for (n, _) in a {
            wm.insert(n.clone(), "model-00001-of-00002.safetensors".into());
        }
        for (n, _) in b {
            wm.insert(n.clone(), "model-00002-of-00002.safetensors".into());
        }
        util::write_json_atomic(
            &dir.join("model.safetensors.index.json"),
            &serde_json::json!({"metadata": {}, "weight_map": wm}),
        )
        .unwrap();
        let l = Qwen3::load(&dir, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[3i64, 1, 4]).view([1, 3]);
        assert!(m.forward(&ids).equal(&l.forward(&ids)));

        // Corrupt file, wrong shapes, missing file: errors that name the file.
        let dir = t.path().join("ckfalse");
        std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
        let e = Qwen3::load(&dir, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
        let mut c2 = tiny_config();
        c2.hidden_size = 48;
        let e = Qwen3::from_state_dict(&c2, m.state_dict(), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("shape"), "{e}");
        let mut sd = m.state_dict();
        sd.remove("model.norm.weight");
        let e = Qwen3::from_state_dict(&c, sd, Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("model.norm.weight"), "{e}");
        let e = Qwen3::load(&t.path().join("nope"), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
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
