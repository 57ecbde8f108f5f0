//! What the steps that write a checkpoint folder (`train`, `merge`) put in
//! it besides the weights: a model card (`README.md`) with the checkpoint's
//! provenance, and for merges the special token ids and
//! `generation_config.json` (training writes those with the weights; see
//! [`demix_spec::card`]).
//!
//! Cards are a pure function of the step's key material and its outputs: no
//! time, no paths of the store; a rerun writes the same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use demix_core::key::Origin;
use demix_core::kind::{RunCtx, StepError};
use demix_spec::card::{
    GENERATION_CONFIG, MODEL_CARD, ModelCard, Provenance, Section, TokenizerSpecials, code,
    generation_config, provenance_section, token_id_for,
};
use demix_spec::model::Qwen3Config;
use demix_spec::train::{Precision, TrainConfig};

/// Who writes: this step of this workflow, and this demix.
pub fn provenance(ctx: &RunCtx) -> Provenance {
    Provenance {
        workflow: ctx.spec.manifest.clone(),
        step: ctx.spec.step.clone(),
        kind: ctx.spec.kind.clone(),
        key: ctx.spec.key.clone(),
        demix_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// How records name an input: the step outputs it came from
/// (`component[math].checkpoint`), or the input as the manifest wrote it (a
/// path); never where a store lives.
pub fn input_labels(ctx: &RunCtx, key: &str, n: usize) -> Vec<String> {
    match ctx.spec.record.inputs.get(key).map(|i| &i.origin) {
        Some(Origin::Steps { outputs }) if outputs.len() == n => outputs
            .iter()
            .map(|u| format!("{}.{}", u.step, u.output))
            .collect(),
        _ => vec![key.to_string(); n],
    }
}

/// An input as a card says it: its label and content hash.
pub fn describe_input(ctx: &RunCtx, key: &str) -> String {
    let label = input_labels(ctx, key, 1).remove(0);
    match ctx.spec.record.inputs.get(key) {
        Some(r) => format!("{} (content {})", code(&label), code(&r.hash)),
        None => code(&label),
    }
}

/// A float as Rust prints it: the shortest text that reads back the same.
fn num(x: f64) -> String {
    format!("{x}")
}

/// What a training checkpoint's card says.
pub struct TrainCard<'a> {
    pub provenance: Provenance,
    /// What the model started from, described.
    pub start: String,
    /// The tokenizer, described.
    pub tokenizer: String,
    /// Where the mixture came from, described.
    pub mixture_source: String,
    /// The weights trained on: normalised, by dataset name.
    pub weights: BTreeMap<String, f64>,
    /// Each dataset's content hash (its training split).
    pub dataset_hashes: BTreeMap<String, String>,
    pub train: &'a TrainConfig,
    /// The config as saved in the folder.
    pub model: &'a Qwen3Config,
    /// Tokens this checkpoint has seen: the budget, or a `checkpoints` one.
    pub tokens_seen: u64,
}

impl TrainCard<'_> {
    pub fn render(&self) -> String {
        let t = self.train;
        let tps = t.tokens_per_step().max(1);
        let steps = t.total_steps();
        let step_here = self.tokens_seen.div_ceil(tps);
        // As the trainer schedules it (demix_ml::train::TrainSpec::schedule).
        let warmup_tokens = t
            .warmup_tokens
            .unwrap_or((t.tokens as f64 * t.warmup_fraction) as u64);
        let micro = t.micro_batch_size.unwrap_or(t.batch_size).min(t.batch_size);
        let p = &self.provenance;
        let at = if step_here < steps {
            format!(
                "an intermediate checkpoint after {} of the run's {} tokens (step {step_here} of {steps})",
                self.tokens_seen,
                steps * tps
            )
        } else {
            format!(
                "the final checkpoint, after {} tokens ({steps} steps)",
                steps * tps
            )
        };
        let mut data = Section::new("Data")
            .text(format!(
                "The mixture, {}: each training sequence is drawn from a dataset with these probabilities, then as a uniform window of its tokens.",
                self.mixture_source
            ))
            .header(&["dataset", "weight", "content hash"]);
        for (name, w) in &self.weights {
            data = data.row(vec![
                code(name),
                num(*w),
                self.dataset_hashes
                    .get(name)
                    .map_or_else(String::new, |h| code(h)),
            ]);
        }
        let precision = match t.precision {
            Precision::Auto => "auto (bf16 compute on CUDA, f32 on CPU; f32 weights)",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 compute, f32 weights",
        };
        let training = Section::new("Training")
            .text(format!(
                "AdamW, linear warmup then cosine decay to `min_lr_ratio` of the peak; {}; tokenizer {}.",
                self.start, self.tokenizer
            ))
            .header(&["hyperparameter", "value"])
            .pair("tokens (budget)", t.tokens)
            .pair("tokens seen by this checkpoint", self.tokens_seen)
            .pair("steps", steps)
            .pair("batch_size (sequences per step)", t.batch_size)
            .pair("seq_len", t.seq_len)
            .pair("tokens per step", t.tokens_per_step())
            .pair("micro_batch_size", micro)
            .pair("seed", t.seed)
            .pair("lr (peak)", num(t.lr))
            .pair("min_lr_ratio", num(t.min_lr_ratio))
            .pair("warmup_tokens", warmup_tokens)
            .pair("warmup_steps", warmup_tokens.div_ceil(tps))
            .pair("weight_decay", num(t.weight_decay))
            .pair("betas", format!("[{}, {}]", num(t.betas[0]), num(t.betas[1])))
            .pair("eps", num(t.eps))
            .pair("grad_clip", num(t.grad_clip))
            .pair("precision", precision);
        let mut card = ModelCard {
            tags: vec!["qwen3".into(), "text-generation".into()],
            datasets: self.weights.keys().cloned().collect(),
            title: format!("{} / {}", p.workflow, p.step),
            intro: vec![format!(
                "A {}-parameter Qwen3-architecture causal language model trained by demix {}: step {} of workflow {}. This folder holds {at}.",
                self.model.num_params(),
                p.demix_version,
                code(&p.step),
                code(&p.workflow),
            )],
            sections: vec![data, training, model_section(self.model)],
        };
        card.sections.push(usage_section());
        card.sections.push(provenance_section(p));
        card.render()
    }
}

