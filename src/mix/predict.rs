//! Predictors from mixture weights to a score (method.md, step 6): gradient
//! boosted trees as RegMix, ridge for few points, an automatic choice between
//! them, and k-fold cross-validated error as a diagnostic.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use super::gbdt::{Gbdt, GbdtParams};
pub use super::ridge::{Ridge, RidgeParams};
use super::stats::spearman;

/// Errors of fitting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PredictError {
    #[error("no training points")]
    Empty,
    #[error("{xs} rows but {ys} targets")]
    Length { xs: usize, ys: usize },
    #[error("row {row} has {got} features, row 0 has {want}")]
    Dimension { row: usize, got: usize, want: usize },
    #[error("rows need at least one feature")]
    NoFeatures,
    #[error("row {0} has a non-finite feature or target")]
    NonFinite(usize),
    #[error("predictor parameters: {0}")]
    Param(String),
}

/// Checks a training set; returns the number of features.
pub(crate) fn check_xy(xs: &[Vec<f64>], ys: &[f64]) -> Result<usize, PredictError> {
    if xs.len() != ys.len() {
        return Err(PredictError::Length {
            xs: xs.len(),
            ys: ys.len(),
        });
    }
    let d = xs.first().ok_or(PredictError::Empty)?.len();
    if d == 0 {
        return Err(PredictError::NoFeatures);
    }
    for (row, (x, y)) in xs.iter().zip(ys).enumerate() {
        if x.len() != d {
            return Err(PredictError::Dimension {
                row,
                got: x.len(),
                want: d,
            });
        }
        if !y.is_finite() || x.iter().any(|v| !v.is_finite()) {
            return Err(PredictError::NonFinite(row));
        }
    }
    Ok(d)
}

/// Which model to fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelChoice {
    /// Ridge below `ridge_below` points, boosted trees from there on.
    #[default]
    Auto,
    Ridge,
    Gbdt,
}

/// A concrete model kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Ridge,
    Gbdt,
}

/// Predictor settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictorConfig {
    pub model: ModelChoice,
    /// With `auto`, fewer points than this get ridge. Trees with LightGBM's
    /// `min_data_in_leaf = 20` cannot split fewer than 40 points at all.
    pub ridge_below: usize,
    pub ridge: RidgeParams,
    pub gbdt: GbdtParams,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            model: ModelChoice::Auto,
            ridge_below: 40,
            ridge: RidgeParams::default(),
            gbdt: GbdtParams::default(),
        }
    }
}

impl PredictorConfig {
    /// The model fitted on `n` points.
    pub fn kind_for(&self, n: usize) -> ModelKind {
        match self.model {
            ModelChoice::Ridge => ModelKind::Ridge,
            ModelChoice::Gbdt => ModelKind::Gbdt,
            ModelChoice::Auto if n < self.ridge_below => ModelKind::Ridge,
            ModelChoice::Auto => ModelKind::Gbdt,
        }
    }
}

/// A fitted predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Predictor {
    Ridge(Ridge),
    Gbdt(Gbdt),
}

impl Predictor {
    /// Fits the model `config` chooses for `xs.len()` points.
    pub fn fit(
        config: &PredictorConfig,
        xs: &[Vec<f64>],
        ys: &[f64],
    ) -> Result<Predictor, PredictError> {
        Self::fit_kind(config.kind_for(xs.len()), config, xs, ys)
    }

