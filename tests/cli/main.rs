//! Integration tests: the real `demix` binary on real files in temporary directories.

mod harness;

mod engine;
mod invalid;
mod schema;
