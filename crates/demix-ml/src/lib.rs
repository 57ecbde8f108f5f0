//! DeMix ML library: data, tokenizer, Qwen3 model, AdamW, training and evaluation
//! on libtorch via `tch`.
//!
//! Every long-running function takes a progress callback and a cancellation
//! flag; every spec is a serde struct that the engine fills from the manifest.

pub mod checkpoint;
pub mod corpus;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod evaluate;
mod ffi;
pub mod model;
pub mod optim;
pub mod progress;

pub mod tokenizer;
pub mod train;
pub mod util;

pub use error::{MlError, Result};
pub use progress::Progress;
