//! The training data path: (query, code) pairs of one split of a dataset
//! artifact's `pairs.parquet`, tokenized once up front (in parallel), then cut
//! into batches for each epoch.
//!
//! Promises: the batches of an epoch are a pure function of (examples, batch
//! size, seed, epoch), so a run can resume at any `(epoch, batch)` position;
//! within a batch no two examples share a document (in-batch negatives are
//! real negatives); examples of similar length share a batch (length
//! buckets) and a batch is padded to its own longest text, not the maximum.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use polars::prelude::{ParquetReader, SerReader};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::step::Batch;
use crate::mlx::Array;
use crate::model::ModelDir;

/// One (query, code) pair as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    pub query: String,
    pub code: String,
}

/// The pairs of `split` (`train`, `eval`, `test`) in a `pairs.parquet`, in file order.
pub fn read_pairs(path: &Path, split: &str) -> Result<Vec<TextPair>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = ParquetReader::new(file)
        .with_columns(Some(vec!["query".into(), "code".into(), "split".into()]))
        .finish()
        .with_context(|| {
            format!(
                "reading {} (a dataset artifact's pairs.parquet with columns query, code, split)",
                path.display()
            )
        })?;
    let column = |name: &str| {
        df.column(name)
            .and_then(|c| c.str().cloned())
            .with_context(|| format!("{}: column {name:?} of strings", path.display()))
    };
    let (queries, codes, splits) = (column("query")?, column("code")?, column("split")?);
    let mut out = Vec::new();
    for ((q, c), s) in queries.iter().zip(codes.iter()).zip(splits.iter()) {
        if s == Some(split) {
            out.push(TextPair {
                query: q.unwrap_or_default().to_string(),
                code: c.unwrap_or_default().to_string(),
            });
        }
    }
    Ok(out)
}

/// Turns text into token ids, truncated to a maximum length.
pub enum TextEncoder {
    /// The model's `tokenizer.json` (special tokens added; truncation keeps them).
    Hf {
        query: Box<Tokenizer>,
        doc: Box<Tokenizer>,
    },
    /// Words and punctuation hashed into `[2, vocab)`, then an end token `1`:
    /// for random models that come without a tokenizer (timing runs).
    Hashing { vocab: u32 },
}

impl TextEncoder {
    /// The tokenizer of `dir`, truncating queries and documents to their maxima;
    /// refused when it produces ids outside the model's vocabulary.
    pub fn from_model_dir(dir: &ModelDir, max_query: usize, max_doc: usize) -> Result<TextEncoder> {
        let query = dir.load_tokenizer(max_query)?;
        let doc = dir.load_tokenizer(max_doc)?;
        let (tok_vocab, model_vocab) = (query.get_vocab_size(true), dir.vocab_size());
        if i64::try_from(tok_vocab).unwrap_or(i64::MAX) > i64::from(model_vocab) {
            bail!(
                "the tokenizer of {} has {tok_vocab} tokens but the model's embedding table has {model_vocab}: \
                 the tokenizer does not match the model",
                dir.root.display()
            );
        }
        Ok(TextEncoder::Hf {
            query: Box::new(query),
            doc: Box::new(doc),
        })
    }

