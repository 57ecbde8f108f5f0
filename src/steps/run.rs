//! Running the ML step kinds through libtorch (feature `torch`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::ml::{DataField, EvalFields, ModelField, TokenizerFields, TrainFields};
use super::{Progress, RunCtx, StepError};
use crate::exec::spec::{DatasetInput, InputSpec};
use crate::manifest::DataFormat;
use crate::manifest::template::{Ref, Split};
use crate::ml;
use crate::ml::data::{Format, SourceSpec, SplitPart, SplitSpec, TokenizeSpec};

fn ml_err(e: ml::MlError) -> StepError {
    match e {
        ml::MlError::Cancelled => StepError::Cancelled,
        other => StepError::Failed(other.to_string()),
    }
}

fn fields<T: serde::de::DeserializeOwned>(ctx: &RunCtx) -> Result<T, StepError> {
    serde_json::from_value(ctx.spec.params.clone())
        .map_err(|e| StepError::Failed(format!("bad step spec: {e}")))
}

fn progress<'a>(ctx: &'a RunCtx) -> impl Fn(&ml::Progress) + 'a {
    move |p: &ml::Progress| {
        (ctx.progress)(Progress {
            done: p.current,
            total: (p.total > 0).then_some(p.total),
            unit: p.unit.to_string(),
            message: Some(format!("{} {}", p.stage, p.message).trim().to_string()),
        })
    }
}

fn dataset_key(name: &str, split: Split) -> String {
    Ref::Dataset {
        name: name.to_string(),
        split,
    }
    .to_string()
}

fn dataset<'a>(
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

/// The documents of a dataset split, as the ML library reads them.
fn sources(inp: &InputSpec, d: &DatasetInput) -> (Vec<SourceSpec>, SplitSpec) {
    let format = match d.format {
        DataFormat::Auto => Format::Auto,
        DataFormat::Text => Format::Text,
        DataFormat::Jsonl => Format::Jsonl,
        DataFormat::Parquet => Format::Parquet,
    };
    let srcs = inp
        .paths
        .iter()
        .map(|p| {
            let mut s = SourceSpec::new(p);
            s.format = format;
            s.text_field = d.field.clone();
            s
        })
        .collect();
    let split = match d.split_fraction {
        // No validation files: split this dataset's files by document.
        Some(f) => SplitSpec {
            part: if d.split == Split::Train {
                SplitPart::Train
            } else {
                SplitPart::Validation
            },
            validation_fraction: f,
            seed: 0,
        },
        None => SplitSpec {
            part: SplitPart::All,
            validation_fraction: 0.0,
            seed: 0,
        },
    };
    (srcs, split)
}

/// The token shard of a dataset split under a tokenizer, content-addressed in the
/// store (`shards/<hash>/`) so every step that needs it shares one copy.
fn shard(
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
    let id = crate::hash::hex(&blake3::hash(
        format!("{}\n{data_hash}\n{tok_hash}", ml::data::SHARD_FORMAT).as_bytes(),
    ));
    let store = ctx.store;
    let dir = store.root.join("shards").join(&id);
    let _lock = store
        .lock(&format!("shard-{id}"), &|| {})
        .map_err(|e| StepError::Failed(e.to_string()))?;
    if dir.join("shard.json").is_file() && ml::data::Shard::open(&dir).is_ok() {
        return Ok(dir);
    }
    let (srcs, split_spec) = sources(inp, d);
    let spec = TokenizeSpec {
        split: split_spec,
        ..Default::default()
    };
    std::fs::create_dir_all(dir.parent().expect("has a parent"))
        .map_err(StepError::io("creating the shard folder"))?;
    let meta = ml::data::tokenize_to_shard(&srcs, &spec, tok, &dir, &progress(ctx), ctx.cancel)
        .map_err(ml_err)?;
    if meta.documents == 0 {
        let _ = crate::store::remove_tree(&dir);
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

fn one_path<'a>(ctx: &'a RunCtx, key: &str) -> Result<&'a Path, StepError> {
    ctx.input(key)?
        .first()
        .map(PathBuf::as_path)
        .ok_or_else(|| StepError::Failed(format!("input `{key}` has no path")))
}

/// The tokenizer's content hash: from the key record when it is an input, else hashed.
fn tokenizer_hash(ctx: &RunCtx, key: Option<&str>, path: &Path) -> Result<String, StepError> {
    match key.and_then(|k| ctx.spec.record.inputs.get(k)) {
        Some(r) => Ok(r.hash.clone()),
        None => crate::hash::hash_file(path, &|_, _| {})
            .map_err(StepError::io(format!("hashing {}", path.display()))),
    }
}

pub fn tokenizer(ctx: &RunCtx) -> Result<(), StepError> {
    let f: TokenizerFields = fields(ctx)?;
    let out = ctx.out_dir.join("tokenizer.json");
    if let Some(file) = &f.file {
        let src = one_path(ctx, file)?;
        ml::tokenizer::Tok::load(src).map_err(ml_err)?;
        std::fs::copy(src, &out).map_err(StepError::io(format!("copying {}", src.display())))?;
        return Ok(());
    }
    let mut datasets = Vec::new();
    for name in &f.datasets {
        let (inp, d) = dataset(ctx, name, Split::Train)?;
        let (sources, split) = sources(inp, d);
        datasets.push(ml::tokenizer::TokenizerSource {
            name: name.clone(),
            sources,
            split,
            share: f.shares.get(name).copied().unwrap_or(1.0),
        });
    }
    let mut spec = ml::tokenizer::TokenizerSpec {
        vocab_size: f.vocab_size as usize,
        min_frequency: f.min_frequency,
        max_bytes: f.max_bytes,
        seed: f.seed,
        ..Default::default()
    };
    if let Some(s) = f.special_tokens {
        spec.special_tokens = s;
    }
    let (_, sample) =
        ml::tokenizer::train_tokenizer(&datasets, &spec, &out, &progress(ctx), ctx.cancel)
            .map_err(ml_err)?;
    super::write_json(ctx, "tokenizer-sample.json", &sample)
}

