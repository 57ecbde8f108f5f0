//! The local scheduler: runs ready steps concurrently, within `--jobs` and the
//! machine's CPUs, memory and GPUs, each step in its own child process.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::task::JoinSet;

use crate::protocol::{Completion, InputSpec, StepSpec};
use crate::graph::{Graph, Source};
use crate::key::Reason;
use crate::manifest::parse_bytes;
use crate::plan::{Assessment, Planner};
use crate::progress::Reporter;
use crate::store::{ResultRecord, Store, human_bytes, write_json_atomic};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub force: Vec<usize>,
    /// Nodes to run (with their ancestors); all when empty.
    pub targets: Vec<usize>,
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

enum NodeState {
    Waiting,
    Ready(Box<Assessment>),
    Running,
    Done,
    Failed,
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

struct Finished {
    node: usize,
    completion: Option<Completion>,
    stderr: String,
    status: Option<i32>,
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
    mut control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
) -> RunSummary {
    let started = jiff::Timestamp::now();
    let t0 = Instant::now();
    let machine = Machine::detect(opts.gpus.clone());
    let slurm = opts.slurm.clone().map(|c| {
        crate::exec::slurm::Slurm::start(
            c,
            opts.programs.clone(),
            opts.jobs,
            &graph.manifest.name,
            store,
            rep.clone(),
        )
    });
    let rep_hash = rep.clone();
    let on_hash = move |p: &std::path::Path, done: u64, total: u64| {
        rep_hash.line(&format!(
            "hashing {} {}/{}",
            p.display(),
            human_bytes(done),
            human_bytes(total)
        ));
    };
    let planner = Planner::new(graph, store, &on_hash);
    let selected: BTreeSet<usize> = if opts.targets.is_empty() {
        (0..graph.nodes.len()).collect()
    } else {
        graph.with_ancestors(&opts.targets)
    };
    let n = graph.nodes.len();
    let mut state: Vec<NodeState> = (0..n).map(|_| NodeState::Waiting).collect();
    let mut reports: HashMap<usize, StepReport> = HashMap::new();
    let mut results: HashMap<usize, ResultRecord> = HashMap::new();
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut pids: HashMap<usize, u32> = HashMap::new();
    let mut signalled: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut started_at: HashMap<usize, Instant> = HashMap::new();
    let mut holding: HashMap<usize, (u32, u64, Vec<String>)> = HashMap::new();
    let (mut used_cpus, mut used_mem) = (0u32, 0u64);
    let mut free_gpus: Vec<String> = machine.gpus.clone();
    let mut stop = false;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let id = |i: usize| graph.nodes[i].id.clone();
    let report = |i: usize, key: Option<String>, outcome: Outcome, reasons: Vec<Reason>, d: f64| {
        StepReport {
            id: graph.nodes[i].id.clone(),
            key,
            outcome,
            reasons,
            duration_s: d,
        }
    };

    loop {
        // Decide every waiting step whose upstream steps are all done.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for &i in &graph.order {
                if !selected.contains(&i) || !matches!(state[i], NodeState::Waiting) {
                    continue;
                }
                if let Some(&bad) = graph.deps[i]
                    .iter()
                    .find(|&&u| matches!(state[u], NodeState::Failed))
                {
                    state[i] = NodeState::Failed;
                    let because = format!("upstream `{}` did not complete", id(bad));
                    rep.line(&format!("skip   {} ({because})", id(i)));
                    reports.insert(
                        i,
                        report(i, None, Outcome::Skipped { because }, vec![], 0.0),
                    );
                    progressed = true;
                    continue;
                }
                if stop
                    || !graph.deps[i]
                        .iter()
                        .all(|&u| matches!(state[u], NodeState::Done))
                {
                    continue;
                }
                progressed = true;
                match planner.key_record(i, &results) {
                    Ok(Ok(rec)) => {
                        let a = planner.assess(i, rec, opts.force.contains(&i));
                        if let Some(r) = &a.result {
                            // Fresh. Keep the state record pointing at what is current.
                            let cur = store.read_state(&graph.manifest.name, &graph.nodes[i].id);
                            if cur.as_ref().map(|c| &c.key) != Some(&r.key) {
                                let mut s = r.clone();
                                s.step = graph.nodes[i].id.clone();
                                s.manifest = graph.manifest.name.clone();
                                let _ = store.write_state(&s);
                            }
                            rep.detail(&format!("fresh  {}", id(i)));
                            results.insert(i, r.clone());
                            reports.insert(
                                i,
                                report(i, Some(r.key.clone()), Outcome::Fresh, vec![], 0.0),
                            );
                            state[i] = NodeState::Done;
                        } else {
                            state[i] = NodeState::Ready(Box::new(a));
                        }
                    }
                    Ok(Err(_)) => unreachable!("all upstream steps are done"),
                    Err(e) => {
                        rep.always(&format!("FAILED {}: {e}", id(i)));
                        reports.insert(
                            i,
                            report(i, None, Outcome::Failed { error: e }, vec![], 0.0),
                        );
                        state[i] = NodeState::Failed;
                        if !opts.keep_going {
                            stop = true;
                        }
                    }
                }
            }
        }
        // Start ready steps within the limits.
        if !stop {
            for &i in &graph.order {
                if running.len() >= slurm.as_ref().map_or(opts.jobs.max(1), |s| s.step_cap()) {
                    break;
                }
                if !matches!(state[i], NodeState::Ready(_)) {
                    continue;
                }
                let res = &graph.nodes[i].resources;
                let cpus = res.cpus().min(machine.cpus);
                let mem = res
                    .memory
                    .as_deref()
                    .and_then(|m| parse_bytes(m).ok())
                    .unwrap_or(0);
                let gpus = res.gpus() as usize;
                // Slurm, not this machine, gates Slurm jobs.
                let (cpus, mem, gpus) = if slurm.is_some() {
                    (0, 0, 0)
                } else {
                    (cpus, mem, gpus)
                };
                let impossible = if mem > machine.memory {
                    Some(format!(
                        "needs {} of memory; this machine has {}",
                        human_bytes(mem),
                        human_bytes(machine.memory)
                    ))
                } else if gpus > machine.gpus.len() {
                    Some(format!(
                        "needs {gpus} GPU(s); this machine has {}",
                        machine.gpus.len()
                    ))
                } else {
                    None
                };
                if let Some(why) = impossible {
                    rep.always(&format!("FAILED {}: {why}", id(i)));
                    reports.insert(
                        i,
                        report(i, None, Outcome::Failed { error: why }, vec![], 0.0),
                    );
                    state[i] = NodeState::Failed;
                    if !opts.keep_going {
                        stop = true;
                        break;
                    }
                    continue;
                }
                let fits = (running.is_empty() || used_cpus + cpus <= machine.cpus)
                    && used_mem + mem <= machine.memory
                    && free_gpus.len() >= gpus;
                if !fits {
                    continue;
                }
                let NodeState::Ready(a) = std::mem::replace(&mut state[i], NodeState::Running)
                else {
                    unreachable!()
                };
                let devices: Vec<String> = free_gpus.drain(..gpus).collect();
                used_cpus += cpus;
                used_mem += mem;
                holding.insert(i, (cpus, mem, devices.clone()));
                let reasons: Vec<String> = a.reasons.iter().map(|r| r.to_string()).collect();
                rep.line(&format!("run    {} ({})", id(i), reasons.join("; ")));
                match spawn_step(
                    graph,
                    store,
                    &results,
                    i,
                    &a,
                    &devices,
                    opts,
                    &rep,
                    &mut running,
                    slurm.as_ref(),
                ) {
                    Ok(pid) => {
                        pids.insert(i, pid);
                        started_at.insert(i, Instant::now());
                        reports.insert(
                            i,
                            report(i, a.key.clone(), Outcome::Ran, a.reasons.clone(), 0.0),
                        );
                        rep.start(&id(i));
                    }
                    Err(e) => {
                        rep.always(&format!("FAILED {}: {e}", id(i)));
                        reports.insert(
                            i,
                            report(
                                i,
                                a.key.clone(),
                                Outcome::Failed { error: e },
                                a.reasons,
                                0.0,
                            ),
                        );
                        state[i] = NodeState::Failed;
                        let (c, m, g) = holding.remove(&i).expect("held");
                        used_cpus -= c;
                        used_mem -= m;
                        free_gpus.extend(g);
                        if !opts.keep_going {
                            stop = true;
                        }
                    }
                }
            }
        }
        if let Some(s) = &slurm {
            s.flush();
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next() => {
                let Ok(f) = joined else { continue };
                let i = f.node;
                pids.remove(&i);
                rep.finish(&id(i));
                let (c, m, g) = holding.remove(&i).expect("held");
                used_cpus -= c;
                used_mem -= m;
                free_gpus.extend(g);
                let dur = started_at.get(&i).map_or(0.0, |t| t.elapsed().as_secs_f64());
                let entry = reports.get_mut(&i).expect("reported at start");
                entry.duration_s = dur;
                match f.completion {
                    Some(c) if c.ok => {
                        match store.read_result(&c.key) {
                            Some(r) => {
                                rep.line(&format!("ok     {} ({dur:.2}s{})", id(i), if c.cached { ", done by another demix" } else { "" }));
                                if c.cached {
                                    entry.outcome = Outcome::Fresh;
                                }
                                results.insert(i, r);
                                state[i] = NodeState::Done;
                            }
                            None => {
                                let error = "the step reported success but its result is not in the store".to_string();
                                rep.always(&format!("FAILED {}: {error}", id(i)));
                                entry.outcome = Outcome::Failed { error };
                                state[i] = NodeState::Failed;
                            }
                        }
                    }
                    None if signalled.contains(&i) => {
                        rep.always(&format!("cancel {}", id(i)));
                        entry.outcome = Outcome::Cancelled;
                        state[i] = NodeState::Failed;
                    }
                    Some(c) if c.cancelled => {
                        rep.always(&format!("cancel {}", id(i)));
                        entry.outcome = Outcome::Cancelled;
                        state[i] = NodeState::Failed;
                    }
                    other => {
                        let mut error = match &other {
                            Some(c) => c.error.clone().unwrap_or_else(|| "failed".into()),
                            None => format!("step process exited without a completion record (status {:?})", f.status),
                        };
                        let log = store.log_path(entry.key.as_deref().unwrap_or_default());
                        let tail = log_tail(&log, 20);
                        let mut msg = format!("FAILED {}: {error}", id(i));
                        if !tail.is_empty() {
                            msg.push_str(&format!("\n  log {}:\n{}", log.display(), indent(&tail)));
                        }
                        if !f.stderr.trim().is_empty() && other.is_none() {
                            msg.push_str(&format!("\n  stderr:\n{}", indent(f.stderr.trim_end())));
                            error.push_str(&format!("; stderr: {}", f.stderr.trim()));
                        }
                        rep.always(&msg);
                        entry.outcome = Outcome::Failed { error };
                        state[i] = NodeState::Failed;
                        if !opts.keep_going && !stop {
                            stop = true;
                            cancel_all(&pids, slurm.as_ref(), &mut signalled);
                        }
                    }
                }
            }
            Some(msg) = async { match control.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                match msg {
                    Control::Stop => {
                        stop = true;
                        cancel_all(&pids, slurm.as_ref(), &mut signalled);
                    }
                    Control::Drain => stop = true,
                    Control::Cancel(ids) => {
                        let chosen: HashMap<usize, u32> = pids
                            .iter()
                            .filter(|(i, _)| ids.contains(&graph.nodes[**i].id))
                            .map(|(i, p)| (*i, *p))
                            .collect();
                        cancel_all(&chosen, slurm.as_ref(), &mut signalled);
                    }
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                rep.always("interrupted: cancelling running steps");
                interrupted = true;
                stop = true;
                cancel_all(&pids, slurm.as_ref(), &mut signalled);
            }
        }
    }
    if let Some(s) = &slurm {
        s.finish().await;
    }
    let _ = store.stat.save();
    let mut steps: Vec<StepReport> = graph
        .order
        .iter()
        .filter_map(|i| reports.remove(i))
        .collect();
    // Steps never decided (after a failure or an interrupt) are reported as skipped.
    for &i in &graph.order {
        if selected.contains(&i) && matches!(state[i], NodeState::Waiting | NodeState::Ready(_)) {
            steps.push(report(
                i,
                None,
                Outcome::Skipped {
                    because: "the run stopped".into(),
                },
                vec![],
                0.0,
            ));
        }
    }
    let ok = !interrupted
        && steps
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Ran | Outcome::Fresh));
    let summary = RunSummary {
        id: crate::store::unique_name(&format!("{}-", started.strftime("%Y%m%dT%H%M%S"))),
        manifest: graph.manifest.name.clone(),
        manifest_path: graph.manifest.path.clone(),
        started,
        finished: jiff::Timestamp::now(),
        host: crate::exec::child::hostname(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        command: opts.argv.clone(),
        ok,
        interrupted,
        steps,
    };
    let _ = write_json_atomic(
        &store.runs_dir().join(format!("{}.json", summary.id)),
        &summary,
    );
    let _ = t0;
    summary
}