    fn encode(&self, text: &str, is_query: bool, max_len: usize) -> Result<Vec<u32>> {
        match self {
            TextEncoder::Hf { query, doc } => {
                let tok = if is_query { query } else { doc };
                let enc = tok
                    .encode(text, true)
                    .map_err(|e| anyhow!("tokenizing {:?}: {e}", preview(text)))?;
                let mut ids = enc.get_ids().to_vec();
                ids.truncate(max_len);
                Ok(ids)
            }
            TextEncoder::Hashing { vocab } => Ok(hash_tokens(text, *vocab, max_len)),
        }
    }
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Words (alphanumeric runs) and single punctuation characters, each hashed
/// into `[2, vocab)`; the last slot is the end token 1.
fn hash_tokens(text: &str, vocab: u32, max_len: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut word = String::new();
    let range = vocab.saturating_sub(2).max(1);
    let push = |w: &str, ids: &mut Vec<u32>| {
        let h = blake3::hash(w.as_bytes());
        let n = u32::from_le_bytes([
            h.as_bytes()[0],
            h.as_bytes()[1],
            h.as_bytes()[2],
            h.as_bytes()[3],
        ]);
        ids.push(2 + n % range);
    };
    for ch in text.chars() {
        if ch.is_alphanumeric() || ch == '_' {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            push(&word, &mut ids);
            word.clear();
        }
        if !ch.is_whitespace() {
            push(ch.encode_utf8(&mut [0; 4]), &mut ids);
        }
    }
    if !word.is_empty() {
        push(&word, &mut ids);
    }
    ids.truncate(max_len.saturating_sub(1));
    ids.push(1);
    ids
}

/// A pair as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub query: Vec<i32>,
    pub doc: Vec<i32>,
    /// Equal for documents the model cannot tell apart (the same token ids
    /// after truncation): they never share a batch.
    pub doc_key: u64,
}

/// How many pairs tokenization kept and why it dropped the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenizeStats {
    pub pairs: usize,
    /// A query or document with no tokens.
    pub dropped_empty: usize,
}

/// Tokenizes `pairs` in parallel (rayon), in their order; ids are checked
/// against `vocab`.
pub fn tokenize(
    encoder: &TextEncoder,
    pairs: &[TextPair],
    max_query: usize,
    max_doc: usize,
    vocab: i32,
) -> Result<(Vec<Example>, TokenizeStats)> {
    let to_ids = |ids: Vec<u32>| -> Result<Vec<i32>> {
        ids.into_iter()
            .map(|id| {
                i32::try_from(id)
                    .ok()
                    .filter(|&i| i < vocab)
                    .ok_or_else(|| {
                        anyhow!(
                            "token id {id} is outside the model's vocabulary of {vocab}: \
                         the tokenizer does not match the model"
                        )
                    })
            })
            .collect()
    };
    let encoded: Vec<Option<Example>> = pairs
        .par_iter()
        .map(|p| -> Result<Option<Example>> {
            let query = to_ids(encoder.encode(&p.query, true, max_query)?)?;
            let doc = to_ids(encoder.encode(&p.code, false, max_doc)?)?;
            if query.is_empty() || doc.is_empty() {
                return Ok(None);
            }
            let doc_key = doc_key(&doc);
            Ok(Some(Example {
                query,
                doc,
                doc_key,
            }))
        })
        .collect::<Result<_>>()?;
    let dropped_empty = encoded.iter().filter(|e| e.is_none()).count();
    let examples: Vec<Example> = encoded.into_iter().flatten().collect();
    let stats = TokenizeStats {
        pairs: examples.len(),
        dropped_empty,
    };
    Ok((examples, stats))
}