fn model_config(m: &ModelField, vocab: usize) -> Result<Value, StepError> {
    Ok(match m {
        ModelField::Preset(_) => {
            let mut c = ml::model::Qwen3Config::qwen3_1_7b();
            c.vocab_size = vocab as i64;
            serde_json::to_value(c).expect("serializes")
        }
        ModelField::Config(c) => {
            let mut v = json!({
                "vocab_size": c.vocab_size.map_or(vocab as u64, u64::from),
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_key_value_heads,
                "head_dim": c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
                "tie_word_embeddings": c.tie_word_embeddings.unwrap_or(true),
            });
            let o = v.as_object_mut().expect("object");
            if let Some(x) = c.max_position_embeddings {
                o.insert("max_position_embeddings".into(), json!(x));
            }
            if let Some(x) = c.rope_theta {
                o.insert("rope_theta".into(), json!(x));
            }
            if let Some(x) = c.rms_norm_eps {
                o.insert("rms_norm_eps".into(), json!(x));
            }
            v
        }
    })
}

pub fn train(ctx: &RunCtx) -> Result<(), StepError> {
    let f: TrainFields = fields(ctx)?;
    let store = ctx.store;
    let init = f.init.as_deref().map(|k| one_path(ctx, k)).transpose()?;
    let tok_path: PathBuf = match (&f.tokenizer, init) {
        (Some(k), _) => one_path(ctx, k)?.to_path_buf(),
        (None, Some(dir)) => dir.join("tokenizer.json"),
        (None, None) => return Err(StepError::Failed("no tokenizer".into())),
    };
    let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
    let tok_hash = tokenizer_hash(ctx, f.tokenizer.as_deref(), &tok_path)?;
    let data = match (&f.data, &f.mixture) {
        (Some(d), _) => d.clone(),
        (None, Some(m)) => {
            let p = one_path(ctx, m)?;
            let w = read_mixture(p, f.pick)?;
            if let Some(bad) = w.keys().find(|k| !f.datasets.contains(k)) {
                return Err(StepError::Failed(format!(
                    "{}: the mixture weights `{bad}`, which is not in `datasets`",
                    p.display()
                )));
            }
            // The same rule as a mixture written in the manifest.
            if let Some((name, x)) = w.iter().find(|(_, x)| !(x.is_finite() && **x >= 0.0)) {
                return Err(StepError::Failed(format!(
                    "{}: mixture weight of `{name}` must be a finite number >= 0, not {x}",
                    p.display()
                )));
            }
            let mut w: BTreeMap<String, f64> = w.into_iter().filter(|(_, x)| *x > 0.0).collect();
            let total: f64 = w.values().sum();
            if !(total > 0.0 && total.is_finite()) {
                return Err(StepError::Failed(format!(
                    "{}: the mixture's weights do not add up to a positive number",
                    p.display()
                )));
            }
            if let Some(g) = &f.general {
                // The components' recipe: general data at share beta, the mixture the rest.
                let beta = f.beta.unwrap_or(0.5);
                w.values_mut().for_each(|x| *x *= (1.0 - beta) / total);
                if beta > 0.0 {
                    w.insert(g.clone(), beta);
                }
            }
            DataField::Weights(w)
        }
        (None, None) => return Err(StepError::Failed("no mixture".into())),
    };
    let (mix, names): (Value, Vec<String>) = match &data {
        DataField::Weights(w) => (json!(w), w.keys().cloned().collect()),
        DataField::Component {
            candidate,
            general,
            beta,
        } => {
            let mut c = Map::new();
            c.insert("candidate".into(), json!(candidate));
            c.insert("general".into(), json!(general));
            if let Some(b) = beta {
                c.insert("beta".into(), json!(b));
            }
            (Value::Object(c), vec![candidate.clone(), general.clone()])
        }
    };
    let mut shards = BTreeMap::new();
    for n in names {
        if let std::collections::btree_map::Entry::Vacant(e) = shards.entry(n) {
            let dir = shard(ctx, e.key(), Split::Train, &tok, &tok_hash)?;
            e.insert(dir);
        }
    }
    let mut spec = Map::new();
    match (&f.model, init) {
        (Some(m), _) => {
            spec.insert("model".into(), model_config(m, tok.vocab_size())?);
        }
        (None, Some(dir)) => {
            spec.insert("init_from".into(), json!(dir));
        }
        (None, None) => unreachable!("checked when planned"),
    }
    spec.insert("seed".into(), json!(f.seed));
    spec.insert("data".into(), mix);
    spec.insert("tokens".into(), json!(f.tokens));
    spec.insert("batch_size".into(), json!(f.batch_size));
    spec.insert("seq_len".into(), json!(f.seq_len));
    spec.insert("checkpoints".into(), json!(f.checkpoints));
    let optional = [
        ("micro_batch_size", f.micro_batch_size.map(|x| json!(x))),
        ("lr", f.lr.map(|x| json!(x))),
        ("min_lr_ratio", f.min_lr_ratio.map(|x| json!(x))),
        ("warmup_tokens", f.warmup_tokens.map(|x| json!(x))),
        ("warmup_fraction", f.warmup_fraction.map(|x| json!(x))),
        ("weight_decay", f.weight_decay.map(|x| json!(x))),
        ("betas", f.betas.map(|x| json!(x))),
        ("eps", f.eps.map(|x| json!(x))),
        ("grad_clip", f.grad_clip.map(|x| json!(x))),
        ("device", f.device.as_ref().map(|x| json!(x))),
        ("threads", f.threads.map(|x| json!(x))),
        ("precision", f.precision.as_ref().map(|x| json!(x))),
        ("state_every_steps", f.state_every_steps.map(|x| json!(x))),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            spec.insert(k.into(), v);
        }
    }
    let spec: ml::train::TrainSpec = serde_json::from_value(Value::Object(spec))
        .map_err(|e| StepError::Failed(format!("bad training spec: {e}")))?;
    // The resumable state lives in the store by key, so a killed or cancelled run
    // picks up where it stopped; it is removed once the result is committed.
    let resume = store.root.join("resume").join(&ctx.spec.key);
    std::fs::create_dir_all(&resume).map_err(StepError::io("creating the resume folder"))?;
    let paths = ml::train::TrainPaths {
        shards,
        output: ctx.out_dir.join("checkpoint"),
        checkpoints_dir: ctx.out_dir.join("checkpoints"),
        state_dir: resume.join("state"),
        metrics: resume.join("metrics.jsonl"),
        tokenizer: Some(tok_path),
    };
    let summary = ml::train::train(&spec, &paths, &progress(ctx), ctx.cancel).map_err(ml_err)?;
    std::fs::copy(&paths.metrics, ctx.out_dir.join("metrics.jsonl"))
        .map_err(StepError::io("copying metrics"))?;
    let _ = crate::store::remove_tree(&resume);
    let line = serde_json::to_string(&summary).unwrap_or_default();
    use std::io::Write;
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(ctx.log)
        .and_then(|mut l| writeln!(l, "summary {line}"));
    Ok(())
}

