//! `xtr-pipe bench kernels`: each CPU kernel against the MLX graph it replaces,
//! in elements per second, at the sizes of the reference train step (MiniLM's
//! document batch: 12 x 128 tokens x 1536 FFN features for GELU; 12 x 12
//! heads x 128 x 128 attention scores for softmax and dropout).
//!
//! MLX's side is compiled (`mx::compile`), as in the train step, so its
//! element-wise chains are fused into one JIT kernel: the figure is MLX's best.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{applies, dropout, gelu, softmax_last};
use crate::mlx::{compile, ops, random, Array, Compiled};

#[derive(Debug, Serialize)]
pub struct KernelRow {
    pub kernel: &'static str,
    pub shape: Vec<i32>,
    pub elements: usize,
    /// Elements per second, medians over the repetitions.
    pub ours: f64,
    pub mlx: f64,
    pub speedup: f64,
}

#[derive(Debug, Serialize)]
pub struct KernelReport {
    pub isa: String,
    pub threads: i32,
    pub reps: usize,
    pub rows: Vec<KernelRow>,
}

fn s(v: f32) -> Array {
    Array::from_f32(v)
}

type Graph = fn(&[Array]) -> crate::mlx::Result<Vec<Array>>;
/// (name, ours, MLX's, our arguments, MLX's arguments)
type Case = (&'static str, Graph, Graph, Vec<Array>, Vec<Array>);

fn mlx_gelu(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    let x = &a[0];
    let cdf = ops::erf(x.multiply(s(std::f32::consts::FRAC_1_SQRT_2))?)?
        .add(s(1.0))?
        .multiply(s(0.5))?;
    Ok(vec![x.multiply(cdf)?])
}
fn mlx_gelu_vjp(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    grad_through(mlx_gelu, a)
}
fn mlx_gelu_tanh(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    let x = &a[0];
    let inner = x
        .add(x.multiply(x)?.multiply(x)?.multiply(s(0.044_715))?)?
        .multiply(s(0.797_884_6))?;
    Ok(vec![x
        .multiply(s(0.5))?
        .multiply(ops::tanh(inner)?.add(s(1.0))?)?])
}
fn mlx_softmax(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    Ok(vec![ops::softmax_axis(&a[0], -1, true)?])
}
fn mlx_softmax_vjp(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    grad_through(mlx_softmax, a)
}
fn mlx_dropout(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    let keep = random::bernoulli(&s(0.9), a[0].shape(), &a[1])?;
    Ok(vec![ops::r#where(
        keep,
        a[0].multiply(s(1.0 / 0.9))?,
        s(0.0),
    )?])
}
fn ours_gelu(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    Ok(vec![gelu(&a[0], false)?])
}
fn ours_gelu_tanh(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    Ok(vec![gelu(&a[0], true)?])
}
fn ours_softmax(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    Ok(vec![softmax_last(&a[0])?])
}
fn ours_dropout(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    Ok(vec![dropout(&a[0], &a[1], 0.1)?])
}
/// The gradient of `sum(f(x) * g)` for `a = [x, g]`: VJPs are timed the way
/// training reaches them, through autodiff (the forward included where the
/// gradient needs it).
fn grad_through(f: Graph, a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    let g = a[1].clone();
    let (_, grads) = crate::mlx::value_and_grad(
        move |p: &[Array]| Ok(vec![ops::sum(f(p)?[0].multiply(&g)?, false)?]),
        &a[..1],
    )?;
    Ok(grads)
}
fn ours_gelu_vjp(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    grad_through(ours_gelu, a)
}
fn ours_softmax_vjp(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    grad_through(ours_softmax, a)
}

/// Attention over MiniLM's doc batch (12 heads of 32), forward and backward
/// with respect to q, k and v: our per-head products against MLX's matmuls
/// on split-out heads (with their copies). Both sides use our softmax, so the
/// row measures the products. Arguments: q, k, v, g, each `[B, L, 384]`.
fn attention_grads(a: &[Array], ours: bool) -> crate::mlx::Result<Vec<Array>> {
    let g = a[3].clone();
    let (_, grads) = crate::mlx::value_and_grad(
        move |p: &[Array]| {
            let scale = 1.0 / 32f32.sqrt();
            let out = if ours {
                let scores = super::attention_scores(&p[0], &p[1], 12, scale)?;
                super::attention_values(&softmax_last(&scores)?, &p[2], 12)?
            } else {
                let split = |x: &Array| -> crate::mlx::Result<Array> {
                    let s = x.shape();
                    x.reshape(&[s[0], s[1], 12, -1])?
                        .transpose_axes(&[0, 2, 1, 3])
                };
                let (q, k, v) = (split(&p[0])?, split(&p[1])?, split(&p[2])?);
                let scores = ops::matmul(&q, k.swap_axes(-1, -2)?)?.multiply(s(scale))?;
                let out = ops::matmul(softmax_last(&scores)?, &v)?;
                let sh = out.shape();
                out.transpose_axes(&[0, 2, 1, 3])?
                    .reshape(&[sh[0], sh[2], -1])?
            };
            Ok(vec![ops::sum(out.multiply(&g)?, false)?])
        },
        &a[..3],
    )?;
    Ok(grads)
}
fn ours_attention(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    attention_grads(a, true)
}
fn mlx_attention(a: &[Array]) -> crate::mlx::Result<Vec<Array>> {
    attention_grads(a, false)
}

