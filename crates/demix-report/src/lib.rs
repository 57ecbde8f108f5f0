//! The run report: one self-contained HTML file (inline CSS and SVG, no scripts,
//! nothing fetched) and a short Markdown summary, from the outputs of a DeMix
//! workflow's steps. The `report` step kind (`demix_kinds::report`) gathers
//! the inputs; this module reads, checks and renders them.
//!
//! Each section is present only when its input was given. The sections are
//! built from [`Report`] through small view functions, so a new one is a view
//! plus a call to one of the [`svg`] plots.

pub mod data;
mod html;
pub mod markdown;
pub mod svg;

use demix_mix::search::SearchResult;
use demix_mix::stats::{Direction, spearman};
use demix_mix::validate::Validation;
use demix_mix::verdict::Verdict;
use demix_spec::tokenizer::TokenizerSample;

pub use data::{Evaluation, LineageSummary, Mixture, ReadError, Training};

/// Why the report's inputs do not fit together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// `candidates` does not name one dataset per weight of the search's mixture.
    #[error(
        "`candidates` names {} datasets ({}) but the search result {file} mixes {mixes}",
        candidates.len(),
        candidates.join(", ")
    )]
    Candidates {
        candidates: Vec<String>,
        /// The search result's file.
        file: String,
        mixes: usize,
    },
}

/// One labelled input: what the manifest called it and where it came from.
#[derive(Clone, Debug)]
pub struct Labeled<T> {
    pub label: String,
    /// The file it was read from, for messages.
    pub file: String,
    /// The step that produced it, when a step did.
    pub step: Option<String>,
    pub data: T,
}

/// Everything a report shows.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub title: String,
    /// The workflow (manifest name) and step that made the report.
    pub workflow: String,
    pub step: String,
    pub key: String,
    /// Names of the mixture's candidates, in the search's column order.
    pub candidates: Option<Vec<String>>,
    pub search: Option<Labeled<SearchResult>>,
    pub training: Vec<Labeled<Training>>,
    pub evaluations: Vec<Labeled<Evaluation>>,
    pub mixtures: Vec<Labeled<Mixture>>,
    /// A validate step's result: proxies against trained references.
    pub validation: Option<Labeled<demix_mix::validate::Validation>>,
    pub lineage: Option<LineageSummary>,
    /// The chosen mixture's final models against the baselines', seed by seed.
    pub verdicts: Vec<Verdict>,
    /// What the tokenizer was trained on.
    pub tokenizer: Option<Labeled<TokenizerSample>>,
    /// The search's components' training runs, found through the search's
    /// lineage (its `components` input): their tokens are DeMix's real cost.
    pub components: Vec<Labeled<Training>>,
}

/// A table both renderers draw: header cells (text, right-aligned) and rows.
#[derive(Clone, Debug, PartialEq)]
pub struct TableView {
    pub head: Vec<(String, bool)>,
    pub rows: Vec<Vec<String>>,
}

fn opt_num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| fmt_num(v, decimals))
}

/// An interval as `[lo, hi]`.
fn interval(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo, hi) {
        (Some(l), Some(h)) => format!("[{}, {}]", fmt_num(l, 4), fmt_num(h, 4)),
        _ => "–".into(),
    }
}

fn outcome_word(o: demix_mix::verdict::Outcome) -> &'static str {
    use demix_mix::verdict::Outcome;
    match o {
        Outcome::Better => "better",
        Outcome::Worse => "worse",
        Outcome::NoDifference => "no difference",
        Outcome::Undetermined => "one seed: no verdict",
    }
}

/// Per target and on the objective: each verdict's paired difference.
pub fn verdict_table(verdicts: &[Verdict]) -> Option<TableView> {
    if verdicts.is_empty() {
        return None;
    }
    let head = [
        ("comparison", false),
        ("target", false),
        ("seeds", true),
        ("difference (chosen − baseline)", true),
        ("90% interval", true),
        ("outcome", false),
    ]
    .map(|(h, r)| (h.to_string(), r))
    .to_vec();
    let mut rows = Vec::new();
    for v in verdicts {
        let name = format!("{} vs {}", v.chosen, v.baseline);
        rows.push(vec![
            name.clone(),
            format!("objective ({})", v.objective),
            v.seeds.to_string(),
            fmt_num(v.difference.mean, 4),
            interval(v.difference.lo, v.difference.hi),
            outcome_word(v.outcome).into(),
        ]);
        for t in &v.targets {
            rows.push(vec![
                name.clone(),
                format!("{} ({})", t.target, direction_word(t.direction)),
                v.seeds.to_string(),
                fmt_num(t.difference.mean, 4),
                interval(t.difference.lo, t.difference.hi),
                outcome_word(t.outcome).into(),
            ]);
        }
    }
    Some(TableView { head, rows })
}

