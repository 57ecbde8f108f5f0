//! The ML steps under crashes and bad input: a step stuck in a library call
//! still stops, a killed training leaves no trace in its rerun's outputs, and
//! models, mixtures and weights that cannot work are refused with their names.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::harness::{Env, output_path};
use demix_mix::checkpoint::TensorSpec;

fn data() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// A corpus on which BPE training takes minutes: many distinct random words.
fn slow_corpus(env: &Env) {
    let mut s = String::new();
    let mut x: u64 = 7;
    for _ in 0..300 {
        let mut doc = String::new();
        for _ in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 3 + (x >> 60) as usize % 10;
            for k in 0..len {
                doc.push((b'a' + ((x >> (k * 5 % 55)) % 26) as u8) as char);
            }
            doc.push(' ');
        }
        s.push_str(&serde_json::json!({ "text": doc }).to_string());
        s.push('\n');
    }
    env.write("w.jsonl", &s);
    env.write(
        "demix.yaml",
        "version: 1\nname: stuck\ndatasets:\n  w: {files: w.jsonl}\nsteps:\n  - {id: tok, kind: tokenizer, datasets: [w], vocab_size: 8000}\n",
    );
}

/// A step busy inside a call that cannot be interrupted (the BPE trainer)
/// still ends within seconds of its parent's death or of a stop signal.
#[test]
fn a_step_stuck_in_a_library_call_stops_when_asked_or_orphaned() {
    if !crate::harness::worker() {
        return;
    }
    for how in ["parent killed", "group terminated"] {
        let env = Env::new();
        slow_corpus(&env);
        let needle = env.dir.path().to_str().unwrap().to_string();
        let mut child = env
            .cmd(&["run"])
            .env("DEMIX_CANCEL_GRACE", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // The step process is up and in the trainer (the sample is read first).
        wait_for("the step starting", Duration::from_secs(60), || {
            processes_with(&format!("{needle}/cache/tmp/specs")).len() == 1
        });
        std::thread::sleep(Duration::from_secs(2));
        let step = processes_with(&format!("{needle}/cache/tmp/specs"));
        assert_eq!(
            step.len(),
            1,
            "{how}: the step finished before it could be stopped"
        );
        let pgid = child.id() as i32;
        // SAFETY: signals our own child, or the process group we made.
        unsafe {
            if how == "parent killed" {
                libc::kill(pgid, libc::SIGKILL);
            } else {
                libc::kill(-pgid, libc::SIGTERM);
            }
        }
        child.wait().unwrap();
        let what = format!(
            "{how}: the step process ending ({:?} left)",
            processes_with(&needle)
        );
        let took = wait_for(&what, Duration::from_secs(15), || {
            processes_with(&needle).is_empty()
        });
        assert!(took < Duration::from_secs(15), "{how}: {took:?}");
        // Nothing half done reached the store; gc clears its work folder.
        assert!(!env.path("cache/state/stuck/tok.json").exists());
        env.demix(&["gc"]).ok();
        env.demix(&["verify"]).ok();
    }
}

/// One enormous "word" (a minified file, a blob) does not make the tokenizer
/// quadratic: it reaches the trainer in pieces, and the step finishes.
#[test]
fn an_oversized_document_is_cut_for_the_tokenizer() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    let word = "ab".repeat(250_000);
    env.write(
        "d/w.jsonl",
        &format!(
            "{}\n{}\n",
            serde_json::json!({ "text": word }),
            serde_json::json!({ "text": "a few ordinary words" })
        ),
    );
    env.write(
        "demix.yaml",
        "version: 1\nname: big\ndatasets:\n  x: {files: d/w.jsonl}\nsteps:\n  - {id: tok, kind: tokenizer, datasets: [x], vocab_size: 300, max_bytes: 400000}\n",
    );
    env.demix(&["run"]).ok();
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output_path(&env, "big", "tok", "sample")).unwrap())
            .unwrap();
    // The budget cut the big document: 400,000 bytes, not 500,020.
    assert_eq!(s["datasets"][0]["bytes_used"], 400_000);
    assert_eq!(s["datasets"][0]["documents_cut"], 1);
}

fn train_manifest(extra: &str) -> String {
    format!(
        r#"version: 1
name: t
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
steps:
  - {{id: tok, kind: tokenizer, datasets: [sotu, math], vocab_size: 400, max_bytes: 100000}}
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1}}
    tokens: 65536
    batch_size: 8
    seq_len: 32
    device: cpu
    threads: 1
{extra}"#,
        d = data().display()
    )
}

