//! AdamW with decoupled weight decay, global-norm clipping, and a warmup +
//! cosine schedule. Our own because tch's optimizer state cannot be saved,
//! and resuming bit for bit needs the moments.
//!
//! Weight decay applies to tensors with dim >= 2: all projection matrices,
//! the embedding and lm_head (Hugging Face Trainer's convention: it exempts
//! only biases and norm weights), never to 1-D norm weights.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::{load_safetensors, save_safetensors};
use crate::error::{MlError, Result};

/// Linear warmup from 0 to `peak` over `warmup_steps`, then cosine decay to
/// `peak * min_ratio` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_ratio: f64,
}

impl LrSchedule {
    /// LR for the update numbered `step` (1-based).
    pub fn lr(&self, step: u64) -> f64 {
        let min = self.peak * self.min_ratio;
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 {
            return self.peak;
        }
        let p = ((step - self.warmup_steps) as f64 / span as f64).clamp(0.0, 1.0);
        min + (self.peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates done so far.
    pub step: u64,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

const STATE_FORMAT: &str = "demix-adamw-v1";

impl AdamW {
    /// `params` are the model's parameter handles (they are updated in place).
    pub fn new(
        params: Vec<(String, Tensor)>,
        betas: (f64, f64),
        eps: f64,
        wd: f64,
    ) -> Result<Self> {
        let zeros = |(n, p): &(String, Tensor)| {
            p.f_zeros_like()
                .map(|t| t.detach())
                .map_err(|e| MlError::Config(format!("cannot allocate AdamW state for {n}: {e}")))
        };
        let m = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay: wd,
            step: 0,
            params,
            m,
            v,
        })
    }

    pub fn decays(p: &Tensor) -> bool {
        p.dim() >= 2
    }

    pub fn zero_grad(&self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The gradients that exist (a parameter unused by the loss has none).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Global L2 norm of all gradients before clipping, as a device scalar
    /// (nothing waits for it); scales them down to `max_norm` when above it
    /// (0 disables clipping). Foreach norms through the shim.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<Tensor> {
        let grads = self.grads();
        if grads.is_empty() {
            return Ok(Tensor::zeros([], (Kind::Float, Device::Cpu)));
        }
        crate::ffi::clip_grad_norm(&grads, max_norm)
    }

    /// One update at learning rate `lr` (PyTorch AdamW semantics), through
    /// ATen's fused kernel: one launch per parameter group instead of about
    /// ten per tensor.
    pub fn update(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let step = Tensor::full([], self.step as f64, (Kind::Float, self.device()));
        for decay in [true, false] {
            let (mut p, mut g, mut m, mut v) = (vec![], vec![], vec![], vec![]);
            for (i, (_, param)) in self.params.iter().enumerate() {
                let grad = param.grad();
                if !grad.defined() || Self::decays(param) != decay {
                    continue;
                }
                p.push(param.shallow_clone());
                g.push(grad);
                m.push(self.m[i].shallow_clone());
                v.push(self.v[i].shallow_clone());
            }
            let steps: Vec<Tensor> = p.iter().map(|_| step.shallow_clone()).collect();
            let wd = if decay { self.weight_decay } else { 0.0 };
            crate::ffi::fused_adamw(
                &p,
                &g,
                &m,
                &v,
                &steps,
                lr,
                (self.beta1, self.beta2),
                wd,
                self.eps,
            )?;
        }
        Ok(())
    }

    fn device(&self) -> Device {
        self.params.first().map_or(Device::Cpu, |(_, p)| p.device())
    }

    /// The global gradient norm read back to the host, clipping as
    /// [`AdamW::clip_grad_norm`]: the reference the fused path is checked
    /// against, one kernel per tensor.
    pub fn clip_grad_norm_unfused(&self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .grads()
                .iter()
                .map(|g| g.to_kind(Kind::Float).norm())
                .collect();
            if norms.is_empty() {
                return 0.0;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            if max_norm > 0.0 && total > max_norm {
                let coef = max_norm / (total + 1e-6);
                for mut g in self.grads() {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
            total
        })
    }

    /// [`AdamW::update`] one tensor at a time with ATen's plain ops: the
    /// reference the fused kernel is checked against (and benchmarked with).
    pub fn update_unfused(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if self.weight_decay > 0.0 && Self::decays(&p) {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let m = &mut self.m[i];
                let _ = m.g_mul_scalar_(self.beta1);
                let _ = m.g_add_(&(&g * (1.0 - self.beta1)));
                let v = &mut self.v[i];
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.g_add_(&(g.square() * (1.0 - self.beta2)));
                let denom = v.sqrt() / bc2_sqrt + self.eps;
                let _ = p.g_sub_(&(&*m / denom * (lr / bc1)));
            }
        });
    }

