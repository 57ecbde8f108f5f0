//! The mixture-search library (`demix::mix`) through its public API: sample a
//! pool, merge component checkpoints (single-file and sharded, bf16) into a
//! Hugging Face directory and in memory, run the search rounds with proxies
//! that are real merges, and judge them with the rank statistics.

use std::path::{Path, PathBuf};

use demix_mix::checkpoint::{INDEX_FILE, MODEL_FILE, TensorSpec, save_f32};
use demix_mix::merge::{MERGE_RECORD, Values};
use demix_mix::sampler::sample;
use demix_mix::search::{BoxError, Target};
use demix_mix::stats::{Direction, capability_recovery, spearman, top_fraction_spearman};
use demix_mix::{
    Checkpoint, Components, Dtype, MergeError, MergeSpec, MergedTensor, SamplerConfig, Search,
    SearchConfig,
};

const K: usize = 4;
const WIDTH: usize = 64;

/// Component `i`: tensor `emb` is `i + 1` at column i, with a per-column ramp so
/// the merge is checked elementwise; `norm` is a constant; all bf16.
fn component(i: usize) -> Vec<(TensorSpec, Vec<f32>)> {
    let emb: Vec<f32> = (0..K * WIDTH)
        .map(|j| {
            if j / WIDTH == i {
                (i + 1) as f32 + (j % WIDTH) as f32 / 64.0
            } else {
                0.0
            }
        })
        .collect();
    vec![
        (
            TensorSpec {
                name: "model.embed_tokens.weight".into(),
                dtype: Dtype::Bf16,
                shape: vec![K, WIDTH],
            },
            emb,
        ),
        (
            TensorSpec {
                name: "model.norm.weight".into(),
                dtype: Dtype::Bf16,
                shape: vec![WIDTH],
            },
            vec![(i + 1) as f32; WIDTH],
        ),
    ]
}

