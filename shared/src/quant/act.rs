//! Activations quantized per block of 32 values: one int8 level (ggml's Q8 scheme), or two —
//! the value and its quantized residual (`x ≈ d₁q₁ + d₂q₂`, about 15 bits), which keeps the
//! integer kernels close to the exact product at ~2x the dot-product work.

use super::BLOCK;

/// Activation precision of the quantized matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActPrecision {
    /// One int8 level, as llama.cpp and candle do.
    Int8,
    /// Int8 plus an int8 residual.
    Int8x2,
}

/// `rows` activation rows, each `cols` values as i8 with one f32 scale per block, plus the
/// blocks' Σx (as `d·Σq` over the levels, for the Q4_1 offset term).
pub struct ActQ8 {
    rows: usize,
    cols: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) sd: Vec<f32>,
    /// Residual level (Int8x2).
    pub(crate) qs2: Option<Vec<i8>>,
    pub(crate) d2: Vec<f32>,
}

impl ActQ8 {
    pub fn quantize_with(x: &[f32], rows: usize, cols: usize, precision: ActPrecision) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % BLOCK, 0);
        let nb = rows * cols / BLOCK;
        let two = precision == ActPrecision::Int8x2;
        let mut qs = vec![0i8; rows * cols];
        let mut qs2 = if two {
            vec![0i8; rows * cols]
        } else {
            Vec::new()
        };
        let mut d = Vec::with_capacity(nb);
        let mut d2 = Vec::with_capacity(if two { nb } else { 0 });
        let mut sd = Vec::with_capacity(nb);
        let mut resid = [0f32; BLOCK];
        for (b, (xb, qb)) in x
            .chunks_exact(BLOCK)
            .zip(qs.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let xb: &[f32; BLOCK] = xb.try_into().expect("block");
            let (scale, sum) = quantize_block(xb, qb.try_into().expect("block"));
            d.push(scale);
            let mut s = scale * sum as f32;
            if two {
                for j in 0..BLOCK {
                    resid[j] = xb[j] - scale * qb[j] as f32;
                }
                let q2: &mut [i8; BLOCK] = (&mut qs2[b * BLOCK..(b + 1) * BLOCK])
                    .try_into()
                    .expect("block");
                let (scale2, sum2) = quantize_block(&resid, q2);
                d2.push(scale2);
                s += scale2 * sum2 as f32;
            }
            sd.push(s);
        }
        Self {
            rows,
            cols,
            qs,
            d,
            sd,
            qs2: two.then_some(qs2),
            d2,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Quantizes 32 values to i8 with scale `max|x| / 127`; returns the scale and Σq.
#[inline]
fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw"
    ))]
    {
        // SAFETY: the build targets AVX-512 F + BW (cfg above); x and q hold 32 elements.
        unsafe { quantize_block_avx512(x, q) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw"
    )))]
    {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (o, &v) in q.iter_mut().zip(x) {
            let r = (v * inv).round_ties_even() as i32;
            *o = r as i8;
            sum += r;
        }
        (scale, sum)
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw"
))]
#[inline]
unsafe fn quantize_block_avx512(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let a = _mm512_loadu_ps(x.as_ptr());
    let b = _mm512_loadu_ps(x.as_ptr().add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let scale = amax / 127.0;
    let inv = _mm512_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
    // Round to nearest even, as the scalar path does.
    let qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));
    let qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(
        q.as_mut_ptr().add(16) as *mut __m128i,
        _mm512_cvtepi32_epi8(qb),
    );
    (scale, sum)
}
