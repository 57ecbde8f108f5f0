//! What a crash-and-bad-input campaign found, and its neighbours: kills at
//! random moments, rotten store objects, destructive commands pointed at the
//! wrong folder, outputs that link outside, bad flags, files and records.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::harness::{Env, output_path};

/// Fan-out, a dataset reader and a join, each step appending its id to
/// `side.log`, each sleeping a moment so kills land mid-step.
const PIPELINE: &str = r#"version: 1
name: pipe
params:
  items: [a, b, c, d]
datasets:
  words: {files: "data/*.txt"}
steps:
  - id: greet
    kind: command
    foreach: ${params.items}
    outputs: {out: greet.txt}
    run: [sh, -c, 'echo "greet[$0]" >> side.log; sleep 0.2; echo "hello $0" > "$1"', "${item}", "${outputs.out}"]
  - id: count
    kind: command
    inputs: {words: "${datasets.words}"}
    outputs: {n: count.txt}
    run: [sh, -c, 'echo count >> side.log; sleep 0.3; cat "$@" | wc -w | tr -d " " > "$DEMIX_OUTPUT_N"', sh, "${inputs.words}"]
  - id: join
    kind: command
    inputs: {g: "${steps.greet[*].out}", n: "${steps.count.n}"}
    outputs: {all: all.txt, dir: parts/}
    run: [sh, -c, 'echo join >> side.log; sleep 0.2; cat "$@" > "$DEMIX_OUTPUT_ALL"; for f in "$@"; do sed "s/^/> /" "$f" > "$DEMIX_OUTPUT_DIR/$(basename $(dirname $f))"; done', sh, "${inputs.g}", "${inputs.n}"]
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

/// Every output file of every step, by step and path, with its bytes.
fn outputs(env: &Env) -> Vec<(String, Vec<u8>)> {
    let st = env.demix(&["status", "--json"]).ok().json();
    let mut out = Vec::new();
    for s in st["steps"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.path(&format!("cache/state/pipe/{id}.json"))).unwrap(),
        )
        .unwrap();
        let tree = rec["tree"].as_str().unwrap();
        for f in rec["files"].as_array().unwrap() {
            let p = f["path"].as_str().unwrap();
            let bytes =
                std::fs::read(env.path(&format!("cache/trees/{}/{tree}/{p}", &tree[..2]))).unwrap();
            out.push((format!("{id}/{p}"), bytes));
        }
    }
    out.sort();
    out
}

/// Processes whose command line mentions `needle` (our test's temp dir).
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

/// A small deterministic generator, so the kill points are the same every run.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn kills_at_random_moments_leave_a_store_that_verifies_and_reruns_to_a_clean_result() {
    let clean = pipeline();
    clean.demix(&["run"]).ok();
    let want = outputs(&clean);

    let env = pipeline();
    let mut rng = Lcg(2026);
    let mut finished = false;
    for _ in 0..8 {
        // The run and its step processes, all in one group: a crash kills all.
        let mut child = env
            .cmd(&["run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let delay = Duration::from_secs_f64(0.05 + rng.next() * 1.2);
        std::thread::sleep(delay);
        let pgid = child.id() as i32;
        // SAFETY: signals the process group we just made.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let status = child.wait().unwrap();
        finished |= status.success();
        // Nothing a kill leaves is corrupt, and no record is half written
        // (once there is a store: an early kill may come before it).
        if !env.path("cache/demix-store.json").exists() {
            continue;
        }
        let v = env.demix(&["verify", "--json"]).ok().json();
        assert_eq!(v["corrupt"].as_array().unwrap().len(), 0, "{v}");
        assert_eq!(v["corrupt_records"].as_array().unwrap().len(), 0, "{v}");
    }
    let _ = finished;
    env.demix(&["run"]).ok();
    assert_eq!(
        outputs(&env),
        want,
        "a rerun after kills equals a clean run"
    );
    env.demix(&["verify"]).ok();
    // A second run has nothing to do.
    assert!(env.demix(&["run"]).ok().ran().is_empty());
    assert!(processes_with(env.dir.path().to_str().unwrap()).is_empty());
}

/// Flips a byte of a store object and puts its mtime back, as bit rot would
/// look to a stat check.
fn rot(path: &std::path::Path) {
    let md = std::fs::metadata(path).unwrap();
    let mtime = md.modified().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0x20;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut &f, &bytes).unwrap();
    f.set_modified(mtime).unwrap();
}

