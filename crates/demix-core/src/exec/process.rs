//! The local executor: each step in a child process of its own on this
//! machine, `PROGRAM internal exec-step SPEC --completion FILE`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::exec::Programs;
use crate::exec::executor::{Done, Executor, StepFuture};
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
    /// The process of each step started.
    pids: HashMap<NodeId, u32>,
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
    ) -> Result<StepFuture, String> {
        let base = crate::store::unique_name(&format!("{}-", &spec.key[..12]));
        let spec_path = self.specs.join(format!("{base}.json"));
        let done_path = self.specs.join(format!("{base}.done.json"));
        write_json_atomic(&spec_path, &spec).map_err(|e| format!("cannot write step spec: {e}"))?;
        let program = self
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
        if !gpus.is_empty() || spec.resources.gpus() > 0 {
            cmd.env("CUDA_VISIBLE_DEVICES", gpus.join(","));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        if let Some(pid) = child.id() {
            self.pids.insert(node, pid);
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
        for pid in nodes.iter().filter_map(|n| self.pids.get(n)) {
            // SAFETY: signals our own child; it cancels its step and exits.
            unsafe {
                libc::kill(*pid as i32, libc::SIGTERM);
            }
        }
    }
}
