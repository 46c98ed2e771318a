//! `pairs.parquet`: one row per pair, written with polars (zstd, one row group
//! per 64k rows), columns in a fixed order.

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame, ParquetCompression, ParquetWriter};

use super::Pair;

/// The column names, in file order.
pub const COLUMNS: [&str; 10] = [
    "lang",
    "root",
    "path",
    "symbol",
    "item",
    "start_line",
    "end_line",
    "query",
    "code",
    "split",
];

pub fn write_parquet(pairs: &[Pair], path: &Path) -> Result<()> {
    let strings = |f: fn(&Pair) -> &str| -> Vec<&str> { pairs.iter().map(f).collect() };
    let columns = vec![
        Column::new(COLUMNS[0].into(), strings(|p| p.lang.name())),
        Column::new(COLUMNS[1].into(), strings(|p| &p.root)),
        Column::new(COLUMNS[2].into(), strings(|p| &p.path)),
        Column::new(COLUMNS[3].into(), strings(|p| &p.symbol)),
        Column::new(COLUMNS[4].into(), strings(|p| &p.item)),
        Column::new(
            COLUMNS[5].into(),
            pairs.iter().map(|p| p.start_line).collect::<Vec<u32>>(),
        ),
        Column::new(
            COLUMNS[6].into(),
            pairs.iter().map(|p| p.end_line).collect::<Vec<u32>>(),
        ),
        Column::new(COLUMNS[7].into(), strings(|p| &p.query)),
        Column::new(COLUMNS[8].into(), strings(|p| &p.code)),
        Column::new(COLUMNS[9].into(), strings(|p| p.split)),
    ];
    let mut df = DataFrame::new(pairs.len(), columns).context("building the pairs table")?;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(None))
        .with_row_group_size(Some(65_536))
        .finish(&mut df)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
