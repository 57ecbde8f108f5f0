//! The local executor: each step in a child process of its own on this
//! machine, `PROGRAM internal exec-step SPEC --completion FILE`; a
//! data-parallel step as one such process per rank under Open MPI's `mpirun`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::exec::Programs;
use crate::exec::executor::{Done, Executor, StartError, StepFuture};
use crate::graph::NodeId;
use crate::progress::Reporter;
use crate::protocol::{Completion, StepSpec};
use crate::store::{Store, write_json_atomic};

/// Child processes on this machine.
pub struct Processes {
    /// Where specs and completion records go while their steps run.
    specs: PathBuf,
    programs: Programs,
    jobs: usize,
    rep: Arc<Reporter>,
    /// The process of each step started, and whether it is mpirun.
    pids: HashMap<NodeId, (u32, bool)>,
}

impl Processes {
    /// At most `jobs` steps at once.
    pub fn new(store: &Store, programs: Programs, jobs: usize, rep: Arc<Reporter>) -> Processes {
        Processes {
            specs: store.tmp_dir().join("specs"),
            programs,
            jobs,
            rep,
            pids: HashMap::new(),
        }
    }
}

impl Executor for Processes {
    fn step_cap(&self) -> usize {
        self.jobs.max(1)
    }

    fn runs_here(&self) -> bool {
        true
    }

    fn start(
        &mut self,
        node: NodeId,
        spec: StepSpec,
        gpus: &[String],
    ) -> Result<StepFuture, StartError> {
        let base = crate::store::unique_name(&format!("{}-", &spec.key[..12]));
        let spec_path = self.specs.join(format!("{base}.json"));
        let done_path = self.specs.join(format!("{base}.done.json"));
        write_json_atomic(&spec_path, &spec).map_err(StartError::WriteSpec)?;
        let program = self
            .programs
            .for_runner(spec.runner, &spec.kind)?
            .to_path_buf();
        let mut cmd = launcher(&program, &spec, gpus)?;
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
        if !gpus.is_empty() || spec.resources.gpus() > 0 {
            cmd.env("CUDA_VISIBLE_DEVICES", gpus.join(","));
        }
        let program = if spec.ranks > 1 {
            PathBuf::from(format!(
                "mpirun ({} ranks of {})",
                spec.ranks,
                program.display()
            ))
        } else {
            program
        };
        let mut child = cmd
            .spawn()
            .map_err(|source| StartError::Spawn { program, source })?;
        if let Some(pid) = child.id() {
            self.pids.insert(node, (pid, spec.ranks > 1));
        }
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let step = spec.step;
        let rep = self.rep.clone();
        Ok(Box::pin(async move {
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
            Done {
                completion,
                stderr: err,
                status,
            }
        }))
    }

    fn cancel(&mut self, nodes: &[NodeId]) {
        for &(pid, mpirun) in nodes.iter().filter_map(|n| self.pids.get(n)) {
            // The ranks of a data-parallel step are mpirun's children, each in
            // a process group of its own: they are told directly, so they stop
            // together and save their state, and mpirun ends when they have
            // (signalled itself, it takes many seconds to).
            let ranks = if mpirun { children(pid) } else { Vec::new() };
            for &p in if ranks.is_empty() {
                std::slice::from_ref(&pid)
            } else {
                &ranks[..]
            } {
                // SAFETY: signals our own child, or a child of it; it cancels
                // its step and exits.
                unsafe {
                    libc::kill(p as i32, libc::SIGTERM);
                }
            }
        }
    }
}

/// The command that starts a step's process: the program itself, or for a
/// data-parallel step, `mpirun` starting one per rank (each rank pins one of
/// the step's GPUs and takes its share of the CPUs).
fn launcher(
    program: &Path,
    spec: &StepSpec,
    gpus: &[String],
) -> Result<tokio::process::Command, StartError> {
    let nodes = spec.resources.nodes();
    if nodes > 1 {
        return Err(StartError::TooManyNodes {
            step: spec.step.clone(),
            nodes,
        });
    }
    if spec.ranks <= 1 {
        return Ok(tokio::process::Command::new(program));
    }
    let mpirun = mpirun().ok_or_else(|| StartError::NoMpirun {
        step: spec.step.clone(),
        ranks: spec.ranks,
    })?;
    let mut c = tokio::process::Command::new(mpirun);
    c.args([
        "-np",
        &spec.ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    // Open MPI refuses to start as root unless told; containers and CI run as root.
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env(
        "DEMIX_RANK_THREADS",
        (spec.resources.cpus() / spec.ranks).max(1).to_string(),
    );
    if !gpus.is_empty() {
        c.env("DEMIX_RANK_DEVICES", gpus.join(","));
    }
    c.arg(program);
    Ok(c)
}

/// `DEMIX_MPIRUN`, else `mpirun` on PATH.
fn mpirun() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DEMIX_MPIRUN") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("mpirun"))
        .find(|p| p.is_file())
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}
