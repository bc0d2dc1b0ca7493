//! Small numeric helpers written so the compiler vectorizes them (no libm calls in loops).

/// `e^x` for f32 with ~2 ulp error, exact 0 below -87.3 and +inf above 88.7. A branch-free
/// Cephes-style polynomial, so loops over slices vectorize.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_54, 88.722_83);
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 0.166_666_66);
    let p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2^n as 2^(n-1)·2 so n = 128 (x near the top of the range) does not overflow the exponent.
    let scale = f32::from_bits(((n as i32 + 126) as u32) << 23);
    let y = e * scale * 2.0;
    // Underflow to exactly 0 (x = -inf from masks), overflow to inf.
    if x < -87.336_54 {
        0.0
    } else if x > 88.722_83 {
        f32::INFINITY
    } else {
        y
    }
}

/// `ln Σ e^x`.
pub fn log_sum_exp(l: &[f32]) -> f32 {
    let m = max(l);
    if m == f32::NEG_INFINITY {
        return m;
    }
    let mut acc = [0f32; 16];
    let chunks = l.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| fast_exp(x - m)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += fast_exp(c[i] - m);
        }
    }
    (acc.iter().sum::<f32>() + tail).ln() + m
}

pub fn max(l: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = l.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Sum with 16 independent accumulators (vectorizes; the order differs from a serial sum).
#[inline]
pub fn sum(l: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = l.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with 16 independent accumulators.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate_over_the_range() {
        let mut x = -100.0f32;
        while x < 90.0 {
            let (a, b) = (fast_exp(x), x.exp());
            if b.is_finite() && b > 1e-37 {
                assert!((a - b).abs() <= 4.0 * f32::EPSILON * b, "{x}: {a} vs {b}");
            }
            x += 0.0137;
        }
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(-200.0), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(100.0), f32::INFINITY);
    }

    #[test]
    fn log_sum_exp_and_dot_match_naive() {
        let v: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919) % 613) as f32 / 37.0 - 8.0)
            .collect();
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let naive = v.iter().map(|x| (x - m).exp()).sum::<f32>().ln() + m;
        assert!((log_sum_exp(&v) - naive).abs() < 1e-5);
        assert_eq!(max(&v), m);
        let d: f32 = v.iter().zip(&v).map(|(a, b)| a * b).sum();
        assert!((dot(&v, &v) - d).abs() / d < 1e-5);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
    }
}
