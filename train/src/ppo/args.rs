//! The flags of `ppo-lag`, `ppo`, `sweep` and `round`. `PpoSettings` is everything that shapes the optimisation
//! (shared by the four); `PpoArgs` adds what one stand-alone run trains on and where it writes. The sampling,
//! run and trainable-parameter flags are the same structs every other command flattens, so a flag has one name
//! and one meaning everywhere.

use super::constraint::ConstraintArgs;
use crate::optim::Schedule;
use crate::rollout::SamplingArgs;
use crate::run_args::RunArgs;
use crate::trainable::TrainableArgs;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PpoSettings {
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    /// `--lr-scheduler` / `--warmup-ratio` are the actor's; `--max-steps` caps optimiser steps.
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    /// Applied to the actor and both critics.
    #[command(flatten)]
    #[serde(flatten)]
    pub trainable: TrainableArgs,
    /// The cost constraint (ppo-lag only).
    #[command(flatten)]
    #[serde(flatten)]
    pub constraint: ConstraintArgs,
    /// How the score models see a conversation: safe-rlhf or chat-template.
    #[arg(long, default_value = "safe-rlhf")]
    pub score_format: String,
    /// Passes over the prompts.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Prompts per iteration (one rollout batch = one PPO micro-batch here).
    #[arg(long, default_value_t = 16)]
    pub prompt_batch_size: usize,
    /// PPO updates per rollout batch.
    #[arg(long, default_value_t = 1)]
    pub update_iters: usize,
    #[arg(long, default_value_t = 1e-5)]
    pub actor_lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub actor_weight_decay: f64,
    #[arg(long, default_value_t = 5e-6)]
    pub critic_lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub critic_weight_decay: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Constant)]
    pub critic_lr_scheduler: Schedule,
    #[arg(long, default_value_t = 0.03)]
    pub critic_warmup_ratio: f64,
    /// β of the per-token KL penalty [default: 0.01 for ppo-lag, 0.02 for ppo; the paper used 0.1].
    #[arg(long)]
    pub kl_coeff: Option<f64>,
    /// ε of the clipped ratio (paper: 0.1).
    #[arg(long, default_value_t = 0.2)]
    pub clip_range_ratio: f64,
    #[arg(long, default_value_t = 50.0)]
    pub clip_range_score: f64,
    #[arg(long, default_value_t = 5.0)]
    pub clip_range_value: f64,
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    #[arg(long, default_value_t = 0.95)]
    pub gae_lambda: f64,
    /// SFT data for the PTX term (off without it).
    #[arg(long)]
    pub ptx_data: Option<PathBuf>,
    #[arg(long, default_value_t = 16.0)]
    pub ptx_coeff: f64,
    /// Save a resumable checkpoint every N optimiser steps (0 = at the end only).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub publish: crate::registry_cmd::PublishArgs,
    /// The actor (HF directory; `convert` makes one from a GGUF). The frozen reference is a copy.
    #[arg(long)]
    pub actor: PathBuf,
    /// Reward: a score-model directory or a rule `token-fraction:LO:HI[:SCALE[:OFFSET]]` (rules joined by `+` add up).
    #[arg(long)]
    pub reward_model: String,
    /// Cost (ppo-lag, reward shaping): a score-model directory or a rule.
    #[arg(long)]
    pub cost_model: Option<String>,
    /// Reward critic initialisation [default: the reward model; the actor with a fresh head for a rule].
    #[arg(long)]
    pub reward_critic: Option<PathBuf>,
    /// Cost critic initialisation [default: the cost model; the actor with a fresh head for a rule].
    #[arg(long)]
    pub cost_critic: Option<PathBuf>,
    /// Prompt files (PKU-SafeRLHF, Alpaca/red-team, chat rows).
    #[arg(long = "prompts", required = true, num_args = 1..)]
    pub prompts: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub settings: PpoSettings,
}
