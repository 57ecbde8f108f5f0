//! The Slurm executor on a real one-node cluster (`.ci/slurm.sh`, started by
//! `scripts/test`, which sets `DEMIX_TEST_SLURM=1`). Without it these tests print a
//! line and pass (under `CI=true` they fail); with it set, a cluster that does not
//! answer fails them.
//!
//! They take the cluster one at a time (a lock), and bound every wait.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::harness::{Env, Run, output_path};

static CLUSTER: Mutex<()> = Mutex::new(());

/// The cluster, or `None` (and a line on stderr) when this run has none.
fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    if std::env::var("DEMIX_TEST_SLURM").as_deref() != Ok("1") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but there is no Slurm cluster: scripts/test starts one (as root, with apt-get)"
        );
        let _ = std::io::stderr().write_all(b"skipped: no Slurm cluster (run scripts/test)\n");
        return None;
    }
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("timeout")
        .args(["20", "sinfo", "-h", "-o", "%T"])
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {}
        Ok(o) => panic!(
            "DEMIX_TEST_SLURM=1 but Slurm does not answer: sinfo {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("DEMIX_TEST_SLURM=1 but sinfo cannot run: {e}"),
    }
    Some(guard)
}

fn sh(program: &str, args: &[&str]) -> String {
    let o = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Ids of the jobs named `name` that are pending or running.
fn live_jobs(name: &str) -> Vec<String> {
    sh(
        "squeue",
        &[
            "-h",
            "-t",
            "PENDING,RUNNING,REQUEUED",
            "-n",
            name,
            "-o",
            "%i",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Cancels every job of workflow `wf` (after a test went wrong).
fn scancel_workflow(wf: &str) {
    let prefix = format!("demix:{wf}:");
    let ids: Vec<String> = sh("squeue", &["-h", "-o", "%i %j"])
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .filter(|(_, n)| n.starts_with(&prefix))
                .map(|(i, _)| i.to_string())
        })
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("scancel").args(&ids).status();
    }
}

#[track_caller]
fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A started `demix` whose output goes to files, so it can be waited on with a bound.
struct Running {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
    wf: String,
}

fn start(env: &Env, wf: &str, args: &[&str]) -> Running {
    let out = env.path("demix.stdout");
    let err = env.path("demix.stderr");
    let child = env
        .cmd(args)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start demix");
    Running {
        child,
        out,
        err,
        wf: wf.to_string(),
    }
}

impl Running {
    fn wait(mut self, limit: Duration) -> Run {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                scancel_workflow(&self.wf);
                panic!(
                    "demix did not finish in {limit:?}; stderr so far:\n{}",
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Run {
            out: Output {
                status,
                stdout: std::fs::read(&self.out).unwrap_or_default(),
                stderr: std::fs::read(&self.err).unwrap_or_default(),
            },
        }
    }
}

/// `demix ARGS`, killed (and its jobs cancelled) if it takes longer than `limit`.
fn demix(env: &Env, wf: &str, args: &[&str], limit: Duration) -> Run {
    start(env, wf, args).wait(limit)
}

const S30: Duration = Duration::from_secs(30);

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn steps_run_as_slurm_jobs_and_a_second_run_runs_nothing() {
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: slok
params: {items: [a, b]}
steps:
  - id: greet
    kind: command
    foreach: ${params.items}
    outputs: {out: greet.txt}
    run: [sh, -c, 'echo "greet[$0] $SLURM_JOB_ID" >> side.log; echo "hello $0" > "$1"', "${item}", "${outputs.out}"]
  - id: join
    kind: command
    inputs: {g: "${steps.greet[*].out}"}
    outputs: {all: all.txt}
    run: [sh, -c, 'echo "join $SLURM_JOB_ID" >> side.log; cat "$@" > "$DEMIX_OUTPUT_ALL"', sh, "${inputs.g}"]
"#,
    );
    let r = demix(
        &env,
        "slok",
        &["run", "--executor", "slurm", "-j", "4"],
        S30,
    )
    .ok();
    let err = r.stderr();
    assert_eq!(
        lines_with(&err, "sbatch job").len(),
        2,
        "one array for greet[*], one job for join:\n{err}"
    );
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "slok", "join", "all")).unwrap(),
        "hello a\nhello b\n"
    );
    // Each step ran inside a Slurm job, and the jobs carry the run's names.
    let side = env.read("side.log");
    assert_eq!(side.lines().count(), 3, "{side}");
    assert!(
        side.lines()
            .all(|l| l.split(' ').nth(1).is_some_and(|id| !id.is_empty())),
        "{side}"
    );
    let names = sh(
        "squeue",
        &[
            "-h",
            "-t",
            "all",
            "-n",
            "demix:slok:greet,demix:slok:join",
            "-o",
            "%j",
        ],
    );
    assert!(
        names.contains("demix:slok:greet") && names.contains("demix:slok:join"),
        "{names}"
    );
    // The run's Slurm folder is gone; only the store remains.
    let tmp: Vec<_> = std::fs::read_dir(env.path("cache/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        tmp.iter()
            .all(|n| !n.to_string_lossy().starts_with("slurm-")),
        "{tmp:?}"
    );
    let r = demix(&env, "slok", &["run", "--executor", "slurm"], S30).ok();
    assert!(
        r.ran().is_empty() && !r.stderr().contains("sbatch"),
        "{}",
        r.stderr()
    );
    assert_eq!(env.read("side.log").lines().count(), 3);
    env.demix(&["verify"]).ok();
}