/// Writes the K components; the last one sharded.
fn components(root: &Path) -> Vec<PathBuf> {
    (0..K)
        .map(|i| {
            let dir = root.join(format!("component-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let tensors = component(i);
            if i == K - 1 {
                for (k, t) in tensors.into_iter().enumerate() {
                    save_f32(dir.join(format!("model-{k}.safetensors")), &[t]).unwrap();
                }
                std::fs::write(
                    dir.join(INDEX_FILE),
                    r#"{"weight_map":{"model.embed_tokens.weight":"model-0.safetensors","model.norm.weight":"model-1.safetensors"}}"#,
                )
                .unwrap();
            } else {
                save_f32(dir.join(MODEL_FILE), &tensors).unwrap();
            }
            std::fs::write(dir.join("config.json"), r#"{"model_type":"qwen3","torch_dtype":"bfloat16"}"#).unwrap();
            std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
            std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
            dir
        })
        .collect()
}

#[test]
fn merges_a_sampled_mixture_into_a_hugging_face_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = components(tmp.path());
    let pool = sample(
        &[40.0, 30.0, 20.0, 10.0],
        &SamplerConfig {
            draws: 100,
            keep: 50,
            seed: 5,
            ..SamplerConfig::default()
        },
    )
    .unwrap();
    let alpha = pool.weights(0);
    let comps = Components::open(&inputs, None).unwrap();
    let out = tmp.path().join("proxy");
    let report = comps
        .merge_to_dir(&MergeSpec::linear(alpha.clone()), &out)
        .unwrap();
    assert_eq!(report.tensors, 2);
    assert_eq!(
        report.copied,
        ["config.json", "tokenizer.json", "tokenizer_config.json"]
    );
    assert!(out.join(MERGE_RECORD).is_file());

    let merged = Checkpoint::open(&out).unwrap();
    assert_eq!(merged.info("model.norm.weight").unwrap().dtype, Dtype::Bf16);
    // norm = sum_i alpha_i (i + 1), rounded to bf16.
    let want: f32 = alpha
        .iter()
        .enumerate()
        .map(|(i, a)| *a as f32 * (i + 1) as f32)
        .sum();
    let norm = merged.read_f32("model.norm.weight").unwrap();
    assert!(
        norm.iter().all(|x| (x - want).abs() <= want * 4e-3),
        "{norm:?} vs {want}"
    );
    // Row i of emb is alpha_i times component i's row.
    let emb = merged.read_f32("model.embed_tokens.weight").unwrap();
    for (i, a) in alpha.iter().enumerate() {
        let x = emb[i * WIDTH + 5];
        let want = *a as f32 * ((i + 1) as f32 + 5.0 / 64.0);
        assert!(
            (x - want).abs() <= want.abs() * 4e-3 + 1e-6,
            "row {i}: {x} vs {want}"
        );
    }
    // One-hot weights give the sharded component back, tensor bytes exactly.
    comps
        .merge_to_dir(&MergeSpec::linear(vec![0.0, 0.0, 0.0, 1.0]), &out)
        .unwrap();
    let merged = Checkpoint::open(&out).unwrap();
    let last = Checkpoint::open(&inputs[K - 1]).unwrap();
    for name in last.names() {
        assert_eq!(merged.bytes(name), last.bytes(name), "{name}");
    }
}

#[test]
fn mismatching_components_are_refused_with_names() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = components(tmp.path());
    let odd = tmp.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let mut t = component(0);
    t[1].0.shape = vec![WIDTH / 2, 2];
    save_f32(odd.join(MODEL_FILE), &t).unwrap();
    let e = Components::open(&[&inputs[0], &odd], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("odd") && e.contains("component-0"),
        "{e}"
    );
}

/// The whole loop on a toy: a proxy is an in-memory merge, its "validation
/// loss" per domain is a function of the merged weights. Domain d's loss is
/// lowest when the `norm` value (sum_i alpha_i (i + 1)) and the embedding
/// rows match a hidden target mixture.
#[test]
fn search_with_merged_proxies_finds_the_target_mixture() {
    let tmp = tempfile::tempdir().unwrap();
    let comps = Components::open(&components(tmp.path()), None).unwrap();
    let target = [0.4, 0.3, 0.2, 0.1];
    let proxy_loss = |alpha: &[f64]| -> Result<Vec<f64>, BoxError> {
        let mut row_mass = [0.0f64; K];
        comps.merge_each(
            &MergeSpec::linear(alpha.to_vec()),
            |t: MergedTensor<'_>| -> Result<(), MergeError> {
                if let (Values::F32(v), "model.embed_tokens.weight") = (&t.values, t.name) {
                    for (i, m) in row_mass.iter_mut().enumerate() {
                        // Column 0 of row i holds alpha_i * (i + 1).
                        *m = v[i * WIDTH] as f64 / (i + 1) as f64;
                    }
                }
                Ok(())
            },
        )?;
        let d = |w: [f64; K]| -> f64 {
            row_mass
                .iter()
                .zip(target)
                .zip(w)
                .map(|((m, t), w)| w * (m - t).powi(2))
                .sum()
        };
        Ok(vec![
            2.0 + d([3.0, 1.0, 1.0, 1.0]),
            3.0 + d([1.0, 1.0, 3.0, 2.0]),
        ])
    };
    let pool = sample(
        &[40.0, 30.0, 20.0, 10.0],
        &SamplerConfig {
            draws: 3000,
            keep: 2500,
            seed: 9,
            ..SamplerConfig::default()
        },
    )
    .unwrap()
    .to_weights();
    let config = SearchConfig {
        rounds: vec![48, 24, 12],
        top_k: 64,
        seed: 3,
        ..SearchConfig::new(vec![Target::loss("general"), Target::loss("math")])
    };
    let mut evaluate = |m: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, BoxError> {
        m.iter().map(|a| proxy_loss(a)).collect()
    };
    let result = Search::run(config, pool, &mut evaluate).unwrap();
    assert_eq!(result.cost.proxies_evaluated, 84);
    let dist: f64 = result
        .chosen
        .iter()
        .zip(target)
        .map(|(a, b)| (a - b).abs())
        .sum();
    let uniform: f64 = target.iter().map(|b| (0.25 - b).abs()).sum();
    assert!(
        dist < uniform,
        "chosen {:?} ({dist}) vs uniform ({uniform})",
        result.chosen
    );
    let (lc, lu) = (
        proxy_loss(&result.chosen).unwrap(),
        proxy_loss(&[0.25; K]).unwrap(),
    );
    assert!(lc[0] < lu[0] && lc[1] < lu[1], "{lc:?} vs {lu:?}");

    // Judge the predictor as the paper judges proxies: predicted vs actual
    // scores of the proxies chosen by prediction (rounds 2 and 3).
    let later: Vec<_> = result.proxies.iter().filter(|p| p.round > 1).collect();
    let predicted: Vec<f64> = later
        .iter()
        .map(|p| p.predicted.as_ref().unwrap()[0])
        .collect();
    let actual: Vec<f64> = later.iter().map(|p| p.scores[0]).collect();
    let rho = spearman(&predicted, &actual).unwrap();
    assert!(rho > 0.0, "predictions rank the chosen proxies: rho {rho}");
    let recovery = capability_recovery(&predicted, &actual).unwrap();
    assert!((recovery - 1.0).abs() < 0.05, "recovery {recovery}");
    assert!(top_fraction_spearman(&predicted, &actual, 0.25, Direction::LowerIsBetter).is_ok());
}
