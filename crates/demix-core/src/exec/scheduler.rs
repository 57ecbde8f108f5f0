//! The scheduler: the state of every node of a run, and the rules that move it.
//!
//! It decides nothing by itself and does no I/O: the run loop (`local.rs`)
//! walks it. [`Scheduler::next_to_decide`] names the next waiting node whose
//! upstream nodes are settled, either skipped (an upstream node did not
//! complete) or to be assessed, and [`Scheduler::assessed`] takes the verdict.
//! [`Scheduler::next_launch`] names the next ready node that fits the machine
//! (its CPUs, memory and GPUs, and the executor's cap on steps at once), and
//! [`Scheduler::ended`] takes how a running step ended. A failure stops the
//! run unless it keeps going; [`Scheduler::stop`], [`Scheduler::drain`] and
//! [`Scheduler::cancel`] are a caller's (Ctrl-C, `demix watch`).
//!
//! Nodes are walked in the graph's topological order, so a node is settled
//! only after its upstream nodes, and steps start in manifest order.

use std::collections::HashMap;

use crate::graph::{Graph, NodeId};
use crate::manifest::Resources;
use crate::store::human_bytes;

/// Where a node of the run is.
#[derive(Debug, PartialEq, Eq)]
pub enum State<T> {
    /// Not yet decided: an upstream node is not done, or the run has stopped.
    Waiting,
    /// Handed out by [`Scheduler::next_to_decide`]; its verdict is not in yet.
    Assessing,
    /// Needs to run, with what the caller needs to start it.
    Ready(T),
    /// Started; `cancel` once it was asked to cancel.
    Running { cancel: bool },
    /// Ran, or was fresh.
    Done,
    /// Failed, or was cancelled.
    Failed,
    /// Not run: an upstream node did not complete.
    Skipped,
}

impl<T> State<T> {
    /// A node in this state will not produce a result in this run.
    fn did_not_complete(&self) -> bool {
        matches!(self, State::Failed | State::Skipped)
    }
}

/// What a step asks of the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub cpus: u32,
    pub memory: u64,
    pub gpus: usize,
}

/// The machine's CPUs, memory and GPU ids, and what running steps hold of them.
#[derive(Debug)]
pub struct Pool {
    /// Steps run on this machine. If not (Slurm's jobs), they ask nothing of it.
    here: bool,
    cpus: u32,
    memory: u64,
    gpus: usize,
    used_cpus: u32,
    used_memory: u64,
    free_gpus: Vec<String>,
    held: HashMap<NodeId, (Request, Vec<String>)>,
}

impl Pool {
    /// A machine with `cpus` cores, `memory` bytes and these GPU ids, handed
    /// out in order.
    pub fn new(cpus: u32, memory: u64, gpus: Vec<String>) -> Pool {
        Pool {
            here: true,
            cpus,
            memory,
            gpus: gpus.len(),
            used_cpus: 0,
            used_memory: 0,
            free_gpus: gpus,
            held: HashMap::new(),
        }
    }

    /// For steps that run elsewhere: every step fits, and none gets a GPU id.
    pub fn elsewhere() -> Pool {
        Pool {
            here: false,
            ..Pool::new(0, 0, Vec::new())
        }
    }

    /// What a step with these resources takes of this machine: no more CPUs
    /// than there are (a step asking for more runs alone instead).
    pub fn request(&self, r: &Resources) -> Request {
        if !self.here {
            return Request::default();
        }
        Request {
            cpus: r.cpus().min(self.cpus),
            memory: r.memory_bytes(),
            gpus: r.gpus() as usize,
        }
    }

    /// Why a step with this request can never run here, if it cannot.
    pub fn impossible(&self, req: &Request) -> Option<String> {
        if req.memory > self.memory {
            Some(format!(
                "needs {} of memory; this machine has {}",
                human_bytes(req.memory),
                human_bytes(self.memory)
            ))
        } else if req.gpus > self.gpus {
            Some(format!(
                "needs {} GPU(s); this machine has {}",
                req.gpus, self.gpus
            ))
        } else {
            None
        }
    }

