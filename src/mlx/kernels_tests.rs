//! The CPU kernels against MLX's own ops (the same math composed from
//! `erf`, `tanh`, `exp`, `softmax`), against finite differences, and under
//! every instruction set this CPU has, the portable scalar one included.

use std::sync::Mutex;

use super::*;
use crate::mlx::{ops, random, value_and_grad, Array};

/// Tests that switch the instruction set hold this, so each measures the one it set.
static ISA: Mutex<()> = Mutex::new(());

pub(crate) fn vals(a: &Array) -> Vec<f32> {
    a.to_vec::<f32>().expect("copy out")
}

/// Every instruction set this CPU can run, widest first.
fn isas() -> Vec<&'static str> {
    ["avx512", "avx2", "scalar"]
        .into_iter()
        .filter(|name| set_isa(name).is_ok())
        .collect()
}

/// Inputs that stress the kernels: a dense sweep of [-10, 10], the extremes,
/// denormals, signed zeros, and a length that leaves a partial vector.
fn sweep() -> Vec<f32> {
    let mut x: Vec<f32> = (0..4001).map(|i| -10.0 + i as f32 * 0.005).collect();
    x.extend([
        -80.0,
        80.0,
        -30.0,
        30.0,
        1e-30,
        -1e-30,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        0.0,
        -0.0,
        1e-7,
        -1e-7,
        3.0e38,
        -3.0e38,
    ]);
    x
}

/// `|got - want| <= max(rel |want|, abs)` element-wise; NaN must meet NaN.
pub(crate) fn assert_close(got: &[f32], want: &[f32], x: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for i in 0..got.len() {
        let (g, w) = (got[i], want[i]);
        if w.is_nan() || g.is_nan() {
            assert!(
                w.is_nan() && g.is_nan(),
                "{what}: x={} got {g}, MLX {w}",
                x[i]
            );
            continue;
        }
        if w.is_infinite() || g.is_infinite() {
            assert_eq!(g, w, "{what}: x={}", x[i]);
            continue;
        }
        let tol = (rel * w.abs()).max(abs);
        assert!(
            (g - w).abs() <= tol,
            "{what}: x={} got {g}, MLX {w} (diff {:e} > tol {:e})",
            x[i],
            (g - w).abs(),
            tol
        );
    }
}

pub(crate) fn scalar(v: f32) -> Array {
    Array::from_f32(v)
}

/// MLX's composition of the exact GELU (what the models ran before these kernels).
fn mlx_gelu(x: &Array) -> Result<Array> {
    let inner = ops::erf(x.multiply(scalar(std::f32::consts::FRAC_1_SQRT_2))?)?;
    x.multiply(scalar(0.5))?.multiply(inner.add(scalar(1.0))?)
}

fn mlx_gelu_tanh(x: &Array) -> Result<Array> {
    let cube = x.multiply(x)?.multiply(x)?;
    let inner = x
        .add(cube.multiply(scalar(0.044_715))?)?
        .multiply(scalar((2.0 / std::f32::consts::PI).sqrt()))?;
    x.multiply(scalar(0.5))?
        .multiply(ops::tanh(inner)?.add(scalar(1.0))?)
}

/// The gradient of `sum(f(x) * w)` with respect to x.
fn grad_of(f: fn(&Array) -> Result<Array>, x: &Array, w: &Array) -> Result<Vec<f32>> {
    let (_, grads) = value_and_grad(
        |p: &[Array]| Ok(vec![ops::sum(f(&p[0])?.multiply(w)?, false)?]),
        std::slice::from_ref(x),
    )?;
    Ok(vals(&grads[0]))
}

fn ours_gelu(x: &Array) -> Result<Array> {
    gelu(x, false)
}
fn ours_gelu_tanh(x: &Array) -> Result<Array> {
    gelu(x, true)
}

