//! The short Markdown summary: the chosen mixture, the search, the evaluations
//! and the training runs as tables; the HTML report has the plots and the rest.

use std::fmt::Write;

use super::{
    Measured, MixtureView, Report, TableView, direction_word, fmt_num, fmt_secs, fmt_tokens,
    objectives_table, seed_noise_table, short, verdict_table,
};
use demix_mix::validate::Validation;

/// Text safe inside a table cell.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn table(out: &mut String, head: &[String], right: &[bool], rows: &[Vec<String>]) {
    let _ = writeln!(
        out,
        "| {} |",
        head.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}|",
        right
            .iter()
            .map(|r| if *r { "---:" } else { "---" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} |",
            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out.push('\n');
}

fn view(out: &mut String, t: &TableView) {
    let head: Vec<String> = t.head.iter().map(|h| h.0.clone()).collect();
    let right: Vec<bool> = t.head.iter().map(|h| h.1).collect();
    table(out, &head, &right, &t.rows);
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| fmt_num(v, decimals))
}

pub fn render(r: &Report, mixtures: Option<&MixtureView>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", r.title.replace('\n', " "));
    verdict_section(&mut out, r);
    chosen_mixture(&mut out, mixtures);
    let _ = writeln!(
        out,
        "Workflow `{}`, step `{}` (key `{}`); plots and details in report.html.\n",
        r.workflow,
        r.step,
        short(&r.key)
    );
    if let Some(c) = r.component_view() {
        components(&mut out, &c);
    }
    search_section(&mut out, r);
    if let Some(t) = r.tokenizer_table() {
        out.push_str("## Tokenizer sample\n\n");
        view(&mut out, &t);
    }
    evaluations(&mut out, r);
    training(&mut out, r);
    if let Some(v) = &r.validation {
        out.push_str(&validation(&v.data));
        out.push('\n');
    }
    lineage(&mut out, r);
    out
}

/// The verdicts as a list, then their table when they have one.
fn verdict_section(out: &mut String, r: &Report) {
    let verdicts = r.all_verdicts();
    if !verdicts.is_empty() {
        out.push_str("## Verdict\n\n");
        for v in &verdicts {
            let _ = writeln!(out, "- {}", v.sentence);
        }
        out.push('\n');
        if let Some(t) = verdict_table(&r.verdicts) {
            view(out, &t);
        }
    }
}

/// Each candidate mixture's weight per domain, when the report has mixtures.
fn chosen_mixture(out: &mut String, mixtures: Option<&MixtureView>) {
    if let Some(m) = mixtures {
        out.push_str("## Chosen mixture\n\n");
        let mut head = vec!["candidate".to_string()];
        head.extend(m.columns.iter().map(|c| c.0.clone()));
        let mut right = vec![false];
        right.extend(m.columns.iter().map(|_| true));
        let rows: Vec<Vec<String>> = m
            .candidates
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut row = vec![n.clone()];
                row.extend(m.columns.iter().map(|c| opt(c.1[i], 4)));
                row
            })
            .collect();
        table(out, &head, &right, &rows);
    }
}

/// The search: its proxies and cost, then a row per target.
fn search_section(out: &mut String, r: &Report) {
    if let Some(s) = &r.search {
        let d = &s.data;
        out.push_str("## Search\n\n");
        let rounds: Vec<String> = d.rounds.iter().map(|x| x.proxies.to_string()).collect();
        let _ = writeln!(
            out,
            "{} proxies in {} rounds ({}) from a pool of {}; the chosen mixture is the mean of the top {} predicted; the search took {}.\n",
            d.cost.proxies_evaluated,
            d.rounds.len(),
            rounds.join(" + "),
            d.pool_size,
            d.top.len(),
            fmt_secs(d.cost.total_seconds)
        );
        let _ = match r.component_tokens() {
            Some((k, t)) => writeln!(
                out,
                "Training cost: {} tokens ({k} components {}, proxies {}).\n",
                fmt_tokens(t + d.cost.tokens_trained as f64),
                fmt_tokens(t),
                fmt_tokens(d.cost.tokens_trained as f64)
            ),
            None if d.cost.tokens_trained > 0 => writeln!(
                out,
                "Training cost: {} tokens (trained proxies).\n",
                fmt_tokens(d.cost.tokens_trained as f64)
            ),
            None => writeln!(
                out,
                "Training cost: unknown (the components' training runs were not found in the lineage).\n"
            ),
        };
        let head: Vec<String> = [
            "target",
            "direction",
            "ρ predicted vs measured (n)",
            "final predictor",
            "CV ρ",
            "CV RMSE",
            "predicted for chosen",
            "best proxy measured",
        ]
        .map(String::from)
        .to_vec();
        let rows: Vec<Vec<String>> = r
            .target_views()
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    direction_word(v.direction).into(),
                    format!("{} ({})", opt(v.rho, 3), v.points.len()),
                    v.model.clone().unwrap_or("–".into()),
                    opt(v.cv_rho, 3),
                    opt(v.cv_rmse, 4),
                    opt(v.chosen_predicted, 4),
                    opt(v.best_measured, 4),
                ]
            })
            .collect();
        table(
            out,
            &head,
            &[false, false, true, false, true, true, true, true],
            &rows,
        );
        if let Some(t) = r.search_noise_table() {
            out.push_str("How far apart the first round's proxies are on each target, against what scoring them on a finite sample alone could make:\n\n");
            view(out, &t);
        }
    }
}

