//! Evaluation: per-dataset validation loss, perplexity and bits per byte, and
//! benchmark tasks from JSON Lines (multiple choice by log-likelihood;
//! question/answer by answer log-likelihood and greedy exact match).
//!
//! Bits per byte = (sum of NLL in nats over every predicted token of whole
//! documents, separators included) / ln 2 / (UTF-8 bytes of those documents),
//! comparable across tokenizers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::data::Shard;
pub use demix_spec::evaluate::{
    DatasetMetrics, EvalConfig as EvalSpec, EvalReport, EvalSample, TaskMetrics,
};

use crate::device::{resolve_device, set_threads};
use crate::error::{IoContext, MlError, Result};
use crate::model::{Qwen3, Qwen3Config, load_checkpoint_tensors, load_config};
use crate::progress::Progress;
use crate::tokenizer::Tok;
use crate::util;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPaths {
    /// Validation shard directory per dataset name.
    #[serde(default)]
    pub validation: BTreeMap<String, PathBuf>,
    /// Task JSON Lines file per task name.
    #[serde(default)]
    pub tasks: BTreeMap<String, PathBuf>,
    /// Where to write the metrics JSON (optional).
    #[serde(default)]
    pub output: Option<PathBuf>,
}

fn check_cancel(c: &AtomicBool) -> Result<()> {
    if c.load(Ordering::Relaxed) {
        Err(MlError::Cancelled)
    } else {
        Ok(())
    }
}

/// Summed NLL (nats) of each window's targets given its inputs, for a batch of
/// equal-length windows `[n, len]`.
fn window_nll(model: &Qwen3, windows: &[&[u32]]) -> Vec<f64> {
    let n = windows.len() as i64;
    let len = windows[0].len() as i64;
    let flat: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.iter().map(|&t| t as i64))
        .collect();
    let x = Tensor::from_slice(&flat)
        .view([n, len])
        .to_device(model.device);
    let inp = x.narrow(1, 0, len - 1);
    let tgt = x.narrow(1, 1, len - 1);
    let logits = model.forward(&inp);
    let per_token = logits
        .view([-1, model.config.vocab_size])
        .cross_entropy_loss::<Tensor>(&tgt.reshape([-1]), None, Reduction::None, -100, 0.0)
        .to_kind(Kind::Double)
        .view([n, len - 1])
        .sum_dim_intlist(1, false, Kind::Double)
        .to_device(Device::Cpu);
    Vec::<f64>::try_from(&per_token).unwrap_or_default()
}

/// The windows of `seq_len + 1` tokens (overlapping by one, so every token
/// after the first is predicted once) that an evaluation of at most
/// `max_tokens` predicted tokens scores: all of them when the shard is small
/// enough, else one drawn at random from each of equal stretches of the
/// shard, so the sample spreads over all of it whatever order its documents
/// are in. Returns (start, end) token ranges in shard order, and the count.
pub fn sample_windows(
    n_tokens: u64,
    seq_len: usize,
    max_tokens: u64,
    seed: u64,
) -> (Vec<(u64, u64)>, u64) {
    let seq = seq_len.max(1) as u64;
    if n_tokens < 2 {
        return (Vec::new(), 0);
    }
    let all = (n_tokens - 1).div_ceil(seq);
    let window = |k: u64| (k * seq, (k * seq + seq + 1).min(n_tokens));
    if max_tokens >= n_tokens - 1 {
        return ((0..all).map(window).collect(), all);
    }
    if max_tokens < seq {
        // One short window: the budget is below one sequence.
        let mut rng = demix_spec::rng::SplitMix64::derive(seed, 0);
        let s = rng.below(n_tokens - max_tokens);
        return (vec![(s, s + max_tokens + 1)], all);
    }
    let want = (max_tokens / seq).clamp(1, all);
    let out = (0..want)
        .map(|k| {
            let (lo, hi) = (k * all / want, (k + 1) * all / want);
            let mut rng = demix_spec::rng::SplitMix64::derive(seed, k);
            window(lo + rng.below((hi - lo).max(1)))
        })
        .collect();
    (out, all)
}

