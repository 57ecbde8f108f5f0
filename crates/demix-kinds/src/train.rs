//! `kind: train`: trains a Qwen3-architecture model on a mixture of datasets
//! (AdamW, warmup and cosine decay), from scratch or from a checkpoint,
//! resumable after a kill.

use std::collections::BTreeMap;
#[cfg(feature = "torch")]
use std::path::{Path, PathBuf};

use marked_yaml::{Node, Span, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{Kind, Plan, Runner};
#[cfg(feature = "torch")]
use demix_core::kind::{RunCtx, StepError};
use demix_core::manifest::Diags;
use demix_core::manifest::template::Split;
use demix_spec::model::{ModelField, PRESETS};
use demix_spec::train::{DataMix, TrainConfig};

use crate::fields::{check_ref_or_path, dataset_names, positive, span_of};

/// Fields of a `train` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct TrainFields {
    /// `${steps.ID.tokenizer}`: the tokenizer (copied into every checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// A fresh model of this architecture (exclusive with `init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelField>,
    /// Continue from a checkpoint: `${steps.ID.checkpoint}` or a Hugging Face model folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// The mixture: weights by dataset name, or the component recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataMix>,
    /// Or a mixture chosen by another step: `${steps.ID.mixture}` (a JSON object of
    /// weights by dataset name), over the datasets listed in `datasets`; or
    /// `uniform`: equal weights over `datasets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture: Option<String>,
    /// The datasets a `mixture` file may weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
    /// When the `mixture` file is a list of mixtures (a `sample` step's), train on
    /// the one at this index, e.g. `pick: ${item}` under `foreach: {range: N}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pick: Option<u64>,
    /// Mix this dataset into a `mixture` at share `beta`, as the components are
    /// (`{candidate, general, beta}`): references then match merged proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<String>,
    /// The general share with `general` (default 0.5, the paper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    #[serde(flatten)]
    pub train: TrainConfig,
}

pub struct Train;

use demix_spec::data::UNIFORM_MIXTURE as UNIFORM;

impl Kind for Train {
    const NAME: &'static str = "train";
    // 2: metrics.jsonl holds only what the trajectory decides. 3: checkpoints
    // carry bos/eos ids, generation_config.json and a model card.
    const VERSION: u32 = 3;
    const SUMMARY: &'static str = "trains a Qwen3-architecture model on a mixture of datasets (AdamW, warmup + cosine), resumable";
    type Fields = TrainFields;
    type Params = TrainFields;

    fn plan(&self, f: TrainFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut paths = Vec::new();
        check_start(&f, body, d, &mut paths);
        check_budget(&f.train, body, d);
        let datasets = check_mixture(&f, body, d, &mut paths);
        let mut outputs = BTreeMap::from([
            ("checkpoint".to_string(), "checkpoint/".to_string()),
            ("metrics".to_string(), "metrics.jsonl".to_string()),
        ]);
        for c in &f.train.checkpoints {
            outputs.insert(format!("tokens_{c}"), format!("checkpoints/tokens-{c}/"));
        }
        Some(Plan {
            paths,
            outputs,
            datasets,
            memory: memory_need(&f, body),
            data_parallel: true,
            ..Plan::new(&f)
        })
    }

    fn runner(&self, _: &TrainFields) -> Runner {
        Runner::Worker
    }

    #[cfg(feature = "torch")]
    fn run(&self, f: TrainFields, ctx: &RunCtx) -> Result<(), StepError> {
        run(f, ctx)
    }
}

