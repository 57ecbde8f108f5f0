//! Byte-level BPE tokenizers (GPT-2/Qwen style) via Hugging Face `tokenizers`,
//! saved as a `tokenizer.json` that `transformers` loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::data::{SourceSpec, SplitSpec, for_each_document};
use crate::error::{MlError, Result};
use crate::progress::Progress;
use crate::util;
use demix_spec::rng::fnv1a64;

use demix_spec::card::EOS_NAMES;
pub use demix_spec::tokenizer::{
    DEFAULT_EOS, DatasetSample, TokenizerConfig as TokenizerSpec, TokenizerSample,
};

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
        // EOS: the usual names, else the first special token (the rule
        // `TokenizerSpecials` applies to a tokenizer.json).
        let eos = EOS_NAMES
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

    /// Whether `id` is one of the tokenizer's special (added) tokens.
    pub fn is_special(&self, id: i64) -> bool {
        u32::try_from(id).is_ok_and(|id| {
            self.inner
                .get_added_tokens_decoder()
                .get(&id)
                .is_some_and(|t| t.special)
        })
    }

    /// Sets a model config's `bos_token_id` and `eos_token_id` for this
    /// tokenizer: its end-of-text token, which starts every document of a
    /// shard and so ends the one before (see
    /// [`demix_spec::model::Qwen3Config::set_special_ids`]).
    pub fn set_special_ids(&self, config: &mut demix_spec::model::Qwen3Config) {
        config.set_special_ids(self.eos, &|id| self.is_special(id));
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
    /// directory and knows the end-of-text token, which is also what starts
    /// a text (as the model config's `bos_token_id` says; nothing adds it).
    pub fn write_tokenizer_config(&self, dir: &Path) -> Result<()> {
        let eos = self.inner.id_to_token(self.eos).unwrap_or_default();
        let cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eos,
            "eos_token": eos,
            "pad_token": eos,
            "model_max_length": 1_000_000_000u64,
        });
        util::write_json_atomic(&dir.join("tokenizer_config.json"), &cfg)
    }
}

/// One dataset a tokenizer learns from.
#[derive(Debug, Clone)]
pub struct TokenizerSource {
    pub name: String,
    pub sources: Vec<SourceSpec>,
    /// Which of its documents count (its training part).
    pub split: SplitSpec,
    /// Its share of the byte budget, relative to the other datasets' shares.
    pub share: f64,
}

impl TokenizerSource {
    /// A dataset with share 1 whose documents all count.
    pub fn all(name: &str, sources: Vec<SourceSpec>) -> Self {
        Self {
            name: name.into(),
            sources,
            split: SplitSpec::default(),
            share: 1.0,
        }
    }
}

/// Runs of non-space characters longer than this reach the BPE trainer in
/// pieces: a merge never spans them, and one huge "word" (a minified file, a
/// base64 blob) would make the trainer quadratic in its length.
pub const MAX_RUN_CHARS: usize = 256;