fn doc_key(ids: &[i32]) -> u64 {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let h = blake3::hash(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Where a run is in its stream of batches: the next batch to train on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub batch: u64,
}

/// Batches sorted into length buckets of this many batches before the batch
/// order is shuffled: large enough to group similar lengths, small enough to
/// keep an epoch well mixed.
const BUCKET_BATCHES: usize = 64;

/// Cuts examples into batches, epoch by epoch.
pub struct Batcher {
    examples: Vec<Example>,
    batch_size: usize,
    seed: u64,
    pad_multiple: usize,
    group: usize,
}

impl Batcher {
    /// `what` names the examples in errors (e.g. "the train split of pairs.parquet").
    pub fn new(
        examples: Vec<Example>,
        batch_size: usize,
        seed: u64,
        what: &str,
    ) -> Result<Batcher> {
        ensure!(
            batch_size >= 2,
            "batch_size must be at least 2 (in-batch negatives), got {batch_size}"
        );
        ensure!(!examples.is_empty(), "{what} is empty: nothing to batch");
        let distinct = examples
            .iter()
            .map(|e| e.doc_key)
            .collect::<HashSet<_>>()
            .len();
        ensure!(
            examples.len() >= batch_size,
            "batch_size {batch_size} is larger than {what} ({} pairs)",
            examples.len()
        );
        ensure!(
            distinct >= batch_size,
            "batch_size {batch_size} is larger than the number of distinct documents in {what} ({distinct}): \
             a batch cannot hold that many different documents"
        );
        Ok(Batcher {
            examples,
            batch_size,
            seed,
            pad_multiple: 1,
            group: 1,
        })
    }

    /// Pads each batch to its longest text rounded up to a multiple of `m`
    /// (default 1: the longest). Fewer distinct shapes mean fewer traces of a
    /// compiled step; the padding is masked out, so results do not change.
    pub fn with_pad_multiple(mut self, m: usize) -> Batcher {
        self.pad_multiple = m.max(1);
        self
    }

    /// Keeps runs of `g` length-neighbouring batches together when the epoch's
    /// batches are shuffled (`g`: the micro-batches of one update), and cuts
    /// each epoch to a multiple of `g` batches, so every update's micro-batches
    /// come from one length bucket and have near-equal widths. A data-parallel
    /// rank then waits at the all-sum only for the few tokens between them, not
    /// for a batch of another bucket, with the same batches whatever the number
    /// of ranks. `g = 1` (the default) is the plain shuffle.
    pub fn with_group(mut self, g: usize) -> Batcher {
        self.group = g.max(1);
        self
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The batches of `epoch`, as indices into the examples: a seeded shuffle,
    /// length buckets, no repeated document within a batch, the bucketed batches
    /// shuffled again (in runs of [`Batcher::with_group`]'s `g`). Examples that
    /// do not fill a last batch (or a last run of `g`) are left out of this
    /// epoch (another epoch's shuffle includes them).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = Rng::new(self.seed, epoch);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        rng.shuffle(&mut order);
        let mut former = BatchFormer {
            size: self.batch_size,
            examples: &self.examples,
            current: Vec::new(),
            keys: HashSet::new(),
            deferred: VecDeque::new(),
            batches: Vec::new(),
        };
        for chunk in order.chunks(self.batch_size * BUCKET_BATCHES) {
            let mut chunk = chunk.to_vec();
            chunk.sort_by_key(|&i| (self.examples[i].doc.len(), self.examples[i].query.len()));
            for i in chunk {
                former.offer(i);
            }
        }
        // Runs of `group` neighbours (for 1, exactly the batches: the same
        // permutation as shuffling them directly).
        let mut runs: Vec<Vec<Vec<usize>>> = former
            .batches
            .chunks_exact(self.group)
            .map(<[Vec<usize>]>::to_vec)
            .collect();
        rng.shuffle(&mut runs);
        runs.into_iter().flatten().collect()
    }

    /// The batch of `indices`: ids and masks padded (with 0) to the batch's
    /// longest query and longest document.
    pub fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let queries: Vec<&[i32]> = indices
            .iter()
            .map(|&i| &self.examples[i].query[..])
            .collect();
        let docs: Vec<&[i32]> = indices.iter().map(|&i| &self.examples[i].doc[..]).collect();
        let (query_ids, query_mask) = pad(&queries, self.pad_multiple)?;
        let (doc_ids, doc_mask) = pad(&docs, self.pad_multiple)?;
        Ok(Batch {
            query_ids,
            query_mask,
            doc_ids,
            doc_mask,
        })
    }
}

/// `[n, longest rounded up to a multiple of multiple]` ids and 0/1 mask.
fn pad(rows: &[&[i32]], multiple: usize) -> Result<(Array, Array)> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let width = longest.div_ceil(multiple) * multiple;
    let mut ids = vec![0i32; rows.len() * width];
    let mut mask = vec![0i32; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        ids[r * width..r * width + row.len()].copy_from_slice(row);
        mask[r * width..r * width + row.len()].fill(1);
    }
    let shape = [rows.len() as i32, width as i32];
    Ok((
        Array::from_slice(&ids, &shape)?,
        Array::from_slice(&mask, &shape)?,
    ))
}

/// Fills batches in the order offered, deferring an example whose document the
/// open batch already holds to the next batch (deferred ones go first).
struct BatchFormer<'a> {
    size: usize,
    examples: &'a [Example],
    current: Vec<usize>,
    keys: HashSet<u64>,
    deferred: VecDeque<usize>,
    batches: Vec<Vec<usize>>,
}