#[test]
fn gelu_matches_mlx_on_every_isa() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let xs = sweep();
    let x = Array::from_slice(&xs, &[xs.len() as i32])?;
    let want = vals(&mlx_gelu(&x)?);
    let want_tanh = vals(&mlx_gelu_tanh(&x)?);
    for isa in isas() {
        set_isa(isa)?;
        // 0.5 x (1 + erf) cancels for x << 0, where one ulp of erf near -1 is
        // 6e-8: both sides carry that rounding, scaled by |x|.
        let got = vals(&gelu(&x, false)?);
        for (i, &xi) in xs.iter().enumerate() {
            let tol = (1e-6 * want[i].abs()).max(1e-7 * xi.abs().max(1.0));
            if want[i].is_finite() {
                assert!(
                    (got[i] - want[i]).abs() <= tol,
                    "gelu [{isa}] x={xi}: {} vs MLX {}",
                    got[i],
                    want[i]
                );
            } else {
                assert!(got[i].is_nan() || got[i] == want[i], "gelu [{isa}] x={xi}");
            }
        }
        let got = vals(&gelu(&x, true)?);
        for (i, &xi) in xs.iter().enumerate() {
            if xi.abs() > 1e4 {
                // MLX's x³ overflows to ±inf (GELU's tanh saturates either way).
                continue;
            }
            let tol = (1e-6 * want_tanh[i].abs()).max(1e-7 * xi.abs().max(1.0));
            assert!(
                (got[i] - want_tanh[i]).abs() <= tol,
                "gelu_tanh [{isa}] x={xi}: {} vs MLX {}",
                got[i],
                want_tanh[i]
            );
        }
    }
    set_isa("auto")?;
    Ok(())
}

#[test]
fn gelu_propagates_nan_and_saturates_at_infinity() -> Result<()> {
    let x = Array::from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &[3])?;
    for tanh_form in [false, true] {
        let y = vals(&gelu(&x, tanh_form)?);
        assert!(y[0].is_nan(), "NaN in, NaN out");
        assert_eq!(y[1], f32::INFINITY);
        // -inf * 0 is NaN in IEEE arithmetic, as in MLX's composition.
        let mlx = vals(&mlx_gelu(&x)?);
        assert_eq!(y[2].is_nan(), mlx[2].is_nan());
    }
    Ok(())
}

#[test]
fn gelu_gradients_match_mlx_autodiff_and_finite_differences() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let xs: Vec<f32> = (0..203).map(|i| -6.0 + i as f32 * 0.06).collect();
    let n = xs.len() as i32;
    let x = Array::from_slice(&xs, &[n])?;
    let ws: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let w = Array::from_slice(&ws, &[n])?;
    for isa in isas() {
        set_isa(isa)?;
        for (ours, mlx, what) in [
            (
                ours_gelu as fn(&Array) -> Result<Array>,
                mlx_gelu as fn(&Array) -> Result<Array>,
                "gelu",
            ),
            (ours_gelu_tanh, mlx_gelu_tanh, "gelu_tanh"),
        ] {
            let got = grad_of(ours, &x, &w)?;
            let want = grad_of(mlx, &x, &w)?;
            assert_close(&got, &want, &xs, 1e-5, 1e-6, &format!("{what}' [{isa}]"));
            // Central differences in f64 of the kernel's own forward.
            let h = 1e-2f32;
            let plus: Vec<f32> = xs.iter().map(|v| v + h).collect();
            let minus: Vec<f32> = xs.iter().map(|v| v - h).collect();
            let fp = vals(&ours(&Array::from_slice(&plus, &[n])?)?);
            let fm = vals(&ours(&Array::from_slice(&minus, &[n])?)?);
            for i in 0..xs.len() {
                let fd = (fp[i] as f64 - fm[i] as f64) / (2.0 * h as f64) * ws[i] as f64;
                assert!(
                    (got[i] as f64 - fd).abs() <= 2e-3 * (1.0 + fd.abs()),
                    "{what}' [{isa}] at {}: {} vs finite difference {fd}",
                    xs[i],
                    got[i]
                );
            }
        }
    }
    set_isa("auto")?;
    Ok(())
}