/// Cuts `text` so that no run of non-whitespace characters is longer than
/// `MAX_RUN_CHARS`; the pieces concatenate to `text`.
pub fn bpe_pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut run) = (0, 0);
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            run = 0;
            continue;
        }
        run += 1;
        if run > MAX_RUN_CHARS {
            out.push(&text[start..i]);
            start = i;
            run = 1;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The largest prefix of `s` of at most `n` bytes that ends on a character boundary.
fn cut_at(s: &str, n: usize) -> &str {
    let mut n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Splits `budget` over datasets by `shares`, giving what a dataset cannot use
/// (it has fewer bytes than its share) to the others by their shares.
fn allot(budget: u64, shares: &[f64], available: &[u64]) -> Vec<u64> {
    let n = shares.len();
    let mut out = vec![0u64; n];
    let mut open: Vec<usize> = (0..n).filter(|&i| shares[i] > 0.0).collect();
    let mut left = budget;
    loop {
        let total: f64 = open.iter().map(|&i| shares[i]).sum();
        if open.is_empty() || left == 0 || total <= 0.0 {
            return out;
        }
        let fair: Vec<(usize, u64)> = open
            .iter()
            .map(|&i| (i, (left as f64 * shares[i] / total).floor() as u64))
            .collect();
        // Datasets that cannot fill their fair part take everything and drop out.
        let small: Vec<(usize, u64)> = fair
            .iter()
            .copied()
            .filter(|&(i, f)| available[i] - out[i] <= f)
            .collect();
        if small.is_empty() {
            for (i, f) in fair {
                out[i] += f;
            }
            return out;
        }
        for (i, _) in small {
            let take = available[i] - out[i];
            out[i] += take;
            left -= take.min(left);
            open.retain(|&j| j != i);
        }
    }
}

/// A document's place in the sample order: a hash of the seed, the dataset and
/// the document, so the sample is spread over the dataset and deterministic.
fn sample_key(seed: u64, dataset: &str, ordinal: u64, id: &str) -> u64 {
    let mut buf = seed.to_le_bytes().to_vec();
    buf.extend_from_slice(dataset.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&ordinal.to_le_bytes());
    buf.extend_from_slice(id.as_bytes());
    demix_spec::rng::SplitMix64::new(fnv1a64(&buf)).next_u64()
}

fn check(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(MlError::Cancelled)
    } else {
        Ok(())
    }
}

/// Chooses which documents of each dataset the trainer reads, and how many
/// bytes of each: with a budget, each dataset's share of it (spread over the
/// dataset by a seeded order, the document that crosses the share cut to fit);
/// without one, everything.
fn plan_sample(
    datasets: &[TokenizerSource],
    spec: &TokenizerSpec,
    cancel: &AtomicBool,
) -> Result<(Vec<BTreeMap<u64, usize>>, TokenizerSample)> {
    let mut docs: Vec<Vec<(u64, u64, usize)>> = Vec::new(); // (key, ordinal, bytes)
    for d in datasets {
        let mut list = Vec::new();
        let mut ordinal = 0u64;
        for src in &d.sources {
            for_each_document(src, &mut |doc| {
                check(cancel)?;
                if d.split.keeps(&doc.id) {
                    let key = sample_key(spec.seed, &d.name, ordinal, &doc.id);
                    list.push((key, ordinal, doc.text.len()));
                    ordinal += 1;
                }
                Ok(())
            })?;
        }
        docs.push(list);
    }
    let total_share: f64 = datasets.iter().map(|d| d.share).sum();
    let available: Vec<u64> = docs
        .iter()
        .map(|l| l.iter().map(|x| x.2 as u64).sum())
        .collect();
    let budgets = (spec.max_bytes > 0).then(|| {
        let shares: Vec<f64> = datasets.iter().map(|d| d.share).collect();
        allot(spec.max_bytes, &shares, &available)
    });
    let mut chosen = Vec::new();
    let mut stats = Vec::new();
    for (i, (d, mut list)) in datasets.iter().zip(docs).enumerate() {
        // ordinal -> bytes to take of it
        let mut take: BTreeMap<u64, usize> = BTreeMap::new();
        let mut cut = 0;
        match budgets.as_ref().map(|b| b[i]) {
            None => take.extend(list.iter().map(|&(_, o, n)| (o, n))),
            Some(mut left) => {
                list.sort_unstable();
                for &(_, o, n) in &list {
                    if left == 0 {
                        break;
                    }
                    if n == 0 {
                        continue;
                    }
                    let n = if (n as u64) > left {
                        cut += 1;
                        left as usize
                    } else {
                        n
                    };
                    take.insert(o, n);
                    left -= n as u64;
                }
            }
        }
        stats.push(DatasetSample {
            name: d.name.clone(),
            share: if total_share > 0.0 {
                d.share / total_share
            } else {
                0.0
            },
            budget: budgets.as_ref().map(|b| b[i]),
            documents_available: list.len() as u64,
            bytes_available: available[i],
            documents_used: take.len() as u64,
            bytes_used: 0, // counted when read: a cut lands on a character boundary
            documents_cut: cut,
        });
        chosen.push(take);
    }
    Ok((
        chosen,
        TokenizerSample {
            max_bytes: spec.max_bytes,
            seed: spec.seed,
            datasets: stats,
        },
    ))
}

/// Trains a byte-level BPE on a sample of every dataset (see [`plan_sample`])
/// and writes it to `out` (a tokenizer.json path). Deterministic for the same
/// input. Returns the tokenizer and what it was trained on.
pub fn train_tokenizer(
    datasets: &[TokenizerSource],
    spec: &TokenizerSpec,
    out: &Path,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<(Tok, TokenizerSample)> {
    if spec.special_tokens.is_empty() {
        return Err(MlError::Spec(
            "tokenizer needs at least one special token".into(),
        ));
    }
    if (spec.vocab_size as usize) < 256 + spec.special_tokens.len() {
        return Err(MlError::Spec(format!(
            "vocab_size {} is smaller than the 256 bytes plus special tokens",
            spec.vocab_size
        )));
    }
    if let Some(d) = datasets
        .iter()
        .find(|d| !(d.share.is_finite() && d.share >= 0.0))
    {
        return Err(MlError::Spec(format!(
            "dataset `{}`: share {} is not a finite number >= 0",
            d.name, d.share
        )));
    }
    let (chosen, mut sample) = plan_sample(datasets, spec, cancel)?;
    let mut texts: Vec<String> = Vec::new();
    for ((d, take), stats) in datasets.iter().zip(&chosen).zip(&mut sample.datasets) {
        let mut ordinal = 0u64;
        for src in &d.sources {
            for_each_document(src, &mut |doc| {
                check(cancel)?;
                if !d.split.keeps(&doc.id) {
                    return Ok(());
                }
                if let Some(&n) = take.get(&ordinal) {
                    let text = cut_at(&doc.text, n);
                    stats.bytes_used += text.len() as u64;
                    texts.extend(bpe_pieces(text).into_iter().map(str::to_string));
                }
                ordinal += 1;
                Ok(())
            })?;
        }
        if stats.documents_available == 0 {
            return Err(MlError::Spec(format!(
                "dataset `{}` has no training documents to learn from",
                d.name
            )));
        }
    }
    let bytes: u64 = sample.datasets.iter().map(|d| d.bytes_used).sum();
    progress(&Progress {
        stage: "tokenizer",
        current: bytes,
        total: bytes,
        unit: "bytes",
        message: format!(
            "training BPE on {bytes} bytes of {} datasets",
            datasets.len()
        ),
    });
    let specials: Vec<AddedToken> = spec
        .special_tokens
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(spec.vocab_size as usize)
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
    check(cancel)?;
    tk.train(&mut trainer, texts.into_iter()).map_err(terr)?;
    check(cancel)?;
    let json = tk.to_string(false).map_err(terr)?;
    let tokenizer: Tokenizer = json.parse().map_err(terr)?;
    let tok = Tok::from_tokenizer(tokenizer, Some(out.into()))?;
    util::write_atomic(out, json.as_bytes())?;
    Ok((tok, sample))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::no_progress;

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
        let one = [TokenizerSource::all("d", vec![SourceSpec::new(&src)])];
        let (a, _) =
            train_tokenizer(&one, &spec, &t.path().join("a.json"), &no_progress, &no).unwrap();
        let (b, _) =
            train_tokenizer(&one, &spec, &t.path().join("b.json"), &no_progress, &no).unwrap();
        assert_eq!(
            std::fs::read(t.path().join("a.json")).unwrap(),
            std::fs::read(t.path().join("b.json")).unwrap()
        );
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.vocab_size(), 320);
        assert_eq!(a.eos_id(), 0);
        assert!(a.is_special(0) && !a.is_special(1) && !a.is_special(-1));
        // The torch-free reading of tokenizer.json (merges) agrees.
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.path().join("a.json")).unwrap()).unwrap();
        let sp = demix_spec::card::TokenizerSpecials::from_json(&j);
        assert_eq!(sp.eos, Some(a.eos_id()));
        assert_eq!(sp.special.into_iter().collect::<Vec<_>>(), [0]);
        let mut c = demix_spec::model::Qwen3Config::qwen3_1_7b();
        a.set_special_ids(&mut c);
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(0), Some(0)));
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

    fn corpus(path: &Path, docs: usize, len: usize, word: &str) {
        let mut s = String::new();
        for i in 0..docs {
            let text = format!("{word}{i} ").repeat(len / (word.len() + 4));
            s.push_str(&serde_json::json!({"id": i.to_string(), "text": text}).to_string());
            s.push('\n');
        }
        std::fs::write(path, s).unwrap();
    }

    #[test]
    fn every_dataset_gets_its_share_of_the_budget() {
        let t = tempfile::tempdir().unwrap();
        // The first dataset alone could fill the budget; the last is small.
        corpus(&t.path().join("a.jsonl"), 400, 1000, "alpha");
        corpus(&t.path().join("b.jsonl"), 200, 900, "beta");
        corpus(&t.path().join("c.jsonl"), 10, 500, "gamma");
        let set = |shares: [f64; 3]| -> Vec<TokenizerSource> {
            ["a", "b", "c"]
                .iter()
                .zip(shares)
                .map(|(n, share)| TokenizerSource {
                    share,
                    ..TokenizerSource::all(
                        n,
                        vec![SourceSpec::new(t.path().join(format!("{n}.jsonl")))],
                    )
                })
                .collect()
        };
        let spec = TokenizerSpec {
            vocab_size: 300,
            max_bytes: 60_000,
            ..Default::default()
        };
        let no = AtomicBool::new(false);
        let out = t.path().join("t.json");
        let (_, s) = train_tokenizer(&set([1.0; 3]), &spec, &out, &no_progress, &no).unwrap();
        let used: Vec<u64> = s.datasets.iter().map(|d| d.bytes_used).collect();
        // c has about 5 KB: all of it; a and b split the rest evenly.
        assert_eq!(used[2], s.datasets[2].bytes_available);
        let rest = (60_000 - used[2]) as f64 / 2.0;
        for u in &used[..2] {
            assert!((*u as f64 - rest).abs() <= 2.0, "{used:?}");
        }
        assert!(used.iter().sum::<u64>() <= 60_000);
        // At most one document per dataset is cut to fit; documents come from
        // all over the dataset, not its start.
        assert!(s.datasets.iter().all(|d| d.documents_cut <= 1), "{s:?}");
        assert!(s.datasets[0].documents_used < s.datasets[0].documents_available);
        // Shares other than equal.
        let (_, s) =
            train_tokenizer(&set([3.0, 1.0, 0.0]), &spec, &out, &no_progress, &no).unwrap();
        let used: Vec<u64> = s.datasets.iter().map(|d| d.bytes_used).collect();
        assert_eq!(used[2], 0);
        assert!((used[0] as f64 / 45_000.0 - 1.0).abs() < 1e-3, "{used:?}");
        // Same inputs, same sample; another seed, another one.
        let (_, again) =
            train_tokenizer(&set([3.0, 1.0, 0.0]), &spec, &out, &no_progress, &no).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn long_runs_reach_the_trainer_in_pieces() {
        let word = "ab".repeat(1000);
        let text = format!("x {word} y");
        let pieces = bpe_pieces(&text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() >= 8, "{}", pieces.len());
        assert_eq!(bpe_pieces("short words only"), vec!["short words only"]);
        // Character boundaries hold for multi-byte text.
        let wide = "é".repeat(600);
        assert_eq!(bpe_pieces(&wide).concat(), wide);
        assert_eq!(cut_at("héllo", 2), "h");
        assert_eq!(allot(100, &[1.0, 1.0], &[10, 1000]), vec![10, 90]);
        assert_eq!(allot(100, &[1.0, 0.0], &[1000, 1000]), vec![100, 0]);
    }
}
