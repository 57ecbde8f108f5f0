//! Expands a manifest's fan-outs, resolves references and builds the step DAG.
//!
//! The DAG is a petgraph [`DiGraph`]: its nodes are the expanded steps, in
//! manifest order (a fan-out's items in theirs), and each edge goes from an
//! upstream node to a node that uses it, weighted with the reference (or the
//! `after:` entry) that makes it. Nodes are named by [`NodeId`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{Node, Span};
use petgraph::Direction::{Incoming, Outgoing};
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Control, Dfs, DfsEvent, Reversed, Walker, depth_first_search};
use serde_json::Value;

use crate::kind::{self, Plan, Registry, StepKind};
use crate::manifest::template::{self, Piece, Ref, Select, Split};
use crate::manifest::{
    Diags, Manifest, ManifestDiag, ManifestError, Resources, StepDecl, did_you_mean, json_to_node,
    lookup_param,
};

/// A node of the step graph. Nodes are numbered in manifest order, so ids
/// compare as the steps' places in the manifest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(NodeIndex);

impl NodeId {
    /// The node's place in manifest order (0 for the first).
    pub fn index(self) -> usize {
        self.0.index()
    }

    /// The node at this place in manifest order.
    pub(crate) fn new(index: usize) -> NodeId {
        NodeId(NodeIndex::new(index))
    }
}

/// The bare number, as a node index was written before it had a type: plans
/// hash the `Debug` form of their inputs' sources.
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.index())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.index())
    }
}

/// Where an input's content comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A workspace file or folder: absolute path, and the path as written.
    Path {
        abs: PathBuf,
        written: String,
    },
    Dataset {
        name: String,
        split: Split,
    },
    /// Outputs of one or more (with `[*]`) upstream nodes.
    Steps {
        nodes: Vec<NodeId>,
        output: String,
    },
}

#[derive(Clone, Debug)]
pub struct Input {
    /// The reference as written and normalised, or the path: the key in the spec.
    pub key: String,
    pub source: Source,
    pub span: Span,
}

/// One node of the DAG: a step, or one item of a fan-out step.
pub struct StepNode {
    pub id: String,
    pub base: String,
    pub item: Option<String>,
    pub kind: &'static dyn StepKind,
    /// Which binary runs it: the engine, or demix-worker (libtorch).
    pub runner: kind::Runner,
    /// Data-parallel processes per node (1 for a step that is not).
    pub ranks: u32,
    pub plan: Plan,
    pub inputs: Vec<Input>,
    pub params_used: BTreeMap<String, Value>,
    pub resources: Resources,
    pub span: Span,
}

pub struct Graph {
    pub manifest: Manifest,
    /// The steps, and an edge from each upstream node to each node that uses it.
    dag: DiGraph<StepNode, Span>,
    /// A topological order (manifest order where the edges allow).
    order: Vec<NodeId>,
}

fn expanded_id(base: &str, item: Option<&str>) -> String {
    match item {
        Some(i) => format!("{base}[{i}]"),
        None => base.to_string(),
    }
}

impl Graph {
    pub fn build(manifest: Manifest, registry: &Registry) -> Result<Graph, ManifestError> {
        Self::build_checked(manifest, Vec::new(), registry)
    }

    /// Builds the graph, adding its problems to those already found in the manifest.
    pub fn build_checked(
        manifest: Manifest,
        earlier: Vec<ManifestDiag>,
        registry: &Registry,
    ) -> Result<Graph, ManifestError> {
        let (nodes, edges) = {
            let mut b = Builder::new(&manifest, earlier);
            b.expand(registry);
            b.resolve();
            b.after();
            if !b.d.is_empty() {
                return Err(b.d.finish().unwrap_err());
            }
            (b.nodes, b.edges)
        };
        let mut dag: DiGraph<StepNode, Span> = DiGraph::with_capacity(nodes.len(), edges.len());
        for node in nodes {
            dag.add_node(node);
        }
        // An edge written more than once is one edge, located where it is
        // written last.
        for (a, b, span) in edges {
            dag.update_edge(a.0, b.0, span);
        }
        if let Some(cycle) = find_cycle(&dag) {
            let mut d = Diags::new(&manifest.src);
            cycle_error(&dag, &cycle, &mut d);
            return Err(d.finish().unwrap_err());
        }
        let order = manifest_topo_order(&dag);
        Ok(Graph {
            manifest,
            dag,
            order,
        })
    }

    /// The graph itself, for petgraph's algorithms.
    pub fn dag(&self) -> &DiGraph<StepNode, Span> {
        &self.dag
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.dag.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.dag.node_count() == 0
    }

