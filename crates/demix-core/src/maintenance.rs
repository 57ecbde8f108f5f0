//! Store upkeep: `gc`, `verify` and the run history behind `log`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::exec::RunSummary;
use crate::key::Origin;
use crate::store::{self, ResultRecord, Store, du, read_dir_sorted};

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub results: usize,
    pub trees: usize,
    pub objects: usize,
    pub tmp: usize,
    pub logs: usize,
    /// Resumable state of interrupted steps that no kept run needs any more.
    #[serde(default)]
    pub resume: usize,
    pub freed_bytes: u64,
    pub kept_results: usize,
    pub removed: Vec<String>,
}

/// The run summaries in the store, oldest first.
pub fn runs(store: &Store) -> Vec<RunSummary> {
    runs_and_damage(store).0
}

/// The run summaries, and the run records that could not be read (path, why).
pub fn runs_and_damage(store: &Store) -> (Vec<RunSummary>, Vec<(PathBuf, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for p in read_dir_sorted(&store.runs_dir()) {
        if p.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<RunLog>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => ok.push(r.into_summary()),
            Err(e) => bad.push((p, e)),
        }
    }
    (ok, bad)
}

/// A run log as stored (the summary with owned fields).
#[derive(serde::Deserialize)]
struct RunLog {
    id: String,
    manifest: String,
    manifest_path: PathBuf,
    started: jiff::Timestamp,
    finished: jiff::Timestamp,
    host: String,
    engine_version: String,
    command: Vec<String>,
    ok: bool,
    interrupted: bool,
    steps: Vec<serde_json::Value>,
}

impl RunLog {
    fn into_summary(self) -> RunSummary {
        let reports = self
            .steps
            .into_iter()
            .filter_map(|v| {
                let id = v.get("id")?.as_str()?.to_string();
                let key = v.get("key").and_then(|k| k.as_str()).map(str::to_string);
                let duration_s = v.get("duration_s").and_then(|d| d.as_f64()).unwrap_or(0.0);
                let outcome = match v.get("outcome")?.as_str()? {
                    "ran" => crate::exec::Outcome::Ran,
                    "fresh" => crate::exec::Outcome::Fresh,
                    "cancelled" => crate::exec::Outcome::Cancelled,
                    "failed" => crate::exec::Outcome::Failed {
                        error: v
                            .get("error")
                            .and_then(|e| e.as_str())
                            .unwrap_or("")
                            .to_string(),
                    },
                    _ => crate::exec::Outcome::Skipped {
                        because: v
                            .get("because")
                            .and_then(|e| e.as_str())
                            .unwrap_or("")
                            .to_string(),
                    },
                };
                let reasons = v
                    .get("reasons")
                    .and_then(|r| serde_json::from_value(r.clone()).ok())
                    .unwrap_or_default();
                Some(crate::exec::StepReport {
                    id,
                    key,
                    outcome,
                    reasons,
                    duration_s,
                })
            })
            .collect();
        RunSummary {
            id: self.id,
            manifest: self.manifest,
            manifest_path: self.manifest_path,
            started: self.started,
            finished: self.finished,
            host: self.host,
            engine_version: self.engine_version,
            command: self.command,
            ok: self.ok,
            interrupted: self.interrupted,
            steps: reports,
        }
    }
}

/// Why `gc` or `verify` stopped.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Another demix holds the store's lock; `running` lists its live runs.
    #[error(
        "another demix is using this store{}; run gc when it has finished (`gc --dry-run` works meanwhile)",
        running_list(.running)
    )]
    Busy { running: Vec<String> },
    #[error("{}: {source}", path.display())]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// ` (running: a, b)`, or nothing.
fn running_list(runs: &[String]) -> String {
    if runs.is_empty() {
        String::new()
    } else {
        format!(" (running: {})", runs.join(", "))
    }
}

