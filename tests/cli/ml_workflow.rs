//! The ML step kinds through the CLI: tokenizer -> train -> component -> evaluate on
//! the shipped corpora, cached, resumable after an interrupt, byte-identical.

use crate::harness::{Env, interrupt_when, output_path};

fn manifest(tokens: u64) -> String {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    format!(
        r#"version: 1
name: ml
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
steps:
  - id: tok
    kind: tokenizer
    datasets: [sotu, math]
    vocab_size: 512
    max_bytes: 300000
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1}}
    tokens: {tokens}
    batch_size: 4
    seq_len: 32
    lr: 0.003
    checkpoints: [2048]
    state_every_steps: 2
    device: cpu
    threads: 1
  - id: comp
    kind: train
    init: ${{steps.base.checkpoint}}
    data: {{candidate: math, general: sotu, beta: 0.5}}
    tokens: 2048
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: eval
    kind: evaluate
    checkpoint: ${{steps.comp.checkpoint}}
    datasets: [sotu, math]
    tasks: {{qa: {d}/tasks/math_qa.jsonl}}
    max_tokens: 2048
    seq_len: 32
    max_examples: 5
    max_new_tokens: 4
    device: cpu
    threads: 1
"#,
        d = data.display()
    )
}

#[test]
fn an_ml_workflow_runs_caches_and_traces() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    env.write("demix.yaml", &manifest(4096));
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran().len(), 4, "{}", r.stderr());
    let ckpt = output_path(&env, "ml", "base", "checkpoint");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(ckpt.join(f).is_file(), "{f} missing in {}", ckpt.display());
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(config["vocab_size"], 512);
    assert!(
        output_path(&env, "ml", "base", "tokens_2048")
            .join("model.safetensors")
            .is_file()
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output_path(&env, "ml", "eval", "metrics")).unwrap())
            .unwrap();
    for d in ["sotu", "math"] {
        let bpb = m["datasets"][d]["bits_per_byte"].as_f64().unwrap();
        assert!(bpb.is_finite() && bpb > 0.0, "{m}");
    }
    assert_eq!(m["checkpoint"], "${steps.comp.checkpoint}");
    assert_eq!(m["tasks"]["qa"]["examples"], 5);
    let metrics = std::fs::read_to_string(output_path(&env, "ml", "base", "metrics")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        32,
        "one line per step (4096 tokens / 128 per step)"
    );
    // Nothing changed: nothing runs. Lineage reaches the corpus files.
    assert!(env.demix(&["run"]).ok().ran().is_empty());
    let l = env.demix(&["lineage", "eval", "--full"]).ok().stdout();
    assert!(
        l.contains("step comp (train v3)")
            && l.contains("step base (train v3)")
            && l.contains("sotu/train.jsonl"),
        "{l}"
    );
    // A different mixture share reruns the component and its evaluation only.
    env.write(
        "demix.yaml",
        &manifest(4096).replace("beta: 0.5", "beta: 0.25"),
    );
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran(), ["comp", "eval"], "{}", r.stderr());
}