#[test]
fn softmax_and_its_gradient_match_mlx() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let key = random::key(7)?;
    for len in [1, 7, 16, 33, 128] {
        let shape = [3, 5, len];
        let mut x = vals(&random::normal::<f32>(&shape, None, Some(4.0), &key)?);
        // Masked keys as the models add them, and an extreme value.
        for (i, v) in x.iter_mut().enumerate() {
            if len > 2 && i % len as usize == len as usize - 1 {
                *v = -1e9;
            }
        }
        x[0] = 80.0;
        let xa = Array::from_slice(&x, &shape)?;
        let g = random::normal::<f32>(&shape, None, None, &random::key(len as u64)?)?;
        let want = vals(&ops::softmax_axis(&xa, -1, true)?);
        let mlx_f = |a: &Array| ops::softmax_axis(a, -1, true);
        let (_, want_grad) = value_and_grad(
            |p: &[Array]| Ok(vec![ops::sum(mlx_f(&p[0])?.multiply(&g)?, false)?]),
            std::slice::from_ref(&xa),
        )?;
        let want_grad = vals(&want_grad[0]);
        for isa in isas() {
            set_isa(isa)?;
            let got = vals(&softmax_last(&xa)?);
            assert_close(
                &got,
                &want,
                &x,
                1e-6,
                1e-7,
                &format!("softmax len {len} [{isa}]"),
            );
            let (_, grad) = value_and_grad(
                |p: &[Array]| Ok(vec![ops::sum(softmax_last(&p[0])?.multiply(&g)?, false)?]),
                std::slice::from_ref(&xa),
            )?;
            assert_close(
                &vals(&grad[0]),
                &want_grad,
                &x,
                1e-5,
                1e-6,
                &format!("softmax' len {len} [{isa}]"),
            );
        }
    }
    set_isa("auto")?;
    Ok(())
}

#[test]
fn dropout_is_a_pure_function_of_key_and_index() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let n = 1 << 20;
    let x = Array::ones::<f32>(&[n])?;
    let key = random::key(42)?;
    let words = key.to_vec::<u32>()?;
    let seed = (u64::from(words[0]) << 32) | u64::from(words[1]);
    let rate = 0.1f32;
    let threshold = (f64::from(rate) * 4294967296.0) as u32;
    let mut reference: Option<Vec<f32>> = None;
    for isa in isas() {
        set_isa(isa)?;
        let y = vals(&dropout(&x, &key, rate)?);
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        let frac = kept as f64 / n as f64;
        assert!((frac - 0.9).abs() < 0.002, "[{isa}] kept {frac}");
        // Kept values are scaled by 1/(1 - rate); the mask is the documented hash.
        for (i, &v) in y.iter().enumerate().step_by(997) {
            let keep = dropout_hash(seed, i as u64) >= threshold;
            assert_eq!(
                v,
                if keep { 1.0 / (1.0 - rate) } else { 0.0 },
                "[{isa}] element {i}"
            );
        }
        // Every instruction set and thread split draws the same mask.
        match &reference {
            None => reference = Some(y),
            Some(r) => assert!(r == &y, "[{isa}] mask differs from the first ISA's"),
        }
    }
    set_isa("auto")?;
    // Another key, another mask; the same key, the same mask.
    let again = vals(&dropout(&x, &key, rate)?);
    assert!(Some(&again) == reference.as_ref());
    let other = vals(&dropout(&x, &random::key(43)?, rate)?);
    let same = other.iter().zip(&again).filter(|(a, b)| a == b).count() as f64 / n as f64;
    assert!(same < 0.85, "masks of two keys agree on {same} of elements");
    Ok(())
}

