//! The run loop: walks the [`Scheduler`] for a run, hands the steps it starts
//! to an [`Executor`] (child processes on this machine, or Slurm jobs), and
//! reports: Ctrl-C, control messages from `demix watch`, progress, the run
//! record.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use crate::exec::executor::{Done, Executor, StartError};
use crate::exec::process::Processes;
use crate::exec::scheduler::{End, Launch, Next, Policy, Pool, Scheduler, Verdict};
use crate::exec::slurm::Slurm;
use crate::graph::{Graph, NodeId, Source};
use crate::key::Reason;
use crate::live::{LiveRecord, LiveRun};
use crate::plan::{Assessment, Keyed, Planner};
use crate::progress::Reporter;
use crate::protocol::{Completion, InputSpec, StepSpec};
use crate::store::{ResultRecord, Store, human_bytes, write_json_atomic};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub force: Vec<NodeId>,
    /// Nodes to run (with their ancestors); all when empty.
    pub targets: Vec<NodeId>,
    /// GPU device ids this run may hand out.
    pub gpus: Vec<String>,
    /// The executables that run a step from its spec.
    pub programs: crate::exec::Programs,
    /// The command line, for the run log.
    pub argv: Vec<String>,
    /// Run steps as Slurm jobs instead of local processes.
    pub slurm: Option<crate::exec::slurm::SlurmConfig>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Ran,
    Fresh,
    Failed { error: String },
    Skipped { because: String },
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub id: String,
    pub key: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub duration_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub manifest: String,
    pub manifest_path: PathBuf,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    pub host: String,
    pub engine_version: String,
    pub command: Vec<String>,
    pub ok: bool,
    pub interrupted: bool,
    pub steps: Vec<StepReport>,
}

impl RunSummary {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.steps.iter().filter(|s| f(&s.outcome)).count()
    }
}

/// The machine's capacity.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: u32,
    pub memory: u64,
    pub gpus: Vec<String>,
}

impl Machine {
    pub fn detect(gpus: Vec<String>) -> Machine {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|k| k.parse::<u64>().ok())
                    })
            })
            .map_or(u64::MAX, |kib| kib * 1024);
        Machine { cpus, memory, gpus }
    }
}

/// GPU ids from `DEMIX_GPUS`/`--gpus`, else `CUDA_VISIBLE_DEVICES`, else the NVIDIA
/// driver's device list.
pub fn detect_gpus(flag: Option<&str>) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    if let Some(f) = flag {
        return split(f);
    }
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return split(&v);
    }
    let n = std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count());
    (0..n).map(|i| i.to_string()).collect()
}

/// Messages a caller (such as `demix watch`) sends a run in progress.
#[derive(Clone, Debug)]
pub enum Control {
    /// Cancel these running steps (by expanded id); the rest of the run goes on.
    Cancel(Vec<String>),
    /// Cancel every running step and start nothing new.
    Stop,
    /// Start nothing new; let running steps finish. A caller whose inputs changed
    /// mid-run uses it so no step starts with inputs hashed before the change.
    Drain,
}

/// Runs the graph. Returns when every selected step is done, failed or skipped, or
/// when Ctrl-C cancelled the run.
pub async fn run(
    graph: &Graph,
    store: &Store,
    opts: &RunOptions,
    rep: Arc<Reporter>,
) -> RunSummary {
    run_controlled(graph, store, opts, rep, None).await
}

