//! Tests of the binding against hand-computed values: autodiff, error paths,
//! compile, safetensors, numerics of core ops, and the BLAS that MLX calls.

use super::fast::{self, ScaledDotProductAttentionMask};
use super::ops::{self, matmul, multiply, square, sum};
use super::*;

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

fn vals(a: &Array) -> Vec<f32> {
    a.to_vec::<f32>().expect("copy out")
}

#[test]
fn value_and_grad_is_exact() -> Result<()> {
    // f(x) = sum((x @ x)^2) at x = ones(4, 4): x @ x = 4, squared 16, sum 256;
    // df/dx = 2(x@x) @ xᵀ + xᵀ @ 2(x@x) = 32 + 32 = 64 everywhere.
    let x = Array::ones::<f32>(&[4, 4])?;
    let (values, grads) = value_and_grad(
        |p: &[Array]| Ok(vec![sum(square(matmul(&p[0], &p[0])?)?, false)?]),
        &[x],
    )?;
    assert_eq!(values[0].item::<f32>()?, 256.0);
    assert_eq!(grads.len(), 1);
    assert_eq!(grads[0].shape(), &[4, 4]);
    assert!(vals(&grads[0]).iter().all(|&g| g == 64.0));
    Ok(())
}

#[test]
fn value_and_grad_argnums_and_aux_outputs() -> Result<()> {
    // f(a, b) = sum(a * b); grad wrt b only = a. A second output rides along.
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
    let b = Array::from_slice(&[4.0f32, 5.0, 6.0], &[3])?;
    let (values, grads) = value_and_grad_argnums(
        |p: &[Array]| {
            let prod = multiply(&p[0], &p[1])?;
            Ok(vec![sum(&prod, false)?, prod])
        },
        &[a, b],
        &[1],
    )?;
    assert_eq!(values[0].item::<f32>()?, 32.0);
    assert_eq!(vals(&values[1]), vec![4.0, 10.0, 18.0]);
    assert_eq!(grads.len(), 1);
    assert_eq!(vals(&grads[0]), vec![1.0, 2.0, 3.0]);
    Ok(())
}

#[test]
fn closure_captures_borrowed_data() -> Result<()> {
    let target = Array::from_slice(&[1.0f32, -1.0], &[2])?;
    let mut calls = 0;
    let (values, grads) = value_and_grad(
        |p: &[Array]| {
            calls += 1;
            // sum((w - target)^2)
            Ok(vec![sum(square(p[0].subtract(&target)?)?, false)?])
        },
        &[Array::zeros::<f32>(&[2])?],
    )?;
    assert_eq!(calls, 1);
    assert_eq!(values[0].item::<f32>()?, 2.0);
    assert_eq!(vals(&grads[0]), vec![-2.0, 2.0]);
    Ok(())
}

#[test]
fn panicking_closure_returns_err() -> Result<()> {
    let x = Array::ones::<f32>(&[2])?;
    let r = value_and_grad(
        |_: &[Array]| -> Result<Vec<Array>> { panic!("boom in closure") },
        std::slice::from_ref(&x),
    );
    let err = r.expect_err("a panic must come back as Err");
    assert!(err.what().contains("boom in closure"), "{err}");
    // MLX is still usable afterwards.
    let (v, _) = value_and_grad(|p: &[Array]| Ok(vec![sum(&p[0], false)?]), &[x])?;
    assert_eq!(v[0].item::<f32>()?, 2.0);
    Ok(())
}

#[test]
fn closure_error_is_propagated() -> Result<()> {
    let x = Array::ones::<f32>(&[2])?;
    let err = value_and_grad(
        |_: &[Array]| -> Result<Vec<Array>> { Err(Exception::new("my own error")) },
        &[x],
    )
    .expect_err("closure error");
    assert!(err.what().contains("my own error"), "{err}");
    Ok(())
}

#[test]
fn mlx_error_inside_closure_is_propagated() -> Result<()> {
    let x = Array::ones::<f32>(&[2, 3])?;
    let err = value_and_grad(|p: &[Array]| Ok(vec![matmul(&p[0], &p[0])?]), &[x])
        .expect_err("shape mismatch inside the closure");
    assert!(err.what().contains("matmul"), "{err}");
    Ok(())
}

