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
    /// The kind with the least cross-validated error on the points at hand.
    #[default]
    Auto,
    Ridge,
    Quadratic,
    Gbdt,
}

/// A concrete model kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Linear in the weights (RegMix's linear baseline).
    Ridge,
    /// Ridge on the weights and their pairwise products: curvature and
    /// interactions, still smooth where points are few.
    Quadratic,
    /// Gradient-boosted trees (RegMix's LightGBM).
    Gbdt,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [ModelKind::Ridge, ModelKind::Quadratic, ModelKind::Gbdt];
}

/// Predictor settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictorConfig {
    pub model: ModelChoice,
    /// Boosted trees take part in the `auto` choice from this many points on:
    /// with LightGBM's `min_data_in_leaf = 20` trees cannot split fewer than 40
    /// points at all, so below that they only predict the mean.
    pub ridge_below: usize,
    /// Folds of the cross-validation that chooses the model (`auto`).
    pub folds: usize,
    pub ridge: RidgeParams,
    pub gbdt: GbdtParams,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            model: ModelChoice::Auto,
            ridge_below: 40,
            folds: 5,
            ridge: RidgeParams::default(),
            gbdt: GbdtParams::default(),
        }
    }
}

impl PredictorConfig {
    /// The kinds the choice is made among for `n` points.
    pub fn candidates(&self, n: usize) -> Vec<ModelKind> {
        match self.model {
            ModelChoice::Ridge => vec![ModelKind::Ridge],
            ModelChoice::Quadratic => vec![ModelKind::Quadratic],
            ModelChoice::Gbdt => vec![ModelKind::Gbdt],
            ModelChoice::Auto => ModelKind::ALL
                .into_iter()
                .filter(|k| *k != ModelKind::Gbdt || n >= self.ridge_below)
                .collect(),
        }
    }
}

/// A fitted predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Predictor {
    Ridge(Ridge),
    Quadratic(Ridge),
    Gbdt(Gbdt),
}

/// The weights and their pairwise products (squares included).
fn quadratic_features(x: &[f64]) -> Vec<f64> {
    let mut out = x.to_vec();
    for i in 0..x.len() {
        for j in i..x.len() {
            out.push(x[i] * x[j]);
        }
    }
    out
}

/// How a model was chosen: every candidate's cross-validated error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub chosen: ModelKind,
    /// One report per candidate kind (empty when there was no choice to make
    /// or too few points to cross-validate).
    pub candidates: Vec<CvReport>,
}

impl Predictor {
    /// Fits the model `config` chooses: with `auto`, the candidate kind with
    /// the least cross-validated RMSE.
    pub fn fit(
        config: &PredictorConfig,
        xs: &[Vec<f64>],
        ys: &[f64],
    ) -> Result<Predictor, PredictError> {
        Self::fit_select(config, xs, ys).map(|(p, _)| p)
    }