/// A training killed before its first saved state starts again from scratch,
/// and what it commits equals an uninterrupted run's, metrics included.
#[test]
fn a_killed_training_reruns_to_the_bytes_of_an_uninterrupted_one() {
    if !crate::harness::worker() {
        return;
    }
    let clean = Env::new();
    clean.write("demix.yaml", &train_manifest(""));
    clean.demix(&["run"]).ok();
    let want_metrics = std::fs::read(output_path(&clean, "t", "base", "metrics")).unwrap();
    let want_model =
        std::fs::read(output_path(&clean, "t", "base", "checkpoint").join("model.safetensors"))
            .unwrap();

    let env = Env::new();
    env.write("demix.yaml", &train_manifest(""));
    env.demix(&["run", "--target", "tok"]).ok();
    let mut child = env
        .cmd(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Killed mid-training: some metrics lines written, no state saved yet.
    let metrics_written = || {
        std::fs::read_dir(env.path("cache/resume"))
            .map(|d| {
                d.flatten().any(|e| {
                    std::fs::metadata(e.path().join("metrics.jsonl")).is_ok_and(|m| m.len() > 200)
                })
            })
            .unwrap_or(false)
    };
    wait_for("metrics lines", Duration::from_secs(120), metrics_written);
    // SAFETY: the process group we made.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
    env.demix(&["run"]).ok();
    assert_eq!(
        std::fs::read(output_path(&env, "t", "base", "metrics")).unwrap(),
        want_metrics,
        "the rerun's metrics hold the killed attempt's lines"
    );
    assert_eq!(
        std::fs::read(output_path(&env, "t", "base", "checkpoint").join("model.safetensors"))
            .unwrap(),
        want_model
    );
}

#[test]
fn a_model_too_large_to_allocate_is_an_error_that_names_the_size() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    let huge = train_manifest("").replace(
        "model: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,",
        "model: {hidden_size: 65536, intermediate_size: 65536, num_hidden_layers: 2,",
    );
    env.write("demix.yaml", &huge);
    let r = env.demix(&["run"]).fails(1);
    let e = r.stderr();
    assert!(
        e.contains("needs about") && e.contains("hidden_size 65536"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // With a memory limit the same model is refused before anything runs.
    env.write(
        "demix.yaml",
        &huge.replace(
            "    threads: 1\n",
            "    threads: 1\n    resources: {memory: 8GiB}\n",
        ),
    );
    let r = env.demix(&["check"]).fails(2);
    assert!(
        r.stderr().contains("more than `resources.memory`"),
        "{}",
        r.stderr()
    );
}

#[test]
fn mixture_files_and_weights_that_cannot_work_are_refused_with_their_names() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    env.write("d/mix.json", r#"{"math": -1, "sotu": 2}"#);
    env.write(
        "demix.yaml",
        &train_manifest(
            r#"  - id: fin
    kind: train
    init: ${steps.base.checkpoint}
    mixture: d/mix.json
    datasets: [math, sotu]
    tokens: 1024
    batch_size: 8
    seq_len: 32
    device: cpu
    threads: 1
  - id: merged
    kind: merge
    models: ["${steps.base.checkpoint}", nan-model]
    weights: [1, 1]
  - id: ev
    kind: evaluate
    checkpoint: nan-model
    datasets: [math]
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
"#,
        ),
    );
    env.demix(&["run", "--target", "base"]).ok();
    // A checkpoint whose weights hold NaN.
    let base = output_path(&env, "t", "base", "checkpoint");
    std::fs::create_dir_all(env.path("nan-model")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(base.join(f), env.path(&format!("nan-model/{f}"))).unwrap();
    }
    // The same tensors, read as f32 with demix's own safetensors reader.
    let ck = demix_mix::checkpoint::Checkpoint::open(&base).unwrap();
    let tensors: Vec<(TensorSpec, Vec<f32>)> = ck
        .names()
        .map(|name| {
            let info = ck.info(name).unwrap();
            let mut v = ck.read_f32(name).unwrap();
            if name == "model.norm.weight" {
                v.fill(f32::NAN);
            }
            let spec = TensorSpec {
                name: name.to_string(),
                dtype: demix_mix::checkpoint::Dtype::F32,
                shape: info.shape.clone(),
            };
            (spec, v)
        })
        .collect();
    demix_mix::checkpoint::save_f32(env.path("nan-model/model.safetensors"), &tensors).unwrap();
    let r = env.demix(&["run", "-k"]).fails(1);
    let e = r.stderr();
    assert!(
        e.contains("mix.json: mixture weight of `math` must be a finite number >= 0"),
        "{e}"
    );
    assert!(e.contains("tensor `model.norm.weight` of the merge"), "{e}");
    assert!(e.contains("is not finite"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// Data that is not what its dataset says: each case of `tests/data/bad/` is
/// refused with the file (and line, where there is one) and the reason.
#[test]
fn bad_data_is_refused_with_its_file_and_reason() {
    if !crate::harness::worker() {
        return;
    }
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad");
    let cases = [
        ("empty.jsonl", "has no training documents"),
        ("blank-lines.jsonl", "has no training documents"),
        (
            "numeric-text.jsonl",
            "numeric-text.jsonl:2: field 'text' is not a string",
        ),
        ("not-json.jsonl", "not-json.jsonl:1: invalid JSON"),
        (
            "no-text-field.jsonl",
            "no-text-field.jsonl:1: no field 'text'",
        ),
        ("not-utf8.txt", "not-utf8.txt"),
        ("not-gzip.jsonl.gz", "not-gzip.jsonl.gz"),
    ];
    let files: Vec<String> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.len(),
        cases.len(),
        "every file of the corpus has a case: {files:?}"
    );
    for (file, want) in cases {
        let env = Env::new();
        env.write(
            "demix.yaml",
            &format!(
                "version: 1\nname: bad\ndatasets:\n  x: {{files: {}}}\nsteps:\n  - {{id: tok, kind: tokenizer, datasets: [x], vocab_size: 300}}\n",
                corpus.join(file).display()
            ),
        );
        let r = env.demix(&["run"]).fails(1);
        let e = r.stderr();
        assert!(e.contains(want), "{file}: expected `{want}` in:\n{e}");
        assert!(e.contains("dataset `x`") || e.contains(file), "{file}: {e}");
        assert!(!e.contains("panicked"), "{file}: {e}");
        assert!(!env.path("cache/state/bad/tok.json").exists());
    }
}

/// `mixture: uniform` weighs `datasets` equally: it trains what the same
/// weights written out train, and it is checked where it is written.
#[test]
fn a_uniform_mixture_trains_what_equal_weights_train() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    let step = |id: &str, mix: &str| {
        format!(
            r#"  - id: {id}
    kind: train
    init: ${{steps.base.checkpoint}}
{mix}
    tokens: 1024
    batch_size: 8
    seq_len: 32
    device: cpu
    threads: 1
"#
        )
    };
    let extra = step("uni", "    mixture: uniform\n    datasets: [sotu, math]")
        + &step("written", "    data: {sotu: 1, math: 1}")
        + &step(
            "uni_g",
            "    mixture: uniform\n    datasets: [math]\n    general: sotu\n    beta: 0.5",
        );
    env.write("demix.yaml", &train_manifest(&extra));
    env.demix(&["run"]).ok();
    let bytes = |s: &str| {
        std::fs::read(output_path(&env, "t", s, "checkpoint").join("model.safetensors")).unwrap()
    };
    assert!(
        bytes("uni") == bytes("written"),
        "uniform differs from equal weights"
    );
    assert!(
        bytes("uni_g") == bytes("written"),
        "uniform over math with sotu at 0.5 is the same mixture"
    );
    let card =
        std::fs::read_to_string(output_path(&env, "t", "uni", "checkpoint").join("README.md"))
            .unwrap();
    assert!(card.contains("uniform"), "{card}");
    // Without `datasets`, or with `pick`: located errors before anything runs.
    env.write(
        "demix.yaml",
        &train_manifest(
            &(step("a", "    mixture: uniform")
                + &step(
                    "b",
                    "    mixture: uniform\n    datasets: [sotu]\n    pick: 1",
                )),
        ),
    );
    let r = env.demix(&["check"]).fails(2);
    let err = r.stderr();
    assert!(err.contains("`mixture: uniform` needs `datasets`"), "{err}");
    assert!(err.contains("`pick` takes one mixture of a list"), "{err}");
    assert!(err.contains("demix.yaml:"), "{err}");
}