/// [`run`], also obeying `control` messages while it runs.
pub async fn run_controlled(
    graph: &Graph,
    store: &Store,
    opts: &RunOptions,
    rep: Arc<Reporter>,
    control: Option<UnboundedReceiver<Control>>,
) -> RunSummary {
    let started = jiff::Timestamp::now();
    let exec: Box<dyn Executor> = match opts.slurm.clone() {
        Some(c) => Box::new(Slurm::start(
            c,
            opts.programs.clone(),
            opts.jobs,
            &graph.manifest.name,
            store,
            rep.clone(),
        )),
        None => Box::new(Processes::new(
            store,
            opts.programs.clone(),
            opts.jobs,
            rep.clone(),
        )),
    };
    let pool = if exec.runs_here() {
        let machine = Machine::detect(opts.gpus.clone());
        Pool::new(machine.cpus, machine.memory, machine.gpus)
    } else {
        Pool::elsewhere()
    };
    let policy = Policy {
        keep_going: opts.keep_going,
        step_cap: exec.step_cap(),
    };
    let rep_hash = rep.clone();
    let on_hash = move |p: &std::path::Path, done: u64, total: u64| {
        rep_hash.line(&format!(
            "hashing {} {}/{}",
            p.display(),
            human_bytes(done),
            human_bytes(total)
        ));
    };
    let id = crate::store::unique_name(&format!("{}-", started.strftime("%Y%m%dT%H%M%S")));
    let live = LiveRecord::new(
        store,
        LiveRun {
            id: id.clone(),
            manifest: graph.manifest.name.clone(),
            manifest_path: graph.manifest.path.clone(),
            pid: 0,
            host: crate::exec::child::hostname(),
            started,
            heartbeat: started,
            command: opts.argv.clone(),
            steps: Default::default(),
        },
    );
    let mut run = Run {
        id,
        live: Some(live),
        graph,
        store,
        opts,
        planner: Planner::new(graph, store, &on_hash),
        sched: Scheduler::new(graph, &opts.targets, pool, policy),
        exec,
        rep,
        reports: HashMap::new(),
        results: HashMap::new(),
        started_at: HashMap::new(),
        running: JoinSet::new(),
        interrupted: false,
    };
    run.drive(control).await;
    run.summary(started)
}

/// One run in progress: it walks the scheduler, hands the steps it starts to
/// the executor, and reports.
struct Run<'a> {
    /// The run's id: its live record's name, then its run log's.
    id: String,
    live: Option<LiveRecord>,
    graph: &'a Graph,
    store: &'a Store,
    opts: &'a RunOptions,
    planner: Planner<'a>,
    sched: Scheduler<Box<Assessment>>,
    exec: Box<dyn Executor>,
    rep: Arc<Reporter>,
    reports: HashMap<NodeId, StepReport>,
    /// Results of the nodes done, for the specs of the nodes that use them.
    results: HashMap<NodeId, ResultRecord>,
    started_at: HashMap<NodeId, Instant>,
    /// The steps started, each ending with its node.
    running: JoinSet<(NodeId, Done)>,
    interrupted: bool,
}

