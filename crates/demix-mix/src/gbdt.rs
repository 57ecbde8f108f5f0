//! A small gradient-boosted regression tree ensemble, modelled on LightGBM's
//! regression defaults as RegMix uses them (L2 loss, start from the mean,
//! leaf-wise growth to `num_leaves`, `min_data_in_leaf`, shrinkage).
//!
//! Why not a crate: of the candidates on crates.io, `gbdt` (0.1.3) is
//! unmaintained and pulls regex, `forust-ml` is superseded by `perpetual`, and
//! `perpetual` has no learning-rate/iteration schedule (it is "parameter free"
//! by design), so none reproduces the paper's "learning rate 0.02, 300
//! iterations". The search fits at most a few thousand points with a handful of
//! features: exact splits on presorted features are simple, fast enough and
//! fully deterministic (ties break on feature, then position).

use serde::{Deserialize, Serialize};

use super::predict::{PredictError, check_xy};

/// Boosting settings; defaults are RegMix's learning rate and iterations as the
/// paper states them, and LightGBM's defaults for the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbdtParams {
    pub learning_rate: f64,
    pub iterations: usize,
    pub num_leaves: usize,
    pub min_data_in_leaf: usize,
    /// L2 penalty on leaf values.
    pub lambda_l2: f64,
    /// A split must reduce the squared error by more than this.
    pub min_gain_to_split: f64,
}

impl Default for GbdtParams {
    fn default() -> Self {
        GbdtParams {
            learning_rate: 0.02,
            iterations: 300,
            num_leaves: 31,
            min_data_in_leaf: 20,
            lambda_l2: 0.0,
            min_gain_to_split: 0.0,
        }
    }
}

/// A tree node: `x[feature] <= threshold` goes left (NaN goes right).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    Split {
        feature: usize,
        threshold: f64,
        left: u32,
        right: u32,
    },
    Leaf(f64),
}

/// One regression tree; node 0 is the root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        // Bounded by the node count, so a malformed (deserialised) tree cannot loop.
        for _ in 0..=self.nodes.len() {
            match self.nodes.get(i) {
                Some(Node::Leaf(v)) => return *v,
                Some(&Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                }) => {
                    let v = x.get(feature).copied().unwrap_or(f64::NAN);
                    i = if v <= threshold { left } else { right } as usize;
                }
                None => return 0.0,
            }
        }
        0.0
    }
}

/// A fitted ensemble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gbdt {
    pub init: f64,
    pub trees: Vec<Tree>,
    pub n_features: usize,
}

#[derive(Clone, Debug)]
struct Candidate {
    gain: f64,
    feature: usize,
    threshold: f64,
}

struct Grower<'a> {
    xs: &'a [Vec<f64>],
    /// Row indices sorted by each feature.
    order: &'a [Vec<usize>],
    params: &'a GbdtParams,
}

impl Grower<'_> {
    /// Best split of the rows in leaf `node` for residuals `r`.
    fn best_split(
        &self,
        node: u32,
        leaf_of: &[u32],
        r: &[f64],
        count: usize,
        sum: f64,
    ) -> Option<Candidate> {
        let p = self.params;
        if count < 2 * p.min_data_in_leaf.max(1) {
            return None;
        }
        let lambda = p.lambda_l2;
        let parent = sum * sum / (count as f64 + lambda);
        let mut best: Option<Candidate> = None;
        for (feature, order) in self.order.iter().enumerate() {
            let (mut nl, mut gl) = (0usize, 0.0f64);
            let mut prev: Option<f64> = None;
            for &i in order.iter().filter(|&&i| leaf_of[i] == node) {
                let v = self.xs[i][feature];
                if let Some(pv) = prev
                    && v > pv
                    && nl >= p.min_data_in_leaf.max(1)
                    && count - nl >= p.min_data_in_leaf.max(1)
                {
                    let nr = count - nl;
                    let gr = sum - gl;
                    let gain =
                        gl * gl / (nl as f64 + lambda) + gr * gr / (nr as f64 + lambda) - parent;
                    if gain > p.min_gain_to_split && best.as_ref().is_none_or(|b| gain > b.gain) {
                        let mid = pv + (v - pv) / 2.0;
                        let threshold = if mid < v { mid } else { pv };
                        best = Some(Candidate {
                            gain,
                            feature,
                            threshold,
                        });
                    }
                }
                nl += 1;
                gl += r[i];
                prev = Some(v);
            }
        }
        best
    }

    /// Grows one tree leaf-wise on residuals `r`; returns it with each row's leaf value.
    fn grow(&self, r: &[f64], leaf_of: &mut [u32]) -> Tree {
        let p = self.params;
        leaf_of.fill(0);
        let n = r.len();
        let mut nodes = vec![Node::Leaf(0.0)];
        // (node, count, sum, best split)
        let mut leaves: Vec<(u32, usize, f64, Option<Candidate>)> = Vec::new();
        let total: f64 = r.iter().sum();
        let c = self.best_split(0, leaf_of, r, n, total);
        leaves.push((0, n, total, c));
        while leaves.len() < p.num_leaves.max(1) {
            let pick = leaves
                .iter()
                .enumerate()
                .filter_map(|(k, l)| l.3.as_ref().map(|c| (k, c.gain)))
                .fold(None::<(usize, f64)>, |b, (k, g)| match b {
                    Some((_, bg)) if bg >= g => b,
                    _ => Some((k, g)),
                });
            let Some((k, _)) = pick else { break };
            let (node, _, _, cand) = leaves.swap_remove(k);
            let Some(cand) = cand else { break };
            let (left, right) = (nodes.len() as u32, nodes.len() as u32 + 1);
            nodes.push(Node::Leaf(0.0));
            nodes.push(Node::Leaf(0.0));
            nodes[node as usize] = Node::Split {
                feature: cand.feature,
                threshold: cand.threshold,
                left,
                right,
            };
            let (mut cl, mut sl, mut cr, mut sr) = (0usize, 0.0, 0usize, 0.0);
            for i in 0..n {
                if leaf_of[i] == node {
                    if self.xs[i][cand.feature] <= cand.threshold {
                        leaf_of[i] = left;
                        cl += 1;
                        sl += r[i];
                    } else {
                        leaf_of[i] = right;
                        cr += 1;
                        sr += r[i];
                    }
                }
            }
            let bl = self.best_split(left, leaf_of, r, cl, sl);
            let br = self.best_split(right, leaf_of, r, cr, sr);
            leaves.push((left, cl, sl, bl));
            leaves.push((right, cr, sr, br));
        }
        for (node, count, sum, _) in leaves {
            nodes[node as usize] =
                Node::Leaf(p.learning_rate * sum / (count as f64 + p.lambda_l2).max(1e-300));
        }
        Tree { nodes }
    }
}