#[test]
fn a_rotten_object_never_reaches_a_downstream_step() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    side(&env);
    let good = outputs(&env);
    // A forced downstream step: the rotten upstream output is noticed (its
    // inode changed) and rebuilt first; the join reads good bytes.
    rot(&output_path(&env, "pipe", "greet[a]", "out"));
    let r = env.demix(&["run", "--force", "join"]).ok();
    assert_eq!(r.ran(), ["greet[a]", "join"], "{}", r.stderr());
    assert_eq!(outputs(&env), good);
    side(&env);
    // verify finds rot and invalidates everything built on it.
    rot(&output_path(&env, "pipe", "count", "n"));
    let v = env.demix(&["verify", "--json"]).fails(1).json();
    assert_eq!(v["corrupt"][0]["steps"], serde_json::json!(["pipe:count"]));
    let invalid: Vec<&str> = v["invalidated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        invalid.len() == 1 && invalid[0].starts_with("pipe:join "),
        "{v}"
    );
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran(), ["count", "join"]);
    assert_eq!(outputs(&env), good);
    env.demix(&["verify"]).ok();
}

#[test]
fn destructive_commands_work_only_in_a_store_and_never_follow_links_out() {
    let env = pipeline();
    // A folder that is not a store: gc and verify refuse, and delete nothing.
    for f in [
        "notastore/objects/ab/thing",
        "notastore/resume/mystate",
        "notastore/tmp/build/x",
        "notastore/tmp/notes.txt",
    ] {
        env.write(f, "mine\n");
    }
    for cmd in [
        &["--cache", "notastore", "gc"][..],
        &["--cache", "notastore", "verify"],
        &["--cache", "notastore", "gc", "--dry-run"],
    ] {
        let r = env.demix(cmd).fails(1);
        assert!(
            r.stderr().contains("is not a demix store"),
            "{}",
            r.stderr()
        );
    }
    for f in [
        "notastore/objects/ab/thing",
        "notastore/resume/mystate",
        "notastore/tmp/build/x",
        "notastore/tmp/notes.txt",
    ] {
        assert!(env.path(f).is_file(), "{f} was deleted");
    }
    // Nor does a run make a store inside someone's folder.
    let r = env.demix(&["--cache", "notastore", "run"]).fails(1);
    assert!(
        r.stderr().contains("is not a demix store"),
        "{}",
        r.stderr()
    );

    // A real store: names demix did not make are left alone, and a store
    // folder replaced by a link is refused.
    env.demix(&["run"]).ok();
    env.write("cache/tmp/notes.txt", "mine\n");
    env.write("cache/resume/mystate/x", "mine\n");
    env.demix(&["gc"]).ok();
    assert!(env.path("cache/tmp/notes.txt").is_file());
    assert!(env.path("cache/resume/mystate/x").is_file());
    env.write("elsewhere/precious.txt", "mine\n");
    std::fs::remove_dir_all(env.path("cache/tmp")).unwrap();
    std::os::unix::fs::symlink(env.path("elsewhere"), env.path("cache/tmp")).unwrap();
    let r = env.demix(&["gc"]).fails(1);
    assert!(r.stderr().contains("symbolic link"), "{}", r.stderr());
    assert!(env.path("elsewhere/precious.txt").is_file());
}

