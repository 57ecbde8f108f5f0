//! `kind: search`: the DeMix merge-search. Mixtures are sampled as RegMix does, each
//! proxy is the components merged in memory by the mixture's weights and evaluated
//! on the targets' validation data, and a predictor picks each next round. With
//! `proxy: trained` it is the RegMix/CLIMB baseline: a small model per mixture.

use std::collections::BTreeMap;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{CountCheck, Expected, Kind, Plan, Runner};
#[cfg(feature = "torch")]
use demix_core::kind::{RunCtx, StepError};
use demix_core::manifest::Diags;
use demix_core::manifest::template::Split;
use demix_mix::search::Objective;
use demix_spec::evaluate::{EvalConfig, PROXY_MAX_TOKENS, PROXY_SEQ_LEN};
use demix_spec::train::TrainConfig;

use crate::fields::{check_ref_or_path, check_step_ref, dataset_names, report_problems, span_of};

/// What a proxy of a mixture is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyKind {
    /// DeMix: the components merged by the mixture's weights.
    #[default]
    Merged,
    /// RegMix/CLIMB: a small model trained on the mixture.
    Trained,
}

/// What a search minimises over mixtures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveChoice {
    /// The paper's: each mixture's percentile rank per target, averaged.
    MeanRank,
    /// The targets' mean loss: each weighs as much as it moves. The default,
    /// for its noise ceiling (see docs/science.md).
    #[default]
    MeanLoss,
    /// The mean of the losses, each divided by its spread over the first,
    /// random round of proxies.
    Standardized,
    /// `sum_t objective_weights[t] * loss_t`.
    WeightedLoss,
}

impl ObjectiveChoice {
    pub fn name(self) -> &'static str {
        match self {
            ObjectiveChoice::MeanRank => "mean_rank",
            ObjectiveChoice::MeanLoss => "mean_loss",
            ObjectiveChoice::Standardized => "standardized",
            ObjectiveChoice::WeightedLoss => "weighted_loss",
        }
    }

    /// The objective, with its weights for `weighted_loss` (default: equal).
    pub fn objective(self, weights: &Option<Vec<f64>>, targets: usize) -> Objective {
        Objective::named(self.name(), weights.as_deref(), targets).expect("every choice is named")
    }
}

/// `objective_weights` go with `weighted_loss`, one finite weight >= 0 per target.
pub fn check_objective_weights(
    d: &mut Diags,
    body: &Node,
    objective: ObjectiveChoice,
    weights: &Option<Vec<f64>>,
    targets: usize,
) {
    let Some(w) = weights else { return };
    let at = span_of(body, "objective_weights");
    if objective != ObjectiveChoice::WeightedLoss {
        d.error(
            &at,
            "`objective_weights` go with `objective: weighted_loss`",
            "objective_weights",
        );
    } else if w.len() != targets || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
        d.error(
            &at,
            format!("one finite weight >= 0 per target ({targets})"),
            "objective_weights",
        );
    }
}

/// An external evaluator of merged proxies.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evaluator {
    /// The command, an argv list run in the manifest's folder (no shell
    /// unless it names one).
    pub run: Vec<String>,
    /// Files or folders it reads, relative to the manifest: their content is
    /// part of the step's key, so a changed script reruns the search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// Fields of a `search` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct SearchFields {
    /// `merged` (DeMix: proxies are the components merged by the mixture's
    /// weights) or `trained` (RegMix/CLIMB: a small model trained per mixture).
    #[serde(default)]
    pub proxy: ProxyKind,
    /// The component checkpoints, one per candidate: `${steps.ID[*].checkpoint}`
    /// (merged proxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<String>,
    /// Score each merged proxy with a program of your own instead of demix's
    /// evaluation (lm-evaluation-harness, a script): the proxy is written as a
    /// Hugging Face folder, the command runs with `DEMIX_PROXY_CHECKPOINT`,
    /// `DEMIX_PROXY_METRICS` and `DEMIX_PROXY_TARGETS` set, and each target's
    /// `datasets.TARGET.loss` is read from the metrics file it writes
    /// (docs/metrics.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluator: Option<Evaluator>,
    /// Trained proxies start from this checkpoint: `${steps.ID.checkpoint}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Trained proxies mix this dataset in at share `beta`, as the components do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<String>,
    /// The general share (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// How each trained proxy is trained: its token budget (for a like-for-like
    /// comparison, the components' total budget divided by the proxies), batch
    /// and optimizer. Device and threads are the step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainConfig>,
    /// The candidate datasets, in the components' order. Their token counts are the
    /// sampler's prior.
    pub candidates: Vec<String>,
    /// Datasets whose validation loss scores each proxy.
    pub targets: Vec<String>,
    /// Proxies evaluated per round (paper: 64, 32, 16).
    #[serde(default = "default_rounds")]
    pub rounds: Vec<usize>,
    /// The chosen mixture is the average of the top-k predicted (paper: 128).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Mixtures kept in the candidate pool (paper: 200,000 of 512,000 draws).
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// Draws from which the pool is kept (default: 2.5 x pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draws: Option<usize>,
    /// What the search minimises (default `mean_loss`).
    #[serde(default)]
    pub objective: ObjectiveChoice,
    /// Weights of `weighted_loss`, one per target (default: equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_weights: Option<Vec<f64>>,
    /// Seeds the pool, the first round and the cross-validation.
    #[serde(default)]
    pub seed: u64,
    /// Merged proxies evaluated at once (default: one per visible GPU, else 1);
    /// each worker holds its own merged model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Keep the components on the evaluation device and merge there (default:
    /// on CUDA yes, on the CPU stream merges from the files instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident: Option<bool>,
    /// How each proxy is scored on the targets (default 16,384 tokens in
    /// windows of 256).
    #[serde(flatten)]
    pub eval: EvalConfig,
}

