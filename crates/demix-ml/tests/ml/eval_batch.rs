//! Batched evaluation equals one-at-a-time: the log-likelihoods of
//! multiple-choice continuations (right-padded batches) and greedy generation
//! (left-padded batches with a KV cache).

use crate::common::*;
use demix_ml::evaluate::{continuation_logprobs, greedy_generate, greedy_generate_batch};
use demix_ml::model::Qwen3;
use demix_ml::progress::no_progress;
use demix_ml::train::train;
use tch::{Device, Kind, Tensor};

/// log p(cont | ctx) of one pair alone, as evaluation scored it before
/// batching: the context cut from the left to the model's positions.
fn one_logprob(m: &Qwen3, ctx: &[u32], cont: &[u32]) -> (f64, usize) {
    if cont.is_empty() {
        return (0.0, 0);
    }
    let max = m.config.max_position_embeddings as usize;
    let mut all: Vec<i64> = ctx.iter().chain(cont).map(|&t| t as i64).collect();
    if all.len() > max + 1 {
        all.drain(..all.len() - max - 1);
    }
    let n = all.len() as i64;
    let k = cont.len().min(all.len() - 1) as i64;
    let x = Tensor::from_slice(&all).view([1, n]);
    let lp = m
        .forward(&x.narrow(1, 0, n - 1))
        .narrow(1, n - 1 - k, k)
        .log_softmax(-1, Kind::Float)
        .gather(-1, &x.narrow(1, n - k, k).unsqueeze(-1), false)
        .to_kind(Kind::Double)
        .sum(Kind::Double);
    (lp.double_value(&[]), k as usize)
}

fn context(f: &Fixture, prompt: &str) -> Vec<u32> {
    let mut ctx = vec![f.tok.eos_id()];
    ctx.extend(f.tok.encode(prompt).unwrap());
    ctx
}

#[test]
fn batched_choices_equal_one_at_a_time() {
    let f = fixture();
    let mut c = tiny_config(f.tok.vocab_size() as i64);
    // Large weights: log-probabilities far from uniform, so the check bites.
    c.initializer_range = 0.3;
    c.max_position_embeddings = 24;
    let m = Qwen3::init(&c, 7, Device::Cpu).unwrap();
    let long = "the cat eats the fish in math. a dog sees two apples in sotu. my friend likes";
    let mut pairs = vec![];
    for (prompt, conts) in [
        (
            "the cat eats",
            vec![" the fish", " two apples in math.", " zq"],
        ),
        ("a dog", vec![" sees", " xq zz", ""]),
        (
            long,
            vec![
                " the tree",
                " some bread in sotu. the model counts a number",
            ],
        ),
    ] {
        for cont in conts {
            pairs.push((context(&f, prompt), f.tok.encode(cont).unwrap()));
        }
    }
    assert!(
        pairs.iter().any(|(a, b)| a.len() + b.len() > 25),
        "one is cut"
    );
    let want: Vec<(f64, usize)> =
        tch::no_grad(|| pairs.iter().map(|(a, b)| one_logprob(&m, a, b)).collect());
    // One row per batch, a few per batch, all in one.
    for budget in [1, 40, 10_000] {
        let got = continuation_logprobs(&m, &pairs, budget).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.1, w.1, "pair {i}");
            assert!(
                (g.0 - w.0).abs() <= 1e-5 * w.0.abs().max(1.0),
                "pair {i}, budget {budget}: {} vs {}",
                g.0,
                w.0
            );
        }
    }
}

#[test]
fn batched_cached_generation_equals_one_at_a_time() {
    let f = fixture();
    let spec = tiny_spec(&f, 30);
    let p = paths(&f, "gen");
    train(&spec, &p, &no_progress, &no_cancel()).unwrap();
    let mut m = Qwen3::load(&p.output, Device::Cpu).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "the",
        "a dog sees",
        "my friend likes two apples in math. the cat",
        "every bird counts the tree in sotu. a dog finds some bread in sotu. the model",
        "some",
        "the cat eats the fish in",
    ]
    .iter()
    .map(|s| context(&f, s))
    .collect();
    let one_at_a_time = |m: &Qwen3, max_new: usize| -> Vec<String> {
        tch::no_grad(|| {
            prompts
                .iter()
                .map(|ctx| greedy_generate(m, &f.tok, ctx, max_new).unwrap())
                .collect()
        })
    };
    for max_new in [1, 12] {
        let want = one_at_a_time(&m, max_new);
        assert!(want.iter().any(|s| s.len() > 4), "{want:?}");
        for batch in [1, 4, 8] {
            let got = greedy_generate_batch(&m, &f.tok, &prompts, max_new, batch).unwrap();
            assert_eq!(got, want, "max_new {max_new}, batch {batch}");
        }
    }
    // Prompts whose generation outgrows the positions slide their window,
    // one at a time; the others are still batched.
    m.config.max_position_embeddings = 20;
    let want = one_at_a_time(&m, 12);
    let got = greedy_generate_batch(&m, &f.tok, &prompts, 12, 4).unwrap();
    assert_eq!(got, want);
}
