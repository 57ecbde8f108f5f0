//! Training: a mixture of tokenized shards, AdamW with warmup + cosine,
//! checkpoints at token budgets, and an atomic resume state.
//!
//! Determinism: the batch of step `s` is drawn from SplitMix64(seed, s), so
//! resuming needs only the step; weights and moments are saved in f32, so a
//! resumed run equals an uninterrupted one bit for bit on CPU (same thread
//! count). On CUDA the compute is bf16 with f32 master weights.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::Shard;
use crate::device::{resolve_device, set_threads};
use crate::error::{IoContext, MlError, Result};
use crate::model::{Qwen3, Qwen3Config, load_config, load_safetensors, save_safetensors};
use crate::optim::{AdamW, LrSchedule};
use crate::progress::Progress;
use demix_spec::rng::{SplitMix64, fnv1a64};
use crate::util;

pub use demix_spec::train::{DataMix, DeviceChoice, Precision, TrainConfig};

/// A training: what model to start from, on what mixture, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Architecture for a fresh model; exclusive with `init_from`.
    #[serde(default)]
    pub model: Option<Qwen3Config>,
    /// Checkpoint directory to continue from (resolved path).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    pub data: DataMix,
    #[serde(flatten)]
    pub train: TrainConfig,
}

impl TrainSpec {
    pub fn tokens_per_step(&self) -> u64 {
        self.train.tokens_per_step()
    }
    pub fn total_steps(&self) -> u64 {
        self.train.total_steps()
    }
    pub fn schedule(&self) -> LrSchedule {
        let t = &self.train;
        let warm = t
            .warmup_tokens
            .unwrap_or((t.tokens as f64 * t.warmup_fraction) as u64);
        LrSchedule {
            peak: t.lr,
            warmup_steps: warm.div_ceil(self.tokens_per_step().max(1)),
            total_steps: self.total_steps(),
            min_ratio: t.min_lr_ratio,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(MlError::Spec(m.into()));
        match (&self.model, &self.init_from) {
            (None, None) => return bad("set one of model or init_from"),
            (Some(_), Some(_)) => return bad("set only one of model and init_from"),
            (Some(c), None) => c.validate()?,
            _ => {}
        }
        if let Some(p) = self.train.problems().into_iter().next() {
            return Err(MlError::Spec(p));
        }
        self.data.weights().map_err(MlError::Spec)?;
        Ok(())
    }

    /// Hash of the fields that decide the trajectory (not device, threads,
    /// logging or extra checkpoints), stored in the state to refuse resuming
    /// a different run.
    pub fn fingerprint(&self) -> String {
        let mut s = self.clone();
        s.train.device = DeviceChoice::Auto;
        s.train.threads = 0;
        s.train.state_every_steps = 0;
        s.train.log_every_steps = 0;
        s.train.checkpoints.clear();
        let j = serde_json::to_string(&s).unwrap_or_default();
        format!("{:016x}", fnv1a64(j.as_bytes()))
    }
}

/// Where training reads and writes (all resolved by the engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainPaths {
    /// Shard directory per dataset name used in the mixture.
    pub shards: BTreeMap<String, PathBuf>,
    /// Final checkpoint directory.
    pub output: PathBuf,
    /// Budget checkpoints go to `<checkpoints_dir>/tokens-<budget>`.
    pub checkpoints_dir: PathBuf,
    /// Resume state directory.
    pub state_dir: PathBuf,
    /// Metrics JSON Lines file (appended).
    pub metrics: PathBuf,
    /// tokenizer.json copied into every checkpoint.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
}

impl TrainPaths {
    pub fn checkpoint_dir(&self, budget: u64) -> PathBuf {
        self.checkpoints_dir.join(format!("tokens-{budget}"))
    }
}

/// One line of `metrics.jsonl`. Only what the trajectory decides: a resumed
/// run writes the same bytes as an uninterrupted one (speed and wall time go
/// to the step's log and its result record instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub tokens: u64,
    pub resumed_from_step: u64,
    pub final_loss: f64,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub params: i64,
    pub checkpoints: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeState {
    format: String,
    step: u64,
    tokens: u64,
    fingerprint: String,
    elapsed_s: f64,
    /// The batch of step s comes from SplitMix64::derive(seed, s).
    sampler: String,
    checkpoints_done: Vec<u64>,
}

const STATE_FORMAT: &str = "demix-train-state-v1";

