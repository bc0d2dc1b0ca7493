//! The Safe RLHF objectives (`../shared/docs/SAFE_RLHF_SPEC.md` §2–4) as tch tensor functions. They work in
//! whatever float kind they are given: the trainer runs them in f32, the golden tests in f64.

pub mod dpo;
pub mod gae;
pub mod lagrange;
pub mod ppo;
pub mod preference;
pub mod sft;
pub mod shaping;

use tch::{Kind, Tensor};

/// `mean_b( Σ_t x[b,t]·m[b,t] / Σ_t m[b,t] )`: per-sequence mean first, then across the batch (safe-rlhf PR #154).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind());
    let per_row = (x * &m).sum_dim_intlist(1, false, x.kind())
        / m.sum_dim_intlist(1, false, x.kind()).clamp_min(1.0);
    per_row.mean(x.kind())
}

/// `log σ(x)`, numerically stable.
pub fn log_sigmoid(x: &Tensor) -> Tensor {
    x.log_sigmoid()
}

/// Mean of a boolean tensor as a fraction in [0, 1].
pub fn fraction(b: &Tensor) -> f64 {
    if b.numel() == 0 {
        return f64::NAN;
    }
    b.to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}
