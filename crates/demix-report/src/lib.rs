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

pub use data::{Evaluation, LineageSummary, Mixture, Training};

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
const COUNTS: &[&str] = &["tokens", "documents", "bytes", "examples"];

/// How many proxies the tables list.
pub const PROXY_ROWS: usize = 25;
/// How many upstream steps the lineage table lists.
pub const ANCESTOR_ROWS: usize = 60;

impl Report {
    /// Checks the inputs agree with each other and renders both files.
    pub fn render(&self) -> Result<Rendered, String> {
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
    pub fn mixture_view(&self) -> Result<Option<MixtureView>, String> {
        if let (Some(s), Some(c)) = (&self.search, &self.candidates)
            && c.len() != s.data.chosen.len()
        {
            return Err(format!(
                "`candidates` names {} datasets ({}) but the search result {} mixes {}",
                c.len(),
                c.join(", "),
                s.file,
                s.data.chosen.len()
            ));
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
                let points: Vec<(f64, f64)> = r
                    .proxies
                    .iter()
                    .filter_map(|p| Some((p.predicted.as_ref()?[t], p.scores[t])))
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
                    .collect();
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
                    rows.push(EvalRow {
                        group,
                        name: name.clone(),
                        values: evals
                            .iter()
                            .map(|e| find(&e.data).and_then(|m| m.get(&metric)))
                            .collect(),
                        direction: metric_direction(&metric),
                        metric,
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
            });
        }
        rows
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
        let e = r.render().unwrap_err();
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