/// A mixture file: an object of weights by dataset, or (with `pick`) a list of them.
fn read_mixture(p: &Path, pick: Option<u64>) -> Result<BTreeMap<String, f64>, StepError> {
    let v: Value = serde_json::from_slice(
        &std::fs::read(p).map_err(StepError::io(format!("reading {}", p.display())))?,
    )
    .map_err(|e| StepError::Failed(format!("{}: not JSON: {e}", p.display())))?;
    let one = match (v, pick) {
        (Value::Array(list), Some(i)) => {
            let n = list.len();
            list.into_iter().nth(i as usize).ok_or_else(|| {
                StepError::Failed(format!(
                    "{}: `pick: {i}` but the file holds {n} mixtures",
                    p.display()
                ))
            })?
        }
        (Value::Array(_), None) => {
            return Err(StepError::Failed(format!(
                "{}: a list of mixtures; say which with `pick`",
                p.display()
            )));
        }
        (v, Some(_)) => {
            return Err(StepError::Failed(format!(
                "{}: `pick` needs a list of mixtures, and this is {}",
                p.display(),
                if v.is_object() {
                    "one mixture"
                } else {
                    "not a mixture"
                }
            )));
        }
        (v, None) => v,
    };
    serde_json::from_value(one).map_err(|e| {
        StepError::Failed(format!(
            "{}: not a mixture (an object of weights by dataset): {e}",
            p.display()
        ))
    })
}