/// A row per dataset or task, a column per evaluated model; the best in bold.
fn evaluations(out: &mut String, r: &Report) {
    if !r.evaluations.is_empty() {
        out.push_str("## Evaluations\n\n");
        let mut head = vec!["dataset or task".to_string(), "metric".into()];
        head.extend(r.evaluations.iter().map(|e| e.label.clone()));
        let mut right = vec![false, false];
        right.extend(r.evaluations.iter().map(|_| true));
        let rows: Vec<Vec<String>> = r
            .eval_rows()
            .iter()
            .map(|x| {
                let best = x.best();
                let metric = match x.chance {
                    Some(c) => format!("{} (chance {})", x.metric.replace('_', " "), fmt_num(c, 3)),
                    None => x.metric.replace('_', " "),
                };
                let mut row = vec![x.name.clone(), metric];
                row.extend(x.values.iter().enumerate().map(|(i, v)| {
                    let mut t = opt(*v, 4);
                    if best == Some(i) {
                        t = format!("**{t}**");
                    }
                    if let Some(Some((lo, hi))) = x.intervals.get(i) {
                        let _ = write!(t, " [{}, {}]", fmt_num(*lo, 2), fmt_num(*hi, 2));
                    }
                    t
                }));
                row
            })
            .collect();
        table(out, &head, &right, &rows);
        if r.eval_rows()
            .iter()
            .any(|x| x.intervals.iter().any(Option::is_some))
        {
            out.push_str(
                "Task accuracies with their 95% Wilson interval over the task's examples.\n\n",
            );
        }
    }
}

/// A row per training run: its tokens and losses.
fn training(out: &mut String, r: &Report) {
    if !r.training.is_empty() {
        out.push_str("## Training\n\n");
        let head: Vec<String> = ["run", "tokens", "final loss", "lowest loss"]
            .map(String::from)
            .to_vec();
        let rows: Vec<Vec<String>> = r
            .training
            .iter()
            .map(|t| {
                let last = t.data.last();
                vec![
                    t.label.clone(),
                    last.map_or("–".into(), |p| fmt_tokens(p.tokens)),
                    opt(last.map(|p| p.loss), 4),
                    opt(t.data.min_loss(), 4),
                ]
            })
            .collect();
        table(out, &head, &[false, true, true, true], &rows);
    }
}

/// How much ran upstream, and what `demix lineage` says of each input's producer.
fn lineage(out: &mut String, r: &Report) {
    if let Some(l) = &r.lineage
        && !l.ancestors.is_empty()
    {
        let total: f64 = l.ancestors.iter().map(|a| a.duration_s).sum();
        let _ = writeln!(
            out,
            "## Lineage\n\n{} step results upstream, {} of step time in all; `demix lineage {}` summarises its inputs (data and weights, settings, the chain of checkpoints) and `--full` traces each.\n",
            l.ancestors.len(),
            fmt_secs(total),
            r.step
        );
        for p in &l.producers {
            let _ = writeln!(out, "```\n{}```\n", demix_core::lineage::render_portable(p));
        }
    }
}

/// The components' own losses per target.
fn components(out: &mut String, c: &super::ComponentView) {
    out.push_str("## Components\n\n");
    let mut head = vec!["component".to_string(), "measured on".into()];
    head.extend(c.targets.iter().cloned());
    let mut right = vec![false, false];
    right.extend(c.targets.iter().map(|_| true));
    let rows: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|(name, m, scores)| {
            let (source, approx) = match m {
                Measured::OneHot { round } => (format!("itself (round {round})"), false),
                Measured::Closest { round, weight } => (
                    format!(
                        "closest proxy, weight {} (round {round})",
                        fmt_num(*weight, 2)
                    ),
                    true,
                ),
            };
            let mut row = vec![name.clone(), source];
            row.extend(scores.iter().map(|x| {
                if approx {
                    format!("*{}*", fmt_num(*x, 4))
                } else {
                    fmt_num(*x, 4)
                }
            }));
            row
        })
        .collect();
    table(out, &head, &right, &rows);
    let _ = writeln!(
        out,
        "Each component's own loss per target: {} of {} measured as the one-hot proxy (the component itself); rows in italics are the closest proxy, a merge.\n",
        c.one_hot(),
        c.rows.len()
    );
}

