//! What a person reads at the end of a command: a run's closing lines (outputs,
//! mixture, report, human durations) and their JSON, lineage of a diamond,
//! quiet exits when a pipe's reader leaves, and small diagnostics.

use std::process::Stdio;

use crate::harness::{Env, Run};

/// A diamond (base -> left, right -> final) with a step that writes a mixture
/// the way a `search` step does, and a report of an evaluation.
const DIAMOND: &str = r#"version: 1
name: diamond
params:
  k: 3
steps:
  - id: base
    kind: command
    outputs: {out: base.txt}
    run: [sh, -c, 'echo base > "$0"', "${outputs.out}"]
  - id: left
    kind: command
    inputs: {b: "${steps.base.out}"}
    outputs: {out: left.txt}
    run: [sh, -c, 'cat "$0" > "$1"; echo left >> "$1"', "${inputs.b}", "${outputs.out}"]
  - id: right
    kind: command
    inputs: {b: "${steps.base.out}"}
    outputs: {out: right.txt}
    run: [sh, -c, 'cat "$0" > "$1"; echo "right k=$2" >> "$1"', "${inputs.b}", "${outputs.out}", "--k=${params.k}"]
  - id: search
    kind: command
    inputs: {l: "${steps.left.out}"}
    outputs: {mixture: mixture.json}
    run: [sh, -c, 'echo "{\"web\": 0.25, \"code\": 0.6, \"books\": 0.15}" > "$0"', "${outputs.mixture}"]
  - id: final
    kind: command
    inputs: {l: "${steps.left.out}", r: "${steps.right.out}", m: "${steps.search.mixture}"}
    outputs: {model: final.txt, notes: notes.txt}
    run: [sh, -c, 'cat "$0" "$1" > "$3"; echo notes > "$4"', "${inputs.l}", "${inputs.r}", "${inputs.m}", "${outputs.model}", "${outputs.notes}"]
"#;

const REPORT: &str = r#"
  - id: eval
    kind: command
    inputs: {src: eval.json}
    outputs: {metrics: metrics.json}
    run: [cp, "${inputs.src}", "${outputs.metrics}"]
  - id: brief
    kind: report
    evaluations:
      final: ${steps.eval.metrics}
"#;

const EVAL: &str = r#"{"checkpoint": "/somewhere/checkpoint",
 "datasets": {"web": {"tokens": 4096, "documents": 12, "bytes": 16000, "loss": 3.2,
                      "perplexity": 24.5, "bits_per_byte": 1.1}},
 "tasks": {}, "mean_loss": 3.2}"#;

fn diamond() -> Env {
    let env = Env::new();
    env.write("demix.yaml", DIAMOND);
    env
}

/// The closing lines of a run: what follows the last `ok` line.
fn closing(r: &Run) -> Vec<String> {
    let err = r.stderr();
    let lines: Vec<&str> = err.lines().collect();
    let last_ok = lines
        .iter()
        .rposition(|l| l.starts_with("ok     ") || l.starts_with("run    "))
        .map_or(0, |i| i + 1);
    lines[last_ok..].iter().map(|l| l.to_string()).collect()
}

/// `human` reads as `1.4s`, `0.05s`, `12s` or `3m 2s`, not `1.43291s`.
fn is_human_duration(d: &str) -> bool {
    let ok_secs = |s: &str| {
        s.strip_suffix('s').is_some_and(|n| {
            n.parse::<f64>().is_ok() && n.split('.').nth(1).is_none_or(|frac| frac.len() <= 2)
        })
    };
    match d.split_once(' ') {
        None => ok_secs(d),
        Some((a, b)) => {
            a.strip_suffix(['m', 'h', 'd'])
                .is_some_and(|n| n.parse::<u64>().is_ok())
                && (ok_secs(b)
                    || b.strip_suffix(['m', 'h'])
                        .is_some_and(|n| n.parse::<u64>().is_ok()))
        }
    }
}

