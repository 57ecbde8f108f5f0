//! What the ML kinds' runs share (feature `torch`): a step's dataset inputs as
//! the ML library reads them, token shards kept in the store, the tokenizer's
//! hash, progress and errors in the engine's terms.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use demix_core::kind::{Progress, RunCtx, StepError};
use demix_core::manifest::template::{Ref, Split};
use demix_core::protocol::{DatasetInput, InputSpec};
use demix_ml as ml;
use demix_ml::data::TokenizeSpec;

/// An ML error as a step error; a cancellation stays one.
pub fn ml_err(e: ml::MlError) -> StepError {
    match e {
        ml::MlError::Cancelled => StepError::Cancelled,
        other => StepError::library(other),
    }
}

/// The ML library's progress as the engine shows it.
pub fn progress<'a>(ctx: &'a RunCtx) -> impl Fn(&ml::Progress) + 'a {
    move |p: &ml::Progress| {
        (ctx.progress)(Progress {
            done: p.current,
            total: (p.total > 0).then_some(p.total),
            unit: p.unit.to_string(),
            message: Some(format!("{} {}", p.stage, p.message).trim().to_string()),
        })
    }
}

pub fn dataset_key(name: &str, split: Split) -> String {
    Ref::Dataset {
        name: name.to_string(),
        split,
    }
    .to_string()
}

/// A dataset split the step reads, with how to read it.
pub fn dataset<'a>(
    ctx: &'a RunCtx,
    name: &str,
    split: Split,
) -> Result<(&'a InputSpec, &'a DatasetInput), StepError> {
    let key = dataset_key(name, split);
    let inp = ctx
        .spec
        .inputs
        .get(&key)
        .ok_or_else(|| StepError::Failed(format!("dataset input {key} was not resolved")))?;
    let d = inp
        .dataset
        .as_ref()
        .ok_or_else(|| StepError::Failed(format!("{key} carries no dataset description")))?;
    Ok((inp, d))
}

/// The token shard of a dataset split under a tokenizer, content-addressed in the
/// store (`shards/<hash>/`) so every step that needs it shares one copy.
pub fn shard(
    ctx: &RunCtx,
    name: &str,
    split: Split,
    tok: &ml::tokenizer::Tok,
    tok_hash: &str,
) -> Result<PathBuf, StepError> {
    let (inp, d) = dataset(ctx, name, split)?;
    let key = dataset_key(name, split);
    let data_hash = &ctx
        .spec
        .record
        .inputs
        .get(&key)
        .ok_or_else(|| StepError::Failed(format!("no content hash for {key}")))?
        .hash;
    let id = demix_core::hash::hex(&blake3::hash(
        format!("{}\n{data_hash}\n{tok_hash}", ml::data::SHARD_FORMAT).as_bytes(),
    ));
    let store = ctx.store;
    let dir = store.root.join("shards").join(&id);
    let _lock = store.lock(&format!("shard-{id}"), &|| {})?;
    if dir.join("shard.json").is_file() && ml::data::Shard::open(&dir).is_ok() {
        return Ok(dir);
    }
    let (srcs, split_spec) = d.sources(&inp.paths);
    let spec = TokenizeSpec {
        split: split_spec,
        ..Default::default()
    };
    std::fs::create_dir_all(dir.parent().expect("has a parent"))
        .map_err(StepError::io("creating the shard folder"))?;
    let meta = ml::data::tokenize_to_shard(&srcs, &spec, tok, &dir, &progress(ctx), ctx.cancel)
        .map_err(ml_err)?;
    if meta.documents == 0 {
        let _ = demix_core::store::remove_tree(&dir);
        return Err(StepError::Failed(format!(
            "dataset `{name}` has no {} documents ({} file(s), every one empty{})",
            match split {
                Split::Train => "training",
                Split::Validation => "validation",
            },
            inp.paths.len(),
            if d.split_fraction.is_some() {
                ", or none held out by its validation_fraction"
            } else {
                ""
            }
        )));
    }
    Ok(dir)
}

/// The first path of an input.
pub fn one_path<'a>(ctx: &'a RunCtx, key: &str) -> Result<&'a Path, StepError> {
    ctx.input(key)?
        .first()
        .map(PathBuf::as_path)
        .ok_or_else(|| StepError::Failed(format!("input `{key}` has no path")))
}

/// The tokenizer's content hash: from the key record when it is an input, else hashed.
pub fn tokenizer_hash(ctx: &RunCtx, key: Option<&str>, path: &Path) -> Result<String, StepError> {
    match key.and_then(|k| ctx.spec.record.inputs.get(k)) {
        Some(r) => Ok(r.hash.clone()),
        None => demix_core::hash::hash_file(path, &|_, _| {})
            .map_err(StepError::io(format!("hashing {}", path.display()))),
    }
}

/// The targets' validation shards under a tokenizer.
pub fn validation_shards(
    ctx: &RunCtx,
    targets: &[String],
    tok: &ml::tokenizer::Tok,
    tok_hash: &str,
) -> Result<ml::evaluate::EvalPaths, StepError> {
    let mut validation = BTreeMap::new();
    for t in targets {
        validation.insert(t.clone(), shard(ctx, t, Split::Validation, tok, tok_hash)?);
    }
    Ok(ml::evaluate::EvalPaths {
        validation,
        tasks: BTreeMap::new(),
        output: None,
    })
}

/// The sampler's prior: each candidate's training tokens under the tokenizer.
pub fn token_counts(
    ctx: &RunCtx,
    candidates: &[String],
    tok: &ml::tokenizer::Tok,
    tok_hash: &str,
) -> Result<Vec<f64>, StepError> {
    let mut counts = Vec::new();
    for c in candidates {
        let dir = shard(ctx, c, Split::Train, tok, tok_hash)?;
        let meta = ml::data::Shard::open(&dir).map_err(ml_err)?.meta;
        counts.push(meta.tokens as f64);
    }
    Ok(counts)
}

/// Appends a line to the step's log.
pub fn log_line(ctx: &RunCtx, line: &str) {
    use std::io::Write;
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.log)
        .and_then(|mut l| writeln!(l, "{line}"));
}
