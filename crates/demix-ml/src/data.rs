//! Documents from sources (text files, JSON Lines, Parquet; optionally .gz or
//! .zst), a deterministic by-document split, and tokenized shards.
//!
//! A shard is a directory:
//! * `tokens.bin`: u32 little-endian tokens, `EOS d0 EOS d1 ...` (a separator
//!   *before* each document, so every document token has a predecessor);
//! * `docs.bin`: per document two u64 LE: token end (exclusive) and UTF-8 byte
//!   length, so evaluation can report bits per byte over whole documents;
//! * `shard.json`: [`ShardMeta`].

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use demix_spec::data::{ComponentMix, Format, SourceSpec, SplitPart, SplitSpec, is_validation};

use crate::error::{IoContext, MlError, Result};
use crate::progress::Progress;
use crate::tokenizer::Tok;
use crate::util;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub text: String,
}

fn detect(path: &Path, fmt: Format) -> (Format, Option<&'static str>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (stem, comp) = if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Some("gz"))
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s.to_string(), Some("zst"))
    } else {
        (name.clone(), None)
    };
    let f = match fmt {
        Format::Auto => {
            if stem.ends_with(".jsonl") || stem.ends_with(".json") || stem.ends_with(".ndjson") {
                Format::Jsonl
            } else if stem.ends_with(".parquet") {
                Format::Parquet
            } else {
                Format::Text
            }
        }
        f => f,
    };
    (f, comp)
}

fn open_maybe_compressed(path: &Path, comp: Option<&str>) -> Result<Box<dyn Read>> {
    let f = File::open(path).with_path(path)?;
    Ok(match comp {
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
        Some(_) => Box::new(zstd::stream::read::Decoder::new(f).with_path(path)?),
        None => Box::new(f),
    })
}

