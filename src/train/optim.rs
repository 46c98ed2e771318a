//! AdamW with decoupled weight decay, PyTorch's semantics (`torch.optim.AdamW`):
//! `p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
//! p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`. State stays in f32.
//!
//! The per-step scalars (`lr / (1-b1^t)`, `1-b2^t`) are arrays, so one traced
//! graph serves every step when the update runs inside a compiled function.

use crate::mlx::{ops, Array, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The scalars of step `t`, as arrays: `[1 - lr*wd, lr / (1-b1^t), 1-b2^t]`.
pub type StepScalars = [Array; 3];

/// First and second moments per parameter, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    pub(crate) m: Vec<Array>,
    pub(crate) v: Vec<Array>,
    step: i32,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &[Array]) -> Result<AdamW> {
        let zeros = || -> Result<Vec<Array>> {
            params
                .iter()
                .map(|p| ops::zeros_dtype(p.shape(), p.dtype()))
                .collect()
        };
        Ok(AdamW {
            config,
            m: zeros()?,
            v: zeros()?,
            step: 0,
        })
    }

    /// Advance the step count and give its scalars.
    pub fn next_scalars(&mut self, lr: f32) -> StepScalars {
        self.step += 1;
        let c = self.config;
        [
            Array::from_f32(1.0 - lr * c.weight_decay),
            Array::from_f32(lr / (1.0 - c.beta1.powi(self.step))),
            Array::from_f32(1.0 - c.beta2.powi(self.step)),
        ]
    }

    /// One update; returns the new parameters (lazy: evaluate them with the state).
    pub fn update(&mut self, params: &[Array], grads: &[Array], lr: f32) -> Result<Vec<Array>> {
        let scalars = self.next_scalars(lr);
        let (p, m, v) = apply(&self.config, params, grads, &self.m, &self.v, &scalars)?;
        self.m = m;
        self.v = v;
        Ok(p)
    }

    /// Updates made so far (the `t` of the bias correction).
    pub fn step_count(&self) -> i32 {
        self.step
    }

    /// Continue from a saved state that had made `step` updates.
    pub fn set_step_count(&mut self, step: i32) {
        self.step = step;
    }

    /// The optimizer state, to evaluate together with the parameters.
    pub fn state(&self) -> impl Iterator<Item = &Array> {
        self.m.iter().chain(&self.v)
    }
}

/// The update as a pure function of parameters, gradients, moments and the step's
/// scalars: returns the new `(params, m, v)`.
pub fn apply(
    c: &AdamWConfig,
    params: &[Array],
    grads: &[Array],
    m: &[Array],
    v: &[Array],
    [decay, step_size, bias2]: &StepScalars,
) -> Result<(Vec<Array>, Vec<Array>, Vec<Array>)> {
    let n = params.len();
    let (mut new_p, mut new_m, mut new_v) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for i in 0..n {
        let g = &grads[i];
        let mi = ops::add(
            ops::multiply(&m[i], Array::from_f32(c.beta1))?,
            ops::multiply(g, Array::from_f32(1.0 - c.beta1))?,
        )?;
        let vi = ops::add(
            ops::multiply(&v[i], Array::from_f32(c.beta2))?,
            ops::multiply(ops::square(g)?, Array::from_f32(1.0 - c.beta2))?,
        )?;
        let denom = ops::add(ops::sqrt(ops::divide(&vi, bias2)?)?, Array::from_f32(c.eps))?;
        let step = ops::divide(ops::multiply(&mi, step_size)?, denom)?;
        new_p.push(ops::subtract(ops::multiply(&params[i], decay)?, step)?);
        new_m.push(mi);
        new_v.push(vi);
    }
    Ok((new_p, new_m, new_v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlx::io;

    #[test]
    fn two_steps_match_pytorch_adamw() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/golden/train_loss.safetensors"
        );
        let g = io::load_safetensors(path).unwrap();
        let cfg = AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(cfg, &[g["adamw_p0"].clone()]).unwrap();
        let p1 = opt
            .update(&[g["adamw_p0"].clone()], &[g["adamw_g1"].clone()], cfg.lr)
            .unwrap();
        let p2 = opt.update(&p1, &[g["adamw_g2"].clone()], cfg.lr).unwrap();
        let (got, want) = (
            p2[0].to_vec::<f32>().unwrap(),
            g["adamw_p2"].to_vec::<f32>().unwrap(),
        );
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "max abs diff {diff}");
    }
}
