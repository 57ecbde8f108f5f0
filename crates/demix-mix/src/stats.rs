//! Rank statistics for judging proxies against reference models (method.md,
//! "How they judge it") and for the search objective.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which way a score is good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Losses, perplexities.
    #[default]
    LowerIsBetter,
    /// Accuracies.
    HigherIsBetter,
}

/// Errors of the statistics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("the two score lists differ in length ({0} vs {1})")]
    Length(usize, usize),
    #[error("{n} points are too few (need {need})")]
    TooFew { n: usize, need: usize },
    #[error("a score list is constant, so the correlation is undefined")]
    Constant,
    #[error("scores must be finite")]
    NonFinite,
    #[error("{0}")]
    Param(String),
}

fn pair(x: &[f64], y: &[f64], need: usize) -> Result<(), StatsError> {
    if x.len() != y.len() {
        return Err(StatsError::Length(x.len(), y.len()));
    }
    if x.len() < need {
        return Err(StatsError::TooFew { n: x.len(), need });
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(StatsError::NonFinite);
    }
    Ok(())
}

/// 1-based ranks in ascending order with ties averaged (scipy's
/// `rankdata(method="average")`). NaN ranks last.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    ranks_with(x, |a, b| a.total_cmp(b))
}

fn ranks_with(x: &[f64], cmp: impl Fn(&f64, &f64) -> std::cmp::Ordering) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| cmp(&x[a], &x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && cmp(&x[idx[i]], &x[idx[j]]).is_eq() {
            j += 1;
        }
        // Positions i..j (0-based) share the mean rank (i + 1 + j) / 2.
        let r = (i + 1 + j) as f64 / 2.0;
        for &k in &idx[i..j] {
            ranks[k] = r;
        }
        i = j;
    }
    ranks
}

/// Ranks with 1 = best for `dir`; NaN counts as worst.
fn goodness_ranks(x: &[f64], dir: Direction) -> Vec<f64> {
    ranks_with(x, |a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => match dir {
            Direction::LowerIsBetter => a.total_cmp(b),
            Direction::HigherIsBetter => b.total_cmp(a),
        },
    })
}

/// Pearson's r.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64, StatsError> {
    pair(x, y, 2)?;
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return Err(StatsError::Constant);
    }
    Ok((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Spearman's rho: Pearson's r of average ranks (handles ties as scipy does).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64, StatsError> {
    pair(x, y, 2)?;
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's tau-b (ties adjusted, as `scipy.stats.kendalltau`). O(n^2), which
/// is fine for the hundreds of proxies and references it is used on.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Result<f64, StatsError> {
    pair(x, y, 2)?;
    let (mut c, mut d, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let sx = (x[i] - x[j]).signum() as i64 * ((x[i] != x[j]) as i64);
            let sy = (y[i] - y[j]).signum() as i64 * ((y[i] != y[j]) as i64);
            match (sx, sy) {
                (0, 0) => {}
                (0, _) => tx += 1,
                (_, 0) => ty += 1,
                _ if sx == sy => c += 1,
                _ => d += 1,
            }
        }
    }
    let denom = (((c + d + tx) as f64) * ((c + d + ty) as f64)).sqrt();
    if denom == 0.0 || c + d + tx == 0 || c + d + ty == 0 {
        return Err(StatsError::Constant);
    }
    Ok((c - d) as f64 / denom)
}

/// A bootstrap confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    /// Resamples used (constant resamples, whose rho is undefined, are skipped).
    pub resamples: usize,
    pub skipped: usize,
}

/// Linear-interpolated quantile of sorted data (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile bootstrap interval for Spearman's rho: `resamples` resamples of
/// the pairs with replacement, seeded.
pub fn bootstrap_spearman(
    x: &[f64],
    y: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<Interval, StatsError> {
    pair(x, y, 3)?;
    if !(level > 0.0 && level < 1.0) || resamples == 0 {
        return Err(StatsError::Param(format!(
            "need 0 < level < 1 and resamples > 0, got {level}, {resamples}"
        )));
    }
    let estimate = spearman(x, y)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = x.len();
    let (mut bx, mut by) = (vec![0.0; n], vec![0.0; n]);
    let mut rhos = Vec::with_capacity(resamples);
    let mut skipped = 0;
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.random_range(0..n);
            bx[k] = x[i];
            by[k] = y[i];
        }
        match spearman(&bx, &by) {
            Ok(r) => rhos.push(r),
            Err(_) => skipped += 1,
        }
    }
    if rhos.is_empty() {
        return Err(StatsError::Constant);
    }
    rhos.sort_by(f64::total_cmp);
    let a = (1.0 - level) / 2.0;
    Ok(Interval {
        estimate,
        lo: quantile(&rhos, a),
        hi: quantile(&rhos, 1.0 - a),
        level,
        resamples: rhos.len(),
        skipped,
    })
}

