//! Generalised advantage estimation (§3.5), run separately for the reward and the cost stream.

use tch::Tensor;

/// Advantages and returns over columns `start..T` (`[B, T − start]`), from per-token `rewards` and `values`
/// (`[B, T]`) and the sequence `mask`: both are multiplied by the mask, then for t = T−1 down to `start`
/// `δ_t = r_t + γ·V_{t+1} − V_t` (V_T = 0), `A_t = δ_t + γλ·A_{t+1}` (A_T = 0); returns `G = A + V`.
/// Advantages are detached; no whitening.
pub fn advantages_and_returns(
    values: &Tensor,
    rewards: &Tensor,
    mask: &Tensor,
    start: usize,
    gamma: f64,
    lambda: f64,
) -> (Tensor, Tensor) {
    let m = mask.to_kind(values.kind());
    let values = values.detach() * &m;
    let rewards = rewards.detach() * &m;
    let t_len = values.size()[1];
    let b = values.size()[0];
    let mut next_value = Tensor::zeros([b], (values.kind(), values.device()));
    let mut last_adv = Tensor::zeros([b], (values.kind(), values.device()));
    let mut reversed = Vec::with_capacity((t_len as usize).saturating_sub(start));
    for t in (start as i64..t_len).rev() {
        let v_t = values.select(1, t);
        let delta = rewards.select(1, t) + &next_value * gamma - &v_t;
        last_adv = delta + &last_adv * (gamma * lambda);
        reversed.push(last_adv.shallow_clone());
        next_value = v_t;
    }
    reversed.reverse();
    let advantages = Tensor::stack(&reversed, 1);
    let returns = &advantages + values.narrow(1, start as i64, t_len - start as i64);
    (advantages.detach(), returns.detach())
}
