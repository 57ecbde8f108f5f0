//! Reading the report's inputs: training metrics (JSON Lines), evaluation
//! metrics, search results and mixtures, each checked for shape so a bad file
//! fails with its name; and the lineage of the step's inputs from the store.
//!
//! Evaluation and training files are read as plain JSON, not through the `ml`
//! module's types, so the report builds and runs without libtorch.

use std::path::{Path, PathBuf};

use serde_json::Value;

use demix_core::key::{KeyRecord, Origin};
use demix_core::store::Store;
use demix_mix::search::SearchResult;

/// One line of a train step's `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainPoint {
    pub step: Option<u64>,
    pub tokens: f64,
    pub loss: f64,
    pub tokens_per_s: Option<f64>,
    pub elapsed: Option<f64>,
}

/// A training run's metrics, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Training {
    pub points: Vec<TrainPoint>,
    /// Wall time of the step that trained it, from its result record (the
    /// metrics file holds only what the trajectory decides).
    pub duration_s: Option<f64>,
    /// A continued training: the step whose checkpoint it started from and the
    /// tokens that checkpoint had seen (its own run's plus what it continued),
    /// from the lineage; the metrics count from 0.
    pub start: Option<(String, f64)>,
}

impl Training {
    /// Tokens per second: from the metrics when they say, else the last
    /// point's tokens over the step's wall time.
    pub fn tokens_per_s(&self) -> Option<f64> {
        let last = self.last()?;
        last.tokens_per_s.or_else(|| {
            self.duration_s
                .filter(|d| *d > 0.0)
                .map(|d| last.tokens / d)
        })
    }

    /// Training time: from the metrics when they say, else the step's wall time.
    pub fn elapsed(&self) -> Option<f64> {
        self.last().and_then(|p| p.elapsed).or(self.duration_s)
    }

    pub fn last(&self) -> Option<&TrainPoint> {
        self.points.last()
    }
    /// Tokens seen before this run: 0 unless it continued another.
    pub fn start_tokens(&self) -> f64 {
        self.start.as_ref().map_or(0.0, |s| s.1)
    }
    pub fn min_loss(&self) -> Option<f64> {
        self.points.iter().map(|p| p.loss).reduce(f64::min)
    }
}

/// Named metrics of one dataset or task of an evaluation, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub name: String,
    /// `multiple_choice` or `qa` for a task.
    pub kind: Option<String>,
    pub values: Vec<(String, f64)>,
}

impl Metrics {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.values.iter().find(|(n, _)| n == k).map(|(_, v)| *v)
    }
}

/// An evaluate step's `metrics.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub datasets: Vec<Metrics>,
    pub tasks: Vec<Metrics>,
    pub mean_loss: Option<f64>,
}

/// A mixture file: dataset name -> weight, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mixture {
    pub weights: Vec<(String, f64)>,
}

/// Why one of the report's input files cannot be read: the file, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub problem: Problem,
}