    /// Fits a given kind.
    pub fn fit_kind(
        kind: ModelKind,
        config: &PredictorConfig,
        xs: &[Vec<f64>],
        ys: &[f64],
    ) -> Result<Predictor, PredictError> {
        Ok(match kind {
            ModelKind::Ridge => Predictor::Ridge(Ridge::fit(xs, ys, &config.ridge)?),
            ModelKind::Gbdt => Predictor::Gbdt(Gbdt::fit(xs, ys, &config.gbdt)?),
        })
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Predictor::Ridge(_) => ModelKind::Ridge,
            Predictor::Gbdt(_) => ModelKind::Gbdt,
        }
    }

    /// Prediction for one mixture (it should have the training width).
    pub fn predict(&self, x: &[f64]) -> f64 {
        match self {
            Predictor::Ridge(r) => r.predict(x),
            Predictor::Gbdt(g) => g.predict(x),
        }
    }

    /// Predictions for many mixtures.
    pub fn predict_many(&self, xs: &[Vec<f64>]) -> Vec<f64> {
        xs.iter().map(|x| self.predict(x)).collect()
    }
}

/// Cross-validated error of a predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    /// The kind fitted on all points (and so in every fold).
    pub model: ModelKind,
    pub n: usize,
    pub folds: usize,
    /// RMSE of the out-of-fold predictions.
    pub rmse: f64,
    /// Spearman rho of out-of-fold predictions against truth; `None` when the
    /// predictions are constant (e.g. trees on too few points).
    pub spearman: Option<f64>,
}