pub fn evaluate(ctx: &RunCtx) -> Result<(), StepError> {
    let f: EvalFields = fields(ctx)?;
    let ckpt = one_path(ctx, &f.checkpoint)?.to_path_buf();
    let tok_path = ckpt.join("tokenizer.json");
    let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
    let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
    let mut validation = BTreeMap::new();
    for name in &f.datasets {
        validation.insert(
            name.clone(),
            shard(ctx, name, Split::Validation, &tok, &tok_hash)?,
        );
    }
    let mut tasks = BTreeMap::new();
    for (name, p) in &f.tasks {
        tasks.insert(name.clone(), one_path(ctx, p)?.to_path_buf());
    }
    let mut spec = Map::new();
    let optional = [
        ("max_tokens", f.max_tokens.map(|x| json!(x))),
        ("seed", f.seed.map(|x| json!(x))),
        ("seq_len", f.seq_len.map(|x| json!(x))),
        ("batch_size", f.batch_size.map(|x| json!(x))),
        ("max_examples", f.max_examples.map(|x| json!(x))),
        ("max_new_tokens", f.max_new_tokens.map(|x| json!(x))),
        ("device", f.device.as_ref().map(|x| json!(x))),
        ("threads", f.threads.map(|x| json!(x))),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            spec.insert(k.into(), v);
        }
    }
    let spec: ml::evaluate::EvalSpec = serde_json::from_value(Value::Object(spec))
        .map_err(|e| StepError::Failed(format!("bad evaluation spec: {e}")))?;
    let paths = ml::evaluate::EvalPaths {
        validation,
        tasks,
        output: Some(ctx.out_dir.join("metrics.json")),
    };
    ml::evaluate::evaluate_checkpoint(&ckpt, &spec, &paths, &progress(ctx), ctx.cancel)
        .map_err(ml_err)?;
    // Name the checkpoint as the manifest does, not by its path in this store, so
    // the same evaluation gives the same bytes in any store.
    let out = ctx.out_dir.join("metrics.json");
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(&out).map_err(StepError::io("reading metrics"))?)
            .map_err(|e| StepError::Failed(format!("metrics: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("checkpoint".into(), json!(f.checkpoint));
    }
    let mut bytes = serde_json::to_vec_pretty(&v).expect("serializes");
    bytes.push(b'\n');
    std::fs::write(&out, bytes).map_err(StepError::io("writing metrics"))?;
    Ok(())
}

/// The sampler's prior: each candidate's training tokens under the tokenizer.
fn token_counts(
    ctx: &RunCtx,
    candidates: &[String],
    tok: &ml::tokenizer::Tok,
    tok_hash: &str,
) -> Result<Vec<f64>, StepError> {
    let mut counts = Vec::new();
    for c in candidates {
        let dir = shard(ctx, c, Split::Train, tok, tok_hash)?;
        let meta: ml::data::ShardMeta = serde_json::from_slice(
            &std::fs::read(dir.join("shard.json")).map_err(StepError::io("reading shard.json"))?,
        )
        .map_err(|e| StepError::Failed(format!("{}: {e}", dir.display())))?;
        counts.push(meta.tokens as f64);
    }
    Ok(counts)
}

pub fn sample(ctx: &RunCtx) -> Result<(), StepError> {
    use crate::mix::sampler::{SamplerConfig, sample};
    let f: super::sample::SampleFields = fields(ctx)?;
    let tok_path = one_path(ctx, &f.tokenizer)?.to_path_buf();
    let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
    let tok_hash = tokenizer_hash(ctx, Some(&f.tokenizer), &tok_path)?;
    let counts = token_counts(ctx, &f.candidates, &tok, &tok_hash)?;
    let config = SamplerConfig {
        keep: f.count,
        // Enough draws that the kept ones are a random subset of distinct mixtures.
        draws: f.count * 4,
        seed: f.seed,
        ..Default::default()
    };
    let pool = sample(&counts, &config)
        .map_err(|e| StepError::Failed(format!("sampling mixtures: {e}")))?;
    if pool.len() < f.count {
        return Err(StepError::Failed(format!(
            "only {} distinct mixtures of {} candidates exist at this resolution, fewer than `count: {}`",
            pool.len(),
            f.candidates.len(),
            f.count
        )));
    }
    let list: Vec<BTreeMap<&str, f64>> = pool
        .to_weights()
        .iter()
        .map(|w| {
            f.candidates
                .iter()
                .map(String::as_str)
                .zip(w.iter().copied())
                .collect()
        })
        .collect();
    super::write_json(ctx, "mixtures.json", &list)
}

/// How a worker merges: streaming from the memory-mapped files (host memory
/// holds one merged model), or from the components held on the worker's device
/// (a GPU then merges a proxy in milliseconds instead of re-reading K models).
enum Merger {
    Host(std::sync::Arc<crate::mix::merge::Components>),
    Resident(Vec<(String, Vec<tch::Tensor>)>),
}

/// One evaluator of merged proxies: merges the components by a mixture's weights
/// in memory (never written) and scores the merge by validation loss on the
/// targets. Several run at once, one per device (or several on one).
struct ProxyWorker {
    merger: Merger,
    model_config: ml::model::Qwen3Config,
    tok: ml::tokenizer::Tok,
    spec: ml::evaluate::EvalSpec,
    paths: ml::evaluate::EvalPaths,
    targets: Vec<String>,
}

impl ProxyWorker {
    fn eval(
        &self,
        w: &[f64],
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Proxied, StepError> {
        use crate::mix::merge::{MergeSpec, Values};
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StepError::Cancelled);
        }
        let total: f64 = w.iter().sum();
        let mut sd = BTreeMap::new();
        match &self.merger {
            Merger::Host(components) => {
                components.merge_each(&MergeSpec::linear(w.to_vec()), |t| {
                    let Values::F32(v) = t.values else {
                        return Err(StepError::Failed(format!(
                            "tensor {} is not a float tensor",
                            t.name
                        )));
                    };
                    let shape: Vec<i64> = t.shape.iter().map(|&x| x as i64).collect();
                    sd.insert(
                        t.name.to_string(),
                        tch::Tensor::from_slice(v).reshape(&shape),
                    );
                    Ok(())
                })?;
            }
            Merger::Resident(tensors) => {
                let _guard = tch::no_grad_guard();
                for (name, parts) in tensors {
                    let mut acc = &parts[0] * (w[0] / total);
                    for (p, x) in parts.iter().zip(w).skip(1) {
                        if *x != 0.0 {
                            acc += p * (x / total);
                        }
                    }
                    sd.insert(name.clone(), acc);
                }
            }
        }
        let report = ml::evaluate::evaluate_state_dict(
            &self.model_config,
            sd,
            Some(&self.tok),
            &self.spec,
            &self.paths,
            &|_: &ml::Progress| {},
            cancel,
        )
        .map_err(ml_err)?;
        Ok(losses_of(&report, &self.targets))
    }
}