#[test]
fn a_failing_job_shows_its_slurm_state_exit_code_and_log_and_fail_fast_scancels() {
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: slfail
executor: {type: slurm}
steps:
  - id: bad
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'sleep 1; echo "something broke" >&2; exit 3']
  - id: slow
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'touch slow.started; echo partial > "$0"; sleep 60; echo done >> "$0"', "${outputs.o}"]
  - id: huge
    kind: command
    resources: {memory: 100TiB}
    outputs: {o: o.txt}
    run: [sh, -c, 'echo never > "$0"', "${outputs.o}"]
"#,
    );
    let t0 = Instant::now();
    let r = demix(&env, "slfail", &["run", "-t", "bad", "-t", "slow"], S30).fails(1);
    let err = r.stderr();
    let failed = lines_with(&err, "FAILED bad:").join("\n");
    assert!(failed.contains("command exited with status 3"), "{err}");
    assert!(
        failed.contains("slurm job") && failed.contains(" FAILED, exit code 1:0"),
        "Slurm's state and exit code: {err}"
    );
    assert!(err.contains("something broke"), "the log tail: {err}");
    // Fail-fast: the other job was scancelled, long before its 60 s.
    assert!(err.contains("cancel slow"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    wait_until(
        "slow's job to leave the queue",
        Duration::from_secs(15),
        || live_jobs("demix:slfail:slow").is_empty(),
    );
    assert!(
        !env.path("cache/state/slfail/slow.json").exists(),
        "nothing half-written"
    );
    assert!(!env.path("cache/state/slfail/bad.json").exists());
    // sbatch refusing a job fails the step with sbatch's reason.
    let r = demix(&env, "slfail", &["run", "-t", "huge"], S30).fails(1);
    let err = r.stderr();
    assert!(
        err.contains("FAILED huge: sbatch rejected the job: sbatch: error:"),
        "{err}"
    );
    assert!(
        err.contains("Memory specification can not be satisfied"),
        "{err}"
    );
}

#[test]
fn ctrl_c_scancels_the_runs_jobs() {
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: slint
steps:
  - id: s
    kind: command
    foreach: [a, b, c]
    outputs: {o: o.txt}
    run: [sh, -c, 'touch "started.$0"; echo partial > "$1"; sleep 60; echo done >> "$1"', "${item}", "${outputs.o}"]
"#,
    );
    let run = start(
        &env,
        "slint",
        &["run", "--executor", "slurm", "-j", "3", "-v"],
    );
    wait_until("a step to start in its job", S30, || {
        env.path("started.a").exists() || env.path("started.b").exists()
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    let r = run.wait(S30).fails(130);
    let err = r.stderr();
    assert!(
        err.contains("interrupted:") && err.contains("3 cancelled"),
        "{err}"
    );
    assert!(err.contains("slurm: scancel "), "{err}");
    wait_until(
        "the jobs to leave the queue",
        Duration::from_secs(15),
        || live_jobs("demix:slint:s").is_empty(),
    );
    assert!(
        !env.path("cache/state/slint").exists(),
        "nothing half-written"
    );
    let st = env.demix(&["status", "--json"]).ok().json();
    assert_eq!(st["counts"]["new"], 3);
}

#[test]
fn a_requeued_job_runs_its_step_again() {
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: slrq
steps:
  - id: long
    kind: command
    outputs: {o: o.txt}
    run: [sh, -c, 'echo "start $${SLURM_RESTART_COUNT:-0}" >> side.log; sleep 3; echo "done $${SLURM_RESTART_COUNT:-0}" > "$0"', "${outputs.o}"]
"#,
    );
    let run = start(&env, "slrq", &["run", "--executor", "slurm", "-v"]);
    wait_until("the step to start", S30, || env.path("side.log").exists());
    let job = live_jobs("demix:slrq:long");
    assert_eq!(job.len(), 1, "{job:?}");
    let o = Command::new("scontrol")
        .args(["requeue", &job[0]])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scontrol requeue: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Slurm holds a requeued job back for cred_expire (10 s here), then reruns it.
    let r = run.wait(Duration::from_secs(60)).ok();
    let err = r.stderr();
    assert!(
        err.contains("retry  long (slurm job") && err.contains("was requeued"),
        "{err}"
    );
    assert_eq!(env.read("side.log"), "start 0\nstart 1\n");
    assert_eq!(
        std::fs::read_to_string(output_path(&env, "slrq", "long", "o")).unwrap(),
        "done 1\n"
    );
}

#[test]
fn slurm_hands_out_the_gpus_and_the_local_pool_does_not_gate() {
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    env.write(
        "demix.yaml",
        r#"version: 1
name: slgpu
steps:
  - id: g
    kind: command
    foreach: [a, b, c]
    resources: {gpus: 1}
    outputs: {o: o.txt}
    run: [sh, -c, 'echo "$(date +%s%N) start $CUDA_VISIBLE_DEVICES" >> side.log; sleep 2; echo "$(date +%s%N) end $CUDA_VISIBLE_DEVICES" >> side.log; echo "$0 $CUDA_VISIBLE_DEVICES" > "$1"', "${item}", "${outputs.o}"]
"#,
    );
    // This machine has no GPUs for demix (--gpus ""); Slurm has two fake ones.
    demix(
        &env,
        "slgpu",
        &["run", "--executor", "slurm", "-j", "3", "--gpus", ""],
        S30,
    )
    .ok();
    let log = env.read("side.log");
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
    assert_eq!(events.len(), 6, "{log}");
    let mut busy: Vec<String> = Vec::new();
    for (_, what, dev) in &events {
        assert!(
            dev == "0" || dev == "1",
            "each step sees its own device: {log}"
        );
        if what == "start" {
            assert!(
                !busy.contains(dev),
                "device {dev} given to two steps at once: {log}"
            );
            busy.push(dev.clone());
            assert!(busy.len() <= 2, "{log}");
        } else {
            busy.retain(|d| d != dev);
        }
    }
}

#[test]
fn tiny_steps_share_jobs_of_one_array() {
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    let items: Vec<String> = (0..12).map(|i| format!("i{i}")).collect();
    env.write(
        "demix.yaml",
        &format!(
            r#"version: 1
name: sltiny
executor: {{type: slurm, batch: 4}}
steps:
  - id: t
    kind: command
    foreach: [{}]
    outputs: {{o: o.txt}}
    run: [sh, -c, 'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID" > "$1"', "${{item}}", "${{outputs.o}}"]
"#,
            items.join(", ")
        ),
    );
    let r = demix(&env, "sltiny", &["run"], S30).ok();
    let err = r.stderr();
    let sb = lines_with(&err, "sbatch job");
    assert_eq!(sb.len(), 1, "{err}");
    assert!(sb[0].contains("array of 3 tasks, 4 step(s) each"), "{err}");
    let mut seen: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            let s = std::fs::read_to_string(output_path(&env, "sltiny", &format!("t[{i}]"), "o"))
                .unwrap();
            let (job, task) = s.trim().split_once(' ').unwrap();
            (job.to_string(), task.to_string())
        })
        .collect();
    let job = seen[0].0.clone();
    assert!(seen.iter().all(|(j, _)| *j == job), "{seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        3,
        "three array tasks ran four steps each: {seen:?}"
    );
    let tasks = sh(
        "squeue",
        &["-h", "-t", "all", "-r", "-j", &job, "-o", "%i %T"],
    );
    assert_eq!(
        tasks.lines().filter(|l| l.ends_with("COMPLETED")).count(),
        3,
        "{tasks}"
    );
}

