//! The model's activations composed with GPU dropout against the fused CUDA
//! kernels that `Ctx` routes them to (the kernels live in `mlx`; the
//! activations they must match live here, so the comparison does too).

use super::layers::Activation;
use crate::mlx::kernels::tests::{assert_close, scalar, vals};
use crate::mlx::kernels::{gpu_act_dropout, gpu_add_dropout, gpu_dropout};
use crate::mlx::{ops, random, value_and_grad_argnums, Array, Device, Result};

/// The fused feed-forward and residual kernels against their compositions on
/// the GPU: `dropout(act(a) * g)` for every activation, gated or not, and
/// `h + dropout(x)`, with the same mask, values within f32 rounding and the
/// same gradients. Skipped, saying so, without a GPU.
#[test]
fn gpu_fused_dropouts_match_their_compositions() -> Result<()> {
    let Some(_cpu_again) = crate::mlx::gpu_test("gpu_fused_dropouts_match_their_compositions")?
    else {
        return Ok(());
    };
    Device::set_default(&Device::gpu())?;
    let shape = [3, 50, 97]; // 14,550 elements: several blocks and a ragged end
    let a = random::normal::<f32>(&shape, None, None, &random::key(1)?)?.multiply(scalar(2.0))?;
    let g = random::normal::<f32>(&shape, None, None, &random::key(2)?)?;
    let w = random::normal::<f32>(&shape, None, None, &random::key(3)?)?;
    let key = random::key(5)?;
    let rate = 0.25;
    for act in [
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
    ] {
        for gated in [false, true] {
            let what = format!("{act:?} gated={gated}");
            let fused = |p: &[Array]| -> Result<Vec<Array>> {
                let gate = gated.then_some(&p[1]);
                let y = gpu_act_dropout(&p[0], gate, act.code(), &key, rate)?;
                Ok(vec![ops::sum(y.multiply(&w)?, false)?, y])
            };
            let composed = |p: &[Array]| -> Result<Vec<Array>> {
                let mut h = act
                    .apply(&p[0])
                    .map_err(|e| crate::mlx::Exception::new(format!("{e:#}")))?;
                if gated {
                    h = h.multiply(&p[1])?;
                }
                let y = gpu_dropout(&h, &key, rate)?;
                Ok(vec![ops::sum(y.multiply(&w)?, false)?, y])
            };
            let args = [a.clone(), g.clone()];
            let (got, got_grads) = value_and_grad_argnums(fused, &args, &[0, 1])?;
            let (want, want_grads) = value_and_grad_argnums(composed, &args, &[0, 1])?;
            let (yg, yw) = (vals(&got[1]), vals(&want[1]));
            let masks_differ = yg
                .iter()
                .zip(&yw)
                .filter(|(x, y)| (**x == 0.0) != (**y == 0.0))
                .count();
            assert_eq!(masks_differ, 0, "{what}: masks differ");
            assert_close(&yg, &yw, &yw, 1e-5, 1e-6, &format!("{what} value"));
            for (i, name) in [(0, "da"), (1, "dg")] {
                if i == 1 && !gated {
                    continue;
                }
                let (gg, gw) = (vals(&got_grads[i]), vals(&want_grads[i]));
                assert_close(&gg, &gw, &gw, 1e-4, 1e-5, &format!("{what} {name}"));
            }
        }
    }
    let h = g.clone();
    let fused = |p: &[Array]| -> Result<Vec<Array>> {
        let y = gpu_add_dropout(&p[0], &p[1], &key, rate)?;
        Ok(vec![ops::sum(y.multiply(&w)?, false)?, y])
    };
    let composed = |p: &[Array]| -> Result<Vec<Array>> {
        let y = p[0].add(gpu_dropout(&p[1], &key, rate)?)?;
        Ok(vec![ops::sum(y.multiply(&w)?, false)?, y])
    };
    let args = [h, a.clone()];
    let (got, got_grads) = value_and_grad_argnums(fused, &args, &[0, 1])?;
    let (want, want_grads) = value_and_grad_argnums(composed, &args, &[0, 1])?;
    assert!(vals(&got[1]) == vals(&want[1]), "add-dropout values differ");
    assert!(
        vals(&got_grads[0]) == vals(&want_grads[0]),
        "add-dropout dh differs"
    );
    assert!(
        vals(&got_grads[1]) == vals(&want_grads[1]),
        "add-dropout dx differs"
    );
    Ok(())
}