#[test]
fn a_run_ends_with_its_outputs_mixture_and_human_duration() {
    let env = diamond();
    let r = env.demix(&["run"]).ok();
    let end = closing(&r);
    assert_eq!(end.len(), 4, "{end:#?}");
    // The target (the one step nothing depends on) with each output, by a path
    // relative to the working directory that is the output itself.
    for (line, name, file, content) in [
        (
            &end[0],
            "final.model",
            "final.txt",
            "base\nleft\nbase\nright k=--k=3\n",
        ),
        (&end[1], "final.notes", "notes.txt", "notes\n"),
    ] {
        let rest = line
            .strip_prefix(&format!("output  {name}  "))
            .unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            rest.starts_with("cache/trees/") && rest.ends_with(file),
            "{line}"
        );
        assert_eq!(env.read(rest), content);
    }
    // The mixture, heaviest first.
    assert_eq!(end[2], "mixture search: code 0.60, web 0.25, books 0.15");
    let done = end[3]
        .strip_prefix("done: 5 ran, 0 fresh, 0 failed, 0 skipped, 0 cancelled in ")
        .unwrap_or_else(|| panic!("{:?}", end[3]));
    assert!(is_human_duration(done), "{done}");
    // Each step's own line too.
    let err = r.stderr();
    let oks: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("ok     base ("))
        .collect();
    assert_eq!(oks.len(), 1, "{}", r.stderr());
    assert!(
        is_human_duration(oks[0].trim_end_matches(')')),
        "{}",
        oks[0]
    );

    // Again with --json: nothing runs, the same closing lines, and the same in
    // structured fields.
    let again = env.demix(&["run", "--json"]).ok();
    assert!(again.ran().is_empty(), "{}", again.stderr());
    assert_eq!(closing(&again)[..3], end[..3]);
    let j = again.json();
    let outputs = j["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{j:#}");
    assert_eq!(outputs[0]["step"], "final");
    assert_eq!(outputs[0]["output"], "model");
    let model = std::path::Path::new(outputs[0]["path"].as_str().unwrap());
    assert!(model.is_absolute(), "{model:?}");
    assert!(
        std::fs::read_to_string(model)
            .unwrap()
            .starts_with("base\nleft")
    );
    assert_eq!(j["mixtures"][0]["step"], "search");
    assert_eq!(j["mixtures"][0]["weights"]["code"], 0.6);
    assert_eq!(j["mixtures"][0]["weights"]["books"], 0.15);
    assert_eq!(j["verdicts"], serde_json::json!([]));
    assert_eq!(j["reports"], serde_json::json!([]));
    assert!(j["duration_s"].as_f64().unwrap() >= 0.0, "{j:#}");
    assert!(is_human_duration(j["duration"].as_str().unwrap()), "{j:#}");
    assert_eq!(j["steps"].as_array().unwrap().len(), 5);

    // With --target, the outputs are the target's.
    let left = env
        .demix(&["run", "--target", "left", "--json"])
        .ok()
        .json();
    let outputs = left["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{left:#}");
    assert_eq!(outputs[0]["step"], "left");
    assert_eq!(outputs[0]["output"], "out");
    assert_eq!(left["mixtures"], serde_json::json!([]));

    // `log` shows the run's duration the same way.
    let log = env.demix(&["log"]).ok().stdout();
    let first = log.lines().next().unwrap();
    let dur = first
        .split("  ")
        .find(|p| p.ends_with('s') && p.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("{first}"));
    assert!(is_human_duration(dur), "{first}");
}

#[test]
fn a_run_ends_with_its_report() {
    let env = Env::new();
    env.write("demix.yaml", &format!("{DIAMOND}{REPORT}"));
    env.write("eval.json", EVAL);
    let r = env.demix(&["run"]).ok();
    let end = closing(&r);
    let report = end
        .iter()
        .find_map(|l| l.strip_prefix("report  brief: "))
        .unwrap_or_else(|| panic!("{end:#?}"));
    assert!(report.starts_with("cache/trees/") && report.ends_with("report.html"));
    assert!(env.read(report).contains("<html"), "{report}");
    // The report's own files are not listed again as outputs.
    assert!(
        !end.iter().any(|l| l.starts_with("output  brief.")),
        "{end:#?}"
    );
    assert!(end.iter().any(|l| l.starts_with("output  final.model  ")));
    let j = env.demix(&["run", "--json"]).ok().json();
    assert_eq!(j["reports"][0]["step"], "brief");
    assert!(
        j["reports"][0]["html"]
            .as_str()
            .unwrap()
            .ends_with("report.html")
    );
    assert!(
        j["reports"][0]["markdown"]
            .as_str()
            .unwrap()
            .ends_with("report.md")
    );
}

