//! The engine through the CLI: incremental runs, reasons, early cutoff, the store,
//! concurrency, interruption.

use std::time::{Duration, Instant};

use crate::harness::{Env, output_path};

/// A small pipeline of shell steps: a fan-out, a step that reads a dataset, and a
/// step that joins other steps' outputs. Each step appends its id to `side.log`
/// so tests can count real executions.
const PIPELINE: &str = r#"version: 1
name: pipe
params:
  greeting: hello
  items: [a, b]
datasets:
  words: {files: "data/*.txt"}
steps:
  - id: greet
    kind: command
    foreach: ${params.items}
    outputs: {out: greet.txt}
    run: [sh, -c, 'echo "greet[$1]" >> side.log; echo "$0 $1" > "$2"', "${params.greeting}", "${item}", "${outputs.out}"]
  - id: count
    kind: command
    inputs: {words: "${datasets.words}"}
    outputs: {n: count.txt}
    run: [sh, -c, 'echo count >> side.log; cat "$@" | wc -w | tr -d " " > "$DEMIX_OUTPUT_N"', sh, "${inputs.words}"]
  - id: join
    kind: command
    inputs: {g: "${steps.greet[*].out}", n: "${steps.count.n}"}
    outputs: {all: all.txt}
    run: [sh, -c, 'echo join >> side.log; cat "$@" > "$DEMIX_OUTPUT_ALL"', sh, "${inputs.g}", "${inputs.n}"]
"#;

fn pipeline() -> Env {
    let env = Env::new();
    env.write("demix.yaml", PIPELINE);
    env.write("data/one.txt", "one two three\n");
    env.write("data/two.txt", "four five\n");
    env
}

fn side(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(env.path("side.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    std::fs::remove_file(env.path("side.log")).ok();
    v
}

fn status(env: &Env) -> serde_json::Value {
    env.demix(&["status", "--json"]).ok().json()
}

fn state_of(st: &serde_json::Value, id: &str) -> String {
    st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn reasons_of(st: &serde_json::Value, id: &str) -> Vec<String> {
    st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn first_run_runs_everything_second_runs_nothing() {
    let env = pipeline();
    let st = status(&env);
    for id in ["greet[a]", "greet[b]", "count", "join"] {
        assert_eq!(state_of(&st, id), "new");
    }
    env.demix(&["run"]).ok();
    assert_eq!(side(&env), ["count", "greet[a]", "greet[b]", "join"]);
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "pipe", "join", "all")).unwrap(),
        "hello a\nhello b\n5\n"
    );
    let r = env.demix(&["run"]).ok();
    assert!(r.ran().is_empty(), "{}", r.stderr());
    assert!(side(&env).is_empty());
    let st = status(&env);
    assert!(
        st["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "fresh")
    );
    assert_eq!(st["counts"]["fresh"], 4);
}

#[test]
fn a_parameter_change_reruns_exactly_the_affected_steps() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    side(&env);
    env.write(
        "demix.yaml",
        &PIPELINE.replace("greeting: hello", "greeting: bonjour"),
    );
    let st = status(&env);
    assert_eq!(state_of(&st, "count"), "fresh");
    assert_eq!(state_of(&st, "greet[a]"), "stale");
    assert_eq!(state_of(&st, "join"), "stale");
    let why = reasons_of(&st, "greet[a]");
    assert!(
        why.contains(&"parameter `params.greeting` changed: \"hello\" -> \"bonjour\"".to_string()),
        "{why:?}"
    );
    assert!(
        reasons_of(&st, "join")
            .iter()
            .any(|r| r.contains("upstream step `greet[a]` runs first"))
    );
    let text = env.demix(&["status"]).ok().stdout();
    assert!(
        text.contains("parameter `params.greeting` changed: \"hello\" -> \"bonjour\""),
        "{text}"
    );
    env.demix(&["run"]).ok();
    assert_eq!(side(&env), ["greet[a]", "greet[b]", "join"]);
}

#[test]
fn input_bytes_rerun_dependents_but_a_touch_reruns_nothing() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    side(&env);
    // Same bytes, new mtime: re-hashed, found equal, nothing runs.
    std::thread::sleep(Duration::from_millis(20));
    env.write("data/one.txt", "one two three\n");
    env.demix(&["run"]).ok();
    assert!(side(&env).is_empty());
    env.write("data/two.txt", "four five six\n");
    let st = status(&env);
    assert_eq!(
        reasons_of(&st, "count"),
        ["input ${datasets.words} changed: data/two.txt modified"]
    );
    env.demix(&["run"]).ok();
    assert_eq!(side(&env), ["count", "join"]);
    // A new file in the glob counts as a change too.
    env.write("data/three.txt", "seven\n");
    assert!(reasons_of(&status(&env), "count")[0].contains("data/three.txt added"));
    env.demix(&["run"]).ok();
    assert_eq!(side(&env), ["count", "join"]);
}

