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

use crate::checkpoint::{load_checkpoint_tensors, load_config};
use crate::data::Shard;
pub use demix_spec::evaluate::{
    DatasetMetrics, EvalConfig as EvalSpec, EvalReport, EvalSample, TaskMetrics,
};

use crate::device::{resolve_device, set_threads};
use crate::error::{IoContext, MlError, Result};
use crate::model::{KvCache, Qwen3, Qwen3Config};
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
/// equal-length windows `x` `[n, len]` on the model's device: `[n]` f64, left
/// on the device.
fn window_nll(model: &Qwen3, x: &Tensor) -> Tensor {
    let (n, len) = (x.size()[0], x.size()[1]);
    let inp = x.narrow(1, 0, len - 1);
    let tgt = x.narrow(1, 1, len - 1);
    let logits = model.forward(&inp);
    logits
        .view([-1, model.config.vocab_size])
        .cross_entropy_loss::<Tensor>(&tgt.reshape([-1]), None, Reduction::None, -100, 0.0)
        .to_kind(Kind::Double)
        .view([n, len - 1])
        .sum_dim_intlist(1, false, Kind::Double)
}

/// Summed NLL of each of `windows` (token ranges of `toks`), scored `batch`
/// windows per forward pass, equal-length windows together (a shorter last
/// window, and a last partial batch, go as they are). Each length's windows
/// go to the device in one copy, and the sums stay there until every batch
/// is done: one read back for all. `done` gets the tokens of each batch.
fn windows_nll(
    model: &Qwen3,
    toks: &[u32],
    windows: &[(u64, u64)],
    batch: usize,
    cancel: &AtomicBool,
    done: &mut dyn FnMut(u64),
) -> Result<Vec<f64>> {
    let mut by_len: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, (a, b)) in windows.iter().enumerate() {
        by_len.entry(b - a).or_default().push(i);
    }
    let (mut order, mut sums) = (Vec::with_capacity(windows.len()), vec![]);
    for (&len, idx) in &by_len {
        let flat: Vec<i64> = idx
            .iter()
            .flat_map(|&i| toks[windows[i].0 as usize..windows[i].1 as usize].iter())
            .map(|&t| t as i64)
            .collect();
        let all = Tensor::from_slice(&flat)
            .view([idx.len() as i64, len as i64])
            .to_device(model.device);
        for (c, chunk) in idx.chunks(batch.max(1)).enumerate() {
            check_cancel(cancel)?;
            let x = all.narrow(0, (c * batch.max(1)) as i64, chunk.len() as i64);
            sums.push(window_nll(model, &x));
            order.extend_from_slice(chunk);
            done(chunk.len() as u64 * (len - 1));
        }
    }
    let sums = Vec::<f64>::try_from(&Tensor::cat(&sums, 0).to_device(Device::Cpu))?;
    let mut out = vec![0.0; windows.len()];
    for (i, x) in order.into_iter().zip(sums) {
        out[i] = x;
    }
    Ok(out)
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
    let (windows, of_windows) = sample_windows(
        toks.len() as u64,
        seq,
        spec.max_tokens().max(1),
        spec.sample_seed,
    );
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
    let mut done = 0u64;
    let mut report = |n: u64| {
        done += n;
        progress(&Progress {
            stage: "evaluate",
            current: done,
            total: total_predicted,
            unit: "tokens",
            message: shard.dir.display().to_string(),
        });
    };
    let batch = spec.batch_size as usize;
    let nll = tch::no_grad(|| windows_nll(model, toks, &windows, batch, cancel, &mut report))?;
    let per_window: Vec<(f64, u64)> = nll
        .into_iter()
        .zip(&windows)
        .map(|(x, (a, b))| (x, b - a - 1))
        .collect();
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

/// A sequence to score: context then continuation, cut from the left to the
/// model's maximum length, and how many of its last tokens (the continuation)
/// are scored.
struct Row {
    ids: Vec<i64>,
    k: usize,
}

