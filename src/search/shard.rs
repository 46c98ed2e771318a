//! The embedding pass of an index build split across processes: which units
//! each of `ranks` processes embeds ([`share`]), the file in which it hands its
//! token embeddings over ([`Shard`], written atomically), and the [`gather`]
//! that puts every shard's documents back in unit order for
//! [`super::Index::build_embedded`].
//!
//! Rank `r` of `n` embeds the units `i` with `i % n == r` (round robin), not a
//! contiguous run balanced by token counts: balancing by tokens needs every
//! unit tokenized before the split, by whoever splits (a process that has not
//! loaded the model), while neighbouring units come from the same file and are
//! alike in length, so dealing them out one at a time already gives each rank
//! a near-equal share of tokens. Nothing about the result depends on the
//! split: [`gather`] restores unit order.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::index::Embedded;

/// The units rank `rank` of `ranks` embeds, in increasing order.
pub fn share(units: usize, rank: usize, ranks: usize) -> Vec<usize> {
    (rank..units).step_by(ranks.max(1)).collect()
}

/// One rank's part of an embedding pass: document `d` of `embedded` is unit
/// `units[d]`, embedded by `model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
    /// Every unit of the build (not only this shard's), to catch a stale shard.
    pub total_units: usize,
    pub model: String,
    pub units: Vec<usize>,
    pub embedded: Embedded,
}

const MAGIC: &[u8; 8] = b"XTRSHRD1";

impl Shard {
    /// Writes the shard to `path` through a sibling temporary file and one
    /// rename, so a reader sees a whole shard or none.
    pub fn write(&self, path: &Path) -> Result<()> {
        ensure!(
            self.units.len() == self.embedded.docs(),
            "{} units for {} embedded documents",
            self.units.len(),
            self.embedded.docs()
        );
        let mut bytes = Vec::with_capacity(64 + self.embedded.vectors.len() * 4);
        bytes.extend_from_slice(MAGIC);
        for n in [
            self.rank,
            self.ranks,
            self.total_units,
            self.embedded.dim,
            self.units.len(),
            self.model.len(),
        ] {
            bytes.extend_from_slice(&(n as u64).to_le_bytes());
        }
        bytes.extend_from_slice(self.model.as_bytes());
        for (d, &unit) in self.units.iter().enumerate() {
            let rows = self.embedded.offsets[d + 1] - self.embedded.offsets[d];
            bytes.extend_from_slice(&(unit as u64).to_le_bytes());
            bytes.extend_from_slice(&(rows as u64).to_le_bytes());
        }
        for v in &self.embedded.vectors {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        crate::atomic::write(path, |out| out.write_all(&bytes))
    }

    /// Reads a shard [`Shard::write`] wrote.
    pub fn read(path: &Path) -> Result<Shard> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Shard::decode(&bytes).with_context(|| format!("{} is not a whole shard", path.display()))
    }

    fn decode(bytes: &[u8]) -> Result<Shard> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let end = at.checked_add(n).filter(|&e| e <= bytes.len());
            let end = end.context("it ends early")?;
            let s = &bytes[at..end];
            at = end;
            Ok(s)
        };
        ensure!(take(8)? == MAGIC, "no shard header");
        let mut int = || -> Result<usize> {
            let b = take(8)?;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        };
        let (rank, ranks, total_units, dim, docs, name_len) =
            (int()?, int()?, int()?, int()?, int()?, int()?);
        ensure!(dim > 0 && docs <= total_units, "a bad header");
        let model = String::from_utf8(take(name_len)?.to_vec()).context("the model name")?;
        let mut units = Vec::with_capacity(docs);
        let mut offsets = vec![0usize];
        for _ in 0..docs {
            let b = take(16)?;
            units.push(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize);
            let rows = u64::from_le_bytes(b[8..].try_into().expect("8 bytes")) as usize;
            offsets.push(offsets[offsets.len() - 1] + rows);
        }
        let floats = offsets[docs].checked_mul(dim).context("too many rows")?;
        let data = take(floats.checked_mul(4).context("too many rows")?)?;
        ensure!(at == bytes.len(), "trailing bytes");
        let vectors = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Shard {
            rank,
            ranks,
            total_units,
            model,
            units,
            embedded: Embedded {
                dim,
                offsets,
                vectors,
            },
        })
    }
}

