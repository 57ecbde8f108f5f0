//! `demix lineage`: the summary a person reads (data and weights, settings,
//! init chain, resolved argv, when and where), the full tree behind `--full`
//! and `--depth`, and both in `--json`.

use crate::harness::{Env, output_path};

/// A command chain: `prep` reads a workspace file and a dataset, `join` reads
/// `prep`'s output and a parameter.
const CHAIN: &str = r#"version: 1
name: chain
params:
  sep: "-"
datasets:
  words: {files: data/words.txt}
steps:
  - id: prep
    kind: command
    inputs: {src: notes/in.txt, words: "${datasets.words}"}
    outputs: {out: prep.txt}
    run: [sh, -c, 'cat "$0" "$1" > "$2"', "${inputs.src}", "${inputs.words}", "${outputs.out}"]
  - id: join
    kind: command
    inputs: {p: "${steps.prep.out}"}
    outputs: {out: joined.txt}
    run: [sh, -c, 'tr "\n" "$1" < "$0" > "$2"', "${inputs.p}", "--sep=${params.sep}", "${outputs.out}"]
"#;

fn chain() -> Env {
    let env = Env::new();
    env.write("demix.yaml", CHAIN)
        .write("notes/in.txt", "hello\n")
        .write("data/words.txt", "one\ntwo\nthree\n");
    env.demix(&["run"]).ok();
    env
}

/// Output made stable for a snapshot: the temporary folder and the host here,
/// keys and tree hashes, times and durations by [`snapshot`]'s filters.
fn stable(env: &Env, text: &str) -> String {
    let dir = env.path("").display().to_string();
    let text = text.replace(dir.trim_end_matches('/'), "[TMP]");
    text.replace(&format!(" on {},", gethostname()), " on [HOST],")
}

/// Snapshots `text` with what changes from run to run filtered out.
macro_rules! snapshot {
    ($name:expr, $text:expr) => {
        insta::with_settings!({filters => vec![
            (r"[0-9a-f]{64}", "[HASH]"),
            (r"trees/[0-9a-f]{2}/", "trees/[..]/"),
            (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "[TIME]"),
            (r"took \d+(\.\d+)?s", "took [DURATION]"),
            (r"\d+(\.\d+)?s of step time", "[DURATION] of step time"),
        ]}, {
            insta::assert_snapshot!($name, $text);
        });
    };
}

fn gethostname() -> String {
    std::process::Command::new("hostname")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[test]
fn a_command_steps_summary_shows_its_resolved_argv_and_inputs() {
    let env = chain();
    let text = env.demix(&["lineage", "join"]).ok().stdout();
    assert!(text.lines().count() <= 20, "short:\n{text}");
    // The argv as it ran: the input's path in the store and the parameter's
    // value, not the template.
    let prep_out = output_path(&env, "chain", "prep", "out");
    let argv = text
        .lines()
        .find(|l| l.trim_start().starts_with("argv"))
        .unwrap_or_else(|| panic!("no argv line:\n{text}"));
    assert!(argv.contains(prep_out.to_str().unwrap()), "{argv}");
    assert!(argv.contains("--sep=-"), "{argv}");
    assert!(!argv.contains("${"), "{argv}");
    // Its input, by name, with the producer and its size (5 words, 20 bytes).
    assert!(text.contains("input     p = prep.out (20 B)"), "{text}");
    assert!(text.contains("upstream  1 result, "), "{text}");

    // prep: the dataset's file with its bytes, the workspace file with its.
    let text = env.demix(&["lineage", "prep"]).ok().stdout();
    assert!(
        text.contains("words") && text.contains("14 B  data/words.txt"),
        "{text}"
    );
    assert!(
        text.contains("input     src = notes/in.txt (6 B)"),
        "{text}"
    );
    assert!(text.contains("upstream  none"), "{text}");
    snapshot!("lineage_summary_command", stable(&env, &text));
}

#[test]
fn full_and_depth_show_the_tree_and_json_carries_both() {
    let env = chain();
    let summary = env.demix(&["lineage", "join"]).ok().stdout();
    assert!(!summary.contains("field    run ="), "{summary}");
    let full = env.demix(&["lineage", "join", "--full"]).ok().stdout();
    for needle in [
        "step join (command v1) of workflow chain",
        "    step prep (command v1) of workflow chain",
        "field    run = [\"sh\",\"-c\"",
        "file   data/words.txt",
    ] {
        assert!(full.contains(needle), "missing {needle:?} in:\n{full}");
    }
    assert!(full.lines().count() > summary.lines().count(), "{full}");
    // --depth 0: the result alone, its producer named but not expanded.
    let top = env
        .demix(&["lineage", "join", "--depth", "0"])
        .ok()
        .stdout();
    assert!(top.contains("field    run ="), "{top}");
    assert!(top.contains("    step prep (command v1, key "), "{top}");
    assert!(top.contains("; below --depth)"), "{top}");
    assert!(!top.contains("of workflow chain\n      key"), "{top}");
    assert_eq!(
        env.demix(&["lineage", "join", "--depth", "5"])
            .ok()
            .stdout(),
        full
    );

    // JSON: the full tree as before, and the summary.
    let j = env.demix(&["lineage", "join", "--json"]).ok().json();
    assert_eq!(j["step"], "join");
    assert_eq!(j["inputs"][0]["producers"][0]["step"], "prep");
    let s = &j["summary"];
    assert_eq!(s["step"], "join");
    assert_eq!(s["kind"], "command");
    let argv: Vec<&str> = s["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(argv[..2], ["sh", "-c"]);
    assert_eq!(
        argv[3],
        output_path(&env, "chain", "prep", "out").to_str().unwrap()
    );
    assert_eq!(argv[4], "--sep=-");
    assert_eq!(s["inputs"][0]["name"], "p");
    assert_eq!(s["inputs"][0]["from"][0], "prep.out");
    assert_eq!(s["inputs"][0]["bytes"], 20);
    assert_eq!(s["upstream"]["results"], 1);
    let p = env.demix(&["lineage", "prep", "--json"]).ok().json();
    let d = &p["summary"]["data"][0];
    assert_eq!(d["dataset"], "words");
    assert_eq!(d["bytes"], 14);
    assert_eq!(d["files"][0]["path"], "data/words.txt");
    assert_eq!(d["files"][0]["verified"], true);
}

fn data() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// tokenizer -> base (trained from scratch on sotu) -> component (continued
/// from base on the component recipe) -> final (continued from the
/// component, on a mixture file another step wrote), tiny sizes.
fn ml_manifest() -> String {
    format!(
        r#"version: 1
name: ml
datasets:
  sotu: {{files: {d}/sotu/train.jsonl, validation: {d}/sotu/validation.jsonl}}
  math: {{files: {d}/math/train.jsonl, validation: {d}/math/validation.jsonl}}
steps:
  - {{id: tok, kind: tokenizer, datasets: [sotu, math], vocab_size: 400, max_bytes: 100000}}
  - id: base
    kind: train
    tokenizer: ${{steps.tok.tokenizer}}
    model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}}
    data: {{sotu: 1}}
    tokens: 8192
    batch_size: 8
    seq_len: 32
    device: cpu
    threads: 1
  - id: comp
    kind: train
    init: ${{steps.base.checkpoint}}
    data: {{candidate: math, general: sotu, beta: 0.25}}
    tokens: 4096
    batch_size: 8
    seq_len: 32
    lr: 0.001
    device: cpu
    threads: 1
  - id: mix
    kind: command
    outputs: {{m: mixture.json}}
    run: [sh, -c, 'echo "{{\"math\": 3, \"sotu\": 1}}" > "$0"', "${{outputs.m}}"]
  - id: final
    kind: train
    init: ${{steps.comp.checkpoint}}
    mixture: ${{steps.mix.m}}
    datasets: [math, sotu]
    tokens: 4096
    batch_size: 8
    seq_len: 32
    device: auto
    threads: 1
"#,
        d = data().display()
    )
}