#[test]
fn mlx_error_has_mlx_message() -> Result<()> {
    let a = Array::ones::<f32>(&[2, 3])?;
    let b = Array::ones::<f32>(&[2, 3])?;
    let err = matmul(&a, &b).expect_err("(2,3) @ (2,3) must fail");
    // MLX: "[matmul] Last dimension of first input with shape (2,3) must match
    // second to last dimension of second input with shape (2,3)."
    assert!(err.what().starts_with("[matmul]"), "{err}");
    assert!(err.what().contains("(2,3)"), "{err}");

    let err = Array::from_slice(&[1.0f32, 2.0], &[3]).expect_err("length mismatch");
    assert!(err.what().contains("2 elements"), "{err}");
    let err = a.reshape(&[5]).expect_err("bad reshape");
    assert!(err.what().contains("reshape"), "{err}");
    Ok(())
}

#[test]
fn compile_matches_eager() -> Result<()> {
    fn f(p: &[Array]) -> Result<Vec<Array>> {
        // gelu-ish chain: x * sigmoid(1.702 x) + exp(-x^2)
        let x = &p[0];
        let s = x.multiply(Array::from_f32(1.702))?.sigmoid()?;
        let g = x.square()?.negative()?.exp()?;
        Ok(vec![x.multiply(&s)?.add(&g)?])
    }
    let x = Array::from_slice(&[-2.0f32, -0.5, 0.0, 0.5, 2.0, 3.0], &[2, 3])?;
    let eager = vals(&f(std::slice::from_ref(&x))?[0]);
    let compiled = compile(f, false)?;
    let once = vals(&compiled.call(std::slice::from_ref(&x))?[0]);
    let twice = vals(&compiled.call(std::slice::from_ref(&x))?[0]);
    assert!(close(&eager, &once, 1e-6), "{eager:?} vs {once:?}");
    assert_eq!(once, twice);

    // A second compiled closure must not share the first one's cache.
    let scale = Array::from_f32(3.0);
    let other = compile(move |p: &[Array]| Ok(vec![p[0].multiply(&scale)?]), false)?;
    let y = vals(&other.call(std::slice::from_ref(&x))?[0]);
    assert_eq!(y, vec![-6.0, -1.5, 0.0, 1.5, 6.0, 9.0]);

    // Grad through a compiled function.
    let (v, g) = value_and_grad(
        |p: &[Array]| Ok(vec![sum(&other.call(p)?[0], false)?]),
        &[Array::ones::<f32>(&[3])?],
    )?;
    assert_eq!(v[0].item::<f32>()?, 9.0);
    assert_eq!(vals(&g[0]), vec![3.0, 3.0, 3.0]);
    Ok(())
}

#[test]
fn compile_panic_returns_err() -> Result<()> {
    let c = compile(
        |_: &[Array]| -> Result<Vec<Array>> { panic!("compile-time boom") },
        false,
    )?;
    let err = c
        .call(&[Array::from_f32(1.0)])
        .expect_err("panic while tracing");
    assert!(err.what().contains("compile-time boom"), "{err}");
    Ok(())
}