/// Every objective side by side: its noise ceiling and each predictor's rho
/// on it, also as a fraction of the ceiling.
pub fn objectives_table(v: &Validation) -> TableView {
    let mut head = vec![
        ("objective".to_string(), false),
        ("replicate ρ".into(), true),
        ("ceiling".into(), true),
        ("signal/noise".into(), true),
    ];
    if let Some(o) = v.objectives.first() {
        for p in &o.predictors {
            head.push((format!("{} ρ (of ceiling)", p.name), true));
        }
    }
    let rows = v
        .objectives
        .iter()
        .map(|o| {
            let mut row = vec![
                o.objective.name().to_string(),
                opt_num(o.ceiling.as_ref().map(|c| c.replicate_rho), 3),
                opt_num(o.ceiling.as_ref().map(|c| c.ceiling), 3),
                opt_num(o.noise.as_ref().map(|n| n.signal_to_noise), 2),
            ];
            for p in &o.predictors {
                row.push(match p.of_ceiling {
                    Some(f) => format!("{} ({:.0}%)", opt_num(p.spearman, 3), f * 100.0),
                    None => opt_num(p.spearman, 3),
                });
            }
            row
        })
        .collect();
    TableView { head, rows }
}

/// Per target, with replicas: signal across mixtures against seed noise.
pub fn seed_noise_table(v: &Validation) -> Option<TableView> {
    if v.noise.is_empty() {
        return None;
    }
    let head = [
        ("target", false),
        ("spread across mixtures", true),
        ("seed noise", true),
        ("signal/noise", true),
        ("replicate ρ", true),
        ("ceiling", true),
        ("", false),
    ]
    .map(|(h, r)| (h.to_string(), r))
    .to_vec();
    let rows = v
        .noise
        .iter()
        .map(|n| {
            vec![
                n.target.clone(),
                fmt_num(n.spread, 4),
                fmt_num(n.noise, 4),
                fmt_num(n.signal_to_noise, 2),
                opt_num(n.ceiling.as_ref().map(|c| c.replicate_rho), 3),
                opt_num(n.ceiling.as_ref().map(|c| c.ceiling), 3),
                if n.flagged {
                    "noise-dominated".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    Some(TableView { head, rows })
}

impl Report {
    /// Every verdict this report holds: its own, then the validation's.
    pub fn all_verdicts(&self) -> Vec<&Verdict> {
        self.verdicts
            .iter()
            .chain(self.validation.iter().flat_map(|v| v.data.verdicts.iter()))
            .collect()
    }

    /// Bytes the tokenizer read per dataset.
    pub fn tokenizer_table(&self) -> Option<TableView> {
        let t = &self.tokenizer.as_ref()?.data;
        let head = [
            ("dataset", false),
            ("share", true),
            ("bytes used", true),
            ("of bytes", true),
            ("documents used", true),
            ("of documents", true),
        ]
        .map(|(h, r)| (h.to_string(), r))
        .to_vec();
        let rows = t
            .datasets
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    fmt_num(d.share, 3),
                    d.bytes_used.to_string(),
                    d.bytes_available.to_string(),
                    d.documents_used.to_string(),
                    d.documents_available.to_string(),
                ]
            })
            .collect();
        Some(TableView { head, rows })
    }

    /// Per search target: the spread between proxies against the noise of
    /// scoring them.
    pub fn search_noise_table(&self) -> Option<TableView> {
        let s = &self.search.as_ref()?.data;
        if s.target_noise.is_empty() {
            return None;
        }
        let head = [
            ("target", false),
            ("spread between proxies", true),
            ("scoring noise (paired SE)", true),
            ("spread/noise", true),
        ]
        .map(|(h, r)| (h.to_string(), r))
        .to_vec();
        let rows = s
            .target_noise
            .iter()
            .map(|n| {
                vec![
                    n.target.clone(),
                    fmt_num(n.spread, 4),
                    fmt_num(n.noise, 4),
                    fmt_num(n.ratio, 1),
                ]
            })
            .collect();
        Some(TableView { head, rows })
    }
}

/// The rendered report.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub html: String,
    pub markdown: String,
}

/// The mixtures side by side: one row per candidate, one column per mixture,
/// the last column the uniform mixture.
#[derive(Clone, Debug, PartialEq)]
pub struct MixtureView {
    pub candidates: Vec<String>,
    pub columns: Vec<(String, Vec<Option<f64>>)>,
}

