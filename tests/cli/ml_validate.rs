//! Validation against trained references through the CLI: `sample`, references
//! trained with `pick`, the RegMix baseline (`proxy: trained`), `validate` and
//! the report; and the negative test: components without a shared base do not
//! merge into models of mixtures, and the validation says so.

use crate::harness::{Env, interrupt_when, output_path};

const TRAIN: &str = "batch_size: 4\n    seq_len: 32\n    device: cpu\n    threads: 1";

fn header() -> String {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    format!(
        r#"version: 1
name: val
params:
  candidates: [math, chat]
  targets: [sotu, math, chat]
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
  chat: {{files: {d}/chat/train.jsonl, validation: {d}/chat/validation.jsonl}}
steps:
  - {{id: tok, kind: tokenizer, datasets: [sotu, math, chat], vocab_size: 512, max_bytes: 300000}}
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1}}
    tokens: 8192
    lr: 0.01
    {TRAIN}
  - id: mixtures
    kind: sample
    tokenizer: ${{steps.tok.tokenizer}}
    candidates: ${{params.candidates}}
    count: 5
    seed: 7
  - id: reference
    kind: train
    foreach: {{range: 5}}
    init: ${{steps.base.checkpoint}}
    mixture: ${{steps.mixtures.mixtures}}
    pick: ${{item}}
    datasets: ${{params.candidates}}
    general: sotu
    beta: 0.5
    tokens: 4096
    lr: 0.003
    {TRAIN}
  - id: reference_eval
    kind: evaluate
    foreach: {{range: 5}}
    checkpoint: ${{steps.reference[$item].checkpoint}}
    datasets: ${{params.targets}}
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
"#,
        d = data.display()
    )
}

fn shared_base() -> String {
    header()
        + &format!(
            r#"  - id: component
    kind: train
    foreach: ${{params.candidates}}
    init: ${{steps.base.checkpoint}}
    data: {{candidate: "${{item}}", general: sotu, beta: 0.5}}
    tokens: 4096
    lr: 0.003
    {TRAIN}
  - id: search
    kind: search
    components: ${{steps.component[*].checkpoint}}
    candidates: ${{params.candidates}}
    targets: ${{params.targets}}
    rounds: [5, 3]
    top_k: 3
    pool: 200
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: regmix
    kind: search
    proxy: trained
    base: ${{steps.base.checkpoint}}
    general: sotu
    train: {{tokens: 1024, batch_size: 4, seq_len: 32, lr: 0.003}}
    candidates: ${{params.candidates}}
    targets: ${{params.targets}}
    rounds: [3, 1]
    top_k: 2
    pool: 200
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: final
    kind: train
    init: ${{steps.base.checkpoint}}
    mixture: ${{steps.search.mixture}}
    datasets: ${{params.candidates}}
    general: sotu
    tokens: 4096
    lr: 0.003
    {TRAIN}
  - id: final_eval
    kind: evaluate
    checkpoint: ${{steps.final.checkpoint}}
    datasets: ${{params.targets}}
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: validate
    kind: validate
    mixtures: ${{steps.mixtures.mixtures}}
    references: ${{steps.reference_eval[*].metrics}}
    candidates: ${{params.candidates}}
    targets: ${{params.targets}}
    components: ${{steps.component[*].checkpoint}}
    proxies:
      refs: ${{steps.reference_eval[*].metrics}}
    searches:
      demix: ${{steps.search.result}}
      regmix: ${{steps.regmix.result}}
    finals:
      demix: ${{steps.final_eval.metrics}}
    bootstrap: 50
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: validate_parallel
    kind: validate
    mixtures: ${{steps.mixtures.mixtures}}
    references: ${{steps.reference_eval[*].metrics}}
    candidates: ${{params.candidates}}
    targets: ${{params.targets}}
    components: ${{steps.component[*].checkpoint}}
    workers: 2
    resident: true
    bootstrap: 0
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
  - id: report
    kind: report
    search: ${{steps.search.result}}
    validation: ${{steps.validate.result}}
    candidates: ${{params.candidates}}
"#
        )
}

