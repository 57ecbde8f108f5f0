//! Expands a manifest's fan-outs, resolves references and builds the step DAG.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{Node, Span};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::manifest::template::{self, Piece, Ref, Select, Split};
use crate::manifest::{
    Diags, Manifest, ManifestError, Resources, did_you_mean, json_to_node, lookup_param,
};
use crate::kind::{self, Plan, Registry, StepKind};

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
        nodes: Vec<usize>,
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
    pub plan: Plan,
    pub inputs: Vec<Input>,
    pub params_used: BTreeMap<String, Value>,
    pub resources: Resources,
    pub span: Span,
}

pub struct Graph {
    pub manifest: Manifest,
    pub nodes: Vec<StepNode>,
    /// Upstream nodes of each node, sorted and unique.
    pub deps: Vec<Vec<usize>>,
    /// A topological order (manifest order where the edges allow).
    pub order: Vec<usize>,
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
        earlier: Vec<crate::manifest::ManifestDiag>,
        registry: &Registry,
    ) -> Result<Graph, ManifestError> {
        let src = manifest.src.clone();
        let mut d = Diags::new(&src);
        d.problems = earlier;
        let mut nodes = Vec::new();
        // base id -> [(item, node index)]
        let mut by_base: HashMap<String, Vec<(Option<String>, usize)>> = HashMap::new();
        let mut raw_refs: Vec<Vec<(Ref, Span)>> = Vec::new();
        for decl in manifest.steps.iter().filter(|s| !s.broken) {
            let Some(kind) = registry.get(&decl.kind) else {
                d.push(
                    &decl.kind_span,
                    format!("unknown step kind `{}`", decl.kind),
                    "unknown kind",
                    did_you_mean(&decl.kind, registry.names())
                        .or_else(|| Some(format!("kinds: {}", registry.names().join(", ")))),
                );
                continue;
            };
            let no_fields = BTreeMap::new();
            let items: Vec<(Option<String>, &BTreeMap<String, Value>)> = match &decl.foreach {
                Some(f) => f
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (Some(x.clone()), f.fields.get(i).unwrap_or(&no_fields)))
                    .collect(),
                None => vec![(None, &no_fields)],
            };
            for (item, fields) in items {
                let mut body = Node::Mapping(decl.body.clone());
                let mut used = BTreeMap::new();
                let before = d.problems.len();
                let it = item.as_deref().map(|i| (i, fields));
                substitute(&mut body, &manifest, it, &mut used, &mut d);
                if d.problems.len() > before {
                    continue;
                }
                let Some(plan) = kind.plan(&body, &mut d) else {
                    continue;
                };
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
                let idx = nodes.len();
                by_base
                    .entry(decl.id.clone())
                    .or_default()
                    .push((item.clone(), idx));
                raw_refs.push(refs);
                nodes.push(StepNode {
                    id: expanded_id(&decl.id, item.as_deref()),
                    base: decl.id.clone(),
                    item,
                    kind,
                    runner: kind.runner(&plan.params),
                    plan,
                    inputs: Vec::new(),
                    params_used: used,
                    resources: decl.resources.clone(),
                    span: decl.id_span,
                });
            }
        }
        // Resolve references into inputs and edges.
        let mut edges: Vec<(usize, usize, Span)> = Vec::new();
        let step_ids: Vec<&str> = manifest.steps.iter().map(|s| s.id.as_str()).collect();
        for (idx, refs) in raw_refs.iter().enumerate() {
            let mut inputs: BTreeMap<String, Input> = BTreeMap::new();
            for (r, span) in refs {
                let source = match r {
                    Ref::Dataset { name, split } => {
                        if !manifest.datasets.contains_key(name) {
                            d.push(
                                span,
                                format!("unknown dataset `{name}`"),
                                "no such dataset",
                                did_you_mean(name, manifest.datasets.keys().map(String::as_str)),
                            );
                            continue;
                        }
                        Source::Dataset {
                            name: name.clone(),
                            split: *split,
                        }
                    }
                    Ref::Step { id, select, output } => {
                        let Some(targets) = by_base.get(id) else {
                            if step_ids.contains(&id.as_str()) {
                                continue; // the target had its own errors
                            }
                            d.push(
                                span,
                                format!("unknown step `{id}`"),
                                "no such step",
                                did_you_mean(id, step_ids.iter().copied()),
                            );
                            continue;
                        };
                        let fans_out = targets[0].0.is_some();
                        let chosen: Vec<usize> = match select {
                            Select::One if fans_out => {
                                d.push(
                                    span,
                                    format!("step `{id}` fans out with `foreach`; pick one node or all of them"),
                                    "ambiguous",
                                    Some(format!(
                                        "use `${{steps.{id}[KEY].{output}}}` or `${{steps.{id}[*].{output}}}`"
                                    )),
                                );
                                continue;
                            }
                            Select::One => vec![targets[0].1],
                            Select::Key(_) | Select::All | Select::Glob(_) if !fans_out => {
                                d.error(span, format!("step `{id}` has no `foreach`; write `${{steps.{id}.{output}}}`"), "not a fan-out");
                                continue;
                            }
                            Select::Key(k) => match targets
                                .iter()
                                .find(|(i, _)| i.as_deref() == Some(k))
                            {
                                Some((_, n)) => vec![*n],
                                None => {
                                    let keys: Vec<&str> =
                                        targets.iter().filter_map(|(i, _)| i.as_deref()).collect();
                                    d.push(
                                        span,
                                        format!("step `{id}` has no item `{k}`"),
                                        "no such item",
                                        did_you_mean(k, keys.iter().copied()).or_else(|| {
                                            Some(format!("items: {}", keys.join(", ")))
                                        }),
                                    );
                                    continue;
                                }
                            },
                            Select::All => targets.iter().map(|(_, n)| *n).collect(),
                            Select::Glob(g) => {
                                let pat = match glob::Pattern::new(g) {
                                    Ok(p) => p,
                                    Err(e) => {
                                        d.error(span, format!("bad item glob `{g}`: {e}"), "glob");
                                        continue;
                                    }
                                };
                                let hits: Vec<usize> = targets
                                    .iter()
                                    .filter(|(i, _)| i.as_deref().is_some_and(|i| pat.matches(i)))
                                    .map(|(_, n)| *n)
                                    .collect();
                                if hits.is_empty() {
                                    let keys: Vec<&str> =
                                        targets.iter().filter_map(|(i, _)| i.as_deref()).collect();
                                    d.push(
                                        span,
                                        format!("no item of step `{id}` matches `{g}`"),
                                        "no such item",
                                        Some(format!("items: {}", keys.join(", "))),
                                    );
                                    continue;
                                }
                                hits
                            }
                        };
                        let outs = &nodes[chosen[0]].plan.outputs;
                        if !outs.contains_key(output) {
                            d.push(
                                span,
                                format!("step `{id}` has no output `{output}`"),
                                "no such output",
                                did_you_mean(output, outs.keys().map(String::as_str)).or_else(
                                    || {
                                        Some(format!(
                                            "outputs: {}",
                                            outs.keys().cloned().collect::<Vec<_>>().join(", ")
                                        ))
                                    },
                                ),
                            );
                            continue;
                        }
                        for &c in &chosen {
                            edges.push((c, idx, *span));
                        }
                        Source::Steps {
                            nodes: chosen,
                            output: output.clone(),
                        }
                    }
                    _ => continue,
                };
                let key = r.to_string();
                inputs.insert(
                    key.clone(),
                    Input {
                        key,
                        source,
                        span: *span,
                    },
                );
            }
            for (name, split) in &nodes[idx].plan.datasets {
                if !manifest.datasets.contains_key(name.as_str()) {
                    d.push(
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
            for p in &nodes[idx].plan.paths {
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
            nodes[idx].inputs = inputs.into_values().collect();
            check_counts(&nodes[idx], &mut d);
            if let Some((need, what, span)) = &nodes[idx].plan.memory
                && let Some(limit) = nodes[idx].resources.memory.as_deref()
                && let Ok(have) = crate::manifest::parse_bytes(limit)
                && *need > have
            {
                d.error(
                    span,
                    format!(
                        "{what} needs about {} of memory, more than `resources.memory` ({limit})",
                        crate::store::human_bytes(*need)
                    ),
                    "model",
                );
            }
        }
        // Explicit ordering with `after:`.
        for decl in &manifest.steps {
            for a in &decl.after {
                let (base, item) = match a.as_str().split_once('[') {
                    Some((b, rest)) => (b, rest.strip_suffix(']')),
                    None => (a.as_str(), None),
                };
                let Some(targets) = by_base.get(base) else {
                    d.push(
                        a.span(),
                        format!("unknown step `{}` in `after`", a.as_str()),
                        "no such step",
                        did_you_mean(base, step_ids.iter().copied()),
                    );
                    continue;
                };
                let sources: Vec<usize> = targets
                    .iter()
                    .filter(|(i, _)| item.is_none() || i.as_deref() == item)
                    .map(|(_, n)| *n)
                    .collect();
                if sources.is_empty() {
                    d.error(
                        a.span(),
                        format!("`{}` names no step node", a.as_str()),
                        "no such step",
                    );
                }
                for (_, to) in by_base.get(&decl.id).cloned().unwrap_or_default() {
                    for &s in &sources {
                        edges.push((s, to, *a.span()));
                    }
                }
            }
        }
        if !d.is_empty() {
            return Err(d.finish().unwrap_err());
        }
        let mut g: DiGraph<usize, Span> = DiGraph::new();
        let ix: Vec<NodeIndex> = (0..nodes.len()).map(|i| g.add_node(i)).collect();
        let mut deps = vec![BTreeSet::new(); nodes.len()];
        for (a, b, span) in &edges {
            g.update_edge(ix[*a], ix[*b], *span);
            deps[*b].insert(*a);
        }
        if let Some(cycle) = find_cycle(&g) {
            let names: Vec<&str> = cycle.iter().map(|&n| nodes[g[n]].id.as_str()).collect();
            let closing = g
                .find_edge(cycle[cycle.len() - 1], cycle[0])
                .map(|e| g[e])
                .unwrap_or_else(|| nodes[g[cycle[0]]].span);
            let mut path = names.join(" -> ");
            path.push_str(&format!(" -> {}", names[0]));
            d.push(
                &closing,
                format!("dependency cycle: {path}"),
                "this reference closes the cycle",
                Some(format!("steps on the cycle: {}", names.join(", "))),
            );
            return Err(d.finish().unwrap_err());
        }
        let order = topo_order(&deps);
        Ok(Graph {
            manifest,
            nodes,
            deps: deps.into_iter().map(|s| s.into_iter().collect()).collect(),
            order,
        })
    }

    /// The node with this expanded id.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Nodes named by `sel`: an expanded id (`train[math]`) or a base id (all items).
    pub fn select(&self, sel: &str) -> Vec<usize> {
        if let Some(i) = self.find(sel) {
            return vec![i];
        }
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].base == sel)
            .collect()
    }

    /// `targets` and everything upstream of them.
    pub fn with_ancestors(&self, targets: &[usize]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(&self.deps[n]);
            }
        }
        seen
    }

    /// Nodes downstream of `n`.
    pub fn dependents(&self, n: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.deps[i].contains(&n))
            .collect()
    }
}