impl Row {
    fn new(model: &Qwen3, ctx: &[u32], cont: &[u32]) -> Row {
        if cont.is_empty() {
            return Row { ids: vec![], k: 0 };
        }
        let max = model.config.max_position_embeddings.max(2) as usize;
        let mut ids: Vec<i64> = ctx.iter().chain(cont).map(|&t| t as i64).collect();
        if ids.len() > max + 1 {
            ids.drain(..ids.len() - max - 1);
        }
        let k = cont.len().min(ids.len() - 1);
        Row { ids, k }
    }
}

/// Rows in batches: longest first, each batch as many rows as fit in
/// `max_tokens` once padded to its first (longest) row, at least one.
fn row_batches(rows: &[Row], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].k > 0).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(rows[i].ids.len()));
    let mut out: Vec<Vec<usize>> = vec![];
    for i in idx {
        match out.last_mut() {
            Some(b) if (b.len() + 1) * rows[b[0]].ids.len() <= max_tokens => b.push(i),
            _ => out.push(vec![i]),
        }
    }
    out
}

/// Summed log p of the continuation of each row of `batch`, scored as one
/// right-padded batch: `[rows]` f64 on the device. Causal attention keeps a
/// row's tokens from seeing the padding after them, and only continuation
/// positions are gathered, so padding adds nothing.
fn batch_logprob(model: &Qwen3, rows: &[&Row]) -> Tensor {
    let width = rows.iter().map(|r| r.ids.len()).max().unwrap_or(2) - 1;
    let (mut x, mut pick, mut tgt, mut seg) = (vec![], vec![], vec![], vec![]);
    for (r, row) in rows.iter().enumerate() {
        let n = row.ids.len();
        x.extend_from_slice(&row.ids[..n - 1]);
        x.resize((r + 1) * width, 0);
        for p in n - 1 - row.k..n - 1 {
            pick.push((r * width + p) as i64);
            tgt.push(row.ids[p + 1]);
            seg.push(r as i64);
        }
    }
    let dev = model.device;
    let put = |v: &[i64]| Tensor::from_slice(v).to_device(dev);
    let x = put(&x).view([rows.len() as i64, width as i64]);
    let logits = model.forward(&x).view([-1, model.config.vocab_size]);
    let lp = logits
        .index_select(0, &put(&pick))
        .log_softmax(-1, Kind::Float)
        .gather(-1, &put(&tgt).unsqueeze(-1), false)
        .squeeze_dim(-1)
        .to_kind(Kind::Double);
    Tensor::zeros([rows.len() as i64], (Kind::Double, dev)).index_add(0, &put(&seg), &lp)
}

