//! Byte-level BPE tokenizers (GPT-2/Qwen style) via Hugging Face `tokenizers`,
//! saved as a `tokenizer.json` that `transformers` loads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::ml::data::{SourceSpec, SplitSpec, for_each_document};
use crate::ml::error::{MlError, Result};
use crate::ml::progress::Progress;
use crate::ml::rng::fnv1a64;
use crate::ml::util;

pub const DEFAULT_EOS: &str = "<|endoftext|>";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Special tokens; the first is the end-of-text / document separator.
    #[serde(default = "default_specials")]
    pub special_tokens: Vec<String>,
    #[serde(default = "default_min_freq")]
    pub min_frequency: u64,
    /// Which documents to learn from (usually the train part).
    #[serde(default)]
    pub split: SplitSpec,
    /// Stop reading after this many bytes of text (0 = all), to bound time
    /// and memory on large corpora.
    #[serde(default)]
    pub max_bytes: u64,
}

fn default_vocab() -> usize {
    8192
}
fn default_specials() -> Vec<String> {
    vec![DEFAULT_EOS.into()]
}
fn default_min_freq() -> u64 {
    2
}

impl Default for TokenizerSpec {
    fn default() -> Self {
        Self {
            vocab_size: default_vocab(),
            special_tokens: default_specials(),
            min_frequency: default_min_freq(),
            split: SplitSpec::default(),
            max_bytes: 0,
        }
    }
}

/// A loaded tokenizer plus what the library needs from it.
#[derive(Clone)]
pub struct Tok {
    pub inner: Tokenizer,
    eos: u32,
    hash: String,
    pub path: Option<PathBuf>,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok")
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .field("hash", &self.hash)
            .finish()
    }
}

fn terr(e: impl std::fmt::Display) -> MlError {
    MlError::TokenizerOp(e.to_string())
}

impl Tok {
    fn from_tokenizer(inner: Tokenizer, path: Option<PathBuf>) -> Result<Self> {
        let json = inner.to_string(false).map_err(terr)?;
        // EOS: the usual names, else the first special token.
        let eos = [DEFAULT_EOS, "</s>", "<eos>", "<|im_end|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .or_else(|| {
                inner
                    .get_added_tokens_decoder()
                    .iter()
                    .filter(|(_, t)| t.special)
                    .map(|(id, _)| *id)
                    .min()
            })
            .ok_or_else(|| MlError::Tokenizer {
                path: path.clone().unwrap_or_default(),
                msg: "no end-of-text special token".into(),
            })?;
        Ok(Self {
            inner,
            eos,
            hash: format!("fnv1a64:{:016x}", fnv1a64(json.as_bytes())),
            path,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| MlError::Tokenizer {
            path: path.into(),
            msg: e.to_string(),
        })?;
        Self::from_tokenizer(inner, Some(path.into()))
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Stable hash of the serialized tokenizer (recorded in shards so a shard
    /// is never used with another tokenizer).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(terr)?
            .get_ids()
            .to_vec())
    }

    /// Encodes in parallel; returns (ids, UTF-8 byte length) per text, in order.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<(Vec<u32>, usize)>> {
        let lens: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        let encs = self.inner.encode_batch(texts, false).map_err(terr)?;
        Ok(encs
            .into_iter()
            .zip(lens)
            .map(|(e, n)| (e.get_ids().to_vec(), n))
            .collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(terr)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save_to_dir(&self, dir: &Path) -> Result<()> {
        let json = self.inner.to_string(false).map_err(terr)?;
        util::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        self.write_tokenizer_config(dir)
    }

    /// A minimal `tokenizer_config.json` so `AutoTokenizer` loads the
    /// directory and knows the EOS token.
    pub fn write_tokenizer_config(&self, dir: &Path) -> Result<()> {
        let eos = self.inner.id_to_token(self.eos).unwrap_or_default();
        let cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": eos,
            "pad_token": eos,
            "model_max_length": 1_000_000_000u64,
        });
        util::write_json_atomic(&dir.join("tokenizer_config.json"), &cfg)
    }
}

