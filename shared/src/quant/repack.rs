//! Weights repacked sixteen rows at a time for AVX-512 VNNI: lane `r` of every 512-bit vector
//! holds four quants of row `r`, so one `vpdpbusd` advances sixteen output rows by four inputs
//! and the per-block scales are applied as vectors — no horizontal sums, no per-row broadcasts.
//!
//! Every format becomes "unsigned quant × d + m": Q4_1 as stored, Q4_0 with `m = -8·d`,
//! Q8_0 with quants shifted by +128 and `m = -128·d` (exact in f16). Per group of 16 rows and
//! block of 32 inputs the layout is: `d[16]` f16, `m[16]` f16, then the quants —
//! 4-bit: 4 vectors of 64 bytes; lane r byte j of vector v holds element `8v+j` (low nibble)
//! and `8v+4+j` (high nibble) of row r; 8-bit: 8 vectors; lane r byte j of vector v holds
//! element `4v+j`.

use super::{ActQ8, WeightFormat, BLOCK};
use half::f16;

pub const ROWS: usize = 16;
/// Bytes of one quant vector (16 lanes × 4 bytes).
const VEC: usize = ROWS * 4;
/// Bytes of the scales (`d` then `m`, f16 each).
const SCALES: usize = ROWS * 4;

#[derive(Debug, Clone)]
pub struct Repacked {
    pub(crate) bits8: bool,
    pub(crate) groups: usize,
    pub(crate) nb: usize,
    pub(crate) data: Vec<u8>,
}

impl Repacked {
    pub fn group_block_bytes(bits8: bool) -> usize {
        SCALES + VEC * if bits8 { 8 } else { 4 }
    }