#[test]
fn a_trainings_summary_shows_its_init_chain_and_mixture_weights() {
    if !crate::harness::worker() {
        return;
    }
    let env = Env::new();
    env.write("demix.yaml", &ml_manifest());
    env.demix(&["run"]).ok();
    let text = env.demix(&["lineage", "comp"]).ok().stdout();
    assert!(text.lines().count() <= 20, "short:\n{text}");
    assert!(
        text.contains("init      tok (tokenizer) -> base (train) -> comp (train)"),
        "{text}"
    );
    // The component recipe's weights: math at 1 - beta, sotu at beta.
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(&format!("{name}  weight ")))
            .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
            .to_string()
    };
    assert!(line("math").contains("weight 0.75"), "{text}");
    assert!(line("sotu").contains("weight 0.25"), "{text}");
    assert!(line("math").contains("math/train.jsonl"), "{text}");
    assert!(line("math").contains(" MiB"), "bytes: {text}");
    assert!(
        text.contains("candidate math with general sotu at share 0.25"),
        "{text}"
    );
    // Settings resolved: given, defaulted and derived; no references or nulls.
    for needle in [
        "lr 0.001",
        "tokens 4096",
        "seed 0",
        "warmup_tokens 40",
        "micro_batch_size 8",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("${") && !text.contains("null"), "{text}");
    // The device the result recorded using, with its compute dtype.
    assert!(text.contains("device    cpu, f32\n"), "{text}");
    assert!(
        text.contains("input     init = base.checkpoint ("),
        "{text}"
    );
    assert!(text.contains("upstream  2 results, "), "{text}");

    // A mixture file from another step: its weights, normalised.
    let text = env.demix(&["lineage", "final"]).ok().stdout();
    assert!(
        text.contains("init      tok (tokenizer) -> base (train) -> comp (train) -> final (train)"),
        "{text}"
    );
    assert!(text.contains("mixture   mixture file mix.m"), "{text}");
    assert!(text.contains("math  weight 0.75"), "{text}");
    assert!(text.contains("sotu  weight 0.25"), "{text}");
    let j = env.demix(&["lineage", "final", "--json"]).ok().json();
    let s = &j["summary"];
    let chain: Vec<&str> = s["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["steps"][0].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["tok", "base", "comp"]);
    assert_eq!(s["chain"][2]["via"], "init");
    assert_eq!(s["data"][0]["dataset"], "math");
    assert_eq!(s["data"][0]["weight"], 0.75);
    // `auto` is resolved to what ran it (a CUDA device where there is one).
    let used = s["device"]["used"].as_str().unwrap_or_default();
    assert_eq!(s["device"]["requested"], "auto");
    assert!(used == "cpu, f32" || used.starts_with("cuda:"), "{used}");
    assert_eq!(s["params"]["tokens"], 4096);
    // Sizes of what the training wrote (metrics hold the losses' digits) vary
    // with the machine; the data's do not.
    let text = env.demix(&["lineage", "comp"]).ok().stdout();
    let text: String = text
        .replace(&data().display().to_string(), "[DATA]")
        .lines()
        .map(|l| match l.strip_prefix("  output ") {
            Some(o) => format!("  output {}\n", o.rsplit_once(" (").map_or(o, |(a, _)| a)),
            None => format!("{l}\n"),
        })
        .collect();
    snapshot!("lineage_summary_train", stable(&env, &text));
}
