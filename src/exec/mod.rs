//! Executing a plan: the scheduler, and running one step from its spec.

pub mod child;
pub mod local;
pub mod slurm;
pub mod spec;

pub use local::{Control, Outcome, RunOptions, RunSummary, StepReport, run, run_controlled};