    /// Saves step and moments (f32) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t = Vec::with_capacity(2 * self.params.len());
        for (i, (n, _)) in self.params.iter().enumerate() {
            t.push((format!("exp_avg.{n}"), self.m[i].shallow_clone()));
            t.push((format!("exp_avg_sq.{n}"), self.v[i].shallow_clone()));
        }
        let meta = BTreeMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        save_safetensors(path, &t, Some(Kind::Float), &meta)
    }

    /// Loads a state saved by [`AdamW::save`] for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let (mut sd, meta) = load_safetensors(path, Device::Cpu)?;
        let bad = |m: String| MlError::checkpoint(path, m);
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad("not an optimizer state".into()));
        }
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no step in metadata".into()))?;
        let mut m = vec![];
        let mut v = vec![];
        for (n, p) in &self.params {
            for (key, out) in [
                (format!("exp_avg.{n}"), &mut m),
                (format!("exp_avg_sq.{n}"), &mut v),
            ] {
                let t = sd
                    .remove(&key)
                    .ok_or_else(|| bad(format!("missing {key}")))?;
                if t.size() != p.size() {
                    return Err(bad(format!(
                        "{key}: shape {:?}, parameter has {:?}",
                        t.size(),
                        p.size()
                    )));
                }
                out.push(t.to_kind(Kind::Float).to_device(p.device()));
            }
        }
        if let Some(k) = sd.keys().next() {
            return Err(bad(format!("unexpected tensor {k}")));
        }
        self.m = m;
        self.v = v;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let s = LrSchedule {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_ratio: 0.2,
        };
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.6).abs() < 1e-12);
        assert!((s.lr(110) - 0.2).abs() < 1e-12);
        assert!((s.lr(500) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn matches_reference_adamw_and_roundtrips() {
        // One parameter matrix and one vector; compare two steps with the
        // closed form computed by hand in f64.
        let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5])
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.1f32, 0.2]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            (0.9, 0.95),
            1e-8,
            0.1,
        )
        .unwrap();
        let (lr, b1, b2, eps, wd) = (0.01f64, 0.9f64, 0.95f64, 1e-8f64, 0.1f64);
        let mut pw: Vec<f64> = vec![1.0, -2.0, 3.0, 0.5];
        let mut pb: Vec<f64> = vec![0.1, 0.2];
        let (mut mw, mut vw, mut mb, mut vb) =
            (vec![0.0; 4], vec![0.0; 4], vec![0.0; 2], vec![0.0; 2]);
        for step in 1..=2 {
            opt.zero_grad();
            // loss = sum(w^2) + sum(b^3): grads 2w, 3b^2.
            let loss = w.square().sum(Kind::Float) + b.pow_tensor_scalar(3).sum(Kind::Float);
            loss.backward();
            opt.update(lr).unwrap();
            let bc1 = 1.0 - b1.powi(step);
            let bc2 = 1.0 - b2.powi(step);
            for i in 0..4 {
                let g = 2.0 * pw[i];
                pw[i] *= 1.0 - lr * wd;
                mw[i] = b1 * mw[i] + (1.0 - b1) * g;
                vw[i] = b2 * vw[i] + (1.0 - b2) * g * g;
                pw[i] -= lr / bc1 * mw[i] / ((vw[i] / bc2).sqrt() + eps);
            }
            for i in 0..2 {
                let g = 3.0 * pb[i] * pb[i];
                mb[i] = b1 * mb[i] + (1.0 - b1) * g;
                vb[i] = b2 * vb[i] + (1.0 - b2) * g * g;
                pb[i] -= lr / bc1 * mb[i] / ((vb[i] / bc2).sqrt() + eps);
            }
        }
        let got: Vec<f32> = Vec::try_from(w.view([-1])).unwrap();
        for i in 0..4 {
            assert!((got[i] as f64 - pw[i]).abs() < 1e-5, "{got:?} {pw:?}");
        }
        let got: Vec<f32> = Vec::try_from(&b).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - pb[i]).abs() < 1e-5, "{got:?} {pb:?}");
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("opt.safetensors");
        opt.save(&p).unwrap();
        let mut o2 = AdamW::new(
            vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            (0.9, 0.95),
            1e-8,
            0.1,
        )
        .unwrap();
        o2.load(&p).unwrap();
        assert_eq!(o2.step, 2);
        assert!(o2.m[0].equal(&opt.m[0]) && o2.v[1].equal(&opt.v[1]));
        let mut o3 = AdamW::new(
            vec![("x".into(), w.shallow_clone())],
            (0.9, 0.95),
            1e-8,
            0.1,
        )
        .unwrap();
        assert!(
            o3.load(&p)
                .unwrap_err()
                .to_string()
                .contains("missing exp_avg.x")
        );
    }

    #[test]
    fn clipping() {
        let w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let opt = AdamW::new(
            vec![("w".into(), w.shallow_clone())],
            (0.9, 0.95),
            1e-8,
            0.0,
        )
        .unwrap();
        (w.sum(Kind::Float) * 5.0).backward(); // grad = [5, 5]
        let n = opt.clip_grad_norm(1.0).unwrap().double_value(&[]);
        assert!((n - 50f64.sqrt()).abs() < 1e-5);
        let g: Vec<f32> = Vec::try_from(w.grad()).unwrap();
        assert!(((g[0] as f64).hypot(g[1] as f64) - 1.0).abs() < 1e-4);
    }

    /// The fused update equals the per-tensor one to about 1e-6, with
    /// clipping, on a matrix (decayed) and a vector (not). Compared step by
    /// step from a shared state: over a whole trajectory float32 rounding
    /// differences (which depend on the CPU's vector width) compound, so a
    /// trajectory test would measure the CPU, not the kernel.
    #[test]
    fn fused_equals_unfused() {
        let init_w: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let init_b: Vec<f32> = (0..8).map(|i| i as f32 / 10.0 - 0.3).collect();
        let make = || {
            let w = Tensor::from_slice(&init_w)
                .view([8, 8])
                .set_requires_grad(true);
            let b = Tensor::from_slice(&init_b).set_requires_grad(true);
            let params = vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ];
            (w, b, AdamW::new(params, (0.9, 0.95), 1e-8, 0.1).unwrap())
        };
        let (fw, fb, mut fused) = make();
        let (uw, ub, mut unfused) = make();
        let flat = |t: &Tensor| -> Vec<f32> { Vec::try_from(t.detach().view([-1])).unwrap() };
        for step in 0..30 {
            let x = Tensor::from_slice(&[step as f32 / 10.0 + 0.5; 8]);
            for (w, b, opt) in [(&fw, &fb, &fused), (&uw, &ub, &unfused)] {
                opt.zero_grad();
                let loss = (w.matmul(&x) + b).tanh().square().sum(Kind::Float)
                    + b.pow_tensor_scalar(3).sum(Kind::Float);
                loss.backward();
            }
            let fnorm = fused.clip_grad_norm(0.5).unwrap().double_value(&[]);
            let unorm = unfused.clip_grad_norm_unfused(0.5);
            // Float32 sums taken in another order (foreach norms).
            assert!(
                (fnorm - unorm).abs() <= 2e-6 * unorm.abs().max(1.0),
                "step {step}: {fnorm} vs {unorm}"
            );
            fused.update(1e-2).unwrap();
            unfused.update_unfused(1e-2);
            let pairs = [(&fw, &uw), (&fb, &ub)];
            let moments = fused
                .m
                .iter()
                .zip(&unfused.m)
                .chain(fused.v.iter().zip(&unfused.v));
            for (f, u) in pairs.into_iter().chain(moments) {
                for (x, y) in flat(f).iter().zip(flat(u)) {
                    assert!(
                        (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                        "step {step}: {x} vs {y}"
                    );
                }
            }
            // Resynchronise so the next step starts from one state.
            tch::no_grad(|| {
                for (f, u) in [(&fw, &uw), (&fb, &ub)] {
                    u.shallow_clone().copy_(f);
                }
                for (f, u) in fused
                    .m
                    .iter()
                    .zip(&unfused.m)
                    .chain(fused.v.iter().zip(&unfused.v))
                {
                    u.shallow_clone().copy_(f);
                }
            });
        }
    }
}