    /// [`Predictor::fit`], also returning how the kind was chosen.
    pub fn fit_select(
        config: &PredictorConfig,
        xs: &[Vec<f64>],
        ys: &[f64],
    ) -> Result<(Predictor, Selection), PredictError> {
        check_xy(xs, ys)?;
        let kinds = config.candidates(xs.len());
        let mut reports = Vec::new();
        if kinds.len() > 1 && xs.len() >= 4 {
            for &k in &kinds {
                reports.push(cross_validate(k, config, xs, ys, config.folds.max(2), 0)?);
            }
        }
        // Least error wins; on a tie the simpler kind (earlier in the list).
        let chosen = reports
            .iter()
            .min_by(|a, b| a.rmse.total_cmp(&b.rmse))
            .map_or(kinds[0], |r| r.model);
        let p = Self::fit_kind(chosen, config, xs, ys)?;
        Ok((
            p,
            Selection {
                chosen,
                candidates: reports,
            },
        ))
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
            ModelKind::Quadratic => {
                let q: Vec<Vec<f64>> = xs.iter().map(|x| quadratic_features(x)).collect();
                Predictor::Quadratic(Ridge::fit(&q, ys, &config.ridge)?)
            }
            ModelKind::Gbdt => Predictor::Gbdt(Gbdt::fit(xs, ys, &config.gbdt)?),
        })
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Predictor::Ridge(_) => ModelKind::Ridge,
            Predictor::Quadratic(_) => ModelKind::Quadratic,
            Predictor::Gbdt(_) => ModelKind::Gbdt,
        }
    }

    /// Prediction for one mixture (it should have the training width).
    pub fn predict(&self, x: &[f64]) -> f64 {
        match self {
            Predictor::Ridge(r) => r.predict(x),
            Predictor::Quadratic(r) => r.predict(&quadratic_features(x)),
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
    /// The kind fitted in every fold.
    pub model: ModelKind,
    pub n: usize,
    pub folds: usize,
    /// RMSE of the out-of-fold predictions.
    pub rmse: f64,
    /// Spearman rho of out-of-fold predictions against truth; `None` when the
    /// predictions are constant (e.g. trees on too few points).
    pub spearman: Option<f64>,
}

/// k-fold cross-validation of one model kind (folds = min(k, n); shuffled
/// with `seed`).
pub fn cross_validate(
    kind: ModelKind,
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
    use crate::sampler::{SamplerConfig, sample};

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
        for model in [ModelChoice::Gbdt, ModelChoice::Quadratic, ModelChoice::Auto] {
            let c = PredictorConfig {
                model,
                ..PredictorConfig::default()
            };
            let p = Predictor::fit(&c, &train, &ys).unwrap();
            let rho = spearman(&p.predict_many(&test), &truth).unwrap();
            assert!(rho > 0.9, "{model:?}: held-out rho {rho}");
        }
        // The bowl is quadratic: `auto` finds that by cross-validation, and a
        // plain linear model cannot see it.
        let (p, sel) = Predictor::fit_select(&PredictorConfig::default(), &train, &ys).unwrap();
        assert_eq!(sel.candidates.len(), 3);
        assert_ne!(p.kind(), ModelKind::Ridge, "{sel:?}");
        let best = sel
            .candidates
            .iter()
            .map(|c| c.rmse)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(
            sel.candidates
                .iter()
                .find(|c| c.model == sel.chosen)
                .unwrap()
                .rmse,
            best
        );
        // On few points of a linear function, trees are not even tried and the
        // linear model wins.
        let near_linear = |w: &[f64]| 1.0 + w[0] - 2.0 * w[2] + 0.5 * w[4];
        let c = PredictorConfig::default();
        let few: Vec<Vec<f64>> = train[..24].to_vec();
        let fy: Vec<f64> = few.iter().map(|w| near_linear(w)).collect();
        let (p, sel) = Predictor::fit_select(&c, &few, &fy).unwrap();
        assert!(sel.candidates.iter().all(|c| c.model != ModelKind::Gbdt));
        assert_eq!(p.kind(), ModelKind::Ridge, "{sel:?}");
        let truth: Vec<f64> = test.iter().map(|w| near_linear(w)).collect();
        let rho = spearman(&p.predict_many(&test), &truth).unwrap();
        assert!(rho > 0.95, "ridge held-out rho {rho}");
    }

    #[test]
    fn cross_validation_reports_error_and_rank() {
        let xs = mixtures(120, 3);
        let ys: Vec<f64> = xs.iter().map(|w| loss(w)).collect();
        let c = PredictorConfig::default();
        let cv = cross_validate(ModelKind::Gbdt, &c, &xs, &ys, 5, 0).unwrap();
        assert_eq!((cv.model, cv.n, cv.folds), (ModelKind::Gbdt, 120, 5));
        let m = ys.iter().sum::<f64>() / ys.len() as f64;
        let sd = (ys.iter().map(|y| (y - m).powi(2)).sum::<f64>() / ys.len() as f64).sqrt();
        assert!(cv.rmse > 0.0 && cv.rmse < 0.6 * sd, "{cv:?} vs sd {sd}");
        assert!(cv.spearman.unwrap() > 0.8, "{cv:?}");
        assert_eq!(
            cv,
            cross_validate(ModelKind::Gbdt, &c, &xs, &ys, 5, 0).unwrap(),
            "seeded"
        );
        // More folds than points: leave-one-out.
        let small = cross_validate(ModelKind::Ridge, &c, &xs[..6], &ys[..6], 10, 0).unwrap();
        assert_eq!((small.model, small.folds), (ModelKind::Ridge, 6));
        assert!(cross_validate(ModelKind::Ridge, &c, &xs[..1], &ys[..1], 5, 0).is_err());
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
        for model in [
            ModelChoice::Ridge,
            ModelChoice::Quadratic,
            ModelChoice::Gbdt,
        ] {
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