/// Draws a batch for `step`: per sequence, a dataset by weight, then a
/// uniform window of seq_len + 1 tokens in its shard.
pub fn sample_batch(
    seed: u64,
    step: u64,
    mix: &[(f64, &Shard)],
    batch: usize,
    seq: usize,
) -> Vec<i64> {
    let mut rng = SplitMix64::derive(seed, step);
    let mut out = Vec::with_capacity(batch * (seq + 1));
    for _ in 0..batch {
        let u = rng.next_f64();
        let mut acc = 0.0;
        let mut pick = mix.len() - 1;
        for (i, (w, _)) in mix.iter().enumerate() {
            acc += w;
            if u < acc {
                pick = i;
                break;
            }
        }
        let toks = mix[pick].1.tokens();
        let starts = (toks.len() - seq) as u64;
        let s = rng.below(starts) as usize;
        out.extend(toks[s..s + seq + 1].iter().map(|&t| t as i64));
    }
    out
}

fn append_metrics(path: &Path, line: &MetricsLine) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_path(p)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_path(path)?;
    let s = serde_json::to_string(line).unwrap_or_default();
    writeln!(f, "{s}").with_path(path)
}

/// Drops metrics lines past `step` (written after the state we resume from).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(s) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = s
        .lines()
        .filter(|l| {
            serde_json::from_str::<MetricsLine>(l)
                .map(|m| m.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    util::write_atomic(path, kept.as_bytes())
}

fn save_state(model: &Qwen3, opt: &AdamW, st: &ResumeState, dir: &Path) -> Result<()> {
    util::write_dir_atomic(dir, |tmp| {
        save_safetensors(
            &tmp.join("model.safetensors"),
            &model.named_parameters(),
            Some(Kind::Float),
            None,
        )?;
        util::write_json_atomic(&tmp.join("config.json"), &model.config)?;
        opt.save(&tmp.join("optim.safetensors"))?;
        util::write_json_atomic(&tmp.join("state.json"), st)
    })
}

/// Trains per `spec`, resuming from `paths.state_dir` when it holds a state
/// of the same spec. Returns `Err(Cancelled)` after saving the state when
/// `cancel` is set, `Err(NonFiniteLoss)` (nothing saved) on NaN/inf loss.
pub fn train(
    spec: &TrainSpec,
    paths: &TrainPaths,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    spec.validate()?;
    set_threads(spec.train.threads);
    let device = resolve_device(spec.train.device)?;
    let weights = spec.data.weights().map_err(MlError::Spec)?;
    let t = spec.train.seq_len as usize;

    // Model: fresh, or from a checkpoint; the resume state overrides below.
    let (config, init_dir) = match (&spec.model, &spec.init_from) {
        (Some(c), _) => (c.clone(), None),
        (None, Some(d)) => (load_config(d)?, Some(d.clone())),
        _ => unreachable!("validated"),
    };
    let tokenizer = paths.tokenizer.clone().or_else(|| {
        init_dir
            .as_ref()
            .map(|d| d.join("tokenizer.json"))
            .filter(|p| p.exists())
    });

    let mut shards = vec![];
    for (name, w) in &weights {
        let dir = paths
            .shards
            .get(name)
            .ok_or_else(|| MlError::Spec(format!("no shard given for dataset '{name}'")))?;
        let sh = Shard::open(dir)?;
        if sh.tokens().len() <= t {
            return Err(MlError::Shard {
                path: dir.clone(),
                msg: format!(
                    "{} tokens, fewer than seq_len + 1 = {}",
                    sh.tokens().len(),
                    spec.train.seq_len + 1
                ),
            });
        }
        if sh.meta.vocab_size as i64 > config.vocab_size {
            return Err(MlError::Shard {
                path: dir.clone(),
                msg: format!(
                    "tokenizer vocabulary {} exceeds the model's vocab_size {}",
                    sh.meta.vocab_size, config.vocab_size
                ),
            });
        }
        shards.push((*w, sh));
    }
    if let Some(h) = shards.first().map(|(_, s)| s.meta.tokenizer_hash.clone())
        && let Some((_, s)) = shards.iter().find(|(_, s)| s.meta.tokenizer_hash != h)
    {
        return Err(MlError::Shard {
            path: s.dir.clone(),
            msg: "tokenized with a different tokenizer than the other shards".into(),
        });
    }

    let state_json = paths.state_dir.join("state.json");
    let resume: Option<ResumeState> = if state_json.exists() {
        let st: ResumeState = util::read_json(&state_json)?;
        if st.format != STATE_FORMAT || st.fingerprint != spec.fingerprint() {
            return Err(MlError::Spec(format!(
                "{} belongs to a different training spec; remove it to start over",
                paths.state_dir.display()
            )));
        }
        Some(st)
    } else {
        None
    };

    // Before allocating anything: a configuration that cannot fit is an error
    // that says so, not a failure deep inside libtorch.
    if device == Device::Cpu {
        let rows = spec.train.micro_batch_size.unwrap_or(spec.train.batch_size) as u64;
        let need = config.shape().training_bytes(rows, spec.train.seq_len as u64);
        if let Some(have) = demix_spec::estimate::available_memory()
            && need > have
        {
            return Err(MlError::Config(format!(
                "training this model needs about {} of memory ({} parameters: hidden_size {}, intermediate_size {}, num_hidden_layers {}, vocab_size {}; {} rows of {} tokens at once), and this machine has {} available: make the model or `micro_batch_size` smaller",
                demix_fs::human_bytes(need),
                config.num_params(),
                config.hidden_size,
                config.intermediate_size,
                config.num_hidden_layers,
                config.vocab_size,
                rows,
                spec.train.seq_len,
                demix_fs::human_bytes(have)
            )));
        }
    }
    let model = match (&resume, &init_dir) {
        (Some(_), _) => {
            let (sd, _) =
                load_safetensors(&paths.state_dir.join("model.safetensors"), Device::Cpu)?;
            Qwen3::from_state_dict(&config, sd, device)?
        }
        (None, Some(d)) => Qwen3::load(d, device)?,
        (None, None) => Qwen3::init(&config, spec.train.seed, device)?,
    };
    let mut model = model;
    model.compute_kind = match (spec.train.precision, device) {
        (Precision::F32, _) | (Precision::Auto, Device::Cpu) => Kind::Float,
        _ => Kind::BFloat16,
    };
    model.set_requires_grad(true);
    let mut opt = AdamW::new(
        model.named_parameters(),
        (spec.train.betas[0], spec.train.betas[1]),
        spec.train.eps,
        spec.train.weight_decay,
    )?;
    let mut checkpoints_done = vec![];
    let mut prior_elapsed = 0.0;
    let start_step = match &resume {
        Some(st) => {
            opt.load(&paths.state_dir.join("optim.safetensors"))?;
            if opt.step != st.step {
                return Err(MlError::checkpoint(
                    &paths.state_dir,
                    "optimizer step differs from state.json",
                ));
            }
            truncate_metrics(&paths.metrics, st.step)?;
            checkpoints_done = st.checkpoints_done.clone();
            prior_elapsed = st.elapsed_s;
            st.step
        }
        None => {
            // A start from scratch: lines an attempt killed before its first
            // saved state wrote are not this run's.
            match std::fs::remove_file(&paths.metrics) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(MlError::io(&paths.metrics, e));
                }
                _ => {}
            }
            0
        }
    };

    let sched = spec.schedule();
    let total = spec.total_steps();
    let tps = spec.tokens_per_step();
    let (b, t) = (spec.train.batch_size as usize, spec.train.seq_len as usize);
    let mix: Vec<(f64, &Shard)> = shards.iter().map(|(w, s)| (*w, s)).collect();
    let started = Instant::now();
    let mut last_log = (Instant::now(), start_step);
    let mut last_loss = f64::NAN;
    let mut saved = vec![];
    let make_state = |step: u64, done: &Vec<u64>, elapsed: f64| ResumeState {
        format: STATE_FORMAT.into(),
        step,
        tokens: step * tps,
        fingerprint: spec.fingerprint(),
        elapsed_s: elapsed,
        sampler: format!("splitmix64(seed={}, step)", spec.train.seed),
        checkpoints_done: done.clone(),
    };

    for step in start_step + 1..=total {
        let data = sample_batch(spec.train.seed, step, &mix, b, t);
        let batch = Tensor::from_slice(&data)
            .view([b as i64, t as i64 + 1])
            .to_device(device);
        // Gradient accumulation: each micro-batch's mean loss, scaled by its share
        // of the rows, sums to the whole batch's mean loss.
        let micro = spec.train.micro_batch_size.map_or(b, |m| m as usize).min(b);
        let mut lv = 0.0;
        for start in (0..b).step_by(micro) {
            let rows = batch.narrow(0, start as i64, micro as i64);
            let inputs = rows.narrow(1, 0, t as i64);
            let targets = rows.narrow(1, 1, t as i64);
            let loss = model.loss(&inputs, &targets) * (micro as f64 / b as f64);
            let part = loss.double_value(&[]);
            if !part.is_finite() {
                return Err(MlError::NonFiniteLoss { step });
            }
            lv += part;
            loss.backward();
        }
        let gn = opt.clip_grad_norm(spec.train.grad_clip);
        let lr = sched.lr(step);
        opt.update(lr);
        opt.zero_grad();
        last_loss = lv;
        let tokens = step * tps;
        let elapsed = prior_elapsed + started.elapsed().as_secs_f64();

        if step % spec.train.log_every_steps.max(1) == 0 || step == total {
            let dt = last_log.0.elapsed().as_secs_f64().max(1e-9);
            let rate = (step - last_log.1) as f64 * tps as f64 / dt;
            last_log = (Instant::now(), step);
            append_metrics(
                &paths.metrics,
                &MetricsLine {
                    step,
                    tokens,
                    loss: lv,
                    lr,
                    grad_norm: gn,
                },
            )?;
            progress(&Progress {
                stage: "train",
                current: tokens,
                total: total * tps,
                unit: "tokens",
                message: format!("step {step}/{total} loss {lv:.4} lr {lr:.2e} {rate:.0} tokens/s"),
            });
        }

        for &bud in &spec.train.checkpoints {
            if bud <= tokens && !checkpoints_done.contains(&bud) {
                let d = paths.checkpoint_dir(bud);
                model.save(&d, tokenizer.as_deref())?;
                checkpoints_done.push(bud);
                saved.push(d);
            }
        }

        if cancel.load(Ordering::Relaxed) {
            save_state(
                &model,
                &opt,
                &make_state(step, &checkpoints_done, elapsed),
                &paths.state_dir,
            )?;
            return Err(MlError::Cancelled);
        }
        if spec.train.state_every_steps > 0 && step % spec.train.state_every_steps == 0 && step < total {
            save_state(
                &model,
                &opt,
                &make_state(step, &checkpoints_done, elapsed),
                &paths.state_dir,
            )?;
        }
    }

    model.save(&paths.output, tokenizer.as_deref())?;
    let elapsed = prior_elapsed + started.elapsed().as_secs_f64();
    save_state(
        &model,
        &opt,
        &make_state(total, &checkpoints_done, elapsed),
        &paths.state_dir,
    )?;
    let run_s = started.elapsed().as_secs_f64().max(1e-9);
    Ok(TrainSummary {
        steps: total,
        tokens: total * tps,
        resumed_from_step: start_step,
        final_loss: last_loss,
        elapsed_s: elapsed,
        tokens_per_s: (total - start_step) as f64 * tps as f64 / run_s,
        params: config.num_params(),
        checkpoints: saved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_mix_forms_and_schedule() {
        let c: DataMix =
            serde_json::from_str(r#"{"candidate":"math","general":"sotu","beta":0.25}"#).unwrap();
        let w = c.weights().unwrap();
        assert_eq!((w["math"], w["sotu"]), (0.75, 0.25));
        let m: DataMix = serde_json::from_str(r#"{"math":2,"sotu":6,"code":0}"#).unwrap();
        let w = m.weights().unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!((w["math"], w["sotu"]), (0.25, 0.75));
        assert!(
            DataMix::Weights([("a".to_string(), -1.0)].into())
                .weights()
                .is_err()
        );
        let spec: TrainSpec = serde_json::from_value(serde_json::json!({
            "init_from": "/ck", "data": {"a": 1}, "tokens": 10000,
            "batch_size": 2, "seq_len": 10, "warmup_tokens": 100
        }))
        .unwrap();
        assert_eq!(spec.total_steps(), 500);
        let s = spec.schedule();
        assert_eq!((s.warmup_steps, s.total_steps), (5, 500));
        assert_eq!(s.min_ratio, 0.2);
        spec.validate().unwrap();
        let mut bad = spec.clone();
        bad.train.checkpoints = vec![20000];
        assert!(bad.validate().is_err());
        let mut other = spec.clone();
        other.train.device = DeviceChoice::Cuda(0);
        other.train.checkpoints = vec![5000];
        assert_eq!(other.fingerprint(), spec.fingerprint());
        other.train.lr = 1e-3;
        assert_ne!(other.fingerprint(), spec.fingerprint());
    }
}