fn default_rounds() -> Vec<usize> {
    vec![64, 32, 16]
}
fn default_top_k() -> usize {
    128
}
fn default_pool() -> usize {
    20_000
}

pub struct Search;

impl Kind for Search {
    const NAME: &'static str = "search";
    // 2: sampled evaluation, predictors chosen by cross-validation, noise per target.
    const VERSION: u32 = 2;
    const SUMMARY: &'static str = "searches mixture weights on merged proxies (RegMix sampling, rounds, a predictor), chooses a mixture";
    type Fields = SearchFields;
    type Params = SearchFields;

    fn plan(&self, mut f: SearchFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let mut paths = Vec::new();
        match f.proxy {
            ProxyKind::Merged => check_merged(&f, body, d),
            ProxyKind::Trained => check_trained(&f, body, d, &mut paths),
        }
        check_evaluator(&f, body, d, &mut paths);
        check_rounds(&f, body, d);
        check_objective_weights(d, body, f.objective, &f.objective_weights, f.targets.len());
        report_problems(d, body, f.eval.problems());
        f.eval = f.eval.with_defaults(PROXY_MAX_TOKENS, PROXY_SEQ_LEN);
        let mut datasets = dataset_names(body, "candidates", &f.candidates, Split::Train);
        datasets.extend(dataset_names(
            body,
            "targets",
            &f.targets,
            Split::Validation,
        ));
        if let Some(g) = &f.general {
            datasets.push((
                Spanned::new(span_of(body, "general"), g.clone()),
                Split::Train,
            ));
        }
        let counts = f
            .components
            .iter()
            .map(|c| CountCheck {
                inputs: vec![c.clone()],
                expected: Expected::Number(f.candidates.len(), "candidates".into()),
                what: "components".into(),
                span: span_of(body, "components"),
            })
            .collect();
        Some(Plan {
            paths,
            outputs: BTreeMap::from([
                ("result".to_string(), "search.json".to_string()),
                ("mixture".to_string(), "mixture.json".to_string()),
            ]),
            datasets,
            counts,
            // Trained proxies train data parallel with `resources.ranks`.
            data_parallel: f.proxy == ProxyKind::Trained,
            ..Plan::new(&f)
        })
    }

    fn runner(&self, _: &SearchFields) -> Runner {
        Runner::Worker
    }

    #[cfg(feature = "torch")]
    fn run(&self, f: SearchFields, ctx: &RunCtx) -> Result<(), StepError> {
        run::search(f, ctx)
    }
}

fn check_merged(f: &SearchFields, body: &Node, d: &mut Diags) {
    match &f.components {
        Some(c) => check_step_ref(d, span_of(body, "components"), "components", c, true),
        None => d.error(
            body.span(),
            "a merge-search needs `components: ${steps.ID[*].checkpoint}`",
            "search",
        ),
    }
    for k in ["base", "general", "beta", "train"] {
        if body.as_mapping().and_then(|m| m.get_node(k)).is_some() {
            d.error(
                &span_of(body, k),
                format!("`{k}` is for `proxy: trained`; merged proxies are made of the components"),
                k,
            );
        }
    }
}