/// Percentile ranks in [0, 1]: 0 for the best score, 1 for the worst, ties
/// averaged: `(rank - 1) / (n - 1)` with rank 1 = best. A single score gets 0.
/// NaN counts as worst.
pub fn percentile_ranks(x: &[f64], dir: Direction) -> Vec<f64> {
    let n = x.len();
    if n <= 1 {
        return vec![0.0; n];
    }
    goodness_ranks(x, dir)
        .into_iter()
        .map(|r| (r - 1.0) / (n - 1) as f64)
        .collect()
}

/// Spearman's rho over the references in the top `fraction` by reference score
/// (the paper's top-25 % rho): `ceil(fraction * n)` of them, at least 2.
pub fn top_fraction_spearman(
    proxy: &[f64],
    reference: &[f64],
    fraction: f64,
    dir: Direction,
) -> Result<f64, StatsError> {
    pair(proxy, reference, 2)?;
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(StatsError::Param(format!(
            "fraction {fraction} is not in (0, 1]"
        )));
    }
    let k = ((fraction * reference.len() as f64).ceil() as usize).max(2);
    let mut idx: Vec<usize> = (0..reference.len()).collect();
    // Best first, ties by index, so the top set is well defined.
    let ranks = goodness_ranks(reference, dir);
    idx.sort_by(|&a, &b| ranks[a].total_cmp(&ranks[b]).then(a.cmp(&b)));
    idx.truncate(k);
    let p: Vec<f64> = idx.iter().map(|&i| proxy[i]).collect();
    let r: Vec<f64> = idx.iter().map(|&i| reference[i]).collect();
    spearman(&p, &r)
}

/// Capability recovery: sum of proxy scores / sum of reference scores.
pub fn capability_recovery(proxy: &[f64], reference: &[f64]) -> Result<f64, StatsError> {
    pair(proxy, reference, 1)?;
    let r: f64 = reference.iter().sum();
    if r == 0.0 {
        return Err(StatsError::Param("reference scores sum to 0".into()));
    }
    Ok(proxy.iter().sum::<f64>() / r)
}

/// Rank of a model among references, 1 = best: `1 + #better + #tied / 2`
/// (its average rank were it inserted among them). Lower is better.
pub fn rank_among(score: f64, references: &[f64], dir: Direction) -> f64 {
    let better = |r: f64| match dir {
        Direction::LowerIsBetter => r < score,
        Direction::HigherIsBetter => r > score,
    };
    let b = references.iter().filter(|&&r| better(r)).count();
    let t = references.iter().filter(|&&r| r == score).count();
    1.0 + b as f64 + t as f64 / 2.0
}

/// How much the proxy's favourite loses against the true best.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Regret {
    /// Index of the proxy's best (first on ties).
    pub pick: usize,
    /// Best reference score minus the pick's, oriented so that >= 0.
    pub regret: f64,
    /// The pick's rank among the references (1 = best, ties averaged).
    pub pick_rank: f64,
}