/// What is wrong with a report input file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not UTF-8 text")]
    NotUtf8,
    /// Line `line` (from 1) of a training metrics file.
    #[error(
        "line {line}: {why} (expected a train step's metrics.jsonl: one object per line with numeric `tokens` and `loss`)"
    )]
    TrainingLine {
        line: usize,
        #[source]
        why: LineProblem,
    },
    #[error("`{what}` is not an object of name -> metrics")]
    NotMetricsMap { what: String },
    #[error("`{what}.{name}` is not an object of metrics")]
    NotMetrics { what: String, name: String },
    #[error(
        "not an evaluation (expected an evaluate step's metrics.json with `datasets` and `tasks`)"
    )]
    NotEvaluation,
    /// The file's `format` (as JSON) is not the one this demix reads.
    #[error(
        "metrics format {0}, but this demix reads `{format}` (docs/metrics.md)",
        format = demix_spec::evaluate::METRICS_FORMAT
    )]
    MetricsFormat(String),
    #[error("not a mixture (expected a JSON object of dataset name -> weight >= 0)")]
    NotMixture,
    #[error("not a tokenizer sample (expected a tokenizer step's tokenizer-sample.json): {0}")]
    NotTokenizerSample(#[source] serde_json::Error),
    #[error("not a search result (expected a search step's search.json): {0}")]
    NotSearch(#[source] serde_json::Error),
    #[error("inconsistent search result: {0}")]
    InconsistentSearch(String),
    #[error("not a validation (expected a validate step's validation.json): {0}")]
    NotValidation(#[source] serde_json::Error),
}

/// What is wrong with one line of a training metrics file.
#[derive(Debug, thiserror::Error)]
pub enum LineProblem {
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no numeric `tokens` and `loss`")]
    NoTokensAndLoss,
}

impl Problem {
    fn at(self, path: &Path) -> ReadError {
        ReadError {
            path: path.to_path_buf(),
            problem: self,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|e| Problem::Io(e).at(path))
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value, ReadError> {
    serde_json::from_slice(bytes).map_err(|e| Problem::Json(e).at(path))
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// Reads a train step's `metrics.jsonl`: one JSON object per line with numeric
/// `tokens` and `loss` (other fields optional).
pub fn read_training(path: &Path) -> Result<Training, ReadError> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes).map_err(|_| Problem::NotUtf8.at(path))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: LineProblem| Problem::TrainingLine { line: i + 1, why }.at(path);
        let v: Value = serde_json::from_str(line).map_err(|e| bad(LineProblem::Json(e)))?;
        let o = v.as_object().ok_or_else(|| bad(LineProblem::NotAnObject))?;
        let field = |k: &str| o.get(k).and_then(number);
        let (Some(tokens), Some(loss)) = (field("tokens"), field("loss")) else {
            return Err(bad(LineProblem::NoTokensAndLoss));
        };
        points.push(TrainPoint {
            step: o.get("step").and_then(Value::as_u64),
            tokens,
            loss,
            tokens_per_s: field("tokens_per_s"),
            elapsed: field("elapsed"),
        });
    }
    Ok(Training {
        points,
        duration_s: None,
        start: None,
    })
}

fn metrics_map(path: &Path, v: Option<&Value>, what: &str) -> Result<Vec<Metrics>, ReadError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let o = v.as_object().ok_or_else(|| {
        Problem::NotMetricsMap {
            what: what.to_string(),
        }
        .at(path)
    })?;
    let mut out = Vec::new();
    for (name, m) in o {
        let m = m.as_object().ok_or_else(|| {
            Problem::NotMetrics {
                what: what.to_string(),
                name: name.clone(),
            }
            .at(path)
        })?;
        out.push(Metrics {
            name: name.clone(),
            kind: m.get("kind").and_then(Value::as_str).map(str::to_string),
            values: m
                .iter()
                .filter_map(|(k, v)| number(v).map(|x| (k.clone(), x)))
                .collect(),
        });
    }
    Ok(out)
}

/// Reads an evaluate step's `metrics.json`: `datasets` (name -> loss,
/// perplexity, bits_per_byte, ...), `tasks` (name -> kind, accuracy, ...) and
/// `mean_loss`.
pub fn read_evaluation(path: &Path) -> Result<Evaluation, ReadError> {
    let v = parse_json(path, &read(path)?)?;
    let o = v.as_object().filter(|o| {
        o.contains_key("datasets") || o.contains_key("tasks") || o.contains_key("mean_loss")
    });
    let Some(o) = o else {
        return Err(Problem::NotEvaluation.at(path));
    };
    // Files without `format` predate it, and read as its first version.
    if let Some(f) = o.get("format")
        && f.as_str() != Some(demix_spec::evaluate::METRICS_FORMAT)
    {
        return Err(Problem::MetricsFormat(f.to_string()).at(path));
    }
    Ok(Evaluation {
        datasets: metrics_map(path, o.get("datasets"), "datasets")?,
        tasks: metrics_map(path, o.get("tasks"), "tasks")?,
        mean_loss: o.get("mean_loss").and_then(number),
    })
}

/// Reads a mixture: a JSON object of dataset name -> weight (>= 0).
pub fn read_mixture(path: &Path) -> Result<Mixture, ReadError> {
    let v = parse_json(path, &read(path)?)?;
    let bad = || Problem::NotMixture.at(path);
    let o = v.as_object().filter(|o| !o.is_empty()).ok_or_else(bad)?;
    let mut weights = Vec::new();
    for (k, w) in o {
        let w = number(w).filter(|w| *w >= 0.0).ok_or_else(bad)?;
        weights.push((k.clone(), w));
    }
    Ok(Mixture { weights })
}

/// Reads a tokenizer step's `tokenizer-sample.json`.
pub fn read_tokenizer_sample(
    path: &Path,
) -> Result<demix_spec::tokenizer::TokenizerSample, ReadError> {
    serde_json::from_slice(&read(path)?).map_err(|e| Problem::NotTokenizerSample(e).at(path))
}

/// Reads a search step's `search.json` and checks its parts agree.
pub fn read_search(path: &Path) -> Result<SearchResult, ReadError> {
    let bytes = read(path)?;
    let r: SearchResult =
        serde_json::from_slice(&bytes).map_err(|e| Problem::NotSearch(e).at(path))?;
    let (k, t) = (r.chosen.len(), r.targets.len());
    let bad = |why: String| Problem::InconsistentSearch(why).at(path);
    if k == 0 || t == 0 {
        return Err(bad("no candidates or no targets".into()));
    }
    for (i, p) in r.proxies.iter().enumerate() {
        if p.weights.len() != k || p.scores.len() != t {
            return Err(bad(format!(
                "proxy {i} has {} weights and {} scores for {k} candidates and {t} targets",
                p.weights.len(),
                p.scores.len()
            )));
        }
        if p.predicted.as_ref().is_some_and(|q| q.len() != t) {
            return Err(bad(format!("proxy {i}'s predictions are not {t} scores")));
        }
    }
    if r.chosen_predicted.len() != t && !r.chosen_predicted.is_empty() {
        return Err(bad(format!(
            "`chosen_predicted` has {} scores for {t} targets",
            r.chosen_predicted.len()
        )));
    }
    Ok(r)
}

/// Where one input of the report came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Producer {
    /// A step result in the store.
    Step {
        step: String,
        output: String,
        workflow: String,
        kind: String,
        key: String,
        host: String,
        started: String,
        duration_s: f64,
    },
    /// A step result no longer in the store.
    Missing {
        step: String,
        output: String,
        key: String,
    },
    /// A workspace file or folder.
    File { path: String, hash: String },
    /// A dataset's files.
    Dataset { name: String, files: usize },
}