#[test]
fn dropout_gradient_reuses_the_mask() -> Result<()> {
    let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
    let x = Array::from_slice(&xs, &[10, 100])?;
    let w = Array::from_slice(
        &xs.iter().map(|v| v * 2.0 + 1.0).collect::<Vec<_>>(),
        &[10, 100],
    )?;
    let key = random::key(3)?;
    let rate = 0.25;
    let y = vals(&dropout(&x, &key, rate)?);
    let (_, grads) = value_and_grad(
        |p: &[Array]| {
            Ok(vec![ops::sum(
                dropout(&p[0], &key, rate)?.multiply(&w)?,
                false,
            )?])
        },
        std::slice::from_ref(&x),
    )?;
    let g = vals(&grads[0]);
    let wv = vals(&w);
    for i in 0..xs.len() {
        let kept = y[i] != 0.0 || xs[i] == 0.0;
        let want = if kept { wv[i] / (1.0 - rate) } else { 0.0 };
        assert!(
            (g[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "element {i}"
        );
    }
    Ok(())
}

#[test]
fn kernels_survive_compile_and_match_eager() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let xs: Vec<f32> = (0..640).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
    let x = Array::from_slice(&xs, &[10, 64])?;
    let key = random::key(9)?;
    let f = |p: &[Array]| -> Result<Vec<Array>> {
        let h = gelu(&p[0], false)?;
        let s = softmax_last(&h)?;
        Ok(vec![dropout(&s, &p[1], 0.1)?])
    };
    let eager = vals(&f(&[x.clone(), key.clone()])?[0]);
    let compiled = crate::mlx::compile(f, false)?;
    let once = vals(&compiled.call(&[x.clone(), key.clone()])?[0]);
    assert_eq!(once, eager);
    Ok(())
}

#[test]
fn bad_input_is_an_error_not_a_crash() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let bf16 = Array::ones::<f32>(&[4])?.as_dtype(crate::mlx::Dtype::Bfloat16)?;
    assert!(!applies(&bf16), "bf16 graphs use MLX's ops");
    let err = gelu(&bf16, false).expect_err("bf16 is refused");
    assert!(err.to_string().contains("float32"), "{err}");
    let x = Array::ones::<f32>(&[4])?;
    let err = dropout(&x, &x, 0.1).expect_err("a float array is no key");
    assert!(err.to_string().contains("key"), "{err}");
    let err = dropout(&x, &random::key(0)?, 1.0).expect_err("rate 1 is refused");
    assert!(err.to_string().contains("rate"), "{err}");
    let err = set_isa("sse9").expect_err("unknown ISA");
    assert!(err.to_string().contains("unknown CPU kernel set"), "{err}");
    assert_eq!(set_isa("scalar")?, "scalar");
    set_isa("auto")?;
    assert!(threads()? >= 1);
    Ok(())
}

/// Attention through MLX's ops: heads split out, matmul, softmax, merged.
fn mlx_attention(q: &Array, k: &Array, v: &Array, heads: i32, scale: f32) -> Result<Array> {
    let split = |x: &Array| -> Result<Array> {
        let s = x.shape();
        x.reshape(&[s[0], s[1], heads, -1])?
            .transpose_axes(&[0, 2, 1, 3])
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let scores = ops::matmul(&qh, kh.swap_axes(-1, -2)?)?.multiply(scalar(scale))?;
    let out = ops::matmul(ops::softmax_axis(&scores, -1, true)?, &vh)?;
    let s = out.shape();
    out.transpose_axes(&[0, 2, 1, 3])?
        .reshape(&[s[0], s[2], -1])
}

#[test]
fn per_head_products_match_mlx_attention_and_its_gradients() -> Result<()> {
    // Queries and keys of different lengths, and enough heads (24 pairs) for
    // the products to be spread over the pool.
    let (b, s, t, heads, d) = (4, 5, 7, 6, 4);
    let q = random::normal::<f32>(&[b, s, heads * d], None, None, &random::key(1)?)?;
    let k = random::normal::<f32>(&[b, t, heads * d], None, None, &random::key(2)?)?;
    let v = random::normal::<f32>(&[b, t, heads * d], None, None, &random::key(3)?)?;
    let g = random::normal::<f32>(&[b, s, heads * d], None, None, &random::key(4)?)?;
    let scale = 0.5;
    let ours = |p: &[Array]| -> Result<Array> {
        let scores = attention_scores(&p[0], &p[1], heads, scale)?;
        attention_values(&softmax_last(&scores)?, &p[2], heads)
    };
    let args = [q.clone(), k.clone(), v.clone()];
    let got = vals(&ours(&args)?);
    let want = vals(&mlx_attention(&q, &k, &v, heads, scale)?);
    assert_close(&got, &want, &want, 1e-5, 1e-6, "attention output");
    let (_, ours_grads) = value_and_grad(
        |p: &[Array]| Ok(vec![ops::sum(ours(p)?.multiply(&g)?, false)?]),
        &args,
    )?;
    let (_, mlx_grads) = value_and_grad(
        |p: &[Array]| {
            let out = mlx_attention(&p[0], &p[1], &p[2], heads, scale)?;
            Ok(vec![ops::sum(out.multiply(&g)?, false)?])
        },
        &args,
    )?;
    for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let (o, m) = (vals(&ours_grads[i]), vals(&mlx_grads[i]));
        assert_close(&o, &m, &m, 1e-4, 1e-5, name);
    }
    // Shapes that do not split into the heads are refused, not misread.
    let err = attention_scores(&q, &k, 5, 1.0).expect_err("24 features are not 5 heads");
    assert!(err.to_string().contains("heads"), "{err}");
    let short = random::normal::<f32>(&[b, t, heads * 2], None, None, &random::key(5)?)?;
    let err = attention_scores(&q, &short, heads, 1.0).expect_err("inner dims differ");
    assert!(err.to_string().contains("inner dimensions"), "{err}");
    Ok(())
}