/// What the model starts from: a fresh one (with a tokenizer) or a checkpoint.
fn check_start(f: &TrainFields, body: &Node, d: &mut Diags, paths: &mut Vec<Spanned<String>>) {
    match (&f.model, &f.init) {
        (Some(_), Some(_)) => d.error(
            &span_of(body, "init"),
            "give either `model` (a fresh model) or `init` (a checkpoint), not both",
            "init",
        ),
        (None, None) => d.error(
            body.span(),
            "a train step needs `model` (a fresh model) or `init` (a checkpoint)",
            "train",
        ),
        (None, Some(i)) => check_ref_or_path(d, body, "init", i, paths),
        (Some(ModelField::Preset(p)), None) if !PRESETS.contains(&p.as_str()) => d.error(
            &span_of(body, "model"),
            format!("unknown model preset `{p}` (known: {})", PRESETS.join(", ")),
            "model",
        ),
        (Some(ModelField::Config(c)), None) => {
            if c.num_attention_heads == 0
                || c.num_key_value_heads == 0
                || c.num_attention_heads % c.num_key_value_heads != 0
            {
                d.error(
                    &span_of(body, "model"),
                    "`num_attention_heads` must be a positive multiple of `num_key_value_heads`",
                    "model",
                );
            }
            if c.head_dim.is_none() && c.hidden_size % c.num_attention_heads.max(1) != 0 {
                d.error(
                    &span_of(body, "model"),
                    "`hidden_size` is not divisible by `num_attention_heads`; set `head_dim`",
                    "model",
                );
            }
        }
        _ => {}
    }
    if f.model.is_some() && f.tokenizer.is_none() {
        d.error(
            body.span(),
            "a fresh model needs `tokenizer: ${steps.ID.tokenizer}`",
            "train",
        );
    }
    if let Some(t) = &f.tokenizer {
        check_ref_or_path(d, body, "tokenizer", t, paths);
    }
}

/// The budget, batches and schedule, each problem at its field.
fn check_budget(t: &TrainConfig, body: &Node, d: &mut Diags) {
    let batch_tokens = t.tokens_per_step();
    if t.tokens == 0 {
        d.error(
            &span_of(body, "tokens"),
            "`tokens` (the token budget) must be more than 0",
            "tokens",
        );
    } else if t.tokens < batch_tokens {
        d.error(
            &span_of(body, "tokens"),
            format!(
                "`tokens` ({}) is less than one batch (batch_size {} x seq_len {} = {batch_tokens} tokens): training would take a whole batch anyway",
                t.tokens, t.batch_size, t.seq_len
            ),
            "tokens",
        );
    }
    for (key, v) in [("batch_size", t.batch_size), ("seq_len", t.seq_len)] {
        if v == 0 {
            d.error(
                &span_of(body, key),
                format!("`{key}` must be more than 0"),
                key,
            );
        }
    }
    if let Some(m) = t.micro_batch_size
        && (m == 0 || !t.batch_size.is_multiple_of(m))
    {
        d.error(
            &span_of(body, "micro_batch_size"),
            format!(
                "`micro_batch_size` ({m}) must divide `batch_size` ({})",
                t.batch_size
            ),
            "micro_batch_size",
        );
    }
    positive(d, body, "lr", t.lr, "the peak learning rate");
    for (key, v) in [
        ("min_lr_ratio", t.min_lr_ratio),
        ("warmup_fraction", t.warmup_fraction),
    ] {
        if !(0.0..=1.0).contains(&v) {
            d.error(
                &span_of(body, key),
                format!("`{key}` must be in [0, 1], not {v}"),
                key,
            );
        }
    }
    if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
        d.error(
            &span_of(body, "betas"),
            format!("`betas` must be in [0, 1), not {:?}", t.betas),
            "betas",
        );
    }
    for &c in &t.checkpoints {
        if c == 0 || c > t.tokens {
            d.error(
                &span_of(body, "checkpoints"),
                format!(
                    "checkpoint budget {c} is not within the token budget (1..={})",
                    t.tokens
                ),
                "checkpoints",
            );
        }
    }
}

