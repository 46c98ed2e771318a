//! The compressed multi-vector index, one memory-mapped file (`mv.bin`).
//!
//! Every token is stored as its centroid (f16 centroids) plus 2- or 4-bit residual codes
//! ([`super::codec`]), grouped by centroid (inverted lists of `(document, codes)`),
//! with a per-document table of where its tokens sit for exact re-scoring.
//!
//! Search (WARP's scoring, PLAID's rerank): each query token scores every
//! centroid, probes its `nprobe` best, and scores the tokens of those clusters
//! through a per-query lookup table (centroid score + residual score); a document
//! unseen by a query token gets that token's imputed similarity, the score of its
//! weakest probed centroid. The best `candidates` by this approximate MaxSim are
//! re-scored by centroid interaction over all their tokens (PLAID: each token as
//! its centroid, a table lookup), and the best `rerank` of those exactly over
//! their decompressed tokens. Small indexes (or `exhaustive`) skip probing and
//! score every document over all its decompressed tokens. Where the index keeps
//! its full vectors ([`super::vectors`]), that last scoring is over them
//! instead: exact MaxSim (up to f16 rounding), and faster than decompressing.
//!
//! The file opens with a header (magic, version, dimension, bit width and
//! counts); its size must be exactly what the header implies, and every offset and
//! id in it is checked on open, so a truncated or corrupt file is an error, never
//! a panic.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use super::codec::{Codec, Encoded};
use super::maxsim::{best_k, TokenVectors};
use super::vectors::StoredVectors;

const MAGIC: &[u8; 8] = b"XTRMVIX\0";
const VERSION: u32 = 1;
const HEADER: usize = 64;

/// How a search runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchParams {
    pub k: usize,
    /// Centroids probed per query token.
    pub nprobe: usize,
    /// The best documents by probing that are re-scored by centroid interaction.
    pub candidates: usize,
    /// The best of those re-scored over all their tokens (decompressed, or the
    /// stored full vectors with `use_vectors`); at least `k`.
    pub rerank: usize,
    /// Where the index keeps its full vectors, score the reranked documents
    /// over them rather than over their decompressed codes.
    pub use_vectors: bool,
    /// Score every document over all its tokens (no probing).
    pub exhaustive: bool,
    /// Indexes of at most this many tokens are always searched exhaustively.
    pub exhaustive_below: usize,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            k: 10,
            nprobe: 4,
            candidates: 256,
            rerank: 32,
            use_vectors: true,
            exhaustive: false,
            exhaustive_below: 20_000,
        }
    }
}

/// Documents' tokens, encoded, in document order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedDocs {
    /// `n_docs + 1` offsets into `tokens`.
    pub offsets: Vec<usize>,
    pub tokens: Encoded,
}