/// Removes everything no kept run references. Kept: each step's latest result, the
/// results of each workflow's last `keep_runs` runs, and everything upstream of them
/// (so lineage stays complete).
pub fn gc(store: &Store, keep_runs: usize, dry_run: bool) -> Result<GcReport, MaintenanceError> {
    store.check_marker()?;
    let _guard = gc_lock(store, dry_run)?;
    let all: BTreeMap<String, ResultRecord> = store
        .all_results()
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
    let keep = kept_keys(store, &all, keep_runs);
    let mut rep = GcReport::default();
    let mut live_trees = BTreeSet::new();
    let mut live_objects = BTreeSet::new();
    for (k, r) in &all {
        if keep.contains(k) {
            rep.kept_results += 1;
            live_trees.insert(r.tree.clone());
            live_objects.extend(r.files.iter().map(|f| f.hash.clone()));
        }
    }
    // Records of runs that died without finishing: with the store's lock
    // held exclusively no run is going on, so every live record is stale
    // (a dry run holds no lock: it leaves them, as it leaves everything).
    if !dry_run {
        for r in crate::live::live_runs(store) {
            remove_counted(
                crate::live::live_dir(store).join(format!("{}.json", r.id)),
                "stale run record",
                dry_run,
                &mut rep,
            );
        }
    }
    for (k, _) in all.iter().filter(|(k, _)| !keep.contains(*k)) {
        remove_counted(store.result_path(k), "result", dry_run, &mut rep);
        rep.results += 1;
        let log = store.log_path(k);
        if log.exists() {
            remove_counted(log, "log", dry_run, &mut rep);
            rep.logs += 1;
        }
    }
    for t in store.all_trees() {
        if !live_trees.contains(&t) {
            let dir = store.tree_dir(&t);
            // Tree files are hard links: count their bytes under objects, not twice.
            rep.removed.push(format!("tree {}", dir.display()));
            if !dry_run {
                let _ = store::remove_tree(&dir);
                let _ = fs::remove_file(dir.with_extension("json"));
            }
            rep.trees += 1;
        }
    }
    for (h, p) in store.all_objects() {
        if !live_objects.contains(&h) {
            remove_counted(p, "object", dry_run, &mut rep);
            rep.objects += 1;
        }
    }
    gc_own_dirs(store, &keep, dry_run, &mut rep)?;
    Ok(rep)
}

/// The store's lock, held exclusively while gc removes; none for a dry run,
/// which only reads and so works while runs are going on.
fn gc_lock(store: &Store, dry_run: bool) -> Result<Option<fs::File>, MaintenanceError> {
    if dry_run {
        return Ok(None);
    }
    Ok(Some(store.usage_lock(true)?.ok_or_else(|| {
        MaintenanceError::Busy {
            running: crate::live::live_runs(store)
                .iter()
                .filter(|r| r.liveness() == crate::live::Liveness::Running)
                .map(|r| format!("{} ({}, pid {} on {})", r.id, r.manifest, r.pid, r.host))
                .collect(),
        }
    })?))
}

/// The keys of the results gc keeps: each step's latest, those of each
/// workflow's last `keep_runs` runs, and everything upstream of them.
fn kept_keys(
    store: &Store,
    all: &BTreeMap<String, ResultRecord>,
    keep_runs: usize,
) -> BTreeSet<String> {
    let mut keep: BTreeSet<String> = store.all_states().into_iter().map(|r| r.key).collect();
    let mut by_manifest: BTreeMap<String, Vec<RunSummary>> = BTreeMap::new();
    for r in runs(store) {
        by_manifest.entry(r.manifest.clone()).or_default().push(r);
    }
    for list in by_manifest.values() {
        for r in list.iter().rev().take(keep_runs) {
            keep.extend(r.steps.iter().filter_map(|s| s.key.clone()));
        }
    }
    // Close over upstream results.
    let mut stack: Vec<String> = keep.iter().cloned().collect();
    while let Some(k) = stack.pop() {
        if let Some(r) = all.get(&k) {
            for inp in r.record.inputs.values() {
                if let Origin::Steps { outputs } = &inp.origin {
                    for u in outputs {
                        if keep.insert(u.key.clone()) {
                            stack.push(u.key.clone());
                        }
                    }
                }
            }
        }
    }
    keep
}