/// An external evaluator scores merged proxies; its files are inputs.
fn check_evaluator(f: &SearchFields, body: &Node, d: &mut Diags, paths: &mut Vec<Spanned<String>>) {
    let Some(e) = &f.evaluator else { return };
    let at = span_of(body, "evaluator");
    if f.proxy != ProxyKind::Merged {
        d.error(
            &at,
            "`evaluator` scores merged proxies; trained proxies are scored by demix",
            "evaluator",
        );
    }
    if e.run.is_empty() {
        d.error(
            &at,
            "`evaluator.run` is the command: an argv list, not empty",
            "evaluator",
        );
    }
    for file in &e.files {
        if file.contains("${") {
            d.error(
                &at,
                format!(
                    "`evaluator.files` are paths relative to the manifest, not references: `{file}`"
                ),
                "evaluator",
            );
        } else {
            paths.push(Spanned::new(at, file.clone()));
        }
    }
}

fn check_trained(f: &SearchFields, body: &Node, d: &mut Diags, paths: &mut Vec<Spanned<String>>) {
    if f.components.is_some() {
        d.error(
            &span_of(body, "components"),
            "`proxy: trained` trains its proxies from `base`; it merges no components",
            "components",
        );
    }
    match &f.base {
        Some(b) => check_ref_or_path(d, body, "base", b, paths),
        None => d.error(
            body.span(),
            "`proxy: trained` needs `base: ${steps.ID.checkpoint}` to train proxies from",
            "search",
        ),
    }
    match &f.train {
        Some(t) => {
            for p in t.problems() {
                d.error(&span_of(body, "train"), format!("`train`: {p}"), "train");
            }
        }
        None => d.error(
            body.span(),
            "`proxy: trained` needs `train: {tokens, batch_size, seq_len}`",
            "search",
        ),
    }
    if let Some(g) = &f.general
        && f.candidates.contains(g)
    {
        d.error(
            &span_of(body, "general"),
            format!("`{g}` is a candidate too; the general data is mixed in at share `beta`, not searched over"),
            "general",
        );
    }
    for k in ["workers", "resident"] {
        if body.as_mapping().and_then(|m| m.get_node(k)).is_some() {
            d.error(
                &span_of(body, k),
                format!("`{k}` is for merged proxies; trained proxies train one at a time"),
                k,
            );
        }
    }
    if let Some(b) = f.beta
        && (!(0.0..1.0).contains(&b) || f.general.is_none())
    {
        d.error(
            &span_of(body, "beta"),
            "`beta` is the share of `general`, in [0, 1)",
            "beta",
        );
    }
}

fn check_rounds(f: &SearchFields, body: &Node, d: &mut Diags) {
    if f.candidates.len() < 2 {
        d.error(
            &span_of(body, "candidates"),
            "a search needs at least two candidates",
            "candidates",
        );
    }
    if f.targets.is_empty() {
        d.error(
            &span_of(body, "targets"),
            "a search needs at least one target dataset",
            "targets",
        );
    }
    if f.rounds.is_empty() || f.rounds.contains(&0) {
        d.error(
            &span_of(body, "rounds"),
            "`rounds` are positive proxy counts, e.g. [64, 32, 16]",
            "rounds",
        );
    }
    if f.top_k == 0 || f.pool == 0 {
        d.error(
            body.span(),
            "`top_k` and `pool` must be more than 0",
            "search",
        );
    }
    let total: usize = f.rounds.iter().sum();
    if total > f.pool {
        d.error(
            &span_of(body, "pool"),
            format!(
                "the pool ({}) is smaller than the proxies to evaluate ({total})",
                f.pool
            ),
            "pool",
        );
    }
}

#[cfg(feature = "torch")]
mod run {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use demix_core::kind::{Progress, RunCtx, StepError};
    use demix_core::manifest::template::Split;
    use demix_mix::sampler::{SamplerConfig, sample};
    use demix_mix::search::{Search, SearchConfig, Target};
    use demix_ml as ml;

    use super::{ProxyKind, SearchFields};
    use crate::ml_run::{
        log_line, ml_err, one_path, shard, token_counts, tokenizer_hash, validation_shards,
    };
    use crate::proxies::{
        ExternalEvaluator, Journal, Proxied, ProxyWorker, TrainedEvaluator, eval_parallel,
        proxy_workers, target_noise,
    };