#[test]
fn lineage_of_a_diamond_shows_each_result_once_and_missing_only_when_missing() {
    let env = diamond();
    env.demix(&["run"]).ok();
    let text = env.demix(&["lineage", "final", "--full"]).ok().stdout();
    assert_eq!(text.matches("step base (command v1)").count(), 1, "{text}");
    assert_eq!(text.matches("step left (command v1)").count(), 1, "{text}");
    assert_eq!(text.matches("; shown above)").count(), 2, "{text}");
    assert!(text.contains("    step base (key "), "{text}");
    assert!(!text.contains("no longer in the store"), "{text}");
    let j = env.demix(&["lineage", "final", "--json"]).ok().json();
    let json = j.to_string();
    assert!(!json.contains("\"missing\""), "{j:#}");
    let right = &j["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "${steps.right.out}")
        .unwrap()["producers"][0];
    assert_eq!(right["step"], "right");
    let base = &right["inputs"][0]["producers"][0];
    assert_eq!(base["step"], "base");
    assert_eq!(base["shown_above"], true, "{base:#}");

    // Once base's record is gone, it is missing (in both places it is used).
    let key = env.demix(&["lineage", "base", "--json"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(env.path(&format!("cache/results/{}/{key}.json", &key[..2]))).unwrap();
    let text = env.demix(&["lineage", "final", "--full"]).ok().stdout();
    assert_eq!(
        text.matches("its record is no longer in the store").count(),
        2,
        "{text}"
    );
    assert!(!text.contains("shown above)\n        step base"), "{text}");
    let j = env.demix(&["lineage", "final", "--json"]).ok().json();
    assert_eq!(
        j.to_string().matches("\"missing\":true").count(),
        2,
        "{j:#}"
    );
}

/// Runs `demix ARGS` with its stdout a pipe whose reader has already gone.
fn with_closed_stdout(env: &Env, args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = env
        .cmd(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run demix");
    Run { out }
}

#[test]
fn a_reader_that_leaves_ends_output_quietly() {
    let env = diamond();
    env.demix(&["run"]).ok();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["log"],
        &["log", "--json"],
        &["schema"],
        &["dag"],
        &["lineage", "final"],
        &["lineage", "final", "--json"],
        &["run", "--dry-run"],
        &["check"],
    ] {
        let r = with_closed_stdout(&env, args);
        assert_eq!(r.code(), 0, "demix {args:?}: {}", r.stderr());
        assert_eq!(r.stderr(), "", "demix {args:?}");
    }
    // A run's JSON to a reader that left: the run still counts, and a failed
    // run still fails.
    env.write("demix.yaml", &DIAMOND.replace("k: 3", "k: 4"));
    let r = with_closed_stdout(&env, &["run", "--json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    assert_eq!(r.ran(), ["right", "final"]);
    env.write(
        "demix.yaml",
        &DIAMOND.replace("echo notes > \"$4\"", "exit 3"),
    );
    let r = with_closed_stdout(&env, &["run", "--json"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    // And a run whose stderr reader left runs to the end.
    env.write("demix.yaml", &DIAMOND.replace("k: 3", "k: 5"));
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = env
        .cmd(&["run"])
        .stderr(writer)
        .output()
        .expect("run demix");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        env.demix(&["status"]).ok().stdout().contains("5 fresh"),
        "the run did not finish"
    );
}

#[test]
fn small_diagnostics() {
    let env = diamond();
    // A missing manifest says why once.
    let r = env.demix(&["status", "nope.yaml"]).fails(2);
    assert_eq!(
        r.stderr().matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr()
    );
    // A step id that matches nothing: the closest step, or the steps.
    env.demix(&["run"]).ok();
    let r = env.demix(&["lineage", "fianl"]).fails(2);
    assert!(
        r.stderr().contains("did you mean `final`?"),
        "{}",
        r.stderr()
    );
    let r = env.demix(&["lineage", "nosuch"]).fails(2);
    assert!(
        r.stderr()
            .contains("(the workflow's steps: base, left, right, search, final)"),
        "{}",
        r.stderr()
    );
    // `report` of a workflow without a report step is a usage error.
    let r = env.demix(&["report"]).fails(2);
    assert!(
        r.stderr().contains("has no `report` step"),
        "{}",
        r.stderr()
    );
    // A parameter a command interpolates is one reason to rerun, not two.
    env.write("demix.yaml", &DIAMOND.replace("k: 3", "k: 4"));
    let st = env.demix(&["status", "--json"]).ok().json();
    let right = st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "right")
        .unwrap();
    let reasons: Vec<&str> = right["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["parameter `params.k` changed: 3 -> 4"]);
    let text = env.demix(&["status"]).ok().stdout();
    assert_eq!(text.matches("changed").count(), 1, "{text}");
    // A field that changed by itself is still a reason of its own.
    env.write(
        "demix.yaml",
        &DIAMOND
            .replace("k: 3", "k: 4")
            .replace("echo \"right k=$2\"", "echo \"right: k=$2\""),
    );
    let text = env.demix(&["status"]).ok().stdout();
    assert!(
        text.contains("parameter `params.k` changed: 3 -> 4"),
        "{text}"
    );
    assert!(text.contains("parameter `run[2]` changed"), "{text}");
}

#[test]
fn doctor_ends_its_output_with_a_newline() {
    let env = Env::new();
    let r = env.demix(&["doctor"]);
    let out = r.stdout();
    assert!(out.starts_with("demix "), "{out}");
    assert!(out.ends_with('\n'), "{out:?}");
}

/// Polls `ok` every 50 ms for up to 20 s.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed().as_secs() < 20, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_running_run_is_visible_and_a_dead_one_reads_as_stale() {
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: slow
steps:
  - id: quick
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'echo hi > "$0"', "${outputs.o}"]
  - id: slow
    kind: command
    inputs: {q: "${steps.quick.o}"}
    outputs: {o: o.txt}
    run: [sh, -c, 'touch "$1"; sleep 60; echo done > "$0"', "${outputs.o}", "STARTED"]
"#,
    );
    let started = env.path("STARTED");
    let mut child = env
        .cmd(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the slow step to start", || started.exists());
    wait_for("status to show it running", || {
        env.demix(&["status"]).stdout().contains("running slow")
    });
    let st = env.demix(&["status"]).ok();
    let out = st.stdout();
    assert!(out.contains(&format!("pid {}", child.id())), "{out}");
    assert!(out.contains("fresh  quick"), "{out}");
    assert!(out.contains("(1 running)"), "{out}");
    let j = env.demix(&["status", "--json"]).ok().json();
    let slow = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "slow")
        .unwrap();
    assert_eq!(slow["running"]["pid"], child.id());
    assert_eq!(j["runs"][0]["liveness"], "running");
    // `log` lists it; a dry-run gc reads; a real gc refuses, naming the run.
    let log = env.demix(&["log"]).ok().stdout();
    assert!(
        log.contains("running") && log.contains("now: slow"),
        "{log}"
    );
    let lj = env.demix(&["log", "--json"]).ok().json();
    assert!(
        lj.as_array()
            .unwrap()
            .iter()
            .any(|r| r["liveness"] == "running"),
        "{lj}"
    );
    env.demix(&["gc", "--dry-run"]).ok();
    let gc = env.demix(&["gc"]);
    assert_ne!(gc.code(), 0);
    assert!(
        gc.stderr().contains("running:") && gc.stderr().contains("slow"),
        "{}",
        gc.stderr()
    );
    // A run killed outright leaves its record; it reads as stale, not running.
    child.kill().unwrap();
    child.wait().unwrap();
    let st = env.demix(&["status"]).ok().stdout();
    assert!(
        st.contains("stopped without finishing") && !st.contains("running slow"),
        "{st}"
    );
    let log = env.demix(&["log"]).ok().stdout();
    assert!(log.contains("stale"), "{log}");
    // A run that finishes removes its own record.
    env.write(
        "demix.yaml",
        &env.read("demix.yaml").replace("sleep 60", "sleep 0"),
    );
    env.demix(&["run"]).ok();
    let live: Vec<_> = std::fs::read_dir(env.path("cache/runs/live"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(live.len(), 1, "only the killed run's record is left");
    // gc, which runs only when no run holds the store, clears it (once the
    // killed run's step process has seen its parent go and stopped).
    wait_for("gc to find the store free", || {
        env.demix(&["gc"]).code() == 0
    });
    assert_eq!(
        std::fs::read_dir(env.path("cache/runs/live"))
            .unwrap()
            .count(),
        0
    );
    assert!(!env.demix(&["log"]).ok().stdout().contains("stale"));
}
