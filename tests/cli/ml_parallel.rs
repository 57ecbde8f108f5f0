//! Data-parallel training: a `train` step on 2 ranks (Open MPI, CPU) trains
//! what 1 rank trains with the same global batch, resumes after an interrupt
//! to the uninterrupted result, and fails fast and cleanly when a rank dies.

use std::path::Path;
use std::time::{Duration, Instant};

use demix_mix::checkpoint::Checkpoint;

use crate::harness::{Env, interrupt_when, mpi, output_path};

/// A tokenizer and one training per `(id, ranks, state_every_steps)`: the
/// same trajectory, so only the rank count differs (state saving is not part
/// of it, and keeps the steps' keys apart).
pub fn manifest(steps: &[(&str, u32, u32)], tokens: u64) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut m = format!(
        r#"version: 1
name: dp
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
steps:
  - id: tok
    kind: tokenizer
    datasets: [sotu, math]
    vocab_size: 400
    max_bytes: 200000
"#,
        d = data.display()
    );
    for (id, ranks, every) in steps {
        m.push_str(&format!(
            r#"  - id: {id}
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1, math: 1}}
    tokens: {tokens}
    batch_size: 8
    micro_batch_size: 2
    seq_len: 32
    lr: 0.003
    state_every_steps: {every}
    device: cpu
    resources: {{cpus: 2, ranks: {ranks}}}
"#
        ));
    }
    m
}

