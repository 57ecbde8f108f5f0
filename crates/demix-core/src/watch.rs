//! `demix watch`: reruns exactly the steps that a change makes stale.
//!
//! File events only wake the watcher; content decides. After a quiet period (the
//! debounce) it reloads the manifest, rebuilds the graph and takes a fingerprint of
//! what the plan reads: the plan's definition (everything a cache key depends on
//! besides file content) and the content hash of every file of every dataset glob
//! and workspace input (through the store's stat cache, so unchanged files are not
//! re-read). The same fingerprint (a touch, a save of the same bytes, an edited
//! comment) does nothing. A different one starts a cycle: the normal scheduler,
//! which skips fresh steps.
//!
//! A change during a cycle first tells the scheduler to start nothing new (steps
//! not yet started would use inputs hashed before the change), then cancels each
//! running step whose key the new plan does not reuse: its own inputs or
//! parameters changed, or a step upstream of it is stale. Running steps the change
//! does not touch finish; the next cycle reruns what is stale.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::exec::{Control, Outcome, RunOptions, RunSummary, run_controlled};
use crate::graph::{Graph, Source};
use crate::manifest::template::Split;
use crate::manifest::{LoadError, Manifest, load_graph};
use crate::plan::Planner;
use crate::progress::{Reporter, Verbosity};
use crate::protocol::StepSpec;
use crate::store::Store;

/// What `demix watch` was asked to do.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub manifest: PathBuf,
    /// The step kinds manifests may use.
    pub registry: crate::kind::Registry,
    /// The store.
    pub cache: PathBuf,
    /// How long events must pause before the watcher acts on them.
    pub debounce: Duration,
    pub jobs: Option<u32>,
    pub keep_going: bool,
    pub gpus: Option<String>,
    pub verbosity: Verbosity,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The manifest cannot be read at all (an invalid one is reported and watched).
    #[error(transparent)]
    Manifest(#[from] LoadError),
    #[error("{0}")]
    Failed(String),
}

/// Exit code after SIGINT (Ctrl-C).
pub const EXIT_SIGINT: u8 = 130;
/// Exit code after SIGTERM.
pub const EXIT_SIGTERM: u8 = 143;

/// Watches until SIGINT or SIGTERM; returns the exit code.
pub fn watch(opts: WatchOptions) -> Result<u8, WatchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| WatchError::Failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(watch_async(opts))
}

/// Content of everything the plan reads: display path -> hash.
type Fingerprint = BTreeMap<String, String>;

enum CycleEnd {
    Done,
    /// Inputs changed during the cycle: another one follows.
    Changed,
    Signal(u8),
}

async fn watch_async(opts: WatchOptions) -> Result<u8, WatchError> {
    let store = Store::open(&opts.cache);
    let rep = Arc::new(Reporter::new(opts.verbosity));
    let run = run_options(&opts)?;
    let failed = |what: &str, e: std::io::Error| WatchError::Failed(format!("cannot {what}: {e}"));
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| failed("handle SIGINT", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| failed("handle SIGTERM", e))?;

    // An unreadable manifest is an error; an invalid one is reported and watched.
    let first = match load_graph(&opts.manifest, &opts.registry) {
        Ok(g) => Ok(g),
        Err(e @ LoadError::Io { .. }) => return Err(e.into()),
        Err(e) => Err(e),
    };
    let Watching {
        watcher,
        filter,
        mut batches,
    } = start_watcher(opts.debounce)?;
    let manifest_abs =
        normalize(&std::path::absolute(&opts.manifest).unwrap_or_else(|_| opts.manifest.clone()));
    let mut w = Session {
        manifest_name: opts.manifest.display().to_string(),
        manifest_key: manifest_abs.file_name().map_or_else(
            || opts.manifest.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        manifest_abs,
        ignore: normalize(&store.root),
        opts: &opts,
        store: &store,
        rep: rep.clone(),
        run,
        graph: None,
        bad_text: None,
        latest: Fingerprint::new(),
        planned: Fingerprint::new(),
        watcher,
        watched: BTreeMap::new(),
        filter,
        cycle: 0,
    };
    match first {
        Ok(g) => w.graph = Some(Arc::new(g)),
        Err(e) => w.report_error(e),
    }
    w.update_watches(&[]);
    w.latest = w.fingerprint();
    w.planned = w.latest.clone();
    rep.line(&format!(
        "watch: watching {} and {} input path(s) (debounce {} ms); Ctrl-C stops",
        w.manifest_name,
        w.input_count(),
        opts.debounce.as_millis()
    ));
    w.serve(&mut batches, &mut sigint, &mut sigterm).await
}

/// How each cycle runs: the options `demix run` would take from the same flags.
fn run_options(opts: &WatchOptions) -> Result<RunOptions, WatchError> {
    Ok(RunOptions {
        jobs: opts.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |j| j as usize,
        ),
        keep_going: opts.keep_going,
        force: Vec::new(),
        targets: Vec::new(),
        gpus: crate::exec::local::detect_gpus(opts.gpus.as_deref()),
        programs: crate::exec::Programs::locate()
            .map_err(|e| WatchError::Failed(format!("cannot find the demix executable: {e}")))?,
        argv: std::env::args().collect(),
        slurm: None,
    })
}