fn model_section(c: &Qwen3Config) -> Section {
    let id = |x: Option<i64>| x.map_or("null".to_string(), |i| i.to_string());
    let mut s = Section::new("Model")
        .header(&["config", "value"])
        .pair("architectures", c.architectures.join(", "))
        .pair("parameters", c.num_params())
        .pair("vocab_size", c.vocab_size)
        .pair("hidden_size", c.hidden_size)
        .pair("intermediate_size", c.intermediate_size)
        .pair("num_hidden_layers", c.num_hidden_layers)
        .pair("num_attention_heads", c.num_attention_heads)
        .pair("num_key_value_heads", c.num_key_value_heads)
        .pair("head_dim", c.head_dim)
        .pair("max_position_embeddings", c.max_position_embeddings)
        .pair("rope_theta", num(c.rope_theta))
        .pair("tie_word_embeddings", c.tie_word_embeddings)
        .pair("torch_dtype", &c.torch_dtype)
        .pair("bos_token_id", id(c.bos_token_id))
        .pair("eos_token_id", id(c.eos_token_id));
    if c.eos_token_id.is_some() && c.bos_token_id == c.eos_token_id {
        s = s.text(
            "The tokenizer's end-of-text token starts every document the model was trained on, \
             and so also ends the one before: it is both the bos and the eos token, and \
             `generate` stops at it (generation_config.json).",
        );
    }
    s
}

fn usage_section() -> Section {
    Section::new("Usage").text(
        "```python\n\
         from transformers import AutoModelForCausalLM, AutoTokenizer\n\n\
         path = \"path/to/this/folder\"\n\
         tokenizer = AutoTokenizer.from_pretrained(path)\n\
         model = AutoModelForCausalLM.from_pretrained(path)\n\
         inputs = tokenizer(\"The\", return_tensors=\"pt\")\n\
         print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))\n\
         ```",
    )
}

/// One model of a merge, as its card lists it.
pub struct MergeInput {
    pub label: String,
    pub hash: Option<String>,
    pub weight: f64,
    /// The coefficient the merge applied (e.g. the weight normalised).
    pub coefficient: f64,
}