#[test]
fn safetensors_roundtrip_all_dtypes() -> Result<()> {
    let f32a = Array::from_slice(&[1.5f32, -2.25, 3.0, 1e-3], &[2, 2])?;
    let i32a = Array::from_slice(&[1i32, -2, 3], &[3])?;
    let u32a = Array::from_slice(&[7u32, 8], &[2, 1])?;
    let boola = Array::from_slice(&[true, false, true], &[3])?;
    let f16a = f32a.as_dtype(Dtype::Float16)?;
    let bf16a = f32a.as_dtype(Dtype::Bfloat16)?;
    let scalar = Array::from_f32(42.0);
    let named = [
        ("f32", &f32a),
        ("i32", &i32a),
        ("u32", &u32a),
        ("bool", &boola),
        ("f16", &f16a),
        ("bf16", &bf16a),
        ("scalar", &scalar),
    ];

    let dir = std::env::temp_dir().join(format!("mlx-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Exception::new(e.to_string()))?;
    let path = dir.join("t.safetensors");
    let meta = [("format".to_string(), "mlx".to_string())].into();
    io::save_safetensors(named, Some(meta), &path)?;
    let back = io::load_safetensors(&path)?;
    std::fs::remove_dir_all(&dir).map_err(|e| Exception::new(e.to_string()))?;

    assert_eq!(back.len(), named.len());
    for (name, orig) in named {
        let got = &back[name];
        assert_eq!(got.dtype(), orig.dtype(), "{name}");
        assert_eq!(got.shape(), orig.shape(), "{name}");
        assert_eq!(got.to_bytes()?, orig.to_bytes()?, "{name} bytes");
    }
    // Values after the half-precision trip: exact for these numbers except
    // 1e-3, which rounds.
    assert!(close(&vals(&back["f16"]), &vals(&f32a), 1e-5));
    assert!(close(&vals(&back["bf16"]), &vals(&f32a), 1e-5));
    assert_eq!(back["bool"].to_vec::<bool>()?, vec![true, false, true]);
    assert_eq!(back["i32"].as_slice::<i32>()?, &[1, -2, 3]);
    assert_eq!(back["scalar"].item::<f32>()?, 42.0);

    // In-memory form too.
    let bytes = io::save_safetensors_bytes([("x", &bf16a)], None)?;
    let again = io::load_safetensors_bytes(&bytes)?;
    assert_eq!(again["x"].to_bytes()?, bf16a.to_bytes()?);
    Ok(())
}

#[test]
fn softmax_logsumexp_erf_values() -> Result<()> {
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0], &[2, 3])?;
    // softmax([1,2,3]) = e^k / (e + e^2 + e^3)
    let e = std::f32::consts::E;
    let z = e + e * e + e * e * e;
    let want = [
        e / z,
        e * e / z,
        e * e * e / z,
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
    ];
    let s = ops::softmax_axis(&x, -1, false)?;
    assert!(close(&vals(&s), &want, 1e-6), "{:?}", vals(&s));

    // logsumexp([1,2,3]) = 3 + ln(1 + e^-1 + e^-2) = 3.4076059644443806
    let l = ops::logsumexp_axis(&x, 1, false)?;
    assert!(
        close(&vals(&l), &[3.407_606, 3.0f32.ln() + 0.0], 1e-5),
        "{:?}",
        vals(&l)
    );
    let lk = ops::logsumexp_axes(&x, &[1], true)?;
    assert_eq!(lk.shape(), &[2, 1]);

    // erf(0) = 0, erf(0.5) = 0.5204998778, erf(1) = 0.8427007929, erf(-2) = -0.9953222650
    let v = Array::from_slice(&[0.0f32, 0.5, 1.0, -2.0], &[4])?;
    let got = vals(&ops::erf(&v)?);
    assert!(
        close(&got, &[0.0, 0.520_499_9, 0.842_700_8, -0.995_322_3], 1e-6),
        "{got:?}"
    );
    Ok(())
}