    /// Every node, in manifest order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = NodeId> + use<> {
        self.dag.node_indices().map(NodeId)
    }

    /// Every node's step, in manifest order.
    pub fn nodes(&self) -> impl Iterator<Item = &StepNode> {
        self.dag.node_weights()
    }

    /// A topological order: manifest order where the edges allow.
    pub fn order(&self) -> &[NodeId] {
        &self.order
    }

    /// The nodes `n` uses (its upstream nodes), in manifest order.
    pub fn deps(&self, n: NodeId) -> Vec<NodeId> {
        self.neighbors(n, Incoming)
    }

    /// The nodes that use `n`, in manifest order.
    pub fn dependents(&self, n: NodeId) -> Vec<NodeId> {
        self.neighbors(n, Outgoing)
    }

    fn neighbors(&self, n: NodeId, dir: petgraph::Direction) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.dag.neighbors_directed(n.0, dir).map(NodeId).collect();
        v.sort_unstable();
        v
    }

    /// The node with this expanded id.
    pub fn find(&self, id: &str) -> Option<NodeId> {
        self.ids().find(|&n| self[n].id == id)
    }

    /// Nodes named by `sel`: an expanded id (`train[math]`) or a base id (all items).
    pub fn select(&self, sel: &str) -> Vec<NodeId> {
        if let Some(i) = self.find(sel) {
            return vec![i];
        }
        self.ids().filter(|&n| self[n].base == sel).collect()
    }

    /// `targets` and everything upstream of them.
    pub fn with_ancestors(&self, targets: &[NodeId]) -> BTreeSet<NodeId> {
        let up = Reversed(&self.dag);
        let mut dfs = Dfs::empty(up);
        dfs.stack.extend(targets.iter().map(|n| n.0));
        dfs.iter(up).map(NodeId).collect()
    }

    /// Everything downstream of `n`, not `n` itself.
    pub fn descendants(&self, n: NodeId) -> BTreeSet<NodeId> {
        Dfs::new(&self.dag, n.0)
            .iter(&self.dag)
            .map(NodeId)
            .filter(|&d| d != n)
            .collect()
    }
}

impl std::ops::Index<NodeId> for Graph {
    type Output = StepNode;

    fn index(&self, n: NodeId) -> &StepNode {
        &self.dag[n.0]
    }
}

/// The nodes of one base id: one, or a fan-out's items with their item names.
type Family = Vec<(Option<String>, NodeId)>;

/// The graph while it is built: expanded nodes, their references, the edges
/// found so far, and the problems.
struct Builder<'m> {
    manifest: &'m Manifest,
    d: Diags<'m>,
    /// The nodes, in manifest order: a node's [`NodeId`] is its place here.
    nodes: Vec<StepNode>,
    by_base: HashMap<String, Family>,
    /// Each node's references, as its fields write them.
    refs: Vec<Vec<(Ref, Span)>>,
    /// Upstream node, node that uses it, and where that is written.
    edges: Vec<(NodeId, NodeId, Span)>,
    step_ids: Vec<&'m str>,
}

impl<'m> Builder<'m> {
    fn new(manifest: &'m Manifest, earlier: Vec<ManifestDiag>) -> Self {
        let mut d = Diags::new(&manifest.src);
        d.problems = earlier;
        Builder {
            manifest,
            d,
            nodes: Vec::new(),
            by_base: HashMap::new(),
            refs: Vec::new(),
            edges: Vec::new(),
            step_ids: manifest.steps.iter().map(|s| s.id.as_str()).collect(),
        }
    }

    /// One node per step, or per item of a fan-out step, with its plan.
    fn expand(&mut self, registry: &Registry) {
        let manifest = self.manifest;
        for decl in manifest.steps.iter().filter(|s| !s.broken) {
            let Some(kind) = registry.get(&decl.kind) else {
                self.d.push(
                    &decl.kind_span,
                    format!("unknown step kind `{}`", decl.kind),
                    "unknown kind",
                    did_you_mean(&decl.kind, registry.names())
                        .or_else(|| Some(format!("kinds: {}", registry.names().join(", ")))),
                );
                continue;
            };
            let no_fields = BTreeMap::new();
            match &decl.foreach {
                Some(f) => {
                    for (i, item) in f.items.iter().enumerate() {
                        let fields = f.fields.get(i).unwrap_or(&no_fields);
                        self.expand_item(decl, kind, Some((item, fields)));
                    }
                }
                None => self.expand_item(decl, kind, None),
            }
        }
    }

    fn expand_item(
        &mut self,
        decl: &StepDecl,
        kind: &'static dyn StepKind,
        item: Option<(&String, &BTreeMap<String, Value>)>,
    ) {
        let d = &mut self.d;
        let mut body = Node::Mapping(decl.body.clone());
        let mut used = BTreeMap::new();
        let before = d.problems.len();
        let it = item.map(|(i, fields)| (i.as_str(), fields));
        substitute(&mut body, self.manifest, it, &mut used, d);
        if d.problems.len() > before {
            return;
        }
        let Some(plan) = kind.plan(&body, d) else {
            return;
        };
        let ranks = ranks(decl, kind, &plan, d);
        let mut refs = Vec::new();
        collect_refs(&body, &mut refs);
        if !plan.runtime_refs {
            for (r, span) in &refs {
                if matches!(r, Ref::Input(_) | Ref::Output(_) | Ref::OutDir) {
                    d.error(
                        span,
                        format!("`{r}` is not available in a `{}` step", kind.name()),
                        "reference",
                    );
                }
            }
        }
        let item = item.map(|(i, _)| i.clone());
        let id = NodeId::new(self.nodes.len());
        self.by_base
            .entry(decl.id.clone())
            .or_default()
            .push((item.clone(), id));
        self.refs.push(refs);
        self.nodes.push(StepNode {
            id: expanded_id(&decl.id, item.as_deref()),
            base: decl.id.clone(),
            item,
            kind,
            runner: kind.runner(&plan.params),
            ranks,
            plan,
            inputs: Vec::new(),
            params_used: used,
            resources: decl.resources.clone(),
            span: decl.id_span,
        });
    }