/// Regret of the proxy's top pick, judged by the reference scores.
pub fn top_pick_regret(
    proxy: &[f64],
    reference: &[f64],
    dir: Direction,
) -> Result<Regret, StatsError> {
    pair(proxy, reference, 1)?;
    let better = |a: f64, b: f64| match dir {
        Direction::LowerIsBetter => a < b,
        Direction::HigherIsBetter => a > b,
    };
    let pick = (1..proxy.len()).fold(0, |best, i| {
        if better(proxy[i], proxy[best]) {
            i
        } else {
            best
        }
    });
    let best = reference
        .iter()
        .copied()
        .fold(reference[0], |a, b| if better(b, a) { b } else { a });
    let regret = (reference[pick] - best).abs();
    let pick_rank = goodness_ranks(reference, dir)[pick];
    Ok(Regret {
        pick,
        regret,
        pick_rank,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    // Reference values below come from scipy 1.17.1 (scipy.stats.spearmanr,
    // kendalltau, rankdata) run on these exact vectors in a scratch venv.
    const X: [f64; 10] = [3.1, 1.2, 5.5, 2.2, 2.2, 8.0, 7.1, 0.5, 4.4, 6.0];
    const Y: [f64; 10] = [2.0, 1.0, 4.0, 3.0, 2.5, 9.0, 6.0, 1.0, 7.0, 5.0];

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 5.0]),
            [2.5, 4.0, 2.5, 1.0]
        );
        assert_eq!(
            percentile_ranks(&[10.0, 20.0, 10.0, 5.0], Direction::LowerIsBetter),
            [0.5, 1.0, 0.5, 0.0]
        );
        assert_eq!(
            percentile_ranks(&[10.0, 20.0, 10.0, 5.0], Direction::HigherIsBetter),
            [0.5, 0.0, 0.5, 1.0]
        );
        assert_eq!(
            percentile_ranks(&[1.0, f64::NAN, 0.0], Direction::HigherIsBetter),
            [0.0, 1.0, 0.5]
        );
        assert_eq!(percentile_ranks(&[3.0], Direction::LowerIsBetter), [0.0]);
    }

    #[test]
    fn spearman_and_kendall_match_scipy() {
        near(spearman(&X, &Y).unwrap(), SCIPY_SPEARMAN);
        near(kendall_tau_b(&X, &Y).unwrap(), SCIPY_KENDALL);
        near(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap(), -1.0);
        // Hand-computed: ranks x = 1 2 3 4, y = 1 3 2 4: 1 - 6*2/(4*15) = 0.8.
        near(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 30.0, 20.0, 40.0]).unwrap(),
            0.8,
        );
        // tau-b: pairs: 5 concordant, 1 discordant, no ties: 4/6.
        near(
            kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[10.0, 30.0, 20.0, 40.0]).unwrap(),
            4.0 / 6.0,
        );
    }

    const SCIPY_SPEARMAN: f64 = 0.884_146_341_463_414_8;
    const SCIPY_KENDALL: f64 = 0.75;

    #[test]
    fn degenerate_inputs_are_errors() {
        assert_eq!(
            spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]),
            Err(StatsError::Constant)
        );
        assert_eq!(
            kendall_tau_b(&[1.0, 1.0], &[1.0, 2.0]),
            Err(StatsError::Constant)
        );
        assert_eq!(spearman(&[1.0], &[1.0, 2.0]), Err(StatsError::Length(1, 2)));
        assert_eq!(
            spearman(&[1.0], &[1.0]),
            Err(StatsError::TooFew { n: 1, need: 2 })
        );
        assert_eq!(
            spearman(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(StatsError::NonFinite)
        );
        assert!(capability_recovery(&[1.0], &[0.0]).is_err());
        assert!(top_fraction_spearman(&X, &Y, 0.0, Direction::HigherIsBetter).is_err());
    }

    #[test]
    fn bootstrap_interval_is_seeded_and_brackets_the_estimate() {
        let a = bootstrap_spearman(&X, &Y, 2000, 0.95, 1).unwrap();
        let b = bootstrap_spearman(&X, &Y, 2000, 0.95, 1).unwrap();
        assert_eq!(a, b);
        assert!(
            a.lo < a.estimate && a.estimate < a.hi && a.hi <= 1.0,
            "{a:?}"
        );
        assert_eq!(a.resamples + a.skipped, 2000);
        let c = bootstrap_spearman(&X, &Y, 2000, 0.95, 2).unwrap();
        assert_ne!(a.lo, c.lo);
        // Perfectly monotone data: every resample has rho 1.
        let m =
            bootstrap_spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 9.0], 200, 0.9, 0).unwrap();
        assert!(m.lo > 1.0 - 1e-12 && m.hi > 1.0 - 1e-12, "{m:?}");
        assert!(m.skipped > 0, "some resamples draw one point only");
    }

    #[test]
    fn top_quarter_rho_uses_the_best_references() {
        // 8 references (higher is better): the top 2 are indices 5 (9.0) and 7 (7.0).
        let reference = [2.0, 1.0, 4.0, 3.0, 2.5, 9.0, 6.0, 7.0];
        let proxy = [1.0, 2.0, 3.0, 4.0, 5.0, 9.5, 7.0, 8.0];
        // Top 25 % = 2 references: 9.0 (proxy 9.5) and 7.0 (proxy 8.0): rho 1.
        near(
            top_fraction_spearman(&proxy, &reference, 0.25, Direction::HigherIsBetter).unwrap(),
            1.0,
        );
        // Lower is better: top 2 are 1.0 (proxy 2.0) and 2.0 (proxy 1.0): rho -1.
        near(
            top_fraction_spearman(&proxy, &reference, 0.25, Direction::LowerIsBetter).unwrap(),
            -1.0,
        );
        // Top 50 % (higher): 9, 7, 6, 4 vs proxies 9.5, 8, 7, 3: rho 1.
        near(
            top_fraction_spearman(&proxy, &reference, 0.5, Direction::HigherIsBetter).unwrap(),
            1.0,
        );
    }

    #[test]
    fn recovery_rank_and_regret() {
        near(capability_recovery(&[0.4, 0.5], &[0.5, 0.5]).unwrap(), 0.9);
        let refs = [0.3, 0.5, 0.5, 0.7];
        assert_eq!(rank_among(0.6, &refs, Direction::HigherIsBetter), 2.0);
        assert_eq!(rank_among(0.5, &refs, Direction::HigherIsBetter), 3.0);
        assert_eq!(rank_among(0.8, &refs, Direction::HigherIsBetter), 1.0);
        assert_eq!(rank_among(0.8, &refs, Direction::LowerIsBetter), 5.0);
        assert_eq!(rank_among(0.1, &refs, Direction::LowerIsBetter), 1.0);
        // Accuracy: the proxy likes index 2 most; the best reference is index 3.
        let r = top_pick_regret(&[0.1, 0.2, 0.9, 0.8], &refs, Direction::HigherIsBetter).unwrap();
        assert_eq!(r.pick, 2);
        near(r.regret, 0.2);
        assert_eq!(r.pick_rank, 2.5);
        // Loss: the proxy's lowest is index 0, which is also the best reference.
        let r = top_pick_regret(&[0.1, 0.2, 0.9, 0.8], &refs, Direction::LowerIsBetter).unwrap();
        assert_eq!((r.pick, r.regret, r.pick_rank), (0, 0.0, 1.0));
    }
}
