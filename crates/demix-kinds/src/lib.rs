//! The step kinds: one module per `kind:`, holding its fields, its checks and
//! its run. Every build plans every kind; the ML kinds run only where the
//! `torch` feature is on (demix-worker), and say so elsewhere.

pub mod card;
pub mod command;
mod cost;
pub mod evaluate;
mod fields;
pub mod merge;
#[cfg(feature = "torch")]
mod ml_run;
#[cfg(feature = "torch")]
mod proxies;
pub mod report;
pub mod sample;
pub mod search;
pub mod tokenizer;
pub mod train;
pub mod validate;

use demix_core::kind::{Registry, StepKind};

static KINDS: [&'static dyn StepKind; 9] = [
    &command::Command,
    &tokenizer::Tokenizer,
    &train::Train,
    &evaluate::Evaluate,
    &merge::Merge,
    &sample::Sample,
    &search::Search,
    &validate::Validate,
    &report::ReportKind,
];

/// Every kind, in the order the schema lists them.
pub fn registry() -> Registry {
    Registry::new(KINDS.to_vec())
}
