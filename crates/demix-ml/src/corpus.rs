//! `demix data check`: reads a manifest's corpora as training reads them and
//! counts what a user should know before training on them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

pub use demix_spec::corpus::{CheckReport, CheckSpec, DatasetReport, SplitReport};

use crate::data::for_each_document;
use crate::error::{MlError, Result};
use crate::tokenizer::Tok;

/// Texts tokenized at once (the tokenizer encodes a batch in parallel).
const ENCODE_BATCH: usize = 256;

/// Checks every dataset of `spec`.
pub fn check(spec: &CheckSpec, cancel: &AtomicBool) -> Result<CheckReport> {
    let tok = spec.tokenizer.as_deref().map(Tok::load).transpose()?;
    let mut report = CheckReport::default();
    for d in &spec.datasets {
        // Text hash -> the id of the first train document with that text.
        let mut train_texts: HashMap<[u8; 32], String> = HashMap::new();
        let mut out = DatasetReport {
            name: d.name.clone(),
            ..DatasetReport::default()
        };
        for s in &d.splits {
            let mut r = SplitReport {
                split: s.split.clone(),
                files: s.files.len(),
                tokens: tok.as_ref().map(|_| 0),
                ..SplitReport::default()
            };
            let mut seen: HashMap<[u8; 32], ()> = HashMap::new();
            let mut pending: Vec<String> = Vec::new();
            let flush = |pending: &mut Vec<String>, r: &mut SplitReport| -> Result<()> {
                if let (Some(t), false) = (&tok, pending.is_empty()) {
                    let n: usize = t
                        .encode_batch(std::mem::take(pending))?
                        .iter()
                        .map(|(ids, _)| ids.len())
                        .sum();
                    *r.tokens.get_or_insert(0) += n as u64;
                }
                pending.clear();
                Ok(())
            };
            for src in &s.sources {
                for_each_document(src, &mut |doc| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(MlError::Cancelled);
                    }
                    if !s.keep.keeps(&doc.id) {
                        return Ok(());
                    }
                    let bytes = doc.text.len() as u64;
                    r.documents += 1;
                    r.bytes += bytes;
                    r.empty += u64::from(doc.text.trim().is_empty());
                    r.oversized += u64::from(bytes > spec.max_document_bytes);
                    if r.largest.as_ref().is_none_or(|(_, b)| bytes > *b) {
                        r.largest = Some((doc.id.clone(), bytes));
                    }
                    let h = *blake3::hash(doc.text.as_bytes()).as_bytes();
                    if seen.insert(h, ()).is_some() {
                        r.duplicates += 1;
                    }
                    if s.split == "train" {
                        train_texts.entry(h).or_insert_with(|| doc.id.clone());
                    } else if !doc.text.trim().is_empty() && train_texts.contains_key(&h) {
                        out.overlap += 1;
                        if out.overlap_examples.len() < 3 {
                            out.overlap_examples.push(doc.id.clone());
                        }
                    }
                    if tok.is_some() {
                        pending.push(doc.text);
                        if pending.len() >= ENCODE_BATCH {
                            flush(&mut pending, &mut r)?;
                        }
                    }
                    Ok(())
                })?;
            }
            flush(&mut pending, &mut r)?;
            out.splits.push(r);
        }
        report.datasets.push(out);
    }
    Ok(report)
}
