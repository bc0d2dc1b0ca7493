//! DPO (§4): `−logσ(β[(lp_w − lpref_w) − (lp_l − lpref_l)])`, with each lp the sum of token log-probs over the
//! response span [d, end] of a pair.

use super::log_sigmoid;
use tch::Tensor;

/// Returns `(loss, reward_w, reward_l)` (mean loss; per-pair implicit rewards β·(lp − lpref)).
pub fn dpo_loss(
    lp_w: &Tensor,
    lp_l: &Tensor,
    ref_w: &Tensor,
    ref_l: &Tensor,
    beta: f64,
) -> (Tensor, Tensor, Tensor) {
    let rw = (lp_w - ref_w) * beta;
    let rl = (lp_l - ref_l) * beta;
    let loss = (-log_sigmoid(&(&rw - &rl))).mean(lp_w.kind());
    (loss, rw.detach(), rl.detach())
}
