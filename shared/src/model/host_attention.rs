//! Attention on CPU over host buffers: all sequences and KV heads of a packed batch in one
//! parallel pass (per (sequence, KV head) work items on candle's thread pool), instead of a
//! dozen small tensor ops per sequence and layer. The query heads that share a KV head
//! (GQA) are handled together so each key and value row is read once.

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

struct OutPtr(*mut f32);
// SAFETY: work items write disjoint (row, head) slices.
unsafe impl Sync for OutPtr {}

/// Query rows per work item: long chunks split into many items, so both the threads and
/// the causal triangle's uneven rows are balanced.
const Q_BLOCK: usize = 16;
/// Keys per block: a block of keys and values (2 × 64 × head_dim floats) stays in L1 while
/// every query row of the item, and every query head sharing the KV head, uses it.
const K_BLOCK: usize = 64;

/// Rows `t0..t1` of sequence `si` against KV head `kvh`.
struct Item {
    si: usize,
    kvh: usize,
    t0: usize,
    t1: usize,
}

/// `q`: `[n, n_heads * d]` packed rows; returns `[n, n_heads * d]`.
///
/// Blocked ("flash-style") causal attention: each work item streams its visible keys in
/// blocks with an online softmax (running max and sum, the accumulator rescaled when the max
/// grows), so each key and value row is read once per item from cache rather than once per
/// query row from memory, and no score row as long as the context is materialised. Cost per
/// prompt token stays nearly flat as prompts grow.
pub fn attend(q: &[f32], n: usize, seqs: &[HostSeq<'_>], s: &Shape) -> Vec<f32> {
    let qw = s.n_heads * s.head_dim;
    let mut out = vec![0f32; n * qw];
    let ptr = OutPtr(out.as_mut_ptr());
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
    let work = |range: std::ops::Range<usize>| {
        let ptr = &ptr;
        let mut scratch = Scratch::default();
        for it in &items[range] {
            // SAFETY: an item writes only its own rows of sequence si, in the columns of
            // the query heads served by kvh.
            unsafe { attend_item(q, &seqs[it.si], s, it, ptr.0, &mut scratch) };
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
    /// Unnormalised outputs, `[rows * rep, d]`.
    acc: Vec<f32>,
    /// Running max and sum of each query vector's scores.
    max: Vec<f32>,
    sum: Vec<f32>,
    scores: Vec<f32>,
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
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let d = s.head_dim;
    let qw = s.n_heads * d;
    let kvw = s.n_kv * d;
    let rep = s.n_heads / s.n_kv;
    let scale = 1.0 / (d as f32).sqrt();
    let rows = it.t1 - it.t0;
    let Scratch {
        acc,
        max,
        sum,
        scores,
        kt,
        k: kbuf,
        v: vbuf,
    } = scratch;
    acc.clear();
    acc.resize(rows * rep * d, 0.0);
    max.clear();
    max.resize(rows * rep, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(rows * rep, 0.0);
    scores.resize(K_BLOCK, 0.0);
    // Query row i (position past + t0 + i) sees keys window_lo(i)..=past + t0 + i.
    let window_lo = |qi: usize| s.sliding_window.map_or(0, |w| (qi + 1).saturating_sub(w));
    let first = window_lo(seq.past + it.t0);
    let end = seq.past + it.t1;
    // The query heads kvh*rep .. kvh*rep+rep are adjacent in a row.
    let qrow = |i: usize, r: usize| {
        let base = (seq.row0 + it.t0 + i) * qw + (it.kvh * rep + r) * d;
        &q[base..base + d]
    };
    let mut k0 = first;
    while k0 < end {
        let k1 = (k0 + K_BLOCK).min(end);
        let (keys, kstride) = seq.k.head_rows(it.kvh, d, kvw, k0, k1, kbuf);
        let (vals, vstride) = seq.v.head_rows(it.kvh, d, kvw, k0, k1, vbuf);
        // This block's keys transposed to [d][K_BLOCK] (zeros past k1): a query's scores are
        // then K_BLOCK-wide multiply-adds, with no horizontal sum per key.
        kt.clear();
        kt.resize(d * K_BLOCK, 0.0);
        for jj in 0..k1 - k0 {
            let kr = &keys[jj * kstride..jj * kstride + d];
            for (c, &x) in kr.iter().enumerate() {
                kt[c * K_BLOCK + jj] = x;
            }
        }
        for i in 0..rows {
            let qi = seq.past + it.t0 + i;
            let lo = window_lo(qi).max(k0);
            let hi = (qi + 1).min(k1);
            if lo >= hi {
                continue;
            }
            for r in 0..rep {
                let qv = qrow(i, r);
                // Accumulated in a local array, which stays in registers over the loop.
                let mut block = [0f32; K_BLOCK];
                for (c, &qc) in qv.iter().enumerate() {
                    let row: &[f32; K_BLOCK] =
                        kt[c * K_BLOCK..(c + 1) * K_BLOCK].try_into().unwrap();
                    for (x, k) in block.iter_mut().zip(row) {
                        *x = qc.mul_add(*k, *x);
                    }
                }
                let full = &mut scores[..K_BLOCK];
                full.copy_from_slice(&block);
                let sc = &mut full[lo - k0..hi - k0];
                sc.iter_mut().for_each(|x| *x *= scale);
                if let Some(m) = seq.key_mask {
                    for (j, x) in (lo..hi).zip(sc.iter_mut()) {
                        if j >= seq.past && !m[j - seq.past] {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                let block_max = crate::math::max(sc);
                if block_max == f32::NEG_INFINITY {
                    continue;
                }
                let vi = i * rep + r;
                let old = max[vi];
                let new = old.max(block_max);
                let a = &mut acc[vi * d..(vi + 1) * d];
                // Rescale what was accumulated under the old max (nothing yet: factor 0).
                let corr = if old == f32::NEG_INFINITY {
                    0.0
                } else {
                    fast_exp(old - new)
                };
                if corr != 1.0 {
                    a.iter_mut().for_each(|x| *x *= corr);
                }
                // Probabilities (unnormalised) in place, then their sum and the weighted values.
                sc.iter_mut().for_each(|x| *x = fast_exp(*x - new));
                let block_sum = crate::math::sum(sc);
                // 16 output dimensions at a time, their sums kept in registers over the keys.
                for c0 in (0..d).step_by(16) {
                    let w = (d - c0).min(16);
                    let mut o = [0f32; 16];
                    o[..w].copy_from_slice(&a[c0..c0 + w]);
                    for (jj, &p) in sc.iter().enumerate() {
                        let vr = (lo - k0 + jj) * vstride + c0;
                        if w == 16 {
                            let v: &[f32; 16] = vals[vr..vr + 16].try_into().unwrap();
                            for (x, v) in o.iter_mut().zip(v) {
                                *x = p.mul_add(*v, *x);
                            }
                        } else {
                            for (x, v) in o.iter_mut().zip(&vals[vr..vr + w]) {
                                *x = p.mul_add(*v, *x);
                            }
                        }
                    }
                    a[c0..c0 + w].copy_from_slice(&o[..w]);
                }
                sum[vi] = sum[vi] * corr + block_sum;
                max[vi] = new;
            }
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
        // head_dim 24: the value sums' partial 16-wide chunk.
        for (case, &(t, past, window, padded, f16, head_dim)) in cases
            .iter()
            .flat_map(|&(t, p, w, m, f)| [(t, p, w, m, f, 16), (t, p, w, m, f, 24)])
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
