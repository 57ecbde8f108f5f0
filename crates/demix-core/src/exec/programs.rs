//! The executables that run a step from its spec: the engine's own binary for
//! steps that need no libtorch, demix-worker for those that do. Both take
//! `internal exec-step SPEC` and `internal exec-batch DIR NAME...`.

use std::path::{Path, PathBuf};

use crate::kind::Runner;

/// The worker's file name, next to the engine binary.
pub const WORKER: &str = "demix-worker";

#[derive(Clone, Debug)]
pub struct Programs {
    pub engine: PathBuf,
    pub worker: PathBuf,
}

impl Programs {
    /// The engine is `DEMIX_EXE` or this executable; the worker `DEMIX_WORKER`
    /// or `demix-worker` beside the engine.
    pub fn locate() -> std::io::Result<Programs> {
        let engine = match std::env::var_os("DEMIX_EXE") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?,
        };
        let engine = std::path::absolute(&engine).unwrap_or(engine);
        let worker = std::env::var_os("DEMIX_WORKER")
            .map(PathBuf::from)
            .unwrap_or_else(|| engine.with_file_name(WORKER));
        let worker = std::path::absolute(&worker).unwrap_or(worker);
        Ok(Programs { engine, worker })
    }

    /// The program that runs a step of `kind` with this runner, or why there is none.
    pub fn for_runner(&self, runner: Runner, kind: &str) -> Result<&Path, MissingWorker> {
        match runner {
            Runner::Engine => Ok(&self.engine),
            Runner::Worker if self.worker.is_file() => Ok(&self.worker),
            Runner::Worker => Err(MissingWorker {
                kind: kind.to_string(),
                path: self.worker.clone(),
            }),
        }
    }
}

/// A step that needs libtorch, and no worker at `path` to run it.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "`{kind}` steps run in {WORKER}, the binary with libtorch, and there is none at {}: build it with `scripts/demix` (or `cargo build --release -p {WORKER}`), or point DEMIX_WORKER at it",
    path.display()
)]
pub struct MissingWorker {
    pub kind: String,
    pub path: PathBuf,
}

/// Why a step that needs libtorch cannot run.
pub fn missing_worker(kind: &str, path: &Path) -> String {
    MissingWorker {
        kind: kind.to_string(),
        path: path.to_path_buf(),
    }
    .to_string()
}