impl Gbdt {
    /// Fits on rows `xs` (all of one length) and targets `ys`.
    pub fn fit(xs: &[Vec<f64>], ys: &[f64], params: &GbdtParams) -> Result<Gbdt, PredictError> {
        let d = check_xy(xs, ys)?;
        if !(params.learning_rate > 0.0 && params.learning_rate.is_finite())
            || params.lambda_l2 < 0.0
            || !params.lambda_l2.is_finite()
            || params.num_leaves == 0
        {
            return Err(PredictError::Param(
                "gbdt needs learning_rate > 0, lambda_l2 >= 0 and num_leaves >= 1".into(),
            ));
        }
        let n = xs.len();
        let init = ys.iter().sum::<f64>() / n as f64;
        let order: Vec<Vec<usize>> = (0..d)
            .map(|j| {
                let mut o: Vec<usize> = (0..n).collect();
                o.sort_by(|&a, &b| xs[a][j].total_cmp(&xs[b][j]).then(a.cmp(&b)));
                o
            })
            .collect();
        let grower = Grower {
            xs,
            order: &order,
            params,
        };
        let mut pred = vec![init; n];
        let mut r = vec![0.0; n];
        let mut leaf_of = vec![0u32; n];
        let mut trees = Vec::with_capacity(params.iterations);
        for _ in 0..params.iterations {
            for i in 0..n {
                r[i] = ys[i] - pred[i];
            }
            let tree = grower.grow(&r, &mut leaf_of);
            for i in 0..n {
                if let Some(Node::Leaf(v)) = tree.nodes.get(leaf_of[i] as usize) {
                    pred[i] += v;
                }
            }
            trees.push(tree);
        }
        Ok(Gbdt {
            init,
            trees,
            n_features: d,
        })
    }

    /// Prediction for one row (a missing feature goes right at every split).
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.init + self.trees.iter().map(|t| t.predict(x)).sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stump_splits_at_the_midpoint() {
        let xs: Vec<Vec<f64>> = (0..40).map(|i| vec![i as f64]).collect();
        let ys: Vec<f64> = (0..40).map(|i| if i < 20 { 0.0 } else { 1.0 }).collect();
        let p = GbdtParams {
            iterations: 1,
            learning_rate: 1.0,
            ..GbdtParams::default()
        };
        let g = Gbdt::fit(&xs, &ys, &p).unwrap();
        assert_eq!(g.init, 0.5);
        assert_eq!(
            g.trees[0].nodes.len(),
            3,
            "min_data_in_leaf 20 allows one split of 40 rows"
        );
        assert_eq!(
            g.trees[0].nodes[0],
            Node::Split {
                feature: 0,
                threshold: 19.5,
                left: 1,
                right: 2
            }
        );
        assert_eq!(g.predict(&[3.0]), 0.0);
        assert_eq!(g.predict(&[30.0]), 1.0);
    }

    #[test]
    fn boosting_fits_a_nonlinear_function() {
        let xs: Vec<Vec<f64>> = (0..400)
            .map(|i| vec![(i % 20) as f64 / 20.0, (i / 20) as f64 / 20.0])
            .collect();
        let f = |x: &[f64]| (6.0 * x[0]).sin() + (x[1] - 0.5).powi(2) * 4.0;
        let ys: Vec<f64> = xs.iter().map(|x| f(x)).collect();
        let g = Gbdt::fit(&xs, &ys, &GbdtParams::default()).unwrap();
        let mse = xs
            .iter()
            .map(|x| (g.predict(x) - f(x)).powi(2))
            .sum::<f64>()
            / 400.0;
        let var = {
            let m = ys.iter().sum::<f64>() / 400.0;
            ys.iter().map(|y| (y - m).powi(2)).sum::<f64>() / 400.0
        };
        assert!(mse < 0.1 * var, "mse {mse} vs variance {var}");
        assert_eq!(
            g,
            Gbdt::fit(&xs, &ys, &GbdtParams::default()).unwrap(),
            "deterministic"
        );
    }

    #[test]
    fn too_few_rows_give_the_mean() {
        let xs = vec![vec![0.0], vec![1.0], vec![2.0]];
        let g = Gbdt::fit(&xs, &[1.0, 2.0, 6.0], &GbdtParams::default()).unwrap();
        assert_eq!(g.predict(&[0.0]), 3.0);
        assert!(
            Gbdt::fit(
                &xs,
                &[1.0, 2.0, 6.0],
                &GbdtParams {
                    learning_rate: 0.0,
                    ..GbdtParams::default()
                }
            )
            .is_err()
        );
    }
}
