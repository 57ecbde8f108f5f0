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
