//! Integration tests: the real `demix` binary on real files in temporary directories.

mod harness;

mod data;
mod engine;
mod invalid;
mod lineage;
mod outcome;
mod reliability;
mod report;
mod schema;
mod science;
mod slurm;
mod watch;

mod link;
mod ml_parallel;
mod ml_reliability;
mod ml_validate;
mod ml_workflow;
