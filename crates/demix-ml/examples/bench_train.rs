//! Training throughput for one model shape, the Rust side of
//! benches/train_pytorch.py (same shape, batch, threads, optimizer).
//!
//! cargo run --release -p demix-ml --example bench_train -- [d_model layers heads vocab seq batch threads steps]
//!
//! Environment:
//! - `DEMIX_BENCH_OPTIM=unfused` times the per-tensor AdamW instead of the
//!   fused one; `optimizer_ms_per_step` is the clip and update alone (CPU
//!   only: on CUDA the host timer would measure kernel launches, so it is null).
//! - `DEMIX_BENCH_DEVICE`: `cpu` (default), `cuda` or `cuda:N`.
//! - `DEMIX_BENCH_BF16=1`: bf16 compute with f32 master weights
//!   (`compute_kind = BFloat16`), as training does on CUDA.
//! - `DEMIX_BENCH_PEAK_GFLOPS`: the peak the MFU is taken against (default
//!   157, the 2-core CPU's f32 FMA peak).
//! - `DEMIX_BENCH_KV_HEADS` (default: heads), `DEMIX_BENCH_HEAD_DIM` (default:
//!   d_model / heads), `DEMIX_BENCH_FFN` (default: 3 x d_model),
//!   `DEMIX_BENCH_TIE=1` (tied embeddings): Qwen3 shapes such as Qwen3-0.6B's
//!   (d 1024, 28 layers, 16 heads of 128, 8 KV heads, tied).
//! - `DEMIX_BENCH_WARMUP`: untimed steps first (default 2).
//!
//! Timing is honest on CUDA: the device is synchronized before the clock
//! starts, and the last step's loss is read back (and the device synchronized
//! again) before it stops.
use demix_ml::model::{Qwen3, Qwen3Config};
use demix_ml::optim::AdamW;
use demix_spec::rng::SplitMix64;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Peak f32 FMA throughput of the 2-core peer machine (shared/design/peers.md),
/// the default peak. On an H200 benches/gpu.sh passes
/// `DEMIX_BENCH_PEAK_GFLOPS=989000`: 989 TFLOPS, the dense BF16 Tensor Core
/// peak of NVIDIA's H200 spec sheet (which lists 1,979 with 2:4 sparsity).
const CPU_PEAK_GFLOPS: f64 = 157.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        _ => default,
    }
}

fn device_from_env() -> Device {
    let v = std::env::var("DEMIX_BENCH_DEVICE").unwrap_or_default();
    match v.trim() {
        "" | "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => panic!("DEMIX_BENCH_DEVICE={s}: cpu, cuda or cuda:N"),
        },
    }
}

/// Waits for every kernel queued on `device` (nothing on the CPU).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() {
    let a: Vec<i64> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer arguments"))
        .collect();
    let g = |i: usize, d: i64| a.get(i).copied().unwrap_or(d);
    let (d, layers, heads, vocab) = (g(0, 256), g(1, 4), g(2, 4), g(3, 4096));
    let (seq, batch, threads, steps) = (g(4, 256), g(5, 16), g(6, 2), g(7, 8));
    let device = device_from_env();
    let bf16 = std::env::var("DEMIX_BENCH_BF16").as_deref() == Ok("1");
    let peak: f64 = env_or("DEMIX_BENCH_PEAK_GFLOPS", CPU_PEAK_GFLOPS);
    let kv: i64 = env_or("DEMIX_BENCH_KV_HEADS", heads);
    let head_dim: i64 = env_or("DEMIX_BENCH_HEAD_DIM", d / heads);
    let ffn: i64 = env_or("DEMIX_BENCH_FFN", 3 * d);
    let tie = std::env::var("DEMIX_BENCH_TIE").as_deref() == Ok("1");
    let warmup: i64 = env_or("DEMIX_BENCH_WARMUP", 2);
    if let Device::Cuda(i) = device {
        assert!(
            tch::Cuda::is_available() && (i as i64) < tch::Cuda::device_count(),
            "DEMIX_BENCH_DEVICE asks for cuda:{i} but libtorch sees {} CUDA device(s)",
            tch::Cuda::device_count()
        );
    }
    tch::set_num_threads(threads as i32);
    let mut cfg = Qwen3Config::new(vocab, d, ffn, layers, heads, kv);
    cfg.head_dim = head_dim;
    cfg.tie_word_embeddings = tie;
    let mut m = Qwen3::init(&cfg, 0, device).expect("valid config");
    if bf16 {
        m.compute_kind = Kind::BFloat16;
    }
    m.set_requires_grad(true);
    let mut opt = AdamW::new(m.named_parameters(), (0.9, 0.95), 1e-8, 0.1).expect("allocates");
    let mut rng = SplitMix64::new(1);
    let unfused = std::env::var("DEMIX_BENCH_OPTIM").as_deref() == Ok("unfused");
    let mut t0 = Instant::now();
    let mut optim_s = 0.0;
    let mut last_loss = Tensor::new();
    for step in 0..warmup + steps {
        if step == warmup {
            sync(device);
            t0 = Instant::now();
            optim_s = 0.0;
        }
        let ids: Vec<i64> = (0..batch * (seq + 1))
            .map(|_| rng.below(vocab as u64) as i64)
            .collect();
        let x = Tensor::from_slice(&ids)
            .view([batch, seq + 1])
            .to_device(device);
        let loss = m.loss(&x.narrow(1, 0, seq), &x.narrow(1, 1, seq));
        loss.backward();
        let o = Instant::now();
        if unfused {
            opt.clip_grad_norm_unfused(1.0);
            opt.update_unfused(3e-4);
        } else {
            let _norm = opt.clip_grad_norm(1.0).expect("clips");
            opt.update(3e-4).expect("updates");
        }
        optim_s += o.elapsed().as_secs_f64();
        opt.zero_grad();
        last_loss = loss.detach();
    }
    // The host may be ahead of the device: the clock stops once the last
    // step's loss is on the host and every queued kernel has run.
    let final_loss = f64::try_from(&last_loss.to_kind(Kind::Double)).expect("a scalar loss");
    sync(device);
    let secs = t0.elapsed().as_secs_f64();
    let tps = (steps * batch * seq) as f64 / secs;
    let n = cfg.num_params();
    let flops_tok = cfg.train_flops_per_token(seq);
    let gflops = flops_tok * tps / 1e9;
    println!(
        "{}",
        serde_json::json!({
            "impl": "demix (tch)",
            "device": format!("{device:?}"),
            "compute": if bf16 { "bf16 (f32 master weights)" } else { "f32" },
            "shape": {"d_model": d, "layers": layers, "heads": heads, "kv_heads": kv,
                      "head_dim": head_dim, "ffn": ffn, "vocab": vocab, "tied": tie},
            "seq": seq, "batch": batch,
            "params": n, "tokens_per_s": tps,
            "gflops_6n": 6.0 * n as f64 * tps / 1e9,
            "gflops_6n_attn": gflops,
            "peak_gflops": peak,
            "mfu": gflops / peak,
            "final_loss": final_loss,
            "seconds": secs, "steps": steps, "warmup": warmup,
            "optimizer": if unfused { "unfused" } else { "fused" },
            "optimizer_ms_per_step": if device.is_cuda() {
                serde_json::Value::Null
            } else {
                serde_json::json!(1e3 * optim_s / steps as f64)
            },
        })
    );
}
