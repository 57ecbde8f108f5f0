//! How far to trust an answer, through the CLI and without libtorch: replicate
//! references give seed noise and noise ceilings, final models trained with
//! several seeds give a verdict. Command steps write evaluations with a known
//! signal and known noise, so the measures can be checked against the truth.

use crate::harness::{Env, output_path};

/// Writes what the steps below read: mixtures of two candidates, and metrics
/// files whose losses are a known function of the mixture plus known noise.
const GEN: &str = r#"
import json, random, sys
kind, out = sys.argv[1], sys.argv[-1]
N = 24
mix = [{"a": (i + 0.5) / N, "b": 1 - (i + 0.5) / N} for i in range(N)]
def metrics(la, lb):
    return {"datasets": {"a": {"loss": la}, "b": {"loss": lb}}, "tasks": {}, "mean_loss": (la + lb) / 2}
if kind == "mixtures":
    json.dump(mix, open(out, "w"))
elif kind == "ref":
    i, seed = int(sys.argv[2]), int(sys.argv[3])
    r = random.Random(1000 * i + seed)
    w = mix[i]["a"]
    # Target a moves 1 nat across mixtures with 0.02 of seed noise; target b
    # moves 0.1 with 1.0 of noise: its ranking is noise.
    json.dump(metrics(3 - w + r.gauss(0, 0.02), 3 + 0.1 * w + r.gauss(0, 1.0)), open(out, "w"))
elif kind == "proxy":
    w = mix[int(sys.argv[2])]["a"]
    json.dump(metrics(3 - w, 3 + 0.1 * w), open(out, "w"))
elif kind == "final":
    model, seed = sys.argv[2], int(sys.argv[3])
    jitter = [0.004, -0.003, 0.001][seed]
    shift = {"chosen": 0.0, "weaker": 0.2, "stronger": -0.2, "same": 0.0}[model]
    if model == "same":
        jitter = [0.05, -0.06, 0.02][seed]
    json.dump(metrics(2.5 + shift + jitter, 3.0 + shift + jitter), open(out, "w"))
"#;

fn manifest() -> String {
    r#"version: 1
name: science
params:
  references: 24
steps:
  - id: mixtures
    kind: command
    inputs: {gen: gen.py}
    outputs: {mixtures: mixtures.json}
    run: [python3, "${inputs.gen}", mixtures, "${outputs.mixtures}"]
  - id: ref
    kind: command
    matrix: {mixture: {range: "${params.references}"}, seed: [0, 1]}
    inputs: {gen: gen.py}
    outputs: {metrics: metrics.json}
    run: [python3, "${inputs.gen}", ref, "${item.mixture}", "${item.seed}", "${outputs.metrics}"]
  - id: proxy
    kind: command
    foreach: {range: "${params.references}"}
    inputs: {gen: gen.py}
    outputs: {metrics: metrics.json}
    run: [python3, "${inputs.gen}", proxy, "${item}", "${outputs.metrics}"]
  - id: final
    kind: command
    matrix: {model: [chosen, weaker, stronger, same], seed: {range: 3}}
    inputs: {gen: gen.py}
    outputs: {metrics: metrics.json}
    run: [python3, "${inputs.gen}", final, "${item.model}", "${item.seed}", "${outputs.metrics}"]
  - id: validate
    kind: validate
    mixtures: ${steps.mixtures.mixtures}
    references: ${steps.ref[*].metrics}
    replicas: 2
    candidates: [a, b]
    targets: [a, b]
    proxies: {exact: "${steps.proxy[*].metrics}"}
    finals:
      chosen: ${steps.final[chosen-*].metrics}
      weaker: ${steps.final[weaker-*].metrics}
      stronger: ${steps.final[stronger-*].metrics}
      same: ${steps.final[same-*].metrics}
    verdict: {chosen: chosen, against: [weaker, stronger, same]}
    objective: mean_loss
    bootstrap: 0
"#
    .to_string()
}