    /// Repacks a ggml-layout matrix (`row_bytes` per row).
    pub fn new(format: WeightFormat, data: &[u8], rows: usize, cols: usize) -> Self {
        let nb = cols / BLOCK;
        let bb = format.block_bytes();
        let row_bytes = nb * bb;
        let bits8 = format == WeightFormat::Q8_0;
        let groups = rows.div_ceil(ROWS);
        let gbb = Self::group_block_bytes(bits8);
        let mut out = vec![0u8; groups * nb * gbb];
        for g in 0..groups {
            for k in 0..nb {
                let dst = &mut out[(g * nb + k) * gbb..(g * nb + k + 1) * gbb];
                for r in 0..ROWS {
                    let row = g * ROWS + r;
                    if row >= rows {
                        continue; // padding rows: d = m = 0, quants 0
                    }
                    let blk = &data[row * row_bytes + k * bb..row * row_bytes + (k + 1) * bb];
                    let d = f16::from_le_bytes([blk[0], blk[1]]);
                    // 32 unsigned quants in element order.
                    let mut q = [0u8; 32];
                    let m = match format {
                        WeightFormat::Q4_1 => {
                            for j in 0..16 {
                                q[j] = blk[4 + j] & 0x0F;
                                q[j + 16] = blk[4 + j] >> 4;
                            }
                            f16::from_le_bytes([blk[2], blk[3]])
                        }
                        WeightFormat::Q4_0 => {
                            for j in 0..16 {
                                q[j] = blk[2 + j] & 0x0F;
                                q[j + 16] = blk[2 + j] >> 4;
                            }
                            f16::from_f32(-8.0 * d.to_f32())
                        }
                        WeightFormat::Q8_0 => {
                            for j in 0..32 {
                                q[j] = (blk[2 + j] as i8 as i16 + 128) as u8;
                            }
                            f16::from_f32(-128.0 * d.to_f32())
                        }
                    };
                    dst[2 * r..2 * r + 2].copy_from_slice(&d.to_le_bytes());
                    dst[2 * ROWS + 2 * r..2 * ROWS + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
                    let qd = &mut dst[SCALES..];
                    if bits8 {
                        for v in 0..8 {
                            for j in 0..4 {
                                qd[v * VEC + r * 4 + j] = q[4 * v + j];
                            }
                        }
                    } else {
                        for v in 0..4 {
                            for j in 0..4 {
                                qd[v * VEC + r * 4 + j] = q[8 * v + j] | (q[8 * v + 4 + j] << 4);
                            }
                        }
                    }
                }
            }
        }
        Self {
            bits8,
            groups,
            nb,
            data: out,
        }
    }

    /// Computes output columns `g*16 .. g*16+16` (clipped to `rows`) for every activation row,
    /// writing `out[b * rows + c]`.
    ///
    /// # Safety
    /// `out` must hold `act.rows() * rows` floats; callers give disjoint groups to threads.
    pub unsafe fn group(&self, g: usize, act: &ActQ8, rows: usize, out: *mut f32) {
        let n = act.rows();
        let mut b0 = 0;
        while b0 < n {
            let t = (n - b0).min(4);
            match (t, act.qs2.is_some()) {
                (4, false) => kernel::tile::<4, false>(self, g, act, b0, rows, out),
                (3, false) => kernel::tile::<3, false>(self, g, act, b0, rows, out),
                (2, false) => kernel::tile::<2, false>(self, g, act, b0, rows, out),
                (_, false) => kernel::tile::<1, false>(self, g, act, b0, rows, out),
                (4, true) => kernel::tile::<4, true>(self, g, act, b0, rows, out),
                (3, true) => kernel::tile::<3, true>(self, g, act, b0, rows, out),
                (2, true) => kernel::tile::<2, true>(self, g, act, b0, rows, out),
                (_, true) => kernel::tile::<1, true>(self, g, act, b0, rows, out),
            }
            b0 += t;
        }
    }
}

/// Whether this build has the VNNI kernel (x86-64 with AVX-512 F + VNNI).
pub const AVAILABLE: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx512vnni",
    target_feature = "avx512f",
    target_feature = "f16c",
    target_feature = "fma"
));

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512vnni",
    target_feature = "avx512f",
    target_feature = "f16c",
    target_feature = "fma"
))]
// Tiles index several arrays with the same lane number.
#[allow(clippy::needless_range_loop)]
mod kernel {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn bcast(p: *const i8, word: usize) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(p.add(4 * word) as *const i32))
    }

    #[inline(always)]
    pub unsafe fn tile<const T: usize, const TWO: bool>(
        w: &Repacked,
        g: usize,
        act: &ActQ8,
        b0: usize,
        rows: usize,
        out: *mut f32,
    ) {
        let nb = w.nb;
        let gbb = Repacked::group_block_bytes(w.bits8);
        let base = w.data.as_ptr().add(g * nb * gbb);
        let qs = act.qs.as_ptr();
        let qs2 = act.qs2.as_ref().map_or(std::ptr::null(), |q| q.as_ptr());
        let mut acc = [_mm512_setzero_ps(); T];
        let low = _mm512_set1_epi8(0x0F);
        for k in 0..nb {
            let blk = base.add(k * gbb);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
            let m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(2 * ROWS) as *const __m256i));
            let q = blk.add(SCALES);
            // Weight vectors for this block, as (vector, activation word) pairs.
            let mut wv = [_mm512_setzero_si512(); 8];
            if w.bits8 {
                for (v, x) in wv.iter_mut().enumerate() {
                    *x = _mm512_loadu_si512(q.add(VEC * v) as *const _);
                }
            } else {
                for v in 0..4 {
                    let x = _mm512_loadu_si512(q.add(VEC * v) as *const _);
                    wv[2 * v] = _mm512_and_si512(x, low);
                    wv[2 * v + 1] = _mm512_and_si512(_mm512_srli_epi16(x, 4), low);
                }
            }
            for i in 0..T {
                let ab = (b0 + i) * nb + k;
                let a = qs.add(ab * BLOCK);
                let mut s0 = _mm512_setzero_si512();
                let mut s1 = _mm512_setzero_si512();
                for v in (0..8).step_by(2) {
                    s0 = _mm512_dpbusd_epi32(s0, wv[v], bcast(a, v));
                    s1 = _mm512_dpbusd_epi32(s1, wv[v + 1], bcast(a, v + 1));
                }
                let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                let da = _mm512_set1_ps(*act.d.get_unchecked(ab));
                acc[i] = _mm512_fmadd_ps(s, _mm512_mul_ps(d, da), acc[i]);
                if TWO {
                    let a2 = qs2.add(ab * BLOCK);
                    let mut r0 = _mm512_setzero_si512();
                    let mut r1 = _mm512_setzero_si512();
                    for v in (0..8).step_by(2) {
                        r0 = _mm512_dpbusd_epi32(r0, wv[v], bcast(a2, v));
                        r1 = _mm512_dpbusd_epi32(r1, wv[v + 1], bcast(a2, v + 1));
                    }
                    let r = _mm512_cvtepi32_ps(_mm512_add_epi32(r0, r1));
                    let da2 = _mm512_set1_ps(*act.d2.get_unchecked(ab));
                    acc[i] = _mm512_fmadd_ps(r, _mm512_mul_ps(d, da2), acc[i]);
                }
                acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(*act.sd.get_unchecked(ab)), acc[i]);
            }
        }
        let c0 = g * ROWS;
        let valid = (rows - c0).min(ROWS);
        for i in 0..T {
            let dst = out.add((b0 + i) * rows + c0);
            if valid == ROWS {
                _mm512_storeu_ps(dst, acc[i]);
            } else {
                let mut tmp = [0f32; ROWS];
                _mm512_storeu_ps(tmp.as_mut_ptr(), acc[i]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, valid);
            }
        }
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx512vnni",
    target_feature = "avx512f",
    target_feature = "f16c",
    target_feature = "fma"
)))]
mod kernel {
    use super::*;
    pub unsafe fn tile<const T: usize, const TWO: bool>(
        _: &Repacked,
        _: usize,
        _: &ActQ8,
        _: usize,
        _: usize,
        _: *mut f32,
    ) {
        unreachable!("QuantMatrix only repacks when repack::AVAILABLE")
    }
}
