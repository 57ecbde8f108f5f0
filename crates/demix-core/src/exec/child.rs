//! Runs one step from its serialized spec in this process: take the key's lock, run
//! the step into a temporary directory, commit the outputs, record the result.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kind::{Progress, Registry, RunCtx, StepError};
use crate::protocol::{Completion, EXIT_CANCELLED, EXIT_FAILED, StepSpec};
use crate::store::{self, Health, ResultRecord, Store, write_json_atomic};

static CANCEL: AtomicBool = AtomicBool::new(false);
/// Steps this process has finished (a Slurm batch runs several): a watchdog
/// stands down once its step is among them.
static FINISHED: AtomicU64 = AtomicU64::new(0);

/// How long a step has to stop after it is asked to (a signal, or its parent's
/// death) before the process ends itself: some library calls (a BPE trainer, a
/// long kernel) cannot be interrupted, and an orphaned step must not run on.
/// `DEMIX_CANCEL_GRACE` (seconds) overrides it; the Slurm executor sets it
/// from the warning its `--signal` gives before the time limit.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

pub fn cancel_grace() -> Duration {
    std::env::var("DEMIX_CANCEL_GRACE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_CANCEL_GRACE, Duration::from_secs_f64)
}

extern "C" fn on_signal(_: libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether a signal asked this process to stop.
pub fn cancel_requested() -> bool {
    CANCEL.load(Ordering::SeqCst)
}

/// Watches for the parent dying (a killed `demix run`), so an orphaned step stops too.
/// `parent` is the pid of the process that started this one, as it said: a
/// parent killed before this process got this far (a loaded machine, a slow
/// start) is noticed too, which a pid read here would miss.
fn watch_parent(parent: u32) {
    // A rank of a data-parallel step is mpirun's child, not demix's: it
    // watches demix by its pid instead.
    let under_launcher = demix_spec::launch::launched().is_some();
    std::thread::spawn(move || {
        loop {
            // SAFETY: getppid has no preconditions; kill with signal 0 only
            // checks that the process exists.
            let alive = unsafe {
                libc::getppid() as u32 == parent
                    || (under_launcher && libc::kill(parent as i32, 0) == 0)
            };
            if !alive {
                CANCEL.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Ends the process if the step has not returned `grace` after cancellation,
/// leaving a completion record that says so. Its work directory is left to `gc`.
fn start_watchdog(grace: Duration, done: Completion, completion: Option<PathBuf>) {
    let mine = FINISHED.load(Ordering::SeqCst);
    let returned = move || FINISHED.load(Ordering::SeqCst) != mine;
    std::thread::spawn(move || {
        while !CANCEL.load(Ordering::SeqCst) {
            if returned() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if returned() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let why = format!(
            "cancelled: the step did not stop within {:.0} s of being asked to, so its process ended itself",
            grace.as_secs_f64()
        );
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .open(&done.log)
            .and_then(|mut f| writeln!(f, "{why}"));
        if let Some(p) = completion {
            let mut c = done;
            c.cancelled = true;
            c.exit_code = EXIT_CANCELLED;
            c.error = Some(why);
            let _ = write_json_atomic(&p, &c);
        }
        // SAFETY: _exit ends the process at once; nothing of this process is
        // needed any more, and exit handlers could wait on the stuck call.
        unsafe { libc::_exit(EXIT_CANCELLED) };
    });
}

/// Runs the spec at `spec_path`; returns the process exit code. With
/// `parent`, the step stops when that process (its parent) is gone.
pub fn exec_step(
    registry: &Registry,
    spec_path: &Path,
    completion_path: Option<&Path>,
    parent: Option<u32>,
) -> i32 {
    install_signal_handlers();
    if let Some(pid) = parent {
        watch_parent(pid);
    }
    let spec: StepSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read step spec {}: {e}", spec_path.display());
            return EXIT_FAILED;
        }
    };
    let started = Instant::now();
    let store = Store::open(&spec.store);
    let log = store.log_path(&spec.key);
    if let Some(r) = demix_spec::launch::launched().filter(|r| !r.leads()) {
        return follow(registry, &spec, &store, &log, r);
    }
    let mut done = Completion::failed(&spec.step, &spec.key, hostname(), log.clone());
    start_watchdog(
        cancel_grace(),
        done.clone(),
        completion_path.map(Path::to_path_buf),
    );
    // A panic inside a library (an allocation libtorch cannot make) is a failed
    // step with its message, never a crashed process without a record.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(registry, &spec, &store, &log, &mut done)
    }))
    .unwrap_or_else(|p| Err(StepError::from_panic("internal error", &*p)));
    FINISHED.fetch_add(1, Ordering::SeqCst);
    done.duration_s = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            done.ok = true;
            done.exit_code = 0;
        }
        Err(StepError::Cancelled) => {
            done.cancelled = true;
            done.exit_code = EXIT_CANCELLED;
            done.error = Some("cancelled".into());
        }
        // A failure after a stop signal is the signal's doing: under Slurm, scancel
        // and the time limit signal the step's command as well as this process.
        Err(_) if CANCEL.load(Ordering::SeqCst) => {
            done.cancelled = true;
            done.exit_code = EXIT_CANCELLED;
            done.error = Some("cancelled".into());
        }
        Err(e) => {
            done.error = Some(e.to_string());
        }
    }
    let _ = store.stat.save();
    if let Some(p) = completion_path
        && let Err(e) = write_json_atomic(p, &done)
    {
        eprintln!("error: cannot write completion record {}: {e}", p.display());
        return EXIT_FAILED;
    }
    if let Some(e) = &done.error
        && !done.cancelled
    {
        eprintln!("error: {e}");
    }
    done.exit_code
}

fn run(
    registry: &Registry,
    spec: &StepSpec,
    store: &Store,
    log: &Path,
    done: &mut Completion,
) -> Result<(), StepError> {
    let kind = registry
        .get(&spec.kind)
        .ok_or_else(|| StepError::Failed(format!("this demix has no step kind `{}`", spec.kind)))?;
    let _lock = store.lock(&spec.key, &|| {
        emit(&Progress {
            message: Some("waiting for another demix running this step".into()),
            ..Default::default()
        })
    })?;
    if reuse_result(spec, store, done) {
        return Ok(());
    }
    check_inputs(spec, store)?;
    let started_at = jiff::Timestamp::now();
    let t0 = Instant::now();
    let tmp = store.new_tmp(&format!("{}-", &spec.key[..12]))?;
    let out = tmp.join("out");
    std::fs::create_dir_all(&out).map_err(StepError::io("creating the output directory"))?;
    start_log(log, spec, &done.host)?;
    let to_log = progress_to_log(log, t0);
    let facts = std::sync::Mutex::new(BTreeMap::new());
    let ctx = RunCtx {
        spec,
        store,
        out_dir: &out,
        log,
        cancel: &CANCEL,
        progress: &|p| {
            to_log(&p);
            emit(&p);
        },
        facts: &facts,
    };
    let result = kind.run(&ctx).and_then(|()| {
        if CANCEL.load(Ordering::SeqCst) {
            return Err(StepError::Cancelled);
        }
        let facts = facts.into_inner().unwrap_or_else(|e| e.into_inner());
        commit(spec, store, &out, (started_at, t0), facts, done)
    });
    let _ = store::remove_tree(&tmp);
    result
}

/// Another process may have finished the step while we waited for its lock
/// (unless forced): then its healthy result is this run's, and true.
fn reuse_result(spec: &StepSpec, store: &Store, done: &mut Completion) -> bool {
    if !spec.force
        && let Some(r) = store.read_result(&spec.key)
        && store.health(&r) == Health::Ok
    {
        done.cached = true;
        done.outputs = r.outputs.clone();
        let _ = store.write_state(&ResultRecord {
            step: spec.step.clone(),
            manifest: spec.manifest.clone(),
            ..r
        });
        return true;
    }
    false
}

/// Starts the step's log with a header line: this demix, the step, its key and the host.
fn start_log(log: &Path, spec: &StepSpec, host: &str) -> Result<(), StepError> {
    if let Some(p) = log.parent() {
        std::fs::create_dir_all(p).map_err(StepError::io("creating the log directory"))?;
    }
    let _ = std::fs::write(
        log,
        format!(
            "# demix {} step {} key {} on {host}\n",
            env!("CARGO_PKG_VERSION"),
            spec.step,
            spec.key,
        ),
    );
    Ok(())
}

/// Writes progress to the step's log at each new phase (unit and first word)
/// and every 30 s, so a long quiet step (a search of many minutes) shows in
/// its log how far it is; `t0` is when the step started.
fn progress_to_log(log: &Path, t0: Instant) -> impl Fn(&Progress) + '_ {
    let logged: std::sync::Mutex<Option<(Instant, String)>> = std::sync::Mutex::new(None);
    move |p: &Progress| {
        let phase = format!(
            "{} {}",
            p.unit,
            p.message
                .as_deref()
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
        );
        let mut last = logged.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .as_ref()
            .is_some_and(|(t, ph)| *ph == phase && t.elapsed() < LOG_PROGRESS_EVERY)
        {
            return;
        }
        *last = Some((Instant::now(), phase));
        let line = crate::live::describe(p);
        if line.is_empty() {
            return;
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(
                f,
                "[{:>7}] {line}",
                demix_fs::human_duration(t0.elapsed().as_secs_f64())
            );
        }
    }
}

