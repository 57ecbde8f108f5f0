//! Training throughput on CPU for one model shape, the Rust side of
//! scripts/bench_train.py (same shape, batch, threads, optimizer).
//!
//! cargo run --release --example bench_train -- [d_model layers heads vocab seq batch threads steps]
use demix_ml::model::{Qwen3, Qwen3Config};
use demix_ml::optim::AdamW;
use demix_spec::rng::SplitMix64;
use std::time::Instant;
use tch::{Device, Tensor};

/// Peak f32 FMA throughput of the 2-core peer machine (shared/design/peers.md).
const PEAK_GFLOPS: f64 = 157.0;

fn main() {
    let a: Vec<i64> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer arguments"))
        .collect();
    let g = |i: usize, d: i64| a.get(i).copied().unwrap_or(d);
    let (d, layers, heads, vocab) = (g(0, 256), g(1, 4), g(2, 4), g(3, 4096));
    let (seq, batch, threads, steps) = (g(4, 256), g(5, 16), g(6, 2), g(7, 8));
    tch::set_num_threads(threads as i32);
    let mut cfg = Qwen3Config::new(vocab, d, 3 * d, layers, heads, heads);
    cfg.head_dim = d / heads;
    let m = Qwen3::init(&cfg, 0, Device::Cpu).expect("valid config");
    m.set_requires_grad(true);
    let mut opt = AdamW::new(m.named_parameters(), (0.9, 0.95), 1e-8, 0.1).expect("allocates");
    let mut rng = SplitMix64::new(1);
    let warmup = 2;
    let mut t0 = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            t0 = Instant::now();
        }
        let ids: Vec<i64> = (0..batch * (seq + 1))
            .map(|_| rng.below(vocab as u64) as i64)
            .collect();
        let x = Tensor::from_slice(&ids).view([batch, seq + 1]);
        let loss = m.loss(&x.narrow(1, 0, seq), &x.narrow(1, 1, seq));
        loss.backward();
        opt.clip_grad_norm(1.0);
        opt.update(3e-4);
        opt.zero_grad();
    }
    let secs = t0.elapsed().as_secs_f64();
    let tps = (steps * batch * seq) as f64 / secs;
    let n = cfg.num_params();
    let flops_tok = cfg.train_flops_per_token(seq);
    println!(
        "{}",
        serde_json::json!({
            "impl": "demix (tch)", "params": n, "tokens_per_s": tps,
            "gflops_6n": 6.0 * n as f64 * tps / 1e9,
            "gflops_6n_attn": flops_tok * tps / 1e9,
            "mfu_vs_157_gflops": flops_tok * tps / 1e9 / PEAK_GFLOPS,
            "seconds": secs, "steps": steps,
        })
    );
}