/// Median seconds of `reps` evaluations of `f` (after two warm-up calls).
fn time(f: &Compiled, args: &[Array], reps: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps + 2 {
        let start = Instant::now();
        let out = f.call(args)?;
        crate::mlx::eval(&out)?;
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times every kernel against MLX; `reps` evaluations each.
pub fn run(reps: usize) -> Result<KernelReport> {
    let reps = reps.max(1);
    let ffn = [12 * 128, 1536];
    let scores = [12, 12, 128, 128];
    let key = random::key(1)?;
    let x_ffn = random::normal::<f32>(&ffn, None, None, &key)?;
    let g_ffn = random::normal::<f32>(&ffn, None, None, &random::key(2)?)?;
    let x_sc = random::normal::<f32>(&scores, None, Some(3.0), &key)?;
    let g_sc = random::normal::<f32>(&scores, None, None, &random::key(3)?)?;
    crate::mlx::eval(&[x_ffn.clone(), g_ffn.clone(), x_sc.clone(), g_sc.clone()])?;
    let qkv: Vec<Array> = (10..14)
        .map(|i| random::normal::<f32>(&[12, 128, 384], None, None, &random::key(i)?))
        .collect::<crate::mlx::Result<_>>()?;
    crate::mlx::eval(&qkv)?;
    if !applies(&x_ffn) {
        anyhow::bail!(
            "the CPU kernels are off (XTR_CPU_KERNELS) or the default device is not the CPU"
        );
    }
    let mut cases: Vec<Case> = vec![
        (
            "gelu",
            ours_gelu,
            mlx_gelu,
            vec![x_ffn.clone()],
            vec![x_ffn.clone()],
        ),
        (
            "gelu_vjp",
            ours_gelu_vjp,
            mlx_gelu_vjp,
            vec![x_ffn.clone(), g_ffn.clone()],
            vec![x_ffn.clone(), g_ffn.clone()],
        ),
        (
            "gelu_tanh",
            ours_gelu_tanh,
            mlx_gelu_tanh,
            vec![x_ffn.clone()],
            vec![x_ffn.clone()],
        ),
        (
            "softmax",
            ours_softmax,
            mlx_softmax,
            vec![x_sc.clone()],
            vec![x_sc.clone()],
        ),
        (
            "softmax_vjp (with forward)",
            ours_softmax_vjp,
            mlx_softmax_vjp,
            vec![x_sc.clone(), g_sc.clone()],
            vec![x_sc.clone(), g_sc.clone()],
        ),
        (
            "dropout",
            ours_dropout,
            mlx_dropout,
            vec![x_sc.clone(), key.clone()],
            vec![x_sc.clone(), key.clone()],
        ),
    ];
    cases.push((
        "attention GEMMs fwd+bwd",
        ours_attention,
        mlx_attention,
        qkv.clone(),
        qkv,
    ));
    let mut rows = Vec::new();
    for (name, ours, mlx, ours_args, mlx_args) in cases {
        let shape = ours_args[0].shape().to_vec();
        let elements = ours_args[0].size();
        let ours_c = compile(ours, false)?;
        let mlx_c = compile(mlx, false)?;
        let t_ours =
            time(&ours_c, &ours_args, reps).with_context(|| format!("timing our {name}"))?;
        let t_mlx =
            time(&mlx_c, &mlx_args, reps).with_context(|| format!("timing MLX's {name}"))?;
        rows.push(KernelRow {
            kernel: name,
            shape,
            elements,
            ours: elements as f64 / t_ours,
            mlx: elements as f64 / t_mlx,
            speedup: t_mlx / t_ours,
        });
    }
    Ok(KernelReport {
        isa: super::isa()?,
        threads: super::threads()?,
        reps,
        rows,
    })
}
