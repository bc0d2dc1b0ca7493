//! Causal-LM cross-entropy (SFT, and PPO-Lag's PTX term): the mean over every target token of the batch of
//! `−log softmax(logits[t])[ids[t+1]]`, as transformers computes it with ignored (−100) positions left out.

use tch::{Kind, Tensor};

/// `logprobs` `[B, L−1]` (from `model::gather_logprobs`), `targets` `[B, L−1]` (1 where `ids[t+1]` is a label).
pub fn causal_lm_loss(logprobs: &Tensor, targets: &Tensor) -> Tensor {
    let m = targets.to_kind(logprobs.kind());
    -(logprobs * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
}
