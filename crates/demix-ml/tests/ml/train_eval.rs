use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use demix_ml::MlError;
use demix_ml::checkpoint::load_checkpoint_tensors;
use demix_ml::data::Shard;
use demix_ml::evaluate::{
    DatasetMetrics, EvalPaths, EvalSpec, evaluate_checkpoint, evaluate_state_dict, sample_windows,
    validation_metrics,
};
use demix_ml::model::Qwen3;
use demix_ml::progress::{Progress, no_progress};
use demix_ml::train::{MetricsLine, TrainPaths, train};
use tch::{Device, Kind, Tensor};

#[test]
fn loss_falls_and_metrics_are_written() {
    let f = fixture();
    let spec = tiny_spec(&f, 60);
    let p = paths(&f, "run");
    let s = train(&spec, &p, &no_progress, &no_cancel()).unwrap();
    assert_eq!(s.steps, 60);
    let lines: Vec<MetricsLine> = std::fs::read_to_string(&p.metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 60);
    let first = lines[0].loss;
    let last: f64 = lines[55..].iter().map(|l| l.loss).sum::<f64>() / 5.0;
    assert!(first > (300f64).ln() - 0.5, "initial loss {first}");
    assert!(last < first * 0.6, "loss did not fall: {first} -> {last}");
    assert!(lines.iter().all(|l| l.grad_norm > 0.0));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(p.output.join(f).exists(), "{f}");
    }
}