/// The GPU dropout kernel against the CPU kernel: the same key drops the same
/// elements (f32 bit for bit, bf16 as the f32 result rounded), past the
/// kernel's grid-stride step (2^20 threads), with a tail that fills no vector,
/// on an unaligned view, under `compile`, and its gradient
/// is the mask on the cotangent. Without a GPU there is nothing to compare: the
/// test says so and passes. It switches MLX's default device, so it runs alone
/// in `scripts/gpu-check.sh` (`--test-threads 1`).
#[test]
fn gpu_dropout_draws_the_cpu_kernels_mask() -> Result<()> {
    use crate::mlx::{Device, Dtype};
    let Some(_cpu_again) = crate::mlx::gpu_test("gpu_dropout_draws_the_cpu_kernels_mask")? else {
        return Ok(());
    };
    let (rows, cols) = (7, 449_395); // 3.1 M elements: three grid-stride rounds
    let xs: Vec<f32> = (0..rows * cols)
        .map(|i| (i as f32 * 0.013).sin() * 4.0)
        .collect();
    let x = Array::from_slice(&xs, &[rows, cols])?;
    let w = x.multiply(scalar(0.5))?.add(scalar(1.0))?;
    let key = random::key(42)?;
    let rate = 0.1;
    let xb = x.as_dtype(Dtype::Bfloat16)?;
    // A view that starts one element in: contiguous but not 16-byte aligned.
    let n = rows * cols;
    let offset = ops::slice(x.reshape(&[n])?, &[1], &[n], &[1])?;

    Device::set_default(&Device::cpu())?;
    let want = vals(&dropout(&x, &key, rate)?);
    let want_offset = vals(&dropout(&offset, &key, rate)?);
    let want_bf16 = vals(
        &dropout(&xb.as_dtype(Dtype::Float32)?, &key, rate)?
            .as_dtype(Dtype::Bfloat16)?
            .as_dtype(Dtype::Float32)?,
    );
    let want_grad = vals(&dropout(&w, &key, rate)?);

    Device::set_default(&Device::gpu())?;
    assert!(gpu_applies(&x) && gpu_applies(&xb));
    let got = vals(&gpu_dropout(&x, &key, rate)?);
    let mismatches = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(mismatches, 0, "f32: GPU and CPU masks differ");
    let got_offset = vals(&gpu_dropout(&offset, &key, rate)?);
    assert!(
        got_offset == want_offset,
        "unaligned view: GPU and CPU masks differ"
    );
    let got_bf16 = vals(&gpu_dropout(&xb, &key, rate)?.as_dtype(Dtype::Float32)?);
    let mismatches = got_bf16
        .iter()
        .zip(&want_bf16)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(mismatches, 0, "bf16: GPU and CPU masks differ");

    let f = |p: &[Array]| -> Result<Vec<Array>> {
        Ok(vec![ops::sum(
            gpu_dropout(&p[0], &p[1], rate)?.multiply(&p[2])?,
            false,
        )?])
    };
    let (_, grads) =
        crate::mlx::value_and_grad_argnums(f, &[x.clone(), key.clone(), w.clone()], &[0])?;
    assert!(
        vals(&grads[0]) == want_grad,
        "the gradient is not the mask on the cotangent"
    );
    let compiled = crate::mlx::compile(
        move |p: &[Array]| Ok(vec![gpu_dropout(&p[0], &p[1], rate)?]),
        false,
    )?;
    assert!(vals(&compiled.call(&[x.clone(), key.clone()])?[0]) == want);
    Ok(())
}