#[test]
fn early_cutoff_keeps_dependents_fresh() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    side(&env);
    // Different words, same count: `count` reruns and produces the same bytes.
    env.write("data/two.txt", "six seven\n");
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran(), ["count"]);
    assert_eq!(side(&env), ["count"]);
    assert_eq!(state_of(&status(&env), "join"), "fresh");
}

#[test]
fn reverting_a_change_is_fresh_from_the_cache() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    env.write(
        "demix.yaml",
        &PIPELINE.replace("greeting: hello", "greeting: hi"),
    );
    env.demix(&["run"]).ok();
    side(&env);
    env.write("demix.yaml", PIPELINE);
    let r = env.demix(&["run"]).ok();
    assert!(r.ran().is_empty(), "{}", r.stderr());
    assert!(side(&env).is_empty());
}

#[test]
fn a_corrupt_store_object_is_detected_and_rebuilt() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    side(&env);
    let out = output_path(&env, "pipe", "greet[a]", "out");
    let mut perms = std::fs::metadata(&out).unwrap().permissions();
    assert!(perms.readonly(), "store objects are read-only");
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&out, perms).unwrap();
    std::fs::write(&out, "tampered\n").unwrap();
    let st = status(&env);
    assert_eq!(state_of(&st, "greet[a]"), "stale");
    assert!(
        reasons_of(&st, "greet[a]")[0].contains("greet.txt is corrupt"),
        "{:?}",
        reasons_of(&st, "greet[a]")
    );
    env.demix(&["run"]).ok();
    assert_eq!(side(&env), ["greet[a]"]);
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "pipe", "greet[a]", "out")).unwrap(),
        "hello a\n"
    );
    let v = env.demix(&["verify"]).ok();
    assert!(v.stdout().contains(": 0 corrupt"), "{}", v.stdout());
}

#[test]
fn verify_finds_corruption_that_kept_the_stat() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    side(&env);
    let out = output_path(&env, "pipe", "count", "n");
    let md = std::fs::metadata(&out).unwrap();
    let mtime = md.modified().unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[0] = if bytes[0] == b'9' { b'8' } else { b'9' };
    let mut perms = md.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&out, perms).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    std::io::Write::write_all(&mut &f, &bytes).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    // Size and mtime are the same, so the quick check trusts it; verify does not.
    let v = env.demix(&["verify"]).fails(1);
    assert!(
        v.stdout().contains("corrupt") && v.stdout().contains("pipe:count"),
        "{}",
        v.stdout()
    );
    assert_eq!(state_of(&status(&env), "count"), "stale");
    // What was built on the corrupt object may have read its bad bytes: it
    // runs again too.
    assert!(
        v.stdout().contains("invalidated pipe:join"),
        "{}",
        v.stdout()
    );
    assert_eq!(state_of(&status(&env), "join"), "stale");
    env.demix(&["run"]).ok();
    assert_eq!(side(&env), ["count", "join"]);
    env.demix(&["verify"]).ok();
}

