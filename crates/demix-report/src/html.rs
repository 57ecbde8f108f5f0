//! The HTML report: one file, inline CSS and SVG, no scripts, no links out.

use std::fmt::Write;

use super::data::Producer;
use super::svg::{BarChart, LinePlot, Mark, ScatterPlot, Series, escape};
use super::{
    ANCESTOR_ROWS, MixtureView, PROXY_ROWS, Report, TableView, direction_word, fmt_num, fmt_secs,
    fmt_tokens, objective_words, objectives_table, seed_noise_table, short, verdict_table,
};

const CSS: &str = r#"
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; box-sizing: border-box; }
p, dd, li { overflow-wrap: anywhere; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 0 0 10px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
section { background: #ffffff; border: 1px solid #dde1e7; border-radius: 8px;
  padding: 18px 22px; margin: 18px 0; }
.meta, .note { color: #5a6372; font-size: 13px; }
nav ul { list-style: none; padding: 0; margin: 8px 0 0; display: flex; flex-wrap: wrap; gap: 6px 16px; }
nav a { color: #0b5cad; text-decoration: none; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f0f2f5;
  padding: 1px 4px; border-radius: 3px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e7ec; padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; color: #0a6b3d; }
th.group { text-align: center; border-bottom: 2px solid #c9ced6; }
td.wrap { white-space: normal; min-width: 320px; }
td.approx { font-style: italic; color: #5a6372; }
td.own { background: #eaf3fb; }
.ci { display: block; color: #5a6372; font-size: 11px; font-weight: 400; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
svg.plot { max-width: 100%; height: auto; border: 1px solid #eef0f3; border-radius: 4px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 8px 0; }
dl.facts dt { color: #5a6372; }
dl.facts dd { margin: 0; }
p.verdict { font-size: 16px; font-weight: 600; margin: 10px 0; }
p.chosen { font-size: 15px; margin: 10px 0; }
p.chosen span { white-space: nowrap; margin-right: 12px; }
"#;

struct Section {
    id: &'static str,
    title: &'static str,
    body: String,
}

/// A table: header cells and rows of (text, class) cells, all escaped.
fn table(out: &mut String, head: &[(String, &str)], rows: &[Vec<(String, &str)>]) {
    grouped_table(out, &[], head, rows);
}

/// A table whose header has a row of groups above the columns: (title, how
/// many columns it spans); an empty title leaves its columns ungrouped.
fn grouped_table(
    out: &mut String,
    groups: &[(String, usize)],
    head: &[(String, &str)],
    rows: &[Vec<(String, &str)>],
) {
    out.push_str("<div class=\"scroll\"><table><thead>");
    if !groups.is_empty() {
        out.push_str("<tr>");
        for (g, span) in groups {
            let class = if g.is_empty() { "" } else { " class=\"group\"" };
            let _ = write!(out, "<th colspan=\"{span}\"{class}>{}</th>", escape(g));
        }
        out.push_str("</tr>");
    }
    out.push_str("<tr>");
    for (h, class) in head {
        cell(out, "th", h, class);
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for (c, class) in r {
            cell(out, "td", c, class);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

/// A table view shared with the Markdown summary.
fn view(out: &mut String, t: &TableView) {
    let num = |right: bool| if right { "num" } else { "" };
    let head: Vec<(String, &str)> = t.head.iter().map(|(h, r)| (h.clone(), num(*r))).collect();
    let rows: Vec<Vec<(String, &str)>> = t
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&t.head)
                .map(|(c, (_, right))| (c.clone(), num(*right)))
                .collect()
        })
        .collect();
    table(out, &head, &rows);
}

/// Separates a cell's value from the interval shown under it.
const CI_SEP: char = '\u{1f}';

fn cell(out: &mut String, tag: &str, text: &str, class: &str) {
    // A value with its interval: "0.6000{CI_SEP}[0.45, 0.74]" puts the interval under it.
    if let Some((v, ci)) = text.split_once(CI_SEP) {
        let _ = write!(
            out,
            "<{tag} class=\"{class}\">{}<span class=\"ci\">{}</span></{tag}>",
            escape(v),
            escape(ci)
        );
        return;
    }
    if class.is_empty() {
        let _ = write!(out, "<{tag}>{}</{tag}>", escape(text));
    } else {
        let _ = write!(out, "<{tag} class=\"{class}\">{}</{tag}>", escape(text));
    }
}

fn facts(out: &mut String, items: &[(&str, String)]) {
    out.push_str("<dl class=\"facts\">");
    for (k, v) in items {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
    }
    out.push_str("</dl>");
}

fn note(out: &mut String, text: &str) {
    let _ = write!(out, "<p class=\"note\">{}</p>", escape(text));
}

fn num(v: Option<f64>, decimals: usize) -> (String, &'static str) {
    (v.map_or("–".into(), |v| fmt_num(v, decimals)), "num")
}

pub fn render(r: &Report, mixtures: Option<&MixtureView>) -> String {
    // What a researcher asks first comes first: the verdict and the chosen
    // mixture, then what explains them, then the details.
    let mut sections = Vec::new();
    if !r.verdicts.is_empty() {
        let mut b = String::new();
        if let Some(t) = verdict_table(&r.verdicts) {
            view(&mut b, &t);
        }
        sections.push(Section {
            id: "verdict",
            title: "Verdict",
            body: b,
        });
    }
    if let Some(m) = mixtures {
        sections.push(mixture(r, m));
    }
    if let Some(c) = r.component_view() {
        sections.push(components(r, &c));
    }
    if r.search.is_some() {
        sections.push(predictions(r));
    }
    if !r.evaluations.is_empty() {
        sections.push(evaluations(r));
    }
    if !r.training.is_empty() {
        sections.push(training(r));
    }
    if r.search.is_some() {
        sections.push(proxies(r));
        sections.push(cost(r));
    }
    if let Some(t) = r.tokenizer_table() {
        let mut b = String::new();
        note(
            &mut b,
            "Bytes of text the tokenizer learned from, per dataset: each dataset's share of the budget, its documents drawn from all over it.",
        );
        view(&mut b, &t);
        sections.push(Section {
            id: "tokenizer",
            title: "Tokenizer sample",
            body: b,
        });
    }
    if let Some(v) = &r.validation {
        sections.push(validation(&v.data));
    }
    if let Some(l) = &r.lineage
        && !(l.inputs.is_empty() && l.ancestors.is_empty())
    {
        sections.push(lineage(l));
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n<header>\n<h1>{t}</h1>\n",
        t = escape(&r.title)
    );
    for v in r.all_verdicts() {
        let _ = writeln!(out, "<p class=\"verdict\">{}</p>", escape(&v.sentence));
    }
    if let Some(m) = mixtures {
        chosen_line(&mut out, m);
    }
    let _ = writeln!(
        out,
        "<p class=\"meta\">Workflow <code>{}</code>, step <code>{}</code>, key <code>{}</code>; made by demix {}.</p>",
        escape(&r.workflow),
        escape(&r.step),
        escape(short(&r.key)),
        escape(demix_core::VERSION)
    );
    if sections.is_empty() {
        note(&mut out, "This report was given no inputs.");
    } else {
        out.push_str("<nav><ul>");
        for s in &sections {
            let _ = write!(
                out,
                "<li><a href=\"#{}\">{}</a></li>",
                s.id,
                escape(s.title)
            );
        }
        out.push_str("</ul></nav>\n");
    }
    out.push_str("</header>\n");
    for s in sections {
        let _ = write!(
            out,
            "<section id=\"{}\">\n<h2>{}</h2>\n{}\n</section>\n",
            s.id,
            escape(s.title),
            s.body
        );
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// The chosen mixture's weights on one line, under the title.
fn chosen_line(out: &mut String, m: &MixtureView) {
    if let Some((label, weights)) = m.columns.first() {
        let _ = write!(
            out,
            "<p class=\"chosen\"><strong>{} mixture:</strong> ",
            escape(&capitalise(label))
        );
        for (name, w) in m.candidates.iter().zip(weights) {
            let _ = write!(
                out,
                "<span>{} <strong>{}</strong></span>",
                escape(name),
                w.map_or("–".into(), |w| fmt_num(w, 3))
            );
        }
        out.push_str("</p>\n");
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}

/// The components' own scores per target: DeMix's first diagnostic.
fn components(r: &Report, c: &super::ComponentView) -> Section {
    use super::Measured;
    let mut b = String::new();
    let unit = loss_unit(r);
    let mut head = vec![("component".to_string(), ""), ("measured on".into(), "")];
    head.extend(c.targets.iter().map(|t| (t.clone(), "num")));
    let best: Vec<Option<usize>> = (0..c.targets.len()).map(|t| c.best(t)).collect();
    let rows: Vec<Vec<(String, &str)>> = c
        .rows
        .iter()
        .enumerate()
        .map(|(i, (name, m, scores))| {
            let (source, approx) = match m {
                Measured::OneHot { round } => {
                    (format!("itself (one-hot proxy, round {round})"), false)
                }
                Measured::Closest { round, weight } => (
                    format!(
                        "closest proxy: {} of weight (round {round})",
                        fmt_num(*weight, 2)
                    ),
                    true,
                ),
            };
            let mut row = vec![(name.clone(), ""), (source, "")];
            row.extend(scores.iter().enumerate().map(|(t, x)| {
                let class = if approx {
                    "num approx"
                } else if best[t] == Some(i) {
                    "num best"
                } else if c.targets[t] == *name {
                    "num own"
                } else {
                    "num"
                };
                (fmt_num(*x, 4), class)
            }));
            row
        })
        .collect();
    grouped_table(
        &mut b,
        &[
            (String::new(), 2),
            (format!("measured loss{unit}"), c.targets.len()),
        ],
        &head,
        &rows,
    );
    let k = c.rows.len();
    let own = c.one_hot();
    let mut text = format!(
        "Each component's own loss on every target, lower is better: a one-hot linear merge is the component itself, so a proxy that put all its weight on one component measured it. {own} of {k} components were measured so."
    );
    if own < k {
        text.push_str(
            " The search evaluated no one-hot mixture for the others: their rows (in italics) are the evaluated proxy with the most weight on them, a merge, not the component. Evaluate the components' checkpoints to see their own scores.",
        );
    }
    if own >= 2 {
        text.push_str(
            " The best component on each target is in bold; a component's own domain is shaded.",
        );
    }
    note(&mut b, &text);
    Section {
        id: "components",
        title: "Components",
        body: b,
    }
}

/// The unit of a validation target's scores: validation losses.
fn unit_of(d: demix_mix::stats::Direction) -> &'static str {
    match d {
        demix_mix::stats::Direction::LowerIsBetter => ": loss (nats/token)",
        demix_mix::stats::Direction::HigherIsBetter => ": score",
    }
}

/// " (nats/token)" when the search's targets are losses (every search target
/// is a validation loss), else "".
fn loss_unit(r: &Report) -> &'static str {
    let lower = r.search.as_ref().is_some_and(|s| {
        s.data
            .targets
            .iter()
            .all(|t| t.direction == demix_mix::stats::Direction::LowerIsBetter)
    });
    if lower { " (nats/token)" } else { "" }
}

fn training(r: &Report) -> Section {
    let mut b = String::new();
    let plot = LinePlot {
        title: "Training loss".into(),
        x_label: "training tokens seen (a continued run from where its start checkpoint stopped)"
            .into(),
        y_label: "training loss (nats/token)".into(),
        series: r
            .training
            .iter()
            .map(|t| {
                let start = t.data.start_tokens();
                Series::new(
                    t.label.clone(),
                    t.data
                        .points
                        .iter()
                        .map(|p| (start + p.tokens, p.loss))
                        .collect(),
                )
            })
            .collect(),
    };
    b.push_str(&plot.svg());
    let head = [
        ("run".to_string(), ""),
        ("continues".into(), ""),
        ("steps".into(), "num"),
        ("tokens".into(), "num"),
        ("final loss".into(), "num"),
        ("lowest loss".into(), "num"),
        ("tokens/s".into(), "num"),
        ("time".into(), "num"),
    ];
    let rows: Vec<Vec<(String, &str)>> = r
        .training
        .iter()
        .map(|t| {
            let last = t.data.last();
            vec![
                (t.label.clone(), ""),
                (
                    t.data.start.as_ref().map_or("–".into(), |(step, tokens)| {
                        format!("{step} (from {})", fmt_tokens(*tokens))
                    }),
                    "",
                ),
                num(last.and_then(|p| p.step).map(|s| s as f64), 0),
                (last.map_or("–".into(), |p| fmt_tokens(p.tokens)), "num"),
                num(last.map(|p| p.loss), 4),
                num(t.data.min_loss(), 4),
                num(t.data.tokens_per_s(), 0),
                (t.data.elapsed().map_or("–".into(), fmt_secs), "num"),
            ]
        })
        .collect();
    table(&mut b, &head, &rows);
    note(
        &mut b,
        "Tokens are the run's own; a run continued from another step's checkpoint (found through the lineage) is drawn from the tokens that checkpoint had seen.",
    );
    Section {
        id: "training",
        title: "Training loss",
        body: b,
    }
}

fn mixture(r: &Report, m: &MixtureView) -> Section {
    let mut b = String::new();
    let chart = BarChart {
        title: "Mixture weights".into(),
        y_label: "weight (share of training tokens)".into(),
        categories: m.candidates.clone(),
        series: m.columns.clone(),
        from_zero: true,
    };
    b.push_str(&chart.svg());
    let mut head = vec![("candidate".to_string(), "")];
    head.extend(m.columns.iter().map(|c| (c.0.clone(), "num")));
    let rows: Vec<Vec<(String, &str)>> = m
        .candidates
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut row = vec![(name.clone(), "")];
            row.extend(m.columns.iter().map(|c| num(c.1[i], 4)));
            row
        })
        .collect();
    table(&mut b, &head, &rows);
    let k = m.candidates.len();
    let mut text = format!("Weights sum to 1; uniform gives each of the {k} candidates 1/{k}.");
    if let Some(s) = &r.search {
        let _ = write!(
            text,
            " The search chose the mean of its {} best-predicted pool mixtures.",
            s.data.top.len()
        );
    }
    note(&mut b, &text);
    Section {
        id: "mixture",
        title: "Chosen mixture",
        body: b,
    }
}

fn predictions(r: &Report) -> Section {
    let mut b = String::new();
    let views = r.target_views();
    note(
        &mut b,
        "Each point is a proxy of a round after the first: the score its round's predictor predicted before the proxy was evaluated (x) against the score measured on the merged proxy (y). The final predictors, fitted on every proxy, are judged by k-fold cross-validation.",
    );
    b.push_str("<div class=\"plots\">");
    let unit = loss_unit(r);
    for v in &views {
        let annotation = match v.rho {
            Some(rho) => format!("Spearman ρ = {rho:.3} (n = {})", v.points.len()),
            None if v.points.is_empty() => "no proxy was predicted before evaluation".into(),
            None => format!("Spearman ρ undefined (n = {})", v.points.len()),
        };
        // One series per round, each its own colour and shape.
        let mut rounds: Vec<usize> = v.by_round.iter().map(|p| p.0).collect();
        rounds.dedup();
        let series = rounds
            .iter()
            .map(|round| {
                Series::new(
                    format!("round {round}"),
                    v.by_round
                        .iter()
                        .filter(|p| p.0 == *round)
                        .map(|p| (p.1, p.2))
                        .collect(),
                )
            })
            .collect();
        let marks = v
            .chosen_predicted
            .map(|x| Mark {
                label: format!("chosen: predicted {}", fmt_num(x, 3)),
                x,
                y: None,
            })
            .into_iter()
            .collect();
        let plot = ScatterPlot {
            title: format!("{} ({})", v.name, direction_word(v.direction)),
            x_label: format!("predicted before evaluation{unit}"),
            y_label: format!("measured on the merged proxy{unit}"),
            series,
            identity: true,
            annotation: Some(annotation),
            marks,
            legend: true,
        };
        b.push_str(&plot.svg());
    }
    b.push_str("</div>");
    note(
        &mut b,
        "The dotted vertical line is the chosen mixture's predicted score: it is not a proxy, so it has no measured one; the final models' evaluations measure it.",
    );
    let head = [
        ("target".to_string(), ""),
        ("direction".into(), ""),
        ("ρ predicted vs measured".into(), "num"),
        ("n".into(), "num"),
        ("final predictor".into(), ""),
        ("CV folds".into(), "num"),
        ("CV RMSE".into(), "num"),
        ("CV ρ".into(), "num"),
        ("predicted for chosen".into(), "num"),
        ("best proxy measured".into(), "num"),
    ];
    let rows: Vec<Vec<(String, &str)>> = views
        .iter()
        .map(|v| {
            vec![
                (v.name.clone(), ""),
                (direction_word(v.direction).into(), ""),
                num(v.rho, 3),
                num(Some(v.points.len() as f64), 0),
                (v.model.clone().unwrap_or("–".into()), ""),
                num(v.cv_folds.map(|f| f as f64), 0),
                num(v.cv_rmse, 4),
                num(v.cv_rho, 3),
                num(v.chosen_predicted, 4),
                num(v.best_measured, 4),
            ]
        })
        .collect();
    table(&mut b, &head, &rows);
    if let Some(t) = r.search_noise_table() {
        note(
            &mut b,
            "How far apart the first round's proxies are on each target, against what scoring them on a finite sample alone could make (the standard error of the difference of two proxies scored on the same text). A ratio near or below 1 means that target's ranking is mostly sampling noise: score more tokens.",
        );
        view(&mut b, &t);
    }
    Section {
        id: "predictions",
        title: "Predicted vs measured proxy scores",
        body: b,
    }
}

fn evaluations(r: &Report) -> Section {
    let mut b = String::new();
    let rows = r.eval_rows();
    let losses: Vec<&super::EvalRow> = rows
        .iter()
        .filter(|x| x.group == "dataset" && x.metric == "loss")
        .collect();
    if !losses.is_empty() {
        let chart = BarChart {
            title: "Validation loss by dataset".into(),
            y_label: "validation loss (nats/token)".into(),
            from_zero: false,
            categories: losses.iter().map(|x| x.name.clone()).collect(),
            series: r
                .evaluations
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    (
                        e.label.clone(),
                        losses.iter().map(|x| x.values[i]).collect(),
                    )
                })
                .collect(),
        };
        b.push_str(&chart.svg());
    }
    let mut head = vec![("dataset or task".to_string(), ""), ("metric".into(), "")];
    head.extend(r.evaluations.iter().map(|e| (e.label.clone(), "num")));
    let body: Vec<Vec<(String, &str)>> = rows
        .iter()
        .map(|x| {
            let best = x.best();
            let metric = match x.chance {
                Some(c) => format!("{} (chance {})", x.metric.replace('_', " "), fmt_num(c, 3)),
                None => x.metric.replace('_', " "),
            };
            let mut row = vec![(format!("{} ({})", x.name, x.group), ""), (metric, "")];
            row.extend(x.values.iter().enumerate().map(|(i, v)| {
                let (mut t, _) = num(*v, 4);
                if let Some(Some((lo, hi))) = x.intervals.get(i) {
                    let _ = write!(t, "{CI_SEP}[{}, {}]", fmt_num(*lo, 2), fmt_num(*hi, 2));
                }
                (t, if best == Some(i) { "num best" } else { "num" })
            }));
            row
        })
        .collect();
    table(&mut b, &head, &body);
    let mut text = "Validation loss in nats per token, bits per byte across tokenizers; the best value of each row is in bold.".to_string();
    if rows.iter().any(|x| x.intervals.iter().any(Option::is_some)) {
        text.push_str(" Under each task accuracy, its 95% Wilson interval over the task's examples: accuracies whose intervals overlap are not told apart by these examples.");
    }
    let mc = rows
        .iter()
        .any(|x| x.metric == "accuracy" && x.chance.is_none());
    if mc {
        text.push_str(" The metrics do not record each task's number of choices, so the chance level is not shown.");
    }
    note(&mut b, &text);
    Section {
        id: "evaluations",
        title: "Evaluations",
        body: b,
    }
}

fn proxies(r: &Report) -> Section {
    let mut b = String::new();
    let s = r.search.as_ref().expect("search given");
    let names = r.search_candidates().unwrap_or_default();
    let best = r.best_proxies(PROXY_ROWS);
    let mut head = vec![
        ("rank".to_string(), "num"),
        ("round".into(), "num"),
        ("pool #".into(), "num"),
    ];
    head.extend(names.iter().map(|n| (n.clone(), "num")));
    head.extend(s.data.targets.iter().map(|t| (t.name.clone(), "num")));
    head.push(("objective".into(), "num"));
    let rows: Vec<Vec<(String, &str)>> = best
        .iter()
        .enumerate()
        .map(|(rank, (_, p))| {
            let mut row = vec![
                ((rank + 1).to_string(), "num"),
                (p.round.to_string(), "num"),
                (p.pool_index.to_string(), "num"),
            ];
            row.extend(p.weights.iter().map(|w| num(Some(*w), 4)));
            row.extend(p.scores.iter().map(|x| num(Some(*x), 4)));
            row.push(num(Some(p.objective), 4));
            row
        })
        .collect();
    let unit = loss_unit(r);
    grouped_table(
        &mut b,
        &[
            (String::new(), 3),
            ("weights".into(), names.len()),
            (format!("measured losses{unit}"), s.data.targets.len()),
            (String::new(), 1),
        ],
        &head,
        &rows,
    );
    let n = s.data.proxies.len();
    note(
        &mut b,
        &if best.len() < n {
            format!(
                "The {} best of {n} evaluated proxies by objective (lower is better): weights, then measured scores. All are in {}.",
                best.len(),
                s.file
            )
        } else {
            format!(
                "All {n} evaluated proxies by objective (lower is better): weights, then measured scores."
            )
        },
    );
    Section {
        id: "proxies",
        title: "Proxies",
        body: b,
    }
}

/// The search's training cost: (the components' training, all training).
fn training_cost(r: &Report, s: &demix_mix::search::SearchResult) -> (String, String) {
    match r.component_tokens() {
        Some((k, t)) => (
            format!(
                "{} tokens ({k} components, each from its own metrics)",
                fmt_tokens(t)
            ),
            format!(
                "{} (components {} + proxies {})",
                fmt_tokens(t + s.cost.tokens_trained as f64),
                fmt_tokens(t),
                fmt_tokens(s.cost.tokens_trained as f64)
            ),
        ),
        None if s.cost.tokens_trained > 0 => (
            "none (trained proxies)".into(),
            fmt_tokens(s.cost.tokens_trained as f64),
        ),
        None => (
            "not found in the lineage".into(),
            "unknown: the components' training is not counted".into(),
        ),
    }
}

fn cost(r: &Report) -> Section {
    let mut b = String::new();
    let s = &r.search.as_ref().expect("search given").data;
    let rounds: Vec<String> = s.rounds.iter().map(|x| x.proxies.to_string()).collect();
    let (components, trained) = training_cost(r, s);
    facts(
        &mut b,
        &[
            ("training tokens in all", trained),
            ("components' training", components),
            ("proxies evaluated", s.cost.proxies_evaluated.to_string()),
            (
                "rounds",
                format!("{} ({})", s.rounds.len(), rounds.join(" + ")),
            ),
            ("pool", format!("{} sampled mixtures", s.pool_size)),
            (
                "chosen",
                format!("mean of the top {} predicted mixtures", s.top.len()),
            ),
            ("objective", objective_words(&s.objective)),
            (
                "targets",
                s.targets
                    .iter()
                    .map(|t| format!("{} ({})", t.name, direction_word(t.direction)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("seed", s.seed.to_string()),
            ("evaluating proxies", fmt_secs(s.cost.evaluate_seconds)),
            ("fitting predictors", fmt_secs(s.cost.fit_seconds)),
            ("search in all", fmt_secs(s.cost.total_seconds)),
            (
                "proxies per minute",
                if s.cost.evaluate_seconds > 0.0 {
                    format!(
                        "{:.1}",
                        s.cost.proxies_evaluated as f64 * 60.0 / s.cost.evaluate_seconds
                    )
                } else {
                    "–".into()
                },
            ),
            (
                "validation tokens scored",
                fmt_tokens(s.cost.tokens_evaluated as f64),
            ),
            (
                "training tokens spent on proxies",
                fmt_tokens(s.cost.tokens_trained as f64),
            ),
        ],
    );
    let head = [
        ("round".to_string(), "num"),
        ("proxies".into(), "num"),
        ("chosen by".into(), ""),
    ];
    let rows: Vec<Vec<(String, &str)>> = s
        .rounds
        .iter()
        .map(|x| {
            let by = if x.fits.is_empty() {
                "random draw from the pool".to_string()
            } else {
                x.fits
                    .iter()
                    .map(|f| {
                        let model = serde_json::to_value(f.model)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        match f.cv.as_ref().and_then(|c| c.spearman) {
                            Some(rho) => format!("{}: {model} (CV ρ {rho:.2})", f.target),
                            None => format!("{}: {model}", f.target),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            vec![
                (x.round.to_string(), "num"),
                (x.proxies.to_string(), "num"),
                (by, "wrap"),
            ]
        })
        .collect();
    table(&mut b, &head, &rows);
    note(
        &mut b,
        "DeMix's real cost is training the components (merged proxies cost no training); a trained-proxy search (RegMix) pays per proxy instead. Times are the search step's own; the components' training and any steps the proxies ran as are listed under Lineage.",
    );
    Section {
        id: "cost",
        title: "Search cost",
        body: b,
    }
}

fn lineage(l: &super::LineageSummary) -> Section {
    let mut b = String::new();
    b.push_str("<h3>Inputs of this report</h3>");
    let head = [
        ("field".to_string(), ""),
        ("input".into(), ""),
        ("made by".into(), ""),
        ("kind".into(), ""),
        ("key".into(), ""),
        ("host".into(), ""),
        ("started".into(), ""),
        ("took".into(), "num"),
    ];
    let mut rows: Vec<Vec<(String, &str)>> = Vec::new();
    for i in &l.inputs {
        for p in &i.producers {
            rows.push(producer_row(&i.field, &i.reference, p));
        }
    }
    table(&mut b, &head, &rows);
    if !l.ancestors.is_empty() {
        ancestors(&mut b, &l.ancestors);
    }
    if !l.producers.is_empty() {
        b.push_str("<h3>Where the inputs came from</h3>");
        for p in &l.producers {
            let _ = write!(
                b,
                "<div class=\"scroll\"><pre>{}</pre></div>",
                escape(&demix_core::lineage::render_portable(p))
            );
        }
    }
    Section {
        id: "lineage",
        title: "Lineage",
        body: b,
    }
}

/// One row of the inputs table: the input, and what made it (a step, a
/// workspace file, a dataset, or a step whose record is gone).
fn producer_row(field: &str, reference: &str, p: &Producer) -> Vec<(String, &'static str)> {
    match p {
        Producer::Step {
            step,
            output,
            workflow,
            kind,
            key,
            host,
            started,
            duration_s,
        } => vec![
            (field.to_string(), ""),
            (reference.to_string(), ""),
            (format!("{step}.{output} ({workflow})"), ""),
            (kind.clone(), ""),
            (short(key).to_string(), ""),
            (host.clone(), ""),
            (started.clone(), ""),
            (fmt_secs(*duration_s), "num"),
        ],
        Producer::Missing { step, output, key } => vec![
            (field.to_string(), ""),
            (reference.to_string(), ""),
            (format!("{step}.{output}"), ""),
            ("record no longer in the store".into(), ""),
            (short(key).to_string(), ""),
            ("–".into(), ""),
            ("–".into(), ""),
            ("–".into(), "num"),
        ],
        Producer::File { path, hash } => vec![
            (field.to_string(), ""),
            (reference.to_string(), ""),
            (format!("workspace file {path}"), ""),
            ("file".into(), ""),
            (format!("blake3 {}", short(hash)), ""),
            ("–".into(), ""),
            ("–".into(), ""),
            ("–".into(), "num"),
        ],
        Producer::Dataset { name, files } => vec![
            (field.to_string(), ""),
            (reference.to_string(), ""),
            (format!("dataset {name} ({files} files)"), ""),
            ("dataset".into(), ""),
            ("–".into(), ""),
            ("–".into(), ""),
            ("–".into(), ""),
            ("–".into(), "num"),
        ],
    }
}

/// Every step upstream of the report (the first [`ANCESTOR_ROWS`] by start
/// time), with their total step time.
fn ancestors(b: &mut String, ancestors: &[super::data::Ancestor]) {
    let total: f64 = ancestors.iter().map(|a| a.duration_s).sum();
    b.push_str("<h3>Every step upstream</h3>");
    let head = [
        ("step".to_string(), ""),
        ("kind".into(), ""),
        ("key".into(), ""),
        ("host".into(), ""),
        ("started".into(), ""),
        ("took".into(), "num"),
    ];
    let rows: Vec<Vec<(String, &str)>> = ancestors
        .iter()
        .take(ANCESTOR_ROWS)
        .map(|a| {
            vec![
                (a.step.clone(), ""),
                (a.kind.clone(), ""),
                (short(&a.key).to_string(), ""),
                (a.host.clone(), ""),
                (a.started.clone(), ""),
                (fmt_secs(a.duration_s), "num"),
            ]
        })
        .collect();
    table(b, &head, &rows);
    let mut text = format!(
        "{} step results upstream, {} of step time in all.",
        ancestors.len(),
        fmt_secs(total)
    );
    if ancestors.len() > ANCESTOR_ROWS {
        let _ = write!(
            text,
            " The first {ANCESTOR_ROWS} by start time are listed; `demix lineage STEP --full` shows them all."
        );
    }
    note(b, &text);
}

fn validation(v: &demix_mix::validate::Validation) -> Section {
    let mut b = String::new();
    for w in &v.warnings {
        let _ = write!(b, "<p><strong>Warning:</strong> {}</p>", escape(w));
    }
    note(
        &mut b,
        &format!(
            "{} reference models, each trained on a random mixture with the components' recipe and budget. Each predictor's scores at those mixtures are ranked against the references'. The headline is the objective the search optimises (x: the predictor's, y: the references'; lower is better); per-target rho is flattered by each domain's own weight, which the `weights` baseline shows.",
            v.references
        ),
    );
    objective_plots(&mut b, v);
    merged_plots(&mut b, v);
    predictor_table(&mut b, v);
    validation_details(&mut b, v);
    target_tables(&mut b, v);
    Section {
        id: "validation",
        title: "Validation",
        body: b,
    }
}

/// Each predictor's objective against the references' (the `weights`
/// baseline is left out: its ranks are the weights' own).
fn objective_plots(b: &mut String, v: &demix_mix::validate::Validation) {
    use demix_mix::validate::PredictorKind;
    b.push_str("<div class=\"plots\">");
    for (p, scores) in v.predictors.iter().zip(&v.predicted) {
        if p.kind == PredictorKind::Baseline && p.name == "weights" {
            continue;
        }
        let obj = v.objective.values(&v.targets, scores);
        let points: Vec<(f64, f64)> = obj
            .iter()
            .copied()
            .zip(v.reference_objective.iter().copied())
            .collect();
        let plot = ScatterPlot {
            title: format!("{}: objective", p.name),
            x_label: format!("{} objective", p.name),
            y_label: "reference objective".into(),
            series: vec![Series::new("references", points)],
            identity: false,
            annotation: Some(match p.objective.spearman {
                Some(rho) => format!("Spearman ρ = {rho:.3} (n = {})", v.references),
                None => "Spearman ρ undefined".into(),
            }),
            marks: Vec::new(),
            legend: false,
        };
        b.push_str(&plot.svg());
    }
    b.push_str("</div>");
}

/// The merged proxies against the references, a plot per target.
fn merged_plots(b: &mut String, v: &demix_mix::validate::Validation) {
    if let Some(k) = v.predictors.iter().position(|p| p.name == "merged") {
        let _ = write!(b, "<h3>Merged proxies against references, per target</h3>");
        b.push_str("<div class=\"plots\">");
        for (t, target) in v.targets.iter().enumerate() {
            let points: Vec<(f64, f64)> = v.predicted[k]
                .iter()
                .zip(&v.reference_scores)
                .map(|(p, r)| (p[t], r[t]))
                .collect();
            let plot = ScatterPlot {
                title: format!("{} ({})", target.name, direction_word(target.direction)),
                x_label: format!("merged proxy{}", unit_of(target.direction)),
                y_label: format!("reference model{}", unit_of(target.direction)),
                series: vec![Series::new("references", points)],
                identity: true,
                annotation: v.predictors[k].targets[t]
                    .spearman
                    .map(|rho| format!("Spearman ρ = {rho:.3}")),
                marks: Vec::new(),
                legend: false,
            };
            b.push_str(&plot.svg());
        }
        b.push_str("</div>");
    }
}

/// A row per predictor: its cost and how well it ranks the references.
fn predictor_table(b: &mut String, v: &demix_mix::validate::Validation) {
    let head = [
        ("predictor".to_string(), ""),
        ("kind".into(), ""),
        ("training tokens".into(), "num"),
        ("objective ρ".into(), "num"),
        ("90% CI".into(), ""),
        (format!("top-{:.0}% ρ", v.top_fraction * 100.0), "num"),
        ("Kendall τ".into(), "num"),
        ("pick's rank".into(), "num"),
        ("macro ρ".into(), "num"),
        ("recovery".into(), "num"),
    ];
    let rows: Vec<Vec<(String, &str)>> = v
        .predictors
        .iter()
        .map(|p| {
            let o = &p.objective;
            vec![
                (p.name.clone(), ""),
                (format!("{:?}", p.kind).to_lowercase(), ""),
                (
                    p.training_tokens
                        .map_or("–".into(), |t| fmt_tokens(t as f64)),
                    "num",
                ),
                num(o.spearman, 3),
                (
                    o.interval
                        .as_ref()
                        .map_or("–".into(), |i| format!("[{:.2}, {:.2}]", i.lo, i.hi)),
                    "",
                ),
                num(o.top_spearman, 3),
                num(o.kendall, 3),
                num(o.regret.as_ref().map(|r| r.pick_rank), 1),
                num(p.macro_spearman, 3),
                num(p.macro_recovery, 3),
            ]
        })
        .collect();
    table(b, &head, &rows);
}

/// Every objective with its noise ceiling, signal against seed noise and the
/// verdicts, each when the validation has them.
fn validation_details(b: &mut String, v: &demix_mix::validate::Validation) {
    if !v.objectives.is_empty() {
        let _ = write!(b, "<h3>Every objective, with its noise ceiling</h3>");
        if v.replicas >= 2 {
            note(
                b,
                &format!(
                    "Each reference mixture was trained {} times with different seeds; the references are the mean. The ceiling is the ρ a noiseless predictor would reach against that mean: sqrt(R r / (1 + (R − 1) r)) for R replicas with replicate ρ r.",
                    v.replicas
                ),
            );
        }
        view(b, &objectives_table(v));
    }
    if let Some(t) = seed_noise_table(v) {
        let _ = write!(b, "<h3>Signal against seed noise</h3>");
        view(b, &t);
    }
    if !v.verdicts.is_empty() {
        let _ = write!(b, "<h3>Verdicts</h3>");
        for x in &v.verdicts {
            let _ = write!(b, "<p>{}</p>", escape(&x.sentence));
        }
        if let Some(t) = verdict_table(&v.verdicts) {
            view(b, &t);
        }
    }
}

/// Per-target rho of each predictor, then the final models' ranks.
fn target_tables(b: &mut String, v: &demix_mix::validate::Validation) {
    let mut head = vec![("predictor".to_string(), "")];
    head.extend(v.targets.iter().map(|t| (format!("ρ {}", t.name), "num")));
    let rows: Vec<Vec<(String, &str)>> = v
        .predictors
        .iter()
        .map(|p| {
            let mut row = vec![(p.name.clone(), "")];
            row.extend(p.targets.iter().map(|m| num(m.spearman, 3)));
            row
        })
        .collect();
    table(b, &head, &rows);
    if !v.finals.is_empty() {
        let _ = write!(b, "<h3>Final models among the references</h3>");
        note(b, "Rank 1 is best; ties count half.");
        let mut head = vec![
            ("model".to_string(), ""),
            ("macro rank".into(), "num"),
            ("objective rank".into(), "num"),
        ];
        head.extend(v.targets.iter().map(|t| (t.name.clone(), "num")));
        let rows: Vec<Vec<(String, &str)>> = v
            .finals
            .iter()
            .map(|f| {
                let mut row = vec![
                    (f.name.clone(), ""),
                    num(Some(f.macro_rank), 2),
                    num(Some(f.objective_rank), 1),
                ];
                row.extend(f.ranks.iter().map(|r| num(Some(*r), 1)));
                row
            })
            .collect();
        table(b, &head, &rows);
    }
}