impl Run<'_> {
    async fn drive(&mut self, mut control: Option<UnboundedReceiver<Control>>) {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut heartbeat = tokio::time::interval(crate::live::HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.decide();
            self.launch();
            self.exec.flush();
            if self.running.is_empty() {
                break;
            }
            tokio::select! {
                _ = heartbeat.tick() => {
                    let steps = self.rep.running();
                    if let Some(l) = self.live.as_mut() {
                        l.beat(steps);
                    }
                }
                Some(joined) = self.running.join_next() => {
                    if let Ok((n, done)) = joined {
                        self.ended(n, done);
                    }
                }
                Some(msg) = async {
                    match control.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.control(msg),
                _ = &mut ctrl_c, if !self.interrupted => {
                    self.rep.always("interrupted: cancelling running steps");
                    self.interrupted = true;
                    self.stop();
                }
            }
        }
        self.exec.finish().await;
    }

    fn id(&self, n: NodeId) -> &str {
        &self.graph[n].id
    }

    fn report(&mut self, n: NodeId, key: Option<String>, outcome: Outcome, reasons: Vec<Reason>) {
        let r = StepReport {
            id: self.graph[n].id.clone(),
            key,
            outcome,
            reasons,
            duration_s: 0.0,
        };
        self.reports.insert(n, r);
    }

    /// Decides every waiting node whose upstream nodes are settled.
    fn decide(&mut self) {
        while let Some(next) = self.sched.next_to_decide() {
            match next {
                Next::Skip { node, upstream } => {
                    let because = format!("upstream `{}` did not complete", self.id(upstream));
                    self.rep
                        .line(&format!("skip   {} ({because})", self.id(node)));
                    self.report(node, None, Outcome::Skipped { because }, vec![]);
                }
                Next::Assess(n) => {
                    let v = self.assess(n);
                    self.sched.assessed(n, v);
                }
            }
        }
    }

    /// Whether `n`, its upstream nodes done, is fresh or has to run.
    fn assess(&mut self, n: NodeId) -> Verdict<Box<Assessment>> {
        let rec = match self.planner.key_record(n, &self.results) {
            Ok(Keyed::Record(rec)) => rec,
            Ok(Keyed::Pending(_)) => unreachable!("all upstream steps are done"),
            Err(e) => {
                let error = e.to_string();
                self.rep.always(&format!("FAILED {}: {error}", self.id(n)));
                self.report(n, None, Outcome::Failed { error }, vec![]);
                return Verdict::Failed;
            }
        };
        let a = self.planner.assess(n, rec, self.opts.force.contains(&n));
        let Some(r) = &a.result else {
            return Verdict::Ready(Box::new(a));
        };
        // Fresh. Keep the state record pointing at what is current.
        let (manifest, step) = (&self.graph.manifest.name, &self.graph[n].id);
        let cur = self.store.read_state(manifest, step);
        if cur.as_ref().map(|c| &c.key) != Some(&r.key) {
            let mut s = r.clone();
            s.step = step.clone();
            s.manifest = manifest.clone();
            let _ = self.store.write_state(&s);
        }
        self.rep.detail(&format!("fresh  {}", self.id(n)));
        self.results.insert(n, r.clone());
        self.report(n, Some(r.key.clone()), Outcome::Fresh, vec![]);
        Verdict::Fresh
    }

    /// Starts the ready steps that fit, in order.
    fn launch(&mut self) {
        while let Some(l) = self.sched.next_launch() {
            match l {
                Launch::Impossible { node, why } => {
                    self.rep.always(&format!("FAILED {}: {why}", self.id(node)));
                    self.report(node, None, Outcome::Failed { error: why }, vec![]);
                }
                Launch::Start { node, ready, gpus } => self.start(node, *ready, &gpus),
            }
        }
    }

    fn start(&mut self, n: NodeId, a: Assessment, gpus: &[String]) {
        let reasons: Vec<String> = a.reasons.iter().map(|r| r.to_string()).collect();
        self.rep
            .line(&format!("run    {} ({})", self.id(n), reasons.join("; ")));
        let started = build_spec(self.graph, self.store, &self.results, n, &a)
            .and_then(|spec| self.exec.start(n, spec, gpus));
        match started {
            Ok(step) => {
                self.running.spawn(async move { (n, step.await) });
                self.started_at.insert(n, Instant::now());
                self.report(n, a.key, Outcome::Ran, a.reasons);
                self.rep.start(&self.graph[n].id);
            }
            Err(e) => {
                let error = e.to_string();
                self.rep.always(&format!("FAILED {}: {error}", self.id(n)));
                self.report(n, a.key, Outcome::Failed { error }, a.reasons);
                self.sched.start_failed(n);
            }
        }
    }

    /// A started step ended: its outcome, and what it means for the run.
    fn ended(&mut self, n: NodeId, done: Done) {
        self.rep.finish(self.id(n));
        let dur = self
            .started_at
            .get(&n)
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let asked = self.sched.cancel_requested(n);
        let (outcome, end) = match done.completion {
            Some(c) if c.ok => match self.store.read_result(&c.key) {
                Some(r) => {
                    let by = if c.cached {
                        ", done by another demix"
                    } else {
                        ""
                    };
                    self.rep.line(&format!(
                        "ok     {} ({}{by})",
                        self.id(n),
                        crate::outcome::human_duration(dur)
                    ));
                    self.results.insert(n, r);
                    (c.cached.then_some(Outcome::Fresh), End::Done)
                }
                None => {
                    let error =
                        "the step reported success but its result is not in the store".to_string();
                    self.rep.always(&format!("FAILED {}: {error}", self.id(n)));
                    (Some(Outcome::Failed { error }), End::Lost)
                }
            },
            None if asked => self.cancelled(n),
            Some(c) if c.cancelled => self.cancelled(n),
            other => {
                let error = self.failure(n, other.as_ref(), &done.stderr, done.status);
                (Some(Outcome::Failed { error }), End::Failed)
            }
        };
        let entry = self.reports.get_mut(&n).expect("reported at start");
        entry.duration_s = dur;
        if let Some(o) = outcome {
            entry.outcome = o;
        }
        if self.sched.ended(n, end) {
            self.stop();
        }
    }

    fn cancelled(&self, n: NodeId) -> (Option<Outcome>, End) {
        self.rep.always(&format!("cancel {}", self.id(n)));
        (Some(Outcome::Cancelled), End::Cancelled)
    }

    /// Reports a step that failed, with the end of its log and its stderr;
    /// returns the error its report records.
    fn failure(
        &self,
        n: NodeId,
        c: Option<&Completion>,
        stderr: &str,
        status: Option<i32>,
    ) -> String {
        let mut error = match c {
            Some(c) => c.error.clone().unwrap_or_else(|| "failed".into()),
            None => format!("step process exited without a completion record (status {status:?})"),
        };
        let key = self.reports[&n].key.as_deref().unwrap_or_default();
        let log = self.store.log_path(key);
        let tail = log_tail(&log, 20);
        let mut msg = format!("FAILED {}: {error}", self.id(n));
        if !tail.is_empty() {
            msg.push_str(&format!("\n  log {}:\n{}", log.display(), indent(&tail)));
        }
        if !stderr.trim().is_empty() && c.is_none() {
            msg.push_str(&format!("\n  stderr:\n{}", indent(stderr.trim_end())));
            error.push_str(&format!("; stderr: {}", stderr.trim()));
        }
        self.rep.always(&msg);
        error
    }

    fn control(&mut self, msg: Control) {
        match msg {
            Control::Stop => self.stop(),
            Control::Drain => self.sched.drain(),
            Control::Cancel(ids) => {
                let graph = self.graph;
                let chosen = self.sched.cancel(|n| ids.contains(&graph[n].id));
                self.exec.cancel(&chosen);
            }
        }
    }

    /// Starts nothing new and cancels every running step.
    fn stop(&mut self) {
        let running = self.sched.stop();
        self.exec.cancel(&running);
    }

    /// The run's summary, written to the store's run log.
    fn summary(mut self, started: jiff::Timestamp) -> RunSummary {
        let _ = self.store.stat.save();
        let graph = self.graph;
        let mut steps: Vec<StepReport> = graph
            .order()
            .iter()
            .filter_map(|n| self.reports.remove(n))
            .collect();
        // Steps never decided (after a failure or an interrupt) are reported as skipped.
        for n in self.sched.unsettled() {
            steps.push(StepReport {
                id: graph[n].id.clone(),
                key: None,
                outcome: Outcome::Skipped {
                    because: "the run stopped".into(),
                },
                reasons: vec![],
                duration_s: 0.0,
            });
        }
        let ok = !self.interrupted
            && steps
                .iter()
                .all(|s| matches!(s.outcome, Outcome::Ran | Outcome::Fresh));
        let summary = RunSummary {
            id: self.id.clone(),
            manifest: graph.manifest.name.clone(),
            manifest_path: graph.manifest.path.clone(),
            started,
            finished: jiff::Timestamp::now(),
            host: crate::exec::child::hostname(),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            command: self.opts.argv.clone(),
            ok,
            interrupted: self.interrupted,
            steps,
        };
        let _ = write_json_atomic(
            &self.store.runs_dir().join(format!("{}.json", summary.id)),
            &summary,
        );
        if let Some(l) = self.live.take() {
            l.remove();
        }
        summary
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let Ok(s) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with("# demix ")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The spec of node `n`, with every input resolved to paths.
pub fn build_spec(
    graph: &Graph,
    store: &Store,
    results: &HashMap<NodeId, ResultRecord>,
    n: NodeId,
    a: &Assessment,
) -> Result<StepSpec, StartError> {
    let node = &graph[n];
    let mut inputs = std::collections::BTreeMap::new();
    for inp in &node.inputs {
        let mut dataset = None;
        let paths = match &inp.source {
            Source::Path { abs, .. } => vec![abs.clone()],
            Source::Dataset { name, split } => {
                dataset = crate::protocol::DatasetInput::of(&graph.manifest, name, *split);
                crate::graph::dataset_files(&graph.manifest, name, *split)
                    .map_err(|e| StartError::Inputs(e.to_string()))?
            }
            Source::Steps { nodes, output } => nodes
                .iter()
                .map(|u| {
                    let r = &results[u];
                    let o = &r.outputs[output];
                    store.tree_dir(&r.tree).join(&o.path)
                })
                .collect(),
        };
        inputs.insert(inp.key.clone(), InputSpec { paths, dataset });
    }
    Ok(StepSpec {
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        manifest: graph.manifest.name.clone(),
        manifest_path: graph.manifest.path.clone(),
        step: node.id.clone(),
        kind: node.kind.name().to_string(),
        runner: node.runner,
        ranks: node.ranks,
        key: a.key.clone().expect("assessed steps have keys"),
        record: a.record.clone().expect("assessed steps have records"),
        params: node.plan.params.clone(),
        inputs,
        outputs: node.plan.outputs.clone(),
        workdir: graph.manifest.dir.clone(),
        store: store.root.clone(),
        resources: node.resources.clone(),
        force: a.reasons.contains(&crate::key::Reason::Forced),
    })
}
