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

use crate::checkpoint::{load_config, load_safetensors, save_safetensors};
use crate::data::Shard;
use crate::device::{resolve_device, set_threads};
use crate::dist::World;
use crate::error::{IoContext, MlError, Result};
use crate::model::{Qwen3, Qwen3Config};
use crate::optim::{AdamW, LrSchedule};
use crate::progress::Progress;
use crate::util;
use demix_spec::rng::{SplitMix64, fnv1a64};

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
        self.data
            .weights()
            .map_err(|e| MlError::Spec(e.to_string()))?;
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
    /// The device that trained it (`auto` resolved), and the compute dtype.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub compute: String,
    /// Data-parallel ranks (1 without).
    #[serde(default)]
    pub ranks: usize,
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
            &BTreeMap::new(),
        )?;
        util::write_json_atomic(&tmp.join("config.json"), &model.config)?;
        opt.save(&tmp.join("optim.safetensors"))?;
        util::write_json_atomic(&tmp.join("state.json"), st)
    })
}

/// Trains per `spec`, resuming from `paths.state_dir` when it holds a state
/// of the same spec. Returns `Err(Cancelled)` after saving the state when
/// `cancel` is set, `Err(NonFiniteLoss)` (nothing saved) on NaN/inf loss.
///
/// Started as one of several ranks (by mpirun or srun), it trains data
/// parallel: each rank computes its slice of every global batch, gradients
/// are summed over the ranks, and rank 0 alone writes.
pub fn train(
    spec: &TrainSpec,
    paths: &TrainPaths,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    spec.validate()?;
    let device = resolve_device(spec.train.device)?;
    let world = World::join(device)?;
    set_threads(threads(spec, world));
    let slice = RankSlice::new(spec, world)?;
    let weights = spec
        .data
        .weights()
        .map_err(|e| MlError::Spec(e.to_string()))?;
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
    let shards = open_shards(spec, paths, &weights, &config)?;
    let resume = read_resume(spec, paths)?;
    if device == Device::Cpu {
        check_memory(spec, &config, slice.rows)?;
    }
    let mut model = match (&resume, &init_dir) {
        (Some(_), _) => {
            let (sd, _) =
                load_safetensors(&paths.state_dir.join("model.safetensors"), Device::Cpu)?;
            Qwen3::from_state_dict(&config, sd, device)?
        }
        (None, Some(d)) => Qwen3::load(d, device)?,
        (None, None) => Qwen3::init(&config, spec.train.seed, device)?,
    };
    model.compute_kind = match (spec.train.precision, device) {
        (Precision::F32, _) | (Precision::Auto, Device::Cpu) => Kind::Float,
        _ => Kind::BFloat16,
    };
    model.set_requires_grad(true);
    let opt = AdamW::new(
        model.named_parameters(),
        (spec.train.betas[0], spec.train.betas[1]),
        spec.train.eps,
        spec.train.weight_decay,
    )?;
    let mut run = Run {
        spec,
        paths,
        world,
        slice,
        tokenizer,
        model,
        opt,
        device,
        checkpoints_done: vec![],
        saved: vec![],
        prior_elapsed: 0.0,
        resumed_from: 0,
        started: Instant::now(),
        pending: vec![],
        last_loss: f64::NAN,
    };
    let start_step = run.start(resume.as_ref())?;
    if start_step > 0 {
        // The first progress of a resumed step says so, and from where (the
        // engine copies it to the step's log).
        let tps = spec.tokens_per_step();
        progress(&Progress {
            stage: "train",
            current: start_step * tps,
            total: spec.total_steps() * tps,
            unit: "tokens",
            message: format!(
                "resumed from step {start_step}/{} ({} trained before)",
                spec.total_steps(),
                demix_fs::human_duration(run.prior_elapsed)
            ),
        });
    }
    let mix: Vec<(f64, &Shard)> = shards.iter().map(|(w, s)| (*w, s)).collect();
    for step in start_step + 1..=spec.total_steps() {
        run.step(step, &mix)?;
        if run.after_step(step, progress, cancel)? {
            return Err(MlError::Cancelled);
        }
    }
    run.finish(start_step, &config)
}