impl EncodedDocs {
    pub fn n_docs(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Appends one document's encoded tokens.
    pub fn push(&mut self, centroids: &[u32], codes: &[u8]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.tokens.centroids.extend_from_slice(centroids);
        self.tokens.codes.extend_from_slice(codes);
        self.offsets.push(self.tokens.centroids.len());
    }
}

struct Header {
    dim: usize,
    nbits: u8,
    n_centroids: usize,
    n_docs: usize,
    n_tokens: usize,
    bytes_per_token: usize,
}

/// Byte ranges of the sections, from the header's counts (checked arithmetic).
struct Layout {
    centroids: usize,
    cutoffs: usize,
    weights: usize,
    cluster_offsets: usize,
    doc_offsets: usize,
    list_docs: usize,
    list_codes: usize,
    doc_tokens: usize,
    end: usize,
}

impl Layout {
    fn of(h: &Header) -> Option<Layout> {
        let levels = 1usize << h.nbits;
        let mut at = HEADER;
        let mut take = |bytes: Option<usize>| -> Option<usize> {
            let start = at;
            at = at.checked_add(bytes?)?;
            Some(start)
        };
        let m = |a: usize, b: usize| a.checked_mul(b);
        Some(Layout {
            centroids: take(m(h.n_centroids, h.dim).and_then(|x| m(x, 2)))?,
            cutoffs: take(m(h.dim, (levels - 1) * 4))?,
            weights: take(m(h.dim, levels * 4))?,
            cluster_offsets: take(m(h.n_centroids.checked_add(1)?, 8))?,
            doc_offsets: take(m(h.n_docs.checked_add(1)?, 8))?,
            list_docs: take(m(h.n_tokens, 4))?,
            list_codes: take(m(h.n_tokens, h.bytes_per_token))?,
            doc_tokens: take(m(h.n_tokens, 4))?,
            end: at,
        })
    }
}

/// Writes the index of `docs` (encoded by `codec`) to `path`, atomically.
pub fn write(path: &Path, codec: &Codec, docs: &EncodedDocs) -> Result<()> {
    let n_docs = docs.n_docs();
    let n_tokens = docs.tokens.centroids.len();
    let bpt = codec.bytes_per_token();
    let k = codec.n_centroids();
    if docs.tokens.codes.len() != n_tokens * bpt
        || docs.offsets.last().copied().unwrap_or(0) != n_tokens
    {
        bail!(
            "encoded documents are inconsistent: {n_tokens} tokens, {} code bytes",
            docs.tokens.codes.len()
        );
    }
    if docs.offsets.first().is_some_and(|&o| o != 0) || docs.offsets.windows(2).any(|w| w[0] > w[1])
    {
        bail!("encoded documents have offsets out of order");
    }
    if let Some(&c) = docs.tokens.centroids.iter().find(|&&c| c as usize >= k) {
        bail!("a token names centroid {c} of {k}");
    }
    // Cluster-major order: a stable counting sort keeps each list in document order.
    let mut cluster_offsets = vec![0usize; k + 1];
    for &c in &docs.tokens.centroids {
        cluster_offsets[c as usize + 1] += 1;
    }
    for c in 0..k {
        cluster_offsets[c + 1] += cluster_offsets[c];
    }
    let mut next = cluster_offsets.clone();
    let mut list_docs = vec![0u32; n_tokens];
    let mut list_codes = vec![0u8; n_tokens * bpt];
    let mut doc_tokens = vec![0u32; n_tokens];
    let mut d = 0;
    for (t, (&c, slot)) in docs
        .tokens
        .centroids
        .iter()
        .zip(doc_tokens.iter_mut())
        .enumerate()
    {
        while docs.offsets[d + 1] <= t {
            d += 1;
        }
        let c = c as usize;
        let pos = next[c];
        next[c] += 1;
        list_docs[pos] = d as u32;
        list_codes[pos * bpt..(pos + 1) * bpt]
            .copy_from_slice(&docs.tokens.codes[t * bpt..(t + 1) * bpt]);
        *slot = pos as u32;
    }

    let mut buf = Vec::with_capacity(HEADER + n_tokens * (bpt + 8) + k * codec.dim * 4);
    buf.extend_from_slice(MAGIC);
    for v in [
        VERSION,
        codec.dim as u32,
        codec.nbits as u32,
        k as u32,
        n_docs as u32,
        0,
    ] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&(n_tokens as u64).to_le_bytes());
    buf.extend_from_slice(&(bpt as u32).to_le_bytes());
    buf.resize(HEADER, 0);
    for x in &codec.centroids {
        buf.extend_from_slice(&super::maxsim::f32_to_f16(*x).to_le_bytes());
    }
    for slice in [&codec.cutoffs, &codec.weights] {
        for x in slice.iter() {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    let doc_offsets: &[usize] = if docs.offsets.is_empty() {
        &[0]
    } else {
        &docs.offsets
    };
    for o in cluster_offsets.iter().chain(doc_offsets) {
        buf.extend_from_slice(&(*o as u64).to_le_bytes());
    }
    for d in &list_docs {
        buf.extend_from_slice(&d.to_le_bytes());
    }
    buf.extend_from_slice(&list_codes);
    for p in &doc_tokens {
        buf.extend_from_slice(&p.to_le_bytes());
    }

    crate::atomic::write(path, |out| out.write_all(&buf))
}

/// An open multi-vector index.
pub struct MvIndex {
    map: Mmap,
    codec: Codec,
    n_docs: usize,
    n_tokens: usize,
    bpt: usize,
    cluster_offsets: Vec<usize>,
    doc_offsets: Vec<usize>,
    /// Each token's centroid, in document order (derived on open).
    doc_centroids: Vec<u32>,
    layout: Layout,
    /// The full vectors, where the index keeps them.
    vectors: Option<StoredVectors>,
}

/// The `i`-th little-endian u32 of `bytes`.
pub(crate) fn u32_at(bytes: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[i * 4..i * 4 + 4]);
    u32::from_le_bytes(b)
}

/// The `i`-th little-endian u64 of `bytes`.
pub(crate) fn u64_at(bytes: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
    u64::from_le_bytes(b)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Offsets that must start at 0, never decrease and end at `total`.
fn offsets(bytes: &[u8], count: usize, total: usize, what: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = (0..count).map(|i| u64_at(bytes, i) as usize).collect();
    let ok =
        v.first() == Some(&0) && v.windows(2).all(|w| w[0] <= w[1]) && v.last() == Some(&total);
    if !ok {
        bail!("its {what} offsets are corrupt");
    }
    Ok(v)
}

/// Maps one of an index's files, read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: an index's files are only ever replaced by rename, never written
    // in place, so the mapping's bytes do not change under us.
    unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))
}