    /// Resolves each node's references into inputs, and into edges.
    fn resolve(&mut self) {
        for (i, refs) in std::mem::take(&mut self.refs).into_iter().enumerate() {
            let n = NodeId::new(i);
            let mut inputs: BTreeMap<String, Input> = BTreeMap::new();
            for (r, span) in &refs {
                let source = match r {
                    Ref::Dataset { name, split } => self.dataset(name, *split, span),
                    Ref::Step { id, select, output } => self.step_ref(n, id, select, output, span),
                    _ => None,
                };
                if let Some(source) = source {
                    let key = r.to_string();
                    let span = *span;
                    inputs.insert(key.clone(), Input { key, source, span });
                }
            }
            self.plan_inputs(i, &mut inputs);
            self.nodes[i].inputs = inputs.into_values().collect();
            check_counts(&self.nodes[i], &mut self.d);
            self.check_memory(i);
        }
    }

    fn dataset(&mut self, name: &str, split: Split, span: &Span) -> Option<Source> {
        let datasets = &self.manifest.datasets;
        if !datasets.contains_key(name) {
            self.d.push(
                span,
                format!("unknown dataset `{name}`"),
                "no such dataset",
                did_you_mean(name, datasets.keys().map(String::as_str)),
            );
            return None;
        }
        Some(Source::Dataset {
            name: name.to_string(),
            split,
        })
    }