#[test]
fn gpu_kernels_stay_off_the_cpu() -> Result<()> {
    let x = Array::ones::<f32>(&[4])?;
    if crate::mlx::Device::default_device()?.device_type == crate::mlx::DeviceType::Cpu {
        assert!(!gpu_applies(&x), "CPU graphs never take the GPU kernels");
    }
    let ints = Array::from_slice(&[1i32, 2], &[2])?;
    assert!(!gpu_applies(&ints), "integer arrays are not dropped out");
    let err = gpu_dropout(&x, &random::key(0)?, 1.5).expect_err("rate 1.5 is refused");
    assert!(err.to_string().contains("rate"), "{err}");
    let err = gpu_dropout(&x, &x, 0.1).expect_err("a float array is no key");
    assert!(err.to_string().contains("key"), "{err}");
    Ok(())
}

const RATE: f32 = 0.1;

fn fused(p: &[Array]) -> Result<Vec<Array>> {
    Ok(vec![gpu_softmax_dropout(&p[0], &p[1], RATE)?])
}

fn composed(p: &[Array]) -> Result<Vec<Array>> {
    let probs = ops::softmax_axis(&p[0], -1, true)?;
    Ok(vec![gpu_dropout(&probs, &p[1], RATE)?])
}

/// `sum(f(p) * g)` in f32: a scalar whose gradient is `f`'s VJP of `g`.
fn weighted(
    f: fn(&[Array]) -> Result<Vec<Array>>,
    g: Array,
) -> impl FnMut(&[Array]) -> Result<Vec<Array>> {
    move |p: &[Array]| {
        let y = f(p)?[0].as_dtype(crate::mlx::Dtype::Float32)?;
        Ok(vec![ops::sum(y.multiply(&g)?, false)?])
    }
}

/// The fused GPU softmax + dropout against MLX's softmax followed by the GPU
/// dropout kernel: the same elements dropped, the kept probabilities within
/// f32 rounding (bf16: one bf16 ulp), and the same gradient, for rows that fill
/// whole warps (128), rows that do not (37) and one-element rows, eagerly and
/// under `compile`. Skipped, saying so, without a GPU.
#[test]
fn gpu_softmax_dropout_matches_softmax_then_dropout() -> Result<()> {
    use crate::mlx::{Device, Dtype};
    let Some(_cpu_again) =
        crate::mlx::gpu_test("gpu_softmax_dropout_matches_softmax_then_dropout")?
    else {
        return Ok(());
    };
    Device::set_default(&Device::gpu())?;
    let key = random::key(7)?;
    for (shape, dtype, tol) in [
        ([3, 4, 128, 128], Dtype::Float32, 1e-6f32),
        ([2, 3, 5, 37], Dtype::Float32, 1e-6),
        ([4, 9, 2, 1], Dtype::Float32, 1e-6),
        ([3, 4, 128, 128], Dtype::Bfloat16, 8e-3),
    ] {
        let s = random::normal::<f32>(&shape, None, None, &random::key(1)?)?
            .multiply(scalar(3.0))?
            .as_dtype(dtype)?;
        let g = random::normal::<f32>(&shape, None, None, &random::key(2)?)?.as_dtype(dtype)?;
        let args = [s.clone(), key.clone()];
        let f32s = |a: &Array| vals(&a.as_dtype(Dtype::Float32).expect("cast"));
        let got = f32s(&fused(&args)?[0]);
        let want = f32s(&composed(&args)?[0]);
        let dropped_differently = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
            .count();
        assert_eq!(dropped_differently, 0, "{shape:?} {dtype:?}: masks differ");
        let one = vec![1.0f32; want.len()];
        assert_close(&got, &want, &one, tol, tol, "softmax-dropout");
        let compiled = crate::mlx::compile(fused, false)?;
        assert_close(
            &f32s(&compiled.call(&args)?[0]),
            &got,
            &one,
            0.0,
            0.0,
            "compiled",
        );
        let gf = g.as_dtype(Dtype::Float32)?;

        let (_, got_grad) =
            crate::mlx::value_and_grad_argnums(weighted(fused, gf.clone()), &args, &[0])?;
        let (_, want_grad) =
            crate::mlx::value_and_grad_argnums(weighted(composed, gf), &args, &[0])?;
        let (gg, wg) = (f32s(&got_grad[0]), f32s(&want_grad[0]));
        let scale: Vec<f32> = wg.iter().map(|_| 1.0).collect();
        assert_close(
            &gg,
            &wg,
            &scale,
            4.0 * tol,
            4.0 * tol,
            "softmax-dropout gradient",
        );
    }
    Ok(())
}