/// One input of the report step and its producers.
#[derive(Clone, Debug, PartialEq)]
pub struct InputLine {
    /// Which field of the report it feeds, e.g. `training.base`.
    pub field: String,
    /// The reference or path as written.
    pub reference: String,
    pub producers: Vec<Producer>,
}

/// A step anywhere upstream of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Ancestor {
    pub step: String,
    pub kind: String,
    pub key: String,
    pub host: String,
    pub started: String,
    pub duration_s: f64,
}

/// The report's provenance: its direct inputs, and every step upstream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LineageSummary {
    pub inputs: Vec<InputLine>,
    /// Every upstream result found, oldest first, each once.
    pub ancestors: Vec<Ancestor>,
    /// The summary (`demix lineage STEP`) of each step that made an input,
    /// each once, in input order.
    pub producers: Vec<demix_core::lineage::Summary>,
}

fn when(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The provenance of the inputs in `record`; `fields` maps an input key to the
/// report field it feeds.
pub fn lineage_summary(
    store: &Store,
    record: &KeyRecord,
    fields: &[(String, String)],
) -> LineageSummary {
    let mut inputs = Vec::new();
    for (key, field) in fields {
        let Some(inp) = record.inputs.get(key) else {
            continue;
        };
        let producers = match &inp.origin {
            Origin::Steps { outputs } => outputs
                .iter()
                .map(|u| match store.read_result(&u.key) {
                    Some(r) => Producer::Step {
                        step: r.step.clone(),
                        output: u.output.clone(),
                        workflow: r.manifest.clone(),
                        kind: r.kind.clone(),
                        key: r.key.clone(),
                        host: r.host.clone(),
                        started: when(&r.started),
                        duration_s: r.duration_s,
                    },
                    None => Producer::Missing {
                        step: u.step.clone(),
                        output: u.output.clone(),
                        key: u.key.clone(),
                    },
                })
                .collect(),
            Origin::Path { path, .. } => vec![Producer::File {
                path: path.clone(),
                hash: inp.hash.clone(),
            }],
            Origin::Dataset { name, files, .. } => vec![Producer::Dataset {
                name: name.clone(),
                files: files.len(),
            }],
        };
        inputs.push(InputLine {
            field: field.clone(),
            reference: key.clone(),
            producers,
        });
    }
    // Every result upstream, breadth first over the records' step inputs.
    let mut seen = std::collections::BTreeSet::new();
    let mut queue: std::collections::VecDeque<String> = record
        .inputs
        .values()
        .flat_map(|i| match &i.origin {
            Origin::Steps { outputs } => outputs.iter().map(|u| u.key.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut found = Vec::new();
    while let Some(k) = queue.pop_front() {
        if !seen.insert(k.clone()) {
            continue;
        }
        let Some(r) = store.read_result(&k) else {
            continue;
        };
        for i in r.record.inputs.values() {
            if let Origin::Steps { outputs } = &i.origin {
                queue.extend(outputs.iter().map(|u| u.key.clone()));
            }
        }
        found.push(r);
    }
    found.sort_by(|a, b| a.started.cmp(&b.started).then(a.step.cmp(&b.step)));
    let mut shown = std::collections::BTreeSet::new();
    let producers = inputs
        .iter()
        .flat_map(|i| &i.producers)
        .filter_map(|p| match p {
            Producer::Step { key, .. } if shown.insert(key.clone()) => store.read_result(key),
            _ => None,
        })
        .map(|r| demix_core::lineage::summary(store, &r, None))
        .collect();
    LineageSummary {
        producers,
        inputs,
        ancestors: found
            .into_iter()
            .map(|r| Ancestor {
                step: r.step,
                kind: r.kind,
                key: r.key,
                host: r.host,
                started: when(&r.started),
                duration_s: r.duration_s,
            })
            .collect(),
    }
}

/// Reads a validate step's `validation.json`.
pub fn read_validation(path: &Path) -> Result<demix_mix::validate::Validation, ReadError> {
    serde_json::from_slice(&read(path)?).map_err(|e| Problem::NotValidation(e).at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_training_metrics() {
        let d = tempfile::tempdir().unwrap();
        let p = file(
            &d,
            "metrics.jsonl",
            "{\"step\":1,\"tokens\":512,\"loss\":6.9,\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":900.0,\"elapsed\":0.5}\n\n{\"step\":2,\"tokens\":1024,\"loss\":6.1}\n",
        );
        let t = read_training(&p).unwrap();
        assert_eq!(t.points.len(), 2);
        assert_eq!(t.last().unwrap().loss, 6.1);
        assert_eq!(t.min_loss(), Some(6.1));
        assert_eq!(t.points[0].tokens_per_s, Some(900.0));
        let bad = file(
            &d,
            "bad.jsonl",
            "{\"tokens\":1,\"loss\":2}\n{\"tokens\":\"x\"}\n",
        );
        let e = read_training(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl: line 2"), "{e}");
        let e = read_training(&file(&d, "nojson.jsonl", "{oops\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nojson.jsonl: line 1: not valid JSON"), "{e}");
    }

    #[test]
    fn reads_evaluations_generically() {
        let d = tempfile::tempdir().unwrap();
        let p = file(
            &d,
            "metrics.json",
            r#"{"checkpoint":"/x","datasets":{"sotu":{"tokens":10,"documents":2,"bytes":40,"loss":3.5,"perplexity":33.1,"bits_per_byte":1.2}},
               "tasks":{"math_qa":{"kind":"qa","examples":5,"answer_logprob":-1.5,"exact_match":0.2}},"mean_loss":3.5}"#,
        );
        let e = read_evaluation(&p).unwrap();
        assert_eq!(e.datasets[0].name, "sotu");
        assert_eq!(e.datasets[0].get("bits_per_byte"), Some(1.2));
        assert_eq!(e.tasks[0].kind.as_deref(), Some("qa"));
        assert_eq!(e.tasks[0].get("exact_match"), Some(0.2));
        assert_eq!(e.mean_loss, Some(3.5));
        let v1 = r#"{"format": "demix-metrics-v1", "datasets": {"a": {"loss": 2.0}}, "tasks": {}}"#;
        assert_eq!(
            read_evaluation(&file(&d, "v1.json", v1))
                .unwrap()
                .datasets
                .len(),
            1
        );
        for (name, text) in [
            ("list.json", "[1, 2]"),
            ("other.json", r#"{"chosen": [0.5, 0.5]}"#),
            ("shape.json", r#"{"datasets": [1]}"#),
            ("broken.json", "{\"datasets\": "),
            (
                "future.json",
                r#"{"format": "demix-metrics-v2", "datasets": {}}"#,
            ),
        ] {
            let err = read_evaluation(&file(&d, name, text))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn reads_mixtures() {
        let d = tempfile::tempdir().unwrap();
        let m = read_mixture(&file(&d, "m.json", r#"{"sotu": 0.6, "math": 0.4}"#)).unwrap();
        assert_eq!(m.weights, vec![("sotu".into(), 0.6), ("math".into(), 0.4)]);
        for text in [r#"{"a": -1}"#, r#"{"a": "x"}"#, "{}", "[0.5]"] {
            let e = read_mixture(&file(&d, "bad.json", text))
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad.json: not a mixture"), "{e}");
        }
    }

    #[test]
    fn search_results_must_be_consistent() {
        let d = tempfile::tempdir().unwrap();
        let e = read_search(&file(&d, "s.json", r#"{"chosen": [1.0]}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.json: not a search result"), "{e}");
    }
}
