//! Rendering a report: markdown tables and sections, and SVG plots (plotters).
//! Knows nothing of how the numbers were made; the `report` stage kind gathers
//! them from artifacts and hands them here.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// A markdown document built section by section.
#[derive(Debug, Default)]
pub struct Markdown {
    text: String,
}

impl Markdown {
    pub fn title(title: &str) -> Markdown {
        Markdown {
            text: format!("# {title}\n"),
        }
    }

    pub fn section(&mut self, heading: &str) -> &mut Self {
        let _ = write!(self.text, "\n## {heading}\n\n");
        self
    }

    pub fn paragraph(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text.trim_end());
        self.text.push_str("\n\n");
        self
    }

    /// A table; every row has as many cells as `headers` (missing ones are blank).
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) -> &mut Self {
        self.text.push_str(&table(headers, rows));
        self.text.push('\n');
        self
    }

    pub fn code(&mut self, lang: &str, body: &str) -> &mut Self {
        let _ = write!(self.text, "```{lang}\n{}\n```\n\n", body.trim_end());
        self
    }

    pub fn finish(self) -> String {
        let mut text = self.text.trim_end().to_string();
        text.push('\n');
        text
    }
}

/// A markdown table; `|` in a cell is escaped.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!("| {} |\n", headers.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
    for row in rows {
        let cells: Vec<String> = (0..headers.len())
            .map(|i| row.get(i).map(|c| cell(c)).unwrap_or_default())
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// A number for a table: fixed decimals, `—` when absent or not finite.
pub fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".to_string(),
    }
}

/// A line plot of `points` (x, y) as an SVG file: the loss curve.
pub fn line_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
) -> Result<()> {
    if points.is_empty() {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        chart.draw_series(LineSeries::new(points.iter().copied(), &BLUE))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// A range that holds every value, widened when they are all equal.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_escape_pipes_and_fill_missing_cells() {
        let t = table(&["a", "b"], &[vec!["x|y".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| x\\|y |  |\n");
    }

    #[test]
    fn numbers_have_fixed_decimals_and_a_dash_for_none() {
        assert_eq!(num(Some(0.9333), 2), "0.93");
        assert_eq!(num(None, 2), "—");
        assert_eq!(num(Some(f64::NAN), 2), "—");
    }

    #[test]
    fn a_loss_curve_is_an_svg_with_its_title() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        line_svg(
            &path,
            "training loss",
            "step",
            "loss",
            &[(1.0, 0.7), (2.0, 0.5), (3.0, 0.2)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("training loss"));
        // Deterministic: the same points draw the same bytes.
        let again = dir.path().join("again.svg");
        line_svg(
            &again,
            "training loss",
            "step",
            "loss",
            &[(1.0, 0.7), (2.0, 0.5), (3.0, 0.2)],
        )
        .unwrap();
        assert_eq!(svg, std::fs::read_to_string(&again).unwrap());
    }
}