/// The file watcher, the filter that says which of its events matter, and
/// the batches of changed paths, each sent once events have paused for the debounce.
struct Watching {
    watcher: RecommendedWatcher,
    filter: Arc<Mutex<Filter>>,
    batches: UnboundedReceiver<Vec<PathBuf>>,
}

/// Starts watching: events are debounced on a thread of their own.
fn start_watcher(debounce: Duration) -> Result<Watching, WatchError> {
    let (raw_tx, raw_rx) = std::sync::mpsc::channel();
    let watcher = notify::recommended_watcher(move |ev| {
        let _ = raw_tx.send(ev);
    })
    .map_err(|e| WatchError::Failed(format!("cannot watch files: {e}")))?;
    let filter = Arc::new(Mutex::new(Filter::default()));
    let (batch_tx, batches) = unbounded_channel();
    {
        let filter = filter.clone();
        std::thread::spawn(move || debounce_events(raw_rx, &filter, &batch_tx, debounce));
    }
    Ok(Watching {
        watcher,
        filter,
        batches,
    })
}

struct Session<'a> {
    /// The manifest as given, for messages.
    manifest_name: String,
    /// The manifest's entry in the fingerprint (its path relative to its folder).
    manifest_key: String,
    manifest_abs: PathBuf,
    /// The store: nothing under it is an input.
    ignore: PathBuf,
    opts: &'a WatchOptions,
    store: &'a Store,
    rep: Arc<Reporter>,
    run: RunOptions,
    /// The last good plan.
    graph: Option<Arc<Graph>>,
    /// The manifest text last reported as invalid, while it is.
    bad_text: Option<String>,
    /// The fingerprint last taken, and the one the current or last cycle ran on.
    latest: Fingerprint,
    planned: Fingerprint,
    watcher: RecommendedWatcher,
    watched: BTreeMap<PathBuf, RecursiveMode>,
    filter: Arc<Mutex<Filter>>,
    cycle: u32,
}

