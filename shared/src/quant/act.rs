//! Activations quantized to 8 bits per block of 32 (ggml's Q8_0/Q8_1 scheme).

use super::BLOCK;

/// `rows` activation rows, each `cols` values as i8 with one f32 scale per block, plus the
/// block's integer sum times its scale (for the Q4_1 offset term).
pub struct ActQ8 {
    rows: usize,
    cols: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) sd: Vec<f32>,
}

impl ActQ8 {
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % BLOCK, 0);
        let nb = rows * cols / BLOCK;
        let mut qs = vec![0i8; rows * cols];
        let mut d = Vec::with_capacity(nb);
        let mut sd = Vec::with_capacity(nb);
        for (xb, qb) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                let r = (v * inv).round_ties_even() as i32;
                *q = r as i8;
                sum += r;
            }
            d.push(scale);
            sd.push(scale * sum as f32);
        }
        Self {
            rows,
            cols,
            qs,
            d,
            sd,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}
