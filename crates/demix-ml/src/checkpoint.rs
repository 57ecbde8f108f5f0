//! Hugging Face checkpoint directories: `config.json`, `model.safetensors`
//! (or shards listed by `model.safetensors.index.json`) and the tokenizer
//! files, plus plain safetensors files of named tensors (training state).
//!
//! Reading and writing the safetensors format is the merge library's
//! ([`demix_mix::checkpoint`]: memory-mapped, sharded); this module converts
//! between its bytes and tch tensors.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use demix_mix::checkpoint::{
    Checkpoint, Dtype, INDEX_FILE, MODEL_FILE, SafetensorsWriter, TensorSpec,
};
use demix_spec::card::{GENERATION_CONFIG, generation_config};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{IoContext, MlError, Result};
use crate::model::{Qwen3, Qwen3Config};
use crate::util;

/// The tch kind of a `torch_dtype` that checkpoints may be stored in.
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

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::Bf16,
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
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

impl Qwen3 {
    /// Saves a Hugging Face checkpoint directory atomically: config.json,
    /// generation_config.json, model.safetensors (in `config.torch_dtype`),
    /// and the tokenizer files (see [`save_checkpoint`]).
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

/// Reads and validates a checkpoint directory's `config.json`.
pub fn load_config(dir: &Path) -> Result<Qwen3Config> {
    let p = dir.join("config.json");
    let c: Qwen3Config = util::read_json(&p)?;
    c.validate().map_err(|e| MlError::checkpoint(&p, e))?;
    Ok(c)
}

/// Writes a checkpoint directory from named tensors (e.g. a merged state
/// dict): config.json, generation_config.json, the weights, and with a
/// tokenizer its files. The config's `bos_token_id` and `eos_token_id` are
/// the tokenizer's end-of-text token unless they already name one of its
/// special tokens ([`Qwen3Config::set_special_ids`]); without a tokenizer they
/// stay as given (nothing says which ids they are), `null` included.
pub fn save_checkpoint(
    config: &Qwen3Config,
    tensors: &[(String, Tensor)],
    dir: &Path,
    tokenizer_json: Option<&Path>,
) -> Result<()> {
    config.validate()?;
    let kind = storage_kind(&config.torch_dtype)?;
    let tok = tokenizer_json
        .map(crate::tokenizer::Tok::load)
        .transpose()?;
    let mut config = config.clone();
    if let Some(tok) = &tok {
        tok.set_special_ids(&mut config);
    }
    let config = &config;
    util::write_dir_atomic(dir, |tmp| {
        util::write_json_atomic(&tmp.join("config.json"), config)?;
        util::write_json_atomic(
            &tmp.join(GENERATION_CONFIG),
            &generation_config(config.bos_token_id, config.eos_token_id),
        )?;
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        // A tied model's output projection is its embedding: not stored twice.
        let named: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(n, _)| !(config.tie_word_embeddings && n == "lm_head.weight"))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        save_safetensors(&tmp.join(MODEL_FILE), &named, Some(kind), &meta)?;
        if let (Some(tj), Some(tok)) = (tokenizer_json, &tok) {
            // Copied byte for byte (its hash ties shards to it), plus a
            // tokenizer_config.json so AutoTokenizer loads the directory.
            std::fs::copy(tj, tmp.join("tokenizer.json")).with_path(tj)?;
            tok.write_tokenizer_config(tmp)?;
        }
        Ok(())
    })
}