#[test]
fn an_interrupted_training_resumes_to_the_same_bytes() {
    if !crate::harness::worker() {
        return;
    }
    let reference = Env::new();
    reference.write("demix.yaml", &manifest(16384));
    reference.demix(&["run", "--target", "base"]).ok();
    let want = std::fs::read(
        output_path(&reference, "ml", "base", "checkpoint").join("model.safetensors"),
    )
    .unwrap();

    let env = Env::new();
    env.write("demix.yaml", &manifest(16384));
    // Wait until training has saved a resumable state, then interrupt.
    let code = interrupt_when(&env, &["run", "--target", "base"], "resume state", |d| {
        d.join("state").is_dir()
    });
    assert_eq!(code, Some(130));
    assert!(
        !env.path("cache/state/ml/base.json").exists(),
        "no result for an interrupted step"
    );
    let r = env.demix(&["run", "--target", "base"]).ok();
    assert_eq!(r.ran(), ["base"]);
    let log = std::fs::read_dir(env.path("cache/logs"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .find(|s| s.contains("\"resumed_from_step\""))
        .expect("a training summary in the log");
    assert!(
        !log.contains("\"resumed_from_step\":0"),
        "the rerun resumed: {log}"
    );
    let got =
        std::fs::read(output_path(&env, "ml", "base", "checkpoint").join("model.safetensors"))
            .unwrap();
    assert!(
        got == want,
        "a resumed run must equal an uninterrupted one byte for byte"
    );
    assert!(
        !env.path("cache/resume").read_dir().unwrap().any(|_| true),
        "resume state is removed after success"
    );
}

#[test]
fn doctor_reports_libtorch() {
    if !crate::harness::worker() {
        return;
    }
    let out = Env::new().demix(&["doctor"]).ok().stdout();
    assert!(out.contains("libtorch:     2.11.0"), "{out}");
    assert!(out.contains("cuda:"), "{out}");
}

/// A tokenizer, a tiny training with a budget checkpoint, and a merge of both
/// checkpoints.
fn cards_manifest() -> String {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    format!(
        r#"version: 1
name: cards
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
steps:
  - {{id: tok, kind: tokenizer, datasets: [sotu, math], vocab_size: 300, max_bytes: 100000}}
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}}
    data: {{sotu: 3, math: 1}}
    tokens: 512
    batch_size: 2
    seq_len: 16
    checkpoints: [256]
    device: cpu
    threads: 1
  - id: merged
    kind: merge
    models:
      - ${{steps.base.checkpoint}}
      - ${{steps.base.tokens_256}}
    weights: [1, 3]
"#,
        d = data.display()
    )
}

/// Checkpoint folders are Hugging Face models that say where they came
/// from: bos/eos are the tokenizer's end-of-text token (config.json and
/// generation_config.json), and README.md is a model card with the data, the
/// resolved hyperparameters and the step that wrote it, the same bytes when
/// the step runs again.
#[test]
fn checkpoints_carry_special_ids_and_a_model_card() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    env.write("demix.yaml", &cards_manifest());
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran().len(), 3, "{}", r.stderr());
    let json = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))).unwrap()
    };
    let tok = json(output_path(&env, "cards", "tok", "tokenizer"));
    let eos = tok["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["content"] == "<|endoftext|>")
        .unwrap()["id"]
        .clone();
    let state = json(env.path("cache/state/cards/base.json"));
    let key = state["key"].as_str().unwrap();
    for (output, seen) in [("checkpoint", "512"), ("tokens_256", "256")] {
        let ck = output_path(&env, "cards", "base", output);
        let config = json(ck.join("config.json"));
        assert_eq!(
            (&config["bos_token_id"], &config["eos_token_id"]),
            (&eos, &eos)
        );
        let g = json(ck.join("generation_config.json"));
        assert_eq!((&g["bos_token_id"], &g["eos_token_id"]), (&eos, &eos));
        let card = std::fs::read_to_string(ck.join("README.md")).unwrap();
        for want in [
            "---\nlibrary_name: transformers\n",
            "- demix\n",
            "datasets:\n- \"math\"\n- \"sotu\"\n---\n",
            "| `math` | 0.25 |",
            "| `sotu` | 0.75 |",
            "| lr (peak) | `0.0003` |",
            "| warmup_tokens | `5` |",
            &format!("| tokens seen by this checkpoint | `{seen}` |"),
            "| workflow | `cards` |",
            "| step | `base` |",
            &format!("| step key | `{key}` |"),
            &format!("| demix version | `{}` |", env!("CARGO_PKG_VERSION")),
            "`tok.tokenizer`",
        ] {
            assert!(
                card.contains(want),
                "{want:?} not in {output}'s card:\n{card}"
            );
        }
        assert!(
            !card.contains(&env.path("").display().to_string()),
            "{card}"
        );
    }
    let merged = output_path(&env, "cards", "merged", "checkpoint");
    let card = std::fs::read_to_string(merged.join("README.md")).unwrap();
    for want in [
        "- \"merge\"",
        "datasets:\n- \"math\"\n- \"sotu\"\n---\n",
        "| `base.checkpoint` | 1 | 0.25 |",
        "| `base.tokens_256` | 3 | 0.75 |",
        "| step | `merged` |",
    ] {
        assert!(
            card.contains(want),
            "{want:?} not in the merge's card:\n{card}"
        );
    }
    assert_eq!(
        json(merged.join("generation_config.json"))["eos_token_id"],
        eos
    );
    // Run again: the same files, byte for byte (the same tree).
    let trees = |env: &Env| {
        ["base", "merged"]
            .map(|s| json(env.path(&format!("cache/state/cards/{s}.json")))["tree"].clone())
    };
    let before = trees(&env);
    let r = env
        .demix(&["run", "--force", "base", "--force", "merged"])
        .ok();
    assert_eq!(r.ran().len(), 2, "{}", r.stderr());
    assert_eq!(trees(&env), before);
}