    /// Whether the request fits beside the steps running now. With none
    /// running, any number of CPUs fits.
    pub fn fits(&self, req: &Request, idle: bool) -> bool {
        (idle || self.used_cpus + req.cpus <= self.cpus)
            && self.used_memory + req.memory <= self.memory
            && self.free_gpus.len() >= req.gpus
    }

    /// Takes what `n` asks for; returns its GPU ids.
    fn acquire(&mut self, n: NodeId, req: &Request) -> Vec<String> {
        let gpus: Vec<String> = self.free_gpus.drain(..req.gpus).collect();
        self.used_cpus += req.cpus;
        self.used_memory += req.memory;
        self.held.insert(n, (req.clone(), gpus.clone()));
        gpus
    }

    /// Gives back what `n` holds.
    fn release(&mut self, n: NodeId) {
        let (req, gpus) = self
            .held
            .remove(&n)
            .expect("a running node holds resources");
        self.used_cpus -= req.cpus;
        self.used_memory -= req.memory;
        self.free_gpus.extend(gpus);
    }
}

/// What the run asks of the scheduler.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// After a failure, go on with what does not depend on it.
    pub keep_going: bool,
    /// Steps running at once at most (the executor's).
    pub step_cap: usize,
}

/// The next thing to do about a waiting node.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// `upstream` did not complete, so `node` is skipped (it is marked so).
    Skip { node: NodeId, upstream: NodeId },
    /// Every upstream node is done: assess `node` and give the verdict to
    /// [`Scheduler::assessed`].
    Assess(NodeId),
}

/// A verdict on an assessed node.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Its result is in the store already.
    Fresh,
    /// It has to run.
    Ready(T),
    /// It cannot even be planned (an input is missing).
    Failed,
}

/// A ready node the walk reached.
#[derive(Debug, PartialEq, Eq)]
pub enum Launch<T> {
    /// It asks more than the machine has: it failed, for this reason.
    Impossible { node: NodeId, why: String },
    /// Start it, on these GPU ids. It holds its resources until it ends.
    Start {
        node: NodeId,
        ready: T,
        gpus: Vec<String>,
    },
}

/// How a running step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Done,
    /// It failed: unless the run keeps going, the run stops.
    Failed,
    /// It was cancelled.
    Cancelled,
    /// It reported success but its result is not in the store: a failure
    /// that does not stop the run.
    Lost,
}

/// The state of every node of one run. `T` is what a ready node carries
/// until it starts (the run loop's assessment).
#[derive(Debug)]
pub struct Scheduler<T> {
    /// The graph's topological order.
    order: Vec<NodeId>,
    /// Each node's place in `order`, by node.
    place: Vec<usize>,
    /// Each node's upstream nodes, in manifest order, by node.
    deps: Vec<Vec<NodeId>>,
    requests: Vec<Request>,
    /// The run's targets and everything upstream of them, by node.
    selected: Vec<bool>,
    state: Vec<State<T>>,
    pool: Pool,
    policy: Policy,
    /// Nothing new is assessed or started.
    stopping: bool,
    running: usize,
    /// Where in `order` the walk for nodes to decide goes on: a node before
    /// it can only become decidable when an upstream node settles, and that
    /// moves it back.
    decide_at: usize,
    /// Where in `order` the pass over ready nodes in progress goes on.
    launch_at: Option<usize>,
}

impl<T> Scheduler<T> {
    /// A run of `targets` and everything upstream of them (of every node
    /// when there are none).
    pub fn new(graph: &Graph, targets: &[NodeId], pool: Pool, policy: Policy) -> Scheduler<T> {
        let n = graph.len();
        let selected = if targets.is_empty() {
            vec![true; n]
        } else {
            let chosen = graph.with_ancestors(targets);
            graph.ids().map(|i| chosen.contains(&i)).collect()
        };
        let mut place = vec![0; n];
        for (at, &i) in graph.order().iter().enumerate() {
            place[i.index()] = at;
        }
        Scheduler {
            order: graph.order().to_vec(),
            place,
            deps: graph.ids().map(|i| graph.deps(i)).collect(),
            requests: graph
                .ids()
                .map(|i| pool.request(&graph[i].resources))
                .collect(),
            selected,
            state: (0..n).map(|_| State::Waiting).collect(),
            pool,
            policy,
            stopping: false,
            running: 0,
            decide_at: 0,
            launch_at: None,
        }
    }