/// k-fold cross-validation (folds = min(k, n); shuffled with `seed`). The
/// model kind is the one the full data would get.
pub fn cross_validate(
    config: &PredictorConfig,
    xs: &[Vec<f64>],
    ys: &[f64],
    k: usize,
    seed: u64,
) -> Result<CvReport, PredictError> {
    check_xy(xs, ys)?;
    let n = xs.len();
    if n < 2 || k < 2 {
        return Err(PredictError::Param(format!(
            "cross-validation needs 2+ points and 2+ folds (n = {n}, k = {k})"
        )));
    }
    let folds = k.min(n);
    let kind = config.kind_for(n);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut oof = vec![0.0; n];
    for f in 0..folds {
        let (mut tx, mut ty, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, &i) in idx.iter().enumerate() {
            if pos % folds == f {
                held.push(i);
            } else {
                tx.push(xs[i].clone());
                ty.push(ys[i]);
            }
        }
        let p = Predictor::fit_kind(kind, config, &tx, &ty)?;
        for i in held {
            oof[i] = p.predict(&xs[i]);
        }
    }
    let rmse = (oof
        .iter()
        .zip(ys)
        .map(|(p, y)| (p - y).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    Ok(CvReport {
        model: kind,
        n,
        folds,
        rmse,
        spearman: spearman(&oof, ys).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::sampler::{SamplerConfig, sample};

    /// A nonlinear "loss" of 5-candidate mixtures: a bowl around an interior
    /// optimum plus an interaction and a saturating term.
    fn loss(w: &[f64]) -> f64 {
        let opt = [0.35, 0.25, 0.2, 0.15, 0.05];
        let bowl: f64 = w.iter().zip(opt).map(|(a, b)| (a - b).powi(2)).sum();
        2.0 + 3.0 * bowl + 0.5 * w[0] * w[1] - 0.3 * (1.0 - (-8.0 * w[2]).exp())
    }

    fn mixtures(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let c = SamplerConfig {
            draws: n,
            keep: n,
            seed,
            ..SamplerConfig::default()
        };
        sample(&[30.0, 25.0, 20.0, 15.0, 10.0], &c)
            .unwrap()
            .to_weights()
    }

    #[test]
    fn ranks_held_out_mixtures_of_a_nonlinear_function() {
        let train = mixtures(300, 1);
        let test = mixtures(200, 2);
        let ys: Vec<f64> = train.iter().map(|w| loss(w)).collect();
        let truth: Vec<f64> = test.iter().map(|w| loss(w)).collect();
        for model in [ModelChoice::Gbdt, ModelChoice::Auto] {
            let c = PredictorConfig {
                model,
                ..PredictorConfig::default()
            };
            let p = Predictor::fit(&c, &train, &ys).unwrap();
            assert_eq!(p.kind(), ModelKind::Gbdt);
            let rho = spearman(&p.predict_many(&test), &truth).unwrap();
            assert!(rho > 0.9, "{model:?}: held-out rho {rho}");
        }
        // Ridge on a few points ranks a near-linear function well (it cannot
        // see the bowl above, which is why trees take over with more points).
        let near_linear = |w: &[f64]| 1.0 + w[0] - 2.0 * w[2] + 0.5 * w[4] + 0.3 * w[1] * w[1];
        let c = PredictorConfig::default();
        let few: Vec<Vec<f64>> = train[..24].to_vec();
        let fy: Vec<f64> = few.iter().map(|w| near_linear(w)).collect();
        let p = Predictor::fit(&c, &few, &fy).unwrap();
        assert_eq!(p.kind(), ModelKind::Ridge);
        let truth: Vec<f64> = test.iter().map(|w| near_linear(w)).collect();
        let rho = spearman(&p.predict_many(&test), &truth).unwrap();
        assert!(rho > 0.95, "ridge held-out rho {rho}");
    }

    #[test]
    fn cross_validation_reports_error_and_rank() {
        let xs = mixtures(120, 3);
        let ys: Vec<f64> = xs.iter().map(|w| loss(w)).collect();
        let c = PredictorConfig::default();
        let cv = cross_validate(&c, &xs, &ys, 5, 0).unwrap();
        assert_eq!((cv.model, cv.n, cv.folds), (ModelKind::Gbdt, 120, 5));
        let m = ys.iter().sum::<f64>() / ys.len() as f64;
        let sd = (ys.iter().map(|y| (y - m).powi(2)).sum::<f64>() / ys.len() as f64).sqrt();
        assert!(cv.rmse > 0.0 && cv.rmse < 0.6 * sd, "{cv:?} vs sd {sd}");
        assert!(cv.spearman.unwrap() > 0.8, "{cv:?}");
        assert_eq!(cv, cross_validate(&c, &xs, &ys, 5, 0).unwrap(), "seeded");
        // More folds than points: leave-one-out.
        let small = cross_validate(&c, &xs[..6], &ys[..6], 10, 0).unwrap();
        assert_eq!((small.model, small.folds), (ModelKind::Ridge, 6));
        assert!(cross_validate(&c, &xs[..1], &ys[..1], 5, 0).is_err());
    }

    #[test]
    fn bad_training_sets_are_errors() {
        let c = PredictorConfig::default();
        assert_eq!(Predictor::fit(&c, &[], &[]), Err(PredictError::Empty));
        assert_eq!(
            Predictor::fit(&c, &[vec![1.0]], &[1.0, 2.0]),
            Err(PredictError::Length { xs: 1, ys: 2 })
        );
        assert_eq!(
            Predictor::fit(&c, &[vec![1.0], vec![1.0, 2.0]], &[1.0, 2.0]),
            Err(PredictError::Dimension {
                row: 1,
                got: 2,
                want: 1
            })
        );
        assert_eq!(
            Predictor::fit(&c, &[vec![f64::NAN]], &[1.0]),
            Err(PredictError::NonFinite(0))
        );
        assert_eq!(
            Predictor::fit(&c, &[vec![]], &[1.0]),
            Err(PredictError::NoFeatures)
        );
    }

    #[test]
    fn predictors_serialise() {
        let xs = mixtures(50, 4);
        let ys: Vec<f64> = xs.iter().map(|w| loss(w)).collect();
        for model in [ModelChoice::Ridge, ModelChoice::Gbdt] {
            let c = PredictorConfig {
                model,
                gbdt: GbdtParams {
                    iterations: 5,
                    ..GbdtParams::default()
                },
                ..PredictorConfig::default()
            };
            let p = Predictor::fit(&c, &xs, &ys).unwrap();
            let back: Predictor =
                serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            // serde_json may lose the last bit of a float without `float_roundtrip`.
            for (a, b) in back.predict_many(&xs).iter().zip(p.predict_many(&xs)) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }
}