pub fn losses(env: &Env, step: &str) -> Vec<f64> {
    let p = output_path(env, "dp", step, "metrics");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The largest per-tensor ||a - b|| / ||a|| between two steps' final weights.
fn weight_distance(env: &Env, a: &str, b: &str) -> f64 {
    let ca = Checkpoint::open(output_path(env, "dp", a, "checkpoint")).unwrap();
    let cb = Checkpoint::open(output_path(env, "dp", b, "checkpoint")).unwrap();
    let names: Vec<String> = ca.names().map(str::to_string).collect();
    assert_eq!(names, cb.names().map(str::to_string).collect::<Vec<_>>());
    names
        .iter()
        .map(|n| {
            let (x, y) = (ca.read_f32(n).unwrap(), cb.read_f32(n).unwrap());
            let d: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
            (d / norm.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_train_what_one_rank_trains() {
    if !mpi() {
        return;
    }
    let env = Env::new();
    // 20 steps of 8 rows; each rank computes 4 rows in micro-batches of 2.
    env.write(
        "demix.yaml",
        &manifest(&[("one", 1, 5), ("two", 2, 6)], 20 * 8 * 32),
    );
    env.demix(&["run", "-j", "1"]).ok();
    let (l1, l2) = (losses(&env, "one"), losses(&env, "two"));
    assert_eq!(l1.len(), 20);
    assert_eq!(l2.len(), 20);
    for (i, (a, b)) in l1.iter().zip(&l2).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "step {}: loss {a} on 1 rank, {b} on 2",
            i + 1
        );
    }
    assert!(l1[19] < l1[0], "the loss falls: {l1:?}");
    let d = weight_distance(&env, "one", "two");
    assert!(
        d < 1e-5,
        "final weights differ by {d:e} (relative, worst tensor)"
    );
    // The ranks other than 0 log beside it, and the step's result is rank 0's.
    let logs: Vec<String> = std::fs::read_dir(env.path("cache/logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.iter().any(|l| l.ends_with(".rank1.log")), "{logs:?}");
}

#[test]
fn an_interrupted_two_rank_run_resumes_to_the_uninterrupted_result() {
    if !mpi() {
        return;
    }
    let env = Env::new();
    let tokens = 60 * 8 * 32;
    env.write(
        "demix.yaml",
        &manifest(&[("whole", 2, 7), ("cut", 2, 3)], tokens),
    );
    env.demix(&["run", "--target", "whole"]).ok();
    let code = interrupt_when(&env, &["run", "--target", "cut"], "resume state", |d| {
        d.join("state").is_dir()
    });
    assert_eq!(code, Some(130));
    assert!(!env.path("cache/state/dp/cut.json").exists());
    let r = env.demix(&["run", "--target", "cut"]).ok();
    assert_eq!(r.ran(), ["cut"]);
    let log = std::fs::read_dir(env.path("cache/logs"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains("rank"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .find(|s| s.contains("step cut") && s.contains("\"resumed_from_step\""))
        .expect("the resumed run's summary");
    assert!(
        !log.contains("\"resumed_from_step\":0"),
        "it resumed: {log}"
    );
    // Its log says so, with its progress beside it.
    assert!(log.contains("resumed from step "), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with('[') && l.contains("tokens")),
        "{log}"
    );
    // MPI sums in a fixed order on CPU, so the resumed run is the same run.
    let bytes = |s: &str| {
        std::fs::read(output_path(&env, "dp", s, "checkpoint").join("model.safetensors")).unwrap()
    };
    assert!(
        bytes("whole") == bytes("cut"),
        "the resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(losses(&env, "whole"), losses(&env, "cut"));
}

#[test]
fn a_killed_rank_fails_the_step_quickly_and_leaves_no_process() {
    if !mpi() {
        return;
    }
    let env = Env::new();
    // Long enough that it is still training when a rank is killed.
    env.write("demix.yaml", &manifest(&[("long", 2, 5)], 4000 * 8 * 32));
    env.demix(&["run", "--target", "tok"]).ok();
    let child = env
        .cmd(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Rank 1 writes its log once it runs the step.
    let rank1 = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "rank 1 never started"
        );
        if let Some(pid) = rank_pid(&env, "1") {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signals a process of this test's own run.
    unsafe { libc::kill(rank1, libc::SIGKILL) };
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(60),
        "the step took {took:?} to fail"
    );
    assert!(
        rank_pid(&env, "0").is_none() && rank_pid(&env, "1").is_none(),
        "a rank is left"
    );
    assert!(!env.path("cache/state/dp/long.json").exists());
}

/// The pid of the worker process that is rank `rank` of a step of this test's
/// store (Open MPI puts the rank in each process's environment).
fn rank_pid(env: &Env, rank: &str) -> Option<i32> {
    let store = env.path("cache");
    let store = store.to_string_lossy();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("demix-worker") {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let environ = String::from_utf8_lossy(&environ);
        let is_rank = environ
            .split('\0')
            .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}"));
        // The spec the rank runs lies in this test's store.
        if is_rank && cmd.contains(&*store) {
            return Some(pid);
        }
    }
    None
}

/// RegMix's trained proxies train data parallel too: the same search on 2
/// ranks scores the same proxies as on 1 and chooses the same mixture.
#[test]
fn a_trained_proxy_search_on_two_ranks_scores_what_one_rank_scores() {
    if !mpi() {
        return;
    }
    let env = Env::new();
    let mut m = manifest(&[("base", 1, 5)], 10 * 8 * 32);
    for (id, ranks, seed) in [("one", 1, 0), ("two", 2, 0)] {
        // `top_k` differs only to keep the two steps' keys apart; the proxies'
        // scores, compared below, do not depend on it.
        let top_k = if ranks == 1 { 1 } else { 2 };
        m.push_str(&format!(
            r#"  - id: {id}
    kind: search
    proxy: trained
    base: ${{steps.base.checkpoint}}
    train: {{tokens: 512, batch_size: 4, seq_len: 32, lr: 0.003}}
    candidates: [sotu, math]
    targets: [sotu, math]
    rounds: [4]
    top_k: {top_k}
    pool: 50
    seed: {seed}
    max_tokens: 512
    seq_len: 32
    device: cpu
    resources: {{cpus: 2, ranks: {ranks}}}
"#
        ));
    }
    env.write("demix.yaml", &m);
    env.demix(&["run", "-j", "1"]).ok();
    let scores = |s: &str| -> Vec<Vec<f64>> {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(output_path(&env, "dp", s, "result")).unwrap())
                .unwrap();
        r["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (a, b) = (scores("one"), scores("two"));
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "proxy loss {x} on 1 rank, {y} on 2"
        );
    }
    assert!(
        !env.path("cache/resume")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "scratch left"
    );
}