#[test]
fn core_ops() -> Result<()> {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.dtype(), Dtype::Float32);
    assert_eq!(a.dim(-1), Some(3));
    assert_eq!(a.size(), 6);
    assert_eq!(vals(&a.transpose()?), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(vals(&ops::sum_axis(&a, 0, false)?), vec![5.0, 7.0, 9.0]);
    assert_eq!(vals(&ops::mean_axis(&a, 1, true)?), vec![2.0, 5.0]);
    assert_eq!(vals(&ops::max(&a, false)?), vec![6.0]);
    assert_eq!(vals(&ops::min_axis(&a, 1, false)?), vec![1.0, 4.0]);
    assert_eq!(
        a.argmax_axis(1, false)?.to_vec::<i32>()?,
        vec![2, 2],
        "argmax"
    );
    let b = ops::slice(&a, &[0, 1], &[2, 3], &[1, 1])?;
    assert_eq!(vals(&b), vec![2.0, 3.0, 5.0, 6.0]);
    let idx = Array::from_slice(&[1i32, 0, 1], &[3])?;
    assert_eq!(
        vals(&a.take_axis(&idx, 0)?),
        vec![4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    let along = Array::from_slice(&[2i32, 0], &[2, 1])?;
    assert_eq!(vals(&a.take_along_axis(&along, 1)?), vec![3.0, 4.0]);
    let c = ops::concatenate_axis(&[&a, &a], 0)?;
    assert_eq!(c.shape(), &[4, 3]);
    let s = ops::stack_axis(&[&a, &a], 0)?;
    assert_eq!(s.shape(), &[2, 2, 3]);
    assert_eq!(a.expand_dims(0)?.shape(), &[1, 2, 3]);
    assert_eq!(a.expand_dims(0)?.squeeze_axes(&[0])?.shape(), &[2, 3]);
    assert_eq!(a.swap_axes(0, 1)?.shape(), &[3, 2]);
    let row = Array::from_slice(&[10.0f32, 20.0, 30.0], &[3])?;
    assert_eq!(
        vals(&a.add(&row)?),
        vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
    );
    assert_eq!(row.broadcast_to(&[2, 3])?.shape(), &[2, 3]);
    let mask = a.gt(Array::from_f32(3.0))?;
    assert_eq!(mask.dtype(), Dtype::Bool);
    let w = ops::r#where(&mask, &a, Array::from_f32(0.0))?;
    assert_eq!(vals(&w), vec![0.0, 0.0, 0.0, 4.0, 5.0, 6.0]);
    assert_eq!(vals(&a.power(Array::from_f32(2.0))?), vals(&a.square()?));
    assert_eq!(vals(&a.maximum(Array::from_f32(3.5))?)[0], 3.5);
    assert_eq!(vals(&a.minimum(Array::from_f32(3.5))?)[5], 3.5);
    assert!(close(
        &vals(&a.rsqrt()?.square()?.multiply(&a)?),
        &[1.0; 6],
        1e-6
    ));
    assert!(close(&vals(&a.log()?.exp()?), &vals(&a), 1e-5));
    assert!(close(&vals(&Array::from_f32(0.0).tanh()?), &[0.0], 0.0));
    assert_eq!(vals(&a.negative()?.abs()?), vals(&a));
    assert_eq!(
        vals(&ops::arange::<f32>(0.0, 3.0, 1.0)?),
        vec![0.0, 1.0, 2.0]
    );
    assert_eq!(
        vals(&ops::full::<f32>(&[2], Array::from_f32(7.0))?),
        vec![7.0, 7.0]
    );
    let err = a.item::<f32>().expect_err("not scalar");
    assert!(err.what().contains("one-element"), "{err}");
    assert_eq!(a.as_type::<i32>()?.to_vec::<i32>()?, vec![1, 2, 3, 4, 5, 6]);
    // as_slice refuses a non-contiguous view; to_vec copies it.
    assert!(a.transpose()?.as_slice::<f32>().is_err());
    assert_eq!(a.as_slice::<f32>()?, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(a.as_slice::<i32>().is_err());
    assert_eq!(format!("{:?}", a), "Array(shape=[2, 3], dtype=Float32)");
    assert!(format!("{}", a).contains("array"));
    Ok(())
}

#[test]
fn random_is_keyed() -> Result<()> {
    let k = random::key(7)?;
    let a = random::normal::<f32>(&[1000], None, None, &k)?;
    let b = random::normal::<f32>(&[1000], None, None, &k)?;
    assert_eq!(vals(&a), vals(&b));
    let mean = vals(&ops::mean(&a, false)?)[0];
    assert!(mean.abs() < 0.15, "mean {mean}");
    let (k1, k2) = random::split2(&k)?;
    // The halves are the split's rows, in order.
    let both = random::split(&k, 2)?.to_vec::<u32>()?;
    assert_eq!(k1.shape(), [2]);
    assert_eq!([k1.to_vec::<u32>()?, k2.to_vec::<u32>()?].concat(), both);
    assert_ne!(
        vals(&random::normal::<f32>(&[8], None, None, &k1)?),
        vals(&random::normal::<f32>(&[8], None, None, &k2)?)
    );
    let u = vals(&random::uniform::<_, f32>(2.0f32, 3.0, &[500], &k)?);
    assert!(u.iter().all(|&x| (2.0..3.0).contains(&x)));
    let m = random::bernoulli(&Array::from_f32(0.9), &[1000], &k)?;
    assert_eq!(m.dtype(), Dtype::Bool);
    let frac = vals(&ops::mean(m.as_type::<f32>()?, false)?)[0];
    assert!((0.85..0.95).contains(&frac), "{frac}");
    Ok(())
}

#[test]
fn fast_ops_match_reference() -> Result<()> {
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0], &[2, 4])?;
    let w = Array::from_slice(&[1.0f32, 0.5, 2.0, 1.0], &[4])?;
    let b = Array::from_slice(&[0.0f32, 1.0, 0.0, -1.0], &[4])?;
    let eps = 1e-5;

    // rms_norm = x * rsqrt(mean(x^2) + eps) * w
    let ms = ops::mean_axis(x.square()?, -1, true)?;
    let want = x
        .multiply(ms.add(Array::from_f32(eps))?.rsqrt()?)?
        .multiply(&w)?;
    let got = fast::rms_norm(&x, &w, eps)?;
    assert!(close(&vals(&got), &vals(&want), 1e-5));

    // layer_norm = (x - mean) * rsqrt(var + eps) * w + b
    let mu = ops::mean_axis(&x, -1, true)?;
    let xc = x.subtract(&mu)?;
    let var = ops::mean_axis(xc.square()?, -1, true)?;
    let want = xc
        .multiply(var.add(Array::from_f32(eps))?.rsqrt()?)?
        .multiply(&w)?
        .add(&b)?;
    let got = fast::layer_norm(&x, Some(&w), Some(&b), eps)?;
    assert!(close(&vals(&got), &vals(&want), 1e-5));
    let plain = fast::layer_norm(&x, None, None, eps)?;
    assert!(close(
        &vals(&ops::mean_axis(&plain, -1, false)?),
        &[0.0, 0.0],
        1e-6
    ));
    Ok(())
}

#[test]
fn attention_matches_reference() -> Result<()> {
    let k0 = random::key(1)?;
    let keys = random::split(&k0, 3)?;
    let key = |i: i32| keys.take_axis(Array::from_int(i), 0);
    let (bsz, heads, seq, dim) = (2, 2, 5, 8);
    let q = random::normal::<f32>(&[bsz, heads, seq, dim], None, None, &key(0)?)?;
    let k = random::normal::<f32>(&[bsz, heads, seq, dim], None, None, &key(1)?)?;
    let v = random::normal::<f32>(&[bsz, heads, seq, dim], None, None, &key(2)?)?;
    let scale = 1.0 / (dim as f32).sqrt();

    // Additive mask hiding the last two keys.
    let mut m = vec![0.0f32; seq as usize];
    m[3] = -1e9;
    m[4] = -1e9;
    let mask = Array::from_slice(&m, &[1, 1, 1, seq])?;

    let scores = matmul(&q, k.swap_axes(-1, -2)?)?
        .multiply(Array::from_f32(scale))?
        .add(&mask)?;
    let want = matmul(ops::softmax_axis(&scores, -1, false)?, &v)?;
    let got = fast::scaled_dot_product_attention(
        &q,
        &k,
        &v,
        scale,
        Some(ScaledDotProductAttentionMask::Array(&mask)),
    )?;
    assert_eq!(got.shape(), &[bsz, heads, seq, dim]);
    assert!(close(&vals(&got), &vals(&want), 1e-5));

    let unmasked = fast::scaled_dot_product_attention(&q, &k, &v, scale, None)?;
    assert_eq!(unmasked.shape(), &[bsz, heads, seq, dim]);
    let causal = fast::scaled_dot_product_attention(
        &q,
        &k,
        &v,
        scale,
        Some(ScaledDotProductAttentionMask::Causal),
    )?;
    assert_eq!(causal.shape(), &[bsz, heads, seq, dim]);
    Ok(())
}

#[test]
fn devices() -> Result<()> {
    // The CPU wheel has no GPU; the default device is the CPU there.
    if !gpu_is_available()? {
        assert_eq!(Device::default_device()?, Device::cpu());
        assert!(Device::set_default(&Device::gpu()).is_err());
    }
    Device::set_default(&Device::cpu())?;
    synchronize()?;
    Ok(())
}

#[test]
fn eval_many_and_stop_gradient() -> Result<()> {
    let x = Array::from_slice(&[3.0f32], &[1])?;
    let (_, g) = value_and_grad(
        |p: &[Array]| {
            let y = p[0].square()?;
            Ok(vec![sum(y.add(p[0].stop_gradient()?.square()?)?, false)?])
        },
        std::slice::from_ref(&x),
    )?;
    assert_eq!(vals(&g[0]), vec![6.0]);
    let a = x.exp()?;
    let b = x.sqrt()?;
    eval([&a, &b])?;
    assert!(close(&vals(&b), &[3.0f32.sqrt()], 1e-6));
    Ok(())
}

#[cfg(target_os = "linux")]
#[test]
fn mlx_calls_openblas() -> Result<()> {
    // Force BLAS to be loaded and used, then ask which library cblas_sgemm
    // resolves to in the global lookup (the one libmlx's calls bind to).
    let a = Array::ones::<f32>(&[64, 64])?;
    assert_eq!(
        vals(&sum(matmul(&a, &a)?, false)?),
        vec![64.0 * 64.0 * 64.0]
    );
    let lib = blas_sgemm_library()?;
    assert!(lib.contains("openblas"), "cblas_sgemm comes from {lib}");
    Ok(())
}

#[test]
fn compile_retraces_after_failed_trace() -> Result<()> {
    let mut first = true;
    let c = compile(
        move |p: &[Array]| -> Result<Vec<Array>> {
            if std::mem::take(&mut first) {
                return Err(Exception::new("first trace fails"));
            }
            Ok(vec![p[0].multiply(Array::from_f32(2.0))?])
        },
        false,
    )?;
    let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
    let err = c.call(std::slice::from_ref(&x)).expect_err("first call");
    assert!(err.what().contains("first trace fails"), "{err}");
    let y = c.call(std::slice::from_ref(&x))?;
    assert_eq!(vals(&y[0]), vec![2.0, 4.0]);
    Ok(())
}

/// The same tensors and metadata give the same bytes whatever order a
/// `HashMap` hands the metadata over in (each map here has its own random seed).
#[test]
fn safetensors_bytes_do_not_depend_on_metadata_order() -> Result<()> {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])?;
    let meta = || -> std::collections::HashMap<String, String> {
        (0..16)
            .map(|i| (format!("key{i}"), format!("value{i}")))
            .collect()
    };
    let first = super::io::save_safetensors_bytes([("a", &a)], Some(meta()))?;
    for _ in 0..8 {
        assert_eq!(
            first,
            super::io::save_safetensors_bytes([("a", &a)], Some(meta()))?
        );
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(&first)
        .map_err(|e| crate::mlx::Exception::new(e.to_string()))?;
    assert_eq!(header.metadata().as_ref().map(|m| m.len()), Some(16));
    Ok(())
}

