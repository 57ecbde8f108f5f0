//! The `report` step kind and `demix report`: command steps stand in for the
//! train, evaluate and search steps and write realistic outputs (the search
//! result is a real `demix_mix::Search` run); report steps consume them.

use demix_mix::sampler::sample;
use demix_mix::search::{BoxError, SearchResult, Target};
use demix_mix::{SamplerConfig, Search, SearchConfig};

use crate::harness::{Env, output_path};

/// The 95 % Wilson interval, written out independently of the report's.
fn wilson(p: f64, n: f64) -> (f64, f64) {
    let z: f64 = 1.96;
    let d = 1.0 + z * z / n;
    let c = p + z * z / (2.0 * n);
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((c - h) / d, (c + h) / d)
}

const DOMAINS: [&str; 3] = ["sotu", "math", "chat"];

/// A real search over three candidates with two loss targets.
fn search_result() -> SearchResult {
    let pool = sample(
        &[3.0, 2.0, 1.0],
        &SamplerConfig {
            draws: 300,
            keep: 200,
            seed: 5,
            ..SamplerConfig::default()
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
    let mut eval = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, BoxError> {
        Ok(m.iter()
            .map(|w| {
                vec![
                    3.0 - 0.8 * w[0] + (w[1] - 0.3).powi(2),
                    2.5 - 0.9 * w[1] + 0.2 * w[2],
                ]
            })
            .collect())
    };
    Search::run(cfg, pool, &mut eval).unwrap()
}

fn metrics_jsonl(start: f64, steps: u64) -> String {
    (1..=steps)
        .map(|s| {
            format!(
                "{{\"step\":{s},\"tokens\":{},\"loss\":{:.4},\"lr\":0.0003,\"grad_norm\":1.0,\"tokens_per_s\":5000.0,\"elapsed\":{:.2}}}\n",
                s * 512,
                start - (s as f64).ln(),
                s as f64 * 0.1
            )
        })
        .collect()
}

fn eval_json(loss: f64, acc: f64) -> String {
    serde_json::json!({
        "checkpoint": "/somewhere/checkpoint",
        "datasets": {
            "chat": {"tokens": 4096, "documents": 12, "bytes": 16000, "loss": loss + 0.2,
                     "perplexity": (loss + 0.2f64).exp(), "bits_per_byte": 1.1},
            "sotu": {"tokens": 4096, "documents": 10, "bytes": 15000, "loss": loss,
                     "perplexity": loss.exp(), "bits_per_byte": 1.0}
        },
        "tasks": {
            "sotu_cloze": {"kind": "multiple_choice", "examples": 20, "accuracy": acc, "accuracy_norm": acc + 0.05}
        },
        "mean_loss": loss + 0.1
    })
    .to_string()
}

const MANIFEST: &str = r#"version: 1
name: rep
params:
  domains: [sotu, math, chat]
steps:
  - id: search
    kind: command
    inputs: {src: fixtures/search.json, mix: fixtures/mixture.json}
    outputs: {result: search.json, mixture: mixture.json}
    run: [sh, -c, 'cp "$0" "$2" && cp "$1" "$3"', "${inputs.src}", "${inputs.mix}", "${outputs.result}", "${outputs.mixture}"]
  - id: base
    kind: command
    inputs: {src: fixtures/base.jsonl}
    outputs: {metrics: metrics.jsonl}
    run: [cp, "${inputs.src}", "${outputs.metrics}"]
  - id: final
    kind: command
    inputs: {src: fixtures/final.jsonl}
    outputs: {metrics: metrics.jsonl}
    run: [cp, "${inputs.src}", "${outputs.metrics}"]
  - id: eval
    kind: command
    foreach: [chosen, uniform]
    inputs: {src: "fixtures/eval-${item}.json"}
    outputs: {metrics: metrics.json}
    run: [cp, "${inputs.src}", "${outputs.metrics}"]
  - id: report
    kind: report
    title: DeMix tiny <test>
    search: ${steps.search.result}
    candidates: ${params.domains}
    training:
      base: ${steps.base.metrics}
      chosen: ${steps.final.metrics}
    evaluations:
      chosen: ${steps.eval[chosen].metrics}
      uniform: ${steps.eval[uniform].metrics}
    mixtures:
      chosen: ${steps.search.mixture}
  - id: brief
    kind: report
    evaluations:
      every: ${steps.eval[*].metrics}
    mixtures:
      heuristic: fixtures/heuristic.json
"#;

/// The workflow and its fixtures; returns the search result the fixtures hold.
fn workflow() -> (Env, SearchResult) {
    let env = Env::new();
    let s = search_result();
    env.write("demix.yaml", MANIFEST);
    env.write("fixtures/search.json", &serde_json::to_string(&s).unwrap());
    let mixture: serde_json::Map<String, serde_json::Value> = DOMAINS
        .iter()
        .zip(&s.chosen)
        .map(|(n, w)| (n.to_string(), serde_json::json!(w)))
        .collect();
    env.write(
        "fixtures/mixture.json",
        &serde_json::to_string(&mixture).unwrap(),
    );
    env.write(
        "fixtures/heuristic.json",
        r#"{"sotu": 0.5, "math": 0.25, "chat": 0.25}"#,
    );
    env.write("fixtures/base.jsonl", &metrics_jsonl(7.0, 40));
    env.write("fixtures/final.jsonl", &metrics_jsonl(6.5, 30));
    env.write("fixtures/eval-chosen.json", &eval_json(3.1, 0.6));
    env.write("fixtures/eval-uniform.json", &eval_json(3.3, 0.55));
    (env, s)
}

#[test]
fn report_step_renders_a_self_contained_html_and_a_markdown_summary() {
    let (env, s) = workflow();
    let r = env.demix(&["run"]).ok();
    let ran = r.ran();
    assert!(ran.contains(&"report".to_string()), "{ran:?}");
    let html = std::fs::read_to_string(output_path(&env, "rep", "report", "html")).unwrap();
    let md = std::fs::read_to_string(output_path(&env, "rep", "report", "markdown")).unwrap();

    check_self_contained(&html);
    check_chosen_mixture(&html, &md, &s);
    check_plots_and_tables(&html, &md);
    check_intervals_cost_and_lineage(&html);
    check_brief(&env);
    check_report_command(&env);

    // Nothing changed: nothing runs.
    let again = env.demix(&["run"]).ok();
    assert!(again.ran().is_empty(), "{}", again.stderr());
}

/// Self-contained (no scripts, nothing fetched), with its sections and an escaped title.
fn check_self_contained(html: &str) {
    // Self-contained: no scripts, nothing fetched from the network.
    assert!(html.starts_with("<!DOCTYPE html>"));
    for bad in ["http://", "https://", "<script", "<link", "src="] {
        assert!(!html.contains(bad), "the report contains `{bad}`");
    }
    assert!(html.contains("<style>") && html.contains("<svg"));
    assert!(
        html.matches("<svg").count() >= 5,
        "loss, mixture, 2 scatters, eval bars"
    );
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    // The title is escaped.
    assert!(html.contains("<title>DeMix tiny &lt;test&gt;</title>"));
    for title in [
        "Training loss",
        "Chosen mixture",
        "Predicted vs measured proxy scores",
        "Evaluations",
        "Proxies",
        "Search cost",
        "Lineage",
    ] {
        assert!(
            html.contains(&format!("<h2>{title}</h2>")),
            "no section `{title}`"
        );
    }
}

/// The chosen mixture by candidate in both reports, and the Markdown's sections.
fn check_chosen_mixture(html: &str, md: &str, s: &SearchResult) {
    // The chosen mixture's values, by candidate name, beside the uniform one.
    for (name, w) in DOMAINS.iter().zip(&s.chosen) {
        let v = format!("{w:.4}");
        assert!(
            html.contains(&format!("<td>{name}</td><td class=\"num\">{v}</td>")),
            "{name} {v}"
        );
        assert!(md.contains(&format!("| {name} | {v} | 0.3333 |")), "{md}");
    }
    assert!(md.starts_with("# DeMix tiny <test>\n"));
    assert!(
        md.contains("## Chosen mixture\n\n| candidate | chosen | uniform |"),
        "{md}"
    );
    assert!(
        md.contains("## Evaluations") && md.contains("## Search") && md.contains("## Training")
    );
}

/// The plots' annotations, the tables, the order of sections and the components.
fn check_plots_and_tables(html: &str, md: &str) {
    // Predicted vs measured with the Spearman rho of the second round's proxies.
    assert!(html.contains("Spearman ρ = "), "rho annotation");
    assert!(html.contains("(n = 8)"));
    // The evaluation table, best value in bold; the proxies table truncated.
    assert!(html.contains("sotu_cloze (task)"));
    assert!(html.contains("<td class=\"num best\">3.1000</td>"));
    assert!(html.contains("All 24 evaluated proxies"));
    // It opens with the chosen mixture, before the run's details and sections.
    let chosen = html
        .find("<p class=\"chosen\"><strong>Chosen mixture:</strong> <span>sotu <strong>")
        .expect("the chosen mixture under the title");
    assert!(chosen < html.find("<nav>").unwrap() && chosen < html.find("<section").unwrap());
    assert!(
        html.find("<h2>Chosen mixture</h2>").unwrap()
            < html.find("<h2>Training loss</h2>").unwrap()
    );
    assert!(md.find("## Chosen mixture").unwrap() < md.find("## Search").unwrap());
    // The components' own losses, from the search's proxies.
    assert!(html.contains("<h2>Components</h2>"));
    assert!(
        md.contains("## Components\n\n| component | measured on | sotu | math |"),
        "{md}"
    );
}

/// Task intervals, axis notes, the proxies' column groups, search cost and lineage.
fn check_intervals_cost_and_lineage(html: &str) {
    // Task accuracy with its Wilson interval over the 20 examples; no chance
    // level, which the metrics do not record.
    let (lo, hi) = wilson(0.6, 20.0);
    assert!(
        html.contains(&format!(
            "0.6000<span class=\"ci\">[{lo:.2}, {hi:.2}]</span>"
        )),
        "{lo} {hi}"
    );
    assert!(html.contains("chance level is not shown"));
    // Loss bars start near the losses and say so; rounds and the chosen mixture
    // are marked on the predicted-vs-measured plots, with units.
    assert!(html.contains("axis starts at "));
    assert!(html.contains(">round 2</text>") && html.contains("chosen: predicted "));
    assert!(html.contains(">predicted before evaluation (nats/token)</text>"));
    // The proxies' columns are grouped.
    assert!(html.contains("class=\"group\">weights</th>"));
    // Search cost and lineage: each input's producer, kind and key. Command
    // steps stand in for the components here, so their training is not counted.
    assert!(html.contains("proxies evaluated</dt><dd>24</dd>"));
    assert!(html.contains("components&#39; training</dt><dd>not found in the lineage"));
    assert!(html.contains("16 + 8"));
    assert!(html.contains("${steps.eval[uniform].metrics}"));
    assert!(html.contains("eval[uniform].metrics (rep)"));
    assert!(html.contains("Every step upstream"));
}

/// The second report: a `[*]` reference labelled by step, and a workspace file.
fn check_brief(env: &Env) {
    // The second report: a `[*]` reference labelled by step, and a workspace file.
    let brief = std::fs::read_to_string(output_path(env, "rep", "brief", "html")).unwrap();
    assert!(
        brief.contains("<th class=\"num\">eval[chosen]</th><th class=\"num\">eval[uniform]</th>")
    );
    assert!(brief.contains("workspace file fixtures/heuristic.json"));
    assert!(
        !brief.contains("<h2>Proxies</h2>"),
        "no search, no proxies section"
    );
    assert!(!brief.contains("<h2>Training loss</h2>"));
}

/// `demix report` says where both are, as text and as JSON.
fn check_report_command(env: &Env) {
    // `demix report` says where both are.
    let out = env.demix(&["report"]).ok().stdout();
    for (step, name) in [
        ("report", "report.html"),
        ("report", "report.md"),
        ("brief", "report.html"),
    ] {
        assert!(out.contains(step), "{out}");
        assert!(out.contains(name), "{out}");
    }
    let html_line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("html"))
        .unwrap()
        .trim();
    assert_eq!(
        env.path(html_line),
        output_path(env, "rep", "report", "html"),
        "{out}"
    );
    let j = env.demix(&["report", "--json"]).ok().json();
    assert_eq!(j["reports"].as_array().unwrap().len(), 2);
    assert_eq!(j["reports"][0]["step"], "report");
    assert!(
        j["reports"][0]["markdown"]
            .as_str()
            .unwrap()
            .ends_with("report.md")
    );
}

#[test]
fn demix_report_before_the_report_has_run() {
    let (env, _) = workflow();
    let r = env.demix(&["report"]).fails(1);
    assert!(
        r.stderr().contains("report step `report` has not run yet"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("--target report"), "{}", r.stderr());
    // A manifest without a report step.
    env.write(
        "plain.yaml",
        "version: 1\nname: plain\nsteps:\n  - id: a\n    kind: command\n    outputs: {o: o.txt}\n    run: [touch, \"${outputs.o}\"]\n",
    );
    let r = env.demix(&["report", "plain.yaml"]).fails(2);
    assert!(
        r.stderr().contains("has no `report` step"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_bad_input_fails_the_report_naming_the_file() {
    let (env, _) = workflow();
    env.write("fixtures/eval-uniform.json", "{\"datasets\": ");
    let r = env.demix(&["run", "--target", "report"]).fails(1);
    let err = r.stderr();
    assert!(err.contains("evaluations `uniform`"), "{err}");
    assert!(err.contains("eval[uniform]"), "{err}");
    assert!(err.contains("metrics.json: not valid JSON"), "{err}");
    // Valid JSON of the wrong shape: a mixture where a search result belongs.
    let (env, _) = workflow();
    env.write("fixtures/search.json", r#"{"sotu": 0.5, "math": 0.5}"#);
    let r = env.demix(&["run", "--target", "report"]).fails(1);
    let err = r.stderr();
    assert!(err.contains("search.json: not a search result"), "{err}");
    // Candidates that do not match the search.
    let (env, _) = workflow();
    env.write(
        "demix.yaml",
        &MANIFEST.replace("domains: [sotu, math, chat]", "domains: [sotu, math]"),
    );
    let r = env.demix(&["run", "--target", "report"]).fails(1);
    assert!(
        r.stderr().contains("`candidates` names 2 datasets"),
        "{}",
        r.stderr()
    );
}

#[test]
fn report_fields_are_checked() {
    let env = Env::new();
    let cases = [
        (
            "steps:\n  - id: r\n    kind: report\n    evaluatons: {}\n",
            "nknown field `evaluatons`",
        ),
        (
            "steps:\n  - id: r\n    kind: report\n",
            "a report step needs something to report",
        ),
        (
            "datasets:\n  d: {files: x.txt}\nsteps:\n  - id: r\n    kind: report\n    training:\n      a: ${datasets.d}\n",
            "`training.a` takes one `${steps.ID.OUTPUT}` reference or a path",
        ),
        (
            "steps:\n  - id: r\n    kind: report\n    search: ${steps.nope.result}\n",
            "unknown step `nope`",
        ),
        (
            "steps:\n  - id: r\n    kind: report\n    candidates: [a, a]\n    mixtures: {m: m.json}\n",
            "candidate `a` appears twice",
        ),
    ];
    for (steps, message) in cases {
        env.write("bad.yaml", &format!("version: 1\nname: bad\n{steps}"));
        let r = env.demix(&["check", "bad.yaml"]).fails(2);
        assert!(r.stderr().contains(message), "{message}:\n{}", r.stderr());
    }
}

/// Real train steps: the lineage gives the components' training tokens (the
/// search's cost) and where each continued training starts.
#[test]
fn the_report_counts_components_and_draws_continued_runs_from_their_start() {
    if !crate::harness::worker() {
        return;
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let manifest = format!(
        r#"version: 1
name: lin
params:
  candidates: [sotu, math]
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
steps:
  - id: tok
    kind: tokenizer
    datasets: [sotu, math]
    vocab_size: 512
    max_bytes: 200000
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1}}
    tokens: 2048
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: comp
    kind: train
    foreach: ${{params.candidates}}
    init: ${{steps.base.checkpoint}}
    data: {{candidate: "${{item}}", general: sotu, beta: 0.5}}
    tokens: 1024
    batch_size: 4
    seq_len: 32
    device: cpu
    threads: 1
  - id: search
    kind: search
    components: ${{steps.comp[*].checkpoint}}
    candidates: ${{params.candidates}}
    targets: [sotu, math]
    rounds: [4, 2]
    top_k: 2
    pool: 50
    max_tokens: 256
    seq_len: 32
    device: cpu
    threads: 1
  - id: report
    kind: report
    search: ${{steps.search.result}}
    candidates: ${{params.candidates}}
    training:
      base: ${{steps.base.metrics}}
      math: ${{steps.comp[math].metrics}}
"#,
        d = data.display()
    );
    let env = Env::new();
    env.write("demix.yaml", &manifest);
    let r = env.demix(&["run"]).ok();
    assert!(r.ran().contains(&"report".to_string()), "{}", r.stderr());
    let html = std::fs::read_to_string(output_path(&env, "lin", "report", "html")).unwrap();
    // Two components of 1024 tokens each; merged proxies train nothing.
    assert!(
        html.contains("training tokens in all</dt><dd>2048 (components 2048 + proxies 0)"),
        "{html}"
    );
    assert!(html.contains("2048 tokens (2 components, each from its own metrics)"));
    // The component continues the base: its curve starts at the base's 2048 tokens.
    assert!(
        html.contains("<td>math</td><td>base (from 2048)</td>"),
        "{html}"
    );
    assert!(html.contains("<td>base</td><td>–</td>"));
    let md = std::fs::read_to_string(output_path(&env, "lin", "report", "markdown")).unwrap();
    assert!(
        md.contains("Training cost: 2048 tokens (2 components 2048, proxies 0)."),
        "{md}"
    );
    // The lineage section summarises the steps that made its inputs, as
    // `demix lineage` does: the component's chain and mixture weights.
    assert!(html.contains("Where the inputs came from"), "{html}");
    let comp = md
        .split("```")
        .find(|b| b.contains("comp[math] (train v"))
        .unwrap_or_else(|| panic!("no summary of comp[math]: {md}"));
    assert!(
        comp.contains("init      tok (tokenizer) -> base (train)"),
        "{comp}"
    );
    assert!(
        comp.contains("math  weight 0.5") && comp.contains("sotu  weight 0.5"),
        "{comp}"
    );
}