/// Merged-proxy workers over one set of components: `workers` of them (default:
/// one per visible GPU, else one), each on its own device when there are several.
fn proxy_workers(
    ctx: &RunCtx,
    comps: &[PathBuf],
    targets: &[String],
    spec: ml::evaluate::EvalSpec,
    workers: Option<u32>,
    resident: Option<bool>,
) -> Result<Vec<ProxyWorker>, StepError> {
    let tok_path = comps[0].join("tokenizer.json");
    let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
    let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
    let paths = validation_shards(ctx, targets, &tok, &tok_hash)?;
    let model_config = ml::model::load_config(&comps[0]).map_err(ml_err)?;
    let components = std::sync::Arc::new(
        crate::mix::merge::Components::open(comps, None)
            .map_err(|e| StepError::Failed(e.to_string()))?
            .keep_mapped(),
    );
    let device = ml::device::parse_device(&spec.device).map_err(ml_err)?;
    let gpus = if device.is_cuda() {
        tch::Cuda::device_count().max(1) as usize
    } else {
        0
    };
    // By default one worker per GPU this step was granted (CUDA_VISIBLE_DEVICES,
    // which the scheduler sets from `resources.gpus`), not every GPU on the machine.
    let granted = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .map(|v| v.split(',').filter(|x| !x.trim().is_empty()).count())
        .filter(|&n| n > 0);
    let n = workers.map_or(granted.unwrap_or(1).min(gpus.max(1)), |w| w.max(1) as usize);
    // On a GPU the components stay resident; on the CPU merges stream from the files.
    let resident = resident.unwrap_or(device.is_cuda());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut spec = spec.clone();
        let dev = match device {
            tch::Device::Cuda(first) if gpus > 1 => tch::Device::Cuda((first + i) % gpus),
            d => d,
        };
        if let tch::Device::Cuda(k) = dev {
            spec.device = format!("cuda:{k}");
        }
        let merger = if resident {
            let mut per: BTreeMap<String, Vec<tch::Tensor>> = BTreeMap::new();
            for c in comps {
                let sd = ml::model::load_checkpoint_tensors(c, dev).map_err(ml_err)?;
                for (name, t) in sd {
                    per.entry(name)
                        .or_default()
                        .push(t.to_kind(tch::Kind::Float));
                }
            }
            if per.values().any(|v| v.len() != comps.len()) {
                return Err(StepError::Failed(
                    "the components do not hold the same tensors".into(),
                ));
            }
            Merger::Resident(per.into_iter().collect())
        } else {
            Merger::Host(components.clone())
        };
        out.push(ProxyWorker {
            merger,
            model_config: model_config.clone(),
            tok: tok.clone(),
            spec,
            paths: paths.clone(),
            targets: targets.to_vec(),
        });
    }
    Ok(out)
}

/// Evaluates every mixture on the workers, several in flight; scores come back
/// in the mixtures' order whichever worker made them. `done` is called on this
/// thread after each proxy.
fn eval_parallel(
    workers: &mut [ProxyWorker],
    mixtures: &[Vec<f64>],
    cancel: &std::sync::atomic::AtomicBool,
    done: &mut dyn FnMut(usize, &Proxied) -> Result<(), StepError>,
) -> Result<Vec<Proxied>, StepError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    if workers.len() <= 1 {
        let mut out = Vec::with_capacity(mixtures.len());
        for (i, w) in mixtures.iter().enumerate() {
            let p = workers[0].eval(w, cancel)?;
            done(i, &p)?;
            out.push(p);
        }
        return Ok(out);
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut out: Vec<Option<Proxied>> = vec![None; mixtures.len()];
    let mut first_err = None;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for w in workers.iter_mut() {
            let (tx, next, stop) = (tx.clone(), &next, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(m) = mixtures.get(i) else { break };
                    // libtorch errors (a CUDA out-of-memory) panic in tch: stop the
                    // others and report it instead of draining the queue.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        w.eval(m, cancel)
                    }))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        Err(StepError::Failed(format!("evaluating a proxy: {msg}")))
                    });
                    let failed = r.is_err();
                    if tx.send((i, r)).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            match r.and_then(|v| done(i, &v).map(|()| v)) {
                Ok(v) => out[i] = Some(v),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(out
        .into_iter()
        .map(|x| x.expect("every mixture scored"))
        .collect())
}

fn eval_spec(
    max_tokens: u64,
    seq_len: u32,
    batch_size: u32,
    device: &Option<String>,
    threads: Option<u32>,
) -> Result<ml::evaluate::EvalSpec, StepError> {
    let mut spec = Map::new();
    spec.insert("max_tokens".into(), json!(max_tokens));
    spec.insert("seq_len".into(), json!(seq_len));
    spec.insert("batch_size".into(), json!(batch_size));
    if let Some(d) = device {
        spec.insert("device".into(), json!(d));
    }
    if let Some(t) = threads {
        spec.insert("threads".into(), json!(t));
    }
    serde_json::from_value(Value::Object(spec))
        .map_err(|e| StepError::Failed(format!("bad evaluation spec: {e}")))
}

/// The targets' validation shards under a tokenizer.
fn validation_shards(
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

/// A scored proxy: its loss per target, and per target the summed loss and
/// token count of every window scored (for paired noise estimates).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Proxied {
    scores: Vec<f64>,
    #[serde(default)]
    windows: Vec<Vec<(f64, u64)>>,
}

