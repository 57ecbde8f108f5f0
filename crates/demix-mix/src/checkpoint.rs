//! Hugging Face safetensors checkpoints: memory-mapped reading (single file or
//! sharded with `model.safetensors.index.json`) and a streaming writer.
//!
//! The format is small enough to implement here (8-byte little-endian header
//! length, a JSON header of `dtype`/`shape`/`data_offsets`, then the data), which
//! keeps this module free of the optional `safetensors` dependency of the torch
//! feature, and lets the writer stream one tensor at a time to a temp file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// File name of a single-file checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Headers larger than this are rejected as corrupt (the safetensors crate uses
/// the same bound).
const MAX_HEADER: usize = 100_000_000;

/// Errors reading or writing safetensors files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no {MODEL_FILE} or {INDEX_FILE} there")]
    NotACheckpoint { path: PathBuf },
    #[error("{path}: bad safetensors header: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("{path}: bad shard index: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Element types of safetensors. Merges compute on [`Dtype::is_float`] types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    #[serde(rename = "BOOL")]
    Bool,
    U8,
    I8,
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    I16,
    U16,
    F16,
    #[serde(rename = "BF16")]
    Bf16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name in safetensors headers (`"BF16"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Parses a header name; `None` for unknown names.
    pub fn parse(s: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Whether merges can compute on it (decode to f32 and back).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16 | Dtype::F64)
    }

    /// The `torch_dtype` name used in Hugging Face `config.json`.
    pub fn torch_name(self) -> Option<&'static str> {
        match self {
            Dtype::F32 => Some("float32"),
            Dtype::F16 => Some("float16"),
            Dtype::Bf16 => Some("bfloat16"),
            Dtype::F64 => Some("float64"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// bf16 bits from f32 with round-to-nearest-even (NaN stays NaN), as torch does.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) as u16) | 0x0040
    } else {
        (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// f32 from bf16 bits (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Decodes little-endian float bytes of `dtype` into `out` (lengths must agree:
/// `bytes.len() == out.len() * dtype.size()`). Non-float dtypes are not decoded.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    // Fixed-size chunk loops: these compile to vector loads and shuffles.
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                *o = f64::from_le_bytes(a) as f32;
            }
        }
        _ => {}
    }
}

/// Encodes `src` as little-endian `dtype` bytes into `out`
/// (`out.len() == src.len() * dtype.size()`). Non-float dtypes are not encoded.
pub fn encode_f32(dtype: Dtype, src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), src.len() * dtype.size());
    match dtype {
        Dtype::F32 => {
            for (c, &x) in out.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        Dtype::Bf16 => {
            for (c, &x) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (c, &x) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (c, &x) in out.chunks_exact_mut(8).zip(src) {
                c.copy_from_slice(&(x as f64).to_le_bytes());
            }
        }
        _ => {}
    }
}

/// One tensor of a checkpoint: its type, shape and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    shard: usize,
    /// Absolute byte range in the shard's map.
    bytes: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped safetensors checkpoint (one file or shards). Opening reads
/// only headers; tensor bytes are paged in on use and can be dropped from this
/// process's resident set again with [`Checkpoint::release`].
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("files", &self.files)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

/// Parses one safetensors file's header into `(name, info)` with absolute
/// offsets, checking what the safetensors crate checks (bounds, sizes, overlap).
fn parse_header(
    path: &Path,
    map: &[u8],
    shard: usize,
) -> Result<Vec<(String, TensorInfo)>, CheckpointError> {
    let bad = |reason: String| CheckpointError::Header {
        path: path.to_path_buf(),
        reason,
    };
    if map.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte length",
            map.len()
        )));
    }
    let n = u64::from_le_bytes(map[..8].try_into().unwrap_or([0; 8]));
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > MAX_HEADER || n > map.len() - 8 {
        return Err(bad(format!(
            "header length {n} exceeds the file ({} bytes)",
            map.len()
        )));
    }
    let data_start = 8 + n;
    let data_len = map.len() - data_start;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let mut out = Vec::with_capacity(header.len());
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawInfo =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let dtype = Dtype::parse(&raw.dtype)
            .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype {}", raw.dtype)))?;
        let (s, e) = raw.data_offsets;
        let want = raw
            .shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", raw.shape)))?;
        if e < s || e > data_len || e - s != want {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{s}, {e}] do not fit {dtype} {:?} in {data_len} data bytes",
                raw.shape
            )));
        }
        out.push((
            name,
            TensorInfo {
                dtype,
                shape: raw.shape,
                shard,
                bytes: data_start + s..data_start + e,
            },
        ));
    }
    let mut spans: Vec<(&str, &Range<usize>)> = out
        .iter()
        .filter(|(_, t)| !t.bytes.is_empty())
        .map(|(n, t)| (n.as_str(), &t.bytes))
        .collect();
    spans.sort_by_key(|(_, r)| r.start);
    for w in spans.windows(2) {
        if w[1].1.start < w[0].1.end {
            return Err(bad(format!(
                "tensors `{}` and `{}` overlap",
                w[0].0, w[1].0
            )));
        }
    }
    Ok(out)
}

fn map_file(path: &Path) -> Result<Mmap, CheckpointError> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only; like every safetensors reader we assume the
    // file is not truncated or rewritten while the checkpoint is open.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

impl Checkpoint {
    /// Opens a checkpoint directory (`model.safetensors`, or shards listed in
    /// `model.safetensors.index.json`), a `.safetensors` file, or an index file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            let single = path.join(MODEL_FILE);
            if index.is_file() {
                Self::open_index(&index)
            } else if single.is_file() {
                Self::open_file(&single)
            } else {
                Err(CheckpointError::NotACheckpoint {
                    path: path.to_path_buf(),
                })
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            Self::open_index(path)
        } else {
            Self::open_file(path)
        }
    }

    fn dir_of(path: &Path) -> PathBuf {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn open_file(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let map = map_file(path)?;
        let tensors = parse_header(path, &map, 0)?.into_iter().collect();
        Ok(Checkpoint {
            dir: Self::dir_of(path),
            files: vec![path.to_path_buf()],
            maps: vec![map],
            tensors,
        })
    }

    fn open_index(index: &Path) -> Result<Checkpoint, CheckpointError> {
        let bad = |reason: String| CheckpointError::Index {
            path: index.to_path_buf(),
            reason,
        };
        let text = std::fs::read(index).map_err(io_err(index))?;
        let raw: RawIndex = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let dir = Self::dir_of(index);
        let shard_names: BTreeSet<&String> = raw.weight_map.values().collect();
        let mut files = Vec::new();
        let mut maps = Vec::new();
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        for (i, shard) in shard_names.into_iter().enumerate() {
            if shard.contains('/') || shard.contains('\\') || shard == ".." {
                return Err(bad(format!("shard name {shard:?} is not a file name")));
            }
            let path = dir.join(shard);
            let map = map_file(&path)?;
            for (name, info) in parse_header(&path, &map, i)? {
                if tensors.contains_key(&name) {
                    return Err(bad(format!("tensor `{name}` is in more than one shard")));
                }
                tensors.insert(name, info);
            }
            files.push(path);
            maps.push(map);
        }
        for (name, shard) in &raw.weight_map {
            match tensors.get(name) {
                Some(t) if files[t.shard].file_name().and_then(|f| f.to_str()) == Some(shard) => {}
                Some(_) => {
                    return Err(bad(format!(
                        "tensor `{name}` is listed in {shard} but stored elsewhere"
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "tensor `{name}` is listed in {shard} but not stored there"
                    )));
                }
            }
        }
        Ok(Checkpoint {
            dir,
            files,
            maps,
            tensors,
        })
    }

    /// The directory holding the checkpoint (where `config.json` lives).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The safetensors files, one per shard.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// A tensor's dtype and shape.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The file that stores a tensor.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|t| self.files[t.shard].as_path())
    }

    /// A tensor's raw little-endian bytes.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensors
            .get(name)
            .map(|t| &self.maps[t.shard][t.bytes.clone()])
    }

    /// Bytes of elements `range` of a tensor (`range` must lie within it).
    pub(crate) fn element_bytes(&self, info: &TensorInfo, range: Range<usize>) -> &[u8] {
        let size = info.dtype.size();
        let start = info.bytes.start + range.start * size;
        &self.maps[info.shard][start..start + range.len() * size]
    }

    /// A float tensor decoded to f32; `None` if absent or not a float type.
    pub fn read_f32(&self, name: &str) -> Option<Vec<f32>> {
        let info = self.tensors.get(name)?;
        if !info.dtype.is_float() {
            return None;
        }
        let mut out = vec![0.0; info.numel()];
        decode_f32(info.dtype, self.bytes(name)?, &mut out);
        Some(out)
    }

    /// Drops a tensor's pages from this process's resident set (the page cache
    /// keeps them), so a merge's RSS stays near one tensor per input.
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(t) = self.tensors.get(name)
            && !t.bytes.is_empty()
        {
            // SAFETY: a read-only shared file map: DONTNEED only unmaps pages,
            // which fault back in from the file with the same contents.
            let _ = unsafe {
                self.maps[t.shard].unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    t.bytes.start,
                    t.bytes.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }
}

/// Name, dtype and shape of one tensor to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn byte_len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |a, &d| a.checked_mul(d))
    }
}

/// Writes a safetensors file one tensor at a time, in name order, to a temp file
/// beside the destination that [`SafetensorsWriter::finish`] renames into place.
pub struct SafetensorsWriter {
    dest: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    order: Vec<(String, usize)>,
    next: usize,
    /// Bytes of the current tensor written so far.
    partial: usize,
    total: u64,
    scratch: Vec<u8>,
}

impl SafetensorsWriter {
    /// Writes the header for `specs` (sorted by name here) and `metadata`
    /// (`__metadata__`, e.g. `{"format": "pt"}` as transformers expects).
    pub fn create(
        dest: impl AsRef<Path>,
        mut specs: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<SafetensorsWriter, CheckpointError> {
        let dest = dest.as_ref().to_path_buf();
        let bad = |reason: String| CheckpointError::Write {
            path: dest.clone(),
            reason,
        };
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(metadata).unwrap_or_default(),
            );
        }
        let mut offset = 0usize;
        let mut order = Vec::with_capacity(specs.len());
        for s in &specs {
            if s.name == "__metadata__"
                || order
                    .last()
                    .is_some_and(|(n, _): &(String, usize)| *n == s.name)
            {
                return Err(bad(format!(
                    "tensor name `{}` is reserved or repeated",
                    s.name
                )));
            }
            let len = s.byte_len().ok_or_else(|| {
                bad(format!(
                    "tensor `{}`: shape {:?} overflows",
                    s.name, s.shape
                ))
            })?;
            header.insert(
                s.name.clone(),
                serde_json::json!({"dtype": s.dtype.as_str(), "shape": s.shape, "data_offsets": [offset, offset + len]}),
            );
            offset += len;
            order.push((s.name.clone(), len));
        }
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
            .map_err(|e| bad(e.to_string()))?;
        // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let file_name = dest
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = dest.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 22, file);
        let head = (json.len() as u64).to_le_bytes();
        out.write_all(&head)
            .and_then(|_| out.write_all(&json))
            .map_err(io_err(&tmp))?;
        Ok(SafetensorsWriter {
            total: 8 + json.len() as u64,
            dest,
            tmp,
            out: Some(out),
            order,
            next: 0,
            partial: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends bytes of tensor `name`, which must be the current one in name
    /// order; a tensor may come in several pieces.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let (want, len) = match self.order.get(self.next) {
            Some((n, l)) => (n.as_str(), *l),
            None => return Err(self.fail(format!("tensor `{name}` written after the last one"))),
        };
        if want != name {
            return Err(self.fail(format!("tensor `{name}` written where `{want}` comes next")));
        }
        if self.partial + bytes.len() > len {
            return Err(self.fail(format!("tensor `{name}` gets more than its {len} bytes")));
        }
        let tmp = self.tmp.clone();
        if let Some(out) = self.out.as_mut() {
            out.write_all(bytes).map_err(io_err(&tmp))?;
        }
        self.partial += bytes.len();
        self.total += bytes.len() as u64;
        if self.partial == len {
            self.next += 1;
            self.partial = 0;
        }
        Ok(())
    }

    /// Appends elements of tensor `name` encoded as `dtype` (its spec's dtype).
    pub fn write_f32(
        &mut self,
        name: &str,
        dtype: Dtype,
        data: &[f32],
    ) -> Result<(), CheckpointError> {
        if !dtype.is_float() {
            return Err(self.fail(format!("tensor `{name}`: cannot encode f32 as {dtype}")));
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        const CHUNK: usize = 1 << 16;
        let mut r = Ok(());
        for part in data.chunks(CHUNK) {
            scratch.resize(part.len() * dtype.size(), 0);
            encode_f32(dtype, part, &mut scratch);
            r = self.write_bytes(name, &scratch);
            if r.is_err() {
                break;
            }
        }
        self.scratch = scratch;
        r
    }

    fn fail(&self, reason: String) -> CheckpointError {
        CheckpointError::Write {
            path: self.dest.clone(),
            reason,
        }
    }

    /// Checks every tensor was written, syncs and renames into place; returns
    /// the file size.
    pub fn finish(mut self) -> Result<u64, CheckpointError> {
        if self.next != self.order.len() {
            let missing = &self.order[self.next].0;
            return Err(self.fail(format!("tensor `{missing}` was never (fully) written")));
        }
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| CheckpointError::Io {
                path: self.tmp.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io_err(&self.tmp))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
        Ok(self.total)
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes small f32 tensors (encoded to each spec's dtype) in one call: for
/// tests, fixtures and tools. `metadata` gets `format: pt`.
pub fn save_f32(
    path: impl AsRef<Path>,
    tensors: &[(TensorSpec, Vec<f32>)],
) -> Result<u64, CheckpointError> {
    let path = path.as_ref();
    for (s, d) in tensors {
        if s.shape.iter().product::<usize>() != d.len() {
            return Err(CheckpointError::Write {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{}`: shape {:?} but {} values",
                    s.name,
                    s.shape,
                    d.len()
                ),
            });
        }
    }
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut w = SafetensorsWriter::create(
        path,
        tensors.iter().map(|(s, _)| s.clone()).collect(),
        &meta,
    )?;
    let mut sorted: Vec<&(TensorSpec, Vec<f32>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (s, d) in sorted {
        w.write_f32(&s.name, s.dtype, d)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: Dtype, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::parse(d.as_str()), Some(d));
            let j = serde_json::to_string(&d).unwrap();
            assert_eq!(j, format!("\"{}\"", d.as_str()));
        }
        assert_eq!(Dtype::parse("F128"), None);
    }

    #[test]
    fn bf16_rounding_matches_torch() {
        // Values checked against torch.tensor(x).to(torch.bfloat16).view(torch.int16).
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(-2.0), 0xc000);
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is a tie: rounds up to even 1 + 2^-6.
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        for b in [0u16, 0x3f80, 0x8001, 0x7f7f, 0x0001, 0xff80] {
            assert_eq!(f32_to_bf16(bf16_to_f32(b)), b);
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let xs = [0.0f32, -1.5, 3.25, 1e-3, 65504.0, -0.0];
        for d in [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::F64] {
            let mut b = vec![0u8; xs.len() * d.size()];
            encode_f32(d, &xs, &mut b);
            let mut back = vec![0f32; xs.len()];
            decode_f32(d, &b, &mut back);
            let mut b2 = vec![0u8; b.len()];
            encode_f32(d, &back, &mut b2);
            assert_eq!(b, b2, "{d}");
            for (x, y) in xs.iter().zip(&back) {
                assert!((x - y).abs() <= x.abs() * 1e-2, "{d}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn writes_the_reference_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        save_f32(
            &p,
            &[
                (spec("b", Dtype::F32, &[2]), vec![1.0, 2.0]),
                (spec("a", Dtype::Bf16, &[1]), vec![1.0]),
            ],
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
        assert_eq!(
            header,
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}}"#
        );
        assert_eq!(
            &bytes[8 + n..],
            &[0x80, 0x3f, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]
        );
        let ck = Checkpoint::open(&p).unwrap();
        assert_eq!(ck.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(ck.read_f32("b").unwrap(), [1.0, 2.0]);
        assert_eq!(ck.info("a").unwrap().dtype, Dtype::Bf16);
        ck.release("b");
        assert_eq!(ck.read_f32("b").unwrap(), [1.0, 2.0]);
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn writer_checks_order_and_completeness() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let specs = vec![spec("a", Dtype::F32, &[2]), spec("b", Dtype::F32, &[1])];
        let mut w = SafetensorsWriter::create(&p, specs.clone(), &BTreeMap::new()).unwrap();
        assert!(w.write_f32("b", Dtype::F32, &[1.0]).is_err());
        w.write_f32("a", Dtype::F32, &[1.0]).unwrap();
        w.write_f32("a", Dtype::F32, &[2.0]).unwrap();
        assert!(w.finish().is_err());
        assert!(!p.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file removed"
        );
        let dup = vec![spec("a", Dtype::F32, &[2]), spec("a", Dtype::F32, &[1])];
        assert!(SafetensorsWriter::create(&p, dup, &BTreeMap::new()).is_err());
    }

    fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn rejects_corrupt_headers() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>); 6] = [
            ("short", vec![1, 2, 3]),
            ("long header", {
                let mut v = 1000u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            }),
            ("not json", raw_file("{nope", &[])),
            (
                "bad dtype",
                raw_file(
                    r#"{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                ),
            ),
            (
                "size",
                raw_file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                ),
            ),
            (
                "overlap",
                raw_file(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
                    &[0; 8],
                ),
            ),
        ];
        for (what, bytes) in cases {
            let p = dir.path().join(format!("{what}.safetensors"));
            std::fs::write(&p, bytes).unwrap();
            let e = Checkpoint::open(&p).unwrap_err();
            assert!(matches!(e, CheckpointError::Header { .. }), "{what}: {e}");
        }
        let e = Checkpoint::open(dir.path()).unwrap_err();
        assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{e}");
    }

    #[test]
    fn opens_shards_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        save_f32(
            dir.path().join("s1.safetensors"),
            &[(spec("x", Dtype::F32, &[1]), vec![1.0])],
        )
        .unwrap();
        save_f32(
            dir.path().join("s2.safetensors"),
            &[(spec("y", Dtype::F16, &[2]), vec![2.0, 3.0])],
        )
        .unwrap();
        let index = r#"{"metadata":{"total_size":8},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}}"#;
        std::fs::write(dir.path().join(INDEX_FILE), index).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.files().len(), 2);
        assert_eq!(ck.read_f32("y").unwrap(), [2.0, 3.0]);
        assert!(ck.file_of("x").unwrap().ends_with("s1.safetensors"));
        // An index that names the wrong shard is an error.
        let wrong = r#"{"weight_map":{"x":"s2.safetensors","y":"s2.safetensors"}}"#;
        std::fs::write(dir.path().join(INDEX_FILE), wrong).unwrap();
        let e = Checkpoint::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("tensor `x`"), "{e}");
        let escape = r#"{"weight_map":{"x":"../s1.safetensors"}}"#;
        std::fs::write(dir.path().join(INDEX_FILE), escape).unwrap();
        assert!(Checkpoint::open(dir.path()).is_err());
    }
}