fn json(env: &Env, step: &str, output: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output_path(env, "val", step, output)).unwrap()).unwrap()
}

#[test]
fn references_proxies_and_the_regmix_baseline_are_validated() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    env.write("demix.yaml", &shared_base());
    let r = env.demix(&["run"]).ok();
    let ran = r.ran();
    for s in ["mixtures", "reference[4]", "regmix", "validate", "report"] {
        assert!(ran.contains(&s.to_string()), "{s} did not run: {ran:?}");
    }
    // The sampled mixtures: 5 distinct, on the simplex, over the candidates.
    let m = json(&env, "mixtures", "mixtures");
    let m = m.as_array().unwrap();
    assert_eq!(m.len(), 5);
    for w in m {
        let o = w.as_object().unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["chat", "math"]);
        let s: f64 = o.values().map(|x| x.as_f64().unwrap()).sum();
        assert!((s - 1.0).abs() < 1e-9, "{w}");
    }
    assert!((1..5).all(|i| m[i] != m[0]), "distinct mixtures");
    // The RegMix baseline trained 3 + 1 proxies and chose a mixture.
    let regmix = json(&env, "regmix", "result");
    assert_eq!(regmix["proxies"].as_array().unwrap().len(), 4);
    let v = json(&env, "validate", "result");
    assert_eq!(v["references"], 5);
    let names: Vec<&str> = v["predictors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["merged", "linear", "refs", "demix", "regmix", "weights"]
    );
    // What each cost, from the lineage (no `costs:` in the manifest): two
    // components of 4096 tokens; the 5 evaluated references of 4096 each;
    // RegMix's 4 proxies of 1024; weights nothing.
    let tokens: Vec<serde_json::Value> = v["predictors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["training_tokens"].clone())
        .collect();
    assert_eq!(
        tokens,
        serde_json::json!([8192, 8192, 20480, 8192, 4096, null])
            .as_array()
            .unwrap()
            .clone()
    );
    for p in v["predictors"].as_array().unwrap() {
        assert_eq!(p["targets"].as_array().unwrap().len(), 3, "{p}");
    }
    // Components that share a base merge into working models: no warning.
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    let merged = &v["predictors"][0];
    let rec = merged["macro_recovery"].as_f64().unwrap();
    assert!(
        rec > 0.8 && rec < 1.2,
        "merged proxies recover the references' loss: {rec}"
    );
    let fin = &v["finals"][0];
    let rank = fin["macro_rank"].as_f64().unwrap();
    assert!((1.0..=6.0).contains(&rank), "{fin}");
    let md = std::fs::read_to_string(output_path(&env, "val", "validate", "summary")).unwrap();
    assert!(md.contains("| merged | Proxy |"), "{md}");
    // Two workers merging on the device give the one streaming worker's scores,
    // in the mixtures' order.
    let p = json(&env, "validate_parallel", "result");
    let rows = |v: &serde_json::Value| -> Vec<f64> {
        v["predicted"][0]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (rows(&v), rows(&p));
    assert_eq!(a.len(), 15);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "{a:?}\n{b:?}");
    }
    let html = std::fs::read_to_string(output_path(&env, "val", "report", "html")).unwrap();
    assert!(html.contains("id=\"validation\""), "no validation section");
    assert!(html.contains("merged: objective"), "no objective scatter");
    assert!(env.demix(&["run"]).ok().ran().is_empty(), "all cached");
}

