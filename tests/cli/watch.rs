//! `demix watch`: the real binary watching real files. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::harness::{Env, output_path};

/// How long any expected line may take to appear.
const LIMIT: Duration = Duration::from_secs(20);
/// The debounce the tests run with, and how long "nothing happens" is watched for.
const DEBOUNCE: &str = "100";
const QUIET: Duration = Duration::from_millis(1200);

/// A pipeline with a workspace input (`tpl.txt`, read by `greet[*]`), a dataset glob
/// (`data/*.txt`, read by `count`) and a join. Steps append to `side.log` in the
/// manifest's folder, which is not an input and must never wake the watcher.
const PIPELINE: &str = r#"version: 1
name: w
params:
  items: [a, b]
datasets:
  words: {files: "data/*.txt"}
steps:
  - id: greet
    kind: command
    foreach: ${params.items}
    inputs: {tpl: tpl.txt}
    outputs: {out: greet.txt}
    run: [sh, -c, 'echo "greet[$1]" >> side.log; cat "$0" > "$2"; echo "$1" >> "$2"', "${inputs.tpl}", "${item}", "${outputs.out}"]
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
    env.write("tpl.txt", "hello\n");
    env.write("data/one.txt", "one two three\n");
    env.write("data/two.txt", "four five\n");
    env
}

/// A running `demix watch` whose stderr lines arrive on a channel.
struct Watch {
    child: Child,
    lines: Receiver<String>,
    /// Everything read so far, for failure messages.
    seen: Vec<String>,
}