/// Writes tensors to a safetensors file (temp file + rename), converting each
/// to `kind` if given, with `metadata` as its `__metadata__` (none if empty).
/// Tensors are converted and copied to host memory one at a time, so saving
/// streams.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    kind: Option<Kind>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    // The writer wants the tensors in name order (the layout the reference
    // writer produces for tensors of one dtype).
    let mut sorted: Vec<(&String, &Tensor, Kind)> = tensors
        .iter()
        .map(|(n, t)| (n, t, kind.unwrap_or_else(|| t.kind())))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let specs = sorted
        .iter()
        .map(|(n, t, k)| {
            Ok(TensorSpec {
                name: n.to_string(),
                dtype: dtype_of(*k)?,
                shape: t.size().iter().map(|&s| s as usize).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut w = SafetensorsWriter::create(path, specs, metadata)?;
    let mut buf = vec![];
    for (name, t, k) in sorted {
        let host = t
            .detach()
            .f_to_kind(k)
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .map_err(|e| MlError::checkpoint(path, format!("{name}: {e}")))?;
        let n = host.numel();
        buf.resize(n * k.elt_size_in_bytes(), 0);
        if n > 0 {
            host.f_copy_data_u8(&mut buf, n)
                .map_err(|e| MlError::checkpoint(path, format!("{name}: {e}")))?;
        }
        w.write_bytes(name, &buf)?;
    }
    w.finish()?;
    Ok(())
}

/// Every tensor of `ck` (dtype kept) on `device`.
fn read_tensors(ck: &Checkpoint, device: Device) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for name in ck.names() {
        let (Some(info), Some(bytes), Some(file)) =
            (ck.info(name), ck.bytes(name), ck.file_of(name))
        else {
            continue; // `names` lists only stored tensors
        };
        let kind = kind_of(info.dtype).ok_or_else(|| {
            MlError::checkpoint(file, format!("{name}: unsupported dtype {}", info.dtype))
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&s| s as i64).collect();
        let t = Tensor::f_from_data_size(bytes, &shape, kind)?.f_to_device(device)?;
        // Copied: the mapped pages need not stay resident.
        ck.release(name);
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// The `__metadata__` strings of a safetensors file, which the checkpoint
/// reader does not keep. `path` must have opened as a [`Checkpoint`] (so its
/// header length is sane).
fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(default, rename = "__metadata__")]
        metadata: Option<BTreeMap<String, String>>,
    }
    let mut f = std::fs::File::open(path).with_path(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_path(path)?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header).with_path(path)?;
    let h: Header = serde_json::from_slice(&header)
        .map_err(|e| MlError::checkpoint(path, format!("bad safetensors header: {e}")))?;
    Ok(h.metadata.unwrap_or_default())
}

/// Reads all tensors of a safetensors file (dtype kept) onto `device`, plus
/// its metadata.
pub fn load_safetensors(
    path: &Path,
    device: Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let ck = Checkpoint::open(path)?;
    let tensors = read_tensors(&ck, device)?;
    Ok((tensors, read_metadata(path)?))
}

/// All tensors of a checkpoint directory: `model.safetensors`, or the files
/// listed by `model.safetensors.index.json`.
pub fn load_checkpoint_tensors(dir: &Path, device: Device) -> Result<BTreeMap<String, Tensor>> {
    // The single file wins over an index when both are there.
    let single = dir.join(MODEL_FILE);
    let ck = if single.exists() {
        Checkpoint::open(&single)?
    } else if dir.join(INDEX_FILE).exists() {
        Checkpoint::open(dir)?
    } else {
        return Err(MlError::checkpoint(
            dir,
            format!("neither {MODEL_FILE} nor {INDEX_FILE}"),
        ));
    };
    read_tensors(&ck, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_config;

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
            let (sd, meta) = load_safetensors(&dir.join(MODEL_FILE), Device::Cpu).unwrap();
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
        let none = BTreeMap::new();
        let shard = |i| format!("model-0000{i}-of-00002.safetensors");
        save_safetensors(&dir.join(shard(1)), a, None, &none).unwrap();
        save_safetensors(&dir.join(shard(2)), b, None, &none).unwrap();
        let mut wm = serde_json::Map::new();
        for (n, _) in a {
            wm.insert(n.clone(), shard(1).into());
        }
        for (n, _) in b {
            wm.insert(n.clone(), shard(2).into());
        }
        util::write_json_atomic(
            &dir.join(INDEX_FILE),
            &serde_json::json!({"metadata": {}, "weight_map": wm}),
        )
        .unwrap();
        let l = Qwen3::load(&dir, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[3i64, 1, 4]).view([1, 3]);
        assert!(m.forward(&ids).equal(&l.forward(&ids)));
        let (_, meta) = load_safetensors(&dir.join(shard(1)), Device::Cpu).unwrap();
        assert!(meta.is_empty());

        // Corrupt file, missing files: errors that name the file.
        let dir = t.path().join("ckfalse");
        std::fs::write(dir.join(MODEL_FILE), b"garbage").unwrap();
        let e = Qwen3::load(&dir, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
        std::fs::remove_file(dir.join(MODEL_FILE)).unwrap();
        let e = Qwen3::load(&dir, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("neither model.safetensors nor"), "{e}");
        let e = Qwen3::load(&t.path().join("nope"), Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    /// A checkpoint saved with a tokenizer says its end-of-text id as bos and
    /// eos (config.json and generation_config.json); one without says what
    /// its config says.
    #[test]
    fn saves_the_tokenizers_special_ids() {
        use crate::data::SourceSpec;
        use crate::tokenizer::{TokenizerSource, TokenizerSpec, train_tokenizer};
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("d.jsonl");
        let docs: String = (0..20)
            .map(|i| format!("{{\"id\":\"{i}\",\"text\":\"a b c {i}\"}}\n"))
            .collect();
        std::fs::write(&src, docs).unwrap();
        let spec = TokenizerSpec {
            vocab_size: 260,
            special_tokens: vec!["<pad>".into(), "<|endoftext|>".into()],
            ..Default::default()
        };
        let tj = t.path().join("tokenizer.json");
        let one = [TokenizerSource::all("d", vec![SourceSpec::new(&src)])];
        let no = std::sync::atomic::AtomicBool::new(false);
        let (tok, _) =
            train_tokenizer(&one, &spec, &tj, &crate::progress::no_progress, &no).unwrap();
        assert_eq!(tok.eos_id(), 1);
        let mut c = tiny_config();
        c.vocab_size = tok.vocab_size() as i64;
        let m = Qwen3::init(&c, 3, Device::Cpu).unwrap();
        let read = |dir: &Path, f: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap()
        };
        let ids = |dir: &Path| {
            let (c, g) = (read(dir, "config.json"), read(dir, GENERATION_CONFIG));
            assert_eq!(c["bos_token_id"], g["bos_token_id"]);
            assert_eq!(c["eos_token_id"], g["eos_token_id"]);
            (c["bos_token_id"].clone(), c["eos_token_id"].clone())
        };
        // A fresh config (ids null): the end-of-text token is both.
        let a = t.path().join("a");
        m.save(&a, Some(&tj)).unwrap();
        assert_eq!(ids(&a), (1.into(), 1.into()));
        assert_eq!(
            read(&a, GENERATION_CONFIG),
            serde_json::json!({"bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 1})
        );
        assert_eq!(
            read(&a, "tokenizer_config.json")["bos_token"],
            "<|endoftext|>"
        );
        // The same save, the same bytes.
        let b = t.path().join("b");
        m.save(&b, Some(&tj)).unwrap();
        for f in ["config.json", GENERATION_CONFIG, "tokenizer_config.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap()
            );
        }
        // An id naming another special token of this tokenizer stays; another
        // tokenizer's id (Qwen3's, out of this vocabulary) does not.
        let mut c2 = c.clone();
        c2.bos_token_id = Some(151643);
        c2.eos_token_id = Some(0);
        let d = t.path().join("d");
        save_checkpoint(&c2, &m.named_parameters(), &d, Some(&tj)).unwrap();
        assert_eq!(ids(&d), (1.into(), 0.into()));
        // Without a tokenizer nothing says which ids: as given, null included.
        let e = t.path().join("e");
        m.save(&e, None).unwrap();
        assert_eq!(ids(&e), (serde_json::Value::Null, serde_json::Value::Null));
        assert_eq!(read(&e, GENERATION_CONFIG), serde_json::json!({}));
        save_checkpoint(&c2, &m.named_parameters(), &e, None).unwrap();
        assert_eq!(ids(&e), (151643.into(), 0.into()));
    }

    /// Files stay byte for byte what the `safetensors` crate (the reference
    /// writer, used before) writes for tensors of one dtype.
    #[test]
    fn writes_what_the_reference_writer_writes() {
        use safetensors::tensor::{Dtype as StDtype, TensorView};
        let t = tempfile::tempdir().unwrap();
        let m = Qwen3::init(&tiny_config(), 2, Device::Cpu).unwrap();
        for (kind, st) in [(Kind::Float, StDtype::F32), (Kind::BFloat16, StDtype::BF16)] {
            let p = t.path().join(format!("{kind:?}.safetensors"));
            let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            save_safetensors(&p, &m.named_parameters(), Some(kind), &meta).unwrap();
            let data: Vec<(String, Vec<u8>, Vec<usize>)> = m
                .named_parameters()
                .into_iter()
                .map(|(n, x)| {
                    let x = x.to_kind(kind).contiguous();
                    let mut b = vec![0u8; x.numel() * kind.elt_size_in_bytes()];
                    x.copy_data_u8(&mut b, x.numel());
                    (n, b, x.size().iter().map(|&s| s as usize).collect())
                })
                .collect();
            let views = data
                .iter()
                .map(|(n, b, s)| (n.clone(), TensorView::new(st, s.clone(), b).unwrap()));
            let meta = Some(meta.into_iter().collect());
            let want = safetensors::tensor::serialize(views, &meta).unwrap();
            assert!(std::fs::read(&p).unwrap() == want, "{kind:?}");
        }
    }
}
