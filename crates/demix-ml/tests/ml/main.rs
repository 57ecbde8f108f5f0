//! The ML library through its public API: tokenizer, shards, the model, training
//! and evaluation on real libtorch, and a check against Hugging Face transformers.

mod common;
mod eval_batch;
mod hf_check;
mod train_eval;
