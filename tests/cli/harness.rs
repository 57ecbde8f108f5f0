//! A small harness that drives the real `demix` binary in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "demix failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self
    }
    #[track_caller]
    pub fn fails(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
    /// The ids of steps the run says it ran, in order.
    pub fn ran(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("run    "))
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }
}

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_demix"))
}

/// demix-worker, next to `demix` where `scripts/test` builds it.
pub fn worker_exe() -> PathBuf {
    exe().with_file_name("demix-worker")
}

/// Whether data-parallel steps can run: a worker built with MPI, and Open
/// MPI's mpirun. Without them the tests print a line and pass; under
/// `CI=true` they fail.
pub fn mpi() -> bool {
    if !worker() {
        return false;
    }
    let doctor = Command::new(worker_exe()).arg("doctor").output();
    let built = doctor
        .as_ref()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("data parallel: yes"));
    let mpirun = Command::new("mpirun").arg("--version").output().is_ok();
    if built && mpirun {
        return true;
    }
    let why = if built {
        "no mpirun on PATH (Debian: openmpi-bin)"
    } else {
        "demix-worker was built without MPI (scripts/test builds it with `--features mpi`)"
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// A Python with transformers for tests of external evaluators:
/// `DEMIX_HF_PYTHON` (scripts/test sets it to the libtorch cache's venv).
/// Without it they print a line and pass; under `CI=true` they fail.
pub fn hf_python() -> Option<PathBuf> {
    let py = std::env::var_os("DEMIX_HF_PYTHON").map(PathBuf::from);
    let ok = py.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import transformers, torch"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        return py;
    }
    let why = "no DEMIX_HF_PYTHON with transformers (scripts/test sets it)";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

/// Whether the worker (libtorch) is there for tests of ML steps. Without it they
/// print a line and pass; under `CI=true` they fail.
pub fn worker() -> bool {
    let w = worker_exe();
    if w.is_file() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {} is missing: scripts/test builds it",
        w.display()
    );
    eprintln!(
        "skipped: no {} (scripts/test builds it; or `cargo build -p demix-worker`)",
        w.display()
    );
    false
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(exe());
        c.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("DEMIX_CACHE")
            .env_remove("DEMIX_GPUS")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env("COLUMNS", "120");
        c
    }

    pub fn demix(&self, args: &[&str]) -> Run {
        Run {
            out: self.cmd(args).output().expect("run demix"),
        }
    }

    /// All files under the store, for "nothing was written" checks.
    pub fn store_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.path("cache"), &mut out);
        out.sort();
        out
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// A step output's path in the store, from `status --json`'s key and the result record.
pub fn output_path(env: &Env, manifest: &str, step: &str, output: &str) -> PathBuf {
    let state = env.path(&format!("cache/state/{manifest}/{step}.json"));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state record")).expect("json");
    let tree = r["tree"].as_str().expect("tree");
    let path = r["outputs"][output]["path"].as_str().expect("output path");
    env.path(&format!("cache/trees/{}/{tree}/{path}", &tree[..2]))
}

/// Runs `demix ARGS` in `env` and sends it SIGINT once some folder under
/// `cache/resume/` satisfies `ready` (within 2 minutes); returns its exit code.
#[allow(dead_code)]
pub fn interrupt_when(
    env: &Env,
    args: &[&str],
    what: &str,
    ready: impl Fn(&std::path::Path) -> bool,
) -> Option<i32> {
    use std::time::{Duration, Instant};
    let mut child = env
        .cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let resume = env.path("cache/resume");
    while !std::fs::read_dir(&resume)
        .map(|d| d.flatten().any(|e| ready(&e.path())))
        .unwrap_or(false)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no {what} appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap().code()
}
