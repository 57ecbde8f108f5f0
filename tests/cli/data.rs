//! The shipped corpora are what data/README.md says, and the shipped workflows
//! point at them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use demix_core::manifest::Manifest;
use demix_core::manifest::template::Split;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Rows of the Markdown table whose header starts with `first`.
fn table(readme: &str, first: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if line.starts_with(&format!("| {first} |")) {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with('|') {
                break;
            }
            if !cells[0].starts_with("---") {
                rows.push(cells);
            }
        }
    }
    rows
}

struct Docs {
    ids: Vec<String>,
    texts: HashSet<String>,
    bytes: u64,
}

fn read_jsonl(p: &Path) -> Docs {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut d = Docs {
        ids: Vec::new(),
        texts: HashSet::new(),
        bytes: 0,
    };
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", p.display(), i + 1));
        let t = v["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{}:{}: no text", p.display(), i + 1));
        assert!(
            !t.trim().is_empty(),
            "{}:{}: empty document",
            p.display(),
            i + 1
        );
        d.ids.push(
            v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{}:{}: no id", p.display(), i + 1))
                .to_string(),
        );
        d.bytes += t.len() as u64;
        d.texts.insert(t.to_string());
    }
    d
}

#[test]
fn shipped_domains_match_the_readme_and_split_by_document() {
    let readme = std::fs::read_to_string(root().join("data/README.md")).unwrap();
    let rows = table(&readme, "domain");
    assert!(rows.len() >= 6, "at least six domains: {rows:?}");
    for r in &rows {
        let dir = root().join("data").join(&r[0]);
        assert!(dir.join("README.md").is_file(), "{} has no README", r[0]);
        let train = read_jsonl(&dir.join("train.jsonl"));
        let val = read_jsonl(&dir.join("validation.jsonl"));
        assert_eq!(train.ids.len().to_string(), r[1], "{} train docs", r[0]);
        assert_eq!(train.bytes.to_string(), r[2], "{} train bytes", r[0]);
        assert_eq!(val.ids.len().to_string(), r[3], "{} validation docs", r[0]);
        assert_eq!(val.bytes.to_string(), r[4], "{} validation bytes", r[0]);
        let train_ids: HashSet<&String> = train.ids.iter().collect();
        assert_eq!(
            train_ids.len(),
            train.ids.len(),
            "{}: duplicate train ids",
            r[0]
        );
        assert!(
            val.ids.iter().all(|i| !train_ids.contains(i)),
            "{}: an id is in both splits",
            r[0]
        );
        assert!(
            val.texts.is_disjoint(&train.texts),
            "{}: a document is in both splits",
            r[0]
        );
    }
    for r in table(&readme, "task") {
        let p = root().join("data/tasks").join(format!("{}.jsonl", r[0]));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            match r[2].as_str() {
                "qa" => assert!(v["prompt"].is_string() && v["answer"].is_string(), "{line}"),
                "choice" => {
                    let k = v["choices"].as_array().unwrap().len() as u64;
                    assert!(v["label"].as_u64().unwrap() < k, "{line}");
                }
                other => panic!("unknown task kind {other}"),
            }
            n += 1;
        }
        assert_eq!(n.to_string(), r[1], "task {} items", r[0]);
    }
}

#[test]
fn workflows_point_at_every_shipped_domain() {
    let readme = std::fs::read_to_string(root().join("data/README.md")).unwrap();
    let domains: Vec<String> = table(&readme, "domain")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let m = Manifest::load(&root().join("workflows/commands.yaml")).expect("valid manifest");
    let mut seen = BTreeMap::new();
    for d in &domains {
        let canon = |v: Vec<PathBuf>| -> Vec<PathBuf> {
            v.iter()
                .map(|p| std::fs::canonicalize(p).unwrap())
                .collect()
        };
        let train = canon(
            demix_core::graph::dataset_files(&m, d, Split::Train)
                .unwrap_or_else(|e| panic!("{d}: {e}")),
        );
        let val = canon(
            demix_core::graph::dataset_files(&m, d, Split::Validation)
                .unwrap_or_else(|e| panic!("{d}: {e}")),
        );
        assert_eq!(
            train,
            [std::fs::canonicalize(root().join(format!("data/{d}/train.jsonl"))).unwrap()]
        );
        assert_eq!(
            val,
            [std::fs::canonicalize(root().join(format!("data/{d}/validation.jsonl"))).unwrap()]
        );
        seen.insert(d.clone(), true);
    }
    assert_eq!(seen.len(), domains.len());
}