#[test]
fn a_failing_step_fails_fast_and_keep_going_finishes_the_rest() {
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: fail
steps:
  - id: bad
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'echo "something broke" >&2; exit 3']
  - id: after-bad
    kind: command
    inputs: {x: "${steps.bad.o}"}
    run: [cat, "${inputs.x}"]
  - id: slow
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'sleep 0.5; echo ok > "$0"', "${outputs.o}"]
"#,
    );
    let r = env.demix(&["run", "-j", "1"]).fails(1);
    let err = r.stderr();
    assert!(
        err.contains("FAILED bad: command exited with status 3"),
        "{err}"
    );
    assert!(
        err.contains("something broke"),
        "the log tail is shown: {err}"
    );
    assert!(err.contains("skip   after-bad"), "{err}");
    assert!(
        !r.ran().contains(&"slow".to_string()),
        "fail-fast starts nothing new: {err}"
    );
    let r = env.demix(&["run", "-j", "1", "--keep-going"]).fails(1);
    assert!(r.ran().contains(&"slow".to_string()), "{}", r.stderr());
    assert_eq!(state_of(&status(&env), "slow"), "fresh");
    assert_eq!(state_of(&status(&env), "bad"), "new");
    // Nothing half-written: the failed step left no result and no work directory.
    let tmp: Vec<_> = std::fs::read_dir(env.path("cache/tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "specs")
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn a_missing_declared_output_fails_the_step() {
    let env = Env::new();
    env.write("demix.yaml", "version: 1\nname: m\nsteps:\n  - {id: a, kind: command, outputs: {o: o.txt}, run: [true]}\n");
    let r = env.demix(&["run"]).fails(1);
    assert!(
        r.stderr()
            .contains("declared output `o` (o.txt) was not produced"),
        "{}",
        r.stderr()
    );
}

#[test]
fn target_force_and_dry_run() {
    let env = pipeline();
    let r = env.demix(&["run", "--dry-run"]).ok();
    assert!(r.stdout().contains("4 step(s) would run"), "{}", r.stdout());
    assert!(
        !env.path("cache/results").exists(),
        "a dry run writes no result"
    );
    let r = env.demix(&["run", "--target", "greet"]).ok();
    let mut ran = r.ran();
    ran.sort();
    assert_eq!(ran, ["greet[a]", "greet[b]"]);
    let r = env.demix(&["run", "--target", "join"]).ok();
    let mut ran = r.ran();
    ran.sort();
    assert_eq!(ran, ["count", "join"]);
    side(&env);
    // A forced step reruns, really (not "done by another demix" from the store);
    // its identical output keeps `join` fresh.
    let r = env.demix(&["run", "--force", "count"]).ok();
    assert_eq!(r.ran(), ["count"]);
    assert!(r.stderr().contains("forced with --force"));
    assert!(
        !r.stderr().contains("done by another demix"),
        "{}",
        r.stderr()
    );
    assert_eq!(side(&env), ["count"], "the command ran again");
    let r = env.demix(&["run", "--dry-run"]).ok();
    assert!(r.stdout().contains("0 step(s) would run"), "{}", r.stdout());
}

#[test]
fn lineage_traces_outputs_to_source_files() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    let text = env.demix(&["lineage", "join", "--full"]).ok().stdout();
    for needle in [
        "step join (command v1) of workflow pipe",
        "step greet[a]",
        "step count",
        "file   data/one.txt",
        "param    greeting = \"hello\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // By a path in the store, and by a hash prefix, to the same result.
    let out = output_path(&env, "pipe", "count", "n");
    let by_path = env
        .demix(&["lineage", out.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(by_path["step"], "count");
    let key = by_path["key"].as_str().unwrap();
    let by_hash = env.demix(&["lineage", &key[..10], "--json"]).ok().json();
    assert_eq!(by_hash["key"], key);
    assert_eq!(by_hash["inputs"][0]["type"], "dataset");
    env.demix(&["lineage", "nothing-like-this"]).fails(2);
}

#[test]
fn log_and_gc() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    env.write(
        "demix.yaml",
        &PIPELINE.replace("greeting: hello", "greeting: hey"),
    );
    env.demix(&["run"]).ok();
    let log = env.demix(&["log", "--json"]).ok().json();
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert_eq!(
        log[1]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["outcome"] == "ran")
            .count(),
        3
    );
    let text = env.demix(&["log"]).ok().stdout();
    assert!(text.contains("ok          pipe"), "{text}");
    // The first run's greet/join results are referenced by no kept run, nor is
    // the resumable state of a step key no run had.
    let stale_key = "0123abcd".repeat(8);
    env.write(&format!("cache/resume/{stale_key}/state/x"), "stale");
    let dry = env.demix(&["gc", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["results"], 3);
    assert_eq!(dry["resume"], 1);
    let gc = env.demix(&["gc", "--json"]).ok().json();
    assert_eq!(gc["results"], 3);
    assert_eq!(gc["resume"], 1);
    assert!(!env.path(&format!("cache/resume/{stale_key}")).exists());
    assert!(gc["objects"].as_u64().unwrap() >= 2);
    assert!(env.demix(&["run"]).ok().ran().is_empty());
    env.demix(&["verify"]).ok();
    let gc = env.demix(&["gc", "--json"]).ok().json();
    assert_eq!(gc["results"], 0);
}

#[test]
fn dag_formats() {
    let env = pipeline();
    let text = env.demix(&["dag"]).ok().stdout();
    insta::assert_snapshot!("dag_text", text);
    let dot = env.demix(&["dag", "--format", "dot"]).ok().stdout();
    assert!(
        dot.starts_with("digraph \"pipe\"") && dot.contains("n0 -> n3;"),
        "{dot}"
    );
    let mm = env.demix(&["dag", "--format", "mermaid"]).ok().stdout();
    assert!(
        mm.starts_with("flowchart LR") && mm.contains("n2 --> n3"),
        "{mm}"
    );
}

#[test]
fn two_concurrent_runs_run_each_step_once() {
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: conc
steps:
  - id: s
    kind: command
    foreach: [a, b, c]
    outputs: {o: o.txt}
    run: [sh, -c, 'echo "$0" >> side.log; sleep 0.4; echo "$0" > "$1"', "${item}", "${outputs.o}"]
  - id: t
    kind: command
    inputs: {all: "${steps.s[*].o}"}
    outputs: {o: o.txt}
    run: [sh, -c, 'echo t >> side.log; cat "$@" > "$DEMIX_OUTPUT_O"', sh, "${inputs.all}"]
"#,
    );
    let a = env
        .cmd(&["run", "-j", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let b = env
        .cmd(&["run", "-j", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    assert_eq!(side(&env), ["a", "b", "c", "t"]);
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "conc", "t", "o")).unwrap(),
        "a\nb\nc\n"
    );
    env.demix(&["verify"]).ok();
}

fn wait_for(path: &std::path::Path, limit: Duration) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < limit,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SLOW: &str = r#"version: 1
name: slow
steps:
  - id: quick
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'echo quick > "$0"', "${outputs.o}"]
  - id: slow
    kind: command
    inputs: {q: "${steps.quick.o}"}
    outputs: {o: o.txt}
    run: [sh, -c, 'touch started.flag; echo partial > "$1"; sleep 3; cat "$0" >> "$1"; echo done >> "$1"', "${inputs.q}", "${outputs.o}"]
"#;

#[test]
fn a_run_killed_mid_step_leaves_nothing_half_written_and_reruns_to_the_same_result() {
    let reference = Env::new();
    reference.write("demix.yaml", SLOW);
    reference.demix(&["run"]).ok();
    let want = std::fs::read(output_path(&reference, "slow", "slow", "o")).unwrap();
    let want_key = status(&reference)["steps"][1]["key"].clone();

    let env = Env::new();
    env.write("demix.yaml", SLOW);
    let mut child = env
        .cmd(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path("started.flag"), Duration::from_secs(20));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // The orphaned step notices and stops; nothing of it reaches the store.
    std::thread::sleep(Duration::from_millis(600));
    let st = status(&env);
    assert_eq!(state_of(&st, "quick"), "fresh");
    assert_ne!(state_of(&st, "slow"), "fresh");
    assert!(!env.path("cache/state/slow/slow.json").exists());
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran(), ["slow"]);
    assert_eq!(
        std::fs::read(output_path(&env, "slow", "slow", "o")).unwrap(),
        want
    );
    assert_eq!(status(&env)["steps"][1]["key"], want_key);
    // The killed run's work directory is garbage now.
    let gc = env.demix(&["gc", "--json"]).ok().json();
    assert!(gc["tmp"].as_u64().unwrap() <= 1);
    env.demix(&["verify"]).ok();
}

#[test]
fn gpus_are_handed_out_one_step_each() {
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: gpu
steps:
  - id: g
    kind: command
    foreach: [a, b, c, d]
    resources: {gpus: 1}
    outputs: {o: o.txt}
    run: [sh, -c, 'echo "$(date +%s%N) start $CUDA_VISIBLE_DEVICES" >> "$0/side.log"; sleep 0.3; echo "$(date +%s%N) end $CUDA_VISIBLE_DEVICES" >> "$0/side.log"; echo "$CUDA_VISIBLE_DEVICES" > "$1"', "${out}/../../../..", "${outputs.o}"]
"#,
    );
    // Use the workspace for the side log: steps run in the manifest's folder.
    env.write(
        "demix.yaml",
        &env.read("demix.yaml")
            .replace("\"$0/side.log\"", "side.log")
            .replace(", \"${out}/../../../..\"", ", x"),
    );
    env.demix(&["run", "-j", "4", "--gpus", "7,9"]).ok();
    let log = std::fs::read_to_string(env.path("side.log")).unwrap();
    let mut events: Vec<(u128, String, String)> = log
        .lines()
        .map(|l| {
            let mut p = l.split(' ');
            (
                p.next().unwrap().parse().unwrap(),
                p.next().unwrap().to_string(),
                p.next().unwrap_or("").to_string(),
            )
        })
        .collect();
    events.sort();
    let mut busy: Vec<String> = Vec::new();
    for (_, what, dev) in &events {
        assert!(dev == "7" || dev == "9", "device {dev:?}");
        if what == "start" {
            assert!(
                !busy.contains(dev),
                "device {dev} given to two steps at once: {log}"
            );
            busy.push(dev.clone());
            assert!(busy.len() <= 2);
        } else {
            busy.retain(|d| d != dev);
        }
    }
    // A step that needs more GPUs than the machine has fails clearly.
    let r = env.demix(&["run", "--gpus", "", "--force", "g"]).fails(1);
    assert!(
        r.stderr().contains("needs 1 GPU(s); this machine has 0"),
        "{}",
        r.stderr()
    );
}

#[test]
fn the_paper_manifest_plans_without_its_corpora() {
    let env = Env::new();
    let paper = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/demix-paper.yaml");
    let r = env
        .demix(&["run", "--dry-run", paper.to_str().unwrap()])
        .ok();
    let out = r.stdout();
    // 1 tokenizer, base, 7 components, 2 searches, 2 finals, sample, 96 references,
    // 96 + 96 + 2 evaluations, validate, report.
    assert!(
        out.contains("dry run: 306 step(s) would run, 0 problem(s)"),
        "{out}"
    );
    assert!(out.contains("\nmissing "), "{out}");
    assert!(
        out.contains("/data/demix/pretrain/*.parquet` matches no files"),
        "{out}"
    );
    assert!(
        !env.path("cache/objects").exists(),
        "a dry run writes nothing"
    );
}
