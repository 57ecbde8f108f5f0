//! Streaming merges of safetensors checkpoints, one tensor at a time.
//!
//! A DeMix proxy is the weighted merge of component models (method.md, step 3).
//! Inputs are memory-mapped; each tensor is merged in f32 in cache-sized blocks
//! and handed on (to a closure, or to a safetensors file) before the next, so
//! peak memory is about one output tensor plus, for TIES, one tensor per input.
//! The merge is memory-bandwidth bound: the block loops auto-vectorise and large
//! tensors are split over a couple of threads. Results never depend on the
//! number of threads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    Checkpoint, CheckpointError, Dtype, INDEX_FILE, MODEL_FILE, SafetensorsWriter, TensorInfo,
    TensorSpec, decode_f32, encode_f32,
};

/// Elements per block: the block and one decoded input fit in L1/L2.
const BLOCK: usize = 4096;
/// Tensors smaller than this are merged on one thread (spawning costs more).
const PAR_MIN: usize = 1 << 18;

/// Files copied from the first input into a merged checkpoint, when present.
pub const SIDE_FILES: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];

/// The record written beside a merged checkpoint.
pub const MERGE_RECORD: &str = "merge.json";

/// Errors of a merge.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("a merge needs at least one input checkpoint")]
    NoInputs,
    #[error("merge weights: {0}")]
    Weights(String),
    #[error("merge parameters: {0}")]
    Param(String),
    #[error("method `{0}` needs a base checkpoint (the model the components were trained from)")]
    MissingBase(&'static str),
    #[error("tensor `{tensor}`: {detail}")]
    Mismatch { tensor: String, detail: String },
    #[error(
        "tensor `{0}` of the merge holds a value that is not a finite number: an input's weights are not finite (NaN or infinite)"
    )]
    NonFinite(String),
    #[error("output dtype {0} is not a float type (F32, BF16, F16, F64)")]
    OutDtype(Dtype),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    move |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn one() -> f64 {
    1.0
}

/// How DARE combines the sparsified task vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DareCombine {
    /// `base + sum_i (w_i / sum w) * delta_i` (mergekit's `dare_linear`).
    #[default]
    Linear,
    /// `base + scale * sum_i w_i * delta_i`.
    TaskArithmetic,
}

/// A merge method. All but `linear` work on task vectors `theta_i - base`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// `sum_i (w_i / sum w) * theta_i`: the paper's merge (weights >= 0).
    Linear,
    /// `base + scale * sum_i w_i * (theta_i - base)`.
    TaskArithmetic {
        #[serde(default = "one")]
        scale: f64,
    },
    /// TIES (Yadav et al. 2023): keep the `density` fraction of each task vector
    /// with the largest magnitude (per tensor), elect each element's sign as the
    /// sign of `sum_i w_i delta_i` (the larger summed magnitude), then average the
    /// agreeing entries weighted by `w_i` (the disjoint mean);
    /// `base + scale * mean`.
    Ties {
        density: f64,
        #[serde(default = "one")]
        scale: f64,
    },
    /// DARE (Yu et al. 2024): drop each task-vector entry with probability `drop`
    /// and rescale survivors by `1 / (1 - drop)`, then combine. The mask is a
    /// pure function of `seed`, the input's position and the tensor name.
    Dare {
        drop: f64,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        combine: DareCombine,
        /// Used by `combine: task_arithmetic` only.
        #[serde(default = "one")]
        scale: f64,
    },
}

impl Method {
    /// The method's name as in manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::TaskArithmetic { .. } => "task_arithmetic",
            Method::Ties { .. } => "ties",
            Method::Dare { .. } => "dare",
        }
    }

    fn needs_base(&self) -> bool {
        !matches!(self, Method::Linear)
    }
}

/// What to merge: a method, one weight per input, and the output dtype
/// (default: each tensor's input dtype).
/// (Unknown fields are ignored: serde cannot deny them with a flattened method.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeSpec {
    #[serde(flatten)]
    pub method: Method,
    pub weights: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_dtype: Option<Dtype>,
}

impl MergeSpec {
    /// The paper's merge: `sum_i alpha_i theta_i`.
    pub fn linear(weights: Vec<f64>) -> MergeSpec {
        MergeSpec {
            method: Method::Linear,
            weights,
            out_dtype: None,
        }
    }
}

/// The values of one merged tensor.
#[derive(Debug, PartialEq)]
pub enum Values<'a> {
    /// A float tensor, merged in f32 (into a buffer reused from tensor to tensor:
    /// copy what must outlive the callback).
    F32(&'a [f32]),
    /// A non-float tensor (identical in every input), passed through as bytes.
    Raw(&'a [u8]),
}

/// One merged tensor, as [`Components::merge_each`] hands it on.
#[derive(Debug)]
pub struct MergedTensor<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    /// The dtype it is written as (the input dtype unless the spec says otherwise).
    pub dtype: Dtype,
    pub values: Values<'a>,
}

/// What a merge into a directory did; `merge.json` holds all but `seconds`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MergeReport {
    pub demix_version: String,
    #[serde(flatten)]
    pub spec: MergeSpec,
    /// Coefficients actually applied per input (e.g. normalised for linear).
    pub coefficients: Vec<f64>,
    /// The inputs by name: their folders, or the names a caller gave
    /// ([`Components::with_labels`]), so the record does not depend on where a
    /// store lives.
    pub inputs: Vec<String>,
    pub base: Option<String>,
    pub tensors: usize,
    pub bytes: u64,
    pub copied: Vec<String>,
    #[serde(skip)]
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Linear,
    Delta,
    Ties {
        density: f64,
    },
    Dare {
        keep_above: u64,
        rescale: f32,
        seed: u64,
    },
}

/// A spec checked against the inputs: per-input coefficients (0 = skipped).
#[derive(Debug)]
struct Prepared {
    kind: Kind,
    coef: Vec<f32>,
    scale: f32,
    out_dtype: Option<Dtype>,
}

/// The checkpoints of a merge: components and an optional base, opened and
/// checked once (same tensor names, shapes, dtypes), then merged any number of
/// times with different specs — the search merges many mixtures of one set.
#[derive(Debug)]
pub struct Components {
    inputs: Vec<Checkpoint>,
    base: Option<Checkpoint>,
    threads: usize,
    labels: Option<(Vec<String>, Option<String>)>,
    /// Unmap each tensor's pages once merged (one merge: RSS stays near one
    /// tensor per input) or keep them (many merges of one set: no refaults).
    release: bool,
}