/// Asks the steps to cancel, remembering which were asked: a step process killed
/// before it could write its completion record was cancelled, not failed.
fn cancel_all(
    pids: &HashMap<usize, u32>,
    slurm: Option<&crate::exec::slurm::Slurm>,
    signalled: &mut std::collections::HashSet<usize>,
) {
    signalled.extend(pids.keys().copied());
    if let Some(s) = slurm {
        s.cancel(pids.keys().copied());
        return;
    }
    for &pid in pids.values() {
        // SAFETY: signals our own child; it cancels its step and exits.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
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

/// The spec of node `i`, with every input resolved to paths.
pub fn build_spec(
    graph: &Graph,
    store: &Store,
    results: &HashMap<usize, ResultRecord>,
    i: usize,
    a: &Assessment,
) -> Result<StepSpec, String> {
    let node = &graph.nodes[i];
    let mut inputs = std::collections::BTreeMap::new();
    for inp in &node.inputs {
        let mut dataset = None;
        let paths = match &inp.source {
            Source::Path { abs, .. } => vec![abs.clone()],
            Source::Dataset { name, split } => {
                dataset = crate::protocol::DatasetInput::of(&graph.manifest, name, *split);
                crate::graph::dataset_files(&graph.manifest, name, *split)?
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

#[allow(clippy::too_many_arguments)]
fn spawn_step(
    graph: &Graph,
    store: &Store,
    results: &HashMap<usize, ResultRecord>,
    i: usize,
    a: &Assessment,
    devices: &[String],
    opts: &RunOptions,
    rep: &Arc<Reporter>,
    running: &mut JoinSet<Finished>,
    slurm: Option<&crate::exec::slurm::Slurm>,
) -> Result<u32, String> {
    let spec = build_spec(graph, store, results, i, a)?;
    if let Some(s) = slurm {
        let done = s.submit(i, spec);
        running.spawn(async move {
            let d = done.await;
            Finished {
                node: i,
                completion: d.completion,
                stderr: d.stderr,
                status: d.status,
            }
        });
        return Ok(0);
    }
    let dir = store.tmp_dir().join("specs");
    let base = crate::store::unique_name(&format!("{}-", &spec.key[..12]));
    let spec_path = dir.join(format!("{base}.json"));
    let done_path = dir.join(format!("{base}.done.json"));
    write_json_atomic(&spec_path, &spec).map_err(|e| format!("cannot write step spec: {e}"))?;
    let program = opts
        .programs
        .for_runner(spec.runner, &spec.kind)?
        .to_path_buf();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg("internal")
        .arg("exec-step")
        .arg(&spec_path)
        .arg("--completion")
        .arg(&done_path)
        .arg("--die-with-parent")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !devices.is_empty() || graph.nodes[i].resources.gpus() > 0 {
        cmd.env("CUDA_VISIBLE_DEVICES", devices.join(","));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let step = graph.nodes[i].id.clone();
    let rep = rep.clone();
    running.spawn(async move {
        let progress = async {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(p) = v.get("progress")
                    && let Ok(p) = serde_json::from_value(p.clone())
                {
                    rep.progress(&step, &p);
                }
            }
        };
        let mut err = String::new();
        let errs = stderr.read_to_string(&mut err);
        let (_, _) = tokio::join!(progress, errs);
        let status = child.wait().await.ok().and_then(|s| s.code());
        let completion = Completion::read(&done_path);
        let _ = std::fs::remove_file(&spec_path);
        let _ = std::fs::remove_file(&done_path);
        Finished {
            node: i,
            completion,
            stderr: err,
            status,
        }
    });
    Ok(pid)
}