/// What a merged checkpoint's card says.
pub struct MergeCard {
    pub provenance: Provenance,
    /// The method and its parameters, as merge.json says them.
    pub method: String,
    pub parameters: Vec<(String, String)>,
    pub inputs: Vec<MergeInput>,
    pub base: Option<String>,
    /// Datasets the inputs' own cards name.
    pub datasets: Vec<String>,
    /// The merged folder's config.json.
    pub config: serde_json::Value,
}

impl MergeCard {
    pub fn render(&self) -> String {
        let p = &self.provenance;
        let mut models = Section::new("Merged models")
            .text(format!(
                "Method {}, tensor by tensor; each input's own README.md says what it was trained on.",
                code(&self.method)
            ))
            .header(&["model", "weight", "coefficient", "content hash"]);
        for i in &self.inputs {
            models = models.row(vec![
                code(&i.label),
                num(i.weight),
                num(i.coefficient),
                i.hash.as_deref().map_or_else(String::new, code),
            ]);
        }
        if let Some(b) = &self.base {
            models = models.text(format!("Base (the shared starting point): {b}."));
        }
        let mut method = Section::new("Merge")
            .header(&["parameter", "value"])
            .pair("method", &self.method);
        for (k, v) in &self.parameters {
            method = method.pair(k, v);
        }
        let c = &self.config;
        let val = |k: &str| match c.get(k) {
            None => "null".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            Some(v) => v.to_string(),
        };
        let model = Section::new("Model")
            .header(&["config", "value"])
            .pair("architectures", val("architectures"))
            .pair("torch_dtype", val("torch_dtype"))
            .pair("bos_token_id", val("bos_token_id"))
            .pair("eos_token_id", val("eos_token_id"));
        let card = ModelCard {
            tags: vec!["merge".into(), "text-generation".into()],
            datasets: self.datasets.clone(),
            title: format!("{} / {}", p.workflow, p.step),
            intro: vec![format!(
                "A merge of {} checkpoints by demix {}: step {} of workflow {}.",
                self.inputs.len(),
                p.demix_version,
                code(&p.step),
                code(&p.workflow),
            )],
            sections: vec![
                models,
                method,
                model,
                usage_section(),
                provenance_section(p),
            ],
        };
        card.render()
    }
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    StepError::io(format!("{what} {}", p.display()))
}

/// Writes a card into a checkpoint folder.
pub fn write_card(dir: &Path, text: &str) -> Result<(), StepError> {
    let p = dir.join(MODEL_CARD);
    std::fs::write(&p, text).map_err(io("writing", &p))
}