fn describe(c: &Checkpoint) -> String {
    match c.files() {
        [one] => one.display().to_string(),
        _ => c.dir().display().to_string(),
    }
}

fn check_same(a: &Checkpoint, b: &Checkpoint) -> Result<(), MergeError> {
    let mismatch = |tensor: &str, detail: String| MergeError::Mismatch {
        tensor: tensor.to_string(),
        detail,
    };
    for name in a.names() {
        let (Some(x), Some(file_a)) = (a.info(name), a.file_of(name)) else {
            continue;
        };
        let Some(y) = b.info(name) else {
            return Err(mismatch(
                name,
                format!("in {} but not in {}", file_a.display(), describe(b)),
            ));
        };
        let file_b = b
            .file_of(name)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if x.shape != y.shape {
            return Err(mismatch(
                name,
                format!(
                    "shape {:?} in {} but {:?} in {file_b}",
                    x.shape,
                    file_a.display(),
                    y.shape
                ),
            ));
        }
        if x.dtype != y.dtype {
            return Err(mismatch(
                name,
                format!(
                    "dtype {} in {} but {} in {file_b}",
                    x.dtype,
                    file_a.display(),
                    y.dtype
                ),
            ));
        }
    }
    if let Some(name) = b.names().find(|n| a.info(n).is_none()) {
        let file_b = b
            .file_of(name)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Err(mismatch(
            name,
            format!("in {file_b} but not in {}", describe(a)),
        ));
    }
    Ok(())
}

impl Components {
    /// Opens and checks component checkpoints (directories or files) and a base.
    pub fn open<P: AsRef<Path>>(
        inputs: &[P],
        base: Option<&Path>,
    ) -> Result<Components, MergeError> {
        let inputs = inputs
            .iter()
            .map(Checkpoint::open)
            .collect::<Result<Vec<_>, _>>()?;
        let base = base.map(Checkpoint::open).transpose()?;
        Self::new(inputs, base)
    }

    /// Checks already opened checkpoints.
    pub fn new(
        inputs: Vec<Checkpoint>,
        base: Option<Checkpoint>,
    ) -> Result<Components, MergeError> {
        let first = inputs.first().ok_or(MergeError::NoInputs)?;
        for other in inputs[1..].iter().chain(base.as_ref()) {
            check_same(first, other)?;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(2);
        Ok(Components {
            inputs,
            base,
            threads,
            labels: None,
            release: true,
        })
    }

    /// Names for the inputs (and base) in `merge.json`, one per input.
    pub fn with_labels(mut self, inputs: Vec<String>, base: Option<String>) -> Components {
        if inputs.len() == self.inputs.len() {
            self.labels = Some((inputs, base));
        }
        self
    }

    /// Keep the inputs' pages mapped between merges: for merging the same set
    /// many times (a search), at the cost of a resident set that counts them.
    pub fn keep_mapped(mut self) -> Components {
        self.release = false;
        self
    }

    /// Threads per tensor (default: 2, or 1 on a single core).
    pub fn with_threads(mut self, threads: usize) -> Components {
        self.threads = threads.max(1);
        self
    }

    /// The component checkpoints.
    pub fn inputs(&self) -> &[Checkpoint] {
        &self.inputs
    }

    /// The base checkpoint, if any.
    pub fn base(&self) -> Option<&Checkpoint> {
        self.base.as_ref()
    }

    /// Tensor names, sorted (the order of [`Components::merge_each`]).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.inputs[0].names()
    }

    fn prepare(&self, spec: &MergeSpec) -> Result<Prepared, MergeError> {
        let n = self.inputs.len();
        let w = &spec.weights;
        if w.len() != n {
            return Err(MergeError::Weights(format!(
                "{} weights for {n} inputs",
                w.len()
            )));
        }
        if let Some(x) = w.iter().find(|x| !x.is_finite()) {
            return Err(MergeError::Weights(format!("weight {x} is not finite")));
        }
        if let Some(d) = spec.out_dtype
            && !d.is_float()
        {
            return Err(MergeError::OutDtype(d));
        }
        if spec.method.needs_base() && self.base.is_none() {
            return Err(MergeError::MissingBase(spec.method.name()));
        }
        let normalised = || -> Result<Vec<f32>, MergeError> {
            let sum: f64 = w.iter().sum();
            if w.iter().any(|&x| x < 0.0) || sum <= 0.0 {
                return Err(MergeError::Weights(format!(
                    "{} needs weights >= 0 with a positive sum, got {w:?}",
                    spec.method.name()
                )));
            }
            Ok(w.iter().map(|x| (x / sum) as f32).collect())
        };
        let scaled = |s: f64| w.iter().map(|x| (x * s) as f32).collect::<Vec<f32>>();
        let check_scale = |s: f64| {
            if s.is_finite() {
                Ok(s as f32)
            } else {
                Err(MergeError::Param(format!("scale {s} is not finite")))
            }
        };
        let (kind, coef, scale) = match spec.method {
            Method::Linear => (Kind::Linear, normalised()?, 1.0),
            Method::TaskArithmetic { scale } => {
                (Kind::Delta, scaled(check_scale(scale)? as f64), 1.0)
            }
            Method::Ties { density, scale } => {
                if !(density > 0.0 && density <= 1.0) {
                    return Err(MergeError::Param(format!(
                        "ties density {density} is not in (0, 1]"
                    )));
                }
                if w.iter().any(|&x| x < 0.0) {
                    return Err(MergeError::Weights(format!(
                        "ties needs weights >= 0, got {w:?}"
                    )));
                }
                let coef = w.iter().map(|&x| x as f32).collect();
                (Kind::Ties { density }, coef, check_scale(scale)?)
            }
            Method::Dare {
                drop,
                seed,
                combine,
                scale,
            } => {
                if !(0.0..1.0).contains(&drop) {
                    return Err(MergeError::Param(format!(
                        "dare drop {drop} is not in [0, 1)"
                    )));
                }
                let coef = match combine {
                    DareCombine::Linear => normalised()?,
                    DareCombine::TaskArithmetic => scaled(check_scale(scale)? as f64),
                };
                // Keep an entry when a uniform u32 is >= drop * 2^32.
                let keep_above = (drop * 4_294_967_296.0).round() as u64;
                let rescale = (1.0 / (1.0 - drop)) as f32;
                (
                    Kind::Dare {
                        keep_above,
                        rescale,
                        seed,
                    },
                    coef,
                    1.0,
                )
            }
        };
        Ok(Prepared {
            kind,
            coef,
            scale,
            out_dtype: spec.out_dtype,
        })
    }