/// Sum and count of log p(continuation | context) of every row, in padded
/// batches of at most `max_tokens` tokens (see [`row_batches`]); one read back
/// at the end. `done` gets the rows of each batch.
fn rows_logprob(
    model: &Qwen3,
    rows: &[Row],
    max_tokens: usize,
    cancel: &AtomicBool,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<(f64, usize)>> {
    let batches = row_batches(rows, max_tokens);
    let mut sums = Vec::with_capacity(batches.len());
    for b in &batches {
        check_cancel(cancel)?;
        let batch: Vec<&Row> = b.iter().map(|&i| &rows[i]).collect();
        sums.push(batch_logprob(model, &batch));
        done(b.len());
    }
    let mut out: Vec<(f64, usize)> = rows.iter().map(|r| (0.0, r.k)).collect();
    if sums.is_empty() {
        return Ok(out);
    }
    let sums = Vec::<f64>::try_from(&Tensor::cat(&sums, 0).to_device(Device::Cpu))?;
    for (i, x) in batches.iter().flatten().zip(sums) {
        out[*i].0 = x;
    }
    Ok(out)
}

/// Sum and count of log p(cont | ctx) of each (context, continuation) pair,
/// the context cut from the left to the model's maximum length; pairs are
/// scored together in right-padded batches of at most `max_batch_tokens`
/// tokens. Equal, to float rounding, to scoring each pair alone.
pub fn continuation_logprobs(
    model: &Qwen3,
    pairs: &[(Vec<u32>, Vec<u32>)],
    max_batch_tokens: usize,
) -> Result<Vec<(f64, usize)>> {
    let rows: Vec<Row> = pairs.iter().map(|(c, x)| Row::new(model, c, x)).collect();
    tch::no_grad(|| {
        rows_logprob(
            model,
            &rows,
            max_batch_tokens,
            &AtomicBool::new(false),
            &mut |_| {},
        )
    })
}

/// Greedy decoding without a KV cache, one prompt at a time (the reference
/// for [`greedy_generate_batch`], and its path for prompts that outgrow the
/// model's positions, since this one slides its window); stops at EOS, a
/// newline, or `max_new` tokens.
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

/// One row's greedy continuation so far, and whether it has stopped (the old
/// rules: EOS, a newline, or `max_new` tokens).
struct Continuation {
    out: Vec<u32>,
    text: Option<String>,
}

impl Continuation {
    /// Takes the next token; false once stopped.
    fn push(&mut self, tok: &Tok, next: u32) -> Result<bool> {
        if self.text.is_some() {
            return Ok(false);
        }
        if next == tok.eos_id() {
            self.text = Some(tok.decode(&self.out)?);
            return Ok(false);
        }
        self.out.push(next);
        let text = tok.decode(&self.out)?;
        if let Some(p) = text.find('\n') {
            self.text = Some(text[..p].to_string());
            return Ok(false);
        }
        Ok(true)
    }
}

/// Greedy decoding of `prompts` as one batch with a KV cache: prompts are
/// left-padded to one length, each row's RoPE positions count from its first
/// real token, and no query sees padding (a padding query sees only itself,
/// so no row of the mask is empty). The causal mask is built for the prompt
/// pass only; each later step appends one token per row to the cache. Every
/// prompt must fit, with its `max_new` tokens, in the model's positions.
fn generate_padded(
    model: &Qwen3,
    tok: &Tok,
    prompts: &[&[u32]],
    max_new: usize,
) -> Result<Vec<String>> {
    let (b, dev) = (prompts.len() as i64, model.device);
    let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0) as i64;
    let pads: Vec<i64> = prompts.iter().map(|p| len - p.len() as i64).collect();
    let padded = pads.iter().any(|&p| p > 0);
    let pad = Tensor::from_slice(&pads).to_device(dev).view([b, 1, 1, 1]);
    let mut ids = Vec::with_capacity((b * len) as usize);
    for (p, &n) in prompts.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(tok.eos_id() as i64, n as usize));
        ids.extend(p.iter().map(|&t| t as i64));
    }
    let mut x = Tensor::from_slice(&ids).view([b, len]).to_device(dev);
    let mut cache = KvCache::new(model);
    let mut rows: Vec<Continuation> = prompts
        .iter()
        .map(|_| Continuation {
            out: vec![],
            text: None,
        })
        .collect();
    for step in 0..max_new {
        let s = cache.len();
        let t = x.size()[1];
        // Keys 0..s + t; query i of this pass sits at column s + i.
        let (pos, allowed) = if padded {
            let col = |n: i64, shape: [i64; 4]| Tensor::arange(n, (Kind::Int64, dev)).view(shape);
            let q = col(t, [1, 1, t, 1]) + s;
            let k = col(s + t, [1, 1, 1, s + t]);
            let real = k.ge_tensor(&pad);
            let allowed = k
                .le_tensor(&q)
                .logical_and(&real.logical_or(&k.eq_tensor(&q)));
            let pos = (&q - &pad).clamp_min(0).view([b, t]);
            (Some(pos), Some(allowed))
        } else {
            (None, None)
        };
        let logits = model.next_token_logits(&x, &mut cache, pos.as_ref(), allowed.as_ref());
        let next = logits.argmax(-1, false).to_device(Device::Cpu);
        let mut going = false;
        for (row, &n) in rows.iter_mut().zip(&Vec::<i64>::try_from(&next)?) {
            going |= row.push(tok, n as u32)?;
        }
        if !going || step + 1 == max_new {
            break;
        }
        x = next.view([b, 1]).to_device(dev);
    }
    rows.into_iter()
        .map(|r| r.text.map_or_else(|| tok.decode(&r.out), Ok))
        .collect()
}

