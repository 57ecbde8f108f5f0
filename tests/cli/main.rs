//! Integration tests: the real `demix` binary on real files in temporary directories.

mod harness;

mod data;
mod engine;
mod invalid;
mod mix;
mod reliability;
mod report;
mod schema;
mod science;
mod slurm;
mod watch;

#[cfg(feature = "torch")]
mod ml_common;
#[cfg(feature = "torch")]
mod ml_hf_check;
#[cfg(feature = "torch")]
mod ml_link;
#[cfg(feature = "torch")]
mod ml_reliability;
#[cfg(feature = "torch")]
mod ml_train_eval;
#[cfg(feature = "torch")]
mod ml_validate;
#[cfg(feature = "torch")]
mod ml_workflow;
