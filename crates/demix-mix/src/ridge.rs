//! Ridge regression in closed form, for searches with few evaluated points.
//!
//! Features are standardised (so one penalty treats a 1 % candidate like a 50 %
//! one) and the intercept is not penalised. The penalty is chosen from a grid
//! by exact leave-one-out error (the hat-matrix shortcut), like scikit-learn's
//! `RidgeCV`, so nothing needs tuning by hand.

use serde::{Deserialize, Serialize};

use super::predict::{PredictError, check_xy};

/// Ridge settings: the penalties tried (one value fixes it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RidgeParams {
    pub alphas: Vec<f64>,
}

impl Default for RidgeParams {
    fn default() -> Self {
        RidgeParams {
            alphas: super::sampler::log_spaced(1e-4, 1e2, 13),
        }
    }
}

/// A fitted ridge model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ridge {
    pub mean: Vec<f64>,
    /// Standard deviations; 0 marks a constant feature, which is ignored.
    pub scale: Vec<f64>,
    /// Coefficients on standardised features.
    pub coef: Vec<f64>,
    pub intercept: f64,
    pub alpha: f64,
    /// Leave-one-out RMSE at the chosen alpha (NaN with one point).
    pub loo_rmse: f64,
}

/// Cholesky factor of a symmetric positive definite matrix (row-major, d x d).
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v.is_nan() || v <= 0.0 {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves `L L^T x = b`.
fn chol_solve(l: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * d + i];
    }
    x
}

impl Ridge {
    /// Fits on rows `xs` (all of one length) and targets `ys`.
    pub fn fit(xs: &[Vec<f64>], ys: &[f64], params: &RidgeParams) -> Result<Ridge, PredictError> {
        let d = check_xy(xs, ys)?;
        if params.alphas.is_empty() || params.alphas.iter().any(|a| !(a.is_finite() && *a > 0.0)) {
            return Err(PredictError::Param(
                "ridge alphas must be positive and finite".into(),
            ));
        }
        let n = xs.len();
        let nf = n as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| xs.iter().map(|r| r[j]).sum::<f64>() / nf)
            .collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let v = xs.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / nf;
                if v.sqrt() > 1e-12 { v.sqrt() } else { 0.0 }
            })
            .collect();
        let z: Vec<Vec<f64>> = xs
            .iter()
            .map(|r| {
                (0..d)
                    .map(|j| {
                        if scale[j] > 0.0 {
                            (r[j] - mean[j]) / scale[j]
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let ymean = ys.iter().sum::<f64>() / nf;
        let yc: Vec<f64> = ys.iter().map(|y| y - ymean).collect();
        let mut g = vec![0.0; d * d];
        let mut b = vec![0.0; d];
        for (zi, &y) in z.iter().zip(&yc) {
            for j in 0..d {
                b[j] += zi[j] * y;
                for k in 0..d {
                    g[j * d + k] += zi[j] * zi[k];
                }
            }
        }
        let mut best: Option<(f64, f64, Vec<f64>)> = None;
        // Largest penalty first: on equal LOO error the smoother model wins.
        let mut alphas = params.alphas.clone();
        alphas.sort_by(|a, b| b.total_cmp(a));
        for alpha in alphas {
            let mut a = g.clone();
            for j in 0..d {
                a[j * d + j] += alpha;
            }
            let Some(l) = cholesky(&a, d) else { continue };
            let coef = chol_solve(&l, d, &b);
            let mut sse = 0.0;
            for (zi, &y) in z.iter().zip(&yc) {
                let e = y - zi.iter().zip(&coef).map(|(a, b)| a * b).sum::<f64>();
                let v = chol_solve(&l, d, zi);
                let h = 1.0 / nf + zi.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
                let e = if 1.0 - h > 1e-12 { e / (1.0 - h) } else { e };
                sse += e * e;
            }
            let loo = if n > 1 { (sse / nf).sqrt() } else { f64::NAN };
            if best.as_ref().is_none_or(|(b, _, _)| loo < *b) {
                best = Some((loo, alpha, coef));
            }
        }
        let (loo_rmse, alpha, coef) = best
            .ok_or_else(|| PredictError::Param("ridge system is not positive definite".into()))?;
        Ok(Ridge {
            mean,
            scale,
            coef,
            intercept: ymean,
            alpha,
            loo_rmse,
        })
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.coef.len()
    }

    /// Prediction for one row (missing features count as the mean).
    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut y = self.intercept;
        for (j, &xj) in x.iter().enumerate().take(self.coef.len()) {
            if self.scale[j] > 0.0 {
                y += self.coef[j] * (xj - self.mean[j]) / self.scale[j];
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_function() {
        let xs: Vec<Vec<f64>> = (0..30)
            .map(|i| vec![i as f64 / 30.0, ((i * 7) % 11) as f64 / 11.0])
            .collect();
        let ys: Vec<f64> = xs.iter().map(|x| 2.0 + 3.0 * x[0] - 1.5 * x[1]).collect();
        let r = Ridge::fit(&xs, &ys, &RidgeParams::default()).unwrap();
        assert!(
            (r.alpha - 1e-4).abs() < 1e-12,
            "exact data prefers the least penalty"
        );
        for (x, y) in xs.iter().zip(&ys) {
            assert!((r.predict(x) - y).abs() < 1e-3, "{} vs {y}", r.predict(x));
        }
        assert!(r.loo_rmse < 1e-3);
    }

    #[test]
    fn matches_the_closed_form_by_hand() {
        // One feature x = (0, 1, 2), y = (0, 1, 5); standardised z = (x - 1) / sqrt(2/3).
        // coef = sum z y / (sum z^2 + alpha) = (5 / s) / (2 / s^2 + 1) with s = sqrt(2/3).
        let xs = vec![vec![0.0], vec![1.0], vec![2.0]];
        let ys = [0.0, 1.0, 5.0];
        let r = Ridge::fit(&xs, &ys, &RidgeParams { alphas: vec![1.0] }).unwrap();
        let s = (2.0f64 / 3.0).sqrt();
        let coef = (5.0 / s) / (2.0 / (s * s) + 1.0);
        assert!((r.coef[0] - coef).abs() < 1e-12);
        assert!((r.intercept - 2.0).abs() < 1e-12);
        assert!((r.predict(&[2.0]) - (2.0 + coef / s)).abs() < 1e-12);
    }

    #[test]
    fn constant_features_and_single_points_are_handled() {
        let xs = vec![vec![0.5, 1.0], vec![0.5, 2.0], vec![0.5, 3.0]];
        let r = Ridge::fit(&xs, &[1.0, 2.0, 3.0], &RidgeParams::default()).unwrap();
        assert_eq!(r.scale[0], 0.0);
        assert!((r.predict(&[9.0, 4.0]) - 4.0).abs() < 0.01);
        let one = Ridge::fit(&[vec![0.2, 0.8]], &[7.0], &RidgeParams::default()).unwrap();
        assert_eq!(one.predict(&[0.9, 0.1]), 7.0);
        assert!(Ridge::fit(&xs, &[1.0, 2.0, 3.0], &RidgeParams { alphas: vec![-1.0] }).is_err());
    }
}
