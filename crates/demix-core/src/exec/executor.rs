//! What runs a step once the scheduler starts it: a child process on this
//! machine ([`super::process::Processes`]) or a Slurm job
//! ([`super::slurm::Slurm`]). The run loop holds one as a `Box<dyn Executor>`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::graph::NodeId;
use crate::protocol::{Completion, StepSpec};

/// What a step left when it ended: the run loop turns it into the step's outcome.
#[derive(Debug)]
pub struct Done {
    /// The completion record the step wrote, if it got that far.
    pub completion: Option<Completion>,
    /// The step process's standard error (or why it never ran).
    pub stderr: String,
    /// The step process's exit status.
    pub status: Option<i32>,
}

/// A started step: it resolves when the step has ended.
pub type StepFuture = Pin<Box<dyn Future<Output = Done> + Send + 'static>>;

/// Why a step could not be started (it never ran).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A dataset input's files, as [`crate::graph::dataset_files`] resolves them.
    #[error("{0}")]
    Inputs(String),
    #[error(transparent)]
    MissingWorker(#[from] super::programs::MissingWorker),
    #[error("cannot write step spec: {0}")]
    WriteSpec(#[source] std::io::Error),
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`{step}` asks for {nodes} nodes, and this machine is one: run it with `--executor slurm`"
    )]
    TooManyNodes { step: String, nodes: u32 },
    #[error(
        "`{step}` trains on {ranks} ranks, which Open MPI's `mpirun` starts, and there is none on PATH: install Open MPI (Debian: openmpi-bin) or set DEMIX_MPIRUN"
    )]
    NoMpirun { step: String, ranks: u32 },
}

/// Runs the steps the scheduler starts.
pub trait Executor: Send {
    /// Steps that may be in flight at once.
    fn step_cap(&self) -> usize;

    /// Whether steps run on this machine, so that its CPUs, memory and GPUs
    /// limit what runs at once (Slurm's jobs run on the cluster's nodes).
    fn runs_here(&self) -> bool;

    /// Starts node `node` from its spec, on these GPU ids.
    fn start(
        &mut self,
        node: NodeId,
        spec: StepSpec,
        gpus: &[String],
    ) -> Result<StepFuture, StartError>;

    /// Asks these running steps to cancel; each still ends through its future.
    fn cancel(&mut self, nodes: &[NodeId]);

    /// Sends off the steps started since the last flush (once per scheduling round).
    fn flush(&mut self) {}

    /// Cleans up once every step has ended.
    fn finish(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}