/// Predicted against measured scores of one search target.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetView {
    pub name: String,
    pub direction: Direction,
    /// (predicted before evaluation, measured), for proxies of rounds after the first.
    pub points: Vec<(f64, f64)>,
    /// The same points with their round: (round, predicted, measured), by round.
    pub by_round: Vec<(usize, f64, f64)>,
    pub rho: Option<f64>,
    /// The final predictor, fitted on every proxy: model and cross-validation.
    pub model: Option<String>,
    pub cv_folds: Option<usize>,
    pub cv_rmse: Option<f64>,
    pub cv_rho: Option<f64>,
    /// The final predictor's prediction for the chosen mixture.
    pub chosen_predicted: Option<f64>,
    /// Best measured score among the proxies.
    pub best_measured: Option<f64>,
}

/// A row of the evaluation table: one metric of one dataset or task.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub group: &'static str,
    pub name: String,
    pub metric: String,
    pub values: Vec<Option<f64>>,
    /// Which way is better, when the metric says.
    pub direction: Option<Direction>,
    /// Accuracies: the 95 % Wilson interval over the task's examples, per value.
    pub intervals: Vec<Option<(f64, f64)>>,
    /// Accuracies: the chance level, when the metrics record it (`chance`).
    pub chance: Option<f64>,
}

/// The 95 % Wilson score interval of a proportion `p` over `n` trials.
pub fn wilson(p: f64, n: f64) -> Option<(f64, f64)> {
    if !(n >= 1.0 && (0.0..=1.0).contains(&p)) {
        return None;
    }
    let z = 1.959_963_984_540_054_f64;
    let z2n = z * z / n;
    let centre = (p + z2n / 2.0) / (1.0 + z2n);
    let half = z / (1.0 + z2n) * (p * (1.0 - p) / n + z2n / (4.0 * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Where a component's own scores in [`ComponentView`] were measured.
#[derive(Clone, Debug, PartialEq)]
pub enum Measured {
    /// The search evaluated the one-hot mixture: a linear merge with all weight
    /// on one component is that component, so these are its own scores.
    OneHot { round: usize },
    /// No one-hot proxy: the evaluated proxy with the most weight on it.
    Closest { round: usize, weight: f64 },
}

/// The components' own per-target scores, from the search's proxies.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentView {
    /// Target names, as columns.
    pub targets: Vec<String>,
    /// (component, where measured, one score per target).
    pub rows: Vec<(String, Measured, Vec<f64>)>,
}

impl ComponentView {
    /// Per target, the row of the lowest score among the components' own
    /// (one-hot) rows, when two or more were measured.
    pub fn best(&self, t: usize) -> Option<usize> {
        let own: Vec<(usize, f64)> = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.1, Measured::OneHot { .. }))
            .map(|(i, r)| (i, r.2[t]))
            .collect();
        if own.len() < 2 {
            return None;
        }
        own.into_iter()
            .reduce(|a, b| if b.1 < a.1 { b } else { a })
            .map(|x| x.0)
    }

    pub fn one_hot(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.1, Measured::OneHot { .. }))
            .count()
    }
}

impl EvalRow {
    /// The index of the best value, when there are two or more to compare.
    pub fn best(&self) -> Option<usize> {
        let dir = self.direction?;
        let vals: Vec<(usize, f64)> = self
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .collect();
        if vals.len() < 2 {
            return None;
        }
        let better = |a: f64, b: f64| match dir {
            Direction::LowerIsBetter => b < a,
            Direction::HigherIsBetter => b > a,
        };
        let pick = vals
            .iter()
            .copied()
            .reduce(|a, b| if better(a.1, b.1) { b } else { a })?;
        // A tie has no winner.
        let ties = vals.iter().filter(|v| v.1 == pick.1).count();
        (ties == 1).then_some(pick.0)
    }
}

/// Which way a metric is better, by its name.
pub fn metric_direction(metric: &str) -> Option<Direction> {
    match metric {
        "loss" | "perplexity" | "bits_per_byte" | "mean_loss" => Some(Direction::LowerIsBetter),
        "accuracy" | "accuracy_norm" | "exact_match" | "answer_logprob" => {
            Some(Direction::HigherIsBetter)
        }
        _ => None,
    }
}

/// Metrics shown first, in this order; other numeric fields follow, counts are left out.
const DATASET_METRICS: &[&str] = &["loss", "bits_per_byte", "perplexity"];
const TASK_METRICS: &[&str] = &["accuracy", "accuracy_norm", "exact_match", "answer_logprob"];
const COUNTS: &[&str] = &["tokens", "documents", "bytes", "examples", "chance"];

/// How many proxies the tables list.
pub const PROXY_ROWS: usize = 25;
/// How many upstream steps the lineage table lists.
pub const ANCESTOR_ROWS: usize = 60;

impl Report {
    /// Checks the inputs agree with each other and renders both files.
    pub fn render(&self) -> Result<Rendered, ReportError> {
        let mixtures = self.mixture_view()?;
        Ok(Rendered {
            html: html::render(self, mixtures.as_ref()),
            markdown: markdown::render(self, mixtures.as_ref()),
        })
    }