/// The mixture: `data` (names are datasets, weights non-negative and not all
/// zero) or a `mixture` file over `datasets`. Returns the datasets read.
fn check_mixture(
    f: &TrainFields,
    body: &Node,
    d: &mut Diags,
    paths: &mut Vec<Spanned<String>>,
) -> Vec<(Spanned<String>, Split)> {
    let mut datasets = Vec::new();
    match (&f.data, &f.mixture) {
        (Some(_), Some(_)) => d.error(
            &span_of(body, "mixture"),
            "give either `data` or `mixture`, not both",
            "mixture",
        ),
        (None, None) => d.error(
            body.span(),
            "a train step needs `data` (a mixture) or `mixture: ${steps.ID.mixture}`",
            "train",
        ),
        (None, Some(m)) => {
            if m == UNIFORM {
                if f.datasets.is_empty() {
                    d.error(
                        &span_of(body, "mixture"),
                        "`mixture: uniform` needs `datasets`: the datasets it weighs equally",
                        "mixture",
                    );
                }
                if f.pick.is_some() {
                    d.error(
                        &span_of(body, "pick"),
                        "`pick` takes one mixture of a list; `mixture: uniform` is one mixture",
                        "pick",
                    );
                }
            } else {
                check_ref_or_path(d, body, "mixture", m, paths);
                if f.datasets.is_empty() {
                    d.error(
                        &span_of(body, "mixture"),
                        "a `mixture` file needs `datasets`: the datasets it may weight",
                        "mixture",
                    );
                }
            }
            datasets.extend(dataset_names(body, "datasets", &f.datasets, Split::Train));
            if let Some(g) = &f.general {
                datasets.push((
                    Spanned::new(span_of(body, "general"), g.clone()),
                    Split::Train,
                ));
                if f.datasets.contains(g) {
                    d.error(
                        &span_of(body, "general"),
                        format!("`{g}` is in `datasets` too; the general data is mixed in at share `beta`, not weighted by the mixture"),
                        "general",
                    );
                }
            }
            if let Some(b) = f.beta
                && !(0.0..1.0).contains(&b)
            {
                d.error(
                    &span_of(body, "beta"),
                    format!("`beta` (the general share) must be in [0, 1), not {b}"),
                    "beta",
                );
            }
            if f.beta.is_some() && f.general.is_none() {
                d.error(
                    &span_of(body, "beta"),
                    "`beta` is the share of `general`: name the general dataset",
                    "beta",
                );
            }
        }
        (Some(_), None) if f.pick.is_some() || f.general.is_some() || f.beta.is_some() => d.error(
            &span_of(body, "data"),
            "`pick`, `general` and `beta` go with `mixture`; `data` says its mixture itself",
            "data",
        ),
        (Some(_), None) if !f.datasets.is_empty() => d.error(
            &span_of(body, "datasets"),
            "`datasets` goes with `mixture`; `data` names its datasets itself",
            "datasets",
        ),
        (Some(data), None) => datasets = check_data(data, body, d),
    }
    datasets
}

/// A mixture written in the manifest, each problem at its weight.
fn check_data(data: &DataMix, body: &Node, d: &mut Diags) -> Vec<(Spanned<String>, Split)> {
    let data_span = span_of(body, "data");
    let at = |k: &str, key: bool| -> Span {
        let m = body.as_mapping().and_then(|m| m.get_mapping("data"));
        let found = if key {
            m.and_then(|m| m.keys().find(|x| x.as_str() == k).map(|x| *x.span()))
        } else {
            m.and_then(|m| m.get_node(k)).map(|n| *n.span())
        };
        found.unwrap_or(data_span)
    };
    let mut datasets = Vec::new();
    match data {
        DataMix::Weights(w) => {
            if w.is_empty() {
                d.error(&data_span, "the mixture is empty", "data");
            }
            for (name, &x) in w {
                if !x.is_finite() || x < 0.0 {
                    d.error(
                        &at(name, false),
                        format!("mixture weight of `{name}` must be a finite number >= 0, not {x}"),
                        "weight",
                    );
                }
                datasets.push((Spanned::new(at(name, true), name.clone()), Split::Train));
            }
            if !w.is_empty() && w.values().all(|&x| x == 0.0) {
                d.error(&data_span, "mixture weights are all 0", "data");
            }
        }
        DataMix::Component(c) => {
            if !(0.0..=1.0).contains(&c.beta) {
                d.error(
                    &at("beta", false),
                    format!(
                        "`beta` (the share of general data) must be in [0, 1], not {}",
                        c.beta
                    ),
                    "beta",
                );
            }
            datasets.push((
                Spanned::new(at("candidate", false), c.candidate.clone()),
                Split::Train,
            ));
            if c.general != c.candidate {
                datasets.push((
                    Spanned::new(at("general", false), c.general.clone()),
                    Split::Train,
                ));
            }
        }
    }
    datasets
}