impl Watch {
    fn start(env: &Env, extra: &[&str]) -> Watch {
        let mut args = vec!["watch", "--debounce", DEBOUNCE];
        args.extend_from_slice(extra);
        let mut child = env
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn demix watch");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watch {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Lines up to and including the first that contains `needle`.
    #[track_caller]
    fn until(&mut self, needle: &str) -> Vec<String> {
        let t0 = Instant::now();
        let mut got = Vec::new();
        loop {
            let left = LIMIT.saturating_sub(t0.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    let hit = l.contains(needle);
                    got.push(l);
                    if hit {
                        return got;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {needle:?} within {LIMIT:?}; output:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "watch exited before {needle:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The lines of one whole cycle, from its start to its summary.
    #[track_caller]
    fn cycle(&mut self, n: u32) -> Vec<String> {
        let head = self.until(&format!("watch: cycle {n}: "));
        let mut lines = vec![head.last().cloned().expect("a line")];
        lines.extend(self.until(&format!("watch: cycle {n} ")));
        lines
    }

    /// Whatever arrives within `d`, when nothing should.
    fn quiet(&mut self, d: Duration) -> Vec<String> {
        let t0 = Instant::now();
        let mut got = Vec::new();
        while let Some(left) = d.checked_sub(t0.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    got.push(l);
                }
                Err(_) => break,
            }
        }
        got
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The exit code, waiting at most `LIMIT`.
    #[track_caller]
    fn exit_code(&mut self) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                // Drain what is left of the output.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(l);
                }
                return st.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < LIMIT,
                "watch did not exit; output:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let t0 = Instant::now();
            while self.child.try_wait().ok().flatten().is_none()
                && t0.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Step ids from `run    ID (...)` lines, sorted.
fn ran(lines: &[String]) -> Vec<String> {
    let mut v: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("run    "))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// Waits until `side.log` has `n` lines: the steps' commands have started.
#[track_caller]
fn wait_for_side_log(env: &Env, n: usize) {
    let t0 = Instant::now();
    while std::fs::read_to_string(env.path("side.log"))
        .unwrap_or_default()
        .lines()
        .count()
        < n
    {
        assert!(t0.elapsed() < LIMIT, "the steps did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn no_activity(lines: &[String]) -> bool {
    !lines.iter().any(|l| {
        l.starts_with("watch: cycle") || l.starts_with("run    ") || l.starts_with("watch: changed")
    })
}

fn write_keeping_mtime_fresh(env: &Env, rel: &str, content: &str) {
    // A later mtime than before, whatever the filesystem's timestamp granularity.
    std::thread::sleep(Duration::from_millis(20));
    env.write(rel, content);
}

#[test]
fn editing_an_input_reruns_exactly_its_dependents() {
    let env = pipeline();
    let mut w = Watch::start(&env, &[]);
    let first = w.cycle(1);
    assert!(first[0].ends_with("initial run"), "{first:?}");
    assert_eq!(ran(&first), ["count", "greet[a]", "greet[b]", "join"]);
    assert!(
        first.last().unwrap().contains("watch: cycle 1 done in"),
        "{first:?}"
    );
    w.until("watch: waiting for changes");
    write_keeping_mtime_fresh(&env, "tpl.txt", "bonjour\n");
    let second = w.cycle(2);
    assert_eq!(second[0], "watch: cycle 2: tpl.txt modified");
    assert_eq!(ran(&second), ["greet[a]", "greet[b]", "join"]);
    assert!(
        second
            .iter()
            .any(|l| l.starts_with("run    greet[a] (input tpl.txt changed")),
        "{second:?}"
    );
    let summary = second.last().unwrap();
    assert!(summary.starts_with("watch: cycle 2 done in "), "{summary}");
    assert!(
        summary.ends_with(
            ": 3 ran (greet[a], greet[b], join), 1 fresh, 0 failed, 0 skipped, 0 cancelled"
        ),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "w", "join", "all")).unwrap(),
        "bonjour\na\nbonjour\nb\n5\n"
    );
    // The steps' own writes (side.log, the store) never wake the watcher.
    let after = w.quiet(QUIET);
    assert!(no_activity(&after), "{after:?}");
}

#[test]
fn a_touch_or_the_same_bytes_run_nothing() {
    let env = pipeline();
    let mut w = Watch::start(&env, &[]);
    w.cycle(1);
    w.until("watch: waiting for changes");
    write_keeping_mtime_fresh(&env, "tpl.txt", "hello\n");
    write_keeping_mtime_fresh(&env, "data/one.txt", "one two three\n");
    let f = std::fs::File::options()
        .write(true)
        .open(env.path("data/two.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    write_keeping_mtime_fresh(&env, "demix.yaml", PIPELINE);
    // A comment changes the manifest's bytes but no step's definition.
    write_keeping_mtime_fresh(&env, "demix.yaml", &format!("# a comment\n{PIPELINE}"));
    // A file outside the dataset's glob is no input.
    env.write("data/notes.md", "not a .txt\n");
    let lines = w.quiet(QUIET);
    assert!(no_activity(&lines), "{lines:?}");
    // Still watching: a real change is acted on.
    write_keeping_mtime_fresh(&env, "data/one.txt", "one two\n");
    let c = w.cycle(2);
    assert_eq!(c[0], "watch: cycle 2: data/one.txt modified");
    assert_eq!(ran(&c), ["count", "join"]);
}

#[test]
fn a_new_or_deleted_file_in_a_dataset_glob_reruns_its_dependents() {
    let env = pipeline();
    let mut w = Watch::start(&env, &[]);
    w.cycle(1);
    w.until("watch: waiting for changes");
    env.write("data/three.txt", "six\n");
    let c = w.cycle(2);
    assert_eq!(c[0], "watch: cycle 2: data/three.txt added");
    assert_eq!(ran(&c), ["count", "join"]);
    assert!(
        c.iter()
            .any(|l| l.starts_with("run    count (") && l.contains("data/three.txt added")),
        "{c:?}"
    );
    assert!(
        std::fs::read_to_string(output_path(&env, "w", "join", "all"))
            .unwrap()
            .ends_with("6\n")
    );
    // Removing it again is a change too; the earlier results come back from the cache.
    std::fs::remove_file(env.path("data/three.txt")).unwrap();
    let c = w.cycle(3);
    assert_eq!(c[0], "watch: cycle 3: data/three.txt removed");
    assert!(ran(&c).is_empty(), "{c:?}");
    assert!(
        c.last()
            .unwrap()
            .ends_with(": 0 ran, 4 fresh, 0 failed, 0 skipped, 0 cancelled"),
        "{c:?}"
    );
    assert!(
        std::fs::read_to_string(output_path(&env, "w", "join", "all"))
            .unwrap()
            .ends_with("5\n")
    );
}

#[test]
fn a_broken_manifest_shows_the_error_and_the_next_good_save_recovers() {
    let env = pipeline();
    let mut w = Watch::start(&env, &[]);
    w.cycle(1);
    w.until("watch: waiting for changes");
    let broken = PIPELINE.replace(
        "    kind: command\n    inputs: {words:",
        "    kind: comand\n    inputs: {words:",
    );
    let line = broken
        .lines()
        .position(|l| l.contains("kind: comand"))
        .unwrap()
        + 1;
    write_keeping_mtime_fresh(&env, "demix.yaml", &broken);
    let lines = w.until(&format!("demix.yaml:{line}:11: unknown step kind `comand`"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("watch: demix.yaml has errors; nothing runs until it is fixed")),
        "{lines:?}"
    );
    // The same broken bytes again, and a changed input meanwhile: nothing runs.
    write_keeping_mtime_fresh(&env, "demix.yaml", &broken);
    write_keeping_mtime_fresh(&env, "tpl.txt", "hey\n");
    let quiet = w.quiet(QUIET);
    assert!(no_activity(&quiet), "{quiet:?}");
    assert!(
        !quiet.iter().any(|l| l.contains("unknown step kind")),
        "reported once per distinct text: {quiet:?}"
    );
    // A good save recovers, with the input change made while it was broken.
    write_keeping_mtime_fresh(
        &env,
        "demix.yaml",
        &PIPELINE.replace("items: [a, b]", "items: [a, b, c]"),
    );
    let c = w.cycle(2);
    assert!(
        w.seen
            .iter()
            .any(|l| l == "watch: demix.yaml is valid again"),
        "{:?}",
        w.seen
    );
    assert_eq!(
        c[0],
        "watch: cycle 2: demix.yaml modified, tpl.txt modified"
    );
    assert_eq!(ran(&c), ["greet[a]", "greet[b]", "greet[c]", "join"]);
    assert!(c.last().unwrap().contains(" done in "), "{c:?}");
}

/// `slow` reads `in.txt` and takes 3 s; `other` reads nothing that changes.
const SLOW: &str = r#"version: 1
name: slow
steps:
  - id: slow
    kind: command
    inputs: {src: in.txt}
    outputs: {o: o.txt}
    run: [sh, -c, 'echo slow >> side.log; sleep 3; cat "$0" > "$1"', "${inputs.src}", "${outputs.o}"]
  - id: other
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'echo other >> side.log; sleep 2; echo other > "$0"', "${outputs.o}"]
"#;

#[test]
fn a_change_during_a_running_step_cancels_and_restarts_only_that_step() {
    let env = Env::new();
    env.write("demix.yaml", SLOW);
    env.write("in.txt", "first\n");
    let mut w = Watch::start(&env, &["-j", "2"]);
    let mut started = w.until("run    ");
    started.extend(w.until("run    "));
    assert_eq!(ran(&started), ["other", "slow"]);
    wait_for_side_log(&env, 2);
    write_keeping_mtime_fresh(&env, "in.txt", "second\n");
    let lines = w.until("watch: cycle 1 ");
    assert!(
        lines.contains(&"watch: changed during cycle 1: in.txt modified".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"watch: cancelling slow (stale)".to_string()),
        "{lines:?}"
    );
    assert!(lines.contains(&"cancel slow".to_string()), "{lines:?}");
    // `other` was not stale: it finished in the first cycle and is fresh in the second.
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with("watch: cycle 1 superseded in "),
        "{summary}"
    );
    assert!(
        summary.contains(": 1 ran (other), 0 fresh, 0 failed, 0 skipped, 1 cancelled (slow)"),
        "{summary}"
    );
    let c = w.cycle(2);
    assert_eq!(c[0], "watch: cycle 2: in.txt modified");
    assert_eq!(ran(&c), ["slow"]);
    assert!(
        c.last().unwrap().contains("done in")
            && c.last().unwrap().contains("1 ran (slow), 1 fresh"),
        "{c:?}"
    );
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "slow", "slow", "o")).unwrap(),
        "second\n"
    );
    let mut side: Vec<String> = env.read("side.log").lines().map(str::to_string).collect();
    side.sort();
    assert_eq!(side, ["other", "slow", "slow"]);
}

#[test]
fn sigint_stops_watch_and_cancels_running_steps() {
    let env = Env::new();
    env.write("demix.yaml", SLOW);
    env.write("in.txt", "first\n");
    let mut w = Watch::start(&env, &["-j", "2"]);
    w.until("run    ");
    w.until("run    ");
    wait_for_side_log(&env, 2);
    let t0 = Instant::now();
    w.signal(libc::SIGINT);
    assert_eq!(w.exit_code(), 130, "{:?}", w.seen);
    assert!(
        t0.elapsed() < Duration::from_millis(1900),
        "it did not wait for the steps to finish"
    );
    for step in ["slow", "other"] {
        assert!(w.seen.contains(&format!("cancel {step}")), "{:?}", w.seen);
        assert!(
            !env.path(&format!("cache/state/slow/{step}.json")).exists(),
            "{step} left a result"
        );
    }
    assert!(
        w.seen
            .iter()
            .any(|l| l.starts_with("watch: cycle 1 stopped in ")),
        "{:?}",
        w.seen
    );
    let st = env.demix(&["status", "--json"]).ok().json();
    assert_eq!(st["counts"]["new"], 2, "{st}");
    // Nothing half-written: no work directory is left behind.
    let tmp: Vec<_> = std::fs::read_dir(env.path("cache/tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "specs")
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn sigterm_while_waiting_exits_cleanly() {
    let env = pipeline();
    let mut w = Watch::start(&env, &[]);
    w.until("watch: waiting for changes");
    w.signal(libc::SIGTERM);
    assert_eq!(w.exit_code(), 143, "{:?}", w.seen);
    assert_eq!(w.seen.last().map(String::as_str), Some("watch: stopped"));
}

#[test]
fn a_change_upstream_of_a_running_step_cancels_it() {
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: up
steps:
  - id: up
    kind: command
    inputs: {src: in.txt}
    outputs: {o: o.txt}
    run: [cp, "${inputs.src}", "${outputs.o}"]
  - id: down
    kind: command
    inputs: {u: "${steps.up.o}"}
    outputs: {o: o.txt}
    run: [sh, -c, 'echo down >> side.log; sleep 3; cat "$0" > "$1"', "${inputs.u}", "${outputs.o}"]
"#,
    );
    env.write("in.txt", "first\n");
    let mut w = Watch::start(&env, &[]);
    w.until("run    down");
    wait_for_side_log(&env, 1);
    write_keeping_mtime_fresh(&env, "in.txt", "second\n");
    let lines = w.until("watch: cycle 1 ");
    assert!(
        lines.contains(&"watch: cancelling down (stale)".to_string()),
        "{lines:?}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains(": 1 ran (up), 0 fresh, 0 failed, 0 skipped, 1 cancelled (down)"),
        "{lines:?}"
    );
    let c = w.cycle(2);
    assert_eq!(ran(&c), ["down", "up"]);
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "up", "down", "o")).unwrap(),
        "second\n"
    );
}