fn search_manifest() -> String {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    format!(
        r#"version: 1
name: mini
params:
  candidates: [math, chat, spanish]
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
  chat: {{files: {d}/chat/train.jsonl, validation: {d}/chat/validation.jsonl}}
  spanish: {{files: {d}/spanish/train.jsonl, validation: {d}/spanish/validation.jsonl}}
steps:
  - {{id: tok, kind: tokenizer, datasets: [sotu, math, chat, spanish], vocab_size: 512, max_bytes: 400000}}
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1}}
    tokens: 4096
    batch_size: 4
    seq_len: 32
    lr: 0.003
    device: cpu
    threads: 1
  - id: component
    kind: train
    foreach: ${{params.candidates}}
    init: ${{steps.base.checkpoint}}
    data: {{candidate: "${{item}}", general: sotu, beta: 0.5}}
    tokens: 4096
    batch_size: 4
    seq_len: 32
    lr: 0.003
    device: cpu
    threads: 1
  - id: search
    kind: search
    components: ${{steps.component[*].checkpoint}}
    candidates: ${{params.candidates}}
    targets: [sotu, math, chat, spanish]
    rounds: [6, 4, 2]
    top_k: 4
    pool: 300
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: final
    kind: train
    init: ${{steps.base.checkpoint}}
    mixture: ${{steps.search.mixture}}
    datasets: ${{params.candidates}}
    tokens: 2048
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: merged
    kind: merge
    models: ${{steps.component[*].checkpoint}}
    weights: [1, 0, 0]
"#,
        d = data.display()
    )
}

