//! The clipped PPO objectives (§3.7–3.8): the actor's surrogate on a given advantage, and the clipped value loss
//! of each critic. PPO-Lag only changes the advantage it passes in (`lagrange::combine_advantages`).

use super::masked_mean;
use tch::Tensor;

/// `−masked_mean(min(A·ρ, A·clip(ρ, 1−ε, 1+ε)), mask)` with `ρ = exp(logp_new − logp_old)`.
pub fn actor_loss(
    logp_new: &Tensor,
    logp_old: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Tensor {
    let ratio = (logp_new - logp_old).exp();
    let surr1 = advantages * &ratio;
    let surr2 = advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
    -masked_mean(&surr1.minimum(&surr2), mask)
}

/// Share of the masked tokens whose ratio `exp(logp_new − logp_old)` is outside `[1 − clip, 1 + clip]`.
pub fn ratio_clip_fraction(logp_new: &Tensor, logp_old: &Tensor, mask: &Tensor, clip: f64) -> f64 {
    let ratio = (logp_new - logp_old).exp();
    let outside = (ratio - 1.0).abs().gt(clip).to_kind(tch::Kind::Float);
    masked_mean(&outside, mask).double_value(&[])
}

/// Share of the masked tokens whose value moved more than `clip` from the old value.
pub fn value_clip_fraction(values: &Tensor, old_values: &Tensor, mask: &Tensor, clip: f64) -> f64 {
    let outside = (values - old_values)
        .abs()
        .gt(clip)
        .to_kind(tch::Kind::Float);
    masked_mean(&outside, mask).double_value(&[])
}

/// `0.5 · masked_mean(max((V − G)², (V_clip − G)²), mask)`, `V_clip = clamp(V, V_old − ε_v, V_old + ε_v)`.
pub fn critic_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Tensor {
    let clipped = values.clamp_tensor(Some(old_values - clip), Some(old_values + clip));
    let l1 = (values - returns).square();
    let l2 = (clipped - returns).square();
    masked_mean(&l1.maximum(&l2), mask) * 0.5
}