    /// Merges every tensor in name order and calls `f` with each, one at a time.
    /// `f`'s error type only needs `From<MergeError>`.
    pub fn merge_each<E, F>(&self, spec: &MergeSpec, mut f: F) -> Result<(), E>
    where
        E: From<MergeError>,
        F: FnMut(MergedTensor<'_>) -> Result<(), E>,
    {
        let prep = self.prepare(spec)?;
        // One buffer for every tensor: fresh pages per tensor cost a fault and a
        // kernel zeroing each, more than the merge itself on large tensors.
        let mut buf: Vec<f32> = Vec::new();
        for name in self.inputs[0].names() {
            let Some(info) = self.inputs[0].info(name) else {
                continue;
            };
            let values = match self.merge_tensor(name, info, &prep, &mut buf)? {
                Some(raw) => Values::Raw(raw),
                None if !buf.iter().all(|x| x.is_finite()) => {
                    return Err(MergeError::NonFinite(name.to_string()).into());
                }
                None => Values::F32(&buf),
            };
            let dtype = match &values {
                Values::F32(_) => prep.out_dtype.unwrap_or(info.dtype),
                Values::Raw(_) => info.dtype,
            };
            f(MergedTensor {
                name,
                shape: &info.shape,
                dtype,
                values,
            })?;
            if self.release {
                for c in self.inputs.iter().chain(self.base.as_ref()) {
                    c.release(name);
                }
            }
        }
        Ok(())
    }

    /// Merges into a Hugging Face checkpoint directory: `model.safetensors`
    /// (streamed to a temp file, then renamed), the first input's config and
    /// tokenizer files (config's `torch_dtype` follows `out_dtype`), and
    /// `merge.json`, written last.
    pub fn merge_to_dir(
        &self,
        spec: &MergeSpec,
        out: impl AsRef<Path>,
    ) -> Result<MergeReport, MergeError> {
        let started = std::time::Instant::now();
        let out = out.as_ref();
        let prep = self.prepare(spec)?;
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        for stale in [INDEX_FILE, MERGE_RECORD] {
            let p = out.join(stale);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        let first = &self.inputs[0];
        let specs = first
            .names()
            .filter_map(|n| first.info(n).map(|i| (n, i)))
            .map(|(name, i)| TensorSpec {
                name: name.to_string(),
                dtype: match prep.out_dtype {
                    Some(d) if i.dtype.is_float() => d,
                    _ => i.dtype,
                },
                shape: i.shape.clone(),
            })
            .collect();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut writer = SafetensorsWriter::create(out.join(MODEL_FILE), specs, &meta)?;
        let mut tensors = 0;
        // A writer thread copies tensor i into the file while tensor i + 1 merges:
        // on many machines the page-cache write costs as much as the merge.
        // Encoded buffers go back and forth, so at most three are ever allocated.
        let (to_writer, from_merge) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(1);
        let (to_merge, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let (merged, written) = std::thread::scope(|s| {
            let w = s.spawn(move || -> Result<SafetensorsWriter, MergeError> {
                for (name, bytes) in from_merge {
                    writer.write_bytes(&name, &bytes)?;
                    let _ = to_merge.send(bytes);
                }
                Ok(writer)
            });
            let merged = self.merge_each(spec, |t: MergedTensor<'_>| -> Result<(), MergeError> {
                tensors += 1;
                let mut buf = spare.try_recv().unwrap_or_default();
                buf.clear();
                match &t.values {
                    Values::F32(v) => {
                        buf.resize(v.len() * t.dtype.size(), 0);
                        encode_f32(t.dtype, v, &mut buf);
                    }
                    Values::Raw(b) => buf.extend_from_slice(b),
                }
                // A closed channel means the writer failed: stop merging; its own
                // error is the one reported.
                to_writer
                    .send((t.name.to_string(), buf))
                    .map_err(|_| MergeError::Param("the writer stopped".into()))
            });
            drop(to_writer);
            let written = w
                .join()
                .unwrap_or_else(|_| Err(MergeError::Param("the writer thread panicked".into())));
            (merged, written)
        });
        let writer = written?;
        merged?;
        let bytes = writer.finish()?;
        let copied = self.copy_side_files(out, prep.out_dtype)?;
        let report = MergeReport {
            demix_version: crate::VERSION.to_string(),
            spec: spec.clone(),
            coefficients: prep.coef.iter().map(|&c| c as f64).collect(),
            inputs: match &self.labels {
                Some((l, _)) => l.clone(),
                None => self
                    .inputs
                    .iter()
                    .map(|c| c.dir().display().to_string())
                    .collect(),
            },
            base: match &self.labels {
                Some((_, b)) => b.clone(),
                None => self.base.as_ref().map(|c| c.dir().display().to_string()),
            },
            tensors,
            bytes,
            copied,
            seconds: started.elapsed().as_secs_f64(),
        };
        let json = serde_json::to_vec_pretty(&report).map_err(|e| MergeError::Io {
            path: out.join(MERGE_RECORD),
            source: e.into(),
        })?;
        let tmp = out.join(format!(".{MERGE_RECORD}.tmp"));
        std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, out.join(MERGE_RECORD)).map_err(io_err(out))?;
        Ok(report)
    }

    fn copy_side_files(
        &self,
        out: &Path,
        out_dtype: Option<Dtype>,
    ) -> Result<Vec<String>, MergeError> {
        let src_dir = self.inputs[0].dir();
        let mut copied = Vec::new();
        for name in SIDE_FILES {
            let src = src_dir.join(name);
            if !src.is_file() {
                continue;
            }
            let dst = out.join(name);
            let torch = out_dtype.and_then(Dtype::torch_name);
            match (name, torch) {
                ("config.json", Some(t)) => {
                    let text = std::fs::read(&src).map_err(io_err(&src))?;
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&text).map_err(|e| MergeError::Io {
                            path: src.clone(),
                            source: e.into(),
                        })?;
                    if let Some(obj) = v.as_object_mut() {
                        for key in ["torch_dtype", "dtype"] {
                            if obj.contains_key(key) {
                                obj.insert(key.into(), t.into());
                            }
                        }
                    }
                    let text = serde_json::to_vec_pretty(&v).unwrap_or(text);
                    std::fs::write(&dst, text).map_err(io_err(&dst))?;
                }
                _ => {
                    std::fs::copy(&src, &dst).map_err(io_err(&dst))?;
                }
            }
            copied.push(name.to_string());
        }
        Ok(copied)
    }

