//! demix: a declarative, content-addressed workflow engine for data-mixture search.
//!
//! The core (manifest, graph, store, plan, exec) knows nothing of the command line
//! and nothing of libtorch; step kinds plug in behind [`steps::StepKind`].

pub mod estimate;
pub mod exec;
pub mod formats;
pub mod graph;
pub mod hash;
pub mod key;
pub mod lineage;
pub mod maintenance;
pub mod manifest;
pub mod mix;
#[cfg(feature = "torch")]
pub mod ml;
pub mod outcome;
pub mod plan;
pub mod progress;
pub mod report;
pub mod steps;
pub mod store;
pub mod watch;

/// The engine's version, recorded with every result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
