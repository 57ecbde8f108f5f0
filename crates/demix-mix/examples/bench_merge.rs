//! In-memory merge throughput, the search's path: K checkpoints merged tensor by
//! tensor into f32 values that are dropped (a proxy is built from them and never
//! written). Prints GB of input read per second.
//!
//! `cargo run --release -p demix-mix --example bench_merge -- DIR... [--reps N] [--keep-mapped]`

use std::time::Instant;

use demix_mix::merge::{Components, MergeError, MergeSpec, Values};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dirs = Vec::new();
    let mut reps = 3;
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--keep-mapped" {
            keep = true;
        } else if a == "--reps" {
            reps = args.next().ok_or("--reps needs a number")?.parse()?;
        } else {
            dirs.push(std::path::PathBuf::from(a));
        }
    }
    if dirs.is_empty() {
        return Err("give checkpoint folders".into());
    }
    let mut comps = Components::open(&dirs, None)?;
    if keep {
        comps = comps.keep_mapped();
    }
    let bytes: u64 = comps
        .inputs()
        .iter()
        .flat_map(|c| c.files().iter())
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let k = dirs.len();
    let mut times = Vec::new();
    for r in 0..=reps {
        let w: Vec<f64> = (0..k).map(|i| (i + 1 + r) as f64).collect();
        let t0 = Instant::now();
        let mut checksum = 0f64;
        comps.merge_each(&MergeSpec::linear(w), |t| -> Result<(), MergeError> {
            if let Values::F32(v) = &t.values {
                checksum += v.first().copied().unwrap_or(0.0) as f64;
            }
            Ok(())
        })?;
        let s = t0.elapsed().as_secs_f64();
        // The first pass maps the pages; report the warm ones.
        if r > 0 {
            times.push(s);
        }
        eprintln!("pass {r}: {s:.3} s (checksum {checksum:.4})");
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{k}-way in-memory merge: {:.2} GB read in {med:.3} s (median of {reps}): {:.2} GB/s",
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / med
    );
    Ok(())
}
