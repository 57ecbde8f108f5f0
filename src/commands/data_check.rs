//! `demix data check`: the manifest's datasets, resolved as steps resolve
//! them, read by demix-worker (which has the readers and the tokenizer).

use std::path::PathBuf;
use std::process::ExitCode;

use demix_core::graph::dataset_files;
use demix_core::manifest::template::Split;
use demix_core::protocol::DatasetInput;
use demix_spec::corpus::{CheckReport, CheckSpec, DatasetCheck, SplitSource};

use super::{CliError, load_graph, programs, store};
use crate::cli::DataCheckArgs;

pub(super) fn run(a: DataCheckArgs, cache: &Option<PathBuf>) -> miette::Result<ExitCode> {
    let g = load_graph(a.manifest.manifest)?;
    let m = &g.manifest;
    for name in &a.datasets {
        if !m.datasets.contains_key(name) {
            let known: Vec<&str> = m.datasets.keys().map(String::as_str).collect();
            return Err(CliError::Usage(format!(
                "`{name}` is not a dataset of {}: {}",
                m.path.display(),
                known.join(", ")
            ))
            .into());
        }
    }
    let mut datasets = Vec::new();
    for name in m.datasets.keys() {
        if !a.datasets.is_empty() && !a.datasets.contains(name) {
            continue;
        }
        let mut splits = Vec::new();
        for (split, label) in [(Split::Train, "train"), (Split::Validation, "validation")] {
            let files =
                dataset_files(m, name, split).map_err(|e| CliError::Failed(e.to_string()))?;
            let input = DatasetInput::of(m, name, split).expect("a dataset of the manifest");
            let (sources, keep) = input.sources(&files);
            splits.push(SplitSource {
                split: label.into(),
                files,
                sources,
                keep,
            });
        }
        datasets.push(DatasetCheck {
            name: name.clone(),
            splits,
        });
    }
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(|t| tokenizer_path(t, &g, cache))
        .transpose()?;
    let spec = CheckSpec {
        datasets,
        tokenizer,
        max_document_bytes: a.max_document_bytes,
    };
    let report = ask_worker(&spec)?;
    let problems: Vec<String> = report.datasets.iter().flat_map(|d| d.problems()).collect();
    if a.json.json {
        let mut v = serde_json::to_value(&report).expect("serializes");
        v["problems"] = serde_json::json!(problems);
        outln!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
    } else {
        print_table(&report, a.max_document_bytes)?;
        for p in &problems {
            outln!("problem: {p}");
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A tokenizer.json path, or a tokenizer step's output in the store.
fn tokenizer_path(
    t: &str,
    g: &demix_core::graph::Graph,
    cache: &Option<PathBuf>,
) -> Result<PathBuf, CliError> {
    let p = PathBuf::from(t);
    if p.is_file() {
        return Ok(p);
    }
    if !g.nodes().any(|n| n.id == t) {
        return Err(CliError::Usage(format!(
            "--tokenizer {t}: neither a file nor a step of {}",
            g.manifest.path.display()
        )));
    }
    let s = store(cache);
    let r = s.read_state(&g.manifest.name, t).ok_or_else(|| {
        CliError::Failed(format!(
            "--tokenizer {t}: the step has no result in {} yet; run `demix run --target {t}`",
            s.root.display()
        ))
    })?;
    let out = r.outputs.get("tokenizer").ok_or_else(|| {
        CliError::Usage(format!(
            "--tokenizer {t}: the step has no `tokenizer` output"
        ))
    })?;
    Ok(s.tree_dir(&r.tree).join(&out.path))
}

fn ask_worker(spec: &CheckSpec) -> Result<CheckReport, CliError> {
    let p = programs()?;
    if !p.worker.is_file() {
        return Err(CliError::Failed(
            demix_core::exec::programs::missing_worker("data check", &p.worker),
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| CliError::Failed(e.to_string()))?;
    let path = dir.path().join("check.json");
    std::fs::write(&path, serde_json::to_vec(spec).expect("serializes"))
        .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
    let out = std::process::Command::new(&p.worker)
        .args(["internal", "data-check"])
        .arg(&path)
        .output()
        .map_err(|e| CliError::Failed(format!("cannot run {}: {e}", p.worker.display())))?;
    if !out.status.success() {
        return Err(CliError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::Failed(format!("the worker's report: {e}")))
}

fn print_table(r: &CheckReport, max_bytes: u64) -> Result<(), CliError> {
    use demix_core::store::human_bytes;
    outln!(
        "{:<16} {:<10} {:>5} {:>9} {:>10} {:>10} {:>9} {:>5} {:>5} {:>5}  largest",
        "dataset",
        "split",
        "files",
        "documents",
        "bytes",
        "tokens",
        "bytes/tok",
        "empty",
        "big",
        "dups"
    );
    for d in &r.datasets {
        for s in &d.splits {
            let (tokens, per) = match s.tokens {
                Some(t) if t > 0 => (t.to_string(), format!("{:.2}", s.bytes as f64 / t as f64)),
                Some(t) => (t.to_string(), "-".into()),
                None => ("-".into(), "-".into()),
            };
            let largest = s
                .largest
                .as_ref()
                .map(|(id, b)| format!("{} ({id})", human_bytes(*b)))
                .unwrap_or_default();
            outln!(
                "{:<16} {:<10} {:>5} {:>9} {:>10} {:>10} {:>9} {:>5} {:>5} {:>5}  {largest}",
                d.name,
                s.split,
                s.files,
                s.documents,
                human_bytes(s.bytes),
                tokens,
                per,
                s.empty,
                s.oversized,
                s.duplicates
            );
        }
    }
    outln!(
        "big: documents over {}; dups: documents whose text is already in the split",
        human_bytes(max_bytes)
    );
    Ok(())
}