impl Proxied {
    /// Validation tokens scored for this proxy.
    fn tokens(&self) -> u64 {
        self.windows.iter().flatten().map(|w| w.1).sum()
    }
}

/// A search's scored proxies, one JSON line each under the step's resume
/// folder: a killed or requeued search asks for the same mixtures again (it is
/// deterministic) and takes their scores from here instead of scoring anew.
struct Journal {
    path: PathBuf,
    scored: BTreeMap<String, Proxied>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JournalLine {
    weights: Vec<f64>,
    #[serde(flatten)]
    proxied: Proxied,
}

impl Journal {
    fn open(dir: &Path) -> Result<Journal, StepError> {
        std::fs::create_dir_all(dir)
            .map_err(StepError::io("creating the search's resume folder"))?;
        let path = dir.join("scored.jsonl");
        // A line cut short by a kill is simply not there.
        let scored = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<JournalLine>(l).ok())
            .map(|l| (weights_id(&l.weights), l.proxied))
            .collect();
        Ok(Journal { path, scored })
    }

    fn get(&self, w: &[f64]) -> Option<&Proxied> {
        self.scored.get(&weights_id(w))
    }

    fn add(&mut self, w: &[f64], p: &Proxied) -> Result<(), StepError> {
        use std::io::Write;
        let line = JournalLine {
            weights: w.to_vec(),
            proxied: p.clone(),
        };
        let mut text = serde_json::to_string(&line).expect("serializes");
        text.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(StepError::io("writing the search's journal"))?;
        self.scored.insert(weights_id(w), p.clone());
        Ok(())
    }
}

/// The targets' losses.
fn losses_of(report: &ml::evaluate::EvalReport, targets: &[String]) -> Proxied {
    Proxied {
        scores: targets
            .iter()
            .map(|t| report.datasets.get(t).map_or(f64::NAN, |m| m.loss))
            .collect(),
        windows: targets
            .iter()
            .map(|t| {
                report
                    .datasets
                    .get(t)
                    .map_or_else(Vec::new, |m| m.per_window.clone())
            })
            .collect(),
    }
}

/// Standard error of the difference of two models' losses scored on the same
/// windows (windows as the units of a ratio estimator).
fn paired_se(a: &[(f64, u64)], b: &[(f64, u64)]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let tokens: u64 = a.iter().map(|w| w.1).sum();
    if tokens == 0 {
        return None;
    }
    let d: Vec<(f64, u64)> = a.iter().zip(b).map(|(x, y)| (x.0 - y.0, x.1)).collect();
    let mean = d.iter().map(|x| x.0).sum::<f64>() / tokens as f64;
    let n = d.len() as f64;
    let ss: f64 = d.iter().map(|(x, t)| (x - mean * *t as f64).powi(2)).sum();
    Some((ss * n / (n - 1.0)).sqrt() / tokens as f64)
}

/// Per target: the spread of the first round's proxies against the noise of
/// scoring them on a finite sample (paired SE over consecutive pairs).
fn target_noise(targets: &[String], round1: &[Proxied]) -> Vec<crate::mix::search::TargetNoise> {
    targets
        .iter()
        .enumerate()
        .filter_map(|(t, name)| {
            let scores: Vec<f64> = round1.iter().map(|p| p.scores[t]).collect();
            let spread = crate::mix::search::spreads(
                &scores.iter().map(|x| vec![*x]).collect::<Vec<_>>(),
                1,
            )[0];
            let ses: Vec<f64> = round1
                .chunks_exact(2)
                .filter_map(|pair| paired_se(pair[0].windows.get(t)?, pair[1].windows.get(t)?))
                .collect();
            if ses.is_empty() {
                return None;
            }
            let noise = ses.iter().sum::<f64>() / ses.len() as f64;
            Some(crate::mix::search::TargetNoise {
                target: name.clone(),
                spread,
                noise,
                ratio: if noise > 0.0 {
                    spread / noise
                } else {
                    f64::INFINITY
                },
            })
        })
        .collect()
}

/// Evaluates trained proxies (RegMix, CLIMB): a small model trained from the base
/// on each mixture, in the components' recipe, then scored like a merged proxy.
struct TrainedEvaluator<'a> {
    ctx: &'a RunCtx<'a>,
    base: PathBuf,
    tok_path: PathBuf,
    shards: BTreeMap<String, PathBuf>,
    candidates: Vec<String>,
    general: Option<String>,
    beta: f64,
    train: super::search::TrainedProxy,
    device: Option<String>,
    threads: Option<u32>,
    spec: ml::evaluate::EvalSpec,
    paths: ml::evaluate::EvalPaths,
    targets: Vec<String>,
    scratch: PathBuf,
}

fn weights_id(w: &[f64]) -> String {
    let bits: Vec<String> = w.iter().map(|x| format!("{:016x}", x.to_bits())).collect();
    crate::hash::hex(&blake3::hash(bits.join(",").as_bytes()))[..16].to_string()
}

