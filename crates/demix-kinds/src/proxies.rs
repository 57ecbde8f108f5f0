//! Proxies of mixtures (feature `torch`): the components merged in memory by a
//! mixture's weights (DeMix's), or a small model trained on it (RegMix's);
//! scored on the targets' validation samples by several workers at once, and
//! journaled so an interrupted search takes up where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use demix_core::kind::{RunCtx, StepError};
use demix_ml as ml;
use demix_spec::evaluate::EvalConfig;
use demix_spec::train::{DataMix, TrainConfig};

use crate::ml_run::{ml_err, tokenizer_hash, validation_shards};

/// How a worker merges: streaming from the memory-mapped files (host memory
/// holds one merged model), or from the components held on the worker's device
/// (a GPU then merges a proxy in milliseconds instead of re-reading K models).
pub enum Merger {
    Host(std::sync::Arc<demix_mix::merge::Components>),
    Resident(Vec<(String, Vec<tch::Tensor>)>),
}

/// A step error out of a streaming merge (which also fails with its own errors).
struct MergeFailed(StepError);

impl From<demix_mix::merge::MergeError> for MergeFailed {
    fn from(e: demix_mix::merge::MergeError) -> Self {
        MergeFailed(StepError::library(e))
    }
}

/// One evaluator of merged proxies: merges the components by a mixture's weights
/// in memory (never written) and scores the merge by validation loss on the
/// targets. Several run at once, one per device (or several on one).
pub struct ProxyWorker {
    merger: Merger,
    model_config: ml::model::Qwen3Config,
    pub tok: ml::tokenizer::Tok,
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
        use demix_mix::merge::{MergeSpec, Values};
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StepError::Cancelled);
        }
        let total: f64 = w.iter().sum();
        let mut sd = BTreeMap::new();
        match &self.merger {
            Merger::Host(components) => {
                components
                    .merge_each(&MergeSpec::linear(w.to_vec()), |t| {
                        let Values::F32(v) = t.values else {
                            return Err(MergeFailed(StepError::Failed(format!(
                                "tensor {} is not a float tensor",
                                t.name
                            ))));
                        };
                        let shape: Vec<i64> = t.shape.iter().map(|&x| x as i64).collect();
                        sd.insert(
                            t.name.to_string(),
                            tch::Tensor::from_slice(v).reshape(&shape),
                        );
                        Ok(())
                    })
                    .map_err(|MergeFailed(e)| e)?;
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
pub fn proxy_workers(
    ctx: &RunCtx,
    comps: &[PathBuf],
    targets: &[String],
    spec: EvalConfig,
    workers: Option<u32>,
    resident: Option<bool>,
) -> Result<Vec<ProxyWorker>, StepError> {
    let tok_path = comps[0].join("tokenizer.json");
    let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
    let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
    let paths = validation_shards(ctx, targets, &tok, &tok_hash)?;
    let model_config = ml::checkpoint::load_config(&comps[0]).map_err(ml_err)?;
    let components = std::sync::Arc::new(
        demix_mix::merge::Components::open(comps, None)
            .map_err(StepError::library)?
            .keep_mapped(),
    );
    let device = ml::device::resolve_device(spec.device).map_err(ml_err)?;
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
            spec.device = demix_spec::train::DeviceChoice::Cuda(k as u32);
        }
        let merger = if resident {
            let mut per: BTreeMap<String, Vec<tch::Tensor>> = BTreeMap::new();
            for c in comps {
                let sd = ml::checkpoint::load_checkpoint_tensors(c, dev).map_err(ml_err)?;
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
pub fn eval_parallel(
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
                    .unwrap_or_else(|p| Err(StepError::from_panic("evaluating a proxy", &*p)));
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

/// A scored proxy: its loss per target, and per target the summed loss and
/// token count of every window scored (for paired noise estimates).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Proxied {
    pub scores: Vec<f64>,
    #[serde(default)]
    windows: Vec<Vec<(f64, u64)>>,
}

impl Proxied {
    /// Validation tokens scored for this proxy.
    pub fn tokens(&self) -> u64 {
        self.windows.iter().flatten().map(|w| w.1).sum()
    }
}

/// A search's scored proxies, one JSON line each under the step's resume
/// folder: a killed or requeued search asks for the same mixtures again (it is
/// deterministic) and takes their scores from here instead of scoring anew.
pub struct Journal {
    path: PathBuf,
    pub scored: BTreeMap<String, Proxied>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JournalLine {
    weights: Vec<f64>,
    #[serde(flatten)]
    proxied: Proxied,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Journal, StepError> {
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

    pub fn get(&self, w: &[f64]) -> Option<&Proxied> {
        self.scored.get(&weights_id(w))
    }

    pub fn add(&mut self, w: &[f64], p: &Proxied) -> Result<(), StepError> {
        use std::io::Write;
        let line = JournalLine {
            weights: w.to_vec(),
            proxied: p.clone(),
        };
        self.scored.insert(weights_id(w), p.clone());
        // Of a data-parallel search's ranks, rank 0 keeps the journal.
        if !ml::dist::leads() {
            return Ok(());
        }
        let mut text = serde_json::to_string(&line).expect("serializes");
        text.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(StepError::io("writing the search's journal"))?;
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
pub fn target_noise(targets: &[String], round1: &[Proxied]) -> Vec<demix_mix::search::TargetNoise> {
    targets
        .iter()
        .enumerate()
        .filter_map(|(t, name)| {
            let scores: Vec<f64> = round1.iter().map(|p| p.scores[t]).collect();
            let spread =
                demix_mix::search::spreads(&scores.iter().map(|x| vec![*x]).collect::<Vec<_>>(), 1)
                    [0];
            let ses: Vec<f64> = round1
                .chunks_exact(2)
                .filter_map(|pair| paired_se(pair[0].windows.get(t)?, pair[1].windows.get(t)?))
                .collect();
            if ses.is_empty() {
                return None;
            }
            let noise = ses.iter().sum::<f64>() / ses.len() as f64;
            Some(demix_mix::search::TargetNoise {
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
pub struct TrainedEvaluator<'a> {
    pub ctx: &'a RunCtx<'a>,
    pub base: PathBuf,
    pub tok_path: PathBuf,
    pub shards: BTreeMap<String, PathBuf>,
    pub candidates: Vec<String>,
    pub general: Option<String>,
    pub beta: f64,
    /// How each proxy trains (its device and threads those of the step).
    pub train: TrainConfig,
    pub spec: EvalConfig,
    pub paths: ml::evaluate::EvalPaths,
    pub targets: Vec<String>,
    pub scratch: PathBuf,
}

/// A mixture's weights as the evaluator gets them: `0.25,0.5,0.25`.
fn weights_text(w: &[f64]) -> String {
    w.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
}

fn weights_id(w: &[f64]) -> String {
    let bits: Vec<String> = w.iter().map(|x| format!("{:016x}", x.to_bits())).collect();
    demix_core::hash::hex(&blake3::hash(bits.join(",").as_bytes()))[..16].to_string()
}

impl TrainedEvaluator<'_> {
    pub fn eval(&mut self, w: &[f64]) -> Result<Proxied, StepError> {
        let id = weights_id(w);
        let total: f64 = w.iter().sum();
        // The components' recipe: general data at share beta, the mixture the rest.
        let mut data: BTreeMap<String, f64> = self
            .candidates
            .iter()
            .zip(w)
            .filter(|(_, x)| **x > 0.0)
            .map(|(c, x)| (c.clone(), x / total * (1.0 - self.beta)))
            .collect();
        if let Some(g) = &self.general
            && self.beta > 0.0
        {
            data.insert(g.clone(), self.beta);
        }
        let spec = ml::train::TrainSpec {
            model: None,
            init_from: Some(self.base.clone()),
            data: DataMix::Weights(data),
            train: self.train.clone(),
        };
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
        // With ranks, each proxy trains data parallel; rank 0 scores it and
        // hands the score to the others, so every rank's search goes alike.
        ml::train::train(&spec, &paths, &|_: &ml::Progress| {}, self.ctx.cancel).map_err(ml_err)?;
        ml::dist::from_leader(|| {
            let report = ml::evaluate::evaluate_checkpoint(
                &paths.output,
                &self.spec,
                &self.paths,
                &|_: &ml::Progress| {},
                self.ctx.cancel,
            )?;
            // Proxies are scaffolding: only their scores are kept.
            let _ = demix_core::store::remove_tree(&dir);
            Ok(losses_of(&report, &self.targets))
        })
        .map_err(ml_err)
    }
}

/// Scores merged proxies with a program of the user's (a search's
/// `evaluator`): each proxy is merged into a Hugging Face folder under the
/// step's scratch folder, the command runs on it, and the targets' losses are
/// read from the `demix-metrics-v1` file it writes.
pub struct ExternalEvaluator<'a> {
    ctx: &'a RunCtx<'a>,
    comps: demix_mix::merge::Components,
    run: Vec<String>,
    targets: Vec<String>,
    scratch: PathBuf,
}

impl<'a> ExternalEvaluator<'a> {
    pub fn new(
        ctx: &'a RunCtx<'a>,
        comps: &[PathBuf],
        e: &crate::search::Evaluator,
        targets: &[String],
        scratch: PathBuf,
    ) -> Result<Self, StepError> {
        let comps = demix_mix::merge::Components::open(comps, None).map_err(StepError::library)?;
        Ok(ExternalEvaluator {
            ctx,
            comps,
            run: e.run.clone(),
            targets: targets.to_vec(),
            scratch,
        })
    }

    pub fn eval(&mut self, w: &[f64]) -> Result<Proxied, StepError> {
        if self.ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StepError::Cancelled);
        }
        let dir = self.scratch.join("proxy");
        let _ = demix_core::store::remove_tree(&dir);
        let (ck, metrics) = (dir.join("checkpoint"), dir.join("metrics.json"));
        self.comps
            .merge_to_dir(&demix_mix::merge::MergeSpec::linear(w.to_vec()), &ck)
            .map_err(StepError::library)?;
        // Token ids and generation config as a merge step's checkpoint has them.
        crate::card::finish_merged(&ck)?;
        let mut cmd = std::process::Command::new(&self.run[0]);
        cmd.args(&self.run[1..])
            .current_dir(&self.ctx.spec.workdir)
            .env("DEMIX_PROXY_CHECKPOINT", &ck)
            .env("DEMIX_PROXY_METRICS", &metrics)
            .env("DEMIX_PROXY_TARGETS", self.targets.join(","))
            .env("DEMIX_PROXY_WEIGHTS", weights_text(w));
        let what = format!("the evaluator `{}`", self.run[0]);
        crate::command::run_logged(cmd, &what, self.ctx).map_err(|e| match e {
            StepError::Failed(why) => StepError::Failed(format!(
                "evaluator on the proxy at weights {}: {why} (its output is in the step's log)",
                weights_text(w)
            )),
            other => other,
        })?;
        let report = demix_report::data::read_evaluation(&metrics)
            .map_err(|e| StepError::Failed(format!("evaluator: {e}")))?;
        let scores = self
            .targets
            .iter()
            .map(|t| {
                report
                    .datasets
                    .iter()
                    .find(|m| m.name == *t)
                    .and_then(|m| m.get("loss"))
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| {
                        StepError::Failed(format!(
                            "evaluator: {} has no finite `datasets.{t}.loss` for target `{t}`",
                            metrics.display()
                        ))
                    })
            })
            .collect::<Result<Vec<f64>, StepError>>()?;
        let _ = demix_core::store::remove_tree(&dir);
        Ok(Proxied {
            scores,
            windows: Vec::new(),
        })
    }
}