/// Every shard's documents in unit order (`0..units`): each unit must be in
/// exactly one shard, and the shards must agree on the model and dimension.
/// Returns the gathered embeddings and the model's name.
pub fn gather(shards: &[Shard], units: usize) -> Result<(Embedded, String)> {
    let first = shards.first().context("no shards to gather")?;
    let mut at: Vec<Option<(usize, usize)>> = vec![None; units];
    for (s, shard) in shards.iter().enumerate() {
        if shard.total_units != units || shard.ranks != shards.len() {
            bail!(
                "rank {}'s shard is of another job ({} units on {} ranks, not {units} on {})",
                shard.rank,
                shard.total_units,
                shard.ranks,
                shards.len()
            );
        }
        if shard.model != first.model || shard.embedded.dim != first.embedded.dim {
            bail!(
                "rank {} embedded with {} ({} dims), rank {} with {} ({} dims)",
                shard.rank,
                shard.model,
                shard.embedded.dim,
                first.rank,
                first.model,
                first.embedded.dim
            );
        }
        for (d, &unit) in shard.units.iter().enumerate() {
            let slot = at
                .get_mut(unit)
                .with_context(|| format!("rank {} embedded unit {unit} of {units}", shard.rank))?;
            if slot.is_some() {
                bail!("unit {unit} was embedded twice (rank {})", shard.rank);
            }
            *slot = Some((s, d));
        }
    }
    let mut out = Embedded::empty(first.embedded.dim);
    for (unit, slot) in at.iter().enumerate() {
        let (s, d) = slot.with_context(|| format!("no rank embedded unit {unit}"))?;
        out.push(shards[s].embedded.doc(d));
    }
    Ok((out, first.model.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit `u` as a document of `u % 3 + 1` rows of 2 dims, each value naming it.
    fn doc(u: usize) -> Vec<f32> {
        (0..(u % 3 + 1) * 2)
            .map(|k| u as f32 + k as f32 / 10.0)
            .collect()
    }

    fn shard_of(rank: usize, ranks: usize, units: usize) -> Shard {
        let mine = share(units, rank, ranks);
        let mut embedded = Embedded::empty(2);
        for &u in &mine {
            embedded.push(&doc(u));
        }
        Shard {
            rank,
            ranks,
            total_units: units,
            model: "m".to_string(),
            units: mine,
            embedded,
        }
    }

    #[test]
    fn shares_deal_units_round_robin_and_cover_each_once() {
        assert_eq!(share(7, 0, 3), [0, 3, 6]);
        assert_eq!(share(7, 1, 3), [1, 4]);
        assert_eq!(share(7, 2, 3), [2, 5]);
        assert_eq!(share(2, 2, 3), Vec::<usize>::new());
        assert_eq!(share(3, 0, 1), [0, 1, 2]);
    }

    /// Gathering shards (read back from files, in any order) gives exactly
    /// what embedding every unit in order would.
    #[test]
    fn gather_restores_unit_order_through_shard_files() {
        let units = 11;
        let mut whole = Embedded::empty(2);
        for u in 0..units {
            whole.push(&doc(u));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut shards = Vec::new();
        for rank in [2, 0, 1] {
            let path = dir.path().join(format!("shard-{rank}.bin"));
            let shard = shard_of(rank, 3, units);
            shard.write(&path).unwrap();
            let back = Shard::read(&path).unwrap();
            assert_eq!(back, shard, "rank {rank}'s shard changed on disk");
            shards.push(back);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".tmp")),
            "a temp file was left: {names:?}"
        );
        let (gathered, model) = gather(&shards, units).unwrap();
        assert_eq!(model, "m");
        assert_eq!(gathered, whole);
    }

    #[test]
    fn gather_refuses_missing_duplicate_and_stale_shards() {
        let err = |shards: &[Shard], units| format!("{:#}", gather(shards, units).unwrap_err());
        let two = [shard_of(0, 2, 5), shard_of(1, 2, 5)];
        assert!(gather(&two, 5).is_ok());
        let mut missing = two.clone();
        missing[1].units.pop();
        missing[1].embedded = shard_of(1, 2, 3).embedded;
        assert!(err(&missing, 5).contains("no rank embedded unit 3"));
        let dup = [shard_of(0, 2, 5), shard_of(0, 2, 5)];
        assert!(err(&dup, 5).contains("embedded twice"));
        let stale = [shard_of(0, 2, 5), shard_of(1, 2, 7)];
        assert!(err(&stale, 5).contains("another job"));
        let mut other = two.clone();
        other[1].model = "n".to_string();
        assert!(err(&other, 5).contains("embedded with"));
    }

    #[test]
    fn a_cut_shard_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        shard_of(0, 1, 4).write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(format!("{:#}", Shard::read(&path).unwrap_err()).contains("not a whole shard"));
    }
}