    enum Proxy<'a> {
        Merged(Vec<ProxyWorker>),
        Trained(Box<TrainedEvaluator<'a>>),
        External(Box<ExternalEvaluator<'a>>),
    }

    /// The proxies of the search, and the sampler's prior (token counts).
    fn proxies<'a>(
        f: &SearchFields,
        ctx: &'a RunCtx<'a>,
        scratch: PathBuf,
    ) -> Result<(Proxy<'a>, Vec<f64>), StepError> {
        if f.proxy == ProxyKind::Merged {
            let comps: Vec<PathBuf> = ctx
                .input(f.components.as_deref().unwrap_or_default())?
                .to_vec();
            if let Some(e) = &f.evaluator {
                let tok_path = comps[0].join("tokenizer.json");
                let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
                let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
                let counts = token_counts(ctx, &f.candidates, &tok, &tok_hash)?;
                let ext = ExternalEvaluator::new(ctx, &comps, e, &f.targets, scratch)?;
                return Ok((Proxy::External(Box::new(ext)), counts));
            }
            let workers = proxy_workers(
                ctx,
                &comps,
                &f.targets,
                f.eval.clone(),
                f.workers,
                f.resident,
            )?;
            let tok_hash = tokenizer_hash(ctx, None, &comps[0].join("tokenizer.json"))?;
            let counts = token_counts(ctx, &f.candidates, &workers[0].tok, &tok_hash)?;
            return Ok((Proxy::Merged(workers), counts));
        }
        let base = one_path(ctx, f.base.as_deref().unwrap_or_default())?.to_path_buf();
        let tok_path = base.join("tokenizer.json");
        let tok = ml::tokenizer::Tok::load(&tok_path).map_err(ml_err)?;
        let tok_hash = tokenizer_hash(ctx, None, &tok_path)?;
        let counts = token_counts(ctx, &f.candidates, &tok, &tok_hash)?;
        let mut shards = BTreeMap::new();
        for n in f.candidates.iter().chain(f.general.iter()) {
            shards.insert(n.clone(), shard(ctx, n, Split::Train, &tok, &tok_hash)?);
        }
        let mut train = f
            .train
            .clone()
            .ok_or_else(|| StepError::Failed("`proxy: trained` needs `train`".into()))?;
        train.device = f.eval.device;
        train.threads = f.eval.threads;
        let e = TrainedEvaluator {
            ctx,
            base,
            tok_path,
            shards,
            candidates: f.candidates.clone(),
            general: f.general.clone(),
            beta: if f.general.is_some() {
                f.beta.unwrap_or(0.5)
            } else {
                0.0
            },
            train,
            spec: f.eval.clone(),
            paths: validation_shards(ctx, &f.targets, &tok, &tok_hash)?,
            targets: f.targets.clone(),
            scratch,
        };
        Ok((Proxy::Trained(Box::new(e)), counts))
    }

    /// The merge-search (or, with `proxy: trained`, the RegMix baseline): mixtures
    /// sampled as RegMix does, a proxy per mixture evaluated on the targets'
    /// validation shards, a predictor choosing each next round.
    pub fn search(f: SearchFields, ctx: &RunCtx) -> Result<(), StepError> {
        let scratch = ctx.store.root.join("resume").join(&ctx.spec.key);
        let mut journal = Journal::open(&scratch)?;
        if !journal.scored.is_empty() {
            log_line(
                ctx,
                &format!(
                    "search: resuming with {} proxies scored by an interrupted run",
                    journal.scored.len()
                ),
            );
        }
        let (mut proxy, counts) = proxies(&f, ctx, scratch.clone())?;
        let total: usize = f.rounds.iter().sum();
        let mut search = new_search(&f, &counts)?;
        let mut done = 0usize;
        let mut tokens_evaluated = 0u64;
        let mut round1: Vec<Proxied> = Vec::new();
        // Proxies scored by this process, for its rate (not those a journal
        // of an interrupted attempt restored).
        let (started, mut scored_here) = (std::time::Instant::now(), 0usize);
        let rounds = f.rounds.len();
        while let Some(batch) = search.next_batch().map_err(StepError::library)? {
            let mixtures = batch.mixtures.clone();
            let round = batch.round;
            let best = search
                .best_so_far()
                .map(|(name, v)| format!(", best {name} {v:.4}"))
                .unwrap_or_default();
            let mut tick = |fresh: bool| {
                done += 1;
                scored_here += usize::from(fresh);
                let mins = started.elapsed().as_secs_f64() / 60.0;
                let rate = if scored_here > 0 && mins > 0.0 {
                    let per_min = scored_here as f64 / mins;
                    let eta =
                        demix_core::outcome::human_duration((total - done) as f64 / per_min * 60.0);
                    format!(", {per_min:.1} proxies/min, ETA {eta}")
                } else {
                    String::new()
                };
                (ctx.progress)(Progress {
                    done: done as u64,
                    total: Some(total as u64),
                    unit: "proxies".into(),
                    message: Some(format!("round {round}/{rounds}{rate}{best}")),
                });
            };
            // What an interrupted run of this step scored already is not scored again.
            let todo: Vec<Vec<f64>> = mixtures
                .iter()
                .filter(|w| journal.get(w).is_none())
                .cloned()
                .collect();
            for _ in 0..mixtures.len() - todo.len() {
                tick(false);
            }
            score(&mut proxy, &mut journal, ctx, &todo, &mut tick)?;
            let scores: Vec<Proxied> = mixtures
                .iter()
                .map(|w| journal.get(w).cloned().expect("every mixture was scored"))
                .collect();
            tokens_evaluated += scores.iter().map(Proxied::tokens).sum::<u64>();
            if round == 1 {
                round1 = scores.clone();
            }
            search
                .record(scores.into_iter().map(|p| p.scores).collect())
                .map_err(StepError::library)?;
        }
        write_result(search, &f, ctx, &round1, tokens_evaluated)?;
        // The journal has served; a failed search keeps it for its next attempt.
        if ml::dist::leads() {
            let _ = demix_core::store::remove_tree(&scratch);
        }
        Ok(())
    }

