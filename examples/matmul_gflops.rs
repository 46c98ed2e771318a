//! Measures f32 matmul throughput through MLX (which BLAS MLX ends up calling
//! shows here: OpenBLAS reaches ~100-200 GFLOP/s on 2 Zen 4 cores, the wheel's
//! reference BLAS ~6).
//!
//! `cargo run --release --example matmul_gflops [N] [REPEATS]`

use std::time::Instant;

use xtr_pipe::mlx::{blas_sgemm_library, eval, ops, random, Array, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: i32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let repeats: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);

    let (ka, kb) = random::split2(&random::key(0)?)?;
    let a = random::normal::<f32>(&[n, n], None, None, &ka)?;
    let b = random::normal::<f32>(&[n, n], None, None, &kb)?;
    eval([&a, &b])?;

    // Warm up (thread pools, allocator).
    ops::matmul(&a, &b)?.eval()?;

    let start = Instant::now();
    let outs: Vec<Array> = (0..repeats)
        .map(|_| ops::matmul(&a, &b))
        .collect::<Result<_>>()?;
    eval(&outs)?;
    let secs = start.elapsed().as_secs_f64();

    let flops = 2.0 * f64::from(n).powi(3) * f64::from(repeats);
    println!("cblas_sgemm from: {}", blas_sgemm_library()?);
    println!(
        "{n}x{n}x{n} f32 matmul, {repeats} runs: {:.1} ms each, {:.1} GFLOP/s",
        secs * 1e3 / f64::from(repeats),
        flops / secs / 1e9
    );
    Ok(())
}