/// A fresh model's memory need: its shape is known here, its vocabulary only
/// when given, so this is a lower bound.
fn memory_need(f: &TrainFields, body: &Node) -> Option<(u64, String, Span)> {
    let Some(ModelField::Config(c)) = &f.model else {
        return None;
    };
    let shape = demix_spec::estimate::ModelShape {
        vocab: c.vocab_size.map_or(0, u64::from),
        hidden: c.hidden_size.into(),
        intermediate: c.intermediate_size.into(),
        layers: c.num_hidden_layers.into(),
        heads: c.num_attention_heads.max(1).into(),
        kv_heads: c.num_key_value_heads.into(),
        head_dim: c.head_dim().into(),
        tied: c.tie_word_embeddings.unwrap_or(true),
    };
    let rows = f.train.micro_batch_size.unwrap_or(f.train.batch_size);
    Some((
        shape.training_bytes(rows.into(), f.train.seq_len.into()),
        format!(
            "training this model ({} parameters or more: hidden_size {}, intermediate_size {}, num_hidden_layers {})",
            shape.params(),
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        ),
        span_of(body, "model"),
    ))
}

#[cfg(feature = "torch")]
fn run(f: TrainFields, ctx: &RunCtx) -> Result<(), StepError> {
    use crate::ml_run::{log_line, ml_err, one_path, progress, shard, tokenizer_hash};
    use demix_ml as ml;
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
        (None, Some(m)) if m == UNIFORM => {
            let equal = f.datasets.iter().map(|d| (d.clone(), 1.0)).collect();
            DataMix::Weights(mixture_weights(&f, equal, "the uniform mixture")?)
        }
        (None, Some(m)) => {
            let p = one_path(ctx, m)?;
            let w = read_mixture(p, f.pick)?;
            DataMix::Weights(mixture_weights(&f, w, &p.display().to_string())?)
        }
        (None, None) => return Err(StepError::Failed("no mixture".into())),
    };
    let names: Vec<String> = match &data {
        DataMix::Weights(w) => w.keys().cloned().collect(),
        DataMix::Component(c) => vec![c.candidate.clone(), c.general.clone()],
    };
    let mut shards = BTreeMap::new();
    for n in names {
        if let std::collections::btree_map::Entry::Vacant(e) = shards.entry(n) {
            let dir = shard(ctx, e.key(), Split::Train, &tok, &tok_hash)?;
            e.insert(dir);
        }
    }
    let model = f
        .model
        .as_ref()
        .map(|m| m.resolve(tok.vocab_size() as i64))
        .transpose()
        .map_err(StepError::library)?;
    let spec = ml::train::TrainSpec {
        model,
        init_from: if f.model.is_some() {
            None
        } else {
            init.map(Path::to_path_buf)
        },
        data,
        train: f.train.clone(),
    };
    // The resumable state lives in the store by key, so a killed or cancelled run
    // picks up where it stopped; it is removed once the result is committed.
    let resume = ctx.store.root.join("resume").join(&ctx.spec.key);
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
    ctx.fact("device", &summary.device);
    ctx.fact("compute", &summary.compute);
    ctx.fact("ranks", summary.ranks);
    // Of a data-parallel step's ranks, rank 0 wrote everything and cleans up.
    if demix_spec::launch::launched().is_some_and(|r| !r.leads()) {
        return Ok(());
    }
    write_cards(&f, ctx, &spec, &paths)?;
    std::fs::copy(&paths.metrics, ctx.out_dir.join("metrics.jsonl"))
        .map_err(StepError::io("copying metrics"))?;
    let _ = demix_core::store::remove_tree(&resume);
    log_line(
        ctx,
        &format!(
            "summary {}",
            serde_json::to_string(&summary).unwrap_or_default()
        ),
    );
    Ok(())
}