    /// The search over a pool sampled as RegMix does, with the token counts as prior.
    fn new_search(f: &SearchFields, counts: &[f64]) -> Result<Search, StepError> {
        let sampler = SamplerConfig {
            keep: f.pool,
            draws: f.draws.unwrap_or(f.pool * 5 / 2).max(f.pool),
            seed: f.seed,
            ..Default::default()
        };
        let pool = sample(counts, &sampler)
            .map_err(|e| StepError::Failed(format!("sampling mixtures: {e}")))?;
        let mut config = SearchConfig::new(f.targets.iter().map(|t| Target::loss(t)).collect());
        config.rounds = f.rounds.clone();
        config.top_k = f.top_k;
        config.seed = f.seed;
        config.objective = f.objective.objective(&f.objective_weights, f.targets.len());
        Search::new(config, pool.to_weights()).map_err(StepError::library)
    }

    /// Scores the batch's mixtures not yet in the journal, journalling each.
    fn score(
        proxy: &mut Proxy,
        journal: &mut Journal,
        ctx: &RunCtx,
        todo: &[Vec<f64>],
        tick: &mut dyn FnMut(bool),
    ) -> Result<(), StepError> {
        match proxy {
            Proxy::Merged(workers) => {
                eval_parallel(workers, todo, ctx.cancel, &mut |i, p| {
                    journal.add(&todo[i], p)?;
                    tick(true);
                    Ok(())
                })?;
            }
            Proxy::Trained(e) => {
                for w in todo {
                    let p = e.eval(w)?;
                    journal.add(w, &p)?;
                    tick(true);
                }
            }
            Proxy::External(e) => {
                for w in todo {
                    let p = e.eval(w)?;
                    journal.add(w, &p)?;
                    tick(true);
                }
            }
        }
        Ok(())
    }

    /// `search.json` (the result with its candidates, noise and cost) and
    /// `mixture.json` (the chosen weights by candidate).
    fn write_result(
        search: Search,
        f: &SearchFields,
        ctx: &RunCtx,
        round1: &[Proxied],
        tokens_evaluated: u64,
    ) -> Result<(), StepError> {
        let mut result = search.finish().map_err(StepError::library)?;
        result.candidates = f.candidates.clone();
        result.target_noise = target_noise(&f.targets, round1);
        result.cost.tokens_evaluated = tokens_evaluated;
        if let Some(t) = &f.train {
            result.cost.tokens_trained = (result.cost.proxies_evaluated as u64) * t.tokens;
        }
        let mixture: BTreeMap<&str, f64> = f
            .candidates
            .iter()
            .map(String::as_str)
            .zip(result.chosen.iter().copied())
            .collect();
        demix_core::kind::write_json(ctx, "search.json", &result)?;
        demix_core::kind::write_json(ctx, "mixture.json", &mixture)?;
        Ok(())
    }
}
