//! The ML library through its public API: tokenizer, shards, the model, training
//! and evaluation on real libtorch, and a check against Hugging Face transformers.

mod common;
mod hf_check;
mod train_eval;