#[test]
fn gpu_softmax_dropout_refuses_what_it_cannot_do() -> Result<()> {
    let s = Array::ones::<f32>(&[2, 4])?;
    let err = gpu_softmax_dropout(&s, &random::key(0)?, 1.0).expect_err("rate 1 is refused");
    assert!(err.to_string().contains("rate"), "{err}");
    let err = gpu_softmax_dropout(&s, &s, 0.1).expect_err("a float array is no key");
    assert!(err.to_string().contains("key"), "{err}");
    let long = Array::ones::<f32>(&[1, GPU_SOFTMAX_MAX_ROW + 1])?;
    let err = gpu_softmax_dropout(&long, &random::key(0)?, 0.1).expect_err("row too long");
    assert!(err.to_string().contains("rows longer than"), "{err}");
    Ok(())
}

#[test]
fn gpu_fused_dropouts_refuse_mismatched_operands() -> Result<()> {
    let a = Array::ones::<f32>(&[2, 3])?;
    let other = Array::ones::<f32>(&[3, 2])?;
    let key = random::key(0)?;
    let err = gpu_act_dropout(&a, Some(&other), 1, &key, 0.1).expect_err("gate shape");
    assert!(err.to_string().contains("gate must match"), "{err}");
    let err = gpu_act_dropout(&a, None, 9, &key, 0.1).expect_err("activation code");
    assert!(err.to_string().contains("unknown activation"), "{err}");
    let err = gpu_add_dropout(&other, &a, &key, 0.1).expect_err("residual shape");
    assert!(err.to_string().contains("residual must match"), "{err}");
    let err = gpu_add_dropout(&a, &a, &key, 1.0).expect_err("rate 1");
    assert!(err.to_string().contains("rate"), "{err}");
    Ok(())
}

/// `(value, gradients)` of `sum(f(p) * g)` for every input in `p`.
fn weighted_grads(
    f: &dyn Fn(&[Array]) -> Result<Array>,
    p: &[Array],
    g: &Array,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let y = vals(&f(p)?);
    let (_, grads) = value_and_grad(
        |p: &[Array]| Ok(vec![ops::sum(f(p)?.multiply(g)?, false)?]),
        p,
    )?;
    Ok((y, grads.iter().map(vals).collect()))
}

#[test]
fn norms_and_their_gradients_match_mlx_on_every_isa() -> Result<()> {
    use crate::mlx::fast;
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let key = random::key(11)?;
    for len in [1, 7, 16, 33, 384] {
        let shape = [3, 5, len];
        // An offset of 3 and a spread of 2: the mean must be taken out before
        // squaring, as a one-pass E[x²] - E[x]² would lose digits to.
        let x = random::normal::<f32>(&shape, Some(3.0), Some(2.0), &key)?;
        let (kw, kb) = random::split2(&random::key(len as u64)?)?;
        let w = random::normal::<f32>(&[len], Some(1.0), Some(0.3), &kw)?;
        let b = random::normal::<f32>(&[len], None, Some(0.3), &kb)?;
        let g = random::normal::<f32>(&shape, None, None, &kb)?;
        let inputs = [x.clone(), w.clone(), b.clone()];
        let xs = vals(&x);
        let mlx_ln = |p: &[Array]| fast::layer_norm(&p[0], Some(&p[1]), Some(&p[2]), 1e-12);
        let ours_ln = |p: &[Array]| layer_norm(&p[0], &p[1], &p[2], 1e-12);
        let mlx_rms = |p: &[Array]| fast::rms_norm(&p[0], &p[1], 1e-6);
        let ours_rms = |p: &[Array]| rms_norm(&p[0], &p[1], 1e-6);
        let (want_ln, want_ln_grads) = weighted_grads(&mlx_ln, &inputs, &g)?;
        let (want_rms, want_rms_grads) = weighted_grads(&mlx_rms, &inputs[..2], &g)?;
        for isa in isas() {
            set_isa(isa)?;
            let (got, grads) = weighted_grads(&ours_ln, &inputs, &g)?;
            assert_close(
                &got,
                &want_ln,
                &xs,
                1e-5,
                1e-5,
                &format!("layer norm {len} [{isa}]"),
            );
            for (i, what) in ["x", "weight", "bias"].iter().enumerate() {
                // A row of one element normalises to 0 whatever x is: both
                // sides' dx is rounding noise around 0.
                let abs = if len == 1 { 1e-2 } else { 1e-4 };
                assert_close(
                    &grads[i],
                    &want_ln_grads[i],
                    &xs,
                    1e-4,
                    abs,
                    &format!("layer norm d{what} {len} [{isa}]"),
                );
            }
            let (got, grads) = weighted_grads(&ours_rms, &inputs[..2], &g)?;
            assert_close(
                &got,
                &want_rms,
                &xs,
                1e-5,
                1e-5,
                &format!("RMS norm {len} [{isa}]"),
            );
            for (i, what) in ["x", "weight"].iter().enumerate() {
                assert_close(
                    &grads[i],
                    &want_rms_grads[i],
                    &xs,
                    1e-4,
                    1e-5,
                    &format!("RMS norm d{what} {len} [{isa}]"),
                );
            }
        }
    }
    set_isa("auto")?;
    Ok(())
}