/// Trains a byte-level BPE on the documents of `sources` and writes it to
/// `out` (a tokenizer.json path). Deterministic for the same input.
pub fn train_tokenizer(
    sources: &[SourceSpec],
    spec: &TokenizerSpec,
    out: &Path,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<Tok> {
    if spec.special_tokens.is_empty() {
        return Err(MlError::Spec(
            "tokenizer needs at least one special token".into(),
        ));
    }
    if spec.vocab_size < 256 + spec.special_tokens.len() {
        return Err(MlError::Spec(format!(
            "vocab_size {} is smaller than the 256 bytes plus special tokens",
            spec.vocab_size
        )));
    }
    let mut texts = vec![];
    let mut bytes = 0u64;
    for src in sources {
        let r = for_each_document(src, &mut |d| {
            if cancel.load(Ordering::Relaxed) {
                return Err(MlError::Cancelled);
            }
            if spec.max_bytes > 0 && bytes >= spec.max_bytes {
                // Sentinel to stop early; mapped back to Ok below.
                return Err(MlError::Spec("__enough__".into()));
            }
            if spec.split.keeps(&d.id) {
                bytes += d.text.len() as u64;
                texts.push(d.text);
            }
            Ok(())
        });
        match r {
            Err(MlError::Spec(s)) if s == "__enough__" => break,
            r => r?,
        }
    }
    progress(&Progress {
        stage: "tokenizer",
        current: texts.len() as u64,
        total: texts.len() as u64,
        unit: "documents",
        message: format!("training BPE on {bytes} bytes"),
    });
    let specials: Vec<AddedToken> = spec
        .special_tokens
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(spec.vocab_size)
        .min_frequency(spec.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tk = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(terr)?;
    tk.train(&mut trainer, texts.into_iter()).map_err(terr)?;
    let json = tk.to_string(false).map_err(terr)?;
    let tokenizer: Tokenizer = json.parse().map_err(terr)?;
    let tok = Tok::from_tokenizer(tokenizer, Some(out.into()))?;
    util::write_atomic(out, json.as_bytes())?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::progress::no_progress;

    #[test]
    fn trains_roundtrips_and_is_deterministic() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("d.jsonl");
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&format!(
                "{{\"id\":\"{i}\",\"text\":\"The quick brown fox {i} jumps over the lazy dog. Ünïcode ✓\"}}\n"
            ));
        }
        std::fs::write(&src, s).unwrap();
        let spec = TokenizerSpec {
            vocab_size: 320,
            ..Default::default()
        };
        let no = AtomicBool::new(false);
        let a = train_tokenizer(
            &[SourceSpec::new(&src)],
            &spec,
            &t.path().join("a.json"),
            &no_progress,
            &no,
        )
        .unwrap();
        let b = train_tokenizer(
            &[SourceSpec::new(&src)],
            &spec,
            &t.path().join("b.json"),
            &no_progress,
            &no,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(t.path().join("a.json")).unwrap(),
            std::fs::read(t.path().join("b.json")).unwrap()
        );
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.vocab_size(), 320);
        assert_eq!(a.eos_id(), 0);
        let text = "The lazy fox ✓ <|endoftext|> new";
        let ids = a.encode(text).unwrap();
        assert!(ids.contains(&a.eos_id()));
        assert_eq!(a.decode(&ids).unwrap(), text);
        let l = Tok::load(&t.path().join("a.json")).unwrap();
        assert_eq!(l.encode(text).unwrap(), ids);
        assert!(Tok::load(&t.path().join("missing.json")).is_err());
        std::fs::write(t.path().join("bad.json"), "{").unwrap();
        let e = Tok::load(&t.path().join("bad.json")).unwrap_err();
        assert!(e.to_string().contains("bad.json"), "{e}");
    }
}