/// Validation metrics of `model` on a sample of `shard` (see [`sample_windows`]).
pub fn validation_metrics(
    model: &Qwen3,
    shard: &Shard,
    spec: &EvalSpec,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<DatasetMetrics> {
    if shard.meta.vocab_size as i64 > model.config.vocab_size {
        return Err(MlError::Shard {
            path: shard.dir.clone(),
            msg: "tokenizer vocabulary exceeds the model's vocab_size".into(),
        });
    }
    let toks = shard.tokens();
    let seq = spec.seq_len().max(1);
    let (windows, of_windows) =
        sample_windows(toks.len() as u64, seq, spec.max_tokens().max(1), spec.sample_seed);
    if windows.is_empty() {
        return Err(MlError::Shard {
            path: shard.dir.clone(),
            msg: "no validation text to score (fewer than 2 tokens)".into(),
        });
    }
    // Documents touched and bytes scored, pro rata for partly scored documents,
    // by the tokens predicted: a window [a, b) predicts a + 1 .. b.
    let ends: Vec<(u64, u64)> = shard.doc_ends().collect();
    let mut touched = std::collections::BTreeSet::new();
    let mut bytes = 0.0;
    for &(a, b) in &windows {
        let a = a + 1;
        let mut d = ends.partition_point(|&(e, _)| e <= a);
        let mut start_of = if d == 0 { 0 } else { ends[d - 1].0 };
        while d < ends.len() && start_of < b {
            let (e, nb) = ends[d];
            let overlap = e.min(b).saturating_sub(a.max(start_of));
            if overlap > 0 {
                touched.insert(d as u64);
                bytes += nb as f64 * overlap as f64 / (e - start_of).max(1) as f64;
            }
            start_of = e;
            d += 1;
        }
    }
    let total_predicted: u64 = windows.iter().map(|(a, b)| b - a - 1).sum();
    let mut per_window = vec![(0.0, 0u64); windows.len()];
    let mut done = 0u64;
    tch::no_grad(|| -> Result<()> {
        // Equal-length windows go in batches; a shorter last one alone.
        let mut by_len: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, (a, b)) in windows.iter().enumerate() {
            by_len.entry(b - a).or_default().push(i);
        }
        for idx in by_len.values() {
            for chunk in idx.chunks((spec.batch_size as usize).max(1)) {
                check_cancel(cancel)?;
                let rows: Vec<&[u32]> = chunk
                    .iter()
                    .map(|&i| &toks[windows[i].0 as usize..windows[i].1 as usize])
                    .collect();
                let nll = window_nll(model, &rows);
                for (&i, x) in chunk.iter().zip(nll) {
                    let n = windows[i].1 - windows[i].0 - 1;
                    per_window[i] = (x, n);
                    done += n;
                }
                progress(&Progress {
                    stage: "evaluate",
                    current: done,
                    total: total_predicted,
                    unit: "tokens",
                    message: shard.dir.display().to_string(),
                });
            }
        }
        Ok(())
    })?;
    let nll: f64 = per_window.iter().map(|w| w.0).sum();
    let tokens: u64 = per_window.iter().map(|w| w.1).sum();
    let loss = nll / tokens.max(1) as f64;
    if !loss.is_finite() {
        return Err(MlError::NonFinite(format!(
            "the validation loss on {} is not finite: the model's weights or outputs are not finite numbers",
            shard.dir.display()
        )));
    }
    let n = per_window.len();
    let loss_se = (n > 1).then(|| {
        let ss: f64 = per_window
            .iter()
            .map(|(x, t)| (x - loss * *t as f64).powi(2))
            .sum();
        (ss * n as f64 / (n - 1) as f64).sqrt() / tokens.max(1) as f64
    });
    Ok(DatasetMetrics {
        tokens,
        documents: touched.len() as u64,
        bytes: bytes.round() as u64,
        loss,
        loss_se,
        perplexity: loss.exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes.max(1.0),
        sample: Some(EvalSample {
            seed: spec.sample_seed,
            seq_len: seq,
            windows: windows.len() as u64,
            of_windows,
            documents: touched.into_iter().collect(),
        }),
        per_window,
    })
}

#[derive(Debug, Deserialize)]
struct TaskLine {
    #[serde(default)]
    id: Option<serde_json::Value>,
    prompt: String,
    #[serde(default)]
    choices: Option<Vec<String>>,
    #[serde(default)]
    label: Option<usize>,
    #[serde(default)]
    answer: Option<String>,
}

enum Example {
    Mc {
        prompt: String,
        choices: Vec<String>,
        label: usize,
    },
    Qa {
        prompt: String,
        answer: String,
    },
}

fn read_task(path: &Path, max: usize) -> Result<Vec<Example>> {
    let f = std::fs::File::open(path).with_path(path)?;
    let mut out = vec![];
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_path(path)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| MlError::BadLine {
            path: path.into(),
            line: i as u64 + 1,
            msg,
        };
        let t: TaskLine = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let _ = t.id;
        out.push(match (t.choices, t.label, t.answer) {
            (Some(c), Some(l), None) => {
                if l >= c.len() {
                    return Err(bad(format!("label {l} but {} choices", c.len())));
                }
                Example::Mc {
                    prompt: t.prompt,
                    choices: c,
                    label: l,
                }
            }
            (None, None, Some(a)) => Example::Qa {
                prompt: t.prompt,
                answer: a,
            },
            _ => {
                return Err(bad(
                    "expected either \"choices\" + \"label\" or \"answer\"".into()
                ));
            }
        });
        if max > 0 && out.len() >= max {
            break;
        }
    }
    Ok(out)
}

