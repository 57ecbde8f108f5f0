//! Planning: content hashes of inputs, cache keys, and whether each step is fresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::graph::{self, Graph, NodeId, Source};
use crate::key::{InputRecord, KeyRecord, Origin, Reason, UpstreamOutput, diff};
use crate::store::{self, Health, ResultRecord, Store, StoreError};

/// Why a step's key cannot be computed: an input that cannot be read or hashed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot hash {}: {source}", path.display())]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `location` is the input's place in the manifest.
    #[error("{location}: input `{input}` {}", graph::NO_FILES)]
    InputMissing { location: String, input: String },
    #[error("{location}: input `{input}`: {source}")]
    Input {
        location: String,
        input: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A dataset's files, as [`graph::dataset_files`] resolves them.
    #[error(transparent)]
    Dataset(#[from] graph::DatasetError),
    #[error("step `{step}` has no output `{output}` in its result")]
    NoOutput { step: String, output: String },
}

impl PlanError {
    /// Whether the error is data that is not there (yet): a path or a dataset
    /// glob that matches no files, rather than a broken plan.
    pub fn is_missing_data(&self) -> bool {
        match self {
            PlanError::InputMissing { .. } => true,
            PlanError::Dataset(e) => matches!(e, graph::DatasetError::NoFiles { .. }),
            _ => false,
        }
    }
}

/// A step's key record, or the upstream step that must run first.
#[derive(Clone, Debug)]
pub enum Keyed {
    Record(KeyRecord),
    /// The id of an upstream step that has no result yet.
    Pending(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fresh,
    Stale,
    New,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Fresh => "fresh",
            State::Stale => "stale",
            State::New => "new",
        })
    }
}

/// The verdict on one step.
#[derive(Clone, Debug)]
pub struct Assessment {
    pub state: State,
    pub reasons: Vec<Reason>,
    pub record: Option<KeyRecord>,
    pub key: Option<String>,
    /// The cached result, when fresh.
    pub result: Option<ResultRecord>,
}

pub struct Planner<'a> {
    pub graph: &'a Graph,
    pub store: &'a Store,
    sources: Mutex<HashMap<String, InputRecord>>,
    on_hash: &'a (dyn Fn(&Path, u64, u64) + Sync),
}

impl<'a> Planner<'a> {
    pub fn new(
        graph: &'a Graph,
        store: &'a Store,
        on_hash: &'a (dyn Fn(&Path, u64, u64) + Sync),
    ) -> Self {
        Planner {
            graph,
            store,
            sources: Mutex::new(HashMap::new()),
            on_hash,
        }
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.graph.manifest.dir)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn hash_files(&self, files: &[PathBuf]) -> Result<Vec<(String, String)>, PlanError> {
        files
            .iter()
            .map(|f| {
                let h = self
                    .store
                    .stat
                    .hash(f, &|done, total| (self.on_hash)(f, done, total))
                    .map_err(|source| PlanError::Hash {
                        path: f.clone(),
                        source,
                    })?;
                Ok((self.rel(f), h))
            })
            .collect()
    }

    /// The content record of a dataset or workspace path, hashed once per plan.
    fn source_record(&self, input: &graph::Input) -> Result<InputRecord, PlanError> {
        let cache_key = match &input.source {
            Source::Path { written, .. } => format!("path:{written}"),
            Source::Dataset { name, split } => format!("dataset:{name}:{split:?}"),
            Source::Steps { .. } => unreachable!("step outputs are not sources"),
        };
        if let Some(r) = self.sources.lock().expect("plan lock").get(&cache_key) {
            return Ok(r.clone());
        }
        let rec = match &input.source {
            Source::Path { abs, written } => {
                let md = std::fs::metadata(abs).map_err(|source| {
                    let location = self.graph.manifest.src.location(&input.span);
                    let input = written.clone();
                    if source.kind() == std::io::ErrorKind::NotFound {
                        PlanError::InputMissing { location, input }
                    } else {
                        PlanError::Input {
                            location,
                            input,
                            source,
                        }
                    }
                })?;
                let files = if md.is_dir() {
                    let mut rels = Vec::new();
                    store::walk_files(abs, abs, &mut rels)?;
                    let paths: Vec<PathBuf> = rels.iter().map(|r| abs.join(r)).collect();
                    self.hash_files(&paths)?
                } else {
                    self.hash_files(std::slice::from_ref(abs))?
                };
                let hash = if md.is_dir() {
                    crate::hash::tree_hash(files.iter().map(|(p, h)| {
                        (
                            p.strip_prefix(&format!("{written}/")).unwrap_or(p),
                            h.as_str(),
                        )
                    }))
                } else {
                    files[0].1.clone()
                };
                InputRecord {
                    hash,
                    origin: Origin::Path {
                        path: written.clone(),
                        files,
                    },
                }
            }
            Source::Dataset { name, split } => {
                let paths = graph::dataset_files(&self.graph.manifest, name, *split)
                    .map_err(PlanError::Dataset)?;
                let files = self.hash_files(&paths)?;
                // How the files are read is part of the dataset's identity.
                let how = serde_json::to_string(&crate::protocol::DatasetInput::of(
                    &self.graph.manifest,
                    name,
                    *split,
                ))
                .expect("serializes");
                let how_hash = crate::hash::hex(&blake3::hash(how.as_bytes()));
                InputRecord {
                    hash: crate::hash::tree_hash(
                        files
                            .iter()
                            .map(|(p, h)| (p.as_str(), h.as_str()))
                            .chain([("#read", how_hash.as_str())]),
                    ),
                    origin: Origin::Dataset {
                        name: name.clone(),
                        split: *split,
                        files,
                    },
                }
            }
            Source::Steps { .. } => unreachable!(),
        };
        self.sources
            .lock()
            .expect("plan lock")
            .insert(cache_key, rec.clone());
        Ok(rec)
    }

