//! Per-token rewards and costs (§3.4): the KL estimate `k_t = logp_old[t] − logp_ref[t]` enters the reward stream
//! as −β·k_t and the cost stream as +β·k_t; the end score is added at each sequence's last real step; both are
//! then clamped to ±clip.

use tch::{Kind, Tensor};

/// `[t == end[b]]` as a `[B, T]` tensor of the mask's float kind, `end[b]` = last index with `mask == 1`.
pub fn end_one_hot(mask: &Tensor, kind: Kind) -> Tensor {
    let t = mask.size()[1];
    let ar = Tensor::arange(t, (Kind::Int64, mask.device()));
    let end = (mask.to_kind(Kind::Int64) * &ar).argmax(1, true);
    ar.unsqueeze(0).eq_tensor(&end).to_kind(kind)
}

/// `(rewards, costs)`, each `[B, T]`: `clamp(−β·k + [t=e]·R)` and `clamp(+β·k + [t=e]·C)`. `end_costs = None` for
/// plain PPO (reward stream only; the returned cost stream is then just +β·k clamped, unused).
pub fn per_token(
    logp_old: &Tensor,
    logp_ref: &Tensor,
    mask: &Tensor,
    end_rewards: &Tensor,
    end_costs: Option<&Tensor>,
    beta: f64,
    clip: f64,
) -> (Tensor, Option<Tensor>) {
    let kl = logp_old - logp_ref;
    let at_end = end_one_hot(mask, logp_old.kind());
    let rewards = (-&kl * beta + &at_end * end_rewards.unsqueeze(1)).clamp(-clip, clip);
    let costs = end_costs.map(|c| (&kl * beta + &at_end * c.unsqueeze(1)).clamp(-clip, clip));
    (rewards, costs)
}
