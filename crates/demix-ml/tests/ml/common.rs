//! Shared fixtures: a tiny synthetic corpus, tokenizer, shards and specs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use demix_ml::data::{SourceSpec, SplitPart, SplitSpec, TokenizeSpec, tokenize_to_shard};
use demix_ml::model::Qwen3Config;
use demix_ml::progress::no_progress;
use demix_ml::tokenizer::{Tok, TokenizerSource, TokenizerSpec, train_tokenizer};
use demix_ml::train::{DataMix, TrainPaths, TrainSpec};

pub fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

/// Deterministic pseudo-text: simple grammatical patterns a tiny model can learn.
pub fn corpus_text(domain: &str, n_docs: usize) -> String {
    let subj = ["the cat", "a dog", "my friend", "the model", "every bird"];
    let verb = ["eats", "sees", "likes", "counts", "finds"];
    let obj = [
        "the fish",
        "two apples",
        "a number",
        "the tree",
        "some bread",
    ];
    let mut s = String::new();
    let mut x: u64 = domain.bytes().map(|b| b as u64).sum();
    for i in 0..n_docs {
        let mut text = String::new();
        for _ in 0..6 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = (x >> 33) as usize;
            text.push_str(&format!(
                "{} {} {} in {domain}. ",
                subj[a % 5],
                verb[(a / 5) % 5],
                obj[(a / 25) % 5]
            ));
        }
        s.push_str(
            &serde_json::json!({"id": format!("{domain}-{i}"), "text": text.trim()}).to_string(),
        );
        s.push('\n');
    }
    s
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub tok: Tok,
    pub tokenizer_json: PathBuf,
    pub train_shards: BTreeMap<String, PathBuf>,
    pub val_shards: BTreeMap<String, PathBuf>,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut sources = vec![];
    for dom in ["math", "sotu"] {
        let p = d.join(format!("data/{dom}/all.jsonl"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, corpus_text(dom, 120)).unwrap();
        sources.push((dom, p));
    }
    let tokenizer_json = d.join("tok/tokenizer.json");
    let all: Vec<TokenizerSource> = sources
        .iter()
        .map(|(n, p)| TokenizerSource::all(n, vec![SourceSpec::new(p)]))
        .collect();
    let (tok, _) = train_tokenizer(
        &all,
        &TokenizerSpec {
            vocab_size: 300,
            ..Default::default()
        },
        &tokenizer_json,
        &no_progress,
        &no_cancel(),
    )
    .unwrap();
    let mut train_shards = BTreeMap::new();
    let mut val_shards = BTreeMap::new();
    for (dom, p) in &sources {
        for (part, map) in [
            (SplitPart::Train, &mut train_shards),
            (SplitPart::Validation, &mut val_shards),
        ] {
            let out = d.join(format!("shards/{dom}-{part:?}"));
            let spec = TokenizeSpec {
                split: SplitSpec {
                    part,
                    validation_fraction: 0.1,
                    seed: 0,
                },
                ..Default::default()
            };
            tokenize_to_shard(
                &[SourceSpec::new(p)],
                &spec,
                &tok,
                &out,
                &no_progress,
                &no_cancel(),
            )
            .unwrap();
            map.insert(dom.to_string(), out);
        }
    }
    Fixture {
        dir,
        tok,
        tokenizer_json,
        train_shards,
        val_shards,
    }
}

pub fn tiny_config(vocab: i64) -> Qwen3Config {
    let mut c = Qwen3Config::new(vocab, 32, 64, 2, 4, 2);
    c.head_dim = 8;
    c.max_position_embeddings = 256;
    c
}

pub fn tiny_spec(f: &Fixture, steps: u64) -> TrainSpec {
    let yaml = serde_json::json!({
        "model": tiny_config(f.tok.vocab_size() as i64),
        "seed": 3,
        "data": {"candidate": "math", "general": "sotu", "beta": 0.5},
        "tokens": steps * 4 * 32,
        "batch_size": 4,
        "seq_len": 32,
        "lr": 3e-3,
        "warmup_fraction": 0.1,
        "device": "cpu",
        "threads": 1,
        "state_every_steps": 5,
    });
    serde_json::from_value(yaml).unwrap()
}

pub fn paths(f: &Fixture, run: &str) -> TrainPaths {
    let r = f.dir.path().join(run);
    TrainPaths {
        shards: f.train_shards.clone(),
        output: r.join("final"),
        checkpoints_dir: r.join("checkpoints"),
        state_dir: r.join("state"),
        metrics: r.join("metrics.jsonl"),
        tokenizer: Some(f.tokenizer_json.clone()),
    }
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn weights(m: &[(&str, f64)]) -> DataMix {
    DataMix::Weights(m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}