#[test]
fn merging_models_without_a_shared_base_visibly_fails() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    // Two models from different random inits, trained on the same recipe.
    let m = header()
        + &format!(
            r#"  - id: independent
    kind: train
    foreach: {{range: 2}}
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2}}
    seed: ${{item}}
    data: {{sotu: 0.5, math: 0.25, chat: 0.25}}
    tokens: 8192
    lr: 0.01
    {TRAIN}
  - id: validate
    kind: validate
    mixtures: ${{steps.mixtures.mixtures}}
    references: ${{steps.reference_eval[*].metrics}}
    candidates: ${{params.candidates}}
    targets: ${{params.targets}}
    components: ${{steps.independent[*].checkpoint}}
    bootstrap: 0
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
"#
        );
    env.write("demix.yaml", &m);
    env.demix(&["run"]).ok();
    let v = json(&env, "validate", "result");
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        !warnings.is_empty(),
        "no warning for unrelated components: {v}"
    );
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("do not look like fine-tunes of one base"),
        "{warnings:?}"
    );
    let md = std::fs::read_to_string(output_path(&env, "val", "validate", "summary")).unwrap();
    assert!(md.contains("**Warning:**"), "{md}");
}

#[test]
fn a_pick_beyond_the_sampled_mixtures_is_an_error() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    let m = header().replace(
        "foreach: {range: 5}\n    init:",
        "foreach: {range: 6}\n    init:",
    );
    env.write("demix.yaml", &m);
    let r = env.demix(&["run", "-t", "reference[5]"]).fails(1);
    assert!(
        r.stderr()
            .contains("`pick: 5` but the file holds 5 mixtures"),
        "{}",
        r.stderr()
    );
}