/// Counts `p` (`what` it is) as removed in `rep`, and removes it unless this is
/// a dry run.
fn remove_counted(p: PathBuf, what: &str, dry_run: bool, rep: &mut GcReport) {
    rep.freed_bytes += du(&p);
    rep.removed.push(format!("{what} {}", p.display()));
    if !dry_run {
        if p.is_dir() {
            let _ = store::remove_tree(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
}

/// gc in the store's own folders: resumable state of keys not kept, and work
/// directories of processes that are gone.
fn gc_own_dirs(
    store: &Store,
    keep: &BTreeSet<String>,
    dry_run: bool,
    rep: &mut GcReport,
) -> Result<(), MaintenanceError> {
    // Resumable state (training, a search's journal) of steps whose key no kept
    // run has: a changed step will never resume from it. Only key-named folders.
    let own = |name: &str| store.own_dir(name);
    if let Some(dir) = own("resume")? {
        for p in read_dir_sorted(&dir) {
            let key = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if store::is_hash(&key) && !keep.contains(&key) {
                remove_counted(p, "resume", dry_run, rep);
                rep.resume += 1;
            }
        }
    }
    // Work directories demix named, of processes that are gone.
    if let Some(dir) = own("tmp")? {
        for p in read_dir_sorted(&dir) {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(pid) = store::unique_name_pid(&name) else {
                continue;
            };
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                remove_counted(p, "tmp", dry_run, rep);
                rep.tmp += 1;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub objects: usize,
    pub bytes: u64,
    pub corrupt: Vec<CorruptObject>,
    /// Results built on a corrupt object, directly or further down: removed,
    /// so their steps run again ("manifest:step key").
    pub invalidated: Vec<String>,
    /// Records (results, states, runs, tree lists) that are not valid JSON of
    /// their kind: removed.
    pub corrupt_records: Vec<CorruptRecord>,
}

#[derive(Debug, Serialize)]
pub struct CorruptObject {
    pub hash: String,
    pub actual: String,
    pub path: PathBuf,
    /// Steps whose results held this object; their next run rebuilds it.
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CorruptRecord {
    pub path: PathBuf,
    pub reason: String,
}

/// Every JSON record under `dir/*/` (or `dir/` with `flat`) that does not parse
/// as `T`.
fn bad_records<T: serde::de::DeserializeOwned>(
    dir: &std::path::Path,
    flat: bool,
) -> Vec<CorruptRecord> {
    let files: Vec<PathBuf> = if flat {
        read_dir_sorted(dir)
    } else {
        read_dir_sorted(dir)
            .into_iter()
            .flat_map(|d| read_dir_sorted(&d))
            .collect()
    };
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .filter_map(|p| {
            let reason = match fs::read(&p) {
                Ok(b) => serde_json::from_slice::<T>(&b).err()?.to_string(),
                Err(e) => e.to_string(),
            };
            Some(CorruptRecord { path: p, reason })
        })
        .collect()
}

/// Re-hashes every object and reads every record. Corrupt objects and their
/// tree links are removed so the steps that made them are stale and rerun;
/// every result downstream of a corrupt object is removed too (it may have
/// consumed the bad bytes); corrupt records are removed and named.
pub fn verify(
    store: &Store,
    progress: &dyn Fn(usize, usize),
) -> Result<VerifyReport, MaintenanceError> {
    store.check_marker()?;
    let mut rep = VerifyReport::default();
    let records = [
        bad_records::<ResultRecord>(&store.root.join("results"), false),
        bad_records::<ResultRecord>(&store.root.join("state"), false),
        bad_records::<RunLog>(&store.runs_dir(), true),
        bad_records::<Vec<store::FileEntry>>(&store.root.join("trees"), false),
    ];
    for r in records.into_iter().flatten() {
        let _ = fs::remove_file(&r.path);
        rep.corrupt_records.push(r);
    }
    let objects = store.all_objects();
    let results = store.all_results();
    let mut poisoned: BTreeSet<String> = BTreeSet::new();
    for (i, (h, p)) in objects.iter().enumerate() {
        progress(i, objects.len());
        let actual =
            crate::hash::hash_file(p, &|_, _| {}).map_err(|source| MaintenanceError::Hash {
                path: p.clone(),
                source,
            })?;
        rep.objects += 1;
        rep.bytes += fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if &actual != h {
            let mut steps = BTreeSet::new();
            for r in &results {
                if let Some(f) = r.files.iter().find(|f| &f.hash == h) {
                    steps.insert(format!("{}:{}", r.manifest, r.step));
                    poisoned.insert(r.key.clone());
                    let link = store.tree_dir(&r.tree).join(&f.path);
                    store.stat.forget(&link);
                    let _ = fs::remove_file(&link);
                }
            }
            store.stat.forget(p);
            let _ = fs::remove_file(p);
            rep.corrupt.push(CorruptObject {
                hash: h.clone(),
                actual,
                path: p.clone(),
                steps: steps.into_iter().collect(),
            });
        }
    }
    // Everything downstream of a result that held a corrupt object.
    let holders = poisoned.clone();
    loop {
        let before = poisoned.len();
        for r in &results {
            if poisoned.contains(&r.key) {
                continue;
            }
            let consumed = r.record.inputs.values().any(|i| match &i.origin {
                Origin::Steps { outputs } => outputs.iter().any(|u| poisoned.contains(&u.key)),
                _ => false,
            });
            if consumed {
                poisoned.insert(r.key.clone());
            }
        }
        if poisoned.len() == before {
            break;
        }
    }
    for r in results
        .iter()
        .filter(|r| poisoned.contains(&r.key) && !holders.contains(&r.key))
    {
        let _ = fs::remove_file(store.result_path(&r.key));
        rep.invalidated.push(format!(
            "{}:{} {}",
            r.manifest,
            r.step,
            &r.key[..12.min(r.key.len())]
        ));
    }
    let _ = store.stat.save();
    Ok(rep)
}