#[test]
fn the_merge_search_chooses_a_mixture_that_trains() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    env.write("demix.yaml", &search_manifest());
    let r = env.demix(&["run"]).ok();
    assert!(r.ran().contains(&"search".to_string()), "{}", r.stderr());
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(output_path(&env, "mini", "search", "result")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        result["proxies"].as_array().unwrap().len(),
        12,
        "6 + 4 + 2 proxies"
    );
    for p in result["proxies"].as_array().unwrap() {
        let w: f64 = p["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((w - 1.0).abs() < 1e-9, "weights on the simplex: {p}");
        assert!(
            p["scores"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s.as_f64().unwrap().is_finite())
        );
    }
    let mixture: std::collections::BTreeMap<String, f64> = serde_json::from_slice(
        &std::fs::read(output_path(&env, "mini", "search", "mixture")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        mixture.keys().cloned().collect::<Vec<_>>(),
        ["chat", "math", "spanish"]
    );
    assert!(
        (mixture.values().sum::<f64>() - 1.0).abs() < 1e-6,
        "{mixture:?}"
    );
    assert!(
        output_path(&env, "mini", "final", "checkpoint")
            .join("model.safetensors")
            .is_file()
    );
    // A linear merge with weights (1, 0, 0) is the first component, tensor for tensor.
    let a =
        std::fs::read(output_path(&env, "mini", "merged", "checkpoint").join("model.safetensors"))
            .unwrap();
    let b = std::fs::read(
        output_path(&env, "mini", "component[math]", "checkpoint").join("model.safetensors"),
    )
    .unwrap();
    let tensors = |bytes: &[u8]| {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        bytes[8 + n..].to_vec()
    };
    assert!(
        tensors(&a) == tensors(&b),
        "merged data differs from the first component"
    );
    // merge.json names its inputs by step output, not by their place in a store.
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(output_path(&env, "mini", "merged", "checkpoint").join("merge.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        rec["inputs"],
        serde_json::json!([
            "component[math].checkpoint",
            "component[chat].checkpoint",
            "component[spanish].checkpoint"
        ])
    );
    assert!(env.demix(&["run"]).ok().ran().is_empty());
}

/// The tokenizer reads every dataset, by its share of the budget; evaluation
/// scores a sample spread over the whole split, the same for every model.
#[test]
fn the_tokenizer_samples_every_dataset_and_evaluation_spans_the_split() {
    if !crate::harness::worker() {
        return;
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let env = Env::new();
    env.write(
        "demix.yaml",
        &format!(
            r#"version: 1
name: sampled
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
  chat: {{files: {d}/chat/train.jsonl, validation: {d}/chat/validation.jsonl}}
steps:
  - id: tok
    kind: tokenizer
    datasets: [sotu, math, chat]
    vocab_size: 400
    max_bytes: 60000
    shares: {{sotu: 2}}
  - id: model
    kind: train
    foreach: [1, 2]
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}}
    data: {{math: 1}}
    seed: ${{item}}
    tokens: 512
    batch_size: 2
    seq_len: 16
    device: cpu
    threads: 1
  - id: eval
    kind: evaluate
    foreach: [1, 2]
    checkpoint: ${{steps.model[$item].checkpoint}}
    datasets: [math]
    max_tokens: 640
    seq_len: 32
    device: cpu
    threads: 1
"#,
            d = data.display()
        ),
    );
    env.demix(&["run"]).ok();
    let sample: serde_json::Value = serde_json::from_slice(
        &std::fs::read(output_path(&env, "sampled", "tok", "sample")).unwrap(),
    )
    .unwrap();
    // sotu has share 2 of 4: 30,000 bytes; math and chat 15,000 each, though
    // math, listed second, could fill the whole budget alone.
    let used: Vec<(String, f64)> = sample["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["bytes_used"].as_f64().unwrap(),
            )
        })
        .collect();
    for (name, want) in [("sotu", 30_000.0), ("math", 15_000.0), ("chat", 15_000.0)] {
        let got = used.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(
            (got - want).abs() <= 4.0,
            "{name}: {got} bytes, want {want}: {used:?}"
        );
    }
    // Both models are scored on the same documents, from all over the split.
    let docs = |m: &str| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(output_path(
                &env,
                "sampled",
                &format!("eval[{m}]"),
                "metrics",
            ))
            .unwrap(),
        )
        .unwrap();
        v["datasets"]["math"]["sample"]["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (a, b) = (docs("1"), docs("2"));
    assert_eq!(a, b);
    let n = 1342; // documents in data/math/validation.jsonl
    assert!(a.len() >= 10, "{a:?}");
    assert!(
        *a.first().unwrap() < n / 10 && *a.last().unwrap() > n * 9 / 10,
        "{a:?}"
    );
}

/// workflows/external-eval.yaml: an evaluator outside demix (transformers, in
/// a command step) writes demix's metrics format, and a report reads it beside
/// demix's own evaluation of the same checkpoint.
#[test]
fn an_external_evaluator_feeds_the_report() {
    if !crate::harness::worker() {
        return;
    }
    let Some(py) = crate::harness::hf_python() else {
        return;
    };
    let env = Env::new();
    let wf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/external-eval.yaml");
    let cache = env.path("cache");
    let r = env
        .cmd(&[
            "--cache",
            cache.to_str().unwrap(),
            "run",
            wf.to_str().unwrap(),
        ])
        .env("DEMIX_PYTHON", &py)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let read = |step: &str| -> serde_json::Value {
        let p = output_path(&env, "external-eval", step, "metrics");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (ext, own) = (read("hf_eval"), read("eval"));
    assert_eq!(ext["format"], "demix-metrics-v1");
    for d in ["sotu", "math"] {
        let a = ext["datasets"][d]["loss"].as_f64().unwrap();
        let b = own["datasets"][d]["loss"].as_f64().unwrap();
        let se = own["datasets"][d]["loss_se"].as_f64().unwrap();
        // Other windows of the same split: within a few standard errors.
        assert!(
            (a - b).abs() < 6.0 * se + 0.02,
            "{d}: transformers {a}, demix {b} (se {se})"
        );
    }
    let md =
        std::fs::read_to_string(output_path(&env, "external-eval", "report", "markdown")).unwrap();
    assert!(md.contains("| transformers | demix |"), "{md}");
}