    /// Names of the search's candidates: `candidates`, else `c0, c1, ...`.
    pub fn search_candidates(&self) -> Option<Vec<String>> {
        let s = self.search.as_ref()?;
        Some(match &self.candidates {
            Some(c) => c.clone(),
            None => (0..s.data.chosen.len()).map(|i| format!("c{i}")).collect(),
        })
    }

    /// The mixtures to compare: the `mixtures` files, else the search's chosen
    /// mixture; and the uniform one. `None` when neither was given.
    pub fn mixture_view(&self) -> Result<Option<MixtureView>, ReportError> {
        if let (Some(s), Some(c)) = (&self.search, &self.candidates)
            && c.len() != s.data.chosen.len()
        {
            return Err(ReportError::Candidates {
                candidates: c.clone(),
                file: s.file.clone(),
                mixes: s.data.chosen.len(),
            });
        }
        // Mixture files name their weights (a search step's are sorted by name),
        // so the search's `c0, c1, ...` are used only for its own mixture.
        let mut names: Vec<String> = self.candidates.clone().unwrap_or_default();
        let mut columns: Vec<(String, Vec<(String, f64)>)> = Vec::new();
        if self.mixtures.is_empty() {
            if let Some(s) = &self.search {
                let c = self.search_candidates().expect("search given");
                names = c.clone();
                columns.push((
                    "chosen".into(),
                    c.into_iter().zip(s.data.chosen.iter().copied()).collect(),
                ));
            }
        } else {
            for m in &self.mixtures {
                columns.push((m.label.clone(), m.data.weights.clone()));
            }
        }
        if columns.is_empty() {
            return Ok(None);
        }
        // Names the candidates do not list are shown after them.
        for (_, w) in &columns {
            for (n, _) in w {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        let k = names.len().max(1) as f64;
        let mut cols: Vec<(String, Vec<Option<f64>>)> = columns
            .into_iter()
            .map(|(label, w)| {
                let total: f64 = w.iter().map(|x| x.1).sum();
                let vals = names
                    .iter()
                    .map(|n| {
                        let v = w.iter().find(|x| &x.0 == n).map_or(0.0, |x| x.1);
                        Some(if total > 0.0 { v / total } else { v })
                    })
                    .collect();
                (label, vals)
            })
            .collect();
        cols.push(("uniform".into(), vec![Some(1.0 / k); names.len()]));
        Ok(Some(MixtureView {
            candidates: names,
            columns: cols,
        }))
    }

    /// Predicted against measured scores, per search target.
    pub fn target_views(&self) -> Vec<TargetView> {
        let Some(s) = &self.search else {
            return Vec::new();
        };
        let r = &s.data;
        r.targets
            .iter()
            .enumerate()
            .map(|(t, target)| {
                let mut by_round: Vec<(usize, f64, f64)> = r
                    .proxies
                    .iter()
                    .filter_map(|p| Some((p.round, p.predicted.as_ref()?[t], p.scores[t])))
                    .filter(|(_, a, b)| a.is_finite() && b.is_finite())
                    .collect();
                by_round.sort_by_key(|p| p.0);
                let points: Vec<(f64, f64)> = by_round.iter().map(|p| (p.1, p.2)).collect();
                let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
                let rho = spearman(&xs, &ys).ok().filter(|r| r.is_finite());
                let fit = r.final_fits.iter().find(|f| f.target == target.name);
                let cv = fit.and_then(|f| f.cv.as_ref());
                let measured = r.proxies.iter().map(|p| p.scores[t]);
                let best_measured = match target.direction {
                    Direction::LowerIsBetter => measured.reduce(f64::min),
                    Direction::HigherIsBetter => measured.reduce(f64::max),
                };
                TargetView {
                    name: target.name.clone(),
                    direction: target.direction,
                    points,
                    by_round,
                    rho,
                    model: fit.map(|f| {
                        serde_json::to_value(f.model)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    }),
                    cv_folds: cv.map(|c| c.folds),
                    cv_rmse: cv.map(|c| c.rmse),
                    cv_rho: cv.and_then(|c| c.spearman),
                    chosen_predicted: r.chosen_predicted.get(t).copied(),
                    best_measured,
                }
            })
            .collect()
    }

    /// The evaluation table: per dataset loss, bits per byte and perplexity,
    /// per task metrics, then the mean loss; one value per evaluation.
    pub fn eval_rows(&self) -> Vec<EvalRow> {
        let evals = &self.evaluations;
        let mut rows = Vec::new();
        let mut names = |group: &'static str,
                         pick: &dyn Fn(&Evaluation) -> &Vec<data::Metrics>,
                         first: &[&str]| {
            let mut seen: Vec<String> = Vec::new();
            for e in evals {
                for m in pick(&e.data) {
                    if !seen.contains(&m.name) {
                        seen.push(m.name.clone());
                    }
                }
            }
            for name in seen {
                let find = |e: &Evaluation| pick(e).iter().find(|m| m.name == name).cloned();
                let mut metrics: Vec<String> = Vec::new();
                for e in evals {
                    if let Some(m) = find(&e.data) {
                        for (k, _) in &m.values {
                            if !metrics.contains(k) && !COUNTS.contains(&k.as_str()) {
                                metrics.push(k.clone());
                            }
                        }
                    }
                }
                metrics.sort_by_key(|k| {
                    (
                        first.iter().position(|f| f == k).unwrap_or(first.len()),
                        k.clone(),
                    )
                });
                for metric in metrics {
                    let values: Vec<Option<f64>> = evals
                        .iter()
                        .map(|e| find(&e.data).and_then(|m| m.get(&metric)))
                        .collect();
                    // Proportions over the task's examples get an interval.
                    let proportion =
                        ["accuracy", "accuracy_norm", "exact_match"].contains(&metric.as_str());
                    let intervals = if proportion {
                        evals
                            .iter()
                            .zip(&values)
                            .map(|(e, v)| {
                                let n = find(&e.data).and_then(|m| m.get("examples"))?;
                                wilson((*v)?, n)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let chance = (metric == "accuracy" || metric == "accuracy_norm")
                        .then(|| {
                            evals
                                .iter()
                                .find_map(|e| find(&e.data).and_then(|m| m.get("chance")))
                        })
                        .flatten();
                    rows.push(EvalRow {
                        group,
                        name: name.clone(),
                        values,
                        direction: metric_direction(&metric),
                        metric,
                        intervals,
                        chance,
                    });
                }
            }
        };
        names("dataset", &|e| &e.datasets, DATASET_METRICS);
        names("task", &|e| &e.tasks, TASK_METRICS);
        if evals.iter().any(|e| e.data.mean_loss.is_some()) {
            rows.push(EvalRow {
                group: "mean",
                name: "all datasets".into(),
                metric: "mean_loss".into(),
                values: evals.iter().map(|e| e.data.mean_loss).collect(),
                direction: Some(Direction::LowerIsBetter),
                intervals: Vec::new(),
                chance: None,
            });
        }
        rows
    }

    /// The components' own per-target scores: for each candidate, the proxy
    /// that put all its weight on it (a one-hot linear merge is the component
    /// itself), else the evaluated proxy with the most weight on it, marked as
    /// such. `None` without a search.
    pub fn component_view(&self) -> Option<ComponentView> {
        let s = &self.search.as_ref()?.data;
        let names = self.search_candidates()?;
        let rows = names
            .into_iter()
            .enumerate()
            .filter_map(|(c, name)| {
                let p = s
                    .proxies
                    .iter()
                    .max_by(|a, b| a.weights[c].total_cmp(&b.weights[c]))?;
                let one_hot = p.weights[c] >= 1.0 - 1e-9;
                let m = if one_hot {
                    Measured::OneHot { round: p.round }
                } else {
                    Measured::Closest {
                        round: p.round,
                        weight: p.weights[c],
                    }
                };
                Some((name, m, p.scores.clone()))
            })
            .collect();
        Some(ComponentView {
            targets: s.targets.iter().map(|t| t.name.clone()).collect(),
            rows,
        })
    }

    /// Tokens the search's components were trained on, when the lineage
    /// found their training runs: (components, tokens in all).
    pub fn component_tokens(&self) -> Option<(usize, f64)> {
        if self.components.is_empty() {
            return None;
        }
        let tokens = self
            .components
            .iter()
            .filter_map(|c| c.data.last().map(|p| p.tokens))
            .sum();
        Some((self.components.len(), tokens))
    }

    /// Proxies by objective, best first, at most `n`.
    pub fn best_proxies(&self, n: usize) -> Vec<(usize, &demix_mix::search::ProxyRecord)> {
        let Some(s) = &self.search else {
            return Vec::new();
        };
        let mut v: Vec<(usize, &demix_mix::search::ProxyRecord)> =
            s.data.proxies.iter().enumerate().collect();
        v.sort_by(|a, b| a.1.objective.total_cmp(&b.1.objective).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// A number for a table, to `decimals` places (a dash when not finite).
pub fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{v:.decimals$}");
    // No "-0.0000".
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A duration: seconds, minutes or hours.
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".into();
    }
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{} h {:.0} min", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    }
}

/// A token count: 65,536 -> 65.5K.
pub fn fmt_tokens(t: f64) -> String {
    if t >= 1e9 {
        format!("{:.2}B", t / 1e9)
    } else if t >= 1e6 {
        format!("{:.2}M", t / 1e6)
    } else if t >= 1e4 {
        format!("{:.1}K", t / 1e3)
    } else {
        format!("{t:.0}")
    }
}

pub fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

pub fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::LowerIsBetter => "lower is better",
        Direction::HigherIsBetter => "higher is better",
    }
}

/// The objective as words.
pub fn objective_words(o: &demix_mix::search::Objective) -> String {
    use demix_mix::search::Objective;
    let list = |v: &[f64]| {
        v.iter()
            .map(|w| fmt_num(*w, 3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match o {
        Objective::MeanPercentileRank => "mean percentile rank over targets".into(),
        Objective::MeanLoss => "mean score over targets".into(),
        Objective::WeightedSum { weights } => {
            format!("weighted sum of scores ({})", list(weights))
        }
        Objective::Standardized { scales } if scales.is_empty() => {
            "mean of scores, each divided by its spread".into()
        }
        Objective::Standardized { scales } => {
            format!(
                "mean of scores, each divided by its spread ({})",
                list(scales)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use demix_mix::search::{Search, SearchConfig, Target};

    fn search() -> SearchResult {
        let pool = demix_mix::sampler::sample(
            &[3.0, 2.0, 1.0],
            &demix_mix::sampler::SamplerConfig {
                draws: 300,
                keep: 200,
                seed: 3,
                ..Default::default()
            },
        )
        .unwrap()
        .to_weights();
        let cfg = SearchConfig {
            rounds: vec![16, 8],
            top_k: 8,
            cv_folds: 3,
            ..SearchConfig::new(vec![Target::loss("sotu"), Target::loss("math")])
        };
        let mut eval = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, demix_mix::search::BoxError> {
            Ok(m.iter()
                .map(|w| vec![3.0 - w[0] + w[1] * w[1], 2.0 - w[1] + 0.5 * w[2]])
                .collect())
        };
        Search::run(cfg, pool, &mut eval).unwrap()
    }

    fn labeled<T>(label: &str, data: T) -> Labeled<T> {
        Labeled {
            label: label.into(),
            file: format!("{label}.json"),
            step: None,
            data,
        }
    }

    #[test]
    fn the_search_gives_mixture_targets_and_proxies() {
        let s = search();
        let mut r = Report {
            title: "t".into(),
            search: Some(labeled("search", s.clone())),
            candidates: Some(vec!["sotu".into(), "math".into(), "chat".into()]),
            ..Report::default()
        };
        let m = r.mixture_view().unwrap().unwrap();
        assert_eq!(m.candidates, ["sotu", "math", "chat"]);
        assert_eq!(m.columns[0].0, "chosen");
        assert_eq!(m.columns[1].0, "uniform");
        assert_eq!(m.columns[0].1[0], Some(s.chosen[0]));
        let t = r.target_views();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].points.len(), 8, "round 2's proxies were predicted");
        assert!(t[0].rho.is_some());
        assert_eq!(t[0].cv_folds, Some(3));
        assert_eq!(r.best_proxies(5).len(), 5);
        assert!(
            r.best_proxies(100)
                .windows(2)
                .all(|w| w[0].1.objective <= w[1].1.objective)
        );
        let out = r.render().unwrap();
        assert!(out.html.contains("<svg"));
        // Candidates that do not match the search are an error.
        r.candidates = Some(vec!["a".into()]);
        let e = r.render().unwrap_err().to_string();
        assert!(e.contains("search.json mixes 3"), "{e}");
    }

    #[test]
    fn mixture_files_take_names_and_are_normalised() {
        let r = Report {
            mixtures: vec![
                labeled(
                    "chosen",
                    Mixture {
                        weights: vec![("math".into(), 2.0), ("sotu".into(), 6.0)],
                    },
                ),
                labeled(
                    "heuristic",
                    Mixture {
                        weights: vec![("code".into(), 1.0)],
                    },
                ),
            ],
            ..Report::default()
        };
        let m = r.mixture_view().unwrap().unwrap();
        assert_eq!(m.candidates, ["math", "sotu", "code"]);
        assert_eq!(m.columns[0].1, vec![Some(0.25), Some(0.75), Some(0.0)]);
        assert_eq!(m.columns[2], ("uniform".into(), vec![Some(1.0 / 3.0); 3]));
        assert!(Report::default().mixture_view().unwrap().is_none());
        // With a search but no `candidates`, the files' names are used, not c0, c1, ...
        let with_search = Report {
            search: Some(labeled("search", search())),
            ..r
        };
        let m = with_search.mixture_view().unwrap().unwrap();
        assert_eq!(m.candidates, ["math", "sotu", "code"]);
    }

    #[test]
    fn evaluation_rows_union_the_columns_and_mark_the_best() {
        let eval = |loss: f64, acc: Option<f64>| Evaluation {
            datasets: vec![data::Metrics {
                name: "sotu".into(),
                kind: None,
                values: vec![
                    ("tokens".into(), 100.0),
                    ("perplexity".into(), loss.exp()),
                    ("loss".into(), loss),
                ],
            }],
            tasks: acc
                .map(|a| data::Metrics {
                    name: "qa".into(),
                    kind: Some("multiple_choice".into()),
                    values: vec![("accuracy".into(), a), ("examples".into(), 10.0)],
                })
                .into_iter()
                .collect(),
            mean_loss: Some(loss),
        };
        let r = Report {
            evaluations: vec![
                labeled("chosen", eval(3.0, Some(0.6))),
                labeled("uniform", eval(3.2, None)),
            ],
            ..Report::default()
        };
        let rows = r.eval_rows();
        let names: Vec<String> = rows
            .iter()
            .map(|r| format!("{}/{}", r.name, r.metric))
            .collect();
        assert_eq!(
            names,
            [
                "sotu/loss",
                "sotu/perplexity",
                "qa/accuracy",
                "all datasets/mean_loss"
            ]
        );
        assert_eq!(rows[0].best(), Some(0));
        assert_eq!(rows[2].values, vec![Some(0.6), None]);
        assert_eq!(rows[2].best(), None, "one value: nothing to compare");
        let tie = EvalRow {
            values: vec![Some(1.0), Some(1.0), Some(2.0)],
            ..rows[0].clone()
        };
        assert_eq!(tie.best(), None, "a tie has no winner");
    }

    #[test]
    fn wilson_intervals_match_the_formula() {
        let (lo, hi) = wilson(0.5, 100.0).unwrap();
        assert!(
            (lo - 0.4038).abs() < 1e-4 && (hi - 0.5962).abs() < 1e-4,
            "{lo} {hi}"
        );
        // At the edges the interval stays inside [0, 1] and is not empty.
        let (lo, hi) = wilson(0.0, 20.0).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-4, "{hi}");
        let (lo, hi) = wilson(1.0, 20.0).unwrap();
        assert!((lo - 0.8389).abs() < 1e-4 && hi == 1.0, "{lo}");
        assert_eq!(wilson(0.5, 0.0), None);
        assert_eq!(wilson(1.5, 10.0), None);
    }

    #[test]
    fn task_accuracies_get_intervals_and_chance_when_recorded() {
        let eval = |acc: f64, chance: Option<f64>| Evaluation {
            tasks: vec![data::Metrics {
                name: "cloze".into(),
                kind: Some("multiple_choice".into()),
                values: [("accuracy".to_string(), acc), ("examples".into(), 40.0)]
                    .into_iter()
                    .chain(chance.map(|c| ("chance".to_string(), c)))
                    .collect(),
            }],
            ..Evaluation::default()
        };
        let r = Report {
            evaluations: vec![
                labeled("chosen", eval(0.6, Some(0.25))),
                labeled("uniform", eval(0.3, None)),
            ],
            ..Report::default()
        };
        let rows = r.eval_rows();
        assert_eq!(rows.len(), 1, "the chance level is no row of its own");
        assert_eq!(rows[0].chance, Some(0.25));
        assert_eq!(rows[0].intervals[0], wilson(0.6, 40.0));
        let out = r.render().unwrap();
        assert!(out.html.contains("accuracy (chance 0.250)"), "{}", out.html);
        let (lo, hi) = wilson(0.6, 40.0).unwrap();
        let ci = format!("<span class=\"ci\">[{lo:.2}, {hi:.2}]</span>");
        assert!(out.html.contains(&ci), "{ci}");
        assert!(
            out.markdown
                .contains(&format!("**0.6000** [{lo:.2}, {hi:.2}]"))
        );
        // Without examples there is no interval.
        let mut bare = eval(0.6, None);
        bare.tasks[0].values.retain(|v| v.0 != "examples");
        let r = Report {
            evaluations: vec![labeled("m", bare)],
            ..Report::default()
        };
        assert_eq!(r.eval_rows()[0].intervals, vec![None]);
        assert!(
            r.render()
                .unwrap()
                .html
                .contains("chance level is not shown")
        );
    }

    #[test]
    fn components_are_measured_by_one_hot_proxies_or_said_not_to_be() {
        let mut s = search();
        // Make proxy 0 the one-hot mixture of the second candidate.
        s.proxies[0].weights = vec![0.0, 1.0, 0.0];
        s.proxies[0].scores = vec![3.25, 1.5];
        for p in &mut s.proxies[1..] {
            p.weights[1] = p.weights[1].min(0.9);
        }
        let r = Report {
            search: Some(labeled("search", s.clone())),
            candidates: Some(vec!["sotu".into(), "math".into(), "chat".into()]),
            ..Report::default()
        };
        let c = r.component_view().unwrap();
        assert_eq!(c.targets, ["sotu", "math"]);
        assert_eq!(c.rows.len(), 3);
        assert_eq!(c.rows[1].0, "math");
        assert_eq!(c.rows[1].1, Measured::OneHot { round: 1 });
        assert_eq!(c.rows[1].2, vec![3.25, 1.5]);
        assert_eq!(
            c.one_hot(),
            s.proxies
                .iter()
                .filter(|p| p.weights.contains(&1.0))
                .count()
        );
        for (name, m, scores) in &c.rows {
            let i = ["sotu", "math", "chat"]
                .iter()
                .position(|n| n == name)
                .unwrap();
            let top = s.proxies.iter().map(|p| p.weights[i]).fold(0.0, f64::max);
            match m {
                Measured::OneHot { .. } => assert_eq!(top, 1.0),
                Measured::Closest { weight, .. } => {
                    assert_eq!(*weight, top, "{name}");
                    let p = s.proxies.iter().find(|p| p.weights[i] == top).unwrap();
                    assert_eq!(scores, &p.scores, "the closest proxy's measured scores");
                }
            }
        }
        let out = r.render().unwrap();
        assert!(out.html.contains("<h2>Components</h2>"));
        assert!(out.html.contains("itself (one-hot proxy, round 1)"));
        assert!(out.markdown.contains("## Components"));
        assert!(
            out.markdown
                .contains("| math | itself (round 1) | 3.2500 | 1.5000 |"),
            "{}",
            out.markdown
        );
        // No search, no components.
        assert!(Report::default().component_view().is_none());
    }

    #[test]
    fn the_report_opens_with_the_verdict_and_the_chosen_mixture() {
        let r = Report {
            title: "t".into(),
            search: Some(labeled("search", search())),
            candidates: Some(vec!["sotu".into(), "math".into(), "chat".into()]),
            training: vec![labeled(
                "base",
                Training {
                    points: vec![data::TrainPoint {
                        step: Some(1),
                        tokens: 512.0,
                        loss: 5.0,
                        tokens_per_s: None,
                        elapsed: None,
                    }],
                    ..Training::default()
                },
            )],
            ..Report::default()
        };
        let out = r.render().unwrap();
        let h = &out.html;
        let chosen = h
            .find("<p class=\"chosen\"><strong>Chosen mixture:</strong>")
            .unwrap();
        assert!(chosen < h.find("<p class=\"meta\">").unwrap());
        let order: Vec<usize> = [
            "mixture",
            "components",
            "predictions",
            "training",
            "proxies",
            "cost",
        ]
        .iter()
        .map(|id| h.find(&format!("<section id=\"{id}\">")).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let md = &out.markdown;
        assert!(md.find("## Chosen mixture").unwrap() < md.find("Workflow `").unwrap());
        // The proxies table groups its columns: weights, then measured losses.
        assert!(h.contains("<th colspan=\"3\"></th><th colspan=\"3\" class=\"group\">weights</th><th colspan=\"2\" class=\"group\">measured losses (nats/token)</th>"));
        // Rounds after the first are told apart, the chosen mixture marked.
        assert!(h.contains(">round 2<"));
        assert!(h.contains("chosen: predicted "));
        // Without the components' runs the cost says it cannot count them.
        assert!(h.contains("not found in the lineage"));
    }

    #[test]
    fn the_cost_counts_the_components_training_tokens() {
        let run = |tokens: f64| Training {
            points: vec![data::TrainPoint {
                step: Some(4),
                tokens,
                loss: 4.0,
                tokens_per_s: None,
                elapsed: None,
            }],
            ..Training::default()
        };
        let r = Report {
            search: Some(labeled("search", search())),
            components: vec![
                labeled("comp[a]", run(20_000.0)),
                labeled("comp[b]", run(30_000.0)),
            ],
            ..Report::default()
        };
        assert_eq!(r.component_tokens(), Some((2, 50_000.0)));
        let out = r.render().unwrap();
        assert!(
            out.html
                .contains("training tokens in all</dt><dd>50.0K (components 50.0K + proxies 0)"),
            "{}",
            out.html
        );
        assert!(
            out.markdown
                .contains("Training cost: 50.0K tokens (2 components 50.0K, proxies 0).")
        );
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_num(3.0, 4), "3.0000");
        assert_eq!(fmt_num(3.4, 0), "3");
        assert_eq!(fmt_num(-0.00001, 3), "0.000");
        assert_eq!(fmt_num(0.123456, 4), "0.1235");
        assert_eq!(fmt_num(f64::NAN, 4), "–");
        assert_eq!(fmt_secs(5.0), "5.0 s");
        assert_eq!(fmt_secs(125.0), "2 min 5 s");
        assert_eq!(fmt_secs(7260.0), "2 h 1 min");
        assert_eq!(fmt_tokens(65536.0), "65.5K");
        assert_eq!(fmt_tokens(5e10), "50.00B");
    }
}