#[test]
fn an_interrupted_regmix_search_resumes_its_scored_proxies() {
    if !crate::harness::worker() {
        return;
    }
    let reference = Env::new();
    reference.write("demix.yaml", &shared_base());
    reference.demix(&["run", "--target", "regmix"]).ok();
    let want = json(&reference, "regmix", "result");

    let env = Env::new();
    env.write("demix.yaml", &shared_base());
    env.demix(&["run", "--target", "base"]).ok();
    // Interrupt once two proxies are scored.
    let code = interrupt_when(&env, &["run", "--target", "regmix"], "scored proxy", |d| {
        std::fs::read_to_string(d.join("scored.jsonl")).is_ok_and(|s| s.lines().count() >= 2)
    });
    assert_eq!(code, Some(130));
    let r = env.demix(&["run", "--target", "regmix"]).ok();
    assert_eq!(r.ran(), ["regmix"]);
    let log = std::fs::read_dir(env.path("cache/logs"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find(|s| s.contains("resuming with"))
        .expect("the rerun says it resumed");
    assert!(!log.contains("resuming with 0 "), "{log}");
    let got = json(&env, "regmix", "result");
    // The rerun took the scored proxies from the journal: same proxies, same
    // scores, same choice as an uninterrupted run.
    for k in ["proxies", "chosen"] {
        let strip = |v: &serde_json::Value| v[k].to_string();
        assert_eq!(strip(&got), strip(&want), "{k}");
    }
    assert!(
        std::fs::read_dir(env.path("cache/resume")).map_or(true, |d| d.count() == 0),
        "the scratch folder is removed once the search is done"
    );
}

/// A merged-proxy search killed mid-way (the whole process group, no chance to
/// clean up) resumes from its journal of scored proxies, to the result of an
/// uninterrupted search.
#[test]
fn a_killed_merge_search_resumes_its_scored_proxies() {
    if !crate::harness::worker() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let reference = Env::new();
    reference.write("demix.yaml", &shared_base());
    let r = reference.demix(&["-v", "run", "--target", "search"]).ok();
    let want = json(&reference, "search", "result");
    // Its progress: the rate, the time left, and from round 2 the best
    // objective so far.
    let err = r.stderr();
    let last = err
        .lines()
        .rfind(|l| l.contains("search: ") && l.contains("round 2/2"));
    let last = last.unwrap_or_else(|| panic!("no progress of round 2: {err}"));
    assert!(
        last.contains("proxies/min") && last.contains("best mean_loss "),
        "{last}"
    );
    assert!(err.contains("ETA "), "{err}");

    let env = Env::new();
    env.write("demix.yaml", &shared_base());
    env.demix(&["run", "--target", "component"]).ok();
    let mut child = env
        .cmd(&["run", "--target", "search"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let scored = || {
        std::fs::read_dir(env.path("cache/resume")).is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("scored.jsonl"))
                    .is_ok_and(|s| s.lines().count() >= 3)
            })
        })
    };
    while !scored() {
        assert!(t0.elapsed().as_secs() < 120, "no proxy was scored");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: the process group we made.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
    let r = env.demix(&["run", "--target", "search"]).ok();
    assert_eq!(r.ran(), ["search"]);
    let log = std::fs::read_dir(env.path("cache/logs"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find(|s| s.contains("resuming with"))
        .expect("the rerun says it resumed");
    assert!(!log.contains("resuming with 0 "), "{log}");
    let got = json(&env, "search", "result");
    for k in ["proxies", "chosen", "target_noise"] {
        assert_eq!(got[k].to_string(), want[k].to_string(), "{k}");
    }
}

/// A merge-search whose proxies an external evaluator scores (transformers,
/// through workflows/scripts/hf_eval.py): the same mixtures as demix's own
/// search (same seed), scored within sampling error of demix's scores; a
/// failing evaluator fails the step naming the proxy.
#[test]
fn an_external_evaluator_scores_a_searchs_proxies() {
    if !crate::harness::worker() {
        return;
    }
    let Some(py) = crate::harness::hf_python() else {
        return;
    };
    let env = Env::new();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/scripts/hf_eval.py");
    std::fs::copy(&script, env.path("hf_eval.py")).unwrap();
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let run = format!(
        r#"exec "$DEMIX_PYTHON" hf_eval.py "$DEMIX_PROXY_CHECKPOINT" "$DEMIX_PROXY_METRICS" sotu={d}/sotu/validation.jsonl math={d}/math/validation.jsonl chat={d}/chat/validation.jsonl --max-tokens 512 --seq-len 32"#,
        d = data.display()
    );
    let external = format!(
        r#"  - id: ext
    kind: search
    components: ${{steps.component[*].checkpoint}}
    candidates: ${{params.candidates}}
    targets: ${{params.targets}}
    rounds: [2, 1]
    top_k: 1
    pool: 200
    max_tokens: 512
    seq_len: 32
    device: cpu
    threads: 1
    evaluator:
      run: [sh, -c, '{run}']
      files: [hf_eval.py]
"#
    );
    let own = shared_base().replace("rounds: [5, 3]", "rounds: [2, 1]");
    env.write("demix.yaml", &(own.clone() + &external));
    let r = env
        .cmd(&["run", "--target", "search", "--target", "ext"])
        .env("DEMIX_PYTHON", &py)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (a, b) = (json(&env, "search", "result"), json(&env, "ext", "result"));
    let (pa, pb) = (
        a["proxies"].as_array().unwrap(),
        b["proxies"].as_array().unwrap(),
    );
    assert_eq!(pb.len(), 3);
    // Round 1 is drawn by the seed alone: the same mixtures, scored twice.
    for (x, y) in pa.iter().zip(pb).filter(|(x, _)| x["round"] == 1) {
        assert_eq!(x["weights"], y["weights"]);
        for (s, t) in x["scores"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["scores"].as_array().unwrap())
        {
            let (s, t) = (s.as_f64().unwrap(), t.as_f64().unwrap());
            assert!((s - t).abs() < 0.25 * s, "demix {s}, transformers {t}");
        }
    }
    // An evaluator that fails names the proxy and points at the log.
    env.write(
        "demix.yaml",
        &(own + &external.replace("exec \"$DEMIX_PYTHON\" hf_eval.py", "exit 3; hf_eval.py")),
    );
    let r = env.demix(&["run", "--target", "ext"]).fails(1);
    assert!(
        r.stderr().contains("evaluator on the proxy at weights ")
            && r.stderr().contains("exited with status 3"),
        "{}",
        r.stderr()
    );
}
