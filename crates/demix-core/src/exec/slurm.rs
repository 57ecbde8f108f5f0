//! The Slurm executor: each ready step becomes a Slurm job (see docs/cluster.md).
//!
//! The scheduler still decides what runs when; this module is the run's
//! [`Executor`]: instead of starting a child process, it submits a job. A step's job runs
//! `demix internal exec-step SPEC --completion FILE` against the shared store, so
//! success or failure comes from the completion record the step writes itself, and
//! Slurm is asked only where each job is (`squeue`, one call per poll for every job
//! of the run). Ready steps with equal requests go out together as one job array;
//! with `batch` > 1 each array task runs several steps one after another.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::exec::executor::{Done, Executor, StartError, StepFuture};
use crate::graph::NodeId;
use crate::manifest::{ExecutorDecl, parse_duration};
use crate::progress::Reporter;
use crate::protocol::{Completion, EXIT_CANCELLED, StepSpec};
use crate::store::{Store, write_json_atomic};

/// Jobs in flight when `--jobs` is not given: the cluster, not this machine, limits.
pub const DEFAULT_JOBS: usize = 64;

/// How long `squeue` may fail in a row before the run's jobs are given up on.
const LOST_CONTACT: Duration = Duration::from_secs(300);

/// How to submit steps to Slurm: the manifest's `executor:` block with the command
/// line's `--slurm-*` flags on top.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Default time limit of a step that sets no `resources.time`.
    pub time: Option<String>,
    /// Extra `sbatch` arguments, passed as they are, after demix's own.
    pub flags: Vec<String>,
    /// How often a preempted, timed-out or requeued step is run again.
    pub max_retries: u32,
    /// `--signal` for each job (`B:USR1@60`: the step hears USR1 60 s before the limit).
    pub signal: String,
    /// Submit ready steps with equal requests together as one job array.
    pub array: bool,
    /// At most this many steps per job (or array task), run one after another.
    pub batch: u32,
    /// How often `squeue` is asked about the run's jobs.
    pub poll: Duration,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            account: None,
            time: None,
            flags: Vec::new(),
            max_retries: 2,
            signal: "B:USR1@60".into(),
            array: true,
            batch: 1,
            poll: Duration::from_secs(1),
        }
    }
}

impl SlurmConfig {
    /// Seconds a step may take to stop once signalled: most of the warning
    /// `--signal` gives before the time limit (`B:USR1@60`: 50 s), so a training
    /// step can save its state; the default grace without a warning.
    pub fn cancel_grace(&self) -> u64 {
        self.signal
            .rsplit_once('@')
            .and_then(|(_, s)| s.trim().parse::<u64>().ok())
            .map_or(crate::exec::child::DEFAULT_CANCEL_GRACE.as_secs(), |lead| {
                lead.saturating_sub(10).max(1)
            })
    }

    /// The manifest's `executor:` block over the defaults.
    pub fn from_decl(decl: Option<&ExecutorDecl>) -> SlurmConfig {
        let mut c = SlurmConfig::default();
        let Some(d) = decl else { return c };
        c.partition = d.partition.clone();
        c.account = d.account.clone();
        c.time = d.time.clone();
        c.flags = d.flags.clone();
        if let Some(r) = d.max_retries {
            c.max_retries = r;
        }
        if let Some(s) = &d.signal {
            c.signal = s.clone();
        }
        if let Some(a) = d.array {
            c.array = a;
        }
        if let Some(b) = d.batch {
            c.batch = b.max(1);
        }
        if let Some(p) = d.poll {
            c.poll = Duration::from_secs_f64(p);
        }
        c
    }
}

/// A Slurm command demix uses that is not on `PATH`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "--executor slurm needs `{0}` on PATH, and it is not there; run demix on a Slurm login node (or load the Slurm module)"
)]
pub struct MissingCommand(pub &'static str);

/// Why a Slurm command (sbatch, squeue, scancel, scontrol) failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// It failed and said nothing on standard error.
    #[error("{program} exited with {status}")]
    Exit {
        program: String,
        status: std::process::ExitStatus,
    },
    /// It failed: its standard error, trimmed.
    #[error("{0}")]
    Stderr(String),
    #[error("sbatch printed no job id")]
    NoJobId,
}

/// Checks that the Slurm commands demix uses are on `PATH`.
pub fn check_commands() -> Result<(), MissingCommand> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for cmd in ["sbatch", "squeue", "scancel", "scontrol"] {
        let found = std::env::split_paths(&path).any(|d| {
            let p = d.join(cmd);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        });
        if !found {
            return Err(MissingCommand(cmd));
        }
    }
    Ok(())
}

enum Msg {
    Submit {
        node: NodeId,
        spec: Box<StepSpec>,
        reply: oneshot::Sender<Done>,
    },
    Flush,
    Cancel(Vec<NodeId>),
    Finish(oneshot::Sender<()>),
}

/// One run's connection to Slurm: a task that submits, polls and cancels jobs.
pub struct Slurm {
    tx: mpsc::UnboundedSender<Msg>,
    step_cap: usize,
}