impl TrainedEvaluator<'_> {
    fn eval(&mut self, w: &[f64]) -> Result<Proxied, StepError> {
        let id = weights_id(w);
        let mut data = Map::new();
        let total: f64 = w.iter().sum();
        for (c, x) in self.candidates.iter().zip(w) {
            if *x > 0.0 {
                data.insert(c.clone(), json!(x / total * (1.0 - self.beta)));
            }
        }
        if let Some(g) = &self.general
            && self.beta > 0.0
        {
            data.insert(g.clone(), json!(self.beta));
        }
        let t = &self.train;
        let mut spec = json!({
            "init_from": self.base,
            "seed": t.seed,
            "data": Value::Object(data),
            "tokens": t.tokens,
            "batch_size": t.batch_size,
            "seq_len": t.seq_len,
        });
        let o = spec.as_object_mut().expect("object");
        if let Some(lr) = t.lr {
            o.insert("lr".into(), json!(lr));
        }
        if let Some(r) = t.min_lr_ratio {
            o.insert("min_lr_ratio".into(), json!(r));
        }
        if let Some(m) = t.micro_batch_size {
            o.insert("micro_batch_size".into(), json!(m));
        }
        if let Some(d) = &self.device {
            o.insert("device".into(), json!(d));
        }
        if let Some(n) = self.threads {
            o.insert("threads".into(), json!(n));
        }
        let spec: ml::train::TrainSpec = serde_json::from_value(spec)
            .map_err(|e| StepError::Failed(format!("bad proxy training spec: {e}")))?;
        // Named by its mixture, so an interrupted proxy resumes its own training.
        let dir = self.scratch.join(format!("proxy-{id}"));
        let paths = ml::train::TrainPaths {
            shards: self.shards.clone(),
            output: dir.join("checkpoint"),
            checkpoints_dir: dir.join("checkpoints"),
            state_dir: dir.join("state"),
            metrics: dir.join("metrics.jsonl"),
            tokenizer: Some(self.tok_path.clone()),
        };
        ml::train::train(&spec, &paths, &|_: &ml::Progress| {}, self.ctx.cancel).map_err(ml_err)?;
        let report = ml::evaluate::evaluate_checkpoint(
            &paths.output,
            &self.spec,
            &self.paths,
            &|_: &ml::Progress| {},
            self.ctx.cancel,
        )
        .map_err(ml_err)?;
        // Proxies are scaffolding: only their scores are kept.
        let _ = crate::store::remove_tree(&dir);
        Ok(losses_of(&report, &self.targets))
    }
}