/// Context ids (EOS first, as documents follow a separator in training) and
/// continuation ids, split the way lm-eval-harness does: encode the whole
/// string and take what follows the context's tokens.
fn split_ids(tok: &Tok, prompt: &str, cont: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let ctx = tok.encode(prompt)?;
    let whole = tok.encode(&format!("{prompt}{cont}"))?;
    let cont_ids = if whole.starts_with(&ctx) && whole.len() > ctx.len() {
        whole[ctx.len()..].to_vec()
    } else {
        tok.encode(cont)?
    };
    let mut c = vec![tok.eos_id()];
    c.extend(ctx);
    Ok((c, cont_ids))
}

/// Sum and count of log p(cont | ctx), truncating the context from the left
/// to the model's maximum length.
fn continuation_logprob(model: &Qwen3, ctx: &[u32], cont: &[u32]) -> (f64, usize) {
    if cont.is_empty() {
        return (0.0, 0);
    }
    let max = model.config.max_position_embeddings.max(2) as usize;
    let mut all: Vec<i64> = ctx.iter().chain(cont).map(|&t| t as i64).collect();
    if all.len() > max + 1 {
        all.drain(..all.len() - max - 1);
    }
    let n = all.len() as i64;
    let k = cont.len().min(all.len() - 1) as i64;
    let x = Tensor::from_slice(&all)
        .view([1, n])
        .to_device(model.device);
    let logits = model.forward(&x.narrow(1, 0, n - 1));
    let lp = logits.narrow(1, n - 1 - k, k).log_softmax(-1, Kind::Float);
    let tgt = x.narrow(1, n - k, k).unsqueeze(-1);
    let s = lp
        .gather(-1, &tgt, false)
        .to_kind(Kind::Double)
        .sum(Kind::Double);
    (s.double_value(&[]), k as usize)
}

/// Greedy decoding without a KV cache (prompts and answers are short);
/// stops at EOS, a newline, or `max_new` tokens.
pub fn greedy_generate(model: &Qwen3, tok: &Tok, ctx: &[u32], max_new: usize) -> Result<String> {
    let max = model.config.max_position_embeddings.max(1) as usize;
    let mut ids: Vec<i64> = ctx.iter().map(|&t| t as i64).collect();
    let mut out: Vec<u32> = vec![];
    for _ in 0..max_new {
        let window = &ids[ids.len().saturating_sub(max)..];
        let x = Tensor::from_slice(window)
            .view([1, window.len() as i64])
            .to_device(model.device);
        let logits = model.forward(&x);
        let next = logits
            .select(1, window.len() as i64 - 1)
            .argmax(-1, false)
            .int64_value(&[0]) as u32;
        if next == tok.eos_id() {
            break;
        }
        out.push(next);
        ids.push(next as i64);
        let text = tok.decode(&out)?;
        if let Some(p) = text.find('\n') {
            return Ok(text[..p].to_string());
        }
    }
    tok.decode(&out)
}