impl Session<'_> {
    /// Runs a cycle whenever the fingerprint changed (and first of all), until
    /// a signal; returns the exit code.
    async fn serve(
        &mut self,
        batches: &mut UnboundedReceiver<Vec<PathBuf>>,
        sigint: &mut Signal,
        sigterm: &mut Signal,
    ) -> Result<u8, WatchError> {
        let rep = self.rep.clone();
        let mut pending = true;
        loop {
            if pending && self.graph.is_some() {
                // Fold in changes that are already waiting.
                let mut queued = Vec::new();
                while let Ok(b) = batches.try_recv() {
                    queued.extend(b);
                }
                if !queued.is_empty() {
                    self.refresh(&queued);
                }
            }
            // While the manifest is invalid nothing runs; the cycle waits for a fix.
            if pending && self.graph.is_some() && self.bad_text.is_none() {
                pending = false;
                let what = self.cycle_reason();
                self.planned = self.latest.clone();
                self.cycle += 1;
                match self.run_cycle(&what, batches, sigint, sigterm).await {
                    CycleEnd::Done => rep.line("watch: waiting for changes"),
                    CycleEnd::Changed => pending = true,
                    CycleEnd::Signal(code) => {
                        rep.line("watch: stopped");
                        return Ok(code);
                    }
                }
                continue;
            }
            tokio::select! {
                b = batches.recv() => match b {
                    Some(paths) => {
                        if self.refresh(&paths).is_some() {
                            pending = true;
                        }
                    }
                    None => return Err(WatchError::Failed("the file watcher stopped".into())),
                },
                _ = sigint.recv() => {
                    rep.line("watch: stopped");
                    return Ok(EXIT_SIGINT);
                }
                _ = sigterm.recv() => {
                    rep.line("watch: stopped");
                    return Ok(EXIT_SIGTERM);
                }
            }
        }
    }

    /// Why the next cycle runs: it is the first, or what changed since the
    /// last one's plan, or (nothing did) the last one left steps to finish.
    fn cycle_reason(&self) -> String {
        if self.cycle == 0 {
            "initial run".to_string()
        } else {
            let d = diff(&self.planned, &self.latest);
            if d.is_empty() {
                "finishing what the last cycle left".to_string()
            } else {
                d.join(", ")
            }
        }
    }

    /// Reloads the manifest and re-takes the fingerprint after events on `paths`.
    /// Returns what changed, or `None` when nothing did (or the manifest is invalid).
    fn refresh(&mut self, paths: &[PathBuf]) -> Option<Vec<String>> {
        match load_graph(&self.opts.manifest, &self.opts.registry) {
            Ok(g) => {
                if self.bad_text.take().is_some() {
                    self.rep
                        .line(&format!("watch: {} is valid again", self.manifest_name));
                }
                self.graph = Some(Arc::new(g));
            }
            Err(e) => {
                self.report_error(e);
                return None;
            }
        }
        self.update_watches(paths);
        let f = self.fingerprint();
        if f == self.latest {
            let shown: Vec<String> = paths.iter().take(5).map(|p| self.display(p)).collect();
            self.rep
                .detail(&format!("watch: no content changed ({})", shown.join(", ")));
            return None;
        }
        let changes = diff(&self.latest, &f);
        self.latest = f;
        Some(changes)
    }

    /// Shows a manifest's diagnostics once per distinct text; the last good plan stays.
    fn report_error(&mut self, e: LoadError) {
        let text = std::fs::read_to_string(&self.opts.manifest).unwrap_or_default();
        if self.bad_text.as_ref() == Some(&text) {
            return;
        }
        self.bad_text = Some(text);
        self.rep.always(&format!(
            "watch: {} has errors; nothing runs until it is fixed{}",
            self.manifest_name,
            if self.graph.is_some() {
                " (watching with the last good plan)"
            } else {
                ""
            }
        ));
        self.rep
            .always(format!("{:?}", miette::Report::new(e)).trim_end());
    }

    fn input_count(&self) -> usize {
        let f = self.filter.lock().expect("filter");
        f.files.len().saturating_sub(1) + f.trees.len() + f.globs.len()
    }

    async fn run_cycle(
        &mut self,
        what: &str,
        batches: &mut UnboundedReceiver<Vec<PathBuf>>,
        sigint: &mut Signal,
        sigterm: &mut Signal,
    ) -> CycleEnd {
        let graph = self.graph.clone().expect("a good plan");
        let store = self.store;
        let run = self.run.clone();
        let rep = self.rep.clone();
        let cycle = self.cycle;
        rep.line(&format!("watch: cycle {cycle}: {what}"));
        let _usage = match store.usage_lock(false) {
            Ok(l) => l,
            Err(e) => {
                rep.always(&format!(
                    "watch: cycle {cycle} FAILED: cannot lock the store: {e}"
                ));
                return CycleEnd::Done;
            }
        };
        let t0 = Instant::now();
        let (tx, rx) = unbounded_channel();
        let fut = run_controlled(&graph, store, &run, rep.clone(), Some(rx));
        tokio::pin!(fut);
        let mut end = CycleEnd::Done;
        let summary = loop {
            tokio::select! {
                s = &mut fut => break s,
                Some(paths) = batches.recv() => {
                    if matches!(end, CycleEnd::Signal(_)) {
                        continue;
                    }
                    let Some(changes) = self.refresh(&paths) else { continue };
                    rep.line(&format!("watch: changed during cycle {cycle}: {}", changes.join(", ")));
                    // Nothing new may start with inputs hashed before the change.
                    let _ = tx.send(Control::Drain);
                    let stale = self.stale_running(&graph);
                    if !stale.is_empty() {
                        rep.line(&format!("watch: cancelling {} (stale)", stale.join(", ")));
                        let _ = tx.send(Control::Cancel(stale));
                    }
                    end = CycleEnd::Changed;
                }
                _ = sigint.recv() => {
                    let _ = tx.send(Control::Stop);
                    end = CycleEnd::Signal(EXIT_SIGINT);
                }
                _ = sigterm.recv() => {
                    let _ = tx.send(Control::Stop);
                    end = CycleEnd::Signal(EXIT_SIGTERM);
                }
            }
        };
        let line = summary_line(cycle, &summary, &end, t0.elapsed());
        let failed = summary
            .steps
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Failed { .. }));
        if failed {
            rep.always(&line);
        } else {
            rep.line(&line);
        }
        end
    }

    /// Running steps of `running` (the plan of the cycle in progress) whose key the
    /// current plan does not reuse: their inputs or parameters changed, an upstream
    /// step is stale, or the step is gone.
    fn stale_running(&self, running: &Graph) -> Vec<String> {
        let Some(g) = &self.graph else {
            return Vec::new();
        };
        let no_progress = |_: &Path, _: u64, _: u64| {};
        let planner = Planner::new(g, self.store, &no_progress);
        let keys: HashMap<String, Option<String>> = planner
            .assess_all(&[], None)
            .into_iter()
            .map(|(n, a)| (g[n].id.clone(), a.ok().and_then(|a| a.key)))
            .collect();
        let mut out: Vec<String> = running_steps(self.store, &running.manifest.name)
            .into_iter()
            .filter(|(step, key)| keys.get(step).and_then(|k| k.as_deref()) != Some(key.as_str()))
            .map(|(step, _)| step)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Points the file watcher at what the current plan reads. `touched` are paths
    /// that just had events: a watched folder among them is watched anew (it may have
    /// been removed and made again).
    fn update_watches(&mut self, touched: &[PathBuf]) {
        let (desired, filter) = self.watch_plan();
        *self.filter.lock().expect("filter") = filter;
        for p in touched {
            if self.watched.contains_key(p) {
                let _ = self.watcher.unwatch(p);
                self.watched.remove(p);
            }
        }
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(p, m)| desired.get(*p) != Some(*m))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            let _ = self.watcher.unwatch(&p);
            self.watched.remove(&p);
        }
        for (p, m) in desired {
            if self.watched.contains_key(&p) {
                continue;
            }
            match self.watcher.watch(&p, m) {
                Ok(()) => {
                    self.watched.insert(p, m);
                }
                Err(e) => self
                    .rep
                    .detail(&format!("watch: cannot watch {}: {e}", p.display())),
            }
        }
    }

    /// The folders to watch, and which events under them matter.
    fn watch_plan(&self) -> (BTreeMap<PathBuf, RecursiveMode>, Filter) {
        let mut want: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
        let mut add = |p: PathBuf, m: RecursiveMode| {
            let e = want.entry(p).or_insert(m);
            if m == RecursiveMode::Recursive {
                *e = m;
            }
        };
        let mut f = Filter {
            ignore: self.ignore.clone(),
            ..Default::default()
        };
        f.files.insert(self.manifest_abs.clone());
        if let Some(dir) = self.manifest_abs.parent() {
            add(dir.to_path_buf(), RecursiveMode::NonRecursive);
        }
        if let Some(g) = &self.graph {
            let mut seen = BTreeSet::new();
            for inp in g.nodes().flat_map(|n| &n.inputs) {
                match &inp.source {
                    Source::Dataset { name, split } => {
                        for pattern in dataset_globs(&g.manifest, name, *split) {
                            let (root, rest) = split_glob(&pattern);
                            let root = normalize(&root);
                            if !seen.insert(root.join(&rest)) {
                                continue;
                            }
                            let deep = rest.components().count() > 1
                                || rest.to_string_lossy().contains("**");
                            if root.is_dir() {
                                add(
                                    root.clone(),
                                    if deep {
                                        RecursiveMode::Recursive
                                    } else {
                                        RecursiveMode::NonRecursive
                                    },
                                );
                            } else {
                                add(existing_ancestor(&root), RecursiveMode::NonRecursive);
                                f.missing.push(root.clone());
                            }
                            if let Ok(p) = glob::Pattern::new(&root.join(&rest).to_string_lossy()) {
                                f.globs.push((root, p));
                            }
                        }
                    }
                    Source::Path { abs, .. } => {
                        let abs = normalize(abs);
                        if !seen.insert(abs.clone()) {
                            continue;
                        }
                        if abs.is_dir() {
                            add(abs.clone(), RecursiveMode::Recursive);
                            f.trees.push(abs);
                        } else if abs.is_file() {
                            if let Some(dir) = abs.parent() {
                                add(dir.to_path_buf(), RecursiveMode::NonRecursive);
                            }
                            f.files.insert(abs);
                        } else {
                            add(existing_ancestor(&abs), RecursiveMode::NonRecursive);
                            f.missing.push(abs.clone());
                            f.trees.push(abs);
                        }
                    }
                    Source::Steps { .. } => {}
                }
            }
        }
        // A folder under a recursive watch needs no watch of its own.
        let recursive: Vec<PathBuf> = want
            .iter()
            .filter(|(_, m)| **m == RecursiveMode::Recursive)
            .map(|(p, _)| p.clone())
            .collect();
        want.retain(|p, _| !recursive.iter().any(|r| p != r && p.starts_with(r)));
        (want, f)
    }

    /// The plan's definition and the content of every file it reads.
    fn fingerprint(&self) -> Fingerprint {
        let mut f = Fingerprint::new();
        let Some(g) = &self.graph else { return f };
        let m = &g.manifest;
        f.insert(self.manifest_key.clone(), signature(g));
        let mut seen = BTreeSet::new();
        for inp in g.nodes().flat_map(|n| &n.inputs) {
            match &inp.source {
                Source::Dataset { name, split } => {
                    if !seen.insert(format!("dataset {name} {split:?}")) {
                        continue;
                    }
                    for pattern in dataset_globs(m, name, *split) {
                        let Ok(paths) = glob::glob(&pattern.to_string_lossy()) else {
                            continue;
                        };
                        for p in paths.flatten() {
                            if p.is_file() {
                                self.hash_into(&mut f, &m.dir, &p);
                            }
                        }
                    }
                }
                Source::Path { abs, .. } => {
                    if !seen.insert(abs.display().to_string()) {
                        continue;
                    }
                    if abs.is_dir() {
                        f.insert(format!("{}/", rel(&m.dir, abs)), "folder".into());
                        let mut rels = Vec::new();
                        let _ = crate::store::walk_files(abs, abs, &mut rels);
                        for r in rels {
                            self.hash_into(&mut f, &m.dir, &abs.join(r));
                        }
                    } else if abs.exists() {
                        self.hash_into(&mut f, &m.dir, abs);
                    }
                }
                Source::Steps { .. } => {}
            }
        }
        f
    }

    fn hash_into(&self, f: &mut Fingerprint, dir: &Path, p: &Path) {
        let h = self
            .store
            .stat
            .hash(p, &|_, _| {})
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        f.insert(rel(dir, p), h);
    }

    fn display(&self, p: &Path) -> String {
        match &self.graph {
            Some(g) => rel(&g.manifest.dir, p),
            None => p.display().to_string(),
        }
    }
}