/// CPU threads of this process: the spec's, else with several ranks on a
/// node, the engine's share per rank (`DEMIX_RANK_THREADS`, set by the local
/// launcher) or the CPUs Slurm gave the task.
fn threads(spec: &TrainSpec, world: Option<&World>) -> u32 {
    if spec.train.threads > 0 || world.is_none() {
        return spec.train.threads;
    }
    ["DEMIX_RANK_THREADS", "SLURM_CPUS_PER_TASK"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// The rows of each global batch this rank computes, and how many at once.
struct RankSlice {
    /// First row and rows of this rank.
    first: usize,
    rows: usize,
    micro: usize,
}

impl RankSlice {
    fn new(spec: &TrainSpec, world: Option<&World>) -> Result<RankSlice> {
        let b = spec.train.batch_size as usize;
        let (rank, size) = world.map_or((0, 1), |w| (w.rank, w.size));
        if !b.is_multiple_of(size) {
            return Err(MlError::Spec(format!(
                "`batch_size` {b} does not split evenly over {size} ranks: make it a multiple of the rank count"
            )));
        }
        let rows = b / size;
        let micro = spec
            .train
            .micro_batch_size
            .map_or(rows, |m| m as usize)
            .min(rows);
        if micro == 0 || !rows.is_multiple_of(micro) {
            return Err(MlError::Spec(format!(
                "`micro_batch_size` {micro} does not divide the {rows} rows each of {size} ranks computes"
            )));
        }
        Ok(RankSlice {
            first: rank * rows,
            rows,
            micro,
        })
    }
}

/// The mixture's shards, checked against the sequence length and the model.
fn open_shards(
    spec: &TrainSpec,
    paths: &TrainPaths,
    weights: &BTreeMap<String, f64>,
    config: &Qwen3Config,
) -> Result<Vec<(f64, Shard)>> {
    let t = spec.train.seq_len as usize;
    let mut shards = vec![];
    for (name, w) in weights {
        let dir = paths
            .shards
            .get(name)
            .ok_or_else(|| MlError::Spec(format!("no shard given for dataset '{name}'")))?;
        let sh = Shard::open(dir)?;
        let bad = |msg: String| MlError::Shard {
            path: dir.clone(),
            msg,
        };
        if sh.tokens().len() <= t {
            return Err(bad(format!(
                "{} tokens, fewer than seq_len + 1 = {}",
                sh.tokens().len(),
                spec.train.seq_len + 1
            )));
        }
        if sh.meta.vocab_size as i64 > config.vocab_size {
            return Err(bad(format!(
                "tokenizer vocabulary {} exceeds the model's vocab_size {}",
                sh.meta.vocab_size, config.vocab_size
            )));
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
    Ok(shards)
}

/// The saved state to resume from, if there is one of this spec.
fn read_resume(spec: &TrainSpec, paths: &TrainPaths) -> Result<Option<ResumeState>> {
    let state_json = paths.state_dir.join("state.json");
    if !state_json.exists() {
        return Ok(None);
    }
    let st: ResumeState = util::read_json(&state_json)?;
    if st.format != STATE_FORMAT || st.fingerprint != spec.fingerprint() {
        return Err(MlError::Spec(format!(
            "{} belongs to a different training spec; remove it to start over",
            paths.state_dir.display()
        )));
    }
    Ok(Some(st))
}

/// Before allocating anything: a configuration that cannot fit is an error
/// that says so, not a failure deep inside libtorch.
fn check_memory(spec: &TrainSpec, config: &Qwen3Config, rows: usize) -> Result<()> {
    let rows = spec
        .train
        .micro_batch_size
        .map_or(rows as u64, u64::from)
        .min(rows as u64);
    let need = config
        .shape()
        .training_bytes(rows, spec.train.seq_len as u64);
    let Some(have) = demix_spec::estimate::available_memory() else {
        return Ok(());
    };
    if need <= have {
        return Ok(());
    }
    Err(MlError::Config(format!(
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
    )))
}

/// Steps whose loss and gradient norm are still on the device: read back
/// together, so no step waits on the host.
const MAX_PENDING: usize = 32;

/// One step's values, read back later.
struct Pending {
    step: u64,
    lr: f64,
    loss: Tensor,
    grad_norm: Tensor,
}

/// A training in progress.
struct Run<'a> {
    spec: &'a TrainSpec,
    paths: &'a TrainPaths,
    world: Option<&'static World>,
    slice: RankSlice,
    tokenizer: Option<PathBuf>,
    model: Qwen3,
    opt: AdamW,
    device: Device,
    checkpoints_done: Vec<u64>,
    saved: Vec<PathBuf>,
    prior_elapsed: f64,
    /// The step this process went on from (0 for a fresh start).
    resumed_from: u64,
    started: Instant,
    pending: Vec<Pending>,
    last_loss: f64,
}

impl Run<'_> {
    /// Only rank 0 writes (metrics, checkpoints, state).
    fn writes(&self) -> bool {
        self.world.is_none_or(|w| w.rank == 0)
    }

    /// Loads the resumed optimizer state; returns the step to go on from.
    fn start(&mut self, resume: Option<&ResumeState>) -> Result<u64> {
        let Some(st) = resume else {
            // A start from scratch: lines an attempt killed before its first
            // saved state wrote are not this run's.
            if self.writes() {
                match std::fs::remove_file(&self.paths.metrics) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(MlError::io(&self.paths.metrics, e));
                    }
                    _ => {}
                }
            }
            return Ok(0);
        };
        self.opt
            .load(&self.paths.state_dir.join("optim.safetensors"))?;
        if self.opt.step != st.step {
            return Err(MlError::checkpoint(
                &self.paths.state_dir,
                "optimizer step differs from state.json",
            ));
        }
        if self.writes() {
            truncate_metrics(&self.paths.metrics, st.step)?;
        }
        self.checkpoints_done = st.checkpoints_done.clone();
        self.prior_elapsed = st.elapsed_s;
        self.resumed_from = st.step;
        Ok(st.step)
    }

    /// Forward, backward (in micro-batches), the gradient sum over the ranks,
    /// clipping and the update. Nothing here reads a value back to the host.
    fn step(&mut self, step: u64, mix: &[(f64, &Shard)]) -> Result<()> {
        let (b, t) = (
            self.spec.train.batch_size as usize,
            self.spec.train.seq_len as usize,
        );
        let data = sample_batch(self.spec.train.seed, step, mix, b, t);
        let row = t + 1;
        let mine = &data[self.slice.first * row..(self.slice.first + self.slice.rows) * row];
        let batch = Tensor::from_slice(mine)
            .view([self.slice.rows as i64, row as i64])
            .to_device(self.device);
        // Each micro-batch's mean loss, scaled by its share of the global
        // batch's rows: summed over micro-batches and ranks, the batch mean.
        let micro = self.slice.micro;
        let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
        for start in (0..self.slice.rows).step_by(micro) {
            let rows = batch.narrow(0, start as i64, micro as i64);
            let inputs = rows.narrow(1, 0, t as i64);
            let targets = rows.narrow(1, 1, t as i64);
            let loss = self.model.loss(&inputs, &targets) * (micro as f64 / b as f64);
            loss_sum += loss.detach().to_kind(Kind::Float);
            loss.backward();
        }
        if let Some(w) = self.world {
            let mut all = self.opt.grads();
            all.push(loss_sum.shallow_clone());
            w.all_reduce_sum(&all)?;
        }
        let grad_norm = self.opt.clip_grad_norm(self.spec.train.grad_clip)?;
        let lr = self.spec.schedule().lr(step);
        self.opt.update(lr)?;
        self.opt.zero_grad();
        self.pending.push(Pending {
            step,
            lr,
            loss: loss_sum,
            grad_norm,
        });
        Ok(())
    }

    /// Reads back pending values, logs them, and saves what is due. Returns
    /// whether the run was cancelled (its state saved).
    fn after_step(
        &mut self,
        step: u64,
        progress: &dyn Fn(&Progress),
        cancel: &AtomicBool,
    ) -> Result<bool> {
        let total = self.spec.total_steps();
        let tokens = step * self.spec.tokens_per_step();
        let checkpoint_due = self
            .spec
            .train
            .checkpoints
            .iter()
            .any(|&bud| bud <= tokens && !self.checkpoints_done.contains(&bud));
        let every = self.spec.train.state_every_steps;
        let state_due = every > 0 && step.is_multiple_of(every) && step < total;
        if step.is_multiple_of(self.spec.train.log_every_steps.max(1)) || step == total {
            self.report(step, progress);
        }
        let cancelled = match self.world {
            Some(w) => w.any(cancel.load(Ordering::Relaxed)),
            None => cancel.load(Ordering::Relaxed),
        };
        if self.pending.len() >= MAX_PENDING
            || step == total
            || checkpoint_due
            || state_due
            || cancelled
        {
            self.flush()?;
        }
        if checkpoint_due && self.writes() {
            for &bud in &self.spec.train.checkpoints {
                if bud <= tokens && !self.checkpoints_done.contains(&bud) {
                    let d = self.paths.checkpoint_dir(bud);
                    self.model.save(&d, self.tokenizer.as_deref())?;
                    self.checkpoints_done.push(bud);
                    self.saved.push(d);
                }
            }
        }
        if (cancelled || state_due) && self.writes() {
            self.save_state(step)?;
        }
        Ok(cancelled)
    }

    /// One read-back of every pending step: a non-finite loss is an error
    /// (before anything is saved); log steps go to metrics.jsonl.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let read = |ts: Vec<Tensor>| -> Result<Vec<f64>> {
            let t = Tensor::f_stack(&ts, 0)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?;
            Ok(Vec::<f64>::try_from(t)?)
        };
        let losses = read(pending.iter().map(|p| p.loss.shallow_clone()).collect())?;
        let norms = read(
            pending
                .iter()
                .map(|p| p.grad_norm.to_kind(Kind::Float))
                .collect(),
        )?;
        if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
            return Err(MlError::NonFiniteLoss {
                step: pending[i].step,
            });
        }
        let total = self.spec.total_steps();
        let tps = self.spec.tokens_per_step();
        let every = self.spec.train.log_every_steps.max(1);
        for (i, p) in pending.iter().enumerate() {
            self.last_loss = losses[i];
            if self.writes() && (p.step.is_multiple_of(every) || p.step == total) {
                append_metrics(
                    &self.paths.metrics,
                    &MetricsLine {
                        step: p.step,
                        tokens: p.step * tps,
                        loss: losses[i],
                        lr: p.lr,
                        grad_norm: norms[i],
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Progress at `step`, with the loss last read back (no host sync here).
    fn report(&self, step: u64, progress: &dyn Fn(&Progress)) {
        let total = self.spec.total_steps();
        let tps = self.spec.tokens_per_step();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = step as f64 * tps as f64 / (secs + self.prior_elapsed);
        let lr = self.spec.schedule().lr(step);
        // The loss of the last step read back, once there is one.
        let loss = if self.last_loss.is_finite() {
            format!(" loss {:.4}", self.last_loss)
        } else {
            String::new()
        };
        // The time left at this run's own rate (steps before a resume ran
        // in an earlier process and do not count towards it).
        let here = step.saturating_sub(self.resumed_from) as f64 * tps as f64 / secs;
        let eta = if step < total && here > 0.0 {
            let left = (total - step) as f64 * tps as f64 / here;
            format!(", ETA {}", demix_fs::human_duration(left))
        } else {
            String::new()
        };
        progress(&Progress {
            stage: "train",
            current: step * tps,
            total: total * tps,
            unit: "tokens",
            message: format!("step {step}/{total}{loss} lr {lr:.2e} {rate:.0} tokens/s{eta}"),
        });
    }

    fn resume_state(&self, step: u64) -> ResumeState {
        ResumeState {
            format: STATE_FORMAT.into(),
            step,
            tokens: step * self.spec.tokens_per_step(),
            fingerprint: self.spec.fingerprint(),
            elapsed_s: self.prior_elapsed + self.started.elapsed().as_secs_f64(),
            sampler: format!("splitmix64(seed={}, step)", self.spec.train.seed),
            checkpoints_done: self.checkpoints_done.clone(),
        }
    }

    fn save_state(&self, step: u64) -> Result<()> {
        save_state(
            &self.model,
            &self.opt,
            &self.resume_state(step),
            &self.paths.state_dir,
        )
    }

    /// The final checkpoint and state (rank 0), and the run's summary.
    fn finish(mut self, start_step: u64, config: &Qwen3Config) -> Result<TrainSummary> {
        let total = self.spec.total_steps();
        self.flush()?;
        if self.writes() {
            self.model
                .save(&self.paths.output, self.tokenizer.as_deref())?;
            self.save_state(total)?;
        }
        if let Some(w) = self.world {
            // The others end once rank 0's files are complete.
            w.barrier();
        }
        let tps = self.spec.tokens_per_step();
        let run_s = self.started.elapsed().as_secs_f64().max(1e-9);
        Ok(TrainSummary {
            steps: total,
            tokens: total * tps,
            resumed_from_step: start_step,
            final_loss: self.last_loss,
            elapsed_s: self.prior_elapsed + run_s,
            tokens_per_s: (total - start_step) as f64 * tps as f64 / run_s,
            params: config.num_params(),
            checkpoints: self.saved,
            device: crate::device::device_name(self.device),
            compute: match self.model.compute_kind {
                Kind::BFloat16 => "bf16".into(),
                _ => "f32".into(),
            },
            ranks: self.world.map_or(1, |w| w.size),
        })
    }
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
