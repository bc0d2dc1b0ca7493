//! The two register-blocked tiles of the blocked CPU attention (`host_attention`): scores of
//! up to `G_MAX` query vectors against one block of `KB` keys (Q·Kᵀ), and their probabilities
//! times the block's values added to the output accumulators (P·V).
//!
//! Each tile keeps its `G × 64` partial sums in registers across the whole reduction (24 of
//! AVX-512's 32 vector registers at G = 6), so every key or value element loaded from L1 feeds
//! G independent multiply-adds and the FMA units, not their latency, set the pace. One query
//! vector at a time (the previous kernel) left a single dependency chain per 16 lanes.
//! Built for AVX-512 when the target has it, portable loops otherwise.

/// Keys per block.
pub const KB: usize = 64;
/// Query vectors per tile at most (the query heads sharing a KV head, over consecutive rows).
pub const G_MAX: usize = 6;

/// One tile's scores or probabilities: row g, key j of the block.
pub type Tile = [[f32; KB]; G_MAX];

/// `s[g][j] = Σ_c q[g·d + c] · kt[c·KB + j]` for `g < g_n`: `q` holds `g_n` query vectors of
/// `d` elements, `kt` the key block transposed (`[d][KB]`, zeros past its last key).
pub fn scores(g_n: usize, q: &[f32], kt: &[f32], d: usize, s: &mut Tile) {
    assert!((1..=G_MAX).contains(&g_n) && q.len() >= g_n * d && kt.len() >= d * KB);
    match g_n {
        1 => scores_g::<1>(q, kt, d, s),
        2 => scores_g::<2>(q, kt, d, s),
        3 => scores_g::<3>(q, kt, d, s),
        4 => scores_g::<4>(q, kt, d, s),
        5 => scores_g::<5>(q, kt, d, s),
        _ => scores_g::<6>(q, kt, d, s),
    }
}

/// `acc[g·d + c] += Σ_{j<nk} p[g][j] · v[j·v_stride + c]` for `g < g_n`, `c < d`.
pub fn values(
    g_n: usize,
    p: &Tile,
    v: &[f32],
    v_stride: usize,
    nk: usize,
    d: usize,
    acc: &mut [f32],
) {
    assert!((1..=G_MAX).contains(&g_n) && nk <= KB && acc.len() >= g_n * d);
    assert!(nk == 0 || v.len() >= (nk - 1) * v_stride + d);
    match g_n {
        1 => values_g::<1>(p, v, v_stride, nk, d, acc),
        2 => values_g::<2>(p, v, v_stride, nk, d, acc),
        3 => values_g::<3>(p, v, v_stride, nk, d, acc),
        4 => values_g::<4>(p, v, v_stride, nk, d, acc),
        5 => values_g::<5>(p, v, v_stride, nk, d, acc),
        _ => values_g::<6>(p, v, v_stride, nk, d, acc),
    }
}

#[inline(always)]
fn scores_g<const G: usize>(q: &[f32], kt: &[f32], d: usize, s: &mut Tile) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: AVX-512F is enabled for this build (cfg); `scores` checked the lengths.
    unsafe {
        scores_avx512::<G>(q.as_ptr(), kt.as_ptr(), d, s)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        let mut acc = [[0f32; KB]; G];
        for c in 0..d {
            let k: &[f32; KB] = kt[c * KB..(c + 1) * KB].try_into().unwrap();
            for (g, a) in acc.iter_mut().enumerate() {
                let qc = q[g * d + c];
                for (x, k) in a.iter_mut().zip(k) {
                    *x = qc.mul_add(*k, *x);
                }
            }
        }
        s[..G].copy_from_slice(&acc);
    }
}

