//! What one PPO optimiser step did: one JSONL line of `metrics.jsonl`, one point of the plots. Fields of the cost
//! stream are `null` for plain PPO.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: usize,
    pub actor_loss: f64,
    pub reward_critic_loss: f64,
    pub cost_critic_loss: Option<f64>,
    pub ptx_loss: Option<f64>,
    /// λ used by this step's actor update.
    pub lambda: Option<f64>,
    pub lambda_capped: Option<bool>,
    /// Ĵ_C: the episode-cost window mean λ's update used.
    pub episode_cost: Option<f64>,
    /// The cost threshold d Ĵ_C is held to, and λ's cap (when it has one).
    pub cost_threshold: Option<f64>,
    pub lambda_max: Option<f64>,
    /// Mean end reward / cost of the rollout batch.
    pub reward: f64,
    pub cost: Option<f64>,
    pub reward_with_kl_penalty: f64,
    pub cost_with_kl_penalty: Option<f64>,
    pub reward_advantage: f64,
    pub reward_return: f64,
    pub reward_value: f64,
    pub cost_advantage: Option<f64>,
    pub cost_return: Option<f64>,
    pub kl_divergence: f64,
    /// Share of response tokens whose probability ratio fell outside [1 − ε, 1 + ε] (the actor's
    /// clip), and whose new value left [V_old − ε_v, V_old + ε_v] (each critic's clip).
    pub actor_clip_fraction: f64,
    pub reward_critic_clip_fraction: f64,
    pub cost_critic_clip_fraction: Option<f64>,
    pub actor_lr: f64,
    pub critic_lr: f64,
    pub mean_generated_length: f64,
    pub max_generated_length: usize,
    pub rollout_s: f64,
    pub scoring_s: f64,
    pub training_s: f64,
    pub sync_s: f64,
    /// Tokens the rollout generated, per second of rollout and per second of the whole step.
    pub generated_tokens: usize,
    pub rollout_tokens_per_second: f64,
    pub tokens_per_second: f64,
    /// Mean |engine − actor| behaviour log-prob (float noise unless the weight hand-over broke).
    pub behaviour_logprob_gap: f64,
}
