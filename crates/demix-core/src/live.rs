//! Runs in progress, visible from other processes: each run keeps a record
//! in `runs/live/<id>.json` (its pid, host, start, the steps running with
//! their progress, a heartbeat), rewritten every few seconds and removed when
//! the run ends. `status` shows the steps as `running`, `log` lists the run,
//! and a record whose process is gone, or whose heartbeat stopped, reads as
//! stale instead of running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kind::Progress;
use crate::store::{Store, read_dir_sorted, write_json_atomic};

/// How often a run rewrites its record.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A record not rewritten for this long belongs to a run that stopped without
/// removing it (a SIGKILL, a power cut) or is wedged.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// One run in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveRun {
    pub id: String,
    pub manifest: String,
    pub manifest_path: PathBuf,
    pub pid: u32,
    pub host: String,
    pub started: jiff::Timestamp,
    pub heartbeat: jiff::Timestamp,
    pub command: Vec<String>,
    /// The steps running now, by id.
    pub steps: BTreeMap<String, LiveStep>,
}

/// A running step and its last progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveStep {
    pub started: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

impl LiveStep {
    /// Its last progress, as [`describe`] puts it.
    pub fn describe(&self) -> String {
        self.progress.as_ref().map(describe).unwrap_or_default()
    }
}

/// `42% 1100/2600 tokens step 30/64 loss 5.2` (what is known of it).
pub fn describe(p: &Progress) -> String {
    {
        let mut s = match p.total {
            Some(t) if t > 0 => format!(
                "{:.0}% {}/{t} {}",
                100.0 * p.done as f64 / t as f64,
                p.done,
                p.unit
            ),
            _ if p.done > 0 => format!("{} {}", p.done, p.unit),
            _ => String::new(),
        };
        if let Some(m) = &p.message {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(m);
        }
        s.trim().to_string()
    }
}

/// Whether a record's run is still going, as far as this machine can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Running,
    /// Its process is gone (same host) or its heartbeat stopped.
    Stale,
}

impl LiveRun {
    /// Seconds it has run: until now, or until its last heartbeat if stale.
    pub fn elapsed_s(&self) -> f64 {
        let end = match self.liveness() {
            Liveness::Running => jiff::Timestamp::now(),
            Liveness::Stale => self.heartbeat,
        };
        (end.as_millisecond() - self.started.as_millisecond()) as f64 / 1000.0
    }

    pub fn liveness(&self) -> Liveness {
        let same_host = self.host == crate::exec::child::hostname();
        if same_host && !pid_alive(self.pid) {
            return Liveness::Stale;
        }
        let age = jiff::Timestamp::now().duration_since(self.heartbeat);
        if age.as_secs() >= STALE_AFTER.as_secs() as i64 {
            Liveness::Stale
        } else {
            Liveness::Running
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    // /proc/<pid> exists for a live process (or a zombie, which a running
    // demix reaps); other systems: trust the heartbeat.
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

pub fn live_dir(store: &Store) -> PathBuf {
    store.runs_dir().join("live")
}

/// The records of runs in progress (or that died without removing theirs),
/// oldest first; unreadable records are skipped (a run rewrites its record
/// atomically, so one is unreadable only if damaged).
pub fn live_runs(store: &Store) -> Vec<LiveRun> {
    let mut runs: Vec<LiveRun> = read_dir_sorted(&live_dir(store))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| std::fs::read(&p).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    runs.sort_by_key(|r| r.started);
    runs
}

/// The record a run keeps while it runs.
pub struct LiveRecord {
    path: PathBuf,
    run: LiveRun,
}

impl LiveRecord {
    pub fn new(store: &Store, mut run: LiveRun) -> LiveRecord {
        run.pid = std::process::id();
        let path = live_dir(store).join(format!("{}.json", run.id));
        LiveRecord { path, run }
    }

    /// Rewrites the record with the steps running now and a fresh heartbeat.
    /// Failing to write it never fails the run.
    pub fn beat(&mut self, steps: BTreeMap<String, LiveStep>) {
        self.run.steps = steps;
        self.run.heartbeat = jiff::Timestamp::now();
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = write_json_atomic(&self.path, &self.run);
    }

    /// The run ended: its record goes (its run log takes over).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