/// The `datasets` a demix model card's front matter lists (none for a
/// folder without one).
pub fn card_datasets(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join(MODEL_CARD)) else {
        return vec![];
    };
    let Some(front) = text
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map(|(f, _)| f)
    else {
        return vec![];
    };
    let Ok(node) = marked_yaml::parse_yaml(0, front) else {
        return vec![];
    };
    node.as_mapping()
        .and_then(|m| m.get_sequence("datasets"))
        .map(|s| {
            s.iter()
                .filter_map(|n| n.as_scalar().map(|x| x.as_str().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A merged folder's special token ids: config.json's `bos_token_id` and
/// `eos_token_id` for its tokenizer.json as training sets them (an input
/// trained before demix wrote them has them `null`); without a tokenizer.json
/// nothing says which ids they are and they stay as copied. A list of ids
/// (some Hugging Face configs) stays too. Then `generation_config.json` when
/// the first input had none. Returns the config.
pub fn finish_merged(dir: &Path) -> Result<serde_json::Value, StepError> {
    let cfg_path = dir.join("config.json");
    let read = |p: &Path| -> Result<Option<serde_json::Value>, StepError> {
        match std::fs::read(p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StepError::Failed(format!("{}: not JSON: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", p)(e)),
        }
    };
    let Some(mut config) = read(&cfg_path)? else {
        return Ok(serde_json::Value::Null);
    };
    if let (Some(tok), Some(obj)) = (read(&dir.join("tokenizer.json"))?, config.as_object_mut())
        && let specials = TokenizerSpecials::from_json(&tok)
        && let Some(sep) = specials.eos
    {
        let mut changed = false;
        for key in ["bos_token_id", "eos_token_id"] {
            let current = obj.get(key).cloned().unwrap_or_default();
            if !(current.is_null() || current.is_i64()) {
                continue;
            }
            let id = token_id_for(current.as_i64(), sep, &|id| {
                u32::try_from(id).is_ok_and(|i| specials.special.contains(&i))
            });
            if current.as_i64() != Some(id) {
                obj.insert(key.into(), id.into());
                changed = true;
            }
        }
        if changed {
            let text = serde_json::to_vec_pretty(&config).unwrap_or_default();
            std::fs::write(&cfg_path, text).map_err(io("writing", &cfg_path))?;
        }
    }
    let gen_path = dir.join(GENERATION_CONFIG);
    if !gen_path.exists() {
        let g = generation_config(
            config["bos_token_id"].as_i64(),
            config["eos_token_id"].as_i64(),
        );
        let mut text = serde_json::to_string_pretty(&g).unwrap_or_default();
        text.push('\n');
        std::fs::write(&gen_path, text).map_err(io("writing", &gen_path))?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov() -> Provenance {
        Provenance {
            workflow: "demo".into(),
            step: "base".into(),
            kind: "train".into(),
            key: "0123abcd".into(),
            demix_version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_training_card_says_data_hyperparameters_and_provenance() {
        let mut train = TrainConfig::new(4096, 4, 32);
        train.checkpoints = vec![2048];
        let mut model = Qwen3Config::new(512, 32, 64, 1, 4, 2);
        model.bos_token_id = Some(0);
        model.eos_token_id = Some(0);
        let data: demix_spec::train::DataMix =
            serde_json::from_str(r#"{"sotu": 3, "math": 1}"#).unwrap();
        let card = TrainCard {
            provenance: prov(),
            start: "a fresh model".into(),
            tokenizer: "`tok.tokenizer`".into(),
            mixture_source: "as the step's `data` says".into(),
            weights: data.weights().unwrap(),
            dataset_hashes: BTreeMap::from([("sotu".into(), "blake3:aa".into())]),
            train: &train,
            model: &model,
            tokens_seen: 2048,
        };
        let s = card.render();
        for want in [
            "library_name: transformers\n",
            "tags:\n- demix\n- \"qwen3\"\n",
            "datasets:\n- \"math\"\n- \"sotu\"\n---\n",
            "| `math` | 0.25 |  |",
            "| `sotu` | 0.75 | `blake3:aa` |",
            "| warmup_tokens | `40` |",
            "| micro_batch_size | `4` |",
            "| lr (peak) | `0.0003` |",
            "| tokens seen by this checkpoint | `2048` |",
            "after 2048 of the run's 4096 tokens (step 16 of 32)",
            "| eos_token_id | `0` |",
            "| step key | `0123abcd` |",
            "| workflow | `demo` |",
            "| demix version | `0.1.0` |",
        ] {
            assert!(s.contains(want), "{want:?} not in\n{s}");
        }
        assert_eq!(s, card.render());
    }

    #[test]
    fn merged_folders_get_ids_and_generation_config() {
        let t = std::env::temp_dir().join(format!("demix-card-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(
            t.join("config.json"),
            r#"{"bos_token_id": null, "eos_token_id": 151645, "torch_dtype": "float32"}"#,
        )
        .unwrap();
        std::fs::write(
            t.join("tokenizer.json"),
            r#"{"added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true}]}"#,
        )
        .unwrap();
        let c = finish_merged(&t).unwrap();
        assert_eq!(
            (c["bos_token_id"].clone(), c["eos_token_id"].clone()),
            (0.into(), 0.into())
        );
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.join("config.json")).unwrap()).unwrap();
        assert_eq!(on_disk, c);
        let g: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.join(GENERATION_CONFIG)).unwrap()).unwrap();
        assert_eq!(g["eos_token_id"], 0);
        // A card's datasets read back.
        let card = MergeCard {
            provenance: prov(),
            method: "linear".into(),
            parameters: vec![],
            inputs: vec![MergeInput {
                label: "a.checkpoint".into(),
                hash: None,
                weight: 2.0,
                coefficient: 1.0,
            }],
            base: None,
            datasets: vec!["math".into(), "sotu".into()],
            config: c,
        };
        write_card(&t, &card.render()).unwrap();
        assert_eq!(card_datasets(&t), ["math", "sotu"]);
        let s = card.render();
        assert!(s.contains("| `a.checkpoint` | 2 | 1 |  |"), "{s}");
        assert!(s.contains("- \"merge\""), "{s}");
        std::fs::remove_dir_all(&t).unwrap();
    }
}