#[test]
fn same_seed_is_byte_identical_and_resume_equals_uninterrupted() {
    let f = fixture();
    let mut spec = tiny_spec(&f, 12);
    spec.train.checkpoints = vec![4 * 128, 12 * 128];
    let a = paths(&f, "a");
    let b = paths(&f, "b");
    train(&spec, &a, &no_progress, &no_cancel()).unwrap();
    train(&spec, &b, &no_progress, &no_cancel()).unwrap();
    let w = |p: &std::path::Path| read(&p.join("model.safetensors"));
    assert_eq!(w(&a.output), w(&b.output), "two runs with one seed differ");

    // Interrupted after step 7 (not a multiple of state_every_steps = 5).
    let c = paths(&f, "c");
    let cancel = AtomicBool::new(false);
    let cb = |pr: &Progress| {
        if pr.current >= 7 * 128 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let r = train(&spec, &c, &cb, &cancel);
    assert!(matches!(r, Err(MlError::Cancelled)), "{r:?}");
    assert!(!c.output.exists());
    let s = train(&spec, &c, &no_progress, &no_cancel()).unwrap();
    assert_eq!(s.resumed_from_step, 7);
    assert_eq!(w(&a.output), w(&c.output), "resumed run differs");
    for bud in &spec.train.checkpoints {
        assert_eq!(w(&a.checkpoint_dir(*bud)), w(&c.checkpoint_dir(*bud)));
    }
    let ma = std::fs::read_to_string(&a.metrics).unwrap();
    let mc = std::fs::read_to_string(&c.metrics).unwrap();
    assert_eq!(ma.lines().count(), mc.lines().count());

    // A different spec refuses the state.
    let mut other = spec.clone();
    other.train.seed = 4;
    let e = train(&other, &c, &no_progress, &no_cancel()).unwrap_err();
    assert!(e.to_string().contains("different training spec"), "{e}");
}

#[test]
fn non_finite_loss_errors_without_checkpoint() {
    let f = fixture();
    let cfg = tiny_config(f.tok.vocab_size() as i64);
    let m = Qwen3::init(&cfg, 0, Device::Cpu).unwrap();
    let mut sd = m.state_dict();
    let _ = sd.get_mut("model.norm.weight").unwrap().fill_(f64::NAN);
    let bad = f.dir.path().join("nan-ckpt");
    let named: Vec<_> = sd.into_iter().collect();
    demix_ml::checkpoint::save_checkpoint(&cfg, &named, &bad, Some(&f.tokenizer_json)).unwrap();
    let mut spec = tiny_spec(&f, 5);
    spec.model = None;
    spec.init_from = Some(bad);
    spec.train.checkpoints = vec![128];
    let p = paths(&f, "nan");
    let e = train(&spec, &p, &no_progress, &no_cancel()).unwrap_err();
    assert_eq!(e.to_string(), "non-finite loss at step 1");
    assert!(!p.output.exists() && !p.checkpoint_dir(128).exists());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let f = fixture();
    let mut spec = tiny_spec(&f, 5);
    let mut p = paths(&f, "bad");
    p.shards.remove("math");
    let e = train(&spec, &p, &no_progress, &no_cancel()).unwrap_err();
    assert!(
        e.to_string().contains("no shard given for dataset 'math'"),
        "{e}"
    );
    let p = paths(&f, "bad");
    spec.train.seq_len = 1_000_000;
    let e = train(&spec, &p, &no_progress, &no_cancel()).unwrap_err();
    assert!(e.to_string().contains("fewer than seq_len"), "{e}");
    let mut spec = tiny_spec(&f, 5);
    spec.model.as_mut().unwrap().vocab_size = 10;
    let e = train(&spec, &p, &no_progress, &no_cancel()).unwrap_err();
    assert!(
        e.to_string().contains("exceeds the model's vocab_size"),
        "{e}"
    );
}

/// Hand computation of the windowed NLL with log_softmax + gather.
fn hand_nll(m: &Qwen3, toks: &[u32], seq: usize) -> (f64, u64) {
    let mut nll = 0.0;
    let mut n = 0;
    let mut i = 0;
    while i + 1 < toks.len() {
        let j = (i + seq + 1).min(toks.len());
        let w: Vec<i64> = toks[i..j].iter().map(|&t| t as i64).collect();
        let l = w.len() as i64;
        let x = Tensor::from_slice(&w[..w.len() - 1]).view([1, l - 1]);
        let y = Tensor::from_slice(&w[1..]).view([1, l - 1, 1]);
        let lp = m
            .forward(&x)
            .log_softmax(-1, Kind::Double)
            .gather(-1, &y, false);
        nll -= lp.sum(Kind::Double).double_value(&[]);
        n += (l - 1) as u64;
        i += seq;
    }
    (nll, n)
}

#[test]
fn evaluation_matches_hand_computation_and_in_memory() {
    let f = fixture();
    let spec = tiny_spec(&f, 10);
    let p = paths(&f, "ev");
    train(&spec, &p, &no_progress, &no_cancel()).unwrap();
    let m = Qwen3::load(&p.output, Device::Cpu).unwrap();
    let sh = Shard::open(&f.val_shards["math"]).unwrap();
    let es = EvalSpec {
        max_tokens: Some(300),
        seq_len: Some(40),
        batch_size: 3,
        device: demix_spec::train::DeviceChoice::Cpu,
        threads: 1,
        ..Default::default()
    };
    let got =
        tch::no_grad(|| validation_metrics(&m, &sh, &es, &no_progress, &no_cancel())).unwrap();
    // The scored windows: a seeded, stratified sample over the whole shard.
    let n_tokens = sh.tokens().len() as u64;
    let (windows, all) = sampled_windows(n_tokens);
    let (mut nll, mut n) = (0.0, 0u64);
    for &(a, b) in &windows {
        let (x, k) = tch::no_grad(|| hand_nll(&m, &sh.tokens()[a as usize..b as usize], 40));
        nll += x;
        n += k;
    }
    assert_eq!(got.tokens, n);
    assert!(
        (got.loss - nll / n as f64).abs() < 1e-5,
        "{} vs {}",
        got.loss,
        nll / n as f64
    );
    // Bytes of partly scored documents count pro rata, rounded in the file.
    let bits = nll / 2f64.ln();
    assert!((got.bits_per_byte * got.bytes as f64 - bits).abs() < 1e-3 * bits);
    let sample = got.sample.as_ref().unwrap();
    assert_eq!((sample.windows, sample.of_windows), (7, all));
    assert!(sample.documents.len() as u64 == got.documents && got.documents >= 2);
    assert!(got.loss_se.unwrap() > 0.0);
    whole_shard(&m, &sh, &es, n_tokens);
    tasks_and_in_memory(&f, &p, &m, &es, &got);
    malformed_task_line(&f, &p, &es);
}

/// The scored windows: a seeded, stratified sample over the whole shard.
fn sampled_windows(n_tokens: u64) -> (Vec<(u64, u64)>, u64) {
    let (windows, all) = sample_windows(n_tokens, 40, 300, 0);
    assert_eq!(windows.len(), 7, "300 tokens in windows of 40");
    assert!(all > 7);
    assert_eq!(windows, sample_windows(n_tokens, 40, 300, 0).0, "seeded");
    assert_ne!(windows, sample_windows(n_tokens, 40, 300, 1).0);
    // Spread over the shard: one window in each seventh of it.
    for (k, (a, _)) in windows.iter().enumerate() {
        let (lo, hi) = (k as u64 * all / 7 * 40, (k as u64 + 1) * all / 7 * 40);
        assert!(
            (lo..hi).contains(a),
            "window {k} starts at {a}, not in [{lo}, {hi})"
        );
    }
    (windows, all)
}

/// Everything when the budget covers the shard: the whole text, once.
fn whole_shard(m: &Qwen3, sh: &Shard, es: &EvalSpec, n_tokens: u64) {
    let whole = EvalSpec {
        max_tokens: Some(n_tokens),
        ..es.clone()
    };
    let all_of_it =
        tch::no_grad(|| validation_metrics(m, sh, &whole, &no_progress, &no_cancel())).unwrap();
    assert_eq!(all_of_it.tokens, n_tokens - 1);
    // Every document's bytes, whole, but for the first token of the shard,
    // which nothing predicts.
    let total: u64 = sh.doc_ends().map(|(_, b)| b).sum();
    assert!(
        all_of_it.bytes <= total && all_of_it.bytes as f64 > 0.99 * total as f64,
        "{} of {total}",
        all_of_it.bytes
    );
    assert_eq!(all_of_it.documents, sh.meta.documents);
}

/// Tasks and the report; the in-memory path gives the same numbers.
fn tasks_and_in_memory(
    f: &Fixture,
    p: &TrainPaths,
    m: &Qwen3,
    es: &EvalSpec,
    got: &DatasetMetrics,
) {
    let mc = f.dir.path().join("mc.jsonl");
    std::fs::write(
        &mc,
        concat!(
            r#"{"id":"1","prompt":"the cat eats","choices":[" the fish"," zzzz qq"],"label":0}"#,
            "\n",
            r#"{"id":"2","prompt":"a dog sees","choices":[" xq"," two apples"," one"," a"],"label":1}"#,
            "\n"
        ),
    )
    .unwrap();
    let qa = f.dir.path().join("qa.jsonl");
    std::fs::write(
        &qa,
        r#"{"id":"1","prompt":"my friend likes","answer":" the tree"}"#,
    )
    .unwrap();
    let ep = EvalPaths {
        validation: f.val_shards.clone(),
        tasks: [("mc".to_string(), mc), ("qa".to_string(), qa)].into(),
        output: Some(f.dir.path().join("eval.json")),
    };
    let r = evaluate_checkpoint(&p.output, es, &ep, &no_progress, &no_cancel()).unwrap();
    assert_eq!(&r.datasets["math"], got);
    assert_eq!(r.tasks["mc"].examples, 2);
    assert!(r.tasks["mc"].accuracy.is_some() && r.tasks["qa"].exact_match.is_some());
    // Guessing: (1/2 + 1/4) / 2.
    assert_eq!(r.tasks["mc"].chance, Some(0.375));
    assert_eq!(r.tasks["qa"].chance, None);
    let sd = load_checkpoint_tensors(&p.output, Device::Cpu).unwrap();
    let r2 = evaluate_state_dict(
        &m.config,
        sd,
        Some(&f.tok),
        es,
        &EvalPaths {
            output: None,
            ..ep.clone()
        },
        &no_progress,
        &no_cancel(),
    )
    .unwrap();
    assert_eq!(r2.datasets, r.datasets);
    assert_eq!(r2.tasks, r.tasks);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&read(&f.dir.path().join("eval.json"))).unwrap();
    assert!(
        on_disk["datasets"]["sotu"]["bits_per_byte"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// A malformed task line names the file and line.
fn malformed_task_line(f: &Fixture, p: &TrainPaths, es: &EvalSpec) {
    let bad = f.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\":\"x\",\"choices\":[\"a\"],\"label\":3}\n").unwrap();
    let ep = EvalPaths {
        validation: Default::default(),
        tasks: [("b".to_string(), bad)].into(),
        output: None,
    };
    let e = evaluate_checkpoint(&p.output, es, &ep, &no_progress, &no_cancel()).unwrap_err();
    assert!(e.to_string().contains("bad.jsonl:1"), "{e}");
}

#[test]
fn gradient_accumulation_matches_the_whole_batch() {
    let f = fixture();
    let spec = tiny_spec(&f, 6);
    assert!(spec.train.batch_size >= 2 && spec.train.batch_size.is_multiple_of(2));
    let mut micro = spec.clone();
    micro.train.micro_batch_size = Some(spec.train.batch_size / 2);
    let (a, b) = (paths(&f, "whole"), paths(&f, "micro"));
    let sa = train(&spec, &a, &no_progress, &no_cancel()).unwrap();
    let sb = train(&micro, &b, &no_progress, &no_cancel()).unwrap();
    // Same data, same maths: only the float summation order differs.
    assert!(
        (sa.final_loss - sb.final_loss).abs() < 1e-4,
        "{} vs {}",
        sa.final_loss,
        sb.final_loss
    );
    let ta = load_checkpoint_tensors(&a.output, Device::Cpu).unwrap();
    let tb = load_checkpoint_tensors(&b.output, Device::Cpu).unwrap();
    for (name, x) in &ta {
        let d = (x - &tb[name]).abs().max().double_value(&[]);
        assert!(d < 1e-4, "{name} differs by {d}");
    }
    let mut bad = spec.clone();
    bad.train.micro_batch_size = Some(spec.train.batch_size + 1);
    let e = train(&bad, &paths(&f, "bad"), &no_progress, &no_cancel()).unwrap_err();
    assert!(e.to_string().contains("micro_batch_size"), "{e}");
}