impl MvIndex {
    /// Opens and checks `path`.
    pub fn open(path: &Path) -> Result<MvIndex> {
        let map = map_file(path)?;
        Self::check(map)
            .with_context(|| format!("{} is not a valid multi-vector index", path.display()))
    }

    fn check(map: Mmap) -> Result<MvIndex> {
        if map.len() < HEADER || &map[..8] != MAGIC {
            bail!(
                "it does not start with the index header ({} bytes)",
                map.len()
            );
        }
        let word = |i: usize| u32_at(&map[8..], i) as usize;
        let version = word(0) as u32;
        if version != VERSION {
            bail!("format version {version}, this build reads {VERSION}");
        }
        let h = Header {
            dim: word(1),
            nbits: word(2) as u8,
            n_centroids: word(3),
            n_docs: word(4),
            n_tokens: u64_at(&map[32..], 0) as usize,
            bytes_per_token: u32_at(&map[40..], 0) as usize,
        };
        if h.dim == 0
            || !matches!(word(2), 2 | 4)
            || h.bytes_per_token != (h.dim * h.nbits as usize).div_ceil(8)
        {
            bail!(
                "bad header: dim {}, bits {}, {} bytes per token",
                h.dim,
                word(2),
                h.bytes_per_token
            );
        }
        if h.n_tokens > 0 && h.n_centroids == 0 {
            bail!("bad header: tokens without centroids");
        }
        if h.n_tokens > u32::MAX as usize {
            bail!("bad header: {} tokens", h.n_tokens);
        }
        let layout = Layout::of(&h).context("bad header: counts overflow")?;
        if map.len() != layout.end {
            bail!(
                "it is {} bytes, its header implies {} (truncated or damaged)",
                map.len(),
                layout.end
            );
        }
        let levels = 1usize << h.nbits;
        let codec = Codec {
            dim: h.dim,
            nbits: h.nbits,
            centroids: map[layout.centroids..layout.cutoffs]
                .chunks_exact(2)
                .map(|b| super::maxsim::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            cutoffs: f32s(&map[layout.cutoffs..layout.weights]),
            weights: f32s(&map[layout.weights..layout.cluster_offsets]),
        };
        debug_assert_eq!(codec.weights.len(), h.dim * levels);
        let cluster_offsets = offsets(
            &map[layout.cluster_offsets..layout.doc_offsets],
            h.n_centroids + 1,
            h.n_tokens,
            "cluster",
        )?;
        let doc_offsets = offsets(
            &map[layout.doc_offsets..layout.list_docs],
            h.n_docs + 1,
            h.n_tokens,
            "document",
        )?;
        let docs = &map[layout.list_docs..layout.list_codes];
        if (0..h.n_tokens).any(|i| u32_at(docs, i) as usize >= h.n_docs) {
            bail!("a list entry names a document out of range");
        }
        let positions = &map[layout.doc_tokens..layout.end];
        if (0..h.n_tokens).any(|i| u32_at(positions, i) as usize >= h.n_tokens) {
            bail!("a document names a token out of range");
        }
        let mut cluster_at = vec![0u32; h.n_tokens];
        for (c, w) in cluster_offsets.windows(2).enumerate() {
            cluster_at[w[0]..w[1]].fill(c as u32);
        }
        let doc_centroids = (0..h.n_tokens)
            .map(|t| cluster_at[u32_at(positions, t) as usize])
            .collect();
        Ok(MvIndex {
            codec,
            doc_centroids,
            n_docs: h.n_docs,
            n_tokens: h.n_tokens,
            bpt: h.bytes_per_token,
            cluster_offsets,
            doc_offsets,
            layout,
            map,
            vectors: None,
        })
    }

    /// Opens the full vectors kept beside the index (`vectors.f16`, written
    /// by [`super::vectors::write`] from the same documents), for the rerank.
    pub fn open_vectors(&mut self, path: &Path) -> Result<()> {
        self.vectors = Some(StoredVectors::open(path, self.codec.dim, self.n_tokens)?);
        Ok(())
    }

    /// Whether the index keeps its full vectors.
    pub fn has_vectors(&self) -> bool {
        self.vectors.is_some()
    }

    /// Bytes of the stored full vectors (0 without them).
    pub fn vector_bytes(&self) -> usize {
        self.vectors.as_ref().map_or(0, StoredVectors::file_bytes)
    }

    /// One document's stored full vectors, row-major (`None` without them).
    pub fn stored_vectors(&self, doc: usize) -> Option<Vec<f32>> {
        let v = self.vectors.as_ref()?;
        Some(if doc < self.n_docs {
            v.rows(self.tokens_of(doc))
        } else {
            Vec::new()
        })
    }

    pub fn dim(&self) -> usize {
        self.codec.dim
    }

    pub fn n_docs(&self) -> usize {
        self.n_docs
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The codec the index was built with (to encode more documents alike).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Bytes of the index file.
    pub fn file_bytes(&self) -> usize {
        self.map.len()
    }

    /// Document `doc`'s tokens, as positions in document order (`doc` < `n_docs`).
    fn tokens_of(&self, doc: usize) -> std::ops::Range<usize> {
        self.doc_offsets[doc]..self.doc_offsets[doc + 1]
    }

    fn list_doc(&self, pos: usize) -> u32 {
        u32_at(&self.map[self.layout.list_docs..], pos)
    }

    fn codes(&self, pos: usize) -> &[u8] {
        let at = self.layout.list_codes + pos * self.bpt;
        &self.map[at..at + self.bpt]
    }

    /// One document's tokens as stored: centroid ids and packed codes.
    pub fn doc_tokens(&self, doc: usize) -> (Vec<u32>, Vec<u8>) {
        let mut centroids = Vec::new();
        let mut codes = Vec::new();
        if doc < self.n_docs {
            let positions = &self.map[self.layout.doc_tokens..self.layout.end];
            for t in self.tokens_of(doc) {
                let pos = u32_at(positions, t) as usize;
                centroids.push(self.doc_centroids[t]);
                codes.extend_from_slice(self.codes(pos));
            }
        }
        (centroids, codes)
    }

    /// One document's tokens, decompressed, row-major.
    pub fn doc_vectors(&self, doc: usize) -> Vec<f32> {
        if doc >= self.n_docs {
            return Vec::new();
        }
        let dim = self.codec.dim;
        let tokens = self.tokens_of(doc);
        let positions = &self.map[self.layout.doc_tokens..self.layout.end];
        // A document's codes lie scattered over the cluster lists: ask for
        // every token's line first, so the misses overlap instead of queueing.
        for t in tokens.clone() {
            prefetch(self.codes(u32_at(positions, t) as usize));
        }
        let mut out = vec![0f32; tokens.len() * dim];
        for (row, t) in out.chunks_exact_mut(dim).zip(tokens) {
            let pos = u32_at(positions, t) as usize;
            self.codec
                .decode_into(self.doc_centroids[t], self.codes(pos), row);
        }
        out
    }

    /// The `k` best documents for `query`: `(doc, score)`, best first.
    pub fn search(&self, query: &TokenVectors, p: &SearchParams) -> Result<Vec<(u32, f32)>> {
        if self.n_docs == 0 {
            bail!("the multi-vector index is empty");
        }
        if query.dim() != self.codec.dim {
            bail!(
                "the query's embeddings have dimension {}, the index's {} (built with another model?)",
                query.dim(),
                self.codec.dim
            );
        }
        if query.rows() == 0 || p.k == 0 {
            return Ok(Vec::new());
        }
        if p.exhaustive || self.n_tokens <= p.exhaustive_below {
            let all = (0..self.n_docs as u32).map(|d| (d, 0.0)).collect();
            return Ok(self.rescore(query, all, p));
        }
        let scorer = Scorer::new(self, query);
        let rerank = p.rerank.max(p.k);
        let pool = self.probe(&scorer, p.nprobe.max(1), p.candidates.max(rerank));
        let by_centroids = pool
            .into_iter()
            .map(|d| (d, self.centroid_score(&scorer, d as usize)))
            .collect();
        Ok(self.rescore(query, best_k(by_centroids, rerank), p))
    }

    /// The best `p.k` of `docs` by MaxSim over all their tokens: the stored
    /// full vectors where the index keeps them (and `p.use_vectors`), else
    /// the decompressed codes.
    fn rescore(
        &self,
        query: &TokenVectors,
        docs: Vec<(u32, f32)>,
        p: &SearchParams,
    ) -> Vec<(u32, f32)> {
        let scored = match self.vectors.as_ref().filter(|_| p.use_vectors) {
            Some(v) => docs
                .into_iter()
                .map(|(d, _)| {
                    (
                        d,
                        super::maxsim::maxsim(query, &v.rows(self.tokens_of(d as usize))),
                    )
                })
                .collect(),
            None => docs
                .into_iter()
                .map(|(d, _)| (d, self.exact(query, d as usize)))
                .collect(),
        };
        best_k(scored, p.k)
    }

    /// MaxSim with every token of `doc` standing as its centroid.
    fn centroid_score(&self, s: &Scorer, doc: usize) -> f32 {
        let mut best = vec![f32::NEG_INFINITY; s.nq];
        for &c in &self.doc_centroids[self.tokens_of(doc)] {
            let row = &s.qc_by_centroid[c as usize * s.nq..(c as usize + 1) * s.nq];
            for (b, &x) in best.iter_mut().zip(row) {
                *b = b.max(x);
            }
        }
        best.iter().filter(|x| x.is_finite()).sum()
    }

    /// The `keep` best documents by approximate MaxSim (in no particular order).
    fn probe(&self, s: &Scorer, nprobe: usize, keep: usize) -> Vec<u32> {
        let k = self.codec.n_centroids();
        let nprobe = nprobe.min(k);
        if nprobe == 0 {
            return Vec::new();
        }
        let mut best = vec![0f32; self.n_docs];
        let mut stamp = vec![0u32; self.n_docs];
        let mut gain = vec![0f32; self.n_docs];
        let mut seen = vec![false; self.n_docs];
        let mut touched: Vec<u32> = Vec::new();
        for i in 0..s.nq {
            let qc = &s.qc[i * k..(i + 1) * k];
            let probed = top_indices(qc, nprobe);
            // The imputed similarity: the weakest probed centroid's score.
            let missing = probed
                .iter()
                .map(|&c| qc[c as usize])
                .fold(f32::INFINITY, f32::min);
            touched.clear();
            let mark = i as u32 + 1;
            for &c in &probed {
                let base = qc[c as usize];
                for pos in self.cluster_offsets[c as usize]..self.cluster_offsets[c as usize + 1] {
                    let d = self.list_doc(pos) as usize;
                    let score = base + s.residual(i, self.codes(pos));
                    if stamp[d] != mark {
                        stamp[d] = mark;
                        best[d] = score;
                        touched.push(d as u32);
                    } else if score > best[d] {
                        best[d] = score;
                    }
                }
            }
            for &d in &touched {
                let d = d as usize;
                gain[d] += (best[d] - missing).max(0.0);
                seen[d] = true;
            }
        }
        let mut candidates: Vec<(u32, f32)> = (0..self.n_docs)
            .filter(|&d| seen[d])
            .map(|d| (d as u32, gain[d]))
            .collect();
        if keep < candidates.len() {
            candidates.select_nth_unstable_by(keep, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            candidates.truncate(keep);
        }
        candidates.into_iter().map(|c| c.0).collect()
    }

    /// MaxSim of `query` over all of one document's decompressed tokens.
    fn exact(&self, query: &TokenVectors, doc: usize) -> f32 {
        super::maxsim::maxsim(query, &self.doc_vectors(doc))
    }
}

/// A hint to bring `bytes`' first cache line in; nothing where it is not x86-64.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults, and the pointer is
        // into a live slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn nibble_table4(levels: &[f32]) -> [f32; 16] {
    let mut t = [0f32; 16];
    t.copy_from_slice(&levels[..16]);
    t
}

/// Two 2-bit codes in a nibble: the low pair's level plus the high pair's.
fn nibble_table2(low: &[f32], high: &[f32]) -> [f32; 16] {
    let mut t = [0f32; 16];
    for (n, x) in t.iter_mut().enumerate() {
        *x = low[n & 3] + high[n >> 2];
    }
    t
}

/// The indices of the `n` largest values, best first (ties: lower index).
fn top_indices(values: &[f32], n: usize) -> Vec<u32> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    for (i, &v) in values.iter().enumerate() {
        if top.len() == n && top.last().is_some_and(|w| v.is_nan() || v <= w.0) {
            continue;
        }
        let at = top.partition_point(|w| w.0 >= v);
        top.insert(at, (v, i as u32));
        top.truncate(n);
    }
    top.into_iter().map(|(_, i)| i).collect()
}

/// Per-query tables: every query token against every centroid, and a byte
/// lookup table per query token for the residual part of a token's score.
struct Scorer {
    nq: usize,
    /// `[nq, n_centroids]`.
    qc: Vec<f32>,
    /// The same scores as `[n_centroids, nq]`: one centroid's row is contiguous.
    qc_by_centroid: Vec<f32>,
    /// `[nq, bytes_per_token, 256]`: a code byte's contribution to q · residual.
    lut: Vec<f32>,
    bpt: usize,
}

impl Scorer {
    fn new(index: &MvIndex, query: &TokenVectors) -> Scorer {
        let codec = &index.codec;
        let (dim, k, bpt) = (codec.dim, codec.n_centroids(), index.bpt);
        let nq = query.rows();
        let mut qc_by_centroid = Vec::new();
        super::maxsim::scores_by_row(query, &codec.centroids, &mut qc_by_centroid);
        let mut qc = vec![0f32; nq * k];
        for (c, row) in qc_by_centroid.chunks_exact(nq.max(1)).enumerate() {
            for (i, &x) in row.iter().enumerate() {
                qc[i * k + c] = x;
            }
        }
        let levels = codec.levels();
        let mut lut = vec![0f32; nq * bpt * 256];
        // Per dimension and level: q[d] · bucket value; padding dimensions score 0.
        let padded = bpt * 8 / codec.nbits as usize;
        let mut per_dim = vec![0f32; padded * levels];
        for i in 0..nq {
            let q = query.row(i);
            for d in 0..dim {
                for l in 0..levels {
                    per_dim[d * levels + l] = q[d] * codec.weights[d * levels + l];
                }
            }
            let table = &mut lut[i * bpt * 256..(i + 1) * bpt * 256];
            for (j, out) in table.chunks_exact_mut(256).enumerate() {
                // A byte is two nibbles, each nibble one 4-bit or two 2-bit codes:
                // its score is low(b & 15) + high(b >> 4).
                let (low, high) = if codec.nbits == 4 {
                    let at = |d: usize| &per_dim[d * 16..(d + 1) * 16];
                    (nibble_table4(at(2 * j)), nibble_table4(at(2 * j + 1)))
                } else {
                    let at = |d: usize| &per_dim[d * 4..(d + 1) * 4];
                    (
                        nibble_table2(at(4 * j), at(4 * j + 1)),
                        nibble_table2(at(4 * j + 2), at(4 * j + 3)),
                    )
                };
                for (h, row) in out.chunks_exact_mut(16).enumerate() {
                    for (l, x) in row.iter_mut().enumerate() {
                        *x = low[l] + high[h];
                    }
                }
            }
        }
        Scorer {
            nq,
            qc,
            qc_by_centroid,
            lut,
            bpt,
        }
    }

