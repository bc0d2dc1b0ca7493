//! Attention on CPU over host buffers: all sequences and KV heads of a packed batch in one
//! parallel pass (per (sequence, KV head) work items on candle's thread pool), instead of a
//! dozen small tensor ops per sequence and layer. The query heads that share a KV head
//! (GQA) are handled together so each key and value row is read once.

use super::attention_tile::{self, Tile, G_MAX, KB};
use super::cache::HostBuf;
use crate::math::fast_exp;

/// Keys or values of one sequence, `n_kv * head_dim` elements per position.
#[derive(Clone, Copy)]
pub enum KvView<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl<'a> From<&'a HostBuf> for KvView<'a> {
    fn from(b: &'a HostBuf) -> Self {
        match b {
            HostBuf::F32(v) => KvView::F32(v),
            HostBuf::F16(v) => KvView::F16(v),
        }
    }
}

impl KvView<'_> {
    /// Head `kvh`'s rows `lo..hi` as f32 `[hi-lo, d]` plus the row stride: a view of f32
    /// storage, or f16 storage converted once into `buf`.
    fn head_rows<'b>(
        &'b self,
        kvh: usize,
        d: usize,
        kvw: usize,
        lo: usize,
        hi: usize,
        buf: &'b mut Vec<f32>,
    ) -> (&'b [f32], usize) {
        match self {
            KvView::F32(v) => (&v[lo * kvw + kvh * d..], kvw),
            KvView::F16(v) => {
                buf.clear();
                buf.resize((hi - lo) * d, 0.0);
                for (p, dst) in (lo..hi).zip(buf.chunks_exact_mut(d)) {
                    let src = &v[p * kvw + kvh * d..p * kvw + (kvh + 1) * d];
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
                }
                (&buf[..], d)
            }
        }
    }
}

/// One sequence's part of the packed batch for one layer.
pub struct HostSeq<'a> {
    /// First row of this sequence in the packed q/output buffers.
    pub row0: usize,
    /// Query rows (new tokens).
    pub t: usize,
    /// Cached positions before these tokens.
    pub past: usize,
    /// Keys/values for positions `0..past+t`.
    pub k: KvView<'a>,
    pub v: KvView<'a>,
    /// `false` marks padding keys among the new tokens.
    pub key_mask: Option<&'a [bool]>,
}

pub struct Shape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub sliding_window: Option<usize>,
}

/// Query rows per work item: long chunks split into many items, so both the threads and
/// the causal triangle's uneven rows are balanced.
const Q_BLOCK: usize = 16;

/// Rows `t0..t1` of sequence `si` against KV head `kvh`.
struct Item {
    si: usize,
    kvh: usize,
    t0: usize,
    t1: usize,
}

/// A sequence's keys transposed block by block (`[n_kv][blocks][d][KB]`, blocks aligned at
/// multiples of `KB`, zeros past the last key) and, for an f16 cache, its values as f32
/// (`[n_kv][positions][d]`): made once per layer for a sequence with several row items, which
/// all read them, instead of once per item.
struct SharedKv {
    kt: Vec<f32>,
    v: Option<Vec<f32>>,
    blocks: usize,
    len: usize,
}

/// Where an item reads key block `b` (transposed) and the block's values.
enum BlockSource<'a> {
    Shared(&'a SharedKv),
    /// Transposed (and converted) per item, into the scratch buffers.
    PerItem,
}

struct SyncPtr(*mut f32);
// SAFETY: the parallel passes below write disjoint slices through it.
unsafe impl Sync for SyncPtr {}

/// `keys` rows `0..nk` (stride `kstride`, `d` used) transposed into `kt` (`[d][KB]`, zeros
/// past nk).
fn transpose_block(keys: &[f32], kstride: usize, nk: usize, d: usize, kt: &mut [f32]) {
    kt[..d * KB].fill(0.0);
    for jj in 0..nk {
        for (c, &x) in keys[jj * kstride..jj * kstride + d].iter().enumerate() {
            kt[c * KB + jj] = x;
        }
    }
}