pub fn evaluate_task(
    model: &Qwen3,
    tok: &Tok,
    path: &Path,
    spec: &EvalSpec,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<TaskMetrics> {
    let examples = read_task(path, spec.max_examples as usize)?;
    let n = examples.len();
    let (mut acc, mut acc_norm, mut lp_sum, mut em) = (0usize, 0usize, 0.0f64, 0usize);
    let (mut mc, mut qa) = (0usize, 0usize);
    tch::no_grad(|| -> Result<()> {
        for (i, ex) in examples.iter().enumerate() {
            check_cancel(cancel)?;
            match ex {
                Example::Mc {
                    prompt,
                    choices,
                    label,
                } => {
                    mc += 1;
                    let mut best = (f64::NEG_INFINITY, 0);
                    let mut best_norm = (f64::NEG_INFINITY, 0);
                    for (j, c) in choices.iter().enumerate() {
                        let (ctx, cont) = split_ids(tok, prompt, c)?;
                        let (lp, _) = continuation_logprob(model, &ctx, &cont);
                        let norm = lp / c.len().max(1) as f64;
                        if lp > best.0 {
                            best = (lp, j);
                        }
                        if norm > best_norm.0 {
                            best_norm = (norm, j);
                        }
                    }
                    acc += (best.1 == *label) as usize;
                    acc_norm += (best_norm.1 == *label) as usize;
                }
                Example::Qa { prompt, answer } => {
                    qa += 1;
                    let (ctx, cont) = split_ids(tok, prompt, answer)?;
                    let (lp, k) = continuation_logprob(model, &ctx, &cont);
                    lp_sum += lp / k.max(1) as f64;
                    let generated = greedy_generate(model, tok, &ctx, spec.max_new_tokens as usize)?;
                    em += (generated.trim() == answer.trim()) as usize;
                }
            }
            progress(&Progress {
                stage: "evaluate",
                current: i as u64 + 1,
                total: n as u64,
                unit: "examples",
                message: path.display().to_string(),
            });
        }
        Ok(())
    })?;
    let frac = |a: usize, d: usize| Some(a as f64 / d.max(1) as f64);
    Ok(if qa == 0 {
        TaskMetrics {
            kind: "multiple_choice".into(),
            examples: mc as u64,
            accuracy: frac(acc, mc),
            accuracy_norm: frac(acc_norm, mc),
            answer_logprob: None,
            exact_match: None,
        }
    } else if mc == 0 {
        TaskMetrics {
            kind: "qa".into(),
            examples: qa as u64,
            accuracy: None,
            accuracy_norm: None,
            answer_logprob: Some(lp_sum / qa as f64),
            exact_match: frac(em, qa),
        }
    } else {
        return Err(MlError::Spec(format!(
            "{}: mixes multiple-choice and QA lines",
            path.display()
        )));
    })
}

/// Evaluates an in-memory model on everything in `paths`; writes the report
/// to `paths.output` if set.
pub fn evaluate_model(
    model: &Qwen3,
    tok: Option<&Tok>,
    spec: &EvalSpec,
    paths: &EvalPaths,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<EvalReport> {
    let mut datasets = BTreeMap::new();
    for (name, dir) in &paths.validation {
        let sh = Shard::open(dir)?;
        if let Some(t) = tok
            && sh.meta.tokenizer_hash != t.hash()
        {
            return Err(MlError::Shard {
                path: dir.clone(),
                msg: "tokenized with a different tokenizer than the model's".into(),
            });
        }
        datasets.insert(
            name.clone(),
            validation_metrics(model, &sh, spec, progress, cancel)?,
        );
    }
    let mut tasks = BTreeMap::new();
    if !paths.tasks.is_empty() {
        let tok = tok.ok_or_else(|| MlError::Spec("tasks need a tokenizer".into()))?;
        for (name, p) in &paths.tasks {
            tasks.insert(
                name.clone(),
                evaluate_task(model, tok, p, spec, progress, cancel)?,
            );
        }
    }
    let mean_loss = (!datasets.is_empty()).then(|| {
        datasets
            .values()
            .map(|d: &DatasetMetrics| d.loss)
            .sum::<f64>()
            / datasets.len() as f64
    });
    let report = EvalReport {
        format: demix_spec::evaluate::METRICS_FORMAT.into(),
        checkpoint: None,
        datasets,
        tasks,
        mean_loss,
    };
    if let Some(out) = &paths.output {
        util::write_json_atomic(out, &report)?;
    }
    Ok(report)
}

fn prepare(spec: &EvalSpec) -> Result<Device> {
    set_threads(spec.threads);
    resolve_device(spec.device)
}

fn compute_kind(spec: &EvalSpec, device: Device) -> Kind {
    if spec.bf16 && device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Builds a model from an in-memory state dict (e.g. a merge of components)
/// and evaluates it, without writing it to disk.
pub fn evaluate_state_dict(
    config: &Qwen3Config,
    state_dict: BTreeMap<String, Tensor>,
    tok: Option<&Tok>,
    spec: &EvalSpec,
    paths: &EvalPaths,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<EvalReport> {
    let device = prepare(spec)?;
    let mut model = Qwen3::from_state_dict(config, state_dict, device)?;
    model.compute_kind = compute_kind(spec, device);
    evaluate_model(&model, tok, spec, paths, progress, cancel)
}

/// Evaluates a checkpoint directory (its tokenizer.json, if present, is used
/// for tasks and checked against the shards).
pub fn evaluate_checkpoint(
    dir: &Path,
    spec: &EvalSpec,
    paths: &EvalPaths,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<EvalReport> {
    let device = prepare(spec)?;
    let config = load_config(dir)?;
    let sd = load_checkpoint_tensors(dir, Device::Cpu)?;
    let mut model =
        Qwen3::from_state_dict(&config, sd, device).map_err(|e| MlError::checkpoint(dir, e))?;
    model.compute_kind = compute_kind(spec, device);
    let tj = dir.join("tokenizer.json");
    let tok = if tj.exists() {
        Some(Tok::load(&tj)?)
    } else {
        None
    };
    let mut paths2 = paths.clone();
    paths2.output = None;
    let mut r = evaluate_model(&model, tok.as_ref(), spec, &paths2, progress, cancel)?;
    r.checkpoint = Some(dir.to_path_buf());
    if let Some(out) = &paths.output {
        util::write_json_atomic(out, &r)?;
    }
    Ok(r)
}