impl BatchFormer<'_> {
    fn offer(&mut self, index: usize) {
        let mut queue = VecDeque::from([index]);
        while let Some(i) = queue.pop_front() {
            if !self.keys.insert(self.examples[i].doc_key) {
                self.deferred.push_back(i);
                continue;
            }
            self.current.push(i);
            if self.current.len() == self.size {
                self.batches.push(std::mem::take(&mut self.current));
                self.keys.clear();
                queue.extend(self.deferred.drain(..));
            }
        }
    }
}

/// SplitMix64: small, fast, and fixed here, so a seed gives the same order on
/// every platform and with every version of every dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed);
        let s = r.next() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng(s)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (n > 0), by rejection (no modulo bias).
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// How many examples share their (truncated) document with an earlier one.
pub fn duplicate_docs(examples: &[Example]) -> usize {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for e in examples {
        *seen.entry(e.doc_key).or_default() += 1;
    }
    examples.len() - seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Example `i` has a query of `1 + i % 5` tokens and a document of
    /// `2 + (i * 7) % 11` tokens; documents repeat every `distinct` examples.
    fn examples(n: usize, distinct: usize) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let d = i % distinct;
                let doc: Vec<i32> = (0..2 + (d * 7) % 11).map(|t| (10 + d + t) as i32).collect();
                Example {
                    query: (0..1 + i % 5).map(|t| (3 + t) as i32).collect(),
                    doc_key: doc_key(&doc),
                    doc,
                }
            })
            .collect()
    }

    fn batcher(n: usize, distinct: usize, size: usize, seed: u64) -> Batcher {
        Batcher::new(examples(n, distinct), size, seed, "the test split").unwrap()
    }

    #[test]
    fn the_same_seed_and_epoch_give_the_same_batches_and_the_epoch_reshuffles() {
        let a = batcher(200, 200, 8, 3);
        let b = batcher(200, 200, 8, 3);
        assert_eq!(a.epoch(0), b.epoch(0));
        assert_eq!(a.epoch(2), b.epoch(2));
        assert_ne!(a.epoch(0), a.epoch(1), "the epoch enters the shuffle");
        assert_ne!(
            a.epoch(0),
            batcher(200, 200, 8, 4).epoch(0),
            "so does the seed"
        );
    }

    #[test]
    fn an_epoch_uses_each_example_at_most_once_in_full_batches() {
        let b = batcher(203, 203, 8, 0);
        let batches = b.epoch(0);
        assert_eq!(batches.len(), 203 / 8);
        assert!(batches.iter().all(|x| x.len() == 8));
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 25 * 8, "no example twice");
    }

    #[test]
    fn no_batch_holds_the_same_document_twice() {
        // 300 examples over 20 documents: every document 15 times.
        let b = batcher(300, 20, 10, 1);
        for epoch in 0..3 {
            let batches = b.epoch(epoch);
            assert!(
                batches.len() >= 25,
                "epoch {epoch}: {} batches",
                batches.len()
            );
            for batch in &batches {
                let keys: HashSet<u64> = batch.iter().map(|&i| b.examples()[i].doc_key).collect();
                assert_eq!(keys.len(), batch.len(), "a repeated document in {batch:?}");
            }
        }
    }

    #[test]
    fn an_updates_micro_batches_come_from_one_length_bucket() {
        let plain = batcher(2000, 2000, 8, 0);
        let grouped = batcher(2000, 2000, 8, 0).with_group(4);
        let widest = |b: &Batcher, x: &[usize]| -> usize {
            x.iter().map(|&i| b.examples()[i].doc.len()).max().unwrap()
        };
        // Summed over the updates (runs of 4 batches): widest batch - narrowest.
        let spread = |b: &Batcher, batches: &[Vec<usize>]| -> usize {
            batches
                .chunks(4)
                .map(|u| {
                    let w: Vec<usize> = u.iter().map(|x| widest(b, x)).collect();
                    w.iter().max().unwrap() - w.iter().min().unwrap()
                })
                .sum()
        };
        let (p, g) = (plain.epoch(0), grouped.epoch(0));
        assert_eq!(g.len() % 4, 0, "an epoch is whole updates");
        assert!(p.len() - g.len() < 4, "{} batches of {}", g.len(), p.len());
        let (sp, sg) = (spread(&plain, &p), spread(&grouped, &g));
        assert!(
            sg * 4 < sp,
            "grouped updates spread {sg} tokens, plain ones {sp}"
        );
        let batches: HashSet<&Vec<usize>> = p.iter().collect();
        assert!(
            g.iter().all(|x| batches.contains(x)),
            "the same batches, regrouped"
        );
        assert_ne!(grouped.epoch(1), g, "each epoch has its own order");
        let one = batcher(2000, 2000, 8, 0).with_group(1);
        assert_eq!(
            one.epoch(3),
            plain.epoch(3),
            "a group of 1 is the plain shuffle"
        );
    }

    #[test]
    fn length_buckets_pad_less_than_random_batches() {
        let b = batcher(2000, 2000, 8, 0);
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|x| {
                    let longest = x
                        .iter()
                        .map(|&i| b.examples()[i].doc.len())
                        .max()
                        .unwrap_or(0);
                    longest * x.len()
                })
                .sum()
        };
        let bucketed = padded(&b.epoch(0));
        let mut order: Vec<usize> = (0..2000).collect();
        Rng::new(0, 0).shuffle(&mut order);
        let random: Vec<Vec<usize>> = order.chunks(8).map(<[usize]>::to_vec).collect();
        let random = padded(&random);
        assert!(
            bucketed * 10 < random * 8,
            "bucketed batches pad to {bucketed} doc tokens, random ones to {random}"
        );
    }

    #[test]
    fn a_batch_is_padded_to_its_own_longest_text() {
        let b = batcher(20, 20, 4, 0);
        let idx = [0usize, 1, 2, 3];
        let batch = b.batch(&idx).unwrap();
        let longest_q = idx
            .iter()
            .map(|&i| b.examples()[i].query.len())
            .max()
            .unwrap();
        let longest_d = idx
            .iter()
            .map(|&i| b.examples()[i].doc.len())
            .max()
            .unwrap();
        assert_eq!(batch.query_ids.shape(), &[4, longest_q as i32]);
        assert_eq!(batch.doc_ids.shape(), &[4, longest_d as i32]);
        let mask = batch.doc_mask.to_vec::<i32>().unwrap();
        let ids = batch.doc_ids.to_vec::<i32>().unwrap();
        for (r, &i) in idx.iter().enumerate() {
            let row = &mask[r * longest_d..(r + 1) * longest_d];
            assert_eq!(row.iter().sum::<i32>() as usize, b.examples()[i].doc.len());
            assert_eq!(
                &ids[r * longest_d..r * longest_d + b.examples()[i].doc.len()],
                &b.examples()[i].doc[..]
            );
        }
    }

    #[test]
    fn a_pad_multiple_rounds_the_longest_up() {
        let b = batcher(20, 20, 4, 0).with_pad_multiple(8);
        let idx = [0usize, 1, 2, 3];
        let batch = b.batch(&idx).unwrap();
        let longest_d = idx
            .iter()
            .map(|&i| b.examples()[i].doc.len())
            .max()
            .unwrap();
        assert_eq!(
            batch.doc_ids.shape(),
            &[4, longest_d.div_ceil(8) as i32 * 8]
        );
        assert_eq!(batch.query_ids.shape(), &[4, 8], "queries of 1..4 tokens");
        let real: i32 = batch.doc_mask.to_vec::<i32>().unwrap().iter().sum();
        let want: usize = idx.iter().map(|&i| b.examples()[i].doc.len()).sum();
        assert_eq!(real as usize, want, "padding is masked");
    }

    #[test]
    fn resuming_at_a_position_gives_the_rest_of_the_stream() {
        let b = batcher(100, 100, 4, 9);
        let stream: Vec<Vec<usize>> = (0..3).flat_map(|e| b.epoch(e)).collect();
        // A fresh batcher (as after a restart) at epoch 1, batch 5.
        let again = batcher(100, 100, 4, 9);
        let per_epoch = again.epoch(0).len();
        let resumed: Vec<Vec<usize>> = (1..3)
            .flat_map(|e| again.epoch(e).into_iter().skip(if e == 1 { 5 } else { 0 }))
            .collect();
        assert_eq!(resumed, stream[per_epoch + 5..]);
    }

    #[test]
    fn bad_sizes_are_clear_errors() {
        let err = |r: Result<Batcher>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let msg = err(Batcher::new(
            Vec::new(),
            4,
            0,
            "the train split of p.parquet",
        ));
        assert!(
            msg.contains("the train split of p.parquet is empty"),
            "{msg}"
        );
        let msg = err(Batcher::new(examples(3, 3), 4, 0, "the train split"));
        assert!(
            msg.contains("batch_size 4 is larger than the train split (3 pairs)"),
            "{msg}"
        );
        let msg = err(Batcher::new(examples(10, 2), 4, 0, "the train split"));
        assert!(msg.contains("distinct documents"), "{msg}");
        let msg = err(Batcher::new(examples(10, 10), 1, 0, "x"));
        assert!(msg.contains("at least 2"), "{msg}");
    }

    #[test]
    fn tokenizing_truncates_checks_the_vocabulary_and_drops_empty_texts() {
        let pairs = vec![
            TextPair {
                query: "sum of a list".into(),
                code: "def total(xs): return sum(xs)".into(),
            },
            TextPair {
                query: "   ".into(),
                code: "x = 1".into(),
            },
        ];
        let enc = TextEncoder::Hashing { vocab: 50 };
        let (ex, stats) = tokenize(&enc, &pairs, 3, 5, 50).unwrap();
        // Whitespace still gets the end token: nothing is empty with hashing.
        assert_eq!(stats.pairs, 2);
        assert_eq!(ex[0].query.len(), 3);
        assert_eq!(ex[0].doc.len(), 5);
        assert_eq!(
            *ex[0].doc.last().unwrap(),
            1,
            "the end token survives truncation"
        );
        assert!(ex
            .iter()
            .flat_map(|e| e.doc.iter())
            .all(|&t| (1..50).contains(&t)));
        let msg = tokenize(&enc, &pairs, 3, 5, 10).unwrap_err().to_string();
        assert!(
            msg.contains("outside the model's vocabulary of 10"),
            "{msg}"
        );
        // Documents equal after truncation share a key.
        let same = vec![
            TextPair {
                query: "a".into(),
                code: "fn f() { 1 } // one".into(),
            },
            TextPair {
                query: "b".into(),
                code: "fn f() { 1 } // two".into(),
            },
        ];
        let (ex, _) = tokenize(&enc, &same, 4, 6, 50).unwrap();
        assert_eq!(ex[0].doc_key, ex[1].doc_key);
        assert_eq!(duplicate_docs(&ex), 1);
    }

    #[test]
    fn reads_one_split_of_a_pairs_file() {
        use polars::prelude::{Column, DataFrame, ParquetWriter};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.parquet");
        let col = |name: &str, v: &[&str]| Column::new(name.into(), v.to_vec());
        let mut df = DataFrame::new(
            3,
            vec![
                col("lang", &["rust", "rust", "python"]),
                col("query", &["q0", "q1", "q2"]),
                col("code", &["c0", "c1", "c2"]),
                col("split", &["train", "eval", "train"]),
            ],
        )
        .unwrap();
        ParquetWriter::new(std::fs::File::create(&path).unwrap())
            .finish(&mut df)
            .unwrap();
        let train = read_pairs(&path, "train").unwrap();
        assert_eq!(
            train.iter().map(|p| p.query.as_str()).collect::<Vec<_>>(),
            ["q0", "q2"]
        );
        assert_eq!(read_pairs(&path, "eval").unwrap()[0].code, "c1");
        assert!(read_pairs(&path, "test").unwrap().is_empty());
    }
}