fn list_files(root: &Path) -> Result<Vec<PathBuf>> {
    let md = fs::metadata(root).with_path(root)?;
    if md.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&d)
            .with_path(&d)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_path(&d)?;
        entries.retain(|p| {
            !p.file_name()
                .map(|n| n.to_string_lossy().starts_with('.'))
                .unwrap_or(true)
        });
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Streams the documents of `src` into `f` in a deterministic order.
pub fn for_each_document(
    src: &SourceSpec,
    f: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<()> {
    for file in list_files(&src.path)? {
        let (fmt, comp) = detect(&file, src.format);
        match fmt {
            Format::Parquet => read_parquet(&file, src, f)?,
            Format::Jsonl => read_jsonl(&file, comp, src, f)?,
            _ => {
                let mut s = String::new();
                open_maybe_compressed(&file, comp)?
                    .read_to_string(&mut s)
                    .with_path(&file)?;
                let id = file
                    .strip_prefix(&src.path)
                    .ok()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(&file)
                    .to_string_lossy()
                    .into_owned();
                f(Document { id, text: s })?;
            }
        }
    }
    Ok(())
}

/// Reads all documents of `src` that `split` keeps.
pub fn read_documents(src: &SourceSpec, split: &SplitSpec) -> Result<Vec<Document>> {
    let mut docs = vec![];
    for_each_document(src, &mut |d| {
        if split.keeps(&d.id) {
            docs.push(d);
        }
        Ok(())
    })?;
    Ok(docs)
}

fn read_jsonl(
    file: &Path,
    comp: Option<&str>,
    src: &SourceSpec,
    f: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<()> {
    let r = BufReader::new(open_maybe_compressed(file, comp)?);
    for (i, line) in r.lines().enumerate() {
        let lineno = i as u64 + 1;
        let line = line.with_path(file)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| MlError::BadLine {
            path: file.into(),
            line: lineno,
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let text = match v.get(&src.text_field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(bad(format!("field '{}' is not a string", src.text_field))),
            None => return Err(bad(format!("no field '{}'", src.text_field))),
        };
        let id = match v.get(&src.id_field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => format!(
                "{}:{lineno}",
                file.file_name().unwrap_or_default().to_string_lossy()
            ),
        };
        f(Document { id, text })?;
    }
    Ok(())
}

fn read_parquet(
    file: &Path,
    src: &SourceSpec,
    f: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use parquet::schema::types::Type;
    let perr = |e: parquet::errors::ParquetError| MlError::Parquet {
        path: file.into(),
        msg: e.to_string(),
    };
    let reader = SerializedFileReader::new(File::open(file).with_path(file)?).map_err(perr)?;
    let schema = reader.metadata().file_metadata().schema();
    let fields: Vec<_> = schema
        .get_fields()
        .iter()
        .filter(|t| t.name() == src.text_field || t.name() == src.id_field)
        .cloned()
        .collect();
    if !fields.iter().any(|t| t.name() == src.text_field) {
        return Err(MlError::Parquet {
            path: file.into(),
            msg: format!("no column '{}'", src.text_field),
        });
    }
    let projection = Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()
        .map_err(perr)?;
    for (i, row) in reader
        .get_row_iter(Some(projection))
        .map_err(perr)?
        .enumerate()
    {
        let row = row.map_err(perr)?;
        let row_no = i as u64 + 1;
        let mut text = None;
        let mut id = None;
        for (name, v) in row.get_column_iter() {
            if *name == src.text_field {
                // Text is text: numbers stringified would train silently on digits.
                text = match v {
                    Field::Str(s) => Some(s.clone()),
                    Field::Null => None,
                    other => {
                        return Err(MlError::BadLine {
                            path: file.into(),
                            line: row_no,
                            msg: format!(
                                "column '{}' holds {}, not a string: it is not text",
                                src.text_field,
                                field_type(other)
                            ),
                        });
                    }
                };
            } else if *name == src.id_field {
                id = match v {
                    Field::Null => None,
                    Field::Str(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
            }
        }
        let text = text.ok_or_else(|| MlError::BadLine {
            path: file.into(),
            line: row_no,
            msg: format!("row has no string in column '{}'", src.text_field),
        })?;
        let id = id.unwrap_or_else(|| {
            format!(
                "{}:{row_no}",
                file.file_name().unwrap_or_default().to_string_lossy()
            )
        });
        f(Document { id, text })?;
    }
    Ok(())
}

/// A Parquet value's type, for messages.
fn field_type(f: &parquet::record::Field) -> &'static str {
    use parquet::record::Field;
    match f {
        Field::Bool(_) => "a boolean",
        Field::Byte(_) | Field::Short(_) | Field::Int(_) | Field::Long(_) => "an integer",
        Field::UByte(_) | Field::UShort(_) | Field::UInt(_) | Field::ULong(_) => "an integer",
        Field::Float16(_) | Field::Float(_) | Field::Double(_) | Field::Decimal(_) => "a number",
        Field::Bytes(_) => "bytes",
        Field::Group(_) | Field::ListInternal(_) | Field::MapInternal(_) => "a nested value",
        _ => "a non-string value",
    }
}

/// Side metadata of a shard (`shard.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMeta {
    pub format: String,
    pub vocab_size: u32,
    pub eos_id: u32,
    /// All tokens including separators.
    pub tokens: u64,
    pub documents: u64,
    /// UTF-8 bytes of all documents.
    pub bytes: u64,
    pub tokenizer_hash: String,
}

pub const SHARD_FORMAT: &str = "demix-shard-v1";

/// Options for [`tokenize_to_shard`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeSpec {
    #[serde(default)]
    pub split: SplitSpec,
    /// Documents per parallel batch.
    #[serde(default = "default_batch_docs")]
    pub batch_docs: usize,
}

impl Default for TokenizeSpec {
    fn default() -> Self {
        Self {
            split: SplitSpec::default(),
            batch_docs: default_batch_docs(),
        }
    }
}

fn default_batch_docs() -> usize {
    512
}

/// Tokenizes the documents of `sources` (in order) into a shard directory at
/// `out_dir`, written atomically. Parallel over documents within a batch
/// (the tokenizers crate's rayon pool); output order is the input order.
pub fn tokenize_to_shard(
    sources: &[SourceSpec],
    spec: &TokenizeSpec,
    tok: &Tok,
    out_dir: &Path,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<ShardMeta> {
    let eos = tok.eos_id();
    let mut meta = ShardMeta {
        format: SHARD_FORMAT.into(),
        vocab_size: tok.vocab_size() as u32,
        eos_id: eos,
        tokens: 0,
        documents: 0,
        bytes: 0,
        tokenizer_hash: tok.hash().to_string(),
    };
    let start = Instant::now();
    util::write_dir_atomic(out_dir, |tmp| {
        let tpath = tmp.join("tokens.bin");
        let dpath = tmp.join("docs.bin");
        let mut tw = BufWriter::new(File::create(&tpath).with_path(&tpath)?);
        let mut dw = BufWriter::new(File::create(&dpath).with_path(&dpath)?);
        let mut batch: Vec<String> = Vec::with_capacity(spec.batch_docs);
        let mut flush = |batch: &mut Vec<String>, meta: &mut ShardMeta| -> Result<()> {
            if cancel.load(Ordering::Relaxed) {
                return Err(MlError::Cancelled);
            }
            let encs = tok.encode_batch(std::mem::take(batch))?;
            for (ids, bytes) in encs {
                tw.write_all(&eos.to_le_bytes()).with_path(&tpath)?;
                for t in &ids {
                    tw.write_all(&t.to_le_bytes()).with_path(&tpath)?;
                }
                meta.tokens += 1 + ids.len() as u64;
                meta.documents += 1;
                meta.bytes += bytes as u64;
                dw.write_all(&meta.tokens.to_le_bytes()).with_path(&dpath)?;
                dw.write_all(&(bytes as u64).to_le_bytes())
                    .with_path(&dpath)?;
            }
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            progress(&Progress {
                stage: "tokenize",
                current: meta.documents,
                total: 0,
                unit: "documents",
                message: format!(
                    "{} tokens, {:.0} tokens/s",
                    meta.tokens,
                    meta.tokens as f64 / secs
                ),
            });
            Ok(())
        };
        for src in sources {
            for_each_document(src, &mut |d| {
                if spec.split.keeps(&d.id) {
                    batch.push(d.text);
                    if batch.len() >= spec.batch_docs.max(1) {
                        flush(&mut batch, &mut meta)?;
                    }
                }
                Ok(())
            })?;
        }
        if !batch.is_empty() {
            flush(&mut batch, &mut meta)?;
        }
        tw.flush().with_path(&tpath)?;
        dw.flush().with_path(&dpath)?;
        util::write_json_atomic(&tmp.join("shard.json"), &meta)
    })?;
    Ok(meta)
}

/// A memory-mapped shard.
pub struct Shard {
    pub dir: PathBuf,
    pub meta: ShardMeta,
    tokens: memmap2::Mmap,
    docs: memmap2::Mmap,
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let f = File::open(path).with_path(path)?;
    if f.metadata().with_path(path)?.len() == 0 {
        // mmap of an empty file fails on some systems; an anonymous empty map works.
        return memmap2::MmapOptions::new()
            .len(0)
            .map_anon()
            .map(|m| m.make_read_only())
            .with_path(path)?
            .with_path(path);
    }
    // SAFETY: shards are written once (atomically renamed) and never modified.
    unsafe { memmap2::Mmap::map(&f) }.with_path(path)
}

fn as_u32(b: &[u8]) -> Option<&[u32]> {
    // SAFETY: u32 has no invalid bit patterns; alignment is checked by align_to.
    let (pre, mid, post) = unsafe { b.align_to::<u32>() };
    (pre.is_empty() && post.is_empty() && cfg!(target_endian = "little")).then_some(mid)
}

fn as_u64(b: &[u8]) -> Option<&[u64]> {
    // SAFETY: as above.
    let (pre, mid, post) = unsafe { b.align_to::<u64>() };
    (pre.is_empty() && post.is_empty() && cfg!(target_endian = "little")).then_some(mid)
}

impl Shard {
    pub fn open(dir: &Path) -> Result<Self> {
        let meta: ShardMeta = util::read_json(&dir.join("shard.json"))?;
        let bad = |msg: String| MlError::Shard {
            path: dir.into(),
            msg,
        };
        if meta.format != SHARD_FORMAT {
            return Err(bad(format!("unknown format '{}'", meta.format)));
        }
        let tokens = map_file(&dir.join("tokens.bin"))?;
        let docs = map_file(&dir.join("docs.bin"))?;
        let s = Self {
            dir: dir.into(),
            meta,
            tokens,
            docs,
        };
        let nt = as_u32(&s.tokens)
            .ok_or_else(|| bad("tokens.bin size is not a multiple of 4".into()))?
            .len() as u64;
        let nd = as_u64(&s.docs)
            .ok_or_else(|| bad("docs.bin size is not a multiple of 16".into()))?
            .len() as u64;
        if nt != s.meta.tokens || nd != 2 * s.meta.documents {
            return Err(bad(format!(
                "shard.json says {} tokens and {} documents, files hold {nt} tokens and {} documents",
                s.meta.tokens,
                s.meta.documents,
                nd / 2
            )));
        }
        Ok(s)
    }

    pub fn tokens(&self) -> &[u32] {
        as_u32(&self.tokens).unwrap_or(&[])
    }

    /// Per document: (token end, exclusive; UTF-8 bytes).
    pub fn doc_ends(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        as_u64(&self.docs)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| (c[0], c[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::no_progress;
    use crate::tokenizer::{TokenizerSource, TokenizerSpec, train_tokenizer};

    fn write(p: &Path, s: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    #[test]
    fn reads_all_formats() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(
            &d.join("a/train.jsonl"),
            b"{\"id\":\"x1\",\"text\":\"hello\"}\n\n{\"id\":2,\"text\":\"world\"}\n",
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"text\":\"zipped\"}\n").unwrap();
        write(&d.join("b/x.jsonl.gz"), &gz.finish().unwrap());
        write(
            &d.join("b/y.txt.zst"),
            &zstd::encode_all(&b"zstd text"[..], 1).unwrap(),
        );
        write(&d.join("b/z.txt"), b"plain");
        write(&d.join("b/.hidden"), b"skip");

        let docs = read_documents(&SourceSpec::new(d.join("a")), &SplitSpec::default()).unwrap();
        assert_eq!(
            docs,
            vec![
                Document {
                    id: "x1".into(),
                    text: "hello".into()
                },
                Document {
                    id: "2".into(),
                    text: "world".into()
                }
            ]
        );
        let docs = read_documents(&SourceSpec::new(d.join("b")), &SplitSpec::default()).unwrap();
        let texts: Vec<_> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, vec!["zipped", "zstd text", "plain"]);
        assert_eq!(docs[0].id, "x.jsonl.gz:1");
        assert_eq!(docs[2].id, "z.txt");

        write(&d.join("c/bad.jsonl"), b"{\"text\":\"ok\"}\n{\"text\":3}\n");
        let e = read_documents(&SourceSpec::new(d.join("c")), &SplitSpec::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.jsonl:2") && e.contains("not a string"),
            "{e}"
        );
        write(&d.join("e/bad.jsonl"), b"{\"text\":\n");
        let e = read_documents(&SourceSpec::new(d.join("e")), &SplitSpec::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.jsonl:1") && e.contains("invalid JSON"),
            "{e}"
        );
        let e = read_documents(&SourceSpec::new(d.join("missing")), &SplitSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn reads_parquet() {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        use std::sync::Arc;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.parquet");
        let schema = Arc::new(
            parse_message_type(
                "message s { required binary id (UTF8); required binary content (UTF8); }",
            )
            .unwrap(),
        );
        let mut w = SerializedFileWriter::new(
            File::create(&p).unwrap(),
            schema,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        let mut rg = w.next_row_group().unwrap();
        for col in [vec!["a", "b"], vec!["first doc", "second doc"]] {
            let mut c = rg.next_column().unwrap().unwrap();
            let vals: Vec<ByteArray> = col.iter().map(|s| ByteArray::from(*s)).collect();
            c.typed::<ByteArrayType>()
                .write_batch(&vals, None, None)
                .unwrap();
            c.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
        let mut src = SourceSpec::new(&p);
        src.text_field = "content".into();
        let docs = read_documents(&src, &SplitSpec::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].id, "b");
        assert_eq!(docs[1].text, "second doc");
        src.text_field = "nope".into();
        let e = read_documents(&src, &SplitSpec::default()).unwrap_err();
        assert!(e.to_string().contains("no column 'nope'"), "{e}");

        // A text column of numbers is no text: refused, not stringified.
        use parquet::data_type::Int64Type;
        let p = t.path().join("ints.parquet");
        let schema = Arc::new(parse_message_type("message s { required int64 text; }").unwrap());
        let mut w = SerializedFileWriter::new(
            File::create(&p).unwrap(),
            schema,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<Int64Type>()
            .write_batch(&[7, 8], None, None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
        let e = read_documents(&SourceSpec::new(&p), &SplitSpec::default()).unwrap_err();
        assert!(
            e.to_string().contains("ints.parquet:1")
                && e.to_string().contains("an integer, not a string"),
            "{e}"
        );
    }

    #[test]
    fn split_is_deterministic_and_proportional() {
        let n = 20000;
        let v = (0..n)
            .filter(|i| is_validation(&format!("doc{i}"), 0.1, 3))
            .count();
        assert!((1700..2300).contains(&v), "{v}");
        assert_eq!(is_validation("x", 0.5, 1), is_validation("x", 0.5, 1));
        let s = SplitSpec {
            part: SplitPart::Train,
            validation_fraction: 0.1,
            seed: 3,
        };
        let sv = SplitSpec {
            part: SplitPart::Validation,
            ..s
        };
        for i in 0..100 {
            let id = format!("doc{i}");
            assert_ne!(s.keeps(&id), sv.keeps(&id));
        }
    }

    #[test]
    fn shard_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("c.jsonl");
        let mut s = String::new();
        for i in 0..50 {
            s.push_str(&format!(
                "{{\"id\":\"{i}\",\"text\":\"doc number {i} says héllo\"}}\n"
            ));
        }
        write(&src, s.as_bytes());
        let (tok, _) = train_tokenizer(
            &[TokenizerSource::all("c", vec![SourceSpec::new(&src)])],
            &TokenizerSpec {
                vocab_size: 300,
                ..Default::default()
            },
            &t.path().join("tok/tokenizer.json"),
            &no_progress,
            &AtomicBool::new(false),
        )
        .unwrap();
        let spec = TokenizeSpec {
            batch_docs: 7,
            ..Default::default()
        };
        let out = t.path().join("shard");
        let meta = tokenize_to_shard(
            &[SourceSpec::new(&src)],
            &spec,
            &tok,
            &out,
            &no_progress,
            &AtomicBool::new(false),
        )
        .unwrap();
        let sh = Shard::open(&out).unwrap();
        assert_eq!(sh.meta, meta);
        assert_eq!(meta.documents, 50);
        assert_eq!(sh.tokens().len() as u64, meta.tokens);
        assert_eq!(sh.tokens()[0], tok.eos_id());
        let expected: u64 = (0..50)
            .map(|i| format!("doc number {i} says héllo").len() as u64)
            .sum();
        assert_eq!(meta.bytes, expected);
        // First document decodes back to its text.
        let (e0, b0) = sh.doc_ends().next().unwrap();
        let text = tok.decode(&sh.tokens()[1..e0 as usize]).unwrap();
        assert_eq!(text, "doc number 0 says héllo");
        assert_eq!(b0 as usize, text.len());
        // Corrupt shard: truncated tokens file.
        let tb = fs::read(out.join("tokens.bin")).unwrap();
        fs::write(out.join("tokens.bin"), &tb[..tb.len() - 4]).unwrap();
        assert!(Shard::open(&out).is_err());
        let cancel = AtomicBool::new(true);
        let r = tokenize_to_shard(
            &[SourceSpec::new(&src)],
            &spec,
            &tok,
            &t.path().join("s2"),
            &no_progress,
            &cancel,
        );
        assert!(matches!(r, Err(MlError::Cancelled)));
        assert!(!t.path().join("s2").exists());
    }

    #[test]
    fn component_mix() {
        let m = ComponentMix {
            candidate: "math".into(),
            general: "sotu".into(),
            beta: 0.5,
        };
        let w = m.weights().unwrap();
        assert_eq!(w["math"], 0.5);
        assert_eq!(w["sotu"], 0.5);
        let y: ComponentMix = serde_json::from_str(r#"{"candidate":"a","general":"g"}"#).unwrap();
        assert_eq!(y.beta, 0.5);
        assert!(
            serde_json::from_str::<ComponentMix>(r#"{"candidate":"a","general":"g","x":1}"#)
                .is_err()
        );
    }
}