/// `demix data check` reads a user's corpora as training reads them: counts,
/// tokens under a tokenizer step's output, empty, oversized and duplicate
/// documents, and train/validation overlap (a failure, exit 1).
#[test]
fn data_check_reports_a_users_corpora() {
    if !crate::harness::worker() {
        return;
    }
    let env = crate::harness::Env::new();
    let big = "word ".repeat(300);
    env.write(
        "d/a.jsonl",
        &format!(
            "{}\n{}\n{}\n{}\n",
            r#"{"id": "a1", "text": "the first document of a"}"#,
            r#"{"id": "a2", "text": "   "}"#,
            r#"{"id": "a3", "text": "the first document of a"}"#,
            serde_json::json!({"id": "a4", "text": big})
        ),
    );
    env.write(
        "d/a-val.jsonl",
        &format!(
            "{}\n{}\n",
            r#"{"id": "v1", "text": "the first document of a"}"#,
            r#"{"id": "v2", "text": "held out text"}"#
        ),
    );
    env.write(
        "d/b.txt",
        "plain text, split by document into train and validation\n",
    );
    env.write(
        "demix.yaml",
        r#"version: 1
name: dc
datasets:
  a: {files: d/a.jsonl, validation: d/a-val.jsonl}
  b: {files: d/b.txt, format: text, validation_fraction: 0.5}
steps:
  - {id: tok, kind: tokenizer, datasets: [a], vocab_size: 300, max_bytes: 100000}
"#,
    );
    let r = env.demix(&[
        "data",
        "check",
        "--dataset",
        "a",
        "--max-document-bytes",
        "1000",
        "--json",
    ]);
    assert_eq!(r.code(), 1, "the splits share a text: {}", r.stderr());
    let j = r.json();
    let a = &j["datasets"][0];
    assert_eq!(a["name"], "a");
    let train = &a["splits"][0];
    assert_eq!(
        (train["split"].as_str(), train["documents"].as_u64()),
        (Some("train"), Some(4))
    );
    assert_eq!(train["empty"], 1);
    assert_eq!(train["duplicates"], 1);
    assert_eq!(train["oversized"], 1);
    assert_eq!(train["largest"][0], "a4");
    assert_eq!(train["bytes"].as_u64(), Some(23 + 3 + 23 + 1500));
    assert!(train["tokens"].is_null(), "no tokenizer given");
    assert_eq!(a["overlap"], 1);
    assert_eq!(a["overlap_examples"][0], "v1");
    assert!(
        j["problems"][0].as_str().unwrap().contains("also in train"),
        "{j}"
    );
    // With the tokenizer step's output: tokens per split.
    env.demix(&["run"]).ok();
    let r = env.demix(&["data", "check", "--tokenizer", "tok"]);
    let out = r.stdout();
    assert_eq!(r.code(), 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("a ") && l.contains("train"))
        .unwrap();
    let tokens: u64 = line.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert!(tokens > 300, "{line}");
    assert!(
        out.contains("problem: `a`: 1 document(s) of validation are also in train (e.g. v1)"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("b ") && l.contains("validation")),
        "{out}"
    );
    // A name that is not a dataset is a usage error.
    let r = env
        .demix(&["data", "check", "--dataset", "nosuch"])
        .fails(2);
    assert!(
        r.stderr().contains("`nosuch` is not a dataset"),
        "{}",
        r.stderr()
    );
}