    /// q_i · residual of a token with these codes.
    #[inline]
    fn residual(&self, i: usize, codes: &[u8]) -> f32 {
        let table = &self.lut[i * self.bpt * 256..(i + 1) * self.bpt * 256];
        let mut acc = [0f32; 4];
        for (j, &b) in codes.iter().enumerate() {
            acc[j & 3] += table[j * 256 + b as usize];
        }
        acc[0] + acc[1] + acc[2] + acc[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelToken;
    use crate::search::codec::CodecParams;
    use crate::search::maxsim;
    use crate::search::synth;

    fn build(docs: &[Vec<f32>], dim: usize, params: &CodecParams, path: &Path) -> MvIndex {
        let all: Vec<f32> = docs.concat();
        let codec = Codec::train(&all, dim, params, &CancelToken::new()).unwrap();
        let mut enc = EncodedDocs::default();
        for d in docs {
            let e = codec.encode(d).unwrap();
            enc.push(&e.centroids, &e.codes);
        }
        write(path, &codec, &enc).unwrap();
        MvIndex::open(path).unwrap()
    }

    #[test]
    fn a_tiny_index_by_hand() {
        // Two 2-d documents of axis-aligned tokens; centroids are the axes, so
        // residuals are 0 and decoding is exact up to the bucket values.
        let dim = 2;
        let docs = vec![
            vec![1.0, 0.0, 1.0, 0.0], // doc 0: x, x
            vec![0.0, 1.0],           // doc 1: y
            vec![1.0, 0.0, 0.0, 1.0], // doc 2: x, y
        ];
        let dir = tempfile::tempdir().unwrap();
        let params = CodecParams {
            centroids: Some(2),
            ..Default::default()
        };
        let index = build(&docs, dim, &params, &dir.path().join("mv.bin"));
        assert_eq!((index.n_docs(), index.n_tokens(), index.dim()), (3, 5, 2));
        // Query (x, y): doc 2 has both (1 + 1 = 2); docs 0 and 1 one each (1 + 0).
        let q = TokenVectors::new(2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        for exhaustive in [true, false] {
            let p = SearchParams {
                k: 3,
                nprobe: 1,
                exhaustive,
                exhaustive_below: 0,
                ..Default::default()
            };
            let hits = index.search(&q, &p).unwrap();
            assert_eq!(hits[0].0, 2, "exhaustive {exhaustive}: {hits:?}");
            assert!((hits[0].1 - 2.0).abs() < 1e-4, "{hits:?}");
            assert!((hits[1].1 - 1.0).abs() < 1e-4, "{hits:?}");
        }
        let (centroids, codes) = index.doc_tokens(2);
        assert_eq!(centroids.len(), 2);
        assert_eq!(codes.len(), 2 * index.codec().bytes_per_token());
        let v = index.doc_vectors(0);
        assert!((v[0] - 1.0).abs() < 1e-4 && v[1].abs() < 1e-4, "{v:?}");
    }

    #[test]
    fn probing_recalls_exact_maxsim_on_clustered_data() {
        let dim = 32;
        let docs = synth::corpus(600, 8, 24, dim, 48, 0.35, 7);
        let queries = synth::queries(&docs, dim, 40, 8, 0.1, 8);
        let dir = tempfile::tempdir().unwrap();
        let index = build(
            &docs,
            dim,
            &CodecParams::default(),
            &dir.path().join("mv.bin"),
        );
        let p = SearchParams {
            exhaustive_below: 0,
            ..Default::default()
        };
        let mut found = 0;
        for (_, q) in &queries {
            let truth: std::collections::HashSet<u32> =
                maxsim::top_k(q, docs.iter().map(|d| d.as_slice()), 10)
                    .into_iter()
                    .map(|h| h.0)
                    .collect();
            let hits = index.search(q, &p).unwrap();
            found += hits.iter().filter(|h| truth.contains(&h.0)).count();
        }
        let recall = found as f64 / (10 * queries.len()) as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    /// With the full vectors beside it, the index's hits carry exact MaxSim
    /// scores (up to f16 rounding) when probing and when exhaustive; without
    /// them, or with `use_vectors` off, the decompressed scores, which are not.
    #[test]
    fn the_rerank_over_stored_vectors_is_exact_maxsim() {
        let dim = 32;
        let docs = synth::corpus(600, 8, 24, dim, 48, 0.35, 7);
        let queries = synth::queries(&docs, dim, 20, 8, 0.3, 9);
        let dir = tempfile::tempdir().unwrap();
        let mut index = build(
            &docs,
            dim,
            &CodecParams::default(),
            &dir.path().join("mv.bin"),
        );
        let exhaustive = SearchParams {
            exhaustive: true,
            exhaustive_below: 0,
            ..Default::default()
        };
        let probing = SearchParams {
            exhaustive_below: 0,
            ..Default::default()
        };
        // The largest gap between a hit's score and its document's exact MaxSim.
        let worst = |index: &MvIndex, p: &SearchParams| -> f32 {
            let mut worst = 0f32;
            for (_, q) in &queries {
                for (d, score) in index.search(q, p).unwrap() {
                    let exact = maxsim::maxsim(q, &docs[d as usize]);
                    worst = worst.max((score - exact).abs());
                }
            }
            worst
        };
        let before = (worst(&index, &exhaustive), worst(&index, &probing));
        let before_hits = index.search(&queries[0].1, &probing).unwrap();
        assert!(!index.has_vectors() && index.stored_vectors(0).is_none());

        let path = dir.path().join("vectors.f16");
        crate::search::vectors::write(&path, dim, &docs.concat()).unwrap();
        index.open_vectors(&path).unwrap();
        assert!(index.has_vectors());
        assert_eq!(index.stored_vectors(1).unwrap().len(), docs[1].len());
        let after = (worst(&index, &exhaustive), worst(&index, &probing));
        assert!(before.0 > 5e-3 && before.1 > 5e-3, "{before:?}");
        assert!(after.0 < 2e-3 && after.1 < 2e-3, "{after:?}");
        // The exhaustive search now finds the exact top 10.
        for (_, q) in &queries {
            let hits = index.search(q, &exhaustive).unwrap();
            let truth = maxsim::top_k(q, docs.iter().map(|d| d.as_slice()), 10);
            for (h, t) in hits.iter().zip(&truth) {
                assert!((h.1 - t.1).abs() < 2e-3, "{hits:?} {truth:?}");
            }
        }
        let off = SearchParams {
            use_vectors: false,
            ..probing
        };
        assert_eq!(index.search(&queries[0].1, &off).unwrap(), before_hits);
    }

    #[test]
    fn top_indices_keeps_the_largest_in_order() {
        assert_eq!(top_indices(&[0.1, 0.9, 0.5, 0.9, -1.0], 3), [1, 3, 2]);
        assert_eq!(top_indices(&[0.2, 0.1], 5), [0, 1]);
        assert!(top_indices(&[0.2], 0).is_empty());
    }

    #[test]
    fn errors_for_wrong_dimension_and_empty_index() {
        let dir = tempfile::tempdir().unwrap();
        let docs = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let index = build(
            &docs,
            2,
            &CodecParams {
                centroids: Some(2),
                ..Default::default()
            },
            &dir.path().join("mv.bin"),
        );
        let q = TokenVectors::new(3, vec![1.0, 0.0, 0.0]).unwrap();
        let err = index
            .search(&q, &SearchParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dimension 3") && err.contains("index's 2"),
            "{err}"
        );
    }

    #[test]
    fn truncated_or_corrupt_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mv.bin");
        let docs = synth::corpus(20, 3, 6, 8, 4, 0.3, 1);
        build(
            &docs,
            8,
            &CodecParams {
                centroids: Some(4),
                ..Default::default()
            },
            &path,
        );
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.bin");
        let try_open = |bytes: &[u8]| {
            std::fs::write(&bad, bytes).unwrap();
            MvIndex::open(&bad).err().map(|e| format!("{e:#}"))
        };
        let err = try_open(&good[..good.len() - 3]).unwrap();
        assert!(err.contains("truncated"), "{err}");
        assert!(try_open(&good[..10]).unwrap().contains("header"));
        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'Y';
        assert!(try_open(&wrong_magic).is_some());
        // Every single-byte corruption of the header and tables is caught or harmless.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            std::fs::write(&bad, &b).unwrap();
            if let Ok(index) = MvIndex::open(&bad) {
                let q = TokenVectors::new(8, docs[0][..8].to_vec()).unwrap();
                let _ = index.search(
                    &q,
                    &SearchParams {
                        exhaustive_below: 0,
                        nprobe: 2,
                        ..Default::default()
                    },
                );
                let _ = index.search(&q, &SearchParams::default());
                let _ = index.doc_vectors(0);
            }
        }
        assert!(try_open(&good).is_none());
    }
}