#[test]
fn a_process_alone_is_a_group_of_one_whose_collectives_are_identities() -> Result<()> {
    let group = distributed::Group::single()?;
    assert_eq!((group.rank(), group.size()), (0, 1));
    let x = Array::from_slice(&[1.0f32, -2.0, 3.5], &[3])?;
    assert_eq!(vals(&group.all_sum(&x)?), vals(&x));
    assert_eq!(vals(&group.all_gather(&x)?), vals(&x));
    assert!(
        distributed::Backend::Ring.is_available()?,
        "ring is in every MLX wheel"
    );
    Ok(())
}

#[test]
fn joining_a_ring_without_its_environment_names_the_variables() {
    if std::env::var_os("MLX_HOSTFILE").is_some() {
        return; // launched as a rank: the environment is there on purpose
    }
    let err = distributed::Group::init(distributed::Backend::Ring)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("MLX_HOSTFILE") && err.contains("MLX_RANK"),
        "{err}"
    );
}

/// A symmetric matrix with known eigenpairs: diag(3, 1) rotated by 45°.
#[test]
fn eigh_gives_ascending_eigenvalues_and_their_vectors() -> Result<()> {
    let a = Array::from_slice(&[2.0f32, 1.0, 1.0, 2.0], &[2, 2])?;
    let (values, vectors) = super::linalg::eigh(&a)?;
    let w = vals(&values);
    assert!(
        (w[0] - 1.0).abs() < 1e-5 && (w[1] - 3.0).abs() < 1e-5,
        "{w:?}"
    );
    // A v = w v for each column v.
    let av = vals(&ops::matmul(&a, &vectors)?);
    let v = vals(&vectors);
    for col in 0..2 {
        for row in 0..2 {
            let i = row * 2 + col;
            assert!(
                (av[i] - w[col] * v[i]).abs() < 1e-5,
                "column {col}: {av:?} {v:?}"
            );
        }
        let norm = (v[col] * v[col] + v[2 + col] * v[2 + col]).sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    Ok(())
}

#[test]
fn graph_ops_counts_what_is_left_to_compute() {
    let a = Array::from_slice(&[1f32, 2.0], &[2]).unwrap();
    let b = Array::from_slice(&[3f32, 4.0], &[2]).unwrap();
    let x = a.add(&b).unwrap();
    let y = multiply(&x, &x).unwrap();
    let z = y.add(&a).unwrap();
    let ops = graph_ops([&z]).unwrap();
    assert_eq!(ops, [("Add".to_string(), 2), ("Multiply".to_string(), 1)]);
    // Once computed, nothing is left; an evaluated input is not counted again.
    eval([&y]).unwrap();
    assert_eq!(graph_ops([&z]).unwrap(), [("Add".to_string(), 1)]);
    eval([&z]).unwrap();
    assert!(graph_ops([&z]).unwrap().is_empty());
}