/// Prepares [`SharedKv`] for every sequence whose new rows span several items, in one
/// parallel pass over (sequence, KV head, key block).
fn share_kv(seqs: &[HostSeq<'_>], s: &Shape) -> Vec<Option<SharedKv>> {
    let d = s.head_dim;
    let mut shared: Vec<Option<SharedKv>> = seqs
        .iter()
        .map(|seq| {
            (seq.t > Q_BLOCK).then(|| {
                let len = seq.past + seq.t;
                let blocks = len.div_ceil(KB);
                SharedKv {
                    kt: vec![0f32; s.n_kv * blocks * d * KB],
                    v: matches!(seq.v, KvView::F16(_)).then(|| vec![0f32; s.n_kv * len * d]),
                    blocks,
                    len,
                }
            })
        })
        .collect();
    // Where each unit writes: the sequence's buffers as raw pointers (units write disjoint blocks), and their shape.
    struct Target {
        kt: SyncPtr,
        v: Option<SyncPtr>,
        blocks: usize,
        len: usize,
    }
    let mut units = Vec::new();
    let targets: Vec<Option<Target>> = shared
        .iter_mut()
        .enumerate()
        .map(|(si, sh)| {
            let sh = sh.as_mut()?;
            for kvh in 0..s.n_kv {
                units.extend((0..sh.blocks).map(|b| (si, kvh, b)));
            }
            Some(Target {
                kt: SyncPtr(sh.kt.as_mut_ptr()),
                v: sh.v.as_mut().map(|v| SyncPtr(v.as_mut_ptr())),
                blocks: sh.blocks,
                len: sh.len,
            })
        })
        .collect();
    if units.is_empty() {
        return shared;
    }
    let kvw = s.n_kv * d;
    let work = |range: std::ops::Range<usize>| {
        let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
        for &(si, kvh, b) in &units[range] {
            let seq = &seqs[si];
            let t = targets[si]
                .as_ref()
                .expect("units come from shared sequences");
            let (k0, k1) = (b * KB, ((b + 1) * KB).min(t.len));
            let (keys, kstride) = seq.k.head_rows(kvh, d, kvw, k0, k1, &mut kbuf);
            // SAFETY: unit (si, kvh, b) alone writes block b of KV head kvh of sequence si.
            let kt = unsafe {
                std::slice::from_raw_parts_mut(t.kt.0.add((kvh * t.blocks + b) * d * KB), d * KB)
            };
            transpose_block(keys, kstride, k1 - k0, d, kt);
            if let Some(vp) = &t.v {
                let (vals, _) = seq.v.head_rows(kvh, d, kvw, k0, k1, &mut vbuf);
                // SAFETY: as above, positions k0..k1 of KV head kvh.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(vp.0.add((kvh * t.len + k0) * d), (k1 - k0) * d)
                };
                dst.copy_from_slice(&vals[..(k1 - k0) * d]);
            }
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(units.len(), work);
    shared
}

/// `q`: `[n, n_heads * d]` packed rows; returns `[n, n_heads * d]`.
///
/// Blocked ("flash-style") causal attention: each work item streams its visible keys in
/// blocks with an online softmax (running max and sum, the accumulator rescaled when the max
/// grows), so each key and value row is read once per item from cache rather than once per
/// query row from memory, and no score row as long as the context is materialised. Cost per
/// prompt token stays nearly flat as prompts grow. Scores and value sums are register tiles
/// over up to six query vectors (`attention_tile`).
pub fn attend(q: &[f32], n: usize, seqs: &[HostSeq<'_>], s: &Shape) -> Vec<f32> {
    let qw = s.n_heads * s.head_dim;
    let mut out = vec![0f32; n * qw];
    let ptr = SyncPtr(out.as_mut_ptr());
    let mut items = Vec::new();
    for (si, seq) in seqs.iter().enumerate() {
        for t0 in (0..seq.t).step_by(Q_BLOCK) {
            for kvh in 0..s.n_kv {
                let t1 = (t0 + Q_BLOCK).min(seq.t);
                items.push(Item { si, kvh, t0, t1 });
            }
        }
    }
    // The threads take items in order: the costliest (last rows of long sequences) first.
    let cost = |it: &Item| (it.t1 - it.t0) * (seqs[it.si].past + it.t1);
    items.sort_by_key(|it| std::cmp::Reverse(cost(it)));
    let shared = share_kv(seqs, s);
    let work = |range: std::ops::Range<usize>| {
        let ptr = &ptr;
        let mut scratch = Scratch::default();
        for it in &items[range] {
            let src = shared[it.si]
                .as_ref()
                .map_or(BlockSource::PerItem, BlockSource::Shared);
            // SAFETY: an item writes only its own rows of sequence si, in the columns of
            // the query heads served by kvh.
            unsafe { attend_item(q, &seqs[it.si], s, it, &src, ptr.0, &mut scratch) };
        }
    };
    let flops: usize = seqs.iter().map(|q| q.t * (q.past + q.t)).sum::<usize>() * qw;
    if flops < 32_768 {
        work(0..items.len());
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items.len(), work);
    }
    out
}

/// Per-thread buffers reused across work items.
#[derive(Default)]
struct Scratch {
    /// The item's query vectors (row-major over (row, head sharing the KV head)), scaled
    /// by 1/√d: `[rows * rep, d]`.
    qs: Vec<f32>,
    /// Unnormalised outputs, `[rows * rep, d]`.
    acc: Vec<f32>,
    /// Running max and sum of each query vector's scores.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// The current key block, transposed.
    kt: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

unsafe fn attend_item(
    q: &[f32],
    seq: &HostSeq<'_>,
    s: &Shape,
    it: &Item,
    src: &BlockSource<'_>,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let d = s.head_dim;
    let qw = s.n_heads * d;
    let kvw = s.n_kv * d;
    let rep = s.n_heads / s.n_kv;
    let scale = 1.0 / (d as f32).sqrt();
    let rows = it.t1 - it.t0;
    let nv = rows * rep;
    let Scratch {
        qs,
        acc,
        max,
        sum,
        kt,
        k: kbuf,
        v: vbuf,
    } = scratch;
    // Query vector vi = i * rep + r is row t0 + i, query head kvh * rep + r: the heads sharing
    // the KV head are adjacent in a row, so the item's vectors are `rows` contiguous runs.
    qs.clear();
    qs.resize(nv * d, 0.0);
    for i in 0..rows {
        let base = (seq.row0 + it.t0 + i) * qw + it.kvh * rep * d;
        for (x, &y) in qs[i * rep * d..(i + 1) * rep * d]
            .iter_mut()
            .zip(&q[base..base + rep * d])
        {
            *x = y * scale;
        }
    }
    acc.clear();
    acc.resize(nv * d, 0.0);
    max.clear();
    max.resize(nv, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(nv, 0.0);
    // Query position of vector vi; it sees keys window_lo(qi)..=qi.
    let pos = |vi: usize| seq.past + it.t0 + vi / rep;
    let window_lo = |qi: usize| s.sliding_window.map_or(0, |w| (qi + 1).saturating_sub(w));
    let end = seq.past + it.t1;
    let mut tile: Tile = [[0f32; KB]; G_MAX];
    // Blocks aligned at multiples of KB, from the one holding the first visible key.
    let mut k0 = window_lo(seq.past + it.t0) / KB * KB;
    while k0 < end {
        let k1 = (k0 + KB).min(end);
        let nk = k1 - k0;
        let b = k0 / KB;
        let (kt, vals, vstride): (&[f32], &[f32], usize) = match src {
            BlockSource::Shared(sh) => {
                let kt = &sh.kt[(it.kvh * sh.blocks + b) * d * KB..][..d * KB];
                match &sh.v {
                    Some(v) => (kt, &v[(it.kvh * sh.len + k0) * d..], d),
                    None => {
                        let KvView::F32(v) = seq.v else {
                            unreachable!("f16 values are shared as f32")
                        };
                        (kt, &v[k0 * kvw + it.kvh * d..], kvw)
                    }
                }
            }
            BlockSource::PerItem => {
                let (keys, kstride) = seq.k.head_rows(it.kvh, d, kvw, k0, k1, kbuf);
                kt.resize(d * KB, 0.0);
                transpose_block(keys, kstride, nk, d, kt);
                let (vals, vstride) = seq.v.head_rows(it.kvh, d, kvw, k0, k1, vbuf);
                (&kt[..], vals, vstride)
            }
        };
        for g0 in (0..nv).step_by(G_MAX) {
            let g_n = (nv - g0).min(G_MAX);
            // Positions grow with vi: the group sees nothing here if its last query is before
            // the block or its first query's window starts after it.
            if pos(g0 + g_n - 1) < k0 || window_lo(pos(g0)) >= k1 {
                continue;
            }
            attention_tile::scores(g_n, &qs[g0 * d..], kt, d, &mut tile);
            for (g, row) in tile.iter_mut().enumerate().take(g_n) {
                let vi = g0 + g;
                let qi = pos(vi);
                let lo = window_lo(qi).max(k0);
                let hi = (qi + 1).min(k1);
                if lo >= hi {
                    row.fill(0.0);
                    continue;
                }
                // Whole-row (KB-wide) passes from here: invisible keys become -inf, so their
                // probabilities are exactly 0, and the loops have no remainder.
                row[..lo - k0].fill(f32::NEG_INFINITY);
                row[hi - k0..].fill(f32::NEG_INFINITY);
                if let Some(m) = seq.key_mask {
                    for (j, x) in (lo..hi).zip(&mut row[lo - k0..hi - k0]) {
                        if j >= seq.past && !m[j - seq.past] {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                let block_max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                if block_max == f32::NEG_INFINITY {
                    row.fill(0.0);
                    continue;
                }
                let old = max[vi];
                let new = old.max(block_max);
                // Rescale what was accumulated under the old max (nothing yet: factor 0).
                let corr = if old == f32::NEG_INFINITY {
                    0.0
                } else {
                    fast_exp(old - new)
                };
                if corr != 1.0 {
                    acc[vi * d..(vi + 1) * d]
                        .iter_mut()
                        .for_each(|x| *x *= corr);
                }
                // Probabilities (unnormalised) in place.
                row.iter_mut().for_each(|x| *x = fast_exp(*x - new));
                sum[vi] = sum[vi] * corr + crate::math::sum(row);
                max[vi] = new;
            }
            attention_tile::values(g_n, &tile, vals, vstride, nk, d, &mut acc[g0 * d..]);
        }
        k0 = k1;
    }
    for i in 0..rows {
        let row = seq.row0 + it.t0 + i;
        for r in 0..rep {
            let vi = i * rep + r;
            // A padding query with nothing to attend to keeps zeros: its output is unused.
            if sum[vi] == 0.0 {
                continue;
            }
            let inv = 1.0 / sum[vi];
            let h = it.kvh * rep + r;
            let o = std::slice::from_raw_parts_mut(out.add(row * qw + h * d), d);
            for (o, a) in o.iter_mut().zip(&acc[vi * d..(vi + 1) * d]) {
                *o = a * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Softmax attention written out directly, in f64.
    fn reference(q: &[f32], seq: &HostSeq<'_>, k: &[f32], v: &[f32], s: &Shape) -> Vec<f32> {
        let (d, rep) = (s.head_dim, s.n_heads / s.n_kv);
        let (qw, kvw) = (s.n_heads * d, s.n_kv * d);
        let mut out = vec![0f32; seq.t * qw];
        for t in 0..seq.t {
            let qi = seq.past + t;
            let lo = s.sliding_window.map_or(0, |w| (qi + 1).saturating_sub(w));
            for h in 0..s.n_heads {
                let kvh = h / rep;
                let qv = &q[(seq.row0 + t) * qw + h * d..][..d];
                let keys: Vec<usize> = (lo..=qi)
                    .filter(|&j| {
                        !seq.key_mask
                            .is_some_and(|m| j >= seq.past && !m[j - seq.past])
                    })
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let kr = &k[j * kvw + kvh * d..][..d];
                        qv.iter()
                            .zip(kr)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 = keys
                        .iter()
                        .zip(&e)
                        .map(|(&j, p)| p / z * v[j * kvw + kvh * d + c] as f64)
                        .sum();
                    out[t * qw + h * d + c] = o as f32;
                }
            }
        }
        out
    }

    #[test]
    fn blocked_attention_matches_softmax_attention() {
        // (new rows, cached rows, sliding window, padding among the new keys, f16 KV)
        let cases = [
            (1, 0, None, false, false),
            (1, 150, None, false, false),
            (40, 0, None, false, false),
            (70, 30, None, false, true),
            (100, 0, Some(50), false, false),
            (33, 90, Some(64), false, true),
            (20, 5, None, true, false),
            (130, 70, Some(100), true, true),
        ];
        // head_dim 24: the value tile's partial 16-wide chunk (portable path); 64 and 80: the
        // 64-column and 16-column AVX-512 value tiles.
        for (case, &(t, past, window, padded, f16, head_dim)) in cases
            .iter()
            .flat_map(|&(t, p, w, m, f)| [16, 24, 64, 80].map(|hd| (t, p, w, m, f, hd)))
            .collect::<Vec<_>>()
            .iter()
            .enumerate()
        {
            let s = Shape {
                n_heads: 6,
                n_kv: 2,
                head_dim,
                sliding_window: window,
            };
            let (qw, kvw) = (s.n_heads * s.head_dim, s.n_kv * s.head_dim);
            let q = values(t * qw, 3 * case as u64);
            let mut k = values((past + t) * kvw, 3 * case as u64 + 1);
            let mut v = values((past + t) * kvw, 3 * case as u64 + 2);
            if f16 {
                // What the reference sees is what an f16 cache holds.
                for x in k.iter_mut().chain(v.iter_mut()) {
                    *x = half::f16::from_f32(*x).to_f32();
                }
            }
            let mask: Vec<bool> = (0..t).map(|i| i % 3 != 1).collect();
            let (kh, vh): (Vec<half::f16>, Vec<half::f16>) = (
                k.iter().map(|x| half::f16::from_f32(*x)).collect(),
                v.iter().map(|x| half::f16::from_f32(*x)).collect(),
            );
            let seq = HostSeq {
                row0: 0,
                t,
                past,
                k: if f16 {
                    KvView::F16(&kh)
                } else {
                    KvView::F32(&k)
                },
                v: if f16 {
                    KvView::F16(&vh)
                } else {
                    KvView::F32(&v)
                },
                key_mask: padded.then_some(&mask[..]),
            };
            let got = attend(&q, t, std::slice::from_ref(&seq), &s);
            let want = reference(&q, &seq, &k, &v, &s);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "case {case}: max |Δ| {worst}");
        }
    }
}
