//! Dot products of one weight row with a tile of quantized activation rows.
//! AVX2 (+ VNNI where the build targets it) with a portable scalar fallback that defines
//! the arithmetic: per block, `d_w·d_a·Σ q_w·q_a` (+ `m_w·d_a·Σ q_a` for Q4_1).

use super::{ActQ8, WeightFormat, BLOCK};
use half::f16;

/// `dst[b] = w · act[b]` for every activation row `b`.
pub fn row_times_acts(format: WeightFormat, w: &[u8], nb: usize, act: &ActQ8, dst: &mut [f32]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the build targets AVX2 + FMA (checked by cfg above).
        unsafe { avx::row_times_acts(format, w, nb, act, dst) };
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    scalar_row_times_acts(format, w, nb, act, dst);
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The reference definition (also the fallback on targets without AVX2).
pub fn scalar_row_times_acts(
    format: WeightFormat,
    w: &[u8],
    nb: usize,
    act: &ActQ8,
    dst: &mut [f32],
) {
    let bb = format.block_bytes();
    for (b, out) in dst.iter_mut().enumerate() {
        let mut acc = 0f32;
        for k in 0..nb {
            let blk = &w[k * bb..(k + 1) * bb];
            let a = &act.qs[(b * nb + k) * BLOCK..(b * nb + k + 1) * BLOCK];
            let da = act.d[b * nb + k];
            let (dot, dw, m) = match format {
                WeightFormat::Q4_1 => {
                    let qs = &blk[4..20];
                    let mut s = 0i32;
                    for j in 0..16 {
                        s += (qs[j] & 0x0F) as i32 * a[j] as i32;
                        s += (qs[j] >> 4) as i32 * a[j + 16] as i32;
                    }
                    (s, f16_at(blk, 0), f16_at(blk, 2))
                }
                WeightFormat::Q4_0 => {
                    let qs = &blk[2..18];
                    let mut s = 0i32;
                    for j in 0..16 {
                        s += ((qs[j] & 0x0F) as i32 - 8) * a[j] as i32;
                        s += ((qs[j] >> 4) as i32 - 8) * a[j + 16] as i32;
                    }
                    (s, f16_at(blk, 0), 0.0)
                }
                WeightFormat::Q8_0 => {
                    let qs = &blk[2..34];
                    let s: i32 = qs
                        .iter()
                        .zip(a)
                        .map(|(&q, &x)| q as i8 as i32 * x as i32)
                        .sum();
                    (s, f16_at(blk, 0), 0.0)
                }
            };
            let mut level = da * dot as f32;
            if let Some(qs2) = &act.qs2 {
                let a2 = &qs2[(b * nb + k) * BLOCK..(b * nb + k + 1) * BLOCK];
                let dot2: i32 = match format {
                    WeightFormat::Q4_1 => (0..16)
                        .map(|j| {
                            (blk[4 + j] & 0x0F) as i32 * a2[j] as i32
                                + (blk[4 + j] >> 4) as i32 * a2[j + 16] as i32
                        })
                        .sum(),
                    WeightFormat::Q4_0 => (0..16)
                        .map(|j| {
                            ((blk[2 + j] & 0x0F) as i32 - 8) * a2[j] as i32
                                + ((blk[2 + j] >> 4) as i32 - 8) * a2[j + 16] as i32
                        })
                        .sum(),
                    WeightFormat::Q8_0 => blk[2..34]
                        .iter()
                        .zip(a2)
                        .map(|(&q, &x)| q as i8 as i32 * x as i32)
                        .sum(),
                };
                level += act.d2[b * nb + k] * dot2 as f32;
            }
            acc += dw * level + m * act.sd[b * nb + k];
        }
        *out = acc;
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
// Tiles index several arrays with the same lane number.
#[allow(clippy::needless_range_loop)]
mod avx {
    use super::*;
    use std::arch::x86_64::*;

    /// Activation rows handled together per pass over the weight row.
    const TILE: usize = 4;

    pub unsafe fn row_times_acts(
        format: WeightFormat,
        w: &[u8],
        nb: usize,
        act: &ActQ8,
        dst: &mut [f32],
    ) {
        let n = dst.len();
        let mut b0 = 0;
        while b0 < n {
            let left = n - b0;
            match left.min(TILE) {
                4 => tile::<4>(format, w, nb, act, b0, &mut dst[b0..b0 + 4]),
                3 => tile::<3>(format, w, nb, act, b0, &mut dst[b0..b0 + 3]),
                2 => tile::<2>(format, w, nb, act, b0, &mut dst[b0..b0 + 2]),
                _ => tile::<1>(format, w, nb, act, b0, &mut dst[b0..b0 + 1]),
            }
            b0 += TILE.min(left);
        }
    }

    /// Σ over 4-byte groups of u8·i8 products, as 8 i32 lanes.
    #[inline(always)]
    unsafe fn dot_u8_i8(w: __m256i, a: __m256i) -> __m256i {
        #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
        {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
        }
        #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
        {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(raw, m);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn tile<const T: usize>(
        format: WeightFormat,
        w: &[u8],
        nb: usize,
        act: &ActQ8,
        b0: usize,
        dst: &mut [f32],
    ) {
        let bb = format.block_bytes();
        let wp = w.as_ptr();
        let qs = act.qs.as_ptr();
        let qs2 = act.qs2.as_ref().map_or(std::ptr::null(), |q| q.as_ptr());
        let mut acc = [_mm256_setzero_ps(); T];
        let mut macc = [0f32; T];
        for k in 0..nb {
            let blk = wp.add(k * bb);
            let dw = f16::from_le_bytes([*blk, *blk.add(1)]).to_f32();
            match format {
                WeightFormat::Q4_1 => {
                    let m = f16::from_le_bytes([*blk.add(2), *blk.add(3)]).to_f32();
                    let wv = unpack_nibbles(blk.add(4));
                    for i in 0..T {
                        let ab = (b0 + i) * nb + k;
                        let a = _mm256_loadu_si256(qs.add(ab * BLOCK) as *const __m256i);
                        let p = _mm256_cvtepi32_ps(dot_u8_i8(wv, a));
                        if !qs2.is_null() {
                            let a2 = _mm256_loadu_si256(qs2.add(ab * BLOCK) as *const __m256i);
                            let p2 = _mm256_cvtepi32_ps(dot_u8_i8(wv, a2));
                            acc[i] = _mm256_fmadd_ps(
                                p2,
                                _mm256_set1_ps(dw * *act.d2.get_unchecked(ab)),
                                acc[i],
                            );
                        }
                        acc[i] = _mm256_fmadd_ps(
                            p,
                            _mm256_set1_ps(dw * *act.d.get_unchecked(ab)),
                            acc[i],
                        );
                        macc[i] += m * *act.sd.get_unchecked(ab);
                    }
                }
                WeightFormat::Q4_0 | WeightFormat::Q8_0 => {
                    let wv = if format == WeightFormat::Q4_0 {
                        _mm256_sub_epi8(unpack_nibbles(blk.add(2)), _mm256_set1_epi8(8))
                    } else {
                        _mm256_loadu_si256(blk.add(2) as *const __m256i)
                    };
                    // Signed × signed via |w| · (a with w's sign).
                    let wabs = _mm256_sign_epi8(wv, wv);
                    for i in 0..T {
                        let ab = (b0 + i) * nb + k;
                        let a = _mm256_loadu_si256(qs.add(ab * BLOCK) as *const __m256i);
                        let p = _mm256_cvtepi32_ps(dot_u8_i8(wabs, _mm256_sign_epi8(a, wv)));
                        if !qs2.is_null() {
                            let a2 = _mm256_loadu_si256(qs2.add(ab * BLOCK) as *const __m256i);
                            let p2 = _mm256_cvtepi32_ps(dot_u8_i8(wabs, _mm256_sign_epi8(a2, wv)));
                            acc[i] = _mm256_fmadd_ps(
                                p2,
                                _mm256_set1_ps(dw * *act.d2.get_unchecked(ab)),
                                acc[i],
                            );
                        }
                        acc[i] = _mm256_fmadd_ps(
                            p,
                            _mm256_set1_ps(dw * *act.d.get_unchecked(ab)),
                            acc[i],
                        );
                    }
                }
            }
        }
        for i in 0..T {
            dst[i] = hsum(acc[i]) + macc[i];
        }
    }
}
