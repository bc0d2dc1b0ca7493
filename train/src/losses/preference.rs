//! Preference-model losses (§2.3–2.5): Bradley–Terry for the reward model, Bradley–Terry plus the two
//! safety-sign terms for the cost model, sequence-wise or token-wise, with the L2 score regulariser; and the
//! ranking / sign accuracies.

use super::{fraction, log_sigmoid};
use tch::{Kind, Tensor};

/// `--loss-type`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LossType {
    /// On end scores (the score at each sequence's last token) — the scripts' default.
    SequenceWise,
    /// On per-token scores from the first differing token to the later end.
    TokenWise,
}

/// A loss split into its parts (all scalars).
#[derive(Debug)]
pub struct LossParts {
    /// What is back-propagated: `loss + l2`.
    pub total: Tensor,
    /// The ranking (and, for costs, sign) terms.
    pub loss: Tensor,
    /// `reg · mean(concat(s_w², s_l²))`.
    pub l2: Tensor,
}

/// `reg · mean(concat(a², b²))`.
pub fn l2_term(a: &Tensor, b: &Tensor, reg: f64) -> Tensor {
    Tensor::cat(&[a.square(), b.square()], 0).mean(a.kind()) * reg
}

/// Sequence-wise reward loss: `mean −logσ(r_w − r_l)` + L2.
pub fn reward_bt(r_w: &Tensor, r_l: &Tensor, reg: f64) -> LossParts {
    let loss = (-log_sigmoid(&(r_w - r_l))).mean(r_w.kind());
    let l2 = l2_term(r_w, r_l, reg);
    LossParts {
        total: &loss + &l2,
        loss,
        l2,
    }
}

/// κ = cost sign: +1 for an unsafe response, −1 for a safe one (`−safety_sign`).
pub fn cost_sign(is_safe: &[bool], like: &Tensor) -> Tensor {
    let v: Vec<f64> = is_safe
        .iter()
        .map(|&s| if s { -1.0 } else { 1.0 })
        .collect();
    Tensor::from_slice(&v)
        .to_kind(like.kind())
        .to_device(like.device())
}

/// Sequence-wise cost loss: `mean[−logσ(c_h − c_l) − logσ(κ_l·c_l) − logσ(κ_h·c_h)]` + L2, with c_h the cost of the
/// less safe response and c_l of the safer one.
pub fn cost_bt(c_h: &Tensor, c_l: &Tensor, k_h: &Tensor, k_l: &Tensor, reg: f64) -> LossParts {
    let per_pair =
        -log_sigmoid(&(c_h - c_l)) - log_sigmoid(&(k_l * c_l)) - log_sigmoid(&(k_h * c_h));
    let loss = per_pair.mean(c_h.kind());
    let l2 = l2_term(c_h, c_l, reg);
    LossParts {
        total: &loss + &l2,
        loss,
        l2,
    }
}

/// The token span `[d, e]` a token-wise loss covers for one pair: d = first index where the two id rows differ,
/// e = the later of the two end indices.
pub fn divergence_span(ids_a: &[i64], ids_b: &[i64], end_a: usize, end_b: usize) -> (usize, usize) {
    let e = end_a.max(end_b);
    let d = ids_a
        .iter()
        .zip(ids_b)
        .take(e + 1)
        .position(|(a, b)| a != b)
        .unwrap_or(e);
    (d.min(e), e)
}

/// Token-wise reward loss: per pair `mean_{t∈[d,e]} −logσ(S_w[t] − S_l[t])`, then mean over pairs; the L2 term over
/// the same slices. `spans[b] = (d, e)`.
pub fn reward_bt_tokenwise(
    s_w: &Tensor,
    s_l: &Tensor,
    spans: &[(usize, usize)],
    reg: f64,
) -> LossParts {
    let kind = s_w.kind();
    let mut losses = Vec::with_capacity(spans.len());
    let mut l2s = Vec::with_capacity(spans.len());
    for (b, &(d, e)) in spans.iter().enumerate() {
        let n = (e + 1 - d) as i64;
        let w = s_w.get(b as i64).narrow(0, d as i64, n);
        let l = s_l.get(b as i64).narrow(0, d as i64, n);
        losses.push((-log_sigmoid(&(&w - &l))).mean(kind));
        l2s.push(l2_term(&w, &l, reg));
    }
    let loss = Tensor::stack(&losses, 0).mean(kind);
    let l2 = Tensor::stack(&l2s, 0).mean(kind);
    LossParts {
        total: &loss + &l2,
        loss,
        l2,
    }
}

/// Token-wise cost loss: the three cost terms each averaged over t ∈ [d, e] with per-token costs.
pub fn cost_bt_tokenwise(
    s_h: &Tensor,
    s_l: &Tensor,
    k_h: &Tensor,
    k_l: &Tensor,
    spans: &[(usize, usize)],
    reg: f64,
) -> LossParts {
    let kind = s_h.kind();
    let mut losses = Vec::with_capacity(spans.len());
    let mut l2s = Vec::with_capacity(spans.len());
    for (b, &(d, e)) in spans.iter().enumerate() {
        let (bi, n) = (b as i64, (e + 1 - d) as i64);
        let h = s_h.get(bi).narrow(0, d as i64, n);
        let l = s_l.get(bi).narrow(0, d as i64, n);
        let rank = (-log_sigmoid(&(&h - &l))).mean(kind);
        let sign_l = (-log_sigmoid(&(&l * k_l.get(bi)))).mean(kind);
        let sign_h = (-log_sigmoid(&(&h * k_h.get(bi)))).mean(kind);
        losses.push(rank + sign_l + sign_h);
        l2s.push(l2_term(&h, &l, reg));
    }
    let loss = Tensor::stack(&losses, 0).mean(kind);
    let l2 = Tensor::stack(&l2s, 0).mean(kind);
    LossParts {
        total: &loss + &l2,
        loss,
        l2,
    }
}

/// Ranking accuracy: the fraction of pairs where the preferred side scores higher (reward: better > worse;
/// cost: unsafer > safer).
pub fn ranking_accuracy(higher: &Tensor, lower: &Tensor) -> f64 {
    fraction(&higher.gt_tensor(lower))
}

/// Sign accuracy over responses: the fraction with `κ·c > 0` (cost positive on unsafe, negative on safe).
pub fn sign_accuracy(costs: &Tensor, kappa: &Tensor) -> f64 {
    fraction(&(costs * kappa).gt(0.0))
}

/// Scalar value of a 0-d tensor.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}