    /// The key record of node `n`, given the results of the nodes it depends on,
    /// or [`Keyed::Pending`] naming an upstream step that has no result yet.
    pub fn key_record(
        &self,
        n: NodeId,
        results: &HashMap<NodeId, ResultRecord>,
    ) -> Result<Keyed, PlanError> {
        let node = &self.graph[n];
        let mut inputs = std::collections::BTreeMap::new();
        for inp in &node.inputs {
            let rec = match &inp.source {
                Source::Steps { nodes, output } => {
                    let mut outs = Vec::new();
                    for &u in nodes {
                        let Some(r) = results.get(&u) else {
                            return Ok(Keyed::Pending(self.graph[u].id.clone()));
                        };
                        let o = r.outputs.get(output).ok_or_else(|| PlanError::NoOutput {
                            step: r.step.clone(),
                            output: output.clone(),
                        })?;
                        outs.push(UpstreamOutput {
                            step: r.step.clone(),
                            output: output.clone(),
                            key: r.key.clone(),
                            hash: o.hash.clone(),
                        });
                    }
                    let hash = if outs.len() == 1 {
                        outs[0].hash.clone()
                    } else {
                        crate::hash::tree_hash(
                            outs.iter().map(|o| (o.step.as_str(), o.hash.as_str())),
                        )
                    };
                    InputRecord {
                        hash,
                        origin: Origin::Steps { outputs: outs },
                    }
                }
                _ => self.source_record(inp)?,
            };
            inputs.insert(inp.key.clone(), rec);
        }
        Ok(Keyed::Record(KeyRecord {
            kind: node.kind.name().to_string(),
            kind_version: node.kind.version(),
            params: node.plan.params.clone(),
            params_used: node.params_used.clone(),
            inputs,
        }))
    }

    /// Whether node `n` with key record `rec` can be taken from the store.
    pub fn assess(&self, n: NodeId, rec: KeyRecord, force: bool) -> Assessment {
        let node = &self.graph[n];
        let key = rec.key();
        let result = self.store.read_result(&key);
        let health = result.as_ref().map(|r| self.store.health(r));
        if !force && health == Some(Health::Ok) {
            return Assessment {
                state: State::Fresh,
                reasons: vec![],
                record: Some(rec),
                key: Some(key),
                result,
            };
        }
        let prev = self.store.read_state(&self.graph.manifest.name, &node.id);
        let mut reasons = Vec::new();
        let state = match &prev {
            None => {
                reasons.push(Reason::New);
                State::New
            }
            Some(p) => {
                if p.key != key {
                    reasons.extend(diff(&p.record, &rec));
                }
                match health {
                    Some(Health::Missing(path)) => reasons.push(Reason::OutputMissing { path }),
                    Some(Health::Corrupt(path)) => reasons.push(Reason::OutputCorrupt { path }),
                    None => match self.store.result_damage(&key) {
                        Some(error) => reasons.push(Reason::ResultCorrupt {
                            path: self.store.result_path(&key).display().to_string(),
                            error,
                        }),
                        None if p.key == key => reasons.push(Reason::ResultMissing),
                        None => {}
                    },
                    _ => {}
                }
                State::Stale
            }
        };
        if force {
            reasons.push(Reason::Forced);
        }
        Assessment {
            state,
            reasons,
            record: Some(rec),
            key: Some(key),
            result: None,
        }
    }

    /// The state of a node whose upstream `step` must run first.
    pub fn pending(&self, n: NodeId, step: String) -> Assessment {
        let node = &self.graph[n];
        let prev = self.store.read_state(&self.graph.manifest.name, &node.id);
        let (state, reasons) = match prev {
            None => (State::New, vec![Reason::New]),
            Some(_) => (State::Stale, vec![Reason::UpstreamPending { step }]),
        };
        Assessment {
            state,
            reasons,
            record: None,
            key: None,
            result: None,
        }
    }

    /// Assesses every node in order, as `status` and `run --dry-run` show them.
    pub fn assess_all(
        &self,
        force: &[NodeId],
        only: Option<&std::collections::BTreeSet<NodeId>>,
    ) -> Vec<(NodeId, Result<Assessment, PlanError>)> {
        let mut results: HashMap<NodeId, ResultRecord> = HashMap::new();
        let mut out = Vec::new();
        for &n in self.graph.order() {
            if only.is_some_and(|o| !o.contains(&n)) {
                continue;
            }
            let a = match self.key_record(n, &results) {
                Err(e) => Err(e),
                Ok(Keyed::Pending(up)) => Ok(self.pending(n, up)),
                Ok(Keyed::Record(rec)) => Ok(self.assess(n, rec, force.contains(&n))),
            };
            if let Ok(Assessment {
                result: Some(r), ..
            }) = &a
            {
                results.insert(n, r.clone());
            }
            out.push((n, a));
        }
        out
    }
}