/// A model card (README.md) in every checkpoint folder the training wrote:
/// the final one and each `checkpoints` budget's (see [`crate::card`]).
#[cfg(feature = "torch")]
fn write_cards(
    f: &TrainFields,
    ctx: &RunCtx,
    spec: &demix_ml::train::TrainSpec,
    paths: &demix_ml::train::TrainPaths,
) -> Result<(), StepError> {
    use crate::card::{TrainCard, describe_input, provenance, write_card};
    use demix_spec::card::code;
    let start = match (&f.model, &f.init) {
        (Some(_), _) => format!("a fresh model initialised with seed {}", f.train.seed),
        (None, Some(i)) => format!("continued from {}", describe_input(ctx, i)),
        (None, None) => "no model".into(),
    };
    let tokenizer = match &f.tokenizer {
        Some(t) => describe_input(ctx, t),
        None => "the starting checkpoint's".into(),
    };
    let mixture_source = match (&spec.data, &f.mixture) {
        (_, Some(m)) => {
            let mut s = if m == UNIFORM {
                "uniform: equal weights over `datasets`".to_string()
            } else {
                format!("read from {}", describe_input(ctx, m))
            };
            if let Some(i) = f.pick {
                s.push_str(&format!(" (mixture {i} of the list)"));
            }
            if let Some(g) = &f.general {
                s.push_str(&format!(
                    ", with {} mixed in at share {}",
                    code(g),
                    f.beta.unwrap_or(0.5)
                ));
            }
            s
        }
        (DataMix::Component(c), None) => format!(
            "candidate {} with general data {} at share beta = {}",
            code(&c.candidate),
            code(&c.general),
            c.beta
        ),
        (DataMix::Weights(w), None) => format!(
            "as the step's `data` says ({}), normalised",
            code(&serde_json::to_string(w).unwrap_or_default())
        ),
    };
    let weights = spec
        .data
        .weights()
        .map_err(|e| StepError::Failed(e.to_string()))?;
    let dataset_hashes: BTreeMap<String, String> = weights
        .keys()
        .filter_map(|n| {
            let key = crate::ml_run::dataset_key(n, Split::Train);
            let h = ctx.spec.record.inputs.get(&key)?.hash.clone();
            Some((n.clone(), h))
        })
        .collect();
    let tps = f.train.tokens_per_step().max(1);
    let mut dirs = vec![(paths.output.clone(), f.train.total_steps() * tps)];
    for &b in &f.train.checkpoints {
        dirs.push((paths.checkpoint_dir(b), b.div_ceil(tps) * tps));
    }
    for (dir, tokens_seen) in dirs {
        if !dir.join("config.json").is_file() {
            continue; // not written: the engine's check of the outputs says so
        }
        let model = demix_ml::checkpoint::load_config(&dir).map_err(crate::ml_run::ml_err)?;
        let card = TrainCard {
            provenance: provenance(ctx),
            start: start.clone(),
            tokenizer: tokenizer.clone(),
            mixture_source: mixture_source.clone(),
            weights: weights.clone(),
            dataset_hashes: dataset_hashes.clone(),
            train: &f.train,
            model: &model,
            tokens_seen,
        };
        write_card(&dir, &card.render())?;
    }
    Ok(())
}

/// A `mixture` file's weights over `datasets`, with the general data mixed in
/// at share `beta` as the components' recipe does.
#[cfg(feature = "torch")]
fn mixture_weights(
    f: &TrainFields,
    w: BTreeMap<String, f64>,
    from: &str,
) -> Result<BTreeMap<String, f64>, StepError> {
    if let Some(bad) = w.keys().find(|k| !f.datasets.contains(k)) {
        return Err(StepError::Failed(format!(
            "{from}: the mixture weights `{bad}`, which is not in `datasets`"
        )));
    }
    // The same rule as a mixture written in the manifest.
    if let Some((name, x)) = w.iter().find(|(_, x)| !(x.is_finite() && **x >= 0.0)) {
        return Err(StepError::Failed(format!(
            "{from}: mixture weight of `{name}` must be a finite number >= 0, not {x}"
        )));
    }
    let mut w: BTreeMap<String, f64> = w.into_iter().filter(|(_, x)| *x > 0.0).collect();
    let total: f64 = w.values().sum();
    if !(total > 0.0 && total.is_finite()) {
        return Err(StepError::Failed(format!(
            "{from}: the mixture's weights do not add up to a positive number"
        )));
    }
    if let Some(g) = &f.general {
        w = demix_spec::data::with_general(w, g, f.beta.unwrap_or(0.5));
    }
    Ok(w)
}

#[cfg(feature = "torch")]
/// A mixture file: an object of weights by dataset, or (with `pick`) a list of them.
fn read_mixture(p: &Path, pick: Option<u64>) -> Result<BTreeMap<String, f64>, StepError> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p).map_err(StepError::io(format!("reading {}", p.display())))?,
    )
    .map_err(|e| StepError::Failed(format!("{}: not JSON: {e}", p.display())))?;
    demix_spec::data::pick_mixture(v, pick)
        .map_err(|e| StepError::Failed(format!("{}: {e}", p.display())))
}
