//! Attention on CPU over host buffers: all sequences and KV heads of a packed batch in one
//! parallel pass (per (sequence, KV head) work items on candle's thread pool), instead of a
//! dozen small tensor ops per sequence and layer. The query heads that share a KV head
//! (GQA) are handled together so each key and value row is read once.

use super::cache::HostBuf;
use crate::math::{dot, fast_exp};

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

/// `q`: `[n, n_heads * d]` packed rows; returns `[n, n_heads * d]`.
pub fn attend(q: &[f32], n: usize, seqs: &[HostSeq<'_>], s: &Shape) -> Vec<f32> {
    let qw = s.n_heads * s.head_dim;
    let mut out = vec![0f32; n * qw];
    let ptr = OutPtr(out.as_mut_ptr());
    let items = seqs.len() * s.n_kv;
    let work = |range: std::ops::Range<usize>| {
        let ptr = &ptr;
        let mut scratch = Scratch::default();
        for item in range {
            let (si, kvh) = (item / s.n_kv, item % s.n_kv);
            // SAFETY: item (si, kvh) writes only rows of sequence si, columns of the query
            // heads served by kvh.
            unsafe { kv_group(q, &seqs[si], s, kvh, ptr.0, &mut scratch) };
        }
    };
    let flops: usize = seqs.iter().map(|q| q.t * (q.past + q.t)).sum::<usize>() * qw;
    if flops < 32_768 {
        work(0..items);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, work);
    }
    out
}

/// Per-thread buffers reused across work items.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

unsafe fn kv_group(
    q: &[f32],
    seq: &HostSeq<'_>,
    s: &Shape,
    kvh: usize,
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let d = s.head_dim;
    let qw = s.n_heads * d;
    let kvw = s.n_kv * d;
    let rep = s.n_heads / s.n_kv;
    let scale = 1.0 / (d as f32).sqrt();
    // Every key row any query of this chunk can see, as f32 with a row stride.
    let first = s
        .sliding_window
        .map_or(0, |w| (seq.past + 1).saturating_sub(w));
    let end = seq.past + seq.t;
    let Scratch {
        scores,
        k: kbuf,
        v: vbuf,
    } = scratch;
    let (keys, kstride) = seq.k.head_rows(kvh, d, kvw, first, end, kbuf);
    let (vals, vstride) = seq.v.head_rows(kvh, d, kvw, first, end, vbuf);
    let key = |pos: usize| &keys[(pos - first) * kstride..(pos - first) * kstride + d];
    let val = |pos: usize| &vals[(pos - first) * vstride..(pos - first) * vstride + d];
    for t in 0..seq.t {
        let qi = seq.past + t;
        let lo = s.sliding_window.map_or(0, |w| (qi + 1).saturating_sub(w));
        let span = qi + 1 - lo;
        let row = seq.row0 + t;
        // scores[r * span + j]: query head kvh*rep + r against key lo + j.
        scores.clear();
        scores.resize(rep * span, f32::NEG_INFINITY);
        for j in 0..span {
            let pos = lo + j;
            if seq
                .key_mask
                .is_some_and(|m| pos >= seq.past && !m[pos - seq.past])
            {
                continue;
            }
            let krow = key(pos);
            for r in 0..rep {
                let h = kvh * rep + r;
                scores[r * span + j] =
                    dot(&q[row * qw + h * d..row * qw + (h + 1) * d], krow) * scale;
            }
        }
        for r in 0..rep {
            let sc = &mut scores[r * span..(r + 1) * span];
            let max = crate::math::max(sc);
            if max == f32::NEG_INFINITY {
                continue; // a padding query with nothing to attend to: its output is unused
            }
            let mut sum = 0f32;
            for x in sc.iter_mut() {
                *x = fast_exp(*x - max);
                sum += *x;
            }
            let inv = 1.0 / sum;
            sc.iter_mut().for_each(|x| *x *= inv);
        }
        for j in 0..span {
            let pos = lo + j;
            let vrow = val(pos);
            for r in 0..rep {
                let p = scores[r * span + j];
                if p == 0.0 {
                    continue;
                }
                let h = kvh * rep + r;
                let o = std::slice::from_raw_parts_mut(out.add(row * qw + h * d), d);
                for (oi, vi) in o.iter_mut().zip(vrow) {
                    *oi = p.mul_add(*vi, *oi);
                }
            }
        }
    }
}
