//! The commands behind the CLI, on top of the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use demix_core::exec::{self, Outcome, Programs, RunOptions};
use demix_core::graph::{Graph, NodeId};
use demix_core::kind::Registry;
use demix_core::live::{LiveRun, LiveStep, Liveness};
use demix_core::manifest::{DEFAULT_MANIFESTS, LoadError, Manifest};
use demix_core::plan::{Planner, State};
use demix_core::progress::{Reporter, Verbosity};
use demix_core::store::{Store, human_bytes};
use miette::Diagnostic;
use serde_json::json;

use crate::cli::{Cli, Command, DagFormat, Internal};

/// `print!` that hands a failed write back as [`CliError::Output`]: `demix status
/// | head` ends quietly when `head` leaves (see `main`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*).map_err(CliError::Output)?
    }};
}

/// `println!` that hands a failed write back as [`CliError::Output`].
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*).map_err(CliError::Output)?
    }};
}

/// `eprintln!` that never panics: a closed stderr only loses the message.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

mod data_check;

/// Errors at the edge, each with its exit code.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CliError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] LoadError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    /// Writing to stdout failed; a broken pipe (the reader left) is a quiet exit.
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
}

impl CliError {
    /// Whether this is stdout's reader having left (`demix log | head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

pub fn exit_code(report: &miette::Report) -> u8 {
    match report.downcast_ref::<CliError>() {
        Some(CliError::Manifest(_) | CliError::Usage(_)) => 2,
        _ => 1,
    }
}

pub fn init_tracing(cli: &Cli) {
    let level = if cli.verbose {
        "demix=debug"
    } else {
        "demix=warn"
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("DEMIX_LOG").unwrap_or_else(|_| level.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

fn verbosity(cli: &Cli) -> Verbosity {
    if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    }
}

fn manifest_path(arg: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(p) = arg {
        return Ok(p);
    }
    DEFAULT_MANIFESTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no manifest given and none of {} exists here",
                DEFAULT_MANIFESTS.join(", ")
            ))
        })
}

fn load_graph(arg: Option<PathBuf>) -> Result<Graph, CliError> {
    let path = manifest_path(arg)?;
    Ok(demix_core::manifest::load_graph(&path, &registry())?)
}

/// Every step kind this demix knows.
fn registry() -> Registry {
    demix_kinds::registry()
}

fn programs() -> Result<Programs, CliError> {
    Programs::locate()
        .map_err(|e| CliError::Failed(format!("cannot find the demix executable: {e}")))
}

fn store(cli_cache: &Option<PathBuf>) -> Store {
    Store::open(cli_cache.as_deref().unwrap_or(Path::new("cache")))
}

fn select(g: &Graph, sels: &[String], what: &str) -> Result<Vec<NodeId>, CliError> {
    let mut out = Vec::new();
    for s in sels {
        let hits = g.select(s);
        if hits.is_empty() {
            let ids: Vec<&str> = g.nodes().map(|n| n.id.as_str()).collect();
            let hint = demix_core::manifest::did_you_mean(s, ids.iter().copied())
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(CliError::Usage(format!(
                "{what} `{s}` is not a step of this workflow{hint}"
            )));
        }
        out.extend(hits);
    }
    Ok(out)
}