impl Slurm {
    /// Starts the executor for one run. `jobs` caps jobs (array tasks) in flight.
    /// Without a folder in the store, every submission fails with the reason.
    pub fn start(
        cfg: SlurmConfig,
        programs: crate::exec::Programs,
        jobs: usize,
        workflow: &str,
        store: &Store,
        rep: Arc<Reporter>,
    ) -> Slurm {
        let dir = store
            .new_tmp("slurm-")
            .unwrap_or_else(|_| store.tmp_dir().join(crate::store::unique_name("slurm-")));
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let jobs = jobs.max(1);
        let step_cap = jobs * cfg.batch.max(1) as usize;
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            programs,
            workflow: workflow.to_string(),
            dir,
            jobs,
            rep,
            steps: HashMap::new(),
            queue: Vec::new(),
            tasks: Vec::new(),
            seq: 0,
            spec_seq: 0,
            failures: 0,
            squeue_failing: None,
            cfg,
        };
        tokio::spawn(actor.run(rx));
        Slurm { tx, step_cap }
    }

    /// Hands over a step; it is submitted at the next [`Executor::flush`].
    pub fn submit(
        &self,
        node: NodeId,
        spec: StepSpec,
    ) -> impl std::future::Future<Output = Done> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Submit {
            node,
            spec: Box::new(spec),
            reply,
        });
        async move {
            rx.await.unwrap_or_else(|_| Done {
                completion: None,
                stderr: "the Slurm executor stopped before the step's job ended".into(),
                status: None,
            })
        }
    }
}

impl Executor for Slurm {
    /// Steps the scheduler may hand over at once: jobs in flight times `batch`.
    fn step_cap(&self) -> usize {
        self.step_cap
    }

    fn runs_here(&self) -> bool {
        false
    }

    fn start(
        &mut self,
        node: NodeId,
        spec: StepSpec,
        _gpus: &[String],
    ) -> Result<StepFuture, StartError> {
        Ok(Box::pin(self.submit(node, spec)))
    }

    /// Cancels these steps' jobs (`scancel`); their futures end as cancelled.
    fn cancel(&mut self, nodes: &[NodeId]) {
        let _ = self.tx.send(Msg::Cancel(nodes.to_vec()));
    }

    /// Submits the steps handed over since the last flush, batched by request.
    fn flush(&mut self) {
        let _ = self.tx.send(Msg::Flush);
    }

    /// Waits for the executor to clean up (every step's job has ended by now).
    fn finish(&mut self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Finish(tx)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = rx.await;
            }
        })
    }
}

/// What a step asks of the cluster; steps with equal requests share a submission.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Request {
    /// The binary the job runs (the engine's, or demix-worker).
    program: PathBuf,
    /// Data-parallel tasks per node and nodes (1 and 1 for other steps).
    ranks: u32,
    nodes: u32,
    cpus: u32,
    gpus: u32,
    mem_mb: Option<u64>,
    time_s: Option<u64>,
}

impl Request {
    /// Whether the job starts several processes (ranks or nodes).
    fn parallel(&self) -> bool {
        self.ranks > 1 || self.nodes > 1
    }
}

struct Step {
    id: String,
    spec: StepSpec,
    req: Request,
    reply: Option<oneshot::Sender<Done>>,
    retries: u32,
    /// The user (Ctrl-C, fail-fast, `watch`) cancelled it.
    cancel: bool,
    /// Its current spec's base name in the run folder.
    name: String,
}

struct Task {
    /// `123` or `123_4`, as squeue and scancel name it.
    name: String,
    /// The job id (`123`), for squeue's `-j`.
    job: String,
    nodes: Vec<NodeId>,
    state: String,
    reason: String,
    restarts: u32,
    out: PathBuf,
    /// We scancelled it to cancel one of its steps; the others run again.
    cancelled_by_us: bool,
    /// Requeued more often than `max_retries` allows; scancelled.
    too_many_restarts: bool,
    /// Polls it was missing from squeue.
    missing: u32,
}

struct Actor {
    cfg: SlurmConfig,
    programs: crate::exec::Programs,
    workflow: String,
    dir: PathBuf,
    jobs: usize,
    rep: Arc<Reporter>,
    /// Steps handed over and not yet decided, by node.
    steps: HashMap<NodeId, Step>,
    /// Nodes waiting to be submitted, oldest first.
    queue: Vec<NodeId>,
    tasks: Vec<Task>,
    seq: u32,
    spec_seq: u32,
    failures: usize,
    squeue_failing: Option<Instant>,
}

/// Slurm states after which a job does not run again by itself.
fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "PREEMPTED"
            | "NODE_FAIL"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "OUT_OF_MEMORY"
            | "SPECIAL_EXIT"
            | "REVOKED"
            | "GONE"
    )
}

/// States in which a job that left no completion record deserves another try.
fn is_retriable(state: &str) -> bool {
    matches!(state, "TIMEOUT" | "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL")
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Failed,
    Cancelled,
    /// Run it again; `counts` against `max_retries`.
    Retry {
        counts: bool,
    },
}

/// What a step's outcome is once its job has ended (or wrote a success).
fn classify(
    state: &str,
    c: Option<&Completion>,
    user_cancel: bool,
    cancelled_by_us: bool,
) -> Verdict {
    if c.is_some_and(|c| c.ok) {
        return Verdict::Ok;
    }
    if user_cancel {
        return Verdict::Cancelled;
    }
    if cancelled_by_us {
        return Verdict::Retry { counts: false };
    }
    if is_retriable(state) {
        return Verdict::Retry { counts: true };
    }
    if c.is_some_and(|c| !c.cancelled) {
        return Verdict::Failed;
    }
    match c {
        // Stopped by a signal demix did not send: the pre-timeout USR1, or SIGTERM
        // on preemption, requeue or the time limit. Someone's scancel is a failure.
        Some(_) if state == "CANCELLED" => Verdict::Failed,
        Some(_) => Verdict::Retry { counts: true },
        None => Verdict::Failed,
    }
}