/// The merge-search (or, with `proxy: trained`, the RegMix baseline): mixtures
/// sampled as RegMix does, a proxy per mixture evaluated on the targets'
/// validation shards, a predictor choosing each next round.
pub fn search(ctx: &RunCtx) -> Result<(), StepError> {
    use crate::mix::sampler::{SamplerConfig, sample};
    use crate::mix::search::{Search, SearchConfig, Target};

    let f: super::search::SearchFields = fields(ctx)?;
    let spec = eval_spec(f.max_tokens, f.seq_len, f.batch_size, &f.device, f.threads)?;
    enum Proxy<'a> {
        Merged(Vec<ProxyWorker>),
        Trained(Box<TrainedEvaluator<'a>>),
    }
    let scratch = ctx.store.root.join("resume").join(&ctx.spec.key);
    let mut journal = Journal::open(&scratch)?;
    if !journal.scored.is_empty() {
        use std::io::Write;
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctx.log)
            .and_then(|mut l| {
                writeln!(
                    l,
                    "search: resuming with {} proxies scored by an interrupted run",
                    journal.scored.len()
                )
            });
    }
    let (mut proxy, counts) = if f.proxy == "trained" {
        let base = one_path(ctx, f.base.as_deref().unwrap_or_default())?.to_path_buf();
        let tok_path = base.join("tokenizer.json");
        let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
        let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
        let counts = token_counts(ctx, &f.candidates, &tok, &tok_hash)?;
        let mut shards = BTreeMap::new();
        for n in f.candidates.iter().chain(f.general.iter()) {
            shards.insert(n.clone(), shard(ctx, n, Split::Train, &tok, &tok_hash)?);
        }
        let paths = validation_shards(ctx, &f.targets, &tok, &tok_hash)?;
        let e = TrainedEvaluator {
            ctx,
            base,
            tok_path,
            shards,
            candidates: f.candidates.clone(),
            general: f.general.clone(),
            beta: if f.general.is_some() {
                f.beta.unwrap_or(0.5)
            } else {
                0.0
            },
            train: f
                .train
                .clone()
                .ok_or_else(|| StepError::Failed("`proxy: trained` needs `train`".into()))?,
            device: f.device.clone(),
            threads: f.threads,
            spec,
            paths,
            targets: f.targets.clone(),
            scratch: scratch.clone(),
        };
        (Proxy::Trained(Box::new(e)), counts)
    } else {
        let comps: Vec<PathBuf> = ctx
            .input(f.components.as_deref().unwrap_or_default())?
            .to_vec();
        if comps.len() != f.candidates.len() {
            return Err(StepError::Failed(format!(
                "{} components but {} candidates: give one candidate dataset per component, in the same order",
                comps.len(),
                f.candidates.len()
            )));
        }
        let workers = proxy_workers(ctx, &comps, &f.targets, spec, f.workers, f.resident)?;
        let counts = token_counts(
            ctx,
            &f.candidates,
            &workers[0].tok,
            &tokenizer_hash(ctx, None, &comps[0].join("tokenizer.json"))?,
        )?;
        (Proxy::Merged(workers), counts)
    };
    let sampler = SamplerConfig {
        keep: f.pool,
        draws: f.draws.unwrap_or(f.pool * 5 / 2).max(f.pool),
        seed: f.seed,
        ..Default::default()
    };
    let pool = sample(&counts, &sampler)
        .map_err(|e| StepError::Failed(format!("sampling mixtures: {e}")))?;
    let mut config = SearchConfig::new(f.targets.iter().map(|t| Target::loss(t)).collect());
    config.rounds = f.rounds.clone();
    config.top_k = f.top_k;
    config.seed = f.seed;
    config.objective =
        super::validate::objective(&f.objective, &f.objective_weights, f.targets.len());
    let total: usize = f.rounds.iter().sum();
    let mut search =
        Search::new(config, pool.to_weights()).map_err(|e| StepError::Failed(e.to_string()))?;
    let mut done = 0usize;
    let mut tokens_evaluated = 0u64;
    let mut round1: Vec<Proxied> = Vec::new();
    while let Some(batch) = search
        .next_batch()
        .map_err(|e| StepError::Failed(e.to_string()))?
    {
        let mixtures = batch.mixtures.clone();
        let round = batch.round;
        let mut tick = || {
            done += 1;
            (ctx.progress)(Progress {
                done: done as u64,
                total: Some(total as u64),
                unit: "proxies".into(),
                message: Some(format!("round {round}")),
            });
        };
        // What an interrupted run of this step scored already is not scored again.
        let todo: Vec<Vec<f64>> = mixtures
            .iter()
            .filter(|w| journal.get(w).is_none())
            .cloned()
            .collect();
        for _ in 0..mixtures.len() - todo.len() {
            tick();
        }
        match &mut proxy {
            Proxy::Merged(workers) => {
                eval_parallel(workers, &todo, ctx.cancel, &mut |i, p| {
                    journal.add(&todo[i], p)?;
                    tick();
                    Ok(())
                })?;
            }
            Proxy::Trained(e) => {
                for w in &todo {
                    let p = e.eval(w)?;
                    journal.add(w, &p)?;
                    tick();
                }
            }
        }
        let scores: Vec<Proxied> = mixtures
            .iter()
            .map(|w| journal.get(w).cloned().expect("every mixture was scored"))
            .collect();
        tokens_evaluated += scores.iter().map(Proxied::tokens).sum::<u64>();
        if round == 1 {
            round1 = scores.clone();
        }
        search
            .record(scores.into_iter().map(|p| p.scores).collect())
            .map_err(|e| StepError::Failed(e.to_string()))?;
    }
    let mut result = search
        .finish()
        .map_err(|e| StepError::Failed(e.to_string()))?;
    result.candidates = f.candidates.clone();
    result.target_noise = target_noise(&f.targets, &round1);
    result.cost.tokens_evaluated = tokens_evaluated;
    if let Proxy::Trained(_) = &proxy {
        result.cost.tokens_trained =
            (result.cost.proxies_evaluated as u64) * f.train.as_ref().map_or(0, |t| t.tokens);
    }
    let mixture: BTreeMap<&str, f64> = f
        .candidates
        .iter()
        .map(String::as_str)
        .zip(result.chosen.iter().copied())
        .collect();
    super::write_json(ctx, "search.json", &result)?;
    super::write_json(ctx, "mixture.json", &mixture)?;
    // The journal has served; a failed search keeps it for its next attempt.
    let _ = crate::store::remove_tree(&scratch);
    Ok(())
}

/// Merged proxies at the reference mixtures, and the components' own scores (a
/// one-hot linear merge is the component itself).
pub fn merged_scores(
    ctx: &RunCtx,
    f: &super::validate::ValidateFields,
    mixtures: &[Vec<f64>],
) -> Result<super::validate::Merged, StepError> {
    let comps: Vec<PathBuf> = ctx
        .input(f.components.as_deref().unwrap_or_default())?
        .to_vec();
    if comps.len() != f.candidates.len() {
        return Err(StepError::Failed(format!(
            "{} components but {} candidates: give one candidate dataset per component, in the same order",
            comps.len(),
            f.candidates.len()
        )));
    }
    let spec = eval_spec(f.max_tokens, f.seq_len, f.batch_size, &f.device, f.threads)?;
    let mut workers = proxy_workers(ctx, &comps, &f.targets, spec, f.workers, f.resident)?;
    let k = comps.len();
    let total = (k + mixtures.len()) as u64;
    let mut done = 0u64;
    let mut tick = || {
        done += 1;
        (ctx.progress)(Progress {
            done,
            total: Some(total),
            unit: "models".into(),
            message: Some(
                if done <= k as u64 {
                    "components"
                } else {
                    "merged proxies"
                }
                .into(),
            ),
        });
    };
    // A one-hot linear merge is the component itself.
    let one_hot: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let scores = |v: Vec<Proxied>| v.into_iter().map(|p| p.scores).collect();
    let mut done = |_: usize, _: &Proxied| {
        tick();
        Ok(())
    };
    let components = scores(eval_parallel(
        &mut workers,
        &one_hot,
        ctx.cancel,
        &mut done,
    )?);
    let proxies = scores(eval_parallel(
        &mut workers,
        mixtures,
        ctx.cancel,
        &mut done,
    )?);
    Ok(super::validate::Merged {
        proxies,
        components,
    })
}