/// Commits the step's output folder `out` to the store and records its result.
fn commit(
    spec: &StepSpec,
    store: &Store,
    out: &Path,
    (started_at, t0): (jiff::Timestamp, Instant),
    facts: BTreeMap<String, serde_json::Value>,
    done: &mut Completion,
) -> Result<(), StepError> {
    let (tree, files, outputs) = store.commit_tree(out, &spec.outputs)?;
    let record = ResultRecord {
        key: spec.key.clone(),
        manifest: spec.manifest.clone(),
        manifest_path: spec.manifest_path.clone(),
        step: spec.step.clone(),
        kind: spec.kind.clone(),
        record: spec.record.clone(),
        tree,
        outputs: outputs.clone(),
        files,
        started: started_at,
        finished: jiff::Timestamp::now(),
        duration_s: t0.elapsed().as_secs_f64(),
        host: done.host.clone(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        facts,
    };
    // The result record is the commit point; the state record only explains.
    store.write_result(&record)?;
    store.write_state(&record)?;
    done.outputs = outputs;
    Ok(())
}

/// A data-parallel step's rank other than 0: it computes with the others and
/// writes nothing the store keeps (rank 0 commits and reports), so it takes
/// no lock, skips the cache, reports no progress and logs beside rank 0.
fn follow(
    registry: &Registry,
    spec: &StepSpec,
    store: &Store,
    log: &Path,
    r: demix_spec::launch::Rank,
) -> i32 {
    let Some(kind) = registry.get(&spec.kind) else {
        eprintln!("error: this demix has no step kind `{}`", spec.kind);
        return EXIT_FAILED;
    };
    let log = log.with_extension(format!("rank{}.log", r.rank));
    let stub = Completion::failed(&spec.step, &spec.key, hostname(), log.clone());
    start_watchdog(cancel_grace(), stub, None);
    if let Some(p) = log.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    let _ = std::fs::write(
        &log,
        format!(
            "# demix {} step {} key {} rank {} of {} on {}\n",
            env!("CARGO_PKG_VERSION"),
            spec.step,
            spec.key,
            r.rank,
            r.size,
            hostname()
        ),
    );
    let result = store
        .new_tmp(&format!("{}-rank{}-", &spec.key[..12], r.rank))
        .map_err(StepError::from)
        .and_then(|tmp| {
            let out = tmp.join("out");
            std::fs::create_dir_all(&out)
                .map_err(StepError::io("creating the output directory"))?;
            let ctx = RunCtx {
                spec,
                store,
                out_dir: &out,
                log: &log,
                cancel: &CANCEL,
                progress: &|_| {},
                facts: &std::sync::Mutex::new(BTreeMap::new()),
            };
            let result = kind.run(&ctx);
            let _ = store::remove_tree(&tmp);
            result
        });
    FINISHED.fetch_add(1, Ordering::SeqCst);
    match result {
        Ok(()) => 0,
        Err(StepError::Cancelled) => EXIT_CANCELLED,
        Err(_) if CANCEL.load(Ordering::SeqCst) => EXIT_CANCELLED,
        Err(e) => {
            eprintln!("error: rank {}: {e}", r.rank);
            EXIT_FAILED
        }
    }
}

/// Checks that every upstream output the step reads still has the content its
/// key was computed from: a store object that rotted (a flipped byte with its
/// mtime put back) must not be consumed under a key that says it was good.
fn check_inputs(spec: &StepSpec, store: &Store) -> Result<(), StepError> {
    for (key, rec) in &spec.record.inputs {
        let crate::key::Origin::Steps { outputs } = &rec.origin else {
            continue;
        };
        let Some(inp) = spec.inputs.get(key) else {
            continue;
        };
        for (u, path) in outputs.iter().zip(&inp.paths) {
            let got = store.content_hash(path).map_err(|e| {
                StepError::Failed(format!(
                    "input {key}: output `{}` of step `{}`: {e}",
                    u.output, u.step
                ))
            })?;
            if got != u.hash {
                return Err(StepError::Failed(format!(
                    "input {key}: output `{}` of step `{}` ({}) no longer has the content it was recorded with; the store is damaged: run `demix verify`, then run again",
                    u.output,
                    u.step,
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// How often a step's progress is copied to its log.
const LOG_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Progress goes to stdout as JSON lines; the scheduler reads them.
fn emit(p: &Progress) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &serde_json::json!({ "progress": p }));
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