pub fn dispatch(cli: Cli) -> miette::Result<ExitCode> {
    let v = verbosity(&cli);
    let cache = cli.cache.clone();
    match cli.command {
        Command::Run(a) => run(a, &cache, v),
        Command::Status(a) => status(a.manifest.manifest, a.json.json, &cache),
        Command::Watch(a) => watch(a, &cache, v),
        Command::Check(a) => check(a.manifest, v),
        Command::Dag(a) => {
            let g = load_graph(a.manifest.manifest)?;
            out!("{}", dag(&g, a.format, &store(&cache)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage(a) => lineage(a, &cache),
        Command::Report(a) => report(a, &cache),
        Command::Log(a) => log(a, &cache),
        Command::Gc(a) => gc(a, &cache, v),
        Command::Verify(a) => verify(a, &cache),
        Command::Data {
            command: crate::cli::DataCommand::Check(a),
        } => data_check::run(a, &cache),
        Command::Doctor => {
            outln!("demix {}", demix_core::VERSION);
            doctor()
        }
        Command::Schema => {
            out!(
                "{}",
                demix_core::manifest::schema::manifest_schema_text(&registry())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Internal {
            command:
                Internal::ExecStep {
                    spec,
                    completion,
                    die_with_parent,
                },
        } => {
            let code = demix_core::exec::child::exec_step(
                &registry(),
                &spec,
                completion.as_deref(),
                die_with_parent,
            );
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Internal {
            command: Internal::ExecBatch { dir, names },
        } => {
            let code = demix_core::exec::slurm::exec_batch(&registry(), &dir, &names);
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}

/// `demix watch`: the watcher's options from the flags, its errors as the CLI's.
fn watch(
    a: crate::cli::WatchArgs,
    cache: &Option<PathBuf>,
    v: Verbosity,
) -> miette::Result<ExitCode> {
    let opts = demix_core::watch::WatchOptions {
        manifest: manifest_path(a.manifest.manifest)?,
        cache: cache.clone().unwrap_or_else(|| PathBuf::from("cache")),
        debounce: std::time::Duration::from_millis(a.debounce),
        jobs: a.jobs,
        keep_going: a.keep_going,
        gpus: a.gpus,
        verbosity: v,
        registry: registry(),
    };
    let code = demix_core::watch::watch(opts).map_err(|e| match e {
        demix_core::watch::WatchError::Manifest(e) => CliError::Manifest(e),
        demix_core::watch::WatchError::Failed(e) => CliError::Failed(e),
    })?;
    Ok(ExitCode::from(code))
}

/// `demix check`: load the manifest (which validates it) and say what it holds.
fn check(manifest: Option<PathBuf>, v: Verbosity) -> miette::Result<ExitCode> {
    let g = load_graph(manifest)?;
    if v != Verbosity::Quiet {
        outln!(
            "{}: ok ({} steps, {} nodes, {} datasets)",
            g.manifest.path.display(),
            g.manifest.steps.len(),
            g.len(),
            g.manifest.datasets.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `demix gc`: remove what no kept run needs, and say how much that freed.
fn gc(a: crate::cli::GcArgs, cache: &Option<PathBuf>, v: Verbosity) -> miette::Result<ExitCode> {
    let s = store(cache);
    let r = demix_core::maintenance::gc(&s, a.keep_runs, a.dry_run)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r).expect("serializes"));
    } else {
        if v == Verbosity::Verbose {
            for line in &r.removed {
                outln!("{line}");
            }
        }
        outln!(
            "{} {} results, {} trees, {} objects, {} work dirs, {} logs, {} resume states: {} (kept {} results)",
            if a.dry_run { "would remove" } else { "removed" },
            r.results,
            r.trees,
            r.objects,
            r.tmp,
            r.logs,
            r.resume,
            human_bytes(r.freed_bytes),
            r.kept_results
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `demix verify`: rehash the store's objects; exit 1 when anything was corrupt.
fn verify(a: crate::cli::JsonArg, cache: &Option<PathBuf>) -> miette::Result<ExitCode> {
    let s = store(cache);
    let r = demix_core::maintenance::verify(&s, &|_, _| {})
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r).expect("serializes"));
    } else {
        for c in &r.corrupt {
            outln!(
                "corrupt {} (content hashes to {}); removed; rerun to rebuild: {}",
                c.path.display(),
                &c.actual[..12],
                if c.steps.is_empty() {
                    "no step".into()
                } else {
                    c.steps.join(", ")
                }
            );
        }
        for k in &r.invalidated {
            outln!("invalidated {k}: built on a corrupt object; it runs again");
        }
        for c in &r.corrupt_records {
            outln!(
                "corrupt record {} ({}); removed",
                c.path.display(),
                c.reason
            );
        }
        outln!(
            "verified {} objects ({}): {} corrupt, {} results invalidated, {} corrupt records",
            r.objects,
            human_bytes(r.bytes),
            r.corrupt.len(),
            r.invalidated.len(),
            r.corrupt_records.len()
        );
    }
    Ok(if r.corrupt.is_empty() && r.corrupt_records.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The worker's own report (libtorch, CUDA, devices), or why there is no worker.
fn doctor() -> miette::Result<ExitCode> {
    let p = programs()?;
    if !p.worker.is_file() {
        outln!(
            "{}",
            demix_core::exec::programs::missing_worker("train", &p.worker)
        );
        return Ok(ExitCode::from(1));
    }
    let status = std::process::Command::new(&p.worker)
        .arg("doctor")
        .status()
        .map_err(|e| CliError::Failed(format!("cannot run {}: {e}", p.worker.display())))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run(a: crate::cli::RunArgs, cache: &Option<PathBuf>, v: Verbosity) -> miette::Result<ExitCode> {
    let g = load_graph(a.manifest.manifest)?;
    let targets = select(&g, &a.targets, "--target")?;
    let force = select(&g, &a.force, "--force")?;
    let s = store(cache);
    if a.dry_run {
        return dry_run(&g, &s, &targets, &force);
    }
    let slurm = slurm_config(&a.cluster, &g)?;
    let _usage = s
        .usage_lock(false)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let gpus = demix_core::exec::local::detect_gpus(a.gpus.as_deref());
    let mut opts = RunOptions {
        jobs: a.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |j| j as usize,
        ),
        keep_going: a.keep_going,
        force,
        targets,
        gpus,
        programs: programs()?,
        argv: std::env::args().collect(),
        slurm: None,
    };
    if slurm.is_some() && a.jobs.is_none() {
        opts.jobs = demix_core::exec::slurm::DEFAULT_JOBS;
    }
    opts.slurm = slurm;
    let rep = Arc::new(Reporter::new(v));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let t0 = std::time::Instant::now();
    let summary = rt.block_on(exec::run(&g, &s, &opts, rep.clone()));
    let took = t0.elapsed().as_secs_f64();
    let line = summary_line(&summary, took);
    let closing = demix_core::outcome::closing(&g, &s, &summary, &opts.targets);
    for l in closing_lines(&closing) {
        rep.line(&l);
    }
    if summary.ok {
        rep.line(&line);
    } else {
        rep.always(&line);
    }
    if a.json {
        print_run_json(&summary, took, &closing)?;
    }
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The line a run ends with: how many steps did what, and how long it took.
fn summary_line(summary: &exec::RunSummary, took: f64) -> String {
    let ran = summary.count(|o| *o == Outcome::Ran);
    let fresh = summary.count(|o| *o == Outcome::Fresh);
    let failed = summary.count(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = summary.count(|o| matches!(o, Outcome::Skipped { .. }));
    let cancelled = summary.count(|o| *o == Outcome::Cancelled);
    format!(
        "{}: {ran} ran, {fresh} fresh, {failed} failed, {skipped} skipped, {cancelled} cancelled in {}",
        if summary.interrupted {
            "interrupted"
        } else if summary.ok {
            "done"
        } else {
            "FAILED"
        },
        demix_core::outcome::human_duration(took)
    )
}

/// `demix run --json`: the run's summary with its duration and closing facts.
fn print_run_json(
    summary: &exec::RunSummary,
    took: f64,
    closing: &demix_core::outcome::Closing,
) -> Result<(), CliError> {
    let mut v = serde_json::to_value(summary).expect("serializes");
    v["duration_s"] = json!(took);
    v["duration"] = json!(demix_core::outcome::human_duration(took));
    if let (serde_json::Value::Object(v), serde_json::Value::Object(c)) =
        (&mut v, serde_json::to_value(closing).expect("serializes"))
    {
        v.extend(c);
    }
    // The run is done: a reader that left does not change its exit code.
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(&v).expect("serializes");
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(CliError::Output(e));
        }
        _ => {}
    }
    Ok(())
}

/// `demix run --dry-run`: what a run would do, step by step, writing nothing;
/// exit 1 when a step cannot even be planned.
fn dry_run(g: &Graph, s: &Store, targets: &[NodeId], force: &[NodeId]) -> miette::Result<ExitCode> {
    let only: Option<BTreeSet<NodeId>> = (!targets.is_empty()).then(|| g.with_ancestors(targets));
    let no_progress = |_: &Path, _: u64, _: u64| {};
    let planner = Planner::new(g, s, &no_progress);
    let mut would = 0;
    let mut problems = 0;
    // Data that is not on this machine (a cluster's corpora) does not stop a
    // plan: each missing glob is listed once with the steps waiting for it.
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, a) in planner.assess_all(force, only.as_ref()) {
        let id = &g[n].id;
        match a {
            Ok(a) if a.state == State::Fresh => outln!("fresh  {id}"),
            Ok(a) => {
                would += 1;
                let why: Vec<String> = a.reasons.iter().map(|r| r.to_string()).collect();
                outln!("run    {id} ({})", why.join("; "));
            }
            Err(e) if e.is_missing_data() => {
                would += 1;
                outln!("run    {id} (once its data exists)");
                missing.entry(e.to_string()).or_default().push(id.clone());
            }
            Err(e) => {
                problems += 1;
                outln!("error  {id}: {e}");
            }
        }
    }
    for (e, ids) in &missing {
        let first = ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        let more = if ids.len() > 3 {
            format!(" and {} more", ids.len() - 3)
        } else {
            String::new()
        };
        outln!("missing {e} (needed by {first}{more})");
    }
    let absent = if missing.is_empty() {
        String::new()
    } else {
        format!(
            ", {} missing input(s) a real run needs first",
            missing.len()
        )
    };
    outln!(
        "dry run: {would} step(s) would run, {problems} problem(s){absent}; nothing was written"
    );
    Ok(if problems > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A path as a person reads it: relative to the working directory when under it.
fn show_path(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    p.strip_prefix(&cwd).unwrap_or(p).display().to_string()
}

/// The lines a run ends with, before its `done:` line: what the targets made,
/// the chosen mixtures, the verdicts and the reports.
fn closing_lines(c: &demix_core::outcome::Closing) -> Vec<String> {
    const MAX_OUTPUTS: usize = 8;
    const MAX_WEIGHTS: usize = 8;
    let mut out = Vec::new();
    let names: Vec<String> = c
        .outputs
        .iter()
        .take(MAX_OUTPUTS)
        .map(|o| format!("{}.{}", o.step, o.output))
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    for (name, o) in names.iter().zip(&c.outputs) {
        out.push(format!("output  {name:<width$}  {}", show_path(&o.path)));
    }
    if c.outputs.len() > MAX_OUTPUTS {
        out.push(format!(
            "output  ... and {} more (`demix run --json` lists them)",
            c.outputs.len() - MAX_OUTPUTS
        ));
    }
    for m in &c.mixtures {
        let mut w: Vec<(&String, &f64)> = m.weights.iter().collect();
        w.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        let mut parts: Vec<String> = w
            .iter()
            .take(MAX_WEIGHTS)
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        if w.len() > MAX_WEIGHTS {
            parts.push(format!("and {} more", w.len() - MAX_WEIGHTS));
        }
        out.push(format!("mixture {}: {}", m.step, parts.join(", ")));
    }
    for v in &c.verdicts {
        out.push(format!("verdict {}: {}", v.step, v.sentence));
    }
    for r in &c.reports {
        if let Some(p) = r.html.as_ref().or(r.markdown.as_ref()) {
            out.push(format!("report  {}: {}", r.step, show_path(p)));
        }
    }
    out
}

/// The Slurm executor's settings when this run uses it: `--executor`, else the
/// manifest's `executor.type`; the manifest's block under the `--slurm-*` flags.
fn slurm_config(
    c: &crate::cli::ClusterArgs,
    g: &Graph,
) -> Result<Option<exec::slurm::SlurmConfig>, CliError> {
    use demix_core::manifest::ExecutorKind;
    let decl = g.manifest.executor.as_ref();
    let on = match c.executor {
        Some(e) => e == crate::cli::Executor::Slurm,
        None => decl.is_some_and(|d| d.kind == ExecutorKind::Slurm),
    };
    if !on {
        let given = [
            ("--slurm-partition", c.slurm_partition.is_some()),
            ("--slurm-account", c.slurm_account.is_some()),
            ("--slurm-flag", !c.slurm_flag.is_empty()),
            ("--slurm-batch", c.slurm_batch.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(CliError::Usage(format!(
                "{flag} needs the Slurm executor: add --executor slurm (or `executor: {{type: slurm}}` in the manifest)"
            )));
        }
        return Ok(None);
    }
    exec::slurm::check_commands().map_err(|e| CliError::Usage(e.to_string()))?;
    let mut cfg = exec::slurm::SlurmConfig::from_decl(decl);
    if let Some(p) = &c.slurm_partition {
        cfg.partition = Some(p.clone());
    }
    if let Some(a) = &c.slurm_account {
        cfg.account = Some(a.clone());
    }
    cfg.flags.extend(c.slurm_flag.iter().cloned());
    if let Some(b) = c.slurm_batch {
        cfg.batch = b;
    }
    Ok(Some(cfg))
}

fn status(
    manifest: Option<PathBuf>,
    json_out: bool,
    cache: &Option<PathBuf>,
) -> miette::Result<ExitCode> {
    let g = load_graph(manifest)?;
    let s = store(cache);
    let no_progress = |_: &Path, _: u64, _: u64| {};
    let planner = Planner::new(&g, &s, &no_progress);
    let all = planner.assess_all(&[], None);
    // Steps that a run of this workflow is running now, from its live record.
    let live: Vec<LiveRun> = demix_core::live::live_runs(&s)
        .into_iter()
        .filter(|r| r.manifest == g.manifest.name)
        .collect();
    let running: Running = live
        .iter()
        .filter(|r| r.liveness() == Liveness::Running)
        .flat_map(|r| r.steps.iter().map(move |(id, st)| (id.as_str(), (r, st))))
        .collect();
    let mut steps: Vec<StepRow> = Vec::new();
    let mut counts = [0usize; 4];
    for (n, a) in &all {
        let node = &g[*n];
        let (state, reasons, key, error) = match a {
            Ok(a) => (Some(a.state), a.reasons.clone(), a.key.clone(), None),
            Err(e) => (None, vec![], None, Some(e.to_string())),
        };
        match state {
            Some(State::Fresh) => counts[0] += 1,
            Some(State::Stale) => counts[1] += 1,
            Some(State::New) => counts[2] += 1,
            None => counts[3] += 1,
        }
        steps.push((node, state, reasons, key, error));
    }
    if json_out {
        status_json(&g, &live, &running, &steps, &counts)?;
    } else {
        status_text(&live, &running, &steps, &counts)?;
    }
    Ok(if counts[3] > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The steps that live runs are running now, by step id.
type Running<'a> = BTreeMap<&'a str, (&'a LiveRun, &'a LiveStep)>;

/// One step as `status` shows it: its node, its state (none when it cannot be
/// planned), why it is not fresh, its key and its planning error.
type StepRow<'g> = (
    &'g demix_core::graph::StepNode,
    Option<State>,
    Vec<demix_core::key::Reason>,
    Option<String>,
    Option<String>,
);

/// `demix status --json`: the live runs, each step and the counts
/// (fresh, stale, new, error) as one document.
fn status_json(
    g: &Graph,
    live: &[LiveRun],
    running: &Running,
    steps: &[StepRow],
    counts: &[usize; 4],
) -> Result<(), CliError> {
    let items: Vec<serde_json::Value> = steps
        .iter()
        .map(|(node, state, reasons, key, error)| {
            json!({
                "id": node.id,
                "kind": node.kind.name(),
                "state": state.map_or("error".to_string(), |s| s.to_string()),
                "running": running.get(node.id.as_str()).map(|(r, st)| json!({
                    "run": r.id,
                    "pid": r.pid,
                    "host": r.host,
                    "started": st.started,
                    "progress": st.progress,
                    "message": st.describe(),
                })),
                "reasons": reasons.iter().map(|r| {
                    let mut v = serde_json::to_value(r).expect("serializes");
                    v["message"] = json!(r.to_string());
                    v
                }).collect::<Vec<_>>(),
                "key": key,
                "error": error,
            })
        })
        .collect();
    let out = json!({
        "manifest": g.manifest.path,
        "name": g.manifest.name,
        "runs": live.iter().map(|r| json!({
            "id": r.id,
            "pid": r.pid,
            "host": r.host,
            "started": r.started,
            "heartbeat": r.heartbeat,
            "liveness": r.liveness(),
        })).collect::<Vec<_>>(),
        "steps": items,
        "counts": { "fresh": counts[0], "stale": counts[1], "new": counts[2], "error": counts[3] },
    });
    outln!(
        "{}",
        serde_json::to_string_pretty(&out).expect("serializes")
    );
    Ok(())
}

/// `demix status`: the live runs, a line per step with its reasons, then the counts.
fn status_text(
    live: &[LiveRun],
    running: &Running,
    steps: &[StepRow],
    counts: &[usize; 4],
) -> Result<(), CliError> {
    for r in live {
        match r.liveness() {
            Liveness::Running => outln!(
                "run {} in progress: pid {} on {}, started {}",
                r.id,
                r.pid,
                r.host,
                r.started.strftime("%Y-%m-%d %H:%M:%S")
            ),
            Liveness::Stale => outln!(
                "run {} (pid {} on {}) stopped without finishing: its record is stale",
                r.id,
                r.pid,
                r.host
            ),
        }
    }
    for (node, state, reasons, _, error) in steps {
        if let Some((_, st)) = running.get(node.id.as_str()) {
            outln!("running {}  {}", node.id, st.describe());
            continue;
        }
        match (state, error) {
            (Some(st), _) => outln!("{:<6} {}", st.to_string(), node.id),
            (None, Some(e)) => outln!("error  {}: {e}", node.id),
            _ => {}
        }
        for r in reasons {
            outln!("         {r}");
        }
    }
    outln!(
        "{} steps: {} fresh, {} stale, {} new{}{}",
        steps.len(),
        counts[0],
        counts[1],
        counts[2],
        if running.is_empty() {
            String::new()
        } else {
            format!(" ({} running)", running.len())
        },
        if counts[3] > 0 {
            format!(", {} with errors", counts[3])
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The step graph with each step's datasets, outputs and state (fresh, stale,
/// new, as `status` says); datasets are nodes of their own in dot and Mermaid.
fn dag(g: &Graph, format: DagFormat, s: &Store) -> String {
    let no_progress = |_: &Path, _: u64, _: u64| {};
    let states: BTreeMap<NodeId, String> = Planner::new(g, s, &no_progress)
        .assess_all(&[], None)
        .into_iter()
        .map(|(n, a)| {
            (
                n,
                a.map_or_else(|_| "error".into(), |a| a.state.to_string()),
            )
        })
        .collect();
    match format {
        DagFormat::Text => dag_text(g, &states),
        DagFormat::Dot => dag_dot(g, &states),
        DagFormat::Mermaid => dag_mermaid(g, &states),
    }
}

/// A step's datasets as `name (split)`, each once in a row.
fn dag_datasets(g: &Graph, i: NodeId) -> Vec<String> {
    let mut v: Vec<String> = g[i]
        .inputs
        .iter()
        .filter_map(|inp| match &inp.source {
            demix_core::graph::Source::Dataset { name, split } => Some(format!(
                "{name} ({})",
                match split {
                    demix_core::manifest::template::Split::Train => "train",
                    demix_core::manifest::template::Split::Validation => "validation",
                }
            )),
            _ => None,
        })
        .collect();
    v.dedup();
    v
}

/// A step's output names.
fn dag_outputs(g: &Graph, i: NodeId) -> Vec<&str> {
    g[i].plan.outputs.keys().map(String::as_str).collect()
}

/// A step's label: its id and kind.
fn dag_label(g: &Graph, i: NodeId) -> String {
    format!("{} ({})", g[i].id, g[i].kind.name())
}

/// `demix dag`: a line per step in order with its state and dependencies.
fn dag_text(g: &Graph, states: &BTreeMap<NodeId, String>) -> String {
    let mut out = String::new();
    for &i in g.order() {
        let deps: Vec<&str> = g.deps(i).into_iter().map(|d| g[d].id.as_str()).collect();
        let arrow = if deps.is_empty() {
            String::new()
        } else {
            format!(" <- {}", deps.join(", "))
        };
        out.push_str(&format!("{:<6} {}{arrow}\n", states[&i], dag_label(g, i)));
        let ds = dag_datasets(g, i);
        if !ds.is_empty() {
            out.push_str(&format!("         datasets: {}\n", ds.join(", ")));
        }
        let os = dag_outputs(g, i);
        if !os.is_empty() {
            out.push_str(&format!("         outputs: {}\n", os.join(", ")));
        }
    }
    out
}

/// `demix dag --format dot`: Graphviz, steps coloured by state.
fn dag_dot(g: &Graph, states: &BTreeMap<NodeId, String>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
        g.manifest.name
    ));
    let colour = |st: &str| match st {
        "fresh" => "palegreen",
        "stale" => "orange",
        "error" => "red",
        _ => "lightgrey",
    };
    let mut seen = BTreeSet::new();
    for &i in g.order() {
        let st = &states[&i];
        let text = format!(
            "{}\\n{st}; out: {}",
            dag_label(g, i),
            dag_outputs(g, i).join(", ")
        );
        out.push_str(&format!(
            "  n{i} [label=\"{}\", style=filled, fillcolor={}];\n",
            text.replace('"', "\\\""),
            colour(st)
        ));
        for d in dag_datasets(g, i) {
            let name = d.split(' ').next().unwrap_or_default().to_string();
            if seen.insert(name.clone()) {
                out.push_str(&format!(
                    "  \"data:{name}\" [label=\"{name}\", shape=cylinder];\n"
                ));
            }
            out.push_str(&format!("  \"data:{name}\" -> n{i};\n"));
        }
    }
    for &i in g.order() {
        for d in g.deps(i) {
            out.push_str(&format!("  n{d} -> n{i};\n"));
        }
    }
    out.push_str("}\n");
    out
}

/// `demix dag --format mermaid`: a Mermaid flowchart, steps classed by state.
fn dag_mermaid(g: &Graph, states: &BTreeMap<NodeId, String>) -> String {
    let mut out = String::new();
    out.push_str("flowchart LR\n");
    let mut seen = BTreeSet::new();
    for &i in g.order() {
        out.push_str(&format!(
            "  n{i}[\"{}<br/>{}\"]:::{}\n",
            dag_label(g, i).replace('"', "#quot;"),
            states[&i],
            states[&i]
        ));
        for d in dag_datasets(g, i) {
            let name = d.split(' ').next().unwrap_or_default().to_string();
            if seen.insert(name.clone()) {
                out.push_str(&format!("  data_{name}[(\"{name}\")]\n"));
            }
            out.push_str(&format!("  data_{name} --> n{i}\n"));
        }
    }
    for &i in g.order() {
        for d in g.deps(i) {
            out.push_str(&format!("  n{d} --> n{i}\n"));
        }
    }
    out.push_str("  classDef fresh fill:#cfc\n  classDef stale fill:#fc9\n  classDef new fill:#eee\n  classDef error fill:#f99\n");
    out
}

fn lineage(a: crate::cli::LineageArgs, cache: &Option<PathBuf>) -> miette::Result<ExitCode> {
    let s = store(cache);
    // Step ids are looked up in the manifest's workflow when there is one.
    let manifest = match &a.manifest {
        Some(p) => Some(Manifest::load(p).map_err(CliError::Manifest)?),
        None => manifest_path(None)
            .ok()
            .and_then(|p| Manifest::load(&p).ok()),
    };
    let name = manifest.as_ref().map(|m| m.name.clone());
    let r = demix_core::lineage::resolve(&s, name.as_deref(), &a.what).map_err(|e| {
        let ids: Vec<String> = manifest
            .as_ref()
            .map(|m| m.steps.iter().map(|st| st.id.clone()).collect())
            .unwrap_or_default();
        CliError::Usage(format!("{e}{}", step_hint(&a.what, &ids)))
    })?;
    // Relative paths in the records are relative to the manifest's folder.
    let base = a
        .manifest
        .as_deref()
        .or(manifest.as_ref().map(|m| m.path.as_path()))
        .and_then(|p| p.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        });
    if a.json {
        let l = demix_core::lineage::lineage(&s, &r);
        let mut v = serde_json::to_value(&l).expect("serializes");
        v["summary"] =
            serde_json::to_value(demix_core::lineage::summary(&s, &r, base)).expect("serializes");
        outln!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
    } else if a.full || a.depth.is_some() {
        let l = demix_core::lineage::lineage(&s, &r);
        out!("{}", demix_core::lineage::render_to_depth(&l, a.depth));
    } else {
        let sum = demix_core::lineage::summary(&s, &r, base);
        out!("{}", demix_core::lineage::render_summary(&sum));
    }
    Ok(ExitCode::SUCCESS)
}

/// For a step id that matched nothing: the closest step of the manifest, or
/// its steps when none is close.
fn step_hint(what: &str, ids: &[String]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    if let Some(h) = demix_core::manifest::did_you_mean(what, ids.iter().map(String::as_str)) {
        return format!(" ({h})");
    }
    const MAX: usize = 8;
    let more = if ids.len() > MAX {
        format!(" and {} more", ids.len() - MAX)
    } else {
        String::new()
    };
    let shown: Vec<&str> = ids.iter().take(MAX).map(String::as_str).collect();
    format!(" (the workflow's steps: {}{more})", shown.join(", "))
}

/// Where the latest report of each `report` step of the manifest is.
fn report(a: crate::cli::ReportArgs, cache: &Option<PathBuf>) -> miette::Result<ExitCode> {
    let g = load_graph(a.manifest.manifest)?;
    let s = store(cache);
    let steps: Vec<&str> = g
        .order()
        .iter()
        .map(|&i| &g[i])
        .filter(|n| n.kind.name() == "report")
        .map(|n| n.id.as_str())
        .collect();
    if steps.is_empty() {
        return Err(CliError::Usage(format!(
            "{} has no `report` step",
            g.manifest.path.display()
        ))
        .into());
    }
    let show = show_path;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for id in steps {
        match demix_kinds::report::latest(&s, &g.manifest.name, id) {
            Ok((r, html, md)) => found.push((r, show(&html), show(&md))),
            Err(e) => missing.push((id, e.to_string())),
        }
    }
    if a.json {
        let items: Vec<serde_json::Value> = found
            .iter()
            .map(|(r, html, md)| {
                json!({"step": r.step, "html": html, "markdown": md, "key": r.key, "finished": r.finished})
            })
            .chain(
                missing
                    .iter()
                    .map(|(id, e)| json!({"step": id, "error": e})),
            )
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"manifest": g.manifest.path, "reports": items}))
                .expect("serializes")
        );
    } else {
        for (r, html, md) in &found {
            outln!("{}", r.step);
            outln!("  html      {html}");
            outln!("  markdown  {md}");
            outln!(
                "  made      {} (key {})",
                r.finished.strftime("%Y-%m-%d %H:%M:%S UTC"),
                &r.key[..r.key.len().min(12)]
            );
        }
    }
    if missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let path = g.manifest.path.display();
    let why: Vec<String> = missing
        .iter()
        .map(|(id, e)| format!("{e}: run `demix run {path} --target {id}`"))
        .collect();
    Err(CliError::Failed(why.join("\n")).into())
}

fn log(a: crate::cli::LogArgs, cache: &Option<PathBuf>) -> miette::Result<ExitCode> {
    let s = store(cache);
    let (runs, damaged) = demix_core::maintenance::runs_and_damage(&s);
    for (p, why) in &damaged {
        errln!(
            "warning: run record {} is corrupt ({why}); `demix verify` removes it",
            p.display()
        );
    }
    let shown = &runs[runs.len().saturating_sub(a.limit)..];
    let live = demix_core::live::live_runs(&s);
    if a.json {
        // Finished runs as before; runs in progress (or that died without
        // finishing) under `live`.
        let live: Vec<serde_json::Value> = live
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("serializes");
                v["liveness"] = json!(r.liveness());
                v
            })
            .collect();
        if live.is_empty() {
            outln!(
                "{}",
                serde_json::to_string_pretty(shown).expect("serializes")
            );
        } else {
            let mut all: Vec<serde_json::Value> = shown
                .iter()
                .map(|r| serde_json::to_value(r).expect("serializes"))
                .collect();
            all.extend(live);
            outln!(
                "{}",
                serde_json::to_string_pretty(&all).expect("serializes")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if shown.is_empty() && live.is_empty() {
        outln!("no runs recorded in {}", s.root.display());
    }
    for r in shown {
        let secs = (r.finished.as_millisecond() - r.started.as_millisecond()) as f64 / 1000.0;
        let state = if r.interrupted {
            "interrupted"
        } else if r.ok {
            "ok"
        } else {
            "FAILED"
        };
        outln!(
            "{}  {:<11} {:<20} {} ran, {} fresh, {} failed  {}  on {}",
            r.started.strftime("%Y-%m-%d %H:%M:%S"),
            state,
            r.manifest,
            r.count(|o| *o == Outcome::Ran),
            r.count(|o| *o == Outcome::Fresh),
            r.count(|o| matches!(o, Outcome::Failed { .. })),
            demix_core::outcome::human_duration(secs),
            r.host
        );
    }
    for r in &live {
        let state = match r.liveness() {
            Liveness::Running => "running",
            Liveness::Stale => "stale",
        };
        let secs = r.elapsed_s();
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|(id, st)| {
                let d = st.describe();
                if d.is_empty() {
                    id.clone()
                } else {
                    format!("{id} {d}")
                }
            })
            .collect();
        outln!(
            "{}  {:<11} {:<20} pid {}, {}{}  {}  on {}",
            r.started.strftime("%Y-%m-%d %H:%M:%S"),
            state,
            r.manifest,
            r.pid,
            if steps.is_empty() {
                "between steps"
            } else {
                "now: "
            },
            steps.join("; "),
            demix_core::outcome::human_duration(secs),
            r.host
        );
    }
    Ok(ExitCode::SUCCESS)
}