    pub fn state(&self, n: NodeId) -> &State<T> {
        &self.state[n.index()]
    }

    /// Whether the run includes `n`.
    pub fn selected(&self, n: NodeId) -> bool {
        self.selected[n.index()]
    }

    /// Steps started and not yet ended.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether the run has stopped starting new steps.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    fn set(&mut self, n: NodeId, s: State<T>) -> State<T> {
        std::mem::replace(&mut self.state[n.index()], s)
    }

    /// `n` settled: the nodes that depend on it, all after it, may be decidable.
    fn settled(&mut self, n: NodeId) {
        self.decide_at = self.decide_at.min(self.place[n.index()] + 1);
    }

    fn fail(&mut self, n: NodeId) {
        self.set(n, State::Failed);
        self.settled(n);
        if !self.policy.keep_going {
            self.stopping = true;
        }
    }

    /// The next selected, waiting node whose upstream nodes are settled, in
    /// order: skipped if one of them did not complete, else (unless the run
    /// is stopping) to assess.
    pub fn next_to_decide(&mut self) -> Option<Next> {
        while let Some(&n) = self.order.get(self.decide_at) {
            self.decide_at += 1;
            if !self.selected(n) || !matches!(self.state(n), State::Waiting) {
                continue;
            }
            let deps = &self.deps[n.index()];
            if let Some(&up) = deps
                .iter()
                .find(|u| self.state[u.index()].did_not_complete())
            {
                self.set(n, State::Skipped);
                self.settled(n);
                return Some(Next::Skip {
                    node: n,
                    upstream: up,
                });
            }
            if self.stopping
                || !deps
                    .iter()
                    .all(|u| matches!(self.state[u.index()], State::Done))
            {
                continue;
            }
            self.set(n, State::Assessing);
            return Some(Next::Assess(n));
        }
        None
    }

    /// The verdict on a node [`Scheduler::next_to_decide`] handed out. A
    /// failure stops the run unless it keeps going.
    pub fn assessed(&mut self, n: NodeId, v: Verdict<T>) {
        debug_assert!(matches!(self.state(n), State::Assessing));
        match v {
            Verdict::Fresh => {
                self.set(n, State::Done);
                self.settled(n);
            }
            Verdict::Ready(t) => {
                self.set(n, State::Ready(t));
            }
            Verdict::Failed => self.fail(n),
        }
    }

    /// The next ready node, in order, that fits beside the running steps; or
    /// one that can never fit, which fails. `None` ends a pass over the ready
    /// nodes: when every node was looked at, the executor's cap is reached,
    /// or an impossible request stopped the run. A pass starts only while the
    /// run is not stopping; a step that fails to start does not end it.
    pub fn next_launch(&mut self) -> Option<Launch<T>> {
        let mut at = match self.launch_at.take() {
            Some(at) => at,
            None if self.stopping => return None,
            None => 0,
        };
        while let Some(&n) = self.order.get(at) {
            if self.running >= self.policy.step_cap {
                return None;
            }
            at += 1;
            if !matches!(self.state(n), State::Ready(_)) {
                continue;
            }
            let req = &self.requests[n.index()];
            if let Some(why) = self.pool.impossible(req) {
                self.fail(n);
                if self.policy.keep_going {
                    self.launch_at = Some(at);
                }
                return Some(Launch::Impossible { node: n, why });
            }
            if !self.pool.fits(req, self.running == 0) {
                continue;
            }
            let req = req.clone();
            let State::Ready(ready) = self.set(n, State::Running { cancel: false }) else {
                unreachable!("checked above")
            };
            let gpus = self.pool.acquire(n, &req);
            self.running += 1;
            self.launch_at = Some(at);
            return Some(Launch::Start {
                node: n,
                ready,
                gpus,
            });
        }
        None
    }

    /// A step [`Scheduler::next_launch`] handed out could not be started. A
    /// failure stops the run unless it keeps going (the pass goes on).
    pub fn start_failed(&mut self, n: NodeId) {
        self.end_running(n);
        self.fail(n);
    }

    fn end_running(&mut self, n: NodeId) {
        debug_assert!(matches!(self.state(n), State::Running { .. }));
        self.pool.release(n);
        self.running -= 1;
    }

    /// A running step ended. Returns whether this ends the run: its failure
    /// stops a run that does not keep going (and is not stopping already);
    /// the caller then cancels the running steps with [`Scheduler::stop`].
    pub fn ended(&mut self, n: NodeId, end: End) -> bool {
        self.end_running(n);
        self.settled(n);
        match end {
            End::Done => {
                self.set(n, State::Done);
                false
            }
            End::Cancelled | End::Lost => {
                self.set(n, State::Failed);
                false
            }
            End::Failed => {
                self.set(n, State::Failed);
                !self.policy.keep_going && !std::mem::replace(&mut self.stopping, true)
            }
        }
    }

    /// Whether `n` was asked to cancel while it ran.
    pub fn cancel_requested(&self, n: NodeId) -> bool {
        matches!(self.state(n), State::Running { cancel: true })
    }

    /// Marks the running steps that `pick` chooses as asked to cancel, and
    /// returns them for the executor to cancel.
    pub fn cancel(&mut self, pick: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
        let mut out = Vec::new();
        for &n in &self.order {
            if let State::Running { cancel } = &mut self.state[n.index()]
                && pick(n)
            {
                *cancel = true;
                out.push(n);
            }
        }
        out
    }

    /// Starts nothing new; running steps finish.
    pub fn drain(&mut self) {
        self.stopping = true;
    }

    /// Starts nothing new and asks every running step to cancel: returns them.
    pub fn stop(&mut self) -> Vec<NodeId> {
        self.stopping = true;
        self.cancel(|_| true)
    }

    /// Selected nodes the run never decided or started (it stopped), in order.
    pub fn unsettled(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.order.iter().copied().filter(|&n| {
            self.selected(n)
                && matches!(
                    self.state(n),
                    State::Waiting | State::Assessing | State::Ready(_)
                )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::testing::graph;

    const GIB: u64 = 1 << 30;

    fn id(g: &Graph, s: &str) -> NodeId {
        g.find(s).unwrap_or_else(|| panic!("no node {s}"))
    }

    fn names(g: &Graph, ns: &[NodeId]) -> Vec<String> {
        ns.iter().map(|&n| g[n].id.clone()).collect()
    }

    fn sched(g: &Graph, pool: Pool, keep_going: bool, step_cap: usize) -> Scheduler<()> {
        Scheduler::new(
            g,
            &[],
            pool,
            Policy {
                keep_going,
                step_cap,
            },
        )
    }

    fn big() -> Pool {
        Pool::new(8, 64 * GIB, vec![])
    }

    /// Decides every decidable node: `fresh` ones are fresh, `broken` ones
    /// fail, the rest are ready. Returns what happened, in order.
    fn decide(g: &Graph, s: &mut Scheduler<()>, fresh: &[&str], broken: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(next) = s.next_to_decide() {
            match next {
                Next::Skip { node, upstream } => {
                    out.push(format!("skip {} ({})", g[node].id, g[upstream].id));
                }
                Next::Assess(n) => {
                    let name = g[n].id.as_str();
                    let v = if fresh.contains(&name) {
                        Verdict::Fresh
                    } else if broken.contains(&name) {
                        Verdict::Failed
                    } else {
                        Verdict::Ready(())
                    };
                    out.push(format!("{v:?} {name}"));
                    s.assessed(n, v);
                }
            }
        }
        out
    }

    /// One pass over the ready nodes: what started (with GPU ids) or failed.
    fn launch(g: &Graph, s: &mut Scheduler<()>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = s.next_launch() {
            out.push(match l {
                Launch::Start { node, gpus, .. } if gpus.is_empty() => {
                    format!("start {}", g[node].id)
                }
                Launch::Start { node, gpus, .. } => {
                    format!("start {} on {}", g[node].id, gpus.join(","))
                }
                Launch::Impossible { node, why } => format!("impossible {}: {why}", g[node].id),
            });
        }
        out
    }

    const CHAIN: &str = r#"
version: 1
name: chain
steps:
  - id: a
    kind: test
    outputs: [o]
  - id: b
    kind: test
    outputs: [o]
    inputs: {x: "${steps.a.o}"}
  - id: c
    kind: test
    outputs: [o]
    inputs: {x: "${steps.b.o}"}
  - id: d
    kind: test
    outputs: [o]
"#;

    #[test]
    fn nodes_become_ready_as_their_upstream_nodes_finish() {
        let g = graph(CHAIN).unwrap();
        let mut s = sched(&g, big(), false, 4);
        assert_eq!(decide(&g, &mut s, &[], &[]), ["Ready(()) a", "Ready(()) d"]);
        assert_eq!(launch(&g, &mut s), ["start a", "start d"]);
        assert_eq!(s.running(), 2);
        assert!(decide(&g, &mut s, &[], &[]).is_empty());
        assert!(!s.ended(id(&g, "a"), End::Done));
        assert_eq!(decide(&g, &mut s, &[], &[]), ["Ready(()) b"]);
        assert!(!s.ended(id(&g, "d"), End::Done));
        assert_eq!(launch(&g, &mut s), ["start b"]);
        assert!(!s.ended(id(&g, "b"), End::Done));
        // A fresh node settles at once, and what depends on it follows.
        assert_eq!(decide(&g, &mut s, &["c"], &[]), ["Fresh c"]);
        assert_eq!(s.running(), 0);
        assert_eq!(s.unsettled().count(), 0);
    }

    #[test]
    fn fresh_nodes_let_later_ones_decide_in_the_same_walk() {
        let g = graph(CHAIN).unwrap();
        let mut s = sched(&g, big(), false, 4);
        assert_eq!(
            decide(&g, &mut s, &["a", "b"], &[]),
            ["Fresh a", "Fresh b", "Ready(()) c", "Ready(()) d"]
        );
    }

    #[test]
    fn a_failure_skips_everything_downstream_and_stops_the_run() {
        let g = graph(CHAIN).unwrap();
        let mut s = sched(&g, big(), false, 4);
        decide(&g, &mut s, &[], &[]);
        assert_eq!(launch(&g, &mut s), ["start a", "start d"]);
        // The first failure stops the run: the caller cancels what runs.
        assert!(s.ended(id(&g, "a"), End::Failed));
        assert!(s.stopping());
        assert_eq!(names(&g, &s.stop()), ["d"]);
        assert!(s.cancel_requested(id(&g, "d")));
        assert_eq!(decide(&g, &mut s, &[], &[]), ["skip b (a)", "skip c (b)"]);
        // A second failure does not stop it again.
        assert!(!s.ended(id(&g, "d"), End::Cancelled));
        assert!(launch(&g, &mut s).is_empty());
        assert_eq!(*s.state(id(&g, "c")), State::Skipped);
        assert_eq!(*s.state(id(&g, "d")), State::Failed);
    }

    #[test]
    fn keep_going_runs_what_does_not_depend_on_a_failure() {
        let g = graph(CHAIN).unwrap();
        let mut s = sched(&g, big(), true, 1);
        assert_eq!(decide(&g, &mut s, &[], &[]), ["Ready(()) a", "Ready(()) d"]);
        assert_eq!(launch(&g, &mut s), ["start a"]);
        assert!(!s.ended(id(&g, "a"), End::Failed));
        assert!(!s.stopping());
        assert_eq!(decide(&g, &mut s, &[], &[]), ["skip b (a)", "skip c (b)"]);
        assert_eq!(launch(&g, &mut s), ["start d"]);
    }

    #[test]
    fn a_node_that_cannot_be_planned_fails_and_stops_the_rest() {
        let g = graph(CHAIN).unwrap();
        let mut s = sched(&g, big(), false, 4);
        // `d` is never assessed: the run stopped at `a`.
        assert_eq!(
            decide(&g, &mut s, &[], &["a"]),
            ["Failed a", "skip b (a)", "skip c (b)"]
        );
        assert!(s.stopping());
        assert!(launch(&g, &mut s).is_empty());
        assert_eq!(names(&g, &s.unsettled().collect::<Vec<_>>()), ["d"]);
    }

    #[test]
    fn targets_select_their_upstream_nodes_only() {
        let g = graph(CHAIN).unwrap();
        let policy = Policy {
            keep_going: false,
            step_cap: 4,
        };
        let mut s: Scheduler<()> = Scheduler::new(&g, &[id(&g, "b")], big(), policy);
        assert!(!s.selected(id(&g, "c")) && !s.selected(id(&g, "d")));
        assert_eq!(decide(&g, &mut s, &[], &[]), ["Ready(()) a"]);
        launch(&g, &mut s);
        s.ended(id(&g, "a"), End::Done);
        assert_eq!(decide(&g, &mut s, &[], &[]), ["Ready(()) b"]);
    }

    const WIDE: &str = r#"
version: 1
name: wide
steps:
  - id: big
    kind: test
    resources: {cpus: 3, memory: 2GiB}
  - id: gpu
    kind: test
    foreach: [x, y, z]
    resources: {gpus: 1}
  - id: pair
    kind: test
    resources: {gpus: 2}
  - id: mem
    kind: test
    resources: {memory: 1GiB}
  - id: small
    kind: test
"#;

    #[test]
    fn steps_start_within_cpus_memory_and_gpus() {
        let g = graph(WIDE).unwrap();
        let mut s = sched(
            &g,
            Pool::new(5, 2 * GIB, vec!["0".into(), "1".into()]),
            false,
            8,
        );
        decide(&g, &mut s, &[], &[]);
        // `big` takes three CPUs and all memory; each `gpu` item gets a GPU
        // of its own while there is one; the last CPU goes to the second.
        assert_eq!(
            launch(&g, &mut s),
            ["start big", "start gpu[x] on 0", "start gpu[y] on 1"]
        );
        assert!(s.next_launch().is_none(), "a pass ended");
        s.ended(id(&g, "gpu[x]"), End::Done);
        assert_eq!(launch(&g, &mut s), ["start gpu[z] on 0"]);
        s.ended(id(&g, "big"), End::Done);
        // `pair` waits for two GPUs; memory and CPUs are free again.
        assert_eq!(launch(&g, &mut s), ["start mem", "start small"]);
        s.ended(id(&g, "gpu[y]"), End::Done);
        assert!(launch(&g, &mut s).is_empty());
        s.ended(id(&g, "gpu[z]"), End::Done);
        assert_eq!(launch(&g, &mut s), ["start pair on 1,0"]);
    }

    #[test]
    fn a_step_asking_for_more_cpus_than_there_are_runs_alone() {
        let g = graph(
            r#"
version: 1
name: cpus
steps:
  - id: huge
    kind: test
    resources: {cpus: 64}
  - id: small
    kind: test
"#,
        )
        .unwrap();
        let mut s = sched(&g, Pool::new(2, GIB, vec![]), false, 8);
        decide(&g, &mut s, &[], &[]);
        assert_eq!(launch(&g, &mut s), ["start huge"]);
        s.ended(id(&g, "huge"), End::Done);
        assert_eq!(launch(&g, &mut s), ["start small"]);
    }

    #[test]
    fn the_executor_caps_steps_at_once() {
        let g = graph(WIDE).unwrap();
        let mut s = sched(&g, Pool::elsewhere(), false, 2);
        decide(&g, &mut s, &[], &[]);
        // Elsewhere, nothing is asked of this machine and no GPU id handed out.
        assert_eq!(launch(&g, &mut s), ["start big", "start gpu[x]"]);
        s.ended(id(&g, "big"), End::Done);
        assert_eq!(launch(&g, &mut s), ["start gpu[y]"]);
    }

    #[test]
    fn impossible_requests_fail_with_the_reason() {
        let g = graph(WIDE).unwrap();
        let mut s = sched(&g, Pool::new(4, GIB, vec!["0".into()]), true, 8);
        decide(&g, &mut s, &[], &[]);
        assert_eq!(
            launch(&g, &mut s),
            [
                "impossible big: needs 2.0 GiB of memory; this machine has 1.0 GiB",
                "start gpu[x] on 0",
                "impossible pair: needs 2 GPU(s); this machine has 1",
                "start mem",
                "start small",
            ]
        );
        assert_eq!(*s.state(id(&g, "pair")), State::Failed);
        // Without keep-going the first one stops the run and ends the pass.
        let mut s = sched(&g, Pool::new(4, GIB, vec!["0".into()]), false, 8);
        decide(&g, &mut s, &[], &[]);
        assert_eq!(
            launch(&g, &mut s),
            ["impossible big: needs 2.0 GiB of memory; this machine has 1.0 GiB"]
        );
        assert!(s.stopping() && launch(&g, &mut s).is_empty());
    }

    #[test]
    fn a_step_that_fails_to_start_gives_back_its_gpus_and_the_pass_goes_on() {
        let g = graph(WIDE).unwrap();
        let mut s = sched(
            &g,
            Pool::new(8, 8 * GIB, vec!["0".into(), "1".into()]),
            false,
            8,
        );
        decide(&g, &mut s, &[], &[]);
        let Some(Launch::Start { node, gpus, .. }) = s.next_launch() else {
            panic!("big starts")
        };
        assert!(gpus.is_empty());
        assert_eq!(node, id(&g, "big"));
        let Some(Launch::Start { node, gpus, .. }) = s.next_launch() else {
            panic!("gpu[x] starts")
        };
        assert_eq!(gpus, ["0"]);
        s.start_failed(node);
        assert!(s.stopping());
        // The pass goes on with the GPU back; the next pass does not start.
        assert_eq!(
            launch(&g, &mut s),
            [
                "start gpu[y] on 1",
                "start gpu[z] on 0",
                "start mem",
                "start small"
            ]
        );
        assert!(launch(&g, &mut s).is_empty());
        assert_eq!(s.running(), 5);
    }

    #[test]
    fn cancel_marks_the_chosen_running_steps_and_drain_starts_nothing_new() {
        let g = graph(WIDE).unwrap();
        let mut s = sched(&g, Pool::elsewhere(), false, 3);
        decide(&g, &mut s, &[], &[]);
        assert_eq!(
            launch(&g, &mut s),
            ["start big", "start gpu[x]", "start gpu[y]"]
        );
        let picked = s.cancel(|n| g[n].base == "gpu");
        assert_eq!(names(&g, &picked), ["gpu[x]", "gpu[y]"]);
        assert!(s.cancel_requested(id(&g, "gpu[y]")) && !s.cancel_requested(id(&g, "big")));
        // Cancelled steps fail without stopping the run.
        assert!(!s.ended(id(&g, "gpu[x]"), End::Cancelled));
        assert!(!s.stopping());
        assert_eq!(launch(&g, &mut s), ["start gpu[z]"]);
        s.drain();
        assert!(s.stopping());
        s.ended(id(&g, "big"), End::Done);
        assert!(launch(&g, &mut s).is_empty());
        assert_eq!(names(&g, &s.stop()), ["gpu[y]", "gpu[z]"]);
        s.ended(id(&g, "gpu[y]"), End::Cancelled);
        s.ended(id(&g, "gpu[z]"), End::Lost);
        assert_eq!(s.running(), 0);
        assert_eq!(
            names(&g, &s.unsettled().collect::<Vec<_>>()),
            ["pair", "mem", "small"]
        );
    }
}
