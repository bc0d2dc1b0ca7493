//! Attention on CPU over host buffers: all sequences and heads of a packed batch in one
//! parallel pass (per (sequence, head) work items on candle's thread pool), instead of a
//! dozen small tensor ops per sequence and layer.

/// One sequence's part of the packed batch for one layer.
pub struct HostSeq<'a> {
    /// First row of this sequence in the packed q/output buffers.
    pub row0: usize,
    /// Query rows (new tokens).
    pub t: usize,
    /// Cached positions before these tokens.
    pub past: usize,
    /// Keys/values for positions `0..past+t`, `width` floats per position.
    pub k: &'a [f32],
    pub v: &'a [f32],
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
    let (nh, d) = (s.n_heads, s.head_dim);
    let qw = nh * d;
    let mut out = vec![0f32; n * qw];
    let ptr = OutPtr(out.as_mut_ptr());
    let items = seqs.len() * nh;
    let work = |range: std::ops::Range<usize>| {
        let ptr = &ptr;
        let mut scores = Vec::new();
        for item in range {
            let (si, h) = (item / nh, item % nh);
            let seq = &seqs[si];
            // SAFETY: item (si, h) writes rows row0..row0+t, columns h*d..(h+1)*d only.
            unsafe { head(q, seq, s, h, ptr.0, &mut scores) };
        }
    };
    let flops: usize = seqs.iter().map(|q| q.t * (q.past + q.t)).sum::<usize>() * nh * d;
    if flops < 32_768 {
        work(0..items);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, work);
    }
    out
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

unsafe fn head(
    q: &[f32],
    seq: &HostSeq<'_>,
    s: &Shape,
    h: usize,
    out: *mut f32,
    scores: &mut Vec<f32>,
) {
    let d = s.head_dim;
    let qw = s.n_heads * d;
    let kvw = s.n_kv * d;
    let kvh = h / (s.n_heads / s.n_kv);
    let scale = 1.0 / (d as f32).sqrt();
    for t in 0..seq.t {
        let qi = seq.past + t;
        let lo = s.sliding_window.map_or(0, |w| (qi + 1).saturating_sub(w));
        let qrow = &q[(seq.row0 + t) * qw + h * d..(seq.row0 + t) * qw + (h + 1) * d];
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for pos in lo..=qi {
            let visible = seq
                .key_mask
                .is_none_or(|m| pos < seq.past || m[pos - seq.past]);
            let sc = if visible {
                dot(qrow, &seq.k[pos * kvw + kvh * d..pos * kvw + (kvh + 1) * d]) * scale
            } else {
                f32::NEG_INFINITY
            };
            max = max.max(sc);
            scores.push(sc);
        }
        let o = std::slice::from_raw_parts_mut(out.add((seq.row0 + t) * qw + h * d), d);
        if max == f32::NEG_INFINITY {
            continue; // a padding query with nothing to attend to: its output is unused
        }
        let mut sum = 0f32;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for (j, &p) in scores.iter().enumerate() {
            if p == 0.0 {
                continue;
            }
            let pos = lo + j;
            let vrow = &seq.v[pos * kvw + kvh * d..pos * kvw + (kvh + 1) * d];
            let w = p * inv;
            for (oi, vi) in o.iter_mut().zip(vrow) {
                *oi += w * vi;
            }
        }
    }
}
