//! The demix engine: manifests, the step graph, the content-addressed store,
//! plans and cache keys, the scheduler and its executors, lineage, watch.
//!
//! It knows nothing of the command line and nothing of libtorch: step kinds
//! plug in behind [`kind::StepKind`] through a [`kind::Registry`], and a step
//! runs from its serialized [`protocol::StepSpec`] in a process of its own.

pub mod exec;
pub mod graph;
pub mod hash;
pub mod key;
pub mod kind;
pub mod lineage;
pub mod live;
pub mod maintenance;
pub mod manifest;
pub mod outcome;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod store;
pub mod watch;

/// The engine's version, recorded with every result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