/// The plan's definition: everything a step's cache key depends on besides the
/// content of its input files, and the shape of the graph. Comments, formatting and
/// resources are not in it.
fn signature(g: &Graph) -> String {
    let nodes: Vec<serde_json::Value> = g
        .order()
        .iter()
        .map(|&i| {
            let n = &g[i];
            serde_json::json!({
                "id": n.id,
                "kind": n.kind.name(),
                "version": n.kind.version(),
                "params": n.plan.params,
                "used": n.params_used,
                "outputs": n.plan.outputs,
                "inputs": n.inputs.iter().map(|x| format!("{} <- {:?}", x.key, x.source)).collect::<Vec<_>>(),
                "deps": g.deps(i).into_iter().map(|d| g[d].id.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let text = serde_json::json!({ "name": g.manifest.name, "nodes": nodes }).to_string();
    crate::hash::hex(&blake3::hash(text.as_bytes()))
}

/// What changed between two fingerprints, as `PATH added|removed|modified`.
fn diff(old: &Fingerprint, new: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => out.push(format!("{k} added")),
            Some(o) if o != v => out.push(format!("{k} modified")),
            Some(_) => {}
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(format!("{k} removed"));
    }
    out
}

fn summary_line(cycle: u32, s: &RunSummary, end: &CycleEnd, took: Duration) -> String {
    let ids = |f: &dyn Fn(&Outcome) -> bool| -> Vec<&str> {
        s.steps
            .iter()
            .filter(|r| f(&r.outcome))
            .map(|r| r.id.as_str())
            .collect()
    };
    // Up to `SHOWN` ids per outcome; a long list ends with how many more there are.
    const SHOWN: usize = 12;
    let part = |n: &str, v: Vec<&str>| match v.len() {
        0 => format!("0 {n}"),
        k if k <= SHOWN => format!("{k} {n} ({})", v.join(", ")),
        k => format!(
            "{k} {n} ({}, and {} more)",
            v[..SHOWN].join(", "),
            k - SHOWN
        ),
    };
    let state = match end {
        CycleEnd::Signal(_) => "stopped",
        _ if s.interrupted => "stopped",
        CycleEnd::Changed => "superseded",
        CycleEnd::Done if s.ok => "done",
        CycleEnd::Done => "FAILED",
    };
    format!(
        "watch: cycle {cycle} {state} in {}: {}, {} fresh, {}, {}, {}",
        crate::outcome::human_duration(took.as_secs_f64()),
        part("ran", ids(&|o| *o == Outcome::Ran)),
        s.count(|o| *o == Outcome::Fresh),
        part("failed", ids(&|o| matches!(o, Outcome::Failed { .. }))),
        part("skipped", ids(&|o| matches!(o, Outcome::Skipped { .. }))),
        part("cancelled", ids(&|o| *o == Outcome::Cancelled)),
    )
}

/// Steps of workflow `workflow` running now, with the keys they run under: from the
/// specs the local scheduler writes for its step processes while they run.
fn running_steps(store: &Store, workflow: &str) -> Vec<(String, String)> {
    crate::store::read_dir_sorted(&store.tmp_dir().join("specs"))
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".done.json")
        })
        .filter_map(|p| serde_json::from_slice::<StepSpec>(&std::fs::read(&p).ok()?).ok())
        .filter(|s| s.manifest == workflow)
        .map(|s| (s.step, s.key))
        .collect()
}

/// The absolute glob patterns of a dataset split, as [`crate::graph::dataset_files`]
/// reads them.
fn dataset_globs(m: &Manifest, name: &str, split: Split) -> Vec<PathBuf> {
    let Some(decl) = m.datasets.get(name) else {
        return Vec::new();
    };
    let globs = match split {
        Split::Validation if !decl.validation.is_empty() => &decl.validation,
        _ => &decl.files,
    };
    globs
        .iter()
        .map(|g| {
            let p = Path::new(g.as_str());
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                m.dir.join(p)
            }
        })
        .collect()
}

