//! Executing a plan: the scheduler, the executors that run its steps (child
//! processes, Slurm jobs), the run loop that ties them, and running one step
//! from its spec.

pub mod child;
pub mod executor;
pub mod local;
pub mod process;
pub mod programs;
pub mod scheduler;
pub mod slurm;

pub use executor::{Done, Executor};
pub use local::{Control, Outcome, RunOptions, RunSummary, StepReport, run, run_controlled};
pub use programs::Programs;
pub use scheduler::Scheduler;
