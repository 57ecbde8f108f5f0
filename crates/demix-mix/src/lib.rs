//! DeMix mixture search foundations, free of libtorch (see
//! `shared/design/method.md`): streaming checkpoint merges, mixture sampling, a
//! score predictor, rank statistics and the round logic of the search.
//!
//! Everything here builds and tests with plain `cargo test`; the step kinds
//! (`merge`, `search`) and the libtorch evaluation wire these together.

pub mod checkpoint;
pub mod gbdt;
pub mod merge;
pub mod predict;
pub mod ridge;
pub mod sampler;
pub mod search;
pub mod stats;
pub mod validate;
pub mod verdict;

pub use checkpoint::{Checkpoint, CheckpointError, Dtype};
pub use merge::{Components, MergeError, MergeSpec, MergedTensor, Method};
pub use predict::{PredictError, Predictor, PredictorConfig};
pub use sampler::{Pool, SamplerConfig};
pub use search::{Search, SearchConfig, SearchResult};

/// The version recorded in what this crate writes (`merge.json`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
