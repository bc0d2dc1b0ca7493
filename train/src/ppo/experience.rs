//! One rollout batch turned into training tensors (spec §3.3–3.5): sequences `[left-padded prompt | response |
//! right pad]`, so every row's prompt ends at column S−1 (`start`); behaviour log-probs recomputed by the tch
//! actor, reference log-probs, critic values, per-token rewards/costs, and GAE for each stream.

use crate::losses::{gae, shaping};
use crate::model::{Batch, Model};
use crate::rollout::Generated;
use tch::{Device, Kind, Tensor};

pub struct Experience {
    pub batch: Batch,
    /// Column of the last prompt token (S − 1).
    pub start: i64,
    /// `attention_mask[:, 1:]`.
    pub mask: Tensor,
    pub logp_old: Tensor,
    pub logp_ref: Tensor,
    pub reward_values: Tensor,
    pub cost_values: Option<Tensor>,
    pub reward_adv: Tensor,
    pub reward_returns: Tensor,
    pub cost_adv: Option<Tensor>,
    pub cost_returns: Option<Tensor>,
    /// Per-token streams after shaping (for the logged "with KL penalty" sums).
    pub rewards_tok: Tensor,
    pub costs_tok: Option<Tensor>,
}

/// Sequences of a batch: prompts left-padded to the longest prompt, responses appended, then right-padded.
pub fn collate(episodes: &[Generated], pad: i64, device: Device) -> (Batch, i64) {
    let s = episodes
        .iter()
        .map(|e| e.prompt_ids.len())
        .max()
        .unwrap_or(1);
    let len = episodes.iter().map(|e| s + e.ids.len()).max().unwrap_or(s);
    let (mut ids, mut mask) = (
        Vec::with_capacity(episodes.len() * len),
        Vec::with_capacity(episodes.len() * len),
    );
    for e in episodes {
        let lp = s - e.prompt_ids.len();
        let rp = len - s - e.ids.len();
        ids.extend(std::iter::repeat_n(pad, lp));
        mask.extend(std::iter::repeat_n(0i64, lp));
        ids.extend(e.prompt_ids.iter().chain(&e.ids).map(|&t| t as i64));
        mask.extend(std::iter::repeat_n(1i64, e.prompt_ids.len() + e.ids.len()));
        ids.extend(std::iter::repeat_n(pad, rp));
        mask.extend(std::iter::repeat_n(0i64, rp));
    }
    let shape = [episodes.len() as i64, len as i64];
    let batch = Batch {
        ids: Tensor::from_slice(&ids).view(shape).to(device),
        mask: Tensor::from_slice(&mask).view(shape).to(device),
    };
    (batch, s as i64 - 1)
}

/// Critic values `V[:, :-1]` (`[B, L−1]`).
pub fn values(critic: &Model, batch: &Batch) -> Tensor {
    let scores = crate::device::autocast(critic.device(), || critic.forward(batch)).select(2, 0);
    let l = scores.size()[1];
    scores.narrow(1, 0, l - 1)
}

/// Settings of the per-token shaping and GAE.
pub struct Shaping {
    pub kl_coeff: f64,
    pub clip_range_score: f64,
    pub gamma: f64,
    pub gae_lambda: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    actor: &Model,
    reference: &Model,
    reward_critic: &Model,
    cost_critic: Option<&Model>,
    episodes: &[Generated],
    end_rewards: &[f64],
    end_costs: Option<&[f64]>,
    pad: i64,
    shaping_cfg: &Shaping,
) -> Experience {
    let _g = tch::no_grad_guard();
    let device = actor.device();
    let (batch, start) = collate(episodes, pad, device);
    let logp_old = crate::device::autocast(device, || actor.token_logprobs(&batch));
    let logp_ref = crate::device::autocast(device, || reference.token_logprobs(&batch));
    let reward_values = values(reward_critic, &batch);
    let cost_values = cost_critic.map(|c| values(c, &batch));
    let l = batch.mask.size()[1];
    let mask = batch.mask.narrow(1, 1, l - 1);
    let r = Tensor::from_slice(end_rewards)
        .to_kind(Kind::Float)
        .to(device);
    let c = end_costs.map(|c| Tensor::from_slice(c).to_kind(Kind::Float).to(device));
    let (rewards_tok, costs_tok) = shaping::per_token(
        &logp_old,
        &logp_ref,
        &mask,
        &r,
        c.as_ref(),
        shaping_cfg.kl_coeff,
        shaping_cfg.clip_range_score,
    );
    let s = start as usize;
    let (reward_adv, reward_returns) = gae::advantages_and_returns(
        &reward_values,
        &rewards_tok,
        &mask,
        s,
        shaping_cfg.gamma,
        shaping_cfg.gae_lambda,
    );
    let (cost_adv, cost_returns) = match (&cost_values, &costs_tok) {
        (Some(v), Some(ct)) => {
            let (a, g) = gae::advantages_and_returns(
                v,
                ct,
                &mask,
                s,
                shaping_cfg.gamma,
                shaping_cfg.gae_lambda,
            );
            (Some(a), Some(g))
        }
        _ => (None, None),
    };
    Experience {
        batch,
        start,
        mask,
        logp_old,
        logp_ref,
        reward_values,
        cost_values,
        reward_adv,
        reward_returns,
        cost_adv,
        cost_returns,
        rewards_tok,
        costs_tok,
    }
}

impl Experience {
    /// Columns from `start` on (`[B, L−1−start]`).
    pub fn tail(&self, t: &Tensor) -> Tensor {
        let l = t.size()[1];
        t.narrow(1, self.start, l - self.start)
    }

    /// `mean_b Σ_t x·M` over the response mask.
    pub fn masked_sum_mean(&self, x: &Tensor) -> f64 {
        let m = self.tail(&self.mask).to_kind(Kind::Float);
        (self.tail(x) * m)
            .sum_dim_intlist(1, false, Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }
}

/// Mean |engine log-prob − actor log-prob| over the sampled tokens: how far the serving engine's sampling
/// distribution is from the tch actor's (should be float noise; a jump means the weight hand-over broke).
pub fn behaviour_gap(exp: &Experience, episodes: &[Generated]) -> f64 {
    let tail = exp
        .tail(&exp.logp_old)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu);
    let (mut sum, mut n) = (0.0, 0usize);
    for (b, e) in episodes.iter().enumerate() {
        let row = Vec::<f64>::try_from(tail.get(b as i64)).unwrap_or_default();
        for (j, &lp) in e.logprobs.iter().enumerate() {
            if let Some(&t) = row.get(j) {
                sum += (lp as f64 - t).abs();
                n += 1;
            }
        }
    }
    sum / n.max(1) as f64
}
