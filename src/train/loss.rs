//! The retrieval loss: late-interaction (MaxSim) scores between every query and
//! every document of a batch, InfoNCE over in-batch negatives, plus a margin term
//! on the hardest negative.
//!
//! ```text
//! scores[i, j] = mean over query i's real tokens t of  max over doc j's real tokens s of <q[i,t], d[j,s]>
//! infonce      = mean_i [ logsumexp_j(scores[i, j] / tau) - scores[i, i] / tau ]
//! margin       = mean_i relu(m - scores[i, i] + max_{j != i} scores[i, j])
//! loss         = infonce + w * margin          (tau = 0.07, m = 0.2, w = 0.1 by default)
//! ```

use crate::mlx::{ops, Array, Dtype, Result};

/// Loss hyper-parameters (they enter a train stage's key).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub temperature: f32,
    pub margin: f32,
    pub margin_weight: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            temperature: 0.07,
            margin: 0.2,
            margin_weight: 0.1,
        }
    }
}

/// Large enough to lose every max, small enough to stay finite in f32 (and bf16).
const MASKED: f32 = -1e9;

/// MaxSim scores `[B, B]` for query embeddings `q [B, Lq, H]` (mask `[B, Lq]`) and
/// document embeddings `d [B, Ld, H]` (mask `[B, Ld]`); masks are 1 for real tokens.
pub fn maxsim_scores(q: &Array, q_mask: &Array, d: &Array, d_mask: &Array) -> Result<Array> {
    let (b, lq, h) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let (bd, ld) = (d.shape()[0], d.shape()[1]);
    // One GEMM for all pairs: [B*Lq, H] x [H, Bd*Ld] -> [B, Lq, Bd, Ld].
    let sim = ops::matmul(
        q.reshape(&[b * lq, h])?,
        d.reshape(&[bd * ld, h])?.transpose()?,
    )?
    .reshape(&[b, lq, bd, ld])?;
    let d_mask = d_mask.as_dtype(sim.dtype())?.reshape(&[1, 1, bd, ld])?;
    let penalty = ops::multiply(
        ops::subtract(Array::from_f32(1.0), &d_mask)?,
        Array::from_f32(MASKED),
    )?;
    let best = ops::add(&sim, penalty.as_dtype(sim.dtype())?)?.max_axis(3, false)?; // [B, Lq, Bd]
    let q_mask = q_mask.as_dtype(Dtype::Float32)?;
    let best = ops::multiply(best.as_dtype(Dtype::Float32)?, q_mask.reshape(&[b, lq, 1])?)?;
    ops::divide(best.sum_axis(1, false)?, q_mask.sum_axis(1, true)?)
}

/// The loss (a scalar, f32) and the score matrix, for logging.
pub fn retrieval_loss(
    q: &Array,
    q_mask: &Array,
    d: &Array,
    d_mask: &Array,
    cfg: &LossConfig,
) -> Result<(Array, Array)> {
    let scores = maxsim_scores(q, q_mask, d, d_mask)?;
    let n = scores.shape()[0];
    let eye = eye(n)?;
    let pos = ops::multiply(&scores, &eye)?.sum_axis(1, false)?;
    let logits = ops::divide(&scores, Array::from_f32(cfg.temperature))?;
    let infonce = ops::subtract(
        logits.logsumexp_axis(1, false)?,
        ops::divide(&pos, Array::from_f32(cfg.temperature))?,
    )?
    .mean(false)?;
    let negatives = ops::add(&scores, ops::multiply(&eye, Array::from_f32(MASKED))?)?;
    let hardest = negatives.max_axis(1, false)?;
    let gap = ops::add(ops::subtract(Array::from_f32(cfg.margin), &pos)?, hardest)?;
    let margin = ops::maximum(gap, Array::from_f32(0.0))?.mean(false)?;
    let loss = ops::add(
        infonce,
        ops::multiply(margin, Array::from_f32(cfg.margin_weight))?,
    )?;
    Ok((loss, scores))
}

/// The `n x n` identity in f32.
fn eye(n: i32) -> Result<Array> {
    let idx = ops::arange::<i32>(0.0, n as f64, 1.0)?;
    ops::eq(idx.reshape(&[n, 1])?, idx.reshape(&[1, n])?)?.as_dtype(Dtype::Float32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlx::{io, value_and_grad};

    fn golden() -> std::collections::HashMap<String, Array> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/golden/train_loss.safetensors"
        );
        io::load_safetensors(path).expect("golden loss fixture")
    }

    fn max_abs_diff(a: &Array, b: &Array) -> f32 {
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn loss_scores_and_gradients_match_pytorch() {
        let g = golden();
        let cfg = LossConfig::default();
        let (loss, scores) =
            retrieval_loss(&g["q"], &g["qmask"], &g["d"], &g["dmask"], &cfg).unwrap();
        assert!(max_abs_diff(&scores, &g["scores"]) < 1e-5, "scores");
        assert!((loss.item::<f32>().unwrap() - g["loss"].to_vec::<f32>().unwrap()[0]).abs() < 1e-5);
        let (qm, dm) = (g["qmask"].clone(), g["dmask"].clone());
        let (_, grads) = value_and_grad(
            |p: &[Array]| Ok(vec![retrieval_loss(&p[0], &qm, &p[1], &dm, &cfg)?.0]),
            &[g["q"].clone(), g["d"].clone()],
        )
        .unwrap();
        assert!(max_abs_diff(&grads[0], &g["grad_q"]) < 1e-5, "grad q");
        assert!(max_abs_diff(&grads[1], &g["grad_d"]) < 1e-5, "grad d");
    }
}