#[test]
fn replicas_give_noise_ceilings_and_seeds_give_verdicts() {
    let env = Env::new();
    env.write("gen.py", GEN).write("demix.yaml", &manifest());
    let dag = env.demix(&["dag"]).ok().stdout();
    // The matrix expands mixture-major, then seed; a glob picks a model's seeds.
    assert!(
        dag.contains("ref[0-0]") && dag.contains("ref[23-1]"),
        "{dag}"
    );
    assert!(
        dag.contains("validate (validate) <- mixtures, ref[0-0], ref[0-1]"),
        "{dag}"
    );
    let run = env.demix(&["run"]).ok();
    let err = run.stderr();
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(output_path(&env, "science", "validate", "result")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["replicas"], 2);
    assert_eq!(v["references"], 24);
    // Target a: signal far above its seed noise; target b: noise-dominated.
    let (a, b) = (&v["noise"][0], &v["noise"][1]);
    let noise_a = a["noise"].as_f64().unwrap();
    assert!((0.01..0.03).contains(&noise_a), "{a}");
    let noise_b = b["noise"].as_f64().unwrap();
    assert!((0.6..1.5).contains(&noise_b), "{b}");
    assert_eq!(a["flagged"], false);
    assert_eq!(b["flagged"], true);
    assert!(
        a["ceiling"]["replicate_rho"].as_f64().unwrap() > 0.95,
        "{a}"
    );
    assert!(b["ceiling"]["replicate_rho"].as_f64().unwrap() < 0.6, "{b}");
    let w = v["warnings"].to_string();
    assert!(
        w.contains("target `b`") && w.contains("mostly noise"),
        "{w}"
    );
    // Every objective side by side, the headline (mean_loss) first, each with a
    // ceiling and each predictor's rho as a fraction of it.
    let names: Vec<&str> = v["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["objective"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mean_loss", "mean_percentile_rank", "standardized"]);
    let exact_a = &v["predictors"][0]["targets"][0];
    assert!(exact_a["of_ceiling"].as_f64().unwrap() > 0.9, "{exact_a}");
    // The verdicts: a win, a loss and a tie, each in one sentence.
    let outcomes: Vec<&str> = v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["better", "worse", "no_difference"],
        "{}",
        v["verdicts"]
    );
    assert_eq!(v["verdicts"][0]["seeds"], 3);
    // `demix run` ends with them.
    assert!(
        err.contains(
            "verdict validate: `chosen` beats `weaker` on the objective (mean_loss) by 0.2"
        ),
        "{err}"
    );
    assert!(err.contains("`chosen` is worse than `stronger`"), "{err}");
    assert!(
        err.contains("no difference between `chosen` and `same`"),
        "{err}"
    );
    // And `run --json` has them as fields, also when the step is fresh.
    let j = env.demix(&["run", "--json"]).ok().json();
    let verdicts = j["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 3, "{j:#}");
    assert_eq!(verdicts[0]["step"], "validate");
    assert!(
        verdicts[0]["sentence"]
            .as_str()
            .unwrap()
            .starts_with("`chosen` beats `weaker` on the objective (mean_loss) by 0.2"),
        "{j:#}"
    );
    let md = std::fs::read_to_string(output_path(&env, "science", "validate", "summary")).unwrap();
    assert!(
        md.contains("noise-dominated") && md.contains("ceiling"),
        "{md}"
    );
}

#[test]
fn a_verdict_must_name_final_models_with_matching_seeds() {
    let env = Env::new();
    env.write("gen.py", GEN);
    // An unknown label is a located error at check time.
    env.write(
        "demix.yaml",
        &manifest().replace("against: [weaker, stronger, same]", "against: [weakr]"),
    );
    let r = env.demix(&["check"]).fails(2);
    let e = r.stderr();
    assert!(
        e.contains("the verdict names `weakr`")
            && e.contains("weaker")
            && e.contains("demix.yaml:"),
        "{e}"
    );
    // Different seed counts on the two sides are refused before anything runs.
    env.write(
        "demix.yaml",
        &manifest().replace(
            "weaker: ${steps.final[weaker-*].metrics}",
            "weaker: ${steps.final[weaker-0].metrics}",
        ),
    );
    let r = env.demix(&["check"]).fails(2);
    assert!(
        r.stderr()
            .contains("1 models of `weaker` but 3 of `chosen`"),
        "{}",
        r.stderr()
    );
}

#[test]
fn matrix_items_and_axes_are_checked() {
    let env = Env::new();
    for (bad, want) in [
        ("matrix: {model: [a-b], seed: [0]}", "holds `-`"),
        ("matrix: {model: [a, a]}", "appears twice"),
        ("matrix: {model: []}", "is empty"),
        (
            "foreach: [a]\n    matrix: {seed: [0]}",
            "either `foreach` or `matrix`",
        ),
        (
            "matrix: {model: [a], seed: [0]}\n    run: [echo, \"${item.sed}\"]",
            "names no axis",
        ),
    ] {
        env.write(
            "demix.yaml",
            &format!(
                "version: 1\nname: m\nsteps:\n  - id: s\n    kind: command\n    {bad}\n{}",
                if bad.contains("run:") {
                    ""
                } else {
                    "    run: [echo]\n"
                }
            ),
        );
        let r = env.demix(&["check"]).fails(2);
        assert!(r.stderr().contains(want), "{bad}: {}", r.stderr());
    }
}
