//! The ML commands: `embed` (per-token embeddings of texts) and the `bench`
//! family (train step, encoder throughput, CPU kernels). Thin: each parses its
//! flags and calls one function of `model` or `train`.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

use super::{print_json, select_device, ExitCode, Failure, JsonFlag};
use crate::stages::compute::{DeviceParam, DtypeParam};
use crate::train::bench::{BenchOptions, StepShape};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the LoRA train step (MaxSim InfoNCE + margin, AdamW) on synthetic ids.
    TrainStep(TrainStepArgs),
    /// Encoder inference throughput (tokens/s) on synthetic ids.
    Encode(EncodeBenchArgs),
    /// Our CPU kernels (GELU, softmax, dropout and their gradients) against the
    /// MLX graphs they replace, in elements/s at the train step's sizes.
    Kernels(KernelsBenchArgs),
}

#[derive(Args)]
pub struct KernelsBenchArgs {
    /// Timed evaluations per kernel (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Instruction set: auto, avx512, avx2 or scalar (the portable fallback).
    #[arg(long, default_value = "auto")]
    isa: String,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
pub struct EncodeBenchArgs {
    /// A model directory, or `t5-base-random`.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 32)]
    batch: i32,
    /// Tokens per text.
    #[arg(long, default_value_t = 128)]
    len: i32,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// An HF-layout model directory (config.json, model.safetensors, tokenizer.json),
    /// or a `merge` artifact.
    #[arg(long)]
    model: PathBuf,
    /// Truncate each text to this many tokens (special tokens included).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    /// The texts to embed.
    #[arg(required = true)]
    texts: Vec<String>,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
pub struct TrainStepArgs {
    /// A model directory, or `t5-base-random` (a random T5 v1.1-base encoder + 128-dim head).
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = StepShape::default().batch)]
    batch: i32,
    /// Query length in tokens.
    #[arg(long, default_value_t = StepShape::default().qlen)]
    qlen: i32,
    /// Document length in tokens.
    #[arg(long, default_value_t = StepShape::default().dlen)]
    dlen: i32,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = StepShape::default().steps)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = StepShape::default().warmup)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    /// Compute dtype: f32, or bf16 (frozen weights bf16; LoRA, optimizer state and loss f32).
    #[arg(long, value_enum, default_value_t = DtypeParam::F32)]
    dtype: DtypeParam,
    /// Run the step eagerly, op by op, instead of as one compiled graph (gives the phase split).
    #[arg(long)]
    eager: bool,
    /// Dropout in the encoder (its configured rate) [default: on for t5-base-random, off otherwise].
    #[arg(long)]
    dropout: Option<bool>,
    #[command(flatten)]
    json: JsonFlag,
}

/// Route a bench command to its function.
pub fn bench(command: BenchCommand) -> Result<ExitCode, Failure> {
    match command {
        BenchCommand::TrainStep(args) => cmd_bench_train_step(args),
        BenchCommand::Encode(args) => cmd_bench_encode(args),
        BenchCommand::Kernels(args) => cmd_bench_kernels(args),
    }
}

pub fn cmd_embed(args: EmbedArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let out = crate::model::embed(&super::model_dir(&args.model)?, &texts, args.max_len)?;
    if args.json.json {
        let items = out
            .iter()
            .zip(&texts)
            .map(|((tokens, vecs), text)| -> Result<serde_json::Value> {
                let dim = vecs.shape().get(1).copied().unwrap_or(0) as usize;
                let flat = vecs.to_vec::<f32>()?;
                let rows: Vec<&[f32]> = if dim == 0 { Vec::new() } else { flat.chunks(dim).collect() };
                Ok(json!({"text": text, "tokens": tokens, "shape": vecs.shape(), "embeddings": rows}))
            })
            .collect::<Result<Vec<_>>>()?;
        print_json(&json!({"schema": 1, "model": args.model, "texts": items}))?;
    } else {
        for ((tokens, vecs), text) in out.iter().zip(&texts) {
            println!(
                "{text:?}: {} tokens x {} dims",
                tokens.len(),
                vecs.shape().get(1).unwrap_or(&0)
            );
            let first = vecs.to_vec::<f32>()?;
            let dim = vecs.shape().get(1).copied().unwrap_or(0) as usize;
            for (i, token) in tokens.iter().enumerate() {
                let head: Vec<String> = first[i * dim..(i * dim + 4.min(dim))]
                    .iter()
                    .map(|v| format!("{v:+.4}"))
                    .collect();
                println!("  {token:<16} [{} ...]", head.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_bench_train_step(args: TrainStepArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    let shape = StepShape {
        batch: args.batch,
        qlen: args.qlen,
        dlen: args.dlen,
        steps: args.steps,
        warmup: args.warmup,
        dropout: args.dropout,
        compile: !args.eager,
    };
    let opts = BenchOptions::new(args.model, &shape, args.dtype.dtype());
    if !args.json.json {
        eprintln!(
            "timing {} train steps of {} (batch {}, q {} / d {} tokens) ...",
            opts.steps, opts.model, opts.batch, opts.qlen, opts.dlen
        );
    }
    let report = crate::train::bench::run(&opts)?;
    if args.json.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {:.2} samples/s ({:.3} s/step, median of {}), on {} {}, loss {:.4}",
            report.model,
            report.samples_per_s,
            report.step_seconds,
            report.steps,
            report.device,
            report.dtype,
            report.final_loss
        );
        println!(
            "  MFU {:.2}%: {:.3} GFLOP/step at {:.2} GFLOP/s, of a {:.2} GFLOP/s GEMM peak measured here",
            100.0 * report.mfu,
            report.step_flops / 1e9,
            report.step_flops / report.step_seconds / 1e9,
            report.gemm_peak_flops / 1e9
        );
        if report.compiled {
            println!("  compiled: the step is one graph; --eager gives a per-phase split");
        } else {
            println!("  per step (mean), an evaluation barrier after each phase:");
            for line in crate::train::bench::phase_table(&report.phases) {
                println!("{line}");
            }
        }
        println!("  {} trainable params", report.trainable_params);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_bench_kernels(args: KernelsBenchArgs) -> Result<ExitCode, Failure> {
    crate::mlx::kernels::set_isa(&args.isa)?;
    let r = crate::mlx::kernels::bench::run(args.reps)?;
    if args.json.json {
        print_json(&r)?;
    } else {
        println!(
            "CPU kernels ({}, {} threads) vs MLX (compiled), elements/s, median of {}:",
            r.isa, r.threads, r.reps
        );
        println!(
            "  {:<28} {:>18} {:>10} {:>10} {:>8}",
            "kernel", "shape", "ours M/s", "MLX M/s", "speedup"
        );
        for row in &r.rows {
            println!(
                "  {:<28} {:>18} {:>10.0} {:>10.0} {:>7.1}x",
                row.kernel,
                format!("{:?}", row.shape),
                row.ours / 1e6,
                row.mlx / 1e6,
                row.speedup
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_bench_encode(args: EncodeBenchArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    let r = crate::model::bench::encode_throughput(
        &args.model,
        args.batch,
        args.len,
        args.steps,
        args.warmup,
    )?;
    if args.json.json {
        print_json(&r)?;
    } else {
        println!(
            "{}: {:.0} tokens/s ({:.3} s per batch of {} x {} tokens, median of {}) on {}",
            r.model, r.tokens_per_s, r.step_seconds, r.batch, r.len, r.steps, r.device
        );
    }
    Ok(ExitCode::SUCCESS)
}
