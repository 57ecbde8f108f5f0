//! Evaluation throughput on the CPU with a random model: validation-loss
//! tokens per second, multiple-choice and question-answer examples per
//! second, and merged-proxy evaluations per minute (one proxy: a model built
//! from a state dict and scored on five targets at the search's settings,
//! 4096 tokens each in windows of 128; the merge itself is not counted).
//!
//! Data: the repository's `data/` (a 2048-token BPE learned from the five
//! validation splits, which are the shards scored; tasks from `data/tasks`).
//! Only the public API is used, so the same file measures an older checkout.
//!
//! cargo run --release -p demix-ml --example bench_eval -- [DATA_DIR] [tiny|small] [threads] [reps]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use demix_ml::data::{Shard, SourceSpec, TokenizeSpec, tokenize_to_shard};
use demix_ml::evaluate::{
    EvalPaths, EvalSpec, evaluate_state_dict, evaluate_task, validation_metrics,
};
use demix_ml::model::{Qwen3, Qwen3Config};
use demix_ml::progress::no_progress;
use demix_ml::tokenizer::{Tok, TokenizerSource, TokenizerSpec, train_tokenizer};
use demix_spec::train::DeviceChoice;
use tch::Device;

const TARGETS: [&str; 5] = ["sotu", "chat", "math", "python", "spanish"];

/// The tokenizer and one validation shard per target, under `work`.
fn prepare(data: &Path, work: &Path) -> (Tok, BTreeMap<String, PathBuf>) {
    let cancel = AtomicBool::new(false);
    let val = |t: &str| data.join(t).join("validation.jsonl");
    let sources: Vec<TokenizerSource> = TARGETS
        .iter()
        .map(|t| TokenizerSource::all(t, vec![SourceSpec::new(val(t))]))
        .collect();
    let spec = TokenizerSpec {
        vocab_size: 2048,
        max_bytes: 2_000_000,
        ..Default::default()
    };
    let tj = work.join("tokenizer.json");
    let (tok, _) = train_tokenizer(&sources, &spec, &tj, &no_progress, &cancel).expect("tokenizer");
    let mut shards = BTreeMap::new();
    for t in TARGETS {
        let out = work.join("shards").join(t);
        let src = [SourceSpec::new(val(t))];
        tokenize_to_shard(
            &src,
            &TokenizeSpec::default(),
            &tok,
            &out,
            &no_progress,
            &cancel,
        )
        .expect("shard");
        shards.insert(t.to_string(), out);
    }
    (tok, shards)
}

fn config(shape: &str, vocab: i64) -> Qwen3Config {
    let mut c = match shape {
        // demix-tiny's models.
        "tiny" => Qwen3Config::new(vocab, 96, 256, 3, 6, 2),
        // bench_train's shape.
        "small" => Qwen3Config::new(vocab, 256, 768, 4, 4, 4),
        s => panic!("unknown shape {s}: tiny or small"),
    };
    c.max_position_embeddings = 512;
    c
}

fn spec(threads: u32, max_tokens: u64, seq_len: u32) -> EvalSpec {
    EvalSpec {
        max_tokens: Some(max_tokens),
        seq_len: Some(seq_len),
        batch_size: 8,
        max_examples: 40,
        max_new_tokens: 8,
        device: DeviceChoice::Cpu,
        threads,
        ..Default::default()
    }
}

/// Best-of-`reps` seconds of `f`.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(a.first().map_or("data", |s| s.as_str()));
    let shape = a.get(1).map_or("tiny", |s| s.as_str());
    let threads: u32 = a.get(2).map_or(2, |s| s.parse().expect("threads"));
    let reps: usize = a.get(3).map_or(3, |s| s.parse().expect("reps"));
    tch::set_num_threads(threads as i32);
    let work = tempfile::tempdir().expect("tempdir");
    let (tok, shards) = prepare(&data, work.path());
    let cfg = config(shape, tok.vocab_size() as i64);
    let model = Qwen3::init(&cfg, 0, Device::Cpu).expect("model");
    let cancel = AtomicBool::new(false);
    let open: Vec<Shard> = shards.values().map(|d| Shard::open(d).unwrap()).collect();
    let mut out =
        serde_json::json!({"shape": shape, "params": cfg.num_params(), "threads": threads});

    for (max_tokens, seq) in [(16_384u64, 128u32), (16_384, 512)] {
        let s = spec(threads, max_tokens, seq);
        let (mut tokens, mut loss) = (0, 0.0);
        let secs = best(reps, || {
            (tokens, loss) = (0, 0.0);
            for sh in &open {
                let m = tch::no_grad(|| validation_metrics(&model, sh, &s, &no_progress, &cancel));
                let m = m.expect("validation");
                tokens += m.tokens;
                loss += m.loss / open.len() as f64;
            }
        });
        out[format!("validation_tokens_per_s_seq{seq}")] = (tokens as f64 / secs).round().into();
        // The results, to compare across checkouts.
        out[format!("mean_loss_seq{seq}")] = loss.into();
    }

    let s = spec(threads, 4096, 128);
    let paths = EvalPaths {
        validation: shards.clone(),
        tasks: BTreeMap::new(),
        output: None,
    };
    let n = 4;
    let secs = best(reps, || {
        for _ in 0..n {
            evaluate_state_dict(
                &cfg,
                model.state_dict(),
                None,
                &s,
                &paths,
                &no_progress,
                &cancel,
            )
            .expect("proxy");
        }
    });
    out["proxies_per_min"] = ((n as f64 * 60.0 / secs * 10.0).round() / 10.0).into();

    let tasks = data.join("tasks");
    for (kind, files) in [
        ("mc", &["chat_cloze", "python_cloze", "spanish_cloze"][..]),
        ("qa", &["math_qa"][..]),
    ] {
        let (mut examples, mut scores) = (0, vec![]);
        let secs = best(reps, || {
            (examples, scores) = (0, vec![]);
            for f in files {
                let p = tasks.join(format!("{f}.jsonl"));
                let m = evaluate_task(&model, &tok, &p, &s, &no_progress, &cancel).expect("task");
                examples += m.examples;
                scores.push([m.accuracy, m.accuracy_norm, m.answer_logprob, m.exact_match]);
            }
        });
        out[format!("{kind}_metrics")] = serde_json::json!(scores);
        out[format!("{kind}_examples_per_s")] =
            ((examples as f64 / secs * 10.0).round() / 10.0).into();
    }
    println!("{out}");
}