/// Seconds as Slurm's `--time`: `[D-]HH:MM:SS`.
fn slurm_time(secs: u64) -> String {
    let (d, rest) = (secs / 86400, secs % 86400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if d > 0 { format!("{d}-{hms}") } else { hms }
}

/// A word for `/bin/sh`, single-quoted.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `squeue -O JobArrayID:|,State:|,RestartCnt:|,Reason:|` lines.
fn parse_squeue(out: &str) -> Vec<(String, String, u32, String)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let name = f.next().filter(|s| !s.is_empty())?.to_string();
            let state = f.next()?.to_string();
            let restarts = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let reason = f.next().unwrap_or("").to_string();
            Some((name, state, restarts, reason))
        })
        .collect()
}

/// `KEY=VALUE` fields of `scontrol -o show job` or a jobcomp line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn tail(path: &Path, n: usize) -> String {
    let Ok(s) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| !l.starts_with("{\"progress\""))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn absolutize(spec: &mut StepSpec) {
    let abs = |p: &mut PathBuf| {
        if let Ok(a) = std::path::absolute(&*p) {
            *p = a;
        }
    };
    abs(&mut spec.store);
    abs(&mut spec.workdir);
    abs(&mut spec.manifest_path);
    for i in spec.inputs.values_mut() {
        i.paths.iter_mut().for_each(abs);
    }
}