#[test]
fn slurm_without_sbatch_is_a_usage_error_before_anything_runs() {
    let env = Env::new();
    env.write("demix.yaml", "version: 1\nname: nos\nsteps:\n  - {id: a, kind: command, outputs: {o: o.txt}, run: [touch, '${outputs.o}']}\n");
    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = env
        .cmd(&["run", "--executor", "slurm"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let r = Run { out }.fails(2);
    assert!(
        r.stderr().contains("needs `sbatch` on PATH"),
        "{}",
        r.stderr()
    );
    assert!(
        !Path::new(&env.path("cache/results")).exists(),
        "nothing ran"
    );
    // --slurm-* flags without the Slurm executor are a mistake, not a no-op.
    let r = env.demix(&["run", "--slurm-partition", "gpu"]).fails(2);
    assert!(
        r.stderr()
            .contains("--slurm-partition needs the Slurm executor"),
        "{}",
        r.stderr()
    );
    // The manifest's block is checked like the rest of the manifest.
    env.write(
        "bad.yaml",
        "version: 1\nname: b\nexecutor: {type: slurm, partitoin: gpu, batch: 0}\nsteps: []\n",
    );
    let r = env.demix(&["check", "bad.yaml"]).fails(2);
    assert!(r.stderr().contains("field `partitoin`"), "{}", r.stderr());
    env.write(
        "bad.yaml",
        "version: 1\nname: b\nexecutor: {type: slurm, batch: 0, time: soon}\nsteps: []\n",
    );
    let r = env.demix(&["check", "bad.yaml"]).fails(2);
    assert!(
        r.stderr().contains("`batch` must be at least 1")
            && r.stderr().contains("`soon` is not a duration"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_two_task_job_trains_a_two_rank_step() {
    if !crate::harness::mpi() {
        return;
    }
    let Some(_c) = cluster() else { return };
    let env = Env::new();
    let m = crate::ml_parallel::manifest(&[("one", 1, 5), ("two", 2, 6)], 10 * 8 * 32);
    env.write("demix.yaml", &m);
    // `one` runs in a one-task job; `two` in one job of two tasks that srun
    // starts, wired up by PMIx.
    let r = demix(
        &env,
        "dp",
        &["run", "--executor", "slurm", "-j", "1"],
        Duration::from_secs(300),
    )
    .ok();
    let err = r.stderr();
    assert_eq!(lines_with(&err, "sbatch job").len(), 3, "{err}");
    let (l1, l2) = (
        crate::ml_parallel::losses(&env, "one"),
        crate::ml_parallel::losses(&env, "two"),
    );
    assert_eq!((l1.len(), l2.len()), (10, 10));
    for (i, (a, b)) in l1.iter().zip(&l2).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "step {}: {a} vs {b}",
            i + 1
        );
    }
    let logs: Vec<String> = std::fs::read_dir(env.path("cache/logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.iter().any(|l| l.ends_with(".rank1.log")), "{logs:?}");
    assert!(live_jobs("demix:dp:two").is_empty());
}