#[test]
fn softmax_with_a_broadcast_bias_matches_add_then_softmax() -> Result<()> {
    let _guard = ISA.lock().unwrap_or_else(|e| e.into_inner());
    let key = random::key(5)?;
    for len in [7, 128] {
        let shape = [2, 3, 4, len];
        let x = random::normal::<f32>(&shape, None, Some(3.0), &key)?;
        let xs = vals(&x);
        let g = random::normal::<f32>(&shape, None, None, &random::key(len as u64)?)?;
        // A padding mask per batch row (the last two keys of the second
        // sequence masked), a per-head bias, and a full one (T5's).
        let mask: Vec<f32> = (0..2 * len)
            .map(|i| if i >= 2 * len - 2 { -1e9 } else { 0.0 })
            .collect();
        let biases = [
            Array::from_slice(&mask, &[2, 1, 1, len])?,
            random::normal::<f32>(&[1, 3, 1, len], None, None, &random::key(1)?)?,
            random::normal::<f32>(&shape, None, None, &random::key(2)?)?,
        ];
        for bias in &biases {
            let inputs = [x.clone(), bias.clone()];
            let mlx_f = |p: &[Array]| ops::softmax_axis(p[0].add(&p[1])?, -1, true);
            let ours = |p: &[Array]| softmax_last_bias(&p[0], &p[1]);
            let (want, want_grads) = weighted_grads(&mlx_f, &inputs, &g)?;
            let what = format!("softmax + bias {:?}", bias.shape());
            for isa in isas() {
                set_isa(isa)?;
                let (got, grads) = weighted_grads(&ours, &inputs, &g)?;
                assert_close(&got, &want, &xs, 1e-6, 1e-7, &format!("{what} [{isa}]"));
                assert_close(
                    &grads[0],
                    &want_grads[0],
                    &xs,
                    1e-5,
                    1e-6,
                    &format!("{what} dx"),
                );
                assert_close(
                    &grads[1],
                    &want_grads[1],
                    &xs,
                    1e-5,
                    1e-5,
                    &format!("{what} db"),
                );
            }
        }
    }
    set_isa("auto")?;
    Ok(())
}

#[test]
fn norms_and_biased_softmax_refuse_mismatched_shapes() -> Result<()> {
    let x = Array::ones::<f32>(&[2, 3, 8])?;
    let err = layer_norm(
        &x,
        &Array::ones::<f32>(&[7])?,
        &Array::ones::<f32>(&[8])?,
        1e-5,
    )
    .expect_err("weight of the wrong length");
    assert!(err.to_string().contains("weight [7]"), "{err}");
    let err = rms_norm(&x, &Array::ones::<f32>(&[2, 8])?, 1e-5).expect_err("2-D weight");
    assert!(err.to_string().contains("last axis"), "{err}");
    let err = softmax_last_bias(&x, &Array::ones::<f32>(&[2, 2, 8])?)
        .expect_err("bias axis neither 1 nor equal");
    assert!(err.to_string().contains("does not broadcast"), "{err}");
    Ok(())
}