#[test]
fn an_output_hard_linked_to_an_outside_file_is_copied() {
    let env = Env::new();
    env.write("outside.txt", "precious\n");
    env.write(
        "demix.yaml",
        "version: 1\nname: ln\nsteps:\n  - id: a\n    kind: command\n    outputs: {o: o.txt}\n    run: [ln, outside.txt, \"${outputs.o}\"]\n",
    );
    env.demix(&["run"]).ok();
    let md = std::fs::metadata(env.path("outside.txt")).unwrap();
    assert_eq!(md.nlink(), 1, "the outside file is no store object");
    assert_eq!(md.permissions().mode() & 0o200, 0o200, "still writable");
    let stored = output_path(&env, "ln", "a", "o");
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), "precious\n");
    assert_ne!(std::fs::metadata(&stored).unwrap().ino(), md.ino());
    std::fs::write(env.path("outside.txt"), "changed\n").unwrap();
    env.demix(&["verify"]).ok();
}

#[test]
fn damaged_records_are_named_not_mistaken_for_missing_ones() {
    let env = pipeline();
    env.demix(&["run"]).ok();
    let st = env.demix(&["status", "--json"]).ok().json();
    let key = st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "count")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let rec = env.path(&format!("cache/results/{}/{key}.json", &key[..2]));
    let text = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &text[..text.len() / 2]).unwrap();
    let s = env.demix(&["status"]).ok().stdout();
    assert!(
        s.contains("result record") && s.contains("is corrupt"),
        "{s}"
    );
    let run = std::fs::read_dir(env.path("cache/runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&run, "{\"id\": ").unwrap();
    let log = env.demix(&["log"]).ok();
    assert!(log.stderr().contains("is corrupt"), "{}", log.stderr());
    let v = env.demix(&["verify", "--json"]).fails(1).json();
    let named: Vec<String> = v["corrupt_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named.len(), 2, "{v}");
    let r = env.demix(&["run"]).ok();
    assert_eq!(r.ran(), ["count"]);
}

#[test]
fn bad_flags_files_and_folders_are_named() {
    let env = pipeline();
    let r = env.demix(&["run", "--gpus", "zz,,"]).fails(2);
    assert!(
        r.stderr().contains("`zz` is not a GPU id"),
        "{}",
        r.stderr()
    );
    let r = env.demix(&["run", "--gpus", "0,,1"]).fails(2);
    assert!(r.stderr().contains("is not a GPU id"), "{}", r.stderr());
    // Not a manifest: refused at once, not read until memory runs out.
    let r = env.demix(&["check", "/dev/zero"]).fails(2);
    assert!(r.stderr().contains("not a regular file"), "{}", r.stderr());
    env.write("big.yaml", &"# padding\n".repeat(1 << 20));
    let r = env.demix(&["check", "big.yaml"]).fails(2);
    assert!(r.stderr().contains("larger than"), "{}", r.stderr());
    // A workdir that does not exist is named.
    env.write(
        "wd.yaml",
        "version: 1\nname: wd\nsteps:\n  - {id: a, kind: command, workdir: /nonexistent/x, run: [true]}\n",
    );
    let r = env.demix(&["run", "wd.yaml"]).fails(1);
    assert!(
        r.stderr().contains("workdir /nonexistent/x"),
        "{}",
        r.stderr()
    );
    // A dataset glob that matches a FIFO or a folder says what it found.
    std::fs::create_dir_all(env.path("fifo")).unwrap();
    let fifo = env.path("fifo/data.txt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    env.write(
        "ds.yaml",
        "version: 1\nname: ds\ndatasets:\n  f: {files: fifo/data.txt}\n  d: {files: data}\nsteps:\n  - {id: a, kind: command, inputs: {x: \"${datasets.f}\"}, run: [true]}\n  - {id: b, kind: command, inputs: {x: \"${datasets.d}\"}, run: [true]}\n",
    );
    let r = env.demix(&["run", "ds.yaml", "-k"]).fails(1);
    let e = r.stderr();
    assert!(e.contains("which is a FIFO"), "{e}");
    assert!(e.contains("which is a folder"), "{e}");
}