#[inline(always)]
fn values_g<const G: usize>(
    p: &Tile,
    v: &[f32],
    v_stride: usize,
    nk: usize,
    d: usize,
    acc: &mut [f32],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if d.is_multiple_of(16) {
        let mut c0 = 0;
        // SAFETY: AVX-512F is enabled (cfg); `values` checked that every row j < nk has d
        // elements from its start and that acc holds G rows of d; columns stay below d.
        unsafe {
            while c0 + 64 <= d {
                values_avx512::<G, 4>(p, v.as_ptr(), v_stride, nk, d, acc.as_mut_ptr(), c0);
                c0 += 64;
            }
            while c0 < d {
                values_avx512::<G, 1>(p, v.as_ptr(), v_stride, nk, d, acc.as_mut_ptr(), c0);
                c0 += 16;
            }
        }
        return;
    }
    // Portable: 16 output columns at a time, G sums per column kept over the keys.
    for c0 in (0..d).step_by(16) {
        let w = (d - c0).min(16);
        let mut o = [[0f32; 16]; G];
        for (g, o) in o.iter_mut().enumerate() {
            o[..w].copy_from_slice(&acc[g * d + c0..g * d + c0 + w]);
        }
        for j in 0..nk {
            let row = &v[j * v_stride + c0..j * v_stride + c0 + w];
            for (o, p) in o.iter_mut().zip(p) {
                let pj = p[j];
                for (x, v) in o.iter_mut().zip(row) {
                    *x = pj.mul_add(*v, *x);
                }
            }
        }
        for (g, o) in o.iter().enumerate() {
            acc[g * d + c0..g * d + c0 + w].copy_from_slice(&o[..w]);
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(always)]
unsafe fn scores_avx512<const G: usize>(q: *const f32, kt: *const f32, d: usize, s: &mut Tile) {
    use std::arch::x86_64::*;
    let mut a = [[_mm512_setzero_ps(); 4]; G];
    for c in 0..d {
        let kr = kt.add(c * KB);
        let k = [
            _mm512_loadu_ps(kr),
            _mm512_loadu_ps(kr.add(16)),
            _mm512_loadu_ps(kr.add(32)),
            _mm512_loadu_ps(kr.add(48)),
        ];
        for (g, a) in a.iter_mut().enumerate() {
            let qb = _mm512_set1_ps(*q.add(g * d + c));
            for (a, k) in a.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(qb, *k, *a);
            }
        }
    }
    for (a, s) in a.iter().zip(s.iter_mut()) {
        for (l, a) in a.iter().enumerate() {
            _mm512_storeu_ps(s.as_mut_ptr().add(16 * l), *a);
        }
    }
}

/// Columns `c0 .. c0 + 16·W` of the P·V tile.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // j also addresses the value row
unsafe fn values_avx512<const G: usize, const W: usize>(
    p: &Tile,
    v: *const f32,
    v_stride: usize,
    nk: usize,
    d: usize,
    acc: *mut f32,
    c0: usize,
) {
    use std::arch::x86_64::*;
    let mut a = [[_mm512_setzero_ps(); W]; G];
    for (g, a) in a.iter_mut().enumerate() {
        for (l, a) in a.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(acc.add(g * d + c0 + 16 * l));
        }
    }
    for j in 0..nk {
        let vr = v.add(j * v_stride + c0);
        let mut vv = [_mm512_setzero_ps(); W];
        for (l, x) in vv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(vr.add(16 * l));
        }
        for (g, a) in a.iter_mut().enumerate() {
            let pb = _mm512_set1_ps(p[g][j]);
            for (a, x) in a.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(pb, *x, *a);
            }
        }
    }
    for (g, a) in a.iter().enumerate() {
        for (l, a) in a.iter().enumerate() {
            _mm512_storeu_ps(acc.add(g * d + c0 + 16 * l), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn tiles_match_plain_sums() {
        for d in [16, 24, 64, 80, 128] {
            for g_n in 1..=G_MAX {
                for nk in [1, 17, KB] {
                    let q = vals(g_n * d, 1);
                    let kt = vals(d * KB, 2);
                    let mut s = [[0f32; KB]; G_MAX];
                    scores(g_n, &q, &kt, d, &mut s);
                    for g in 0..g_n {
                        for j in 0..KB {
                            let want: f64 = (0..d)
                                .map(|c| q[g * d + c] as f64 * kt[c * KB + j] as f64)
                                .sum();
                            assert!(
                                (s[g][j] as f64 - want).abs() < 1e-3,
                                "scores d={d} g={g} j={j}"
                            );
                        }
                    }
                    let stride = d + 8;
                    let v = vals(nk * stride, 3);
                    let acc0 = vals(g_n * d, 4);
                    let mut acc = acc0.clone();
                    let mut p = [[0f32; KB]; G_MAX];
                    for (g, row) in p.iter_mut().enumerate() {
                        for (j, x) in row.iter_mut().enumerate() {
                            *x = ((g * 7 + j * 3) % 11) as f32 / 11.0;
                        }
                    }
                    values(g_n, &p, &v, stride, nk, d, &mut acc);
                    for g in 0..g_n {
                        for c in 0..d {
                            let want: f64 = acc0[g * d + c] as f64
                                + (0..nk)
                                    .map(|j| p[g][j] as f64 * v[j * stride + c] as f64)
                                    .sum::<f64>();
                            assert!(
                                (acc[g * d + c] as f64 - want).abs() < 1e-3,
                                "values d={d} g={g} c={c} nk={nk}"
                            );
                        }
                    }
                }
            }
        }
    }
}