/// Greedy continuations of `prompts` (as [`greedy_generate`] gives them, to
/// float rounding), `batch` prompts of similar length at a time with a KV
/// cache (see [`generate_padded`]); a prompt whose generation would outgrow
/// the model's positions goes through [`greedy_generate`]. `done` gets the
/// prompts of each batch.
fn generate_batches(
    model: &Qwen3,
    tok: &Tok,
    prompts: &[Vec<u32>],
    max_new: usize,
    batch: usize,
    cancel: &AtomicBool,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<String>> {
    let max = model.config.max_position_embeddings.max(1) as usize;
    let mut out = vec![String::new(); prompts.len()];
    let (mut fit, mut long): (Vec<usize>, Vec<usize>) =
        (0..prompts.len()).partition(|&i| prompts[i].len() + max_new <= max + 1);
    if max_new == 0 {
        fit.clear();
        long.clear();
    }
    fit.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    for chunk in fit.chunks(batch.max(1)) {
        check_cancel(cancel)?;
        let ps: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
        for (&i, text) in chunk.iter().zip(generate_padded(model, tok, &ps, max_new)?) {
            out[i] = text;
        }
        done(chunk.len());
    }
    for i in long {
        check_cancel(cancel)?;
        out[i] = greedy_generate(model, tok, &prompts[i], max_new)?;
        done(1);
    }
    Ok(out)
}

/// Greedy continuations of several prompts, `batch` at a time with a KV
/// cache; equal to [`greedy_generate`] of each prompt (to float rounding,
/// which may only matter at a near tie).
pub fn greedy_generate_batch(
    model: &Qwen3,
    tok: &Tok,
    prompts: &[Vec<u32>],
    max_new: usize,
    batch: usize,
) -> Result<Vec<String>> {
    tch::no_grad(|| {
        generate_batches(
            model,
            tok,
            prompts,
            max_new,
            batch,
            &AtomicBool::new(false),
            &mut |_| {},
        )
    })
}

/// A task's sequences to score (each choice of each multiple-choice example,
/// or each answer) and the contexts of its questions.
fn task_rows(model: &Qwen3, tok: &Tok, examples: &[Example]) -> Result<(Vec<Row>, Vec<Vec<u32>>)> {
    let (mut rows, mut questions) = (vec![], vec![]);
    for ex in examples {
        match ex {
            Example::Mc {
                prompt, choices, ..
            } => {
                for c in choices {
                    let (ctx, cont) = split_ids(tok, prompt, c)?;
                    rows.push(Row::new(model, &ctx, &cont));
                }
            }
            Example::Qa { prompt, answer } => {
                let (ctx, cont) = split_ids(tok, prompt, answer)?;
                rows.push(Row::new(model, &ctx, &cont));
                questions.push(ctx);
            }
        }
    }
    Ok((rows, questions))
}

/// Accuracy and length-normalized accuracy from each choice's log-likelihood
/// (`scores` in the order of [`task_rows`]).
fn mc_metrics(examples: &[Example], scores: &[(f64, usize)]) -> TaskMetrics {
    let (mut acc, mut acc_norm, mut next) = (0usize, 0usize, 0usize);
    let mut chance = 0.0;
    for ex in examples {
        let Example::Mc { choices, label, .. } = ex else {
            continue;
        };
        chance += 1.0 / choices.len().max(1) as f64;
        let mut best = (f64::NEG_INFINITY, 0);
        let mut best_norm = (f64::NEG_INFINITY, 0);
        for (j, c) in choices.iter().enumerate() {
            let lp = scores[next + j].0;
            let norm = lp / c.len().max(1) as f64;
            if lp > best.0 {
                best = (lp, j);
            }
            if norm > best_norm.0 {
                best_norm = (norm, j);
            }
        }
        next += choices.len();
        acc += (best.1 == *label) as usize;
        acc_norm += (best_norm.1 == *label) as usize;
    }
    let n = examples.len();
    TaskMetrics {
        kind: "multiple_choice".into(),
        examples: n as u64,
        accuracy: Some(acc as f64 / n.max(1) as f64),
        accuracy_norm: Some(acc_norm as f64 / n.max(1) as f64),
        chance: Some(chance / n.max(1) as f64),
        answer_logprob: None,
        exact_match: None,
    }
}

/// Scores a task: every choice or answer in padded batches of about
/// `batch_size * seq_len` tokens, then the questions' greedy answers
/// `batch_size` at a time.
pub fn evaluate_task(
    model: &Qwen3,
    tok: &Tok,
    path: &Path,
    spec: &EvalSpec,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<TaskMetrics> {
    let examples = read_task(path, spec.max_examples as usize)?;
    let qa = examples
        .iter()
        .filter(|e| matches!(e, Example::Qa { .. }))
        .count();
    if qa > 0 && qa < examples.len() {
        return Err(MlError::Spec(format!(
            "{}: mixes multiple-choice and QA lines",
            path.display()
        )));
    }
    let (rows, questions) = task_rows(model, tok, &examples)?;
    let report = |unit: &'static str, total: usize| {
        let mut current = 0;
        move |n: usize| {
            current += n;
            progress(&Progress {
                stage: "evaluate",
                current: current as u64,
                total: total as u64,
                unit,
                message: path.display().to_string(),
            });
        }
    };
    let batch = spec.batch_size.max(1) as usize;
    let budget = batch * spec.seq_len().max(1);
    let mut done = report("sequences", rows.len());
    let scores = tch::no_grad(|| rows_logprob(model, &rows, budget, cancel, &mut done))?;
    if qa == 0 {
        return Ok(mc_metrics(&examples, &scores));
    }
    let max_new = spec.max_new_tokens as usize;
    let mut done = report("examples", qa);
    let generated = tch::no_grad(|| {
        generate_batches(model, tok, &questions, max_new, batch, cancel, &mut done)
    })?;
    let lp_sum: f64 = scores.iter().map(|(lp, k)| lp / (*k).max(1) as f64).sum();
    let em = examples
        .iter()
        .zip(&generated)
        .filter(|(ex, g)| matches!(ex, Example::Qa { answer, .. } if g.trim() == answer.trim()))
        .count();
    Ok(TaskMetrics {
        kind: "qa".into(),
        examples: qa as u64,
        accuracy: None,
        accuracy_norm: None,
        chance: None,
        answer_logprob: Some(lp_sum / qa as f64),
        exact_match: Some(em as f64 / qa as f64),
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
    // One overall bar over the datasets and tasks; each one's own progress
    // goes in the message, named (not its path).
    let n = paths.validation.len() + paths.tasks.len();
    let item = |k: usize, what: &'static str, name: &str| {
        let name = name.to_string();
        move |p: &Progress| {
            let within = if p.total > 0 {
                format!("{}/{} {}", p.current, p.total, p.unit)
            } else {
                format!("{} {}", p.current, p.unit)
            };
            progress(&Progress {
                stage: "evaluate",
                current: k as u64,
                total: n as u64,
                unit: "datasets and tasks",
                message: format!("{} of {n}: {what} {name}, {within}", k + 1),
            });
        }
    };
    let mut datasets = BTreeMap::new();
    for (k, (name, dir)) in paths.validation.iter().enumerate() {
        let progress = item(k, "dataset", name);
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
            validation_metrics(model, &sh, spec, &progress, cancel)?,
        );
    }
    let mut tasks = BTreeMap::new();
    if !paths.tasks.is_empty() {
        let tok = tok.ok_or_else(|| MlError::Spec("tasks need a tokenizer".into()))?;
        for (k, (name, p)) in paths.tasks.iter().enumerate() {
            let progress = item(paths.validation.len() + k, "task", name);
            tasks.insert(
                name.clone(),
                evaluate_task(model, tok, p, spec, &progress, cancel)?,
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