async fn command(program: &str, args: &[String]) -> Result<String, CommandError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| CommandError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() {
            CommandError::Exit {
                program: program.to_string(),
                status: out.status,
            }
        } else {
            CommandError::Stderr(err)
        })
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut next_poll = Instant::now() + self.cfg.poll;
        loop {
            let busy = !self.tasks.is_empty();
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break,
                    Some(Msg::Submit { node, spec, reply }) => self.add(node, *spec, reply),
                    Some(Msg::Flush) => {
                        if !busy {
                            next_poll = Instant::now() + self.cfg.poll;
                        }
                        self.submit_queued().await;
                    }
                    Some(Msg::Cancel(nodes)) => self.cancel(&nodes).await,
                    Some(Msg::Finish(done)) => {
                        self.finish().await;
                        let _ = done.send(());
                        return;
                    }
                },
                _ = tokio::time::sleep_until(next_poll), if busy => {
                    self.poll().await;
                    self.submit_queued().await;
                    next_poll = Instant::now() + self.cfg.poll;
                }
            }
        }
        self.finish().await;
    }

    fn add(&mut self, node: NodeId, mut spec: StepSpec, reply: oneshot::Sender<Done>) {
        absolutize(&mut spec);
        let r = &spec.resources;
        let time_s = r
            .time
            .as_deref()
            .or(self.cfg.time.as_deref())
            .and_then(|t| parse_duration(t).ok());
        let program = match self.programs.for_runner(spec.runner, &spec.kind) {
            Ok(p) => p.to_path_buf(),
            Err(e) => {
                let _ = reply.send(Done {
                    completion: None,
                    stderr: e.to_string(),
                    status: None,
                });
                return;
            }
        };
        let req = Request {
            program,
            ranks: spec.ranks.max(1),
            nodes: r.nodes(),
            cpus: r.cpus(),
            gpus: r.gpus(),
            mem_mb: r
                .memory
                .as_ref()
                .map(|_| r.memory_bytes().div_ceil(1 << 20).max(1)),
            time_s,
        };
        let id = spec.step.clone();
        self.steps.insert(
            node,
            Step {
                id,
                spec,
                req,
                reply: Some(reply),
                retries: 0,
                cancel: false,
                name: String::new(),
            },
        );
        self.queue.push(node);
    }

    /// Ends a step: its future resolves with `done`.
    fn decide(&mut self, node: NodeId, done: Done) {
        if let Some(mut s) = self.steps.remove(&node)
            && let Some(r) = s.reply.take()
        {
            let _ = r.send(done);
        }
    }

    fn cancelled_completion(&self, node: NodeId, error: &str) -> Completion {
        let s = &self.steps[&node];
        let log = Store::open(&s.spec.store).log_path(&s.spec.key);
        Completion::cancelled(&s.id, &s.spec.key, error, String::new(), log)
    }

    fn fail(&mut self, node: NodeId, error: String, completion: Option<Completion>) {
        self.failures += 1;
        let c = match completion {
            Some(mut c) => {
                c.error = Some(error);
                c
            }
            None => {
                let mut c = self.cancelled_completion(node, &error);
                c.cancelled = false;
                c.exit_code = crate::protocol::EXIT_FAILED;
                c
            }
        };
        self.decide(
            node,
            Done {
                completion: Some(c),
                stderr: String::new(),
                status: None,
            },
        );
    }

    /// Submits queued steps while job slots are free: one job array per request.
    async fn submit_queued(&mut self) {
        let mut free = self.jobs.saturating_sub(self.tasks.len());
        if free == 0 || self.queue.is_empty() {
            return;
        }
        let mut groups: Vec<(Request, Vec<NodeId>)> = Vec::new();
        for &n in &self.queue {
            let req = &self.steps[&n].req;
            match groups.iter_mut().find(|(r, _)| r == req) {
                Some((_, v)) => v.push(n),
                None => groups.push((req.clone(), vec![n])),
            }
        }
        for (req, nodes) in groups {
            // A data-parallel step is a job of its own: srun starts its ranks.
            let batch = if req.parallel() {
                1
            } else {
                self.cfg.batch.max(1) as usize
            };
            if free == 0 {
                break;
            }
            let tasks = nodes.len().div_ceil(batch).min(free);
            let take = nodes.len().min(tasks * batch);
            let per = take.div_ceil(tasks);
            let chunks: Vec<Vec<NodeId>> =
                nodes[..take].chunks(per).map(<[NodeId]>::to_vec).collect();
            free -= chunks.len();
            self.queue.retain(|n| !nodes[..take].contains(n));
            if self.cfg.array && chunks.len() > 1 && !req.parallel() {
                self.sbatch(&req, chunks).await;
            } else {
                for c in chunks {
                    self.sbatch(&req, vec![c]).await;
                }
            }
        }
    }

    /// One `sbatch`: a plain job for one chunk, a job array for several.
    async fn sbatch(&mut self, req: &Request, chunks: Vec<Vec<NodeId>>) {
        self.seq += 1;
        let base = format!("j{}", self.seq);
        let all: Vec<NodeId> = chunks.iter().flatten().copied().collect();
        let script = match self.write_job_files(&base, req, &chunks) {
            Ok(s) => s,
            Err(e) => {
                for n in all {
                    self.fail(
                        n,
                        format!(
                            "cannot write the job's files in {}: {e}",
                            self.dir.display()
                        ),
                        None,
                    );
                }
                return;
            }
        };
        let array = chunks.len() > 1;
        let ids: Vec<&str> = all.iter().map(|n| self.steps[n].id.as_str()).collect();
        let per = chunks.iter().map(Vec::len).max().unwrap_or(1) as u64;
        let name = job_name(&self.workflow, &ids);
        let mut args = self.sbatch_args(req, &base, &name, per, chunks.len());
        args.push(script.display().to_string());
        let job = match submit(&args).await {
            Ok(j) => j,
            Err(err) => {
                for n in all {
                    self.fail(n, format!("sbatch rejected the job: {err}"), None);
                }
                return;
            }
        };
        let what = if array {
            format!(
                "array of {} tasks, {} step(s) each: {}",
                chunks.len(),
                per,
                summary(&ids)
            )
        } else {
            summary(&ids)
        };
        self.rep.line(&format!("sbatch job {job} ({what})"));
        self.track(&job, &base, chunks);
    }

    /// Names each step of the job and writes its spec, the task list (one line
    /// of spec names per task) and the job script; returns the script's path.
    fn write_job_files(
        &mut self,
        base: &str,
        req: &Request,
        chunks: &[Vec<NodeId>],
    ) -> std::io::Result<PathBuf> {
        let mut lines = String::new();
        // The first failure is kept; the remaining steps are still named, so
        // each can be failed by its name.
        let mut written = Ok(());
        for chunk in chunks {
            let mut names = Vec::new();
            for &n in chunk {
                self.spec_seq += 1;
                let name = format!("s{}", self.spec_seq);
                let step = self.steps.get_mut(&n).expect("queued steps are known");
                step.name = name.clone();
                let _ = std::fs::remove_file(self.dir.join(format!("{name}.done.json")));
                if written.is_ok() {
                    written = write_json_atomic(&self.dir.join(format!("{name}.json")), &step.spec);
                }
                names.push(name);
            }
            let _ = writeln!(lines, "{}", names.join(" "));
        }
        let script = self.dir.join(format!("{base}.sh"));
        let list = self.dir.join(format!("{base}.tasks"));
        written
            .and_then(|()| std::fs::write(&list, &lines))
            .and_then(|()| std::fs::write(&script, self.script(&list, req)))?;
        Ok(script)
    }

    /// The `sbatch` options for a job of `tasks` tasks (an array when more
    /// than one) of at most `per` steps each; the script comes last, after these.
    fn sbatch_args(
        &self,
        req: &Request,
        base: &str,
        job_name: &str,
        per: u64,
        tasks: usize,
    ) -> Vec<String> {
        let array = tasks > 1;
        let out = self.dir.join(if array {
            format!("{base}_%a.out")
        } else {
            format!("{base}.out")
        });
        let mut args: Vec<String> = vec![
            "--parsable".into(),
            format!("--job-name={job_name}"),
            format!("--output={}", out.display()),
            "--open-mode=append".into(),
            format!("--chdir={}", self.dir.display()),
            "--requeue".into(),
            format!("--signal={}", self.cfg.signal),
            format!("--nodes={}", req.nodes),
            format!("--ntasks-per-node={}", req.ranks),
            format!("--cpus-per-task={}", (req.cpus / req.ranks).max(1)),
        ];
        if let Some(m) = req.mem_mb {
            args.push(format!("--mem={m}M"));
        }
        if req.gpus > 0 && req.parallel() {
            // One GPU per rank (not with --gres: Slurm refuses the two
            // together); Slurm binds each task to its own.
            args.push("--gpus-per-task=1".into());
        } else if req.gpus > 0 {
            args.push(format!("--gres=gpu:{}", req.gpus));
        }
        if let Some(t) = req.time_s {
            // A task runs its steps one after another.
            args.push(format!("--time={}", slurm_time(t * per)));
        }
        if let Some(p) = &self.cfg.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.cfg.account {
            args.push(format!("--account={a}"));
        }
        if array {
            args.push(format!("--array=0-{}", tasks - 1));
        }
        args.extend(self.cfg.flags.iter().cloned());
        args
    }

    /// Follows a submitted job: one task per chunk, named as squeue names it.
    fn track(&mut self, job: &str, base: &str, chunks: Vec<Vec<NodeId>>) {
        let array = chunks.len() > 1;
        for (t, chunk) in chunks.into_iter().enumerate() {
            let (name, out) = if array {
                (
                    format!("{job}_{t}"),
                    self.dir.join(format!("{base}_{t}.out")),
                )
            } else {
                (job.to_string(), self.dir.join(format!("{base}.out")))
            };
            self.tasks.push(Task {
                name,
                job: job.to_string(),
                nodes: chunk,
                state: "PENDING".into(),
                reason: String::new(),
                restarts: 0,
                out,
                cancelled_by_us: false,
                too_many_restarts: false,
                missing: 0,
            });
        }
    }

    /// The job script: each task runs the specs on its line of the task list.
    fn script(&self, list: &Path, req: &Request) -> String {
        let gpus = req.gpus;
        let exe = sh_quote(&req.program.display().to_string());
        let dir = sh_quote(&self.dir.display().to_string());
        let list = sh_quote(&list.display().to_string());
        let no_gpus = if gpus == 0 {
            "export CUDA_VISIBLE_DEVICES=\n"
        } else {
            ""
        };
        // A data-parallel step: srun starts one rank per task, wired up by
        // PMIx (DEMIX_SRUN_MPI overrides the plugin).
        let launch = if req.parallel() {
            "srun --mpi=\"${DEMIX_SRUN_MPI:-pmix}\" --kill-on-bad-exit=1 "
        } else {
            "exec "
        };
        format!(
            "#!/bin/sh\n\
             # Generated by demix for workflow `{wf}`: runs the step specs on line\n\
             # SLURM_ARRAY_TASK_ID+1 of the task list, with the demix binary on the shared store.\n\
             D={dir}\n\
             T=${{SLURM_ARRAY_TASK_ID:-0}}\n\
             set -- $(sed -n \"$((T + 1))p\" {list})\n\
             {no_gpus}\
             export DEMIX_CANCEL_GRACE={grace}\n\
             if [ \"$#\" -eq 1 ]; then\n\
             \x20 rm -f \"$D/$1.done.json\"\n\
             \x20 {launch}{exe} internal exec-step \"$D/$1.json\" --completion \"$D/$1.done.json\"\n\
             \x20 exit $?\n\
             fi\n\
             exec {exe} internal exec-batch \"$D\" \"$@\"\n",
            wf = self.workflow,
            grace = self.cfg.cancel_grace()
        )
    }

    /// One squeue call for all of the run's jobs; then decide what ended.
    async fn poll(&mut self) {
        let Some(rows) = self.squeue().await else {
            return;
        };
        let rescancel = self.update_tasks(&rows);
        self.cancel_requeued(&rescancel).await;
        self.take_successes();
        let (ended, running): (Vec<Task>, Vec<Task>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|t| is_terminal(&t.state));
        self.tasks = running;
        for t in ended {
            self.ended(t).await;
        }
    }

    /// The squeue rows of the run's jobs, or `None` when squeue failed: that
    /// is retried at the next poll, until it has failed for [`LOST_CONTACT`],
    /// when the run's steps fail.
    async fn squeue(&mut self) -> Option<Vec<(String, String, u32, String)>> {
        let mut jobs: Vec<&str> = self.tasks.iter().map(|t| t.job.as_str()).collect();
        jobs.sort();
        jobs.dedup();
        let args: Vec<String> = vec![
            "-h".into(),
            "-t".into(),
            "all".into(),
            "-r".into(),
            "-j".into(),
            jobs.join(","),
            "-O".into(),
            "JobArrayID:|,State:|,RestartCnt:|,Reason:|".into(),
        ];
        let rows = match command("squeue", &args).await {
            Ok(out) => parse_squeue(&out),
            // A single unknown id is an error; several are an empty answer.
            Err(CommandError::Stderr(e)) if e.contains("Invalid job id") => Vec::new(),
            Err(e) => {
                let since = *self.squeue_failing.get_or_insert_with(Instant::now);
                if since.elapsed() > LOST_CONTACT {
                    self.rep.always(&format!(
                        "slurm: squeue has failed for {}s: {e}; giving up on the run's jobs",
                        LOST_CONTACT.as_secs()
                    ));
                    let nodes: Vec<NodeId> = self.tasks.drain(..).flat_map(|t| t.nodes).collect();
                    for n in nodes {
                        if self.steps.contains_key(&n) {
                            self.fail(n, format!("lost contact with Slurm: {e}"), None);
                        }
                    }
                } else {
                    self.rep
                        .detail(&format!("slurm: squeue failed (will retry): {e}"));
                }
                return None;
            }
        };
        self.squeue_failing = None;
        Some(rows)
    }

    /// Takes squeue's state into the tasks; a task squeue no longer shows
    /// three times running is gone. Returns the tasks requeued more than
    /// `max_retries` allows, to be cancelled.
    fn update_tasks(&mut self, rows: &[(String, String, u32, String)]) -> Vec<usize> {
        let by_name: HashMap<&str, &(String, String, u32, String)> =
            rows.iter().map(|r| (r.0.as_str(), r)).collect();
        let mut rescancel = Vec::new();
        for ti in 0..self.tasks.len() {
            let Some((_, state, restarts, reason)) =
                by_name.get(self.tasks[ti].name.as_str()).copied()
            else {
                let t = &mut self.tasks[ti];
                t.missing += 1;
                if t.missing >= 3 {
                    t.state = "GONE".into();
                }
                continue;
            };
            let t = &mut self.tasks[ti];
            t.missing = 0;
            if *state != t.state && state == "RUNNING" {
                let ids: Vec<&str> = t
                    .nodes
                    .iter()
                    .filter_map(|n| self.steps.get(n).map(|s| s.id.as_str()))
                    .collect();
                self.rep.detail(&format!(
                    "slurm: job {} running ({})",
                    t.name,
                    summary(&ids)
                ));
            }
            t.state = state.clone();
            t.reason = reason.clone();
            if *restarts > t.restarts {
                let more = restarts - t.restarts;
                t.restarts = *restarts;
                self.count_requeues(ti, more, &mut rescancel);
            }
        }
        rescancel
    }

    /// Counts `more` requeues of task `ti` against each of its steps' retries;
    /// the task goes on `rescancel` for each step past `max_retries`.
    fn count_requeues(&mut self, ti: usize, more: u32, rescancel: &mut Vec<usize>) {
        let (name, nodes) = (self.tasks[ti].name.clone(), self.tasks[ti].nodes.clone());
        for n in nodes {
            let max = self.cfg.max_retries;
            let Some(s) = self.steps.get_mut(&n) else {
                continue;
            };
            s.retries += more;
            if s.retries > max {
                self.rep.always(&format!("slurm: job {name} ({}) was requeued {} times; max_retries is {max}: cancelling it", s.id, s.retries));
                rescancel.push(ti);
            } else {
                self.rep.line(&format!(
                    "retry  {} (slurm job {name} was requeued; it runs again, retry {} of {max})",
                    s.id, s.retries
                ));
            }
        }
    }

    /// Cancels the tasks requeued too often; they end as failed.
    async fn cancel_requeued(&mut self, rescancel: &[usize]) {
        if rescancel.is_empty() {
            return;
        }
        let mut names = Vec::new();
        for &ti in rescancel {
            self.tasks[ti].too_many_restarts = true;
            names.push(self.tasks[ti].name.clone());
        }
        if let Err(e) = command("scancel", &names).await {
            self.rep
                .always(&format!("slurm: scancel {} failed: {e}", names.join(" ")));
        }
    }

    /// Successes are taken as soon as their record is there; the rest when the job ends.
    fn take_successes(&mut self) {
        for ti in 0..self.tasks.len() {
            for n in self.tasks[ti].nodes.clone() {
                let Some(s) = self.steps.get(&n) else {
                    continue;
                };
                if let Some(c) = Completion::read(&self.dir.join(format!("{}.done.json", s.name)))
                    && c.ok
                {
                    self.decide(
                        n,
                        Done {
                            completion: Some(c),
                            stderr: String::new(),
                            status: Some(0),
                        },
                    );
                }
            }
        }
    }

    /// A task's job ended: decide each of its steps still open.
    async fn ended(&mut self, t: Task) {
        let open: Vec<NodeId> = t
            .nodes
            .iter()
            .copied()
            .filter(|n| self.steps.contains_key(n))
            .collect();
        if open.is_empty() {
            return;
        }
        // Fetched once for the task, at its first failed step.
        let mut info: Option<BTreeMap<String, String>> = None;
        for n in open {
            let s = &self.steps[&n];
            let c = Completion::read(&self.dir.join(format!("{}.done.json", s.name)));
            let verdict = if t.too_many_restarts {
                Verdict::Failed
            } else {
                classify(&t.state, c.as_ref(), s.cancel, t.cancelled_by_us)
            };
            match verdict {
                Verdict::Ok => self.decide(
                    n,
                    Done {
                        completion: c,
                        stderr: String::new(),
                        status: Some(0),
                    },
                ),
                Verdict::Cancelled => {
                    let c = c.unwrap_or_else(|| self.cancelled_completion(n, "cancelled"));
                    self.decide(
                        n,
                        Done {
                            completion: Some(c),
                            stderr: String::new(),
                            status: None,
                        },
                    );
                }
                Verdict::Retry { counts } => self.retry(n, &t, c.as_ref(), counts),
                Verdict::Failed => {
                    if info.is_none() {
                        info = Some(self.job_info(&t).await);
                    }
                    let error = self.failure(&t, info.as_ref().expect("fetched"), c.as_ref());
                    self.fail(n, error, c);
                }
            }
        }
    }

    /// Queues step `n` of ended task `t` again, unless (when the retry
    /// `counts`) it has run more than `max_retries` times: then it fails.
    fn retry(&mut self, n: NodeId, t: &Task, c: Option<&Completion>, counts: bool) {
        let max = self.cfg.max_retries;
        let s = self.steps.get_mut(&n).expect("open");
        if counts {
            s.retries += 1;
        }
        let id = s.id.clone();
        if s.retries > max {
            let signalled = if c.is_some() {
                " after a signal stopped the step (time limit, preemption or requeue)"
            } else {
                ""
            };
            let why = format!(
                "slurm job {} ended {}{signalled}; the step ran {} times and max_retries is {max}",
                t.name, t.state, s.retries
            );
            self.fail(n, why, None);
        } else {
            let why = match c {
                Some(_) => format!("the step was stopped by a signal, job {}", t.state),
                None => format!("job {}", t.state),
            };
            if counts {
                self.rep.line(&format!(
                    "retry  {id} (slurm job {}: {why}; resubmitting, retry {} of {max})",
                    t.name, self.steps[&n].retries
                ));
            } else {
                self.rep.detail(&format!(
                    "retry  {id} (its job {} was cancelled with another step)",
                    t.name
                ));
            }
            self.queue.push(n);
        }
    }

    /// Why a step of ended task `t` failed: its own error when it left one,
    /// with Slurm's account of the job (`info`, from [`Self::job_info`]).
    fn failure(&self, t: &Task, info: &BTreeMap<String, String>, c: Option<&Completion>) -> String {
        let state = info
            .get("JobState")
            .cloned()
            .unwrap_or_else(|| t.state.clone());
        let exit = info.get("ExitCode").cloned().unwrap_or_else(|| "?".into());
        let node = info
            .get("NodeList")
            .filter(|n| !n.is_empty() && *n != "(null)")
            .map(|n| format!(" on {n}"))
            .unwrap_or_default();
        let reason = match info.get("Reason").or(Some(&t.reason)) {
            Some(r) if !r.is_empty() && r != "None" => format!(", reason {r}"),
            _ => String::new(),
        };
        let slurm = format!(
            "slurm job {} {state}, exit code {exit}{reason}{node}",
            t.name
        );
        match c {
            Some(c) if !c.cancelled => format!(
                "{} ({slurm})",
                c.error.clone().unwrap_or_else(|| "failed".into())
            ),
            Some(_) if t.too_many_restarts => format!(
                "{slurm}: requeued more than max_retries={} times",
                self.cfg.max_retries
            ),
            Some(_) => format!("{slurm}: the job was cancelled outside demix"),
            None if t.too_many_restarts => format!(
                "{slurm}: requeued more than max_retries={} times",
                self.cfg.max_retries
            ),
            None => {
                let out = tail(&t.out, 10);
                let mut e = format!("{slurm}, and the step left no completion record");
                if !out.is_empty() {
                    let _ = write!(e, "; job output {}:\n{out}", t.out.display());
                }
                e
            }
        }
    }

    /// The ended job's state, exit code and reason: `scontrol show job`, else the
    /// jobcomp file when the job has already left the controller's memory.
    async fn job_info(&self, t: &Task) -> BTreeMap<String, String> {
        if let Ok(out) = command(
            "scontrol",
            &["-o".into(), "show".into(), "job".into(), t.name.clone()],
        )
        .await
            && let Some(line) = out.lines().next()
        {
            return fields(line);
        }
        let Ok(conf) = command("scontrol", &["show".into(), "config".into()]).await else {
            return BTreeMap::new();
        };
        let loc = conf
            .lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == "JobCompLoc")
            .map(|(_, v)| v.trim().to_string());
        let Some(text) = loc.and_then(|l| std::fs::read_to_string(l).ok()) else {
            return BTreeMap::new();
        };
        let (job, task) = match t.name.split_once('_') {
            Some((j, k)) => (j.to_string(), Some(k.to_string())),
            None => (t.name.clone(), None),
        };
        text.lines()
            .rev()
            .map(fields)
            .find(|f| match &task {
                Some(k) => f.get("ArrayJobId") == Some(&job) && f.get("ArrayTaskId") == Some(k),
                None => f.get("JobId") == Some(&job),
            })
            .unwrap_or_default()
    }

    async fn cancel(&mut self, nodes: &[NodeId]) {
        for n in nodes {
            if let Some(s) = self.steps.get_mut(n) {
                s.cancel = true;
            }
        }
        // Not submitted yet: cancelled right here.
        let queued: Vec<NodeId> = self
            .queue
            .iter()
            .copied()
            .filter(|n| nodes.contains(n))
            .collect();
        self.queue.retain(|n| !nodes.contains(n));
        for n in queued {
            if self.steps.contains_key(&n) {
                let c = self.cancelled_completion(n, "cancelled");
                self.decide(
                    n,
                    Done {
                        completion: Some(c),
                        stderr: String::new(),
                        status: None,
                    },
                );
            }
        }
        let mut names: Vec<String> = Vec::new();
        let mut by_job: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for t in &mut self.tasks {
            let open: Vec<NodeId> = t
                .nodes
                .iter()
                .copied()
                .filter(|n| self.steps.contains_key(n))
                .collect();
            let e = by_job.entry(t.job.clone()).or_default();
            e.0 += 1;
            if open.iter().any(|n| self.steps[n].cancel) {
                if open.iter().any(|n| !self.steps[n].cancel) {
                    t.cancelled_by_us = true;
                }
                e.1 += 1;
                names.push(t.name.clone());
            }
        }
        // A whole array goes by its job id: one name instead of hundreds.
        for (job, (all, chosen)) in by_job {
            if all == chosen && all > 1 {
                names.retain(|n| n.split('_').next() != Some(job.as_str()));
                names.push(job);
            }
        }
        if names.is_empty() {
            return;
        }
        self.rep
            .detail(&format!("slurm: scancel {}", names.join(" ")));
        if let Err(e) = command("scancel", &names).await {
            self.rep
                .always(&format!("slurm: scancel {} failed: {e}", names.join(" ")));
        }
    }

    async fn finish(&mut self) {
        // A job whose steps have all reported is only exiting: give Slurm a moment to
        // record it COMPLETED, rather than have scancel mark it CANCELLED.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && self
                .tasks
                .iter()
                .any(|t| !is_terminal(&t.state) && t.state != "GONE")
            && self
                .tasks
                .iter()
                .all(|t| t.nodes.iter().all(|n| !self.steps.contains_key(n)))
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.poll().await;
        }
        let live: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| !is_terminal(&t.state) && t.state != "GONE")
            .map(|t| t.name.clone())
            .collect();
        if !live.is_empty() {
            let _ = command("scancel", &live).await;
        }
        if self.failures == 0 {
            let _ = crate::store::remove_tree(&self.dir);
        } else {
            self.rep.detail(&format!(
                "slurm: job scripts and output kept in {}",
                self.dir.display()
            ));
        }
    }
}