/// Splits a glob into the folder before its first wildcard and the rest.
fn split_glob(pattern: &Path) -> (PathBuf, PathBuf) {
    let mut root = PathBuf::new();
    let mut rest = PathBuf::new();
    for c in pattern.components() {
        let wild = c.as_os_str().to_string_lossy().contains(['*', '?', '[']);
        if rest.as_os_str().is_empty() && !wild {
            root.push(c);
        } else {
            rest.push(c);
        }
    }
    if rest.as_os_str().is_empty() {
        // No wildcard: a plain file; its folder is the root.
        if let (Some(dir), Some(name)) = (root.parent(), root.file_name()) {
            return (dir.to_path_buf(), PathBuf::from(name));
        }
    }
    (root, rest)
}

/// `..` and `.` resolved, and the longest existing prefix canonicalized, so every
/// path the watcher compares is spelled the way its events spell it.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut head = out.clone();
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(mut c) = head.canonicalize() {
            for t in tail.iter().rev() {
                c.push(t);
            }
            return c;
        }
        match head.file_name() {
            Some(n) => {
                tail.push(n.to_os_string());
                head.pop();
            }
            None => return out,
        }
    }
}

fn existing_ancestor(p: &Path) -> PathBuf {
    p.ancestors()
        .find(|a| a.is_dir())
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

/// `p` relative to `dir` (with `..` where needed), as the planner names files.
fn rel(dir: &Path, p: &Path) -> String {
    if let Ok(r) = p.strip_prefix(dir) {
        return r.display().to_string();
    }
    let p = normalize(p);
    let pc: Vec<Component> = p.components().collect();
    let dc: Vec<Component> = dir.components().collect();
    let common = pc.iter().zip(&dc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..dc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    out.display().to_string()
}

/// Which event paths matter. Everything else (step outputs, logs, the store, `.git`)
/// is dropped before it can wake the watcher.
#[derive(Default)]
struct Filter {
    /// Files that matter themselves (the manifest, workspace input files).
    files: BTreeSet<PathBuf>,
    /// Folders whose whole content matters (workspace input folders).
    trees: Vec<PathBuf>,
    /// Dataset globs: the folder before the first wildcard, and the whole pattern.
    globs: Vec<(PathBuf, glob::Pattern)>,
    /// Inputs that do not exist yet: a folder made on the way to one matters.
    missing: Vec<PathBuf>,
    ignore: PathBuf,
}

impl Filter {
    fn relevant(&self, p: &Path) -> bool {
        if p.starts_with(&self.ignore) || p.components().any(|c| c.as_os_str() == ".git") {
            return false;
        }
        if self.files.contains(p)
            || self.trees.iter().any(|t| p.starts_with(t))
            || self.missing.iter().any(|m| m.starts_with(p))
        {
            return true;
        }
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        // Under a glob's root, a matching path counts, and so does anything that is not
        // a plain file now (a folder made, moved or removed may hold matching files).
        self.globs.iter().any(|(root, pat)| {
            p.starts_with(root) && (pat.matches_path_with(p, opts) || !p.is_file())
        })
    }
}

/// Collects relevant event paths until events pause for `debounce` (or for at most
/// ten times that while they keep coming), then sends them as one batch.
fn debounce_events(
    raw: Receiver<notify::Result<notify::Event>>,
    filter: &Mutex<Filter>,
    out: &UnboundedSender<Vec<PathBuf>>,
    debounce: Duration,
) {
    let collect = |ev: notify::Result<notify::Event>, batch: &mut BTreeSet<PathBuf>| -> bool {
        let ev = match ev {
            // The watcher lost track (e.g. a queue overflow): look again.
            Err(_) => {
                batch.insert(PathBuf::new());
                return true;
            }
            Ok(ev) => ev,
        };
        // Reads (including the watcher's own hashing) are not changes.
        if let EventKind::Access(a) = ev.kind
            && a != AccessKind::Close(AccessMode::Write)
        {
            return false;
        }
        if ev.need_rescan() {
            batch.insert(PathBuf::new());
            return true;
        }
        let f = filter.lock().expect("filter");
        let mut any = false;
        for p in ev.paths {
            if f.relevant(&p) {
                batch.insert(p);
                any = true;
            }
        }
        any
    };
    loop {
        let mut batch = BTreeSet::new();
        match raw.recv() {
            Ok(ev) => {
                if !collect(ev, &mut batch) {
                    continue;
                }
            }
            Err(_) => return,
        }
        let cap = Instant::now() + debounce * 10;
        let mut quiet_at = Instant::now() + debounce;
        loop {
            let until = quiet_at.min(cap);
            let now = Instant::now();
            if now >= until {
                break;
            }
            match raw.recv_timeout(until - now) {
                Ok(ev) => {
                    if collect(ev, &mut batch) {
                        quiet_at = Instant::now() + debounce;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = out.send(batch.into_iter().collect());
                    return;
                }
            }
        }
        if out.send(batch.into_iter().collect()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_split_at_the_first_wildcard() {
        let (r, rest) = split_glob(Path::new("/w/data/*.txt"));
        assert_eq!(
            (r.as_path(), rest.as_path()),
            (Path::new("/w/data"), Path::new("*.txt"))
        );
        let (r, rest) = split_glob(Path::new("/w/data/**/x?.jsonl"));
        assert_eq!(
            (r.as_path(), rest.as_path()),
            (Path::new("/w/data"), Path::new("**/x?.jsonl"))
        );
        let (r, rest) = split_glob(Path::new("/w/data/train.jsonl"));
        assert_eq!(
            (r.as_path(), rest.as_path()),
            (Path::new("/w/data"), Path::new("train.jsonl"))
        );
    }

    #[test]
    fn relative_names_climb_with_dotdot() {
        assert_eq!(
            rel(Path::new("/no/such/w"), Path::new("/no/such/w/data/a.txt")),
            "data/a.txt"
        );
        assert_eq!(
            rel(Path::new("/no/such/w"), Path::new("/no/such/data/a.txt")),
            "../data/a.txt"
        );
        assert_eq!(
            rel(
                Path::new("/no/such/w"),
                Path::new("/no/such/w/../data/a.txt")
            ),
            "../data/a.txt"
        );
    }

    #[test]
    fn diffs_name_added_removed_and_modified_files() {
        let a: Fingerprint = [("x".to_string(), "1".to_string()), ("y".into(), "2".into())].into();
        let b: Fingerprint = [
            ("x".to_string(), "1".to_string()),
            ("y".into(), "3".into()),
            ("z".into(), "4".into()),
        ]
        .into();
        assert_eq!(diff(&a, &b), ["y modified", "z added"]);
        assert_eq!(diff(&b, &a), ["y modified", "z removed"]);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn the_filter_drops_the_store_and_unrelated_files() {
        let mut f = Filter {
            ignore: PathBuf::from("/w/cache"),
            ..Default::default()
        };
        f.files.insert(PathBuf::from("/w/demix.yaml"));
        f.trees.push(PathBuf::from("/w/src"));
        f.globs.push((
            PathBuf::from("/no/such/data"),
            glob::Pattern::new("/no/such/data/*.txt").unwrap(),
        ));
        f.missing.push(PathBuf::from("/w/later/in.txt"));
        assert!(f.relevant(Path::new("/w/demix.yaml")));
        assert!(f.relevant(Path::new("/w/src/a/b.py")));
        assert!(f.relevant(Path::new("/no/such/data/new.txt")));
        assert!(f.relevant(Path::new("/w/later")));
        assert!(!f.relevant(Path::new("/w/side.log")));
        assert!(!f.relevant(Path::new("/w/cache/objects/ab/cd")));
        assert!(!f.relevant(Path::new("/w/src/.git/index")));
    }
}