fn opt3(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.3}"))
}

/// A validation against trained references as Markdown (also `validation.md`).
pub fn validation(v: &Validation) -> String {
    let mut s = String::new();
    let obj = super::objective_words(&v.objective);
    let _ = writeln!(
        s,
        "# Validation against {} trained references\n",
        v.references
    );
    for w in &v.warnings {
        let _ = writeln!(s, "> **Warning:** {w}\n");
    }
    let _ = writeln!(
        s,
        "Headline: Spearman rho between each predictor's objective ({obj}) and the references'. Per-target rho is flattered by each domain's own weight; compare with `weights`.\n"
    );
    if v.replicas >= 2 {
        let _ = writeln!(
            s,
            "Each reference mixture was trained {} times with different seeds; the references are the mean. The ceiling is the rho a noiseless predictor would reach against that mean, sqrt(R r / (1 + (R - 1) r)) for R replicas with replicate rho r.\n",
            v.replicas
        );
    }
    if !v.objectives.is_empty() {
        let _ = writeln!(s, "Every objective side by side (the headline first):\n");
        view(&mut s, &objectives_table(v));
    }
    if let Some(t) = seed_noise_table(v) {
        let _ = writeln!(s, "Signal against seed noise per target:\n");
        view(&mut s, &t);
    }
    if !v.verdicts.is_empty() {
        let _ = writeln!(s, "Verdicts:\n");
        for x in &v.verdicts {
            let _ = writeln!(s, "- {}", x.sentence);
        }
        s.push('\n');
        if let Some(t) = verdict_table(&v.verdicts) {
            view(&mut s, &t);
        }
    }
    let _ = writeln!(
        s,
        "| predictor | kind | training tokens | objective rho | 90% CI | top-{:.0}% rho | Kendall tau | pick's rank | macro rho | recovery |",
        v.top_fraction * 100.0
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for p in &v.predictors {
        let o = &p.objective;
        let ci = o
            .interval
            .as_ref()
            .map_or("n/a".into(), |i| format!("[{:.2}, {:.2}]", i.lo, i.hi));
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.kind,
            p.training_tokens.map_or("n/a".into(), |t| t.to_string()),
            opt3(o.spearman),
            ci,
            opt3(o.top_spearman),
            opt3(o.kendall),
            o.regret
                .as_ref()
                .map_or("n/a".into(), |r| format!("{:.1}", r.pick_rank)),
            opt3(p.macro_spearman),
            opt3(p.macro_recovery),
        );
    }
    per_target_table(&mut s, v);
    if !v.finals.is_empty() {
        finals_table(&mut s, v);
    }
    s
}

/// Each predictor's Spearman rho per target.
fn per_target_table(s: &mut String, v: &Validation) {
    let _ = writeln!(s, "\nPer-target Spearman rho:\n");
    let _ = write!(s, "| predictor |");
    for t in &v.targets {
        let _ = write!(s, " {} |", t.name);
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(v.targets.len()));
    for p in &v.predictors {
        let _ = write!(s, "| {} |", p.name);
        for m in &p.targets {
            let _ = write!(s, " {} |", opt3(m.spearman));
        }
        let _ = writeln!(s);
    }
}

/// The final models' ranks among the references.
fn finals_table(s: &mut String, v: &Validation) {
    let _ = writeln!(
        s,
        "\nFinal models among the {} references (rank 1 = best; lower is better):\n",
        v.references
    );
    let _ = write!(s, "| model | macro rank | objective rank |");
    for t in &v.targets {
        let _ = write!(s, " {} |", t.name);
    }
    let _ = writeln!(s, "\n|---|---|---|{}", "---|".repeat(v.targets.len()));
    for f in &v.finals {
        let _ = write!(
            s,
            "| {} | {:.2} | {:.1} |",
            f.name, f.macro_rank, f.objective_rank
        );
        for r in &f.ranks {
            let _ = write!(s, " {r:.1} |");
        }
        let _ = writeln!(s);
    }
}