    /// `${steps.ID[SELECT].OUTPUT}` in node `n`: the nodes it names, each an edge to `n`.
    fn step_ref(
        &mut self,
        n: NodeId,
        id: &str,
        select: &Select,
        output: &str,
        span: &Span,
    ) -> Option<Source> {
        let Some(targets) = self.by_base.get(id) else {
            if !self.step_ids.contains(&id) {
                self.d.push(
                    span,
                    format!("unknown step `{id}`"),
                    "no such step",
                    did_you_mean(id, self.step_ids.iter().copied()),
                );
            } // else the target had its own errors
            return None;
        };
        let chosen = choose(targets, id, select, output, span, &mut self.d)?;
        let outs = &self.nodes[chosen[0].index()].plan.outputs;
        if !outs.contains_key(output) {
            self.d.push(
                span,
                format!("step `{id}` has no output `{output}`"),
                "no such output",
                did_you_mean(output, outs.keys().map(String::as_str)).or_else(|| {
                    Some(format!(
                        "outputs: {}",
                        outs.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }),
            );
            return None;
        }
        for &c in &chosen {
            self.edges.push((c, n, *span));
        }
        Some(Source::Steps {
            nodes: chosen,
            output: output.to_string(),
        })
    }

    /// The inputs a node's plan names itself: datasets by name, and workspace paths.
    fn plan_inputs(&mut self, i: usize, inputs: &mut BTreeMap<String, Input>) {
        let manifest = self.manifest;
        let plan = &self.nodes[i].plan;
        for (name, split) in &plan.datasets {
            if !manifest.datasets.contains_key(name.as_str()) {
                self.d.push(
                    name.span(),
                    format!("unknown dataset `{}`", name.as_str()),
                    "no such dataset",
                    did_you_mean(name.as_str(), manifest.datasets.keys().map(String::as_str)),
                );
                continue;
            }
            let r = Ref::Dataset {
                name: name.as_str().to_string(),
                split: *split,
            };
            let key = r.to_string();
            inputs.insert(
                key.clone(),
                Input {
                    key,
                    source: Source::Dataset {
                        name: name.as_str().to_string(),
                        split: *split,
                    },
                    span: *name.span(),
                },
            );
        }
        for p in &plan.paths {
            let written = p.as_str().to_string();
            let abs = manifest.dir.join(&written);
            inputs.insert(
                written.clone(),
                Input {
                    key: written.clone(),
                    source: Source::Path { abs, written },
                    span: *p.span(),
                },
            );
        }
    }

    /// A step's `resources.memory` below what its plan says it needs.
    fn check_memory(&mut self, i: usize) {
        let node = &self.nodes[i];
        if let Some((need, what, span)) = &node.plan.memory
            && let Some(limit) = node.resources.memory.as_deref()
            && let Ok(have) = crate::manifest::parse_bytes(limit)
            && *need > have
        {
            self.d.error(
                span,
                format!(
                    "{what} needs about {} of memory, more than `resources.memory` ({limit})",
                    crate::store::human_bytes(*need)
                ),
                "model",
            );
        }
    }

    /// Explicit ordering with `after:`.
    fn after(&mut self) {
        let manifest = self.manifest;
        for decl in &manifest.steps {
            for a in &decl.after {
                let (base, item) = match a.as_str().split_once('[') {
                    Some((b, rest)) => (b, rest.strip_suffix(']')),
                    None => (a.as_str(), None),
                };
                let Some(targets) = self.by_base.get(base) else {
                    self.d.push(
                        a.span(),
                        format!("unknown step `{}` in `after`", a.as_str()),
                        "no such step",
                        did_you_mean(base, self.step_ids.iter().copied()),
                    );
                    continue;
                };
                let sources: Vec<NodeId> = targets
                    .iter()
                    .filter(|(i, _)| item.is_none() || i.as_deref() == item)
                    .map(|(_, n)| *n)
                    .collect();
                if sources.is_empty() {
                    self.d.error(
                        a.span(),
                        format!("`{}` names no step node", a.as_str()),
                        "no such step",
                    );
                }
                for (_, to) in self.by_base.get(&decl.id).cloned().unwrap_or_default() {
                    for &s in &sources {
                        self.edges.push((s, to, *a.span()));
                    }
                }
            }
        }
    }
}

/// The nodes of step `id` (its `targets`) that `select` picks.
fn choose(
    targets: &Family,
    id: &str,
    select: &Select,
    output: &str,
    span: &Span,
    d: &mut Diags,
) -> Option<Vec<NodeId>> {
    let fans_out = targets[0].0.is_some();
    let keys = || -> Vec<&str> { targets.iter().filter_map(|(i, _)| i.as_deref()).collect() };
    match select {
        Select::One if fans_out => {
            d.push(
                span,
                format!("step `{id}` fans out with `foreach`; pick one node or all of them"),
                "ambiguous",
                Some(format!(
                    "use `${{steps.{id}[KEY].{output}}}` or `${{steps.{id}[*].{output}}}`"
                )),
            );
            None
        }
        Select::One => Some(vec![targets[0].1]),
        Select::Key(_) | Select::All | Select::Glob(_) if !fans_out => {
            d.error(
                span,
                format!("step `{id}` has no `foreach`; write `${{steps.{id}.{output}}}`"),
                "not a fan-out",
            );
            None
        }
        Select::Key(k) => match targets.iter().find(|(i, _)| i.as_deref() == Some(k)) {
            Some((_, n)) => Some(vec![*n]),
            None => {
                let keys = keys();
                d.push(
                    span,
                    format!("step `{id}` has no item `{k}`"),
                    "no such item",
                    did_you_mean(k, keys.iter().copied())
                        .or_else(|| Some(format!("items: {}", keys.join(", ")))),
                );
                None
            }
        },
        Select::All => Some(targets.iter().map(|(_, n)| *n).collect()),
        Select::Glob(g) => {
            let pat = match glob::Pattern::new(g) {
                Ok(p) => p,
                Err(e) => {
                    d.error(span, format!("bad item glob `{g}`: {e}"), "glob");
                    return None;
                }
            };
            let hits: Vec<NodeId> = targets
                .iter()
                .filter(|(i, _)| i.as_deref().is_some_and(|i| pat.matches(i)))
                .map(|(_, n)| *n)
                .collect();
            if hits.is_empty() {
                d.push(
                    span,
                    format!("no item of step `{id}` matches `{g}`"),
                    "no such item",
                    Some(format!("items: {}", keys().join(", "))),
                );
                return None;
            }
            Some(hits)
        }
    }
}

/// A topological order that takes, of the nodes ready, the earliest in
/// manifest order (Kahn's algorithm with a min-heap). petgraph's `Topo` and
/// `toposort` promise some topological order, not this one, and this one is
/// the order `run`, `status` and `dag` list steps in.
fn manifest_topo_order<N, E>(g: &DiGraph<N, E>) -> Vec<NodeId> {
    let mut waiting: Vec<usize> = g
        .node_indices()
        .map(|n| g.neighbors_directed(n, Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = g
        .node_indices()
        .filter(|n| waiting[n.index()] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(g.node_count());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(NodeId(n));
        for u in g.neighbors_directed(n, Outgoing) {
            waiting[u.index()] -= 1;
            if waiting[u.index()] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    order
}

/// A cycle as a list of nodes, each with an edge to the next and the last to
/// the first: in the first strongly connected component (by petgraph's
/// Tarjan) that has one, the first path depth-first from its earliest node
/// (earlier nodes first) that leads back to it.
fn find_cycle<N, E>(g: &DiGraph<N, E>) -> Option<Vec<NodeIndex>> {
    let mut scc = tarjan_scc(g)
        .into_iter()
        .find(|c| c.len() > 1 || g.contains_edge(c[0], c[0]))?;
    if scc.len() == 1 {
        return Some(scc);
    }
    // The component alone, its nodes and each node's edges in index order:
    // petgraph lists a node's edges newest first, so they are added last first.
    scc.sort_unstable();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (a, &m) in scc.iter().enumerate() {
        edges.extend(
            g.neighbors(m)
                .filter_map(|u| scc.binary_search(&u).ok())
                .map(|b| (a, b)),
        );
    }
    edges.sort_unstable();
    edges.dedup();
    let mut sub: DiGraph<NodeIndex, ()> = DiGraph::with_capacity(scc.len(), edges.len());
    for &m in &scc {
        sub.add_node(m);
    }
    for &(a, b) in edges.iter().rev() {
        sub.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
    }
    let start = NodeIndex::new(0);
    let mut path = Vec::new();
    depth_first_search(&sub, Some(start), |e| match e {
        DfsEvent::Discover(n, _) => {
            path.push(n);
            Control::Continue
        }
        DfsEvent::Finish(..) => {
            path.pop();
            Control::Continue
        }
        DfsEvent::BackEdge(_, to) if to == start => Control::Break(()),
        _ => Control::Continue,
    });
    Some(path.into_iter().map(|n| sub[n]).collect())
}

/// Reports `cycle`, located at the reference that closes it.
fn cycle_error(g: &DiGraph<StepNode, Span>, cycle: &[NodeIndex], d: &mut Diags) {
    let names: Vec<&str> = cycle.iter().map(|&n| g[n].id.as_str()).collect();
    let closing = g
        .find_edge(cycle[cycle.len() - 1], cycle[0])
        .map(|e| g[e])
        .unwrap_or_else(|| g[cycle[0]].span);
    let mut path = names.join(" -> ");
    path.push_str(&format!(" -> {}", names[0]));
    d.push(
        &closing,
        format!("dependency cycle: {path}"),
        "this reference closes the cycle",
        Some(format!("steps on the cycle: {}", names.join(", "))),
    );
}

/// The key an input is resolved under: its reference normalised, or the path.
fn input_key(written: &str) -> String {
    match template::parse(written).as_deref() {
        Ok([Piece::Ref(r)]) => r.to_string(),
        _ => written.to_string(),
    }
}

/// Checks the plan's rules on how many paths its inputs resolve to.
fn check_counts(node: &StepNode, d: &mut Diags) {
    let count = |written: &str| -> Option<usize> {
        let key = input_key(written);
        node.inputs
            .iter()
            .find(|i| i.key == key)
            .map(|i| match &i.source {
                Source::Steps { nodes, .. } => nodes.len(),
                _ => 1,
            })
    };
    for c in &node.plan.counts {
        let Some(got) = c.inputs.iter().map(|k| count(k)).sum::<Option<usize>>() else {
            continue; // an input with its own error
        };
        let (want, what) = match &c.expected {
            kind::Expected::Number(n, what) => (*n, what.clone()),
            kind::Expected::SameAs(other, what) => match count(other) {
                Some(n) => (n, what.clone()),
                None => continue,
            },
        };
        if got != want {
            d.error(
                &c.span,
                format!(
                    "{got} {} but {want} {what}: they must match one to one",
                    c.what
                ),
                "count",
            );
        }
    }
}

/// Replaces `${params.*}` and `${item}` in every scalar, and `$item` inside references.
fn substitute(
    node: &mut Node,
    m: &Manifest,
    item: Option<(&str, &BTreeMap<String, Value>)>,
    used: &mut BTreeMap<String, Value>,
    d: &mut Diags,
) {
    match node {
        Node::Mapping(map) => {
            for (_, v) in map.iter_mut() {
                substitute(v, m, item, used, d);
            }
        }
        Node::Sequence(seq) => {
            for v in seq.iter_mut() {
                substitute(v, m, item, used, d);
            }
        }
        Node::Scalar(_) => substitute_scalar(node, m, item, used, d),
    }
}

/// [`substitute`] in one scalar: a reference that is the whole value is
/// replaced by the value, typed; references in text are spliced into it.
fn substitute_scalar(
    node: &mut Node,
    m: &Manifest,
    item: Option<(&str, &BTreeMap<String, Value>)>,
    used: &mut BTreeMap<String, Value>,
    d: &mut Diags,
) {
    let Node::Scalar(s) = node else {
        return;
    };
    let fields = item.map(|(_, f)| f);
    let item = item.map(|(i, _)| i);
    if !template::has_refs(s.as_str()) && !s.as_str().contains("$${") {
        return;
    }
    // Inside a reference, `$item.AXIS` is one axis's value of a matrix item.
    if let Some(f) = fields
        && s.as_str().contains("$item.")
    {
        let text = axis_values(s.as_str(), f);
        let mut n = MarkedScalarNode::new(*s.span(), text);
        n.set_coerce(s.may_coerce());
        *s = n;
    }
    let span = *s.span();
    let pieces = match template::parse(s.as_str()) {
        Ok(p) => p,
        Err(e) => {
            d.error(&span, e.to_string(), "template");
            return;
        }
    };
    // A whole-value matrix field keeps its type, as a parameter does.
    if let [Piece::Ref(Ref::ItemField(axis))] = pieces.as_slice() {
        if let Some(v) = axis_field(fields, axis, &span, d) {
            *node = match &v {
                Value::String(_) => json_to_node(&v, &span),
                other => Node::Scalar(MarkedScalarNode::new(span, other.to_string())),
            };
        }
        return;
    }
    // A whole-value parameter keeps its type (a number stays a number, a list a list).
    if let [Piece::Ref(Ref::Param(path))] = pieces.as_slice() {
        if let Some(v) = param(m, path, &span, used, d) {
            *node = match &v {
                Value::String(_) => json_to_node(&v, &span),
                Value::Array(_) | Value::Object(_) => json_to_node(&v, &span),
                other => Node::Scalar(MarkedScalarNode::new(span, other.to_string())),
            };
        }
        return;
    }
    let (out, may_coerce) = splice(pieces, m, item, fields, &span, used, d);
    let mut n = MarkedScalarNode::new(span, out);
    n.set_coerce(may_coerce);
    *node = Node::Scalar(n);
}

/// The value of `params.PATH`, recorded in `used` (it is part of the step's
/// key); an unknown parameter is an error at `span`.
fn param(
    m: &Manifest,
    path: &[String],
    span: &Span,
    used: &mut BTreeMap<String, Value>,
    d: &mut Diags,
) -> Option<Value> {
    match lookup_param(&m.params, path) {
        Some(v) => {
            used.insert(path.join("."), v.clone());
            Some(v.clone())
        }
        None => {
            d.push(
                span,
                format!("unknown parameter `params.{}`", path.join(".")),
                "no such parameter",
                did_you_mean(&path[0], m.params.keys().map(String::as_str)),
            );
            None
        }
    }
}

/// The value of a matrix item's `axis`; an axis the matrix does not have is an
/// error at `span`.
fn axis_field(
    fields: Option<&BTreeMap<String, Value>>,
    axis: &str,
    span: &Span,
    d: &mut Diags,
) -> Option<Value> {
    let v = fields.and_then(|f| f.get(axis)).cloned();
    if v.is_none() {
        let axes: Vec<&str> = fields
            .map(|f| f.keys().map(String::as_str).collect())
            .unwrap_or_default();
        d.push(
            span,
            format!("`${{item.{axis}}}` names no axis of this step's `matrix`"),
            "no such axis",
            did_you_mean(axis, axes.iter().copied()),
        );
    }
    v
}

/// A scalar's text with its parameters, matrix fields and `${item}` spliced in
/// (the references to data it keeps, with `$item` replaced), and whether it may
/// still be read as a number or a bool: only if nothing literal is in it.
fn splice(
    pieces: Vec<Piece>,
    m: &Manifest,
    item: Option<&str>,
    fields: Option<&BTreeMap<String, Value>>,
    span: &Span,
    used: &mut BTreeMap<String, Value>,
    d: &mut Diags,
) -> (String, bool) {
    let mut out = String::new();
    let mut may_coerce = true;
    for p in pieces {
        match p {
            Piece::Lit(l) => {
                // Keep escapes for a later parse of the text.
                out.push_str(&l.replace("${", "$${"));
                may_coerce = false;
            }
            Piece::Ref(Ref::Param(path)) => match param(m, &path, span, used, d) {
                Some(Value::String(s)) => out.push_str(&s.replace("${", "$${")),
                Some(v @ (Value::Array(_) | Value::Object(_))) => {
                    d.error(
                        span,
                        format!(
                            "`params.{}` is a {}; it can only be used as a whole value",
                            path.join("."),
                            if v.is_array() { "list" } else { "mapping" }
                        ),
                        "parameter",
                    );
                }
                Some(v) => out.push_str(&v.to_string()),
                None => {}
            },
            Piece::Ref(Ref::ItemField(axis)) => match axis_field(fields, &axis, span, d) {
                Some(Value::String(v)) => out.push_str(&v.replace("${", "$${")),
                Some(v) => out.push_str(&v.to_string()),
                None => {}
            },
            Piece::Ref(Ref::Item) => match item {
                Some(i) => out.push_str(i),
                None => d.push(
                    span,
                    "`${item}` is only defined in a step with `foreach`",
                    "no item here",
                    None,
                ),
            },
            Piece::Ref(mut r) => {
                item_in_ref(&mut r, item, span, d);
                out.push_str(&r.to_string());
                may_coerce = false;
            }
        }
    }
    (out, may_coerce)
}

/// Replaces `$item` in a reference (a dataset's name, a step's id, key or
/// glob) with the step's item; outside a `foreach` step it is an error.
fn item_in_ref(r: &mut Ref, item: Option<&str>, span: &Span, d: &mut Diags) {
    if let Some(i) = item {
        match r {
            Ref::Dataset { name, .. } if name == "$item" => *name = i.to_string(),
            Ref::Step {
                select: Select::Key(k),
                ..
            } if k.contains("$item") => *k = k.replace("$item", i),
            Ref::Step {
                select: Select::Glob(g),
                ..
            } if g.contains("$item") => *g = g.replace("$item", i),
            Ref::Step { id, .. } if id == "$item" => *id = i.to_string(),
            _ => {}
        }
    } else if matches!(&r, Ref::Dataset { name, .. } if name == "$item")
        || matches!(&r, Ref::Step { select: Select::Key(k), .. } if k.contains("$item"))
        || matches!(&r, Ref::Step { id, .. } if id == "$item")
    {
        d.push(
            span,
            "`$item` is only defined in a step with `foreach`",
            "no item here",
            None,
        );
    }
}

/// Replaces `$item.AXIS` (for each axis of `fields`, longest names first) with
/// the axis's value.
fn axis_values(text: &str, fields: &BTreeMap<String, Value>) -> String {
    let mut axes: Vec<&String> = fields.keys().collect();
    axes.sort_by_key(|a| std::cmp::Reverse(a.len()));
    let mut out = text.to_string();
    for a in axes {
        let v = match &fields[a] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out = out.replace(&format!("$item.{a}"), &v);
    }
    out
}

/// Every `${steps.*}` and `${datasets.*}` (and runtime) reference in a node.
fn collect_refs(node: &Node, out: &mut Vec<(Ref, Span)>) {
    match node {
        Node::Mapping(map) => map.values().for_each(|v| collect_refs(v, out)),
        Node::Sequence(seq) => seq.iter().for_each(|v| collect_refs(v, out)),
        Node::Scalar(s) => {
            if let Ok(pieces) = template::parse(s.as_str()) {
                for p in pieces {
                    if let Piece::Ref(r) = p {
                        out.push((r, *s.span()));
                    }
                }
            }
        }
    }
}

/// How a missing input (a dataset glob that finds nothing, a path that is not
/// there) is described, so a dry run can tell data that is not here yet from a
/// broken plan.
pub const NO_FILES: &str = "matches no files";

/// Why a dataset split's files cannot be resolved. `at` is the glob's place in the
/// manifest.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("unknown dataset `{0}`")]
    Unknown(String),
    #[error("{at}: bad glob: {source}")]
    BadGlob {
        at: String,
        source: glob::PatternError,
    },
    /// The glob matches only things that are not regular files; `what` says which.
    #[error(
        "{at}: dataset `{name}`: `{glob}` matches {} only, which is {what}: a dataset's files are regular files (a glob such as `dir/*.jsonl` takes a folder's)",
        path.display()
    )]
    NotFiles {
        at: String,
        name: String,
        glob: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{at}: dataset `{name}`: `{glob}` {}", NO_FILES)]
    NoFiles {
        at: String,
        name: String,
        glob: String,
    },
}

/// Resolves a dataset split's globs to sorted, unique files. An empty match is an error
/// that names the glob.
pub fn dataset_files(m: &Manifest, name: &str, split: Split) -> Result<Vec<PathBuf>, DatasetError> {
    let decl = m
        .datasets
        .get(name)
        .ok_or_else(|| DatasetError::Unknown(name.to_string()))?;
    let globs = match split {
        Split::Train => &decl.files,
        Split::Validation if !decl.validation.is_empty() => &decl.validation,
        // Without validation files the split is done by the ML steps, by document.
        Split::Validation => &decl.files,
    };
    let mut files = BTreeSet::new();
    for g in globs {
        let pattern = if Path::new(g.as_str()).is_absolute() {
            g.as_str().to_string()
        } else {
            m.dir.join(g.as_str()).display().to_string()
        };
        let mut n = 0;
        let mut other = None;
        let paths = glob::glob(&pattern).map_err(|source| DatasetError::BadGlob {
            at: m.src.location(g.span()),
            source,
        })?;
        for p in paths.flatten() {
            if p.is_file() {
                files.insert(p);
                n += 1;
            } else if other.is_none() {
                other = Some(p);
            }
        }
        if let (0, Some(p)) = (n, &other) {
            let what = match std::fs::metadata(p) {
                Ok(md) if md.is_dir() => "a folder",
                Ok(md) if md.file_type().is_fifo() => "a FIFO",
                Ok(_) => "not a regular file",
                Err(_) => "a broken link",
            };
            return Err(DatasetError::NotFiles {
                at: m.src.location(g.span()),
                name: name.to_string(),
                glob: g.as_str().to_string(),
                path: p.clone(),
                what,
            });
        }
        if n == 0 {
            return Err(DatasetError::NoFiles {
                at: m.src.location(g.span()),
                name: name.to_string(),
                glob: g.as_str().to_string(),
            });
        }
    }
    Ok(files.into_iter().collect())
}

/// A registry with one step kind for tests (the real kinds live in
/// demix-kinds, which depends on this crate), and graphs built with it.
/// Data-parallel ranks per node of a step: only a kind that trains can split
/// its batches; other kinds asking for ranks or nodes are told so.
fn ranks(decl: &StepDecl, kind: &dyn StepKind, plan: &Plan, d: &mut Diags) -> u32 {
    let r = &decl.resources;
    if plan.data_parallel {
        return r.ranks();
    }
    if r.ranks.is_some_and(|n| n > 1) || r.nodes() > 1 {
        d.error(
            &decl.resources_span,
            format!(
                "a `{}` step runs as one process: `ranks` and `nodes` are for data-parallel training (`train` steps, `proxy: trained` searches)",
                kind.name()
            ),
            "resources",
        );
    }
    1
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use marked_yaml::Node;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::Graph;
    use crate::kind::{Kind, Plan, Registry};
    use crate::manifest::{Diags, Manifest, ManifestError};

    /// `kind: test`: named outputs, and inputs that may reference anything.
    pub struct Test;

    #[derive(Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Fields {
        #[serde(default)]
        inputs: BTreeMap<String, String>,
        #[serde(default)]
        outputs: Vec<String>,
    }

    impl Kind for Test {
        const NAME: &'static str = "test";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "a step for tests";
        type Fields = Fields;
        type Params = Fields;

        fn plan(&self, fields: Fields, _body: &Node, _d: &mut Diags) -> Option<Plan> {
            let mut plan = Plan::new(&fields);
            plan.outputs = fields
                .outputs
                .iter()
                .map(|o| (o.clone(), o.clone()))
                .collect();
            Some(plan)
        }
    }

    pub fn registry() -> Registry {
        static TEST: Test = Test;
        Registry::new(vec![&TEST])
    }

    /// The graph of a manifest's text.
    pub fn graph(yaml: &str) -> Result<Graph, ManifestError> {
        let m = Manifest::parse(std::path::Path::new("test.yaml"), yaml.to_string())?;
        Graph::build(m, &registry())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::graph;
    use super::*;

    fn ids(g: &Graph, ns: impl IntoIterator<Item = NodeId>) -> Vec<&str> {
        ns.into_iter().map(|n| g[n].id.as_str()).collect()
    }

    fn node(g: &Graph, id: &str) -> NodeId {
        g.find(id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The message of the one problem building `yaml` finds, with its place.
    fn error(yaml: &str) -> String {
        let Err(e) = graph(yaml) else {
            panic!("the graph builds")
        };
        assert_eq!(e.problems.len(), 1, "{e}");
        e.problems[0].message.clone()
    }

    const FANOUT: &str = r#"
version: 1
name: fanout
steps:
  - id: report
    kind: test
    inputs: {all: "${steps.merge.o}", y: "${steps.shard[y].o}"}
  - id: shard
    kind: test
    foreach: [x, y, z]
    outputs: [o]
  - id: merge
    kind: test
    outputs: [o]
    inputs: {all: "${steps.shard[*].o}"}
  - id: alone
    kind: test
  - id: last
    kind: test
    after: [alone, shard]
"#;

    #[test]
    fn nodes_are_expanded_in_manifest_order() {
        let g = graph(FANOUT).unwrap();
        assert_eq!(
            ids(&g, g.ids()),
            [
                "report", "shard[x]", "shard[y]", "shard[z]", "merge", "alone", "last"
            ]
        );
        assert_eq!(g.len(), 7);
        assert_eq!(node(&g, "shard[y]").index(), 2);
        assert_eq!(
            ids(&g, g.select("shard")),
            ["shard[x]", "shard[y]", "shard[z]"]
        );
        assert_eq!(ids(&g, g.select("shard[z]")), ["shard[z]"]);
        assert!(g.select("nothing").is_empty());
    }

    #[test]
    fn topological_order_keeps_manifest_order_where_edges_allow() {
        let g = graph(FANOUT).unwrap();
        assert_eq!(
            ids(&g, g.order().iter().copied()),
            [
                "shard[x]", "shard[y]", "shard[z]", "merge", "report", "alone", "last"
            ]
        );
        // Every edge goes forward in the order.
        let place = |n: NodeId| g.order().iter().position(|&m| m == n).unwrap();
        for e in g.dag().raw_edges() {
            assert!(place(NodeId(e.source())) < place(NodeId(e.target())));
        }
        let no_edges = graph(
            "version: 1\nname: flat\nsteps:\n  - {id: c, kind: test}\n  - {id: a, kind: test}\n  - {id: b, kind: test}\n",
        )
        .unwrap();
        assert_eq!(
            ids(&no_edges, no_edges.order().iter().copied()),
            ["c", "a", "b"]
        );
    }

    #[test]
    fn fan_out_references_make_an_edge_per_item() {
        let g = graph(FANOUT).unwrap();
        let merge = node(&g, "merge");
        assert_eq!(ids(&g, g.deps(merge)), ["shard[x]", "shard[y]", "shard[z]"]);
        assert_eq!(ids(&g, g.deps(node(&g, "report"))), ["shard[y]", "merge"]);
        assert_eq!(
            ids(&g, g.dependents(node(&g, "shard[y]"))),
            ["report", "merge", "last"]
        );
        assert_eq!(
            ids(&g, g.deps(node(&g, "last"))),
            ["shard[x]", "shard[y]", "shard[z]", "alone"]
        );
        let input = &g[merge].inputs[0];
        assert_eq!(input.key, "${steps.shard[*].o}");
        let Source::Steps { nodes, output } = &input.source else {
            panic!("a step input")
        };
        assert_eq!(
            ids(&g, nodes.iter().copied()),
            ["shard[x]", "shard[y]", "shard[z]"]
        );
        assert_eq!(output, "o");
        // Sources print node ids as bare numbers, as `watch` hashes them.
        assert_eq!(
            format!("{:?}", input.source),
            r#"Steps { nodes: [1, 2, 3], output: "o" }"#
        );
    }

    #[test]
    fn ancestors_and_descendants() {
        let g = graph(FANOUT).unwrap();
        let report = node(&g, "report");
        assert_eq!(
            ids(&g, g.with_ancestors(&[report])),
            ["report", "shard[x]", "shard[y]", "shard[z]", "merge"]
        );
        assert_eq!(
            ids(
                &g,
                g.with_ancestors(&[node(&g, "merge"), node(&g, "alone")])
            ),
            ["shard[x]", "shard[y]", "shard[z]", "merge", "alone"]
        );
        assert_eq!(ids(&g, g.with_ancestors(&[])), Vec::<&str>::new());
        assert_eq!(
            ids(&g, g.descendants(node(&g, "shard[x]"))),
            ["report", "merge", "last"]
        );
        assert!(g.descendants(report).is_empty());
        assert_eq!(ids(&g, g.descendants(node(&g, "alone"))), ["last"]);
    }

    #[test]
    fn cycles_are_errors_naming_their_steps() {
        let three = r#"
version: 1
name: cycle
steps:
  - {id: a, kind: test, outputs: [o], inputs: {x: "${steps.c.o}"}}
  - {id: b, kind: test, outputs: [o], inputs: {x: "${steps.a.o}"}}
  - {id: c, kind: test, outputs: [o], inputs: {x: "${steps.b.o}"}}
"#;
        assert_eq!(
            error(three),
            "test.yaml:5:51: dependency cycle: a -> b -> c -> a"
        );
        let own = r#"
version: 1
name: own
steps:
  - {id: a, kind: test, outputs: [o], inputs: {x: "${steps.a.o}"}}
"#;
        assert_eq!(error(own), "test.yaml:5:51: dependency cycle: a -> a");
        // Of two cycles through `a`, the one through the earlier step.
        let two = r#"
version: 1
name: two
steps:
  - {id: a, kind: test, outputs: [o], inputs: {b: "${steps.b.o}", c: "${steps.c.o}"}}
  - {id: b, kind: test, outputs: [o], inputs: {x: "${steps.a.o}"}}
  - {id: c, kind: test, outputs: [o], inputs: {x: "${steps.a.o}"}}
"#;
        assert_eq!(error(two), "test.yaml:5:51: dependency cycle: a -> b -> a");
        let after = r#"
version: 1
name: after
steps:
  - {id: a, kind: test, after: [c]}
  - {id: b, kind: test, foreach: [x, y], after: [a]}
  - {id: c, kind: test, after: ["b[y]"]}
"#;
        assert_eq!(
            error(after),
            "test.yaml:5:33: dependency cycle: a -> b[y] -> c -> a"
        );
    }

    #[test]
    fn unknown_references_are_errors() {
        let yaml = r#"
version: 1
name: unknown
steps:
  - {id: a, kind: test, outputs: [o], inputs: {x: "${steps.b.o}"}}
"#;
        assert_eq!(error(yaml), "test.yaml:5:51: unknown step `b`");
        let yaml = r#"
version: 1
name: fan
steps:
  - {id: a, kind: test, outputs: [o], foreach: [x, y]}
  - {id: b, kind: test, inputs: {x: "${steps.a[w].o}"}}
"#;
        assert_eq!(error(yaml), "test.yaml:6:37: step `a` has no item `w`");
    }
}