    /// Merges one tensor into `out`, or returns the bytes of a non-float tensor.
    fn merge_tensor<'a>(
        &'a self,
        name: &str,
        info: &TensorInfo,
        prep: &Prepared,
        out: &mut Vec<f32>,
    ) -> Result<Option<&'a [u8]>, MergeError> {
        if !info.dtype.is_float() {
            // Integer buffers (e.g. position ids) cannot be averaged: pass them
            // through when every checkpoint agrees.
            let first = &self.inputs[0];
            let bytes = first.bytes(name).unwrap_or_default();
            for c in self.inputs[1..].iter().chain(self.base.as_ref()) {
                if c.bytes(name) != Some(bytes) {
                    return Err(MergeError::Mismatch {
                        tensor: name.to_string(),
                        detail: format!(
                            "{} tensors cannot be merged and differ between {} and {}",
                            info.dtype,
                            describe(first),
                            describe(c)
                        ),
                    });
                }
            }
            return Ok(Some(bytes));
        }
        let n = info.numel();
        // Each checkpoint has its own offsets (and shards) for the tensor.
        let src = |ck: &'a Checkpoint| -> Result<Src<'a>, MergeError> {
            ck.info(name)
                .map(|info| Src { ck, info })
                .ok_or_else(|| MergeError::Mismatch {
                    tensor: name.to_string(),
                    detail: format!("missing from {}", describe(ck)),
                })
        };
        let mut active: Vec<(usize, Src<'a>, f32)> = Vec::new();
        for ((i, ck), &c) in self.inputs.iter().enumerate().zip(&prep.coef) {
            if c != 0.0 {
                active.push((i, src(ck)?, c));
            }
        }
        out.clear();
        out.resize(n, 0.0);
        let out = out.as_mut_slice();
        let dtype = info.dtype;
        match prep.kind {
            Kind::Linear => par_blocks(out, self.threads, |range, acc| {
                let mut tmp = [0f32; BLOCK];
                linear_block(&active, info, range, acc, &mut tmp)
            }),
            Kind::Delta | Kind::Dare { .. } => {
                let Some(base) = self.base.as_ref() else {
                    return Err(MergeError::MissingBase("task_arithmetic"));
                };
                let base = src(base)?;
                par_blocks(out, self.threads, |range, acc| {
                    let mut tmp = [0f32; BLOCK];
                    let mut bits = [0u32; BLOCK];
                    for (k, start) in range.clone().step_by(BLOCK).enumerate() {
                        let end = (start + BLOCK).min(range.end);
                        let a = &mut acc[k * BLOCK..k * BLOCK + (end - start)];
                        let b = &mut tmp[..end - start];
                        decode_f32(dtype, base.bytes(start..end), a);
                        b.copy_from_slice(a);
                        let mut x = [0f32; BLOCK];
                        for &(i, ck, c) in &active {
                            let x = &mut x[..end - start];
                            decode_f32(dtype, ck.bytes(start..end), x);
                            match prep.kind {
                                Kind::Dare {
                                    keep_above,
                                    rescale,
                                    seed,
                                } => {
                                    let bits = &mut bits[..end - start];
                                    dare_bits(seed, i, name, start / BLOCK, bits);
                                    let cr = c * rescale;
                                    for ((a, (&x, &b)), &r) in
                                        a.iter_mut().zip(x.iter().zip(b.iter())).zip(bits.iter())
                                    {
                                        let keep = if r as u64 >= keep_above { cr } else { 0.0 };
                                        *a += keep * (x - b);
                                    }
                                }
                                _ => {
                                    for (a, (&x, &b)) in a.iter_mut().zip(x.iter().zip(b.iter())) {
                                        *a += c * (x - b);
                                    }
                                }
                            }
                        }
                    }
                })
            }
            Kind::Ties { density } => {
                let Some(base) = self.base.as_ref() else {
                    return Err(MergeError::MissingBase("ties"));
                };
                let base = src(base)?;
                ties(base, &active, info, density, prep.scale, out);
            }
        }
        Ok(None)
    }
}

/// One checkpoint's copy of the tensor being merged.
#[derive(Clone, Copy)]
struct Src<'a> {
    ck: &'a Checkpoint,
    info: &'a TensorInfo,
}

impl<'a> Src<'a> {
    /// Bytes of elements `range`.
    fn bytes(&self, range: Range<usize>) -> &'a [u8] {
        self.ck.element_bytes(self.info, range)
    }
}

