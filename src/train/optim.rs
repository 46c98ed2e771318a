//! AdamW with decoupled weight decay, PyTorch's semantics (`torch.optim.AdamW`):
//! `p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
//! p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`. State stays in f32.

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

/// First and second moments per parameter, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    m: Vec<Array>,
    v: Vec<Array>,
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

    /// One update; returns the new parameters (lazy: evaluate them with the state).
    pub fn update(&mut self, params: &[Array], grads: &[Array], lr: f32) -> Result<Vec<Array>> {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step);
        let bias2 = 1.0 - c.beta2.powi(self.step);
        let mut out = Vec::with_capacity(params.len());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let m = ops::add(
                ops::multiply(&self.m[i], Array::from_f32(c.beta1))?,
                ops::multiply(g, Array::from_f32(1.0 - c.beta1))?,
            )?;
            let v = ops::add(
                ops::multiply(&self.v[i], Array::from_f32(c.beta2))?,
                ops::multiply(ops::square(g)?, Array::from_f32(1.0 - c.beta2))?,
            )?;
            let decayed = ops::multiply(p, Array::from_f32(1.0 - lr * c.weight_decay))?;
            let denom = ops::add(
                ops::sqrt(ops::divide(&v, Array::from_f32(bias2))?)?,
                Array::from_f32(c.eps),
            )?;
            let step = ops::divide(ops::multiply(&m, Array::from_f32(lr / bias1))?, denom)?;
            out.push(ops::subtract(decayed, step)?);
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(out)
    }

    /// The optimizer state, to evaluate together with the parameters.
    pub fn state(&self) -> impl Iterator<Item = &Array> {
        self.m.iter().chain(&self.v)
    }
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