/// Kahn's algorithm, taking the lowest index (manifest order) first.
fn topo_order(deps: &[BTreeSet<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut indeg: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut users = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            users[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    order
}

/// A cycle as a list of nodes, each with an edge to the next and the last to the first.
fn find_cycle(g: &DiGraph<usize, Span>) -> Option<Vec<NodeIndex>> {
    for scc in petgraph::algo::tarjan_scc(g) {
        let first = scc[0];
        if scc.len() == 1 && g.find_edge(first, first).is_none() {
            continue;
        }
        if scc.len() == 1 {
            return Some(vec![first]);
        }
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        // Depth-first from `first` within the component until an edge leads back.
        let start = *members.iter().next().expect("non-empty");
        let mut path = vec![start];
        let mut visited = BTreeSet::from([start]);
        fn dfs(
            g: &DiGraph<usize, Span>,
            members: &BTreeSet<NodeIndex>,
            start: NodeIndex,
            path: &mut Vec<NodeIndex>,
            visited: &mut BTreeSet<NodeIndex>,
        ) -> bool {
            let cur = *path.last().expect("non-empty");
            let mut next: Vec<NodeIndex> =
                g.neighbors(cur).filter(|n| members.contains(n)).collect();
            next.sort();
            for n in next {
                if n == start {
                    return true;
                }
                if visited.insert(n) {
                    path.push(n);
                    if dfs(g, members, start, path, visited) {
                        return true;
                    }
                    path.pop();
                }
            }
            false
        }
        if dfs(g, &members, start, &mut path, &mut visited) {
            return Some(path);
        }
    }
    None
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
    let whole = item;
    let fields = item.map(|(_, f)| f);
    let item = item.map(|(i, _)| i);
    match node {
        Node::Mapping(map) => {
            for (_, v) in map.iter_mut() {
                substitute(v, m, whole, used, d);
            }
        }
        Node::Sequence(seq) => {
            for v in seq.iter_mut() {
                substitute(v, m, whole, used, d);
            }
        }
        Node::Scalar(s) => {
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
                    d.error(&span, e, "template");
                    return;
                }
            };
            let lookup = |path: &[String],
                          used: &mut BTreeMap<String, Value>,
                          d: &mut Diags|
             -> Option<Value> {
                match lookup_param(&m.params, path) {
                    Some(v) => {
                        used.insert(path.join("."), v.clone());
                        Some(v.clone())
                    }
                    None => {
                        d.push(
                            &span,
                            format!("unknown parameter `params.{}`", path.join(".")),
                            "no such parameter",
                            did_you_mean(&path[0], m.params.keys().map(String::as_str)),
                        );
                        None
                    }
                }
            };
            let field = |axis: &str, d: &mut Diags| -> Option<Value> {
                let v = fields.and_then(|f| f.get(axis)).cloned();
                if v.is_none() {
                    let axes: Vec<&str> = fields
                        .map(|f| f.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    d.push(
                        &span,
                        format!("`${{item.{axis}}}` names no axis of this step's `matrix`"),
                        "no such axis",
                        did_you_mean(axis, axes.iter().copied()),
                    );
                }
                v
            };
            // A whole-value matrix field keeps its type, as a parameter does.
            if let [Piece::Ref(Ref::ItemField(axis))] = pieces.as_slice() {
                if let Some(v) = field(axis, d) {
                    *node = match &v {
                        Value::String(_) => json_to_node(&v, &span),
                        other => Node::Scalar(MarkedScalarNode::new(span, other.to_string())),
                    };
                }
                return;
            }
            // A whole-value parameter keeps its type (a number stays a number, a list a list).
            if let [Piece::Ref(Ref::Param(path))] = pieces.as_slice() {
                if let Some(v) = lookup(path, used, d) {
                    *node = match &v {
                        Value::String(_) => json_to_node(&v, &span),
                        Value::Array(_) | Value::Object(_) => json_to_node(&v, &span),
                        other => Node::Scalar(MarkedScalarNode::new(span, other.to_string())),
                    };
                }
                return;
            }
            let mut out = String::new();
            let mut may_coerce = true;
            for p in pieces {
                match p {
                    Piece::Lit(l) => {
                        // Keep escapes for a later parse of the text.
                        out.push_str(&l.replace("${", "$${"));
                        may_coerce = false;
                    }
                    Piece::Ref(Ref::Param(path)) => match lookup(&path, used, d) {
                        Some(Value::String(s)) => out.push_str(&s.replace("${", "$${")),
                        Some(v @ (Value::Array(_) | Value::Object(_))) => {
                            d.error(
                                &span,
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
                    Piece::Ref(Ref::ItemField(axis)) => match field(&axis, d) {
                        Some(Value::String(v)) => out.push_str(&v.replace("${", "$${")),
                        Some(v) => out.push_str(&v.to_string()),
                        None => {}
                    },
                    Piece::Ref(Ref::Item) => match item {
                        Some(i) => out.push_str(i),
                        None => d.push(
                            &span,
                            "`${item}` is only defined in a step with `foreach`",
                            "no item here",
                            None,
                        ),
                    },
                    Piece::Ref(mut r) => {
                        if let Some(i) = item {
                            match &mut r {
                                Ref::Dataset { name, .. } if name == "$item" => {
                                    *name = i.to_string()
                                }
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
                                &span,
                                "`$item` is only defined in a step with `foreach`",
                                "no item here",
                                None,
                            );
                        }
                        out.push_str(&r.to_string());
                        may_coerce = false;
                    }
                }
            }
            let mut n = MarkedScalarNode::new(span, out);
            n.set_coerce(may_coerce);
            *node = Node::Scalar(n);
        }
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

/// Resolves a dataset split's globs to sorted, unique files. An empty match is an error
/// that names the glob.
pub fn dataset_files(m: &Manifest, name: &str, split: Split) -> Result<Vec<PathBuf>, String> {
    let decl = m
        .datasets
        .get(name)
        .ok_or_else(|| format!("unknown dataset `{name}`"))?;
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
        let paths = glob::glob(&pattern)
            .map_err(|e| format!("{}: bad glob: {e}", m.src.location(g.span())))?;
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
            return Err(format!(
                "{}: dataset `{name}`: `{}` matches {} only, which is {what}: a dataset's files are regular files (a glob such as `dir/*.jsonl` takes a folder's)",
                m.src.location(g.span()),
                g.as_str(),
                p.display()
            ));
        }
        if n == 0 {
            return Err(format!(
                "{}: dataset `{name}`: `{}` {NO_FILES}",
                m.src.location(g.span()),
                g.as_str()
            ));
        }
    }
    Ok(files.into_iter().collect())
}