/// `acc = sum_i c_i x_i` over one thread's range, block by block. The first
/// input initialises the sum, so weights (1, 0, ...) reproduce it bit for bit.
fn linear_block(
    active: &[(usize, Src<'_>, f32)],
    info: &TensorInfo,
    range: Range<usize>,
    acc: &mut [f32],
    tmp: &mut [f32; BLOCK],
) {
    for (k, start) in range.clone().step_by(BLOCK).enumerate() {
        let end = (start + BLOCK).min(range.end);
        let a = &mut acc[k * BLOCK..k * BLOCK + (end - start)];
        let x = &mut tmp[..end - start];
        for (j, &(_, ck, c)) in active.iter().enumerate() {
            let bytes = ck.bytes(start..end);
            if info.dtype == Dtype::Bf16 {
                // The common case, fused: decode and accumulate in one pass.
                let pairs = bytes.chunks_exact(2);
                if j == 0 {
                    for (a, b) in a.iter_mut().zip(pairs) {
                        *a = c * f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                    }
                } else {
                    for (a, b) in a.iter_mut().zip(pairs) {
                        *a += c * f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                    }
                }
                continue;
            }
            decode_f32(info.dtype, bytes, x);
            if j == 0 {
                for (a, &x) in a.iter_mut().zip(x.iter()) {
                    *a = c * x;
                }
            } else {
                for (a, &x) in a.iter_mut().zip(x.iter()) {
                    *a += c * x;
                }
            }
        }
    }
}

/// Runs `f(range, out[range])` over contiguous, block-aligned parts of `out`,
/// on up to `threads` scoped threads.
fn par_blocks<F>(out: &mut [f32], threads: usize, f: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let n = out.len();
    if threads <= 1 || n < PAR_MIN {
        f(0..n, out);
        return;
    }
    let per = n.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
    std::thread::scope(|s| {
        let f = &f;
        for (k, part) in out.chunks_mut(per).enumerate() {
            let start = k * per;
            s.spawn(move || f(start..start + part.len(), part));
        }
    });
}

/// Uniform u32s for one DARE block: a ChaCha8 stream keyed by the seed, the
/// input's position, the tensor name and the block index, so masks do not
/// depend on threads, weights or which other tensors exist.
fn dare_bits(seed: u64, input: usize, name: &str, block: usize, out: &mut [u32]) {
    let mut h = blake3::Hasher::new();
    h.update(b"demix/dare/v1");
    h.update(&seed.to_le_bytes());
    h.update(&(input as u64).to_le_bytes());
    h.update(&(block as u64).to_le_bytes());
    h.update(name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
    rng.fill(out);
}

/// Indices of the `k` largest magnitudes of `d` (ties broken by index), as a
/// keep mask applied in place: other entries become 0.
fn trim_to_top_k(d: &mut [f32], k: usize, scratch: &mut Vec<f32>) {
    let n = d.len();
    if k >= n {
        return;
    }
    if k == 0 {
        d.fill(0.0);
        return;
    }
    scratch.clear();
    scratch.extend(d.iter().map(|x| x.abs()));
    let (_, thr, _) = scratch.select_nth_unstable_by(n - k, |a, b| a.total_cmp(b));
    let thr = *thr;
    let mut at_thr = k - d.iter().filter(|x| x.abs().total_cmp(&thr).is_gt()).count();
    for x in d.iter_mut() {
        match x.abs().total_cmp(&thr) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal if at_thr > 0 => at_thr -= 1,
            _ => *x = 0.0,
        }
    }
}

/// TIES on one tensor: whole task vectors are needed for the top-k threshold,
/// so this holds one decoded tensor per active input.
fn ties(
    base: Src<'_>,
    active: &[(usize, Src<'_>, f32)],
    info: &TensorInfo,
    density: f64,
    scale: f32,
    out: &mut [f32],
) {
    let n = info.numel();
    let k = ((density * n as f64).round() as usize).min(n);
    decode_f32(info.dtype, base.bytes(0..n), out);
    let mut scratch = Vec::new();
    let mut deltas: Vec<Vec<f32>> = Vec::with_capacity(active.len());
    for &(_, ck, _) in active {
        let mut d = vec![0f32; n];
        decode_f32(info.dtype, ck.bytes(0..n), &mut d);
        for (d, &b) in d.iter_mut().zip(out.iter()) {
            *d -= b;
        }
        trim_to_top_k(&mut d, k, &mut scratch);
        deltas.push(d);
    }
    drop(scratch);
    for (j, o) in out.iter_mut().enumerate() {
        let elected: f32 = active
            .iter()
            .zip(&deltas)
            .map(|(&(_, _, c), d)| c * d[j])
            .sum();
        if elected == 0.0 {
            continue;
        }
        let (mut num, mut den) = (0f32, 0f32);
        for (&(_, _, c), d) in active.iter().zip(&deltas) {
            let x = d[j];
            if x != 0.0 && (x > 0.0) == (elected > 0.0) {
                num += c * x;
                den += c;
            }
        }
        if den > 0.0 {
            *o += scale * (num / den);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::save_f32;

    fn spec(name: &str, dtype: Dtype, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// Writes a checkpoint directory with tensors `a` (2x2) and `b` (3) plus a
    /// config.json, and returns its path.
    fn model(root: &Path, id: &str, dtype: Dtype, a: [f32; 4], b: [f32; 3]) -> PathBuf {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        save_f32(
            dir.join(MODEL_FILE),
            &[
                (spec("a", dtype, &[2, 2]), a.to_vec()),
                (spec("b", dtype, &[3]), b.to_vec()),
            ],
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type":"qwen3","torch_dtype":"float32"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), format!("{{\"id\":\"{id}\"}}")).unwrap();
        dir
    }

    fn collect(c: &Components, spec: &MergeSpec) -> Result<BTreeMap<String, Vec<f32>>, MergeError> {
        let mut out = BTreeMap::new();
        c.merge_each(spec, |t: MergedTensor<'_>| -> Result<(), MergeError> {
            if let Values::F32(v) = t.values {
                out.insert(t.name.to_string(), v.to_vec());
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        base: PathBuf,
        m1: PathBuf,
        m2: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = model(
            dir.path(),
            "base",
            Dtype::F32,
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0],
        );
        let m1 = model(
            dir.path(),
            "m1",
            Dtype::F32,
            [1.0, -2.0, 3.0, 0.5],
            [2.0, 0.0, 1.0],
        );
        let m2 = model(
            dir.path(),
            "m2",
            Dtype::F32,
            [3.0, 2.0, -1.0, 0.5],
            [1.0, 3.0, -1.0],
        );
        Fixture {
            _dir: dir,
            base,
            m1,
            m2,
        }
    }

    #[test]
    fn linear_matches_hand_computation() {
        let f = fixture();
        let c = Components::open(&[&f.m1, &f.m2], None).unwrap();
        // Weights (1, 3) normalise to (0.25, 0.75).
        let t = collect(&c, &MergeSpec::linear(vec![1.0, 3.0])).unwrap();
        close(&t["a"], &[2.5, 1.0, 0.0, 0.5]);
        close(&t["b"], &[1.25, 2.25, -0.5]);
    }

    #[test]
    fn task_arithmetic_matches_hand_computation() {
        let f = fixture();
        let c = Components::open(&[&f.m1, &f.m2], Some(&f.base)).unwrap();
        let spec = MergeSpec {
            method: Method::TaskArithmetic { scale: 0.5 },
            weights: vec![1.0, 0.5],
            out_dtype: None,
        };
        let t = collect(&c, &spec).unwrap();
        // a: 0 + 0.5 * (1 * m1 + 0.5 * m2)
        close(&t["a"], &[1.25, -0.5, 1.25, 0.375]);
        // b: 1 + 0.5 * (1 * (m1 - 1) + 0.5 * (m2 - 1))
        close(&t["b"], &[1.5, 1.0, 0.5]);
        // Task arithmetic with scale 1 and weights summing to 1 is linear.
        let ta = MergeSpec {
            method: Method::TaskArithmetic { scale: 1.0 },
            weights: vec![0.25, 0.75],
            out_dtype: None,
        };
        let lin = collect(&c, &MergeSpec::linear(vec![0.25, 0.75])).unwrap();
        let t = collect(&c, &ta).unwrap();
        close(&t["a"], &lin["a"]);
        close(&t["b"], &lin["b"]);
    }

    #[test]
    fn ties_matches_hand_computation() {
        let f = fixture();
        let c = Components::open(&[&f.m1, &f.m2], Some(&f.base)).unwrap();
        let spec = MergeSpec {
            method: Method::Ties {
                density: 0.5,
                scale: 1.0,
            },
            weights: vec![1.0, 1.0],
            out_dtype: None,
        };
        let t = collect(&c, &spec).unwrap();
        // a: deltas m1 = [1, -2, 3, .5] -> top 2: [0, -2, 3, 0];
        //           m2 = [3, 2, -1, .5] -> top 2: [3, 2, 0, 0].
        // elected signs: [+, 0 (-2 + 2), +, 0]; disjoint means: [3, 0, 3, 0].
        close(&t["a"], &[3.0, 0.0, 3.0, 0.0]);
        // b: deltas m1 = [1, -1, 0] -> top round(1.5) = 2: [1, -1, 0] (index tie-break);
        //           m2 = [0, 2, -2] -> top 2: [0, 2, -2].
        // elected: [+, +, -]; means: [1, 2, -2]; plus base 1.
        close(&t["b"], &[2.0, 3.0, -1.0]);
        // Weighted: m2 counts 3x: a[1] elects + (-2 + 6), keeps only m2's 2.
        let spec = MergeSpec {
            method: Method::Ties {
                density: 0.5,
                scale: 0.5,
            },
            weights: vec![1.0, 3.0],
            out_dtype: None,
        };
        let t = collect(&c, &spec).unwrap();
        // a[0]: (1*0 + 3*3) / 3 = 3 (m1 trimmed there); a[2]: only m1 -> 3.
        close(&t["a"], &[1.5, 1.0, 1.5, 0.0]);
    }

    #[test]
    fn ties_with_full_density_and_agreeing_signs_is_the_mean() {
        let f = fixture();
        let c = Components::open(&[&f.m1, &f.m1], Some(&f.base)).unwrap();
        let spec = MergeSpec {
            method: Method::Ties {
                density: 1.0,
                scale: 1.0,
            },
            weights: vec![0.3, 0.7],
            out_dtype: None,
        };
        let t = collect(&c, &spec).unwrap();
        close(&t["a"], &[1.0, -2.0, 3.0, 0.5]);
        close(&t["b"], &[2.0, 0.0, 1.0]);
    }

    #[test]
    fn dare_drops_rescales_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let n = 10_000;
        let write = |id: &str, v: f32| {
            let d = dir.path().join(id);
            std::fs::create_dir_all(&d).unwrap();
            save_f32(
                d.join(MODEL_FILE),
                &[(spec("w", Dtype::F32, &[n]), vec![v; n])],
            )
            .unwrap();
            d
        };
        let base = write("base", 1.0);
        let m1 = write("m1", 3.0);
        let m2 = write("m2", -1.0);
        let c = Components::open(&[&m1, &m2], Some(&base)).unwrap();
        let dare = |drop: f64, seed: u64, combine| MergeSpec {
            method: Method::Dare {
                drop,
                seed,
                combine,
                scale: 1.0,
            },
            weights: vec![1.0, 1.0],
            out_dtype: None,
        };
        // drop 0 is plain linear (weights normalised).
        let t = collect(&c, &dare(0.0, 1, DareCombine::Linear)).unwrap();
        assert!(t["w"].iter().all(|&x| x == 1.0), "1 + 0.5 * 2 + 0.5 * -2");
        // drop 0.5: each delta is 0 or doubled: out = 1 + 0.5 * (4 k1 - 4 k2).
        let t1 = collect(&c, &dare(0.5, 7, DareCombine::Linear)).unwrap();
        for &x in &t1["w"] {
            assert!([1.0, 3.0, -1.0].contains(&x), "{x}");
        }
        let kept_m1 = t1["w"].iter().filter(|&&x| x == 3.0).count() as f64 / n as f64;
        assert!(
            (kept_m1 - 0.25).abs() < 0.03,
            "P(m1 kept, m2 dropped) = .25, got {kept_m1}"
        );
        let mean: f64 = t1["w"].iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.05, "unbiased: {mean}");
        // Same seed, same result, whatever the threads; another seed differs.
        let c1 = Components::open(&[&m1, &m2], Some(&base))
            .unwrap()
            .with_threads(1);
        assert_eq!(
            collect(&c1, &dare(0.5, 7, DareCombine::Linear)).unwrap(),
            t1
        );
        let t2 = collect(&c, &dare(0.5, 8, DareCombine::Linear)).unwrap();
        assert_ne!(t2, t1);
        // Task-arithmetic combine: 1 + 2 k1 * 2 + 2 k2 * -2.
        let t3 = collect(&c, &dare(0.5, 7, DareCombine::TaskArithmetic)).unwrap();
        for (&x, &y) in t3["w"].iter().zip(&t1["w"]) {
            assert_eq!(x - 1.0, 2.0 * (y - 1.0));
        }
    }

    #[test]
    fn parallel_blocks_match_serial() {
        let dir = tempfile::tempdir().unwrap();
        let n = PAR_MIN + 3 * BLOCK + 17;
        let write = |id: &str, s: f32| {
            let d = dir.path().join(id);
            std::fs::create_dir_all(&d).unwrap();
            let v: Vec<f32> = (0..n).map(|i| ((i as f32) * s).sin()).collect();
            save_f32(d.join(MODEL_FILE), &[(spec("w", Dtype::Bf16, &[n]), v)]).unwrap();
            d
        };
        let (b, m1, m2) = (write("b", 0.1), write("m1", 0.2), write("m2", 0.3));
        let spec = MergeSpec {
            method: Method::Dare {
                drop: 0.3,
                seed: 3,
                combine: DareCombine::Linear,
                scale: 1.0,
            },
            weights: vec![0.4, 0.6],
            out_dtype: None,
        };
        let one = Components::open(&[&m1, &m2], Some(&b))
            .unwrap()
            .with_threads(1);
        let two = Components::open(&[&m1, &m2], Some(&b))
            .unwrap()
            .with_threads(2);
        for s in [spec, MergeSpec::linear(vec![0.4, 0.6])] {
            assert_eq!(collect(&one, &s).unwrap(), collect(&two, &s).unwrap());
        }
    }

    #[test]
    fn linear_with_one_hot_weights_is_the_component_byte_for_byte() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        // Include -0.0 and a bf16 model: the first input must come back exactly.
        let m0 = model(
            dir.path(),
            "m0",
            Dtype::Bf16,
            [-0.0, 1.0 / 3.0, 7.5, -1e-3],
            [2.0, 0.1, 9.0],
        );
        let m3 = model(
            dir.path(),
            "m3",
            Dtype::Bf16,
            [f32::NAN, 1.0, 7.0, 1.0],
            [2.0, 0.0, 9.0],
        );
        for (a, b) in [(&f.m1, &f.m2), (&m0, &m3)] {
            let c = Components::open(&[a, b], None).unwrap();
            let out = dir.path().join("out");
            c.merge_to_dir(&MergeSpec::linear(vec![1.0, 0.0]), &out)
                .unwrap();
            let x = std::fs::read(a.join(MODEL_FILE)).unwrap();
            let y = std::fs::read(out.join(MODEL_FILE)).unwrap();
            assert_eq!(x, y);
        }
    }

    #[test]
    fn merging_a_model_with_itself_returns_it() {
        let f = fixture();
        let c = Components::open(&[&f.m1, &f.m1, &f.m1], None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        c.merge_to_dir(&MergeSpec::linear(vec![0.25, 0.5, 0.25]), dir.path())
            .unwrap();
        assert_eq!(
            std::fs::read(f.m1.join(MODEL_FILE)).unwrap(),
            std::fs::read(dir.path().join(MODEL_FILE)).unwrap()
        );
        let t = collect(&c, &MergeSpec::linear(vec![0.2, 0.3, 0.5])).unwrap();
        close(&t["a"], &[1.0, -2.0, 3.0, 0.5]);
    }

    #[test]
    fn mismatches_name_the_tensor_and_files() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let odd = |id: &str, tensors: Vec<(TensorSpec, Vec<f32>)>| {
            let d = dir.path().join(id);
            std::fs::create_dir_all(&d).unwrap();
            save_f32(d.join(MODEL_FILE), &tensors).unwrap();
            d
        };
        let missing = odd(
            "missing",
            vec![(spec("a", Dtype::F32, &[2, 2]), vec![0.0; 4])],
        );
        let extra = odd(
            "extra",
            vec![
                (spec("a", Dtype::F32, &[2, 2]), vec![0.0; 4]),
                (spec("b", Dtype::F32, &[3]), vec![0.0; 3]),
                (spec("c", Dtype::F32, &[1]), vec![0.0]),
            ],
        );
        let shape = odd(
            "shape",
            vec![
                (spec("a", Dtype::F32, &[4]), vec![0.0; 4]),
                (spec("b", Dtype::F32, &[3]), vec![0.0; 3]),
            ],
        );
        let dtype = odd(
            "dtype",
            vec![
                (spec("a", Dtype::F32, &[2, 2]), vec![0.0; 4]),
                (spec("b", Dtype::Bf16, &[3]), vec![0.0; 3]),
            ],
        );
        for (other, tensor, what) in [
            (&missing, "`b`", "but not in"),
            (&extra, "`c`", "but not in"),
            (&shape, "`a`", "shape [2, 2]"),
            (&dtype, "`b`", "dtype F32"),
        ] {
            let e = Components::open(&[&f.m1, other], None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(tensor) && e.contains(what), "{e}");
            let file = other.file_name().unwrap().to_str().unwrap();
            assert!(
                e.contains(file) && e.contains("m1"),
                "names both files: {e}"
            );
            // A mismatching base is caught too.
            assert!(Components::open(&[&f.m1], Some(other.as_path())).is_err());
        }
    }

    #[test]
    fn bad_specs_are_errors() {
        let f = fixture();
        let c = Components::open(&[&f.m1, &f.m2], None).unwrap();
        let cb = Components::open(&[&f.m1, &f.m2], Some(&f.base)).unwrap();
        let bad = [
            (&c, MergeSpec::linear(vec![1.0])),
            (&c, MergeSpec::linear(vec![1.0, -1.0])),
            (&c, MergeSpec::linear(vec![0.0, 0.0])),
            (&c, MergeSpec::linear(vec![f64::NAN, 1.0])),
            (
                &c,
                MergeSpec {
                    method: Method::TaskArithmetic { scale: 1.0 },
                    weights: vec![1.0, 1.0],
                    out_dtype: None,
                },
            ),
            (
                &cb,
                MergeSpec {
                    method: Method::Ties {
                        density: 0.0,
                        scale: 1.0,
                    },
                    weights: vec![1.0, 1.0],
                    out_dtype: None,
                },
            ),
            (
                &cb,
                MergeSpec {
                    method: Method::Dare {
                        drop: 1.0,
                        seed: 0,
                        combine: DareCombine::Linear,
                        scale: 1.0,
                    },
                    weights: vec![1.0, 1.0],
                    out_dtype: None,
                },
            ),
            (
                &c,
                MergeSpec {
                    out_dtype: Some(Dtype::I64),
                    ..MergeSpec::linear(vec![1.0, 1.0])
                },
            ),
        ];
        for (c, s) in bad {
            assert!(collect(c, &s).is_err(), "{s:?}");
        }
        assert!(matches!(
            Components::open::<&Path>(&[], None),
            Err(MergeError::NoInputs)
        ));
    }

    #[test]
    fn bf16_round_trip_and_output_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.0f32, -0.5, 3.140625, 1e-3];
        let m = model(dir.path(), "m", Dtype::Bf16, vals, [0.0, 1.0, 2.0]);
        let c = Components::open(&[&m, &m], None).unwrap();
        let out = dir.path().join("f32");
        let spec = MergeSpec {
            out_dtype: Some(Dtype::F32),
            ..MergeSpec::linear(vec![0.5, 0.5])
        };
        let report = c.merge_to_dir(&spec, &out).unwrap();
        assert_eq!(report.tensors, 2);
        let ck = Checkpoint::open(&out).unwrap();
        assert_eq!(ck.info("a").unwrap().dtype, Dtype::F32);
        let orig = Checkpoint::open(&m).unwrap().read_f32("a").unwrap();
        assert_eq!(
            ck.read_f32("a").unwrap(),
            orig,
            "bf16 values are exact in f32"
        );
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["torch_dtype"], "float32");
        // And back to bf16: identical bytes to the input.
        let c2 = Components::open(&[&out], None).unwrap();
        let back = dir.path().join("bf16");
        let spec = MergeSpec {
            out_dtype: Some(Dtype::Bf16),
            ..MergeSpec::linear(vec![1.0])
        };
        c2.merge_to_dir(&spec, &back).unwrap();
        let x = Checkpoint::open(&m).unwrap();
        let y = Checkpoint::open(&back).unwrap();
        assert_eq!(x.bytes("a"), y.bytes("a"));
        assert_eq!(x.bytes("b"), y.bytes("b"));
    }

    #[test]
    fn f16_inputs_merge() {
        let dir = tempfile::tempdir().unwrap();
        let a = model(
            dir.path(),
            "a",
            Dtype::F16,
            [1.0, 2.0, 3.0, 4.0],
            [0.5, 0.25, 8.0],
        );
        let b = model(
            dir.path(),
            "b",
            Dtype::F16,
            [3.0, 2.0, 1.0, 0.0],
            [1.5, 0.75, 0.0],
        );
        let c = Components::open(&[&a, &b], None).unwrap();
        let mut seen = Vec::new();
        c.merge_each(
            &MergeSpec::linear(vec![1.0, 1.0]),
            |t: MergedTensor<'_>| -> Result<(), MergeError> {
                assert_eq!(t.dtype, Dtype::F16);
                let Values::F32(v) = t.values else {
                    panic!("float tensor")
                };
                seen.push((t.name.to_string(), t.shape.to_vec(), v.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen[0].0, "a");
        assert_eq!(seen[0].1, [2, 2]);
        assert_eq!(seen[0].2, [2.0; 4]);
        assert_eq!(seen[1].2, [1.0, 0.5, 4.0]);
    }

    #[test]
    fn sharded_inputs_and_side_files() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        // m1 again, split over two shards.
        let sh = dir.path().join("sharded");
        std::fs::create_dir_all(&sh).unwrap();
        let m1 = Checkpoint::open(&f.m1).unwrap();
        save_f32(
            sh.join("model-00001-of-00002.safetensors"),
            &[(spec("a", Dtype::F32, &[2, 2]), m1.read_f32("a").unwrap())],
        )
        .unwrap();
        save_f32(
            sh.join("model-00002-of-00002.safetensors"),
            &[(spec("b", Dtype::F32, &[3]), m1.read_f32("b").unwrap())],
        )
        .unwrap();
        std::fs::write(
            sh.join(INDEX_FILE),
            r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let c = Components::open(&[&f.m2, &sh], None).unwrap();
        let out = dir.path().join("out");
        // A stale index from an earlier run must not shadow the new model.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(INDEX_FILE), "{}").unwrap();
        let report = c
            .merge_to_dir(&MergeSpec::linear(vec![0.0, 1.0]), &out)
            .unwrap();
        assert_eq!(report.copied, ["config.json", "tokenizer.json"]);
        assert_eq!(
            std::fs::read(out.join(MODEL_FILE)).unwrap(),
            std::fs::read(f.m1.join(MODEL_FILE)).unwrap()
        );
        // Side files come from the first input.
        assert_eq!(
            std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
            r#"{"id":"m2"}"#
        );
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(MERGE_RECORD)).unwrap()).unwrap();
        assert_eq!(rec["method"], "linear");
        assert_eq!(rec["weights"], serde_json::json!([0.0, 1.0]));
        assert_eq!(rec["inputs"].as_array().unwrap().len(), 2);
        assert!(!out.join(INDEX_FILE).exists());
    }

    #[test]
    fn spec_serde_round_trip() {
        let s: MergeSpec = serde_json::from_str(
            r#"{"method":"dare","drop":0.2,"weights":[1,2],"out_dtype":"BF16"}"#,
        )
        .unwrap();
        assert_eq!(
            s.method,
            Method::Dare {
                drop: 0.2,
                seed: 0,
                combine: DareCombine::Linear,
                scale: 1.0
            }
        );
        assert_eq!(s.out_dtype, Some(Dtype::Bf16));
        let back: MergeSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let lin: MergeSpec = serde_json::from_str(r#"{"method":"linear","weights":[1]}"#).unwrap();
        assert_eq!(lin, MergeSpec::linear(vec![1.0]));
    }

    #[test]
    fn non_float_tensors_pass_through_only_when_equal() {
        let dir = tempfile::tempdir().unwrap();
        let raw = |id: &str, v: i64| {
            let d = dir.path().join(id);
            std::fs::create_dir_all(&d).unwrap();
            let header = r#"{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&v.to_le_bytes());
            std::fs::write(d.join(MODEL_FILE), bytes).unwrap();
            d
        };
        let (a, b, c) = (raw("a", 5), raw("b", 5), raw("c", 6));
        let ok = Components::open(&[&a, &b], None).unwrap();
        let out = dir.path().join("out");
        ok.merge_to_dir(&MergeSpec::linear(vec![0.5, 0.5]), &out)
            .unwrap();
        assert_eq!(
            Checkpoint::open(&out).unwrap().bytes("ids").unwrap(),
            5i64.to_le_bytes()
        );
        let bad = Components::open(&[&a, &c], None).unwrap();
        let e = bad
            .merge_to_dir(&MergeSpec::linear(vec![0.5, 0.5]), &out)
            .unwrap_err();
        assert!(e.to_string().contains("`ids`"), "{e}");
    }
}
