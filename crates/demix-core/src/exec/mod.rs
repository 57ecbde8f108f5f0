//! Executing a plan: the scheduler, and running one step from its spec.

pub mod child;
pub mod local;
pub mod programs;
pub mod slurm;

pub use programs::Programs;
pub use local::{Control, Outcome, RunOptions, RunSummary, StepReport, run, run_controlled};