/// The job's name in squeue: its one step, the fan-out its steps share, or
/// the first step and how many more.
fn job_name(workflow: &str, ids: &[&str]) -> String {
    let stem = |id: &str| id.split('[').next().unwrap_or(id).to_string();
    if ids.len() == 1 {
        format!("demix:{workflow}:{}", ids[0])
    } else if ids.iter().all(|i| stem(i) == stem(ids[0])) {
        format!("demix:{workflow}:{}", stem(ids[0]))
    } else {
        format!("demix:{workflow}:{}+{}", ids[0], ids.len() - 1)
    }
}

/// Runs `sbatch --parsable`: the job id (before any `;cluster`), or why none.
async fn submit(args: &[String]) -> Result<String, CommandError> {
    let out = command("sbatch", args).await?;
    let job = out.trim().split(';').next().unwrap_or("").to_string();
    if job.is_empty() {
        Err(CommandError::NoJobId)
    } else {
        Ok(job)
    }
}

fn summary(ids: &[&str]) -> String {
    match ids {
        [] => String::new(),
        [a] => a.to_string(),
        [a, b] => format!("{a}, {b}"),
        [a, b, ..] => format!("{a}, {b} and {} more", ids.len() - 2),
    }
}

/// `demix internal exec-batch DIR NAME...`: runs `DIR/NAME.json` one after another,
/// each writing `DIR/NAME.done.json`. A signal (scancel, the pre-timeout USR1,
/// preemption) stops the running step and leaves the rest as cancelled, so the
/// scheduler submits them again.
pub fn exec_batch(registry: &crate::kind::Registry, dir: &Path, names: &[String]) -> i32 {
    crate::exec::child::install_signal_handlers();
    let mut code = 0;
    for name in names {
        let spec = dir.join(format!("{name}.json"));
        let done = dir.join(format!("{name}.done.json"));
        let _ = std::fs::remove_file(&done);
        if crate::exec::child::cancel_requested() {
            if let Ok(s) = std::fs::read(&spec)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<StepSpec>(&b).map_err(|e| e.to_string()))
            {
                let c = Completion::cancelled(
                    &s.step,
                    &s.key,
                    "cancelled before it started",
                    crate::exec::child::hostname(),
                    Store::open(&s.store).log_path(&s.key),
                );
                let _ = write_json_atomic(&done, &c);
            }
            code = EXIT_CANCELLED;
            continue;
        }
        let c = crate::exec::child::exec_step(registry, &spec, Some(&done), None);
        if c != 0 && code == 0 {
            code = c;
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(ok: bool, cancelled: bool) -> Completion {
        Completion {
            step: "s".into(),
            key: "k".into(),
            ok,
            cached: false,
            cancelled,
            exit_code: if ok { 0 } else { 1 },
            error: None,
            outputs: Default::default(),
            duration_s: 0.0,
            host: String::new(),
            log: PathBuf::new(),
        }
    }

    #[test]
    fn outcomes_of_ended_jobs() {
        let ok = completion(true, false);
        let failed = completion(false, false);
        let stopped = completion(false, true);
        assert_eq!(classify("COMPLETED", Some(&ok), false, false), Verdict::Ok);
        assert_eq!(
            classify("FAILED", Some(&failed), false, false),
            Verdict::Failed
        );
        // The time limit's SIGTERM killed the command before demix saw it.
        assert_eq!(
            classify("TIMEOUT", Some(&failed), false, false),
            Verdict::Retry { counts: true }
        );
        // Our scancel killed the command first: still a cancellation.
        assert_eq!(
            classify("CANCELLED", Some(&failed), true, false),
            Verdict::Cancelled
        );
        // USR1 before the time limit: the step stops itself, the job ends FAILED (130)
        // or TIMEOUT; either way it runs again.
        assert_eq!(
            classify("TIMEOUT", Some(&stopped), false, false),
            Verdict::Retry { counts: true }
        );
        assert_eq!(
            classify("FAILED", Some(&stopped), false, false),
            Verdict::Retry { counts: true }
        );
        assert_eq!(
            classify("TIMEOUT", None, false, false),
            Verdict::Retry { counts: true }
        );
        assert_eq!(
            classify("PREEMPTED", None, false, false),
            Verdict::Retry { counts: true }
        );
        assert_eq!(
            classify("NODE_FAIL", None, false, false),
            Verdict::Retry { counts: true }
        );
        assert_eq!(
            classify("OUT_OF_MEMORY", None, false, false),
            Verdict::Failed
        );
        assert_eq!(classify("FAILED", None, false, false), Verdict::Failed);
        // Someone else's scancel is a failure; ours is a cancellation.
        assert_eq!(
            classify("CANCELLED", Some(&stopped), false, false),
            Verdict::Failed
        );
        assert_eq!(
            classify("CANCELLED", Some(&stopped), true, false),
            Verdict::Cancelled
        );
        assert_eq!(classify("CANCELLED", None, true, false), Verdict::Cancelled);
        assert_eq!(
            classify("CANCELLED", None, false, true),
            Verdict::Retry { counts: false }
        );
        // A result is a result, whatever happened to the job afterwards.
        assert_eq!(classify("CANCELLED", Some(&ok), true, false), Verdict::Ok);
    }

    #[test]
    fn squeue_lines_and_times() {
        let rows = parse_squeue(
            "257_3|COMPLETED|0|None|\n257_2|FAILED|1|NonZeroExitCode|\n\n12|PENDING|0|BeginTime|\n",
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            ("257_2".into(), "FAILED".into(), 1, "NonZeroExitCode".into())
        );
        assert_eq!(rows[2].0, "12");
        assert_eq!(slurm_time(90), "00:01:30");
        assert_eq!(slurm_time(2 * 86400 + 3661), "2-01:01:01");
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let f =
            fields("JobId=260 ArrayJobId=257 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0");
        assert_eq!(f["ExitCode"], "3:0");
        assert_eq!(summary(&["a", "b", "c"]), "a, b and 1 more");
    }
}
