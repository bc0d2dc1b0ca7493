//! PPO on a scored rollout batch (spec §3.3–3.5): experience (behaviour and reference log-probs, values, GAE),
//! then `update_iters` optimiser steps of the clipped actor loss (plus the PTX term when configured) and the
//! reward critic. With a `CostConstraint` (PPO-Lag) the cost stream gets its own critic and λ mixes the
//! advantages; with reward shaping a fixed ν·C is folded into the reward. Nothing else differs.

use super::args::PpoSettings;
use super::constraint::CostConstraint;
use super::experience::{self, Experience, Shaping};
use super::record::StepRecord;
use crate::losses::ppo::{actor_loss, critic_loss, ratio_clip_fraction, value_clip_fraction};
use crate::model::Model;
use crate::optim::{AdamW, LrSchedule};
use crate::rollout::Generated;
use crate::sft::SftExample;
use anyhow::Result;
use serde_json::json;
use std::path::Path;

/// What the actor optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// PPO-Lagrangian: reward subject to E[cost] ≤ d.
    PpoLag,
    /// PPO on the reward alone.
    Ppo,
    /// PPO on reward − ν·cost (fixed ν).
    RewardShaping(f64),
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::PpoLag => "ppo-lag",
            Objective::Ppo => "ppo",
            Objective::RewardShaping(_) => "ppo (reward shaping)",
        }
    }

    pub fn uses_cost(self) -> bool {
        self != Objective::Ppo
    }

    /// β of the KL penalty unless `--kl-coeff` is given.
    pub fn default_kl_coeff(self) -> f64 {
        if self == Objective::PpoLag {
            0.01
        } else {
            0.02
        }
    }
}

/// The models a run trains: the actor, its frozen reference, the reward critic and (PPO-Lag) the cost critic.
pub struct Models {
    pub actor: Model,
    pub reference: Model,
    pub reward_critic: Model,
    pub cost_critic: Option<Model>,
}

pub struct Trainer {
    pub actor: Model,
    reference: Model,
    pub reward_critic: Model,
    actor_opt: AdamW,
    reward_critic_opt: AdamW,
    pub constraint: Option<CostConstraint>,
    actor_sched: LrSchedule,
    critic_sched: LrSchedule,
    shaping: Shaping,
    objective: Objective,
    ptx: Vec<SftExample>,
    pad: i64,
    settings: PpoSettings,
    pub global_step: u64,
}

impl Trainer {
    pub fn new(
        settings: &PpoSettings,
        objective: Objective,
        models: Models,
        total_steps: u64,
        ptx: Vec<SftExample>,
        pad: i64,
    ) -> Self {
        let s = settings;
        let constraint = models
            .cost_critic
            .map(|c| CostConstraint::new(c, s.critic_weight_decay, &s.constraint));
        Self {
            actor_opt: AdamW::new(models.actor.trainable(), s.actor_weight_decay),
            reward_critic_opt: AdamW::new(models.reward_critic.trainable(), s.critic_weight_decay),
            actor: models.actor,
            reference: models.reference,
            reward_critic: models.reward_critic,
            constraint,
            actor_sched: s.run.schedule(s.actor_lr, total_steps),
            critic_sched: LrSchedule::new(
                s.critic_lr,
                s.critic_lr_scheduler,
                s.critic_warmup_ratio,
                total_steps,
            ),
            shaping: Shaping {
                kl_coeff: s.kl_coeff.unwrap_or(objective.default_kl_coeff()),
                clip_range_score: s.clip_range_score,
                gamma: s.gamma,
                gae_lambda: s.gae_lambda,
            },
            objective,
            ptx,
            pad,
            settings: s.clone(),
            global_step: 0,
        }
    }

    /// Trains on one scored rollout batch (`update_iters` optimiser steps) and returns the last step's record
    /// (timings are the caller's to fill in).
    pub fn train_batch(
        &mut self,
        episodes: &[Generated],
        rewards: &[f64],
        costs: Option<&[f64]>,
        epoch: usize,
    ) -> StepRecord {
        let end_rewards: Vec<f64> = match (self.objective, costs) {
            (Objective::RewardShaping(nu), Some(c)) => {
                rewards.iter().zip(c).map(|(r, c)| r - nu * c).collect()
            }
            _ => rewards.to_vec(),
        };
        let cost_stream = match &mut self.constraint {
            Some(k) => {
                let c = costs.expect("PPO-Lag scores every episode's cost");
                k.record_costs(c);
                Some(c)
            }
            None => None,
        };
        let exp = experience::build(
            &self.actor,
            &self.reference,
            &self.reward_critic,
            self.constraint.as_ref().map(|k| &k.critic),
            episodes,
            &end_rewards,
            cost_stream,
            self.pad,
            &self.shaping,
        );
        let mut rec = StepRecord::default();
        for _ in 0..self.settings.update_iters {
            rec = self.optimiser_step(&exp, episodes);
        }
        rec.epoch = epoch;
        rec.reward = mean(rewards);
        rec.cost = costs.map(mean);
        rec
    }

    fn optimiser_step(&mut self, exp: &Experience, episodes: &[Generated]) -> StepRecord {
        let s = &self.settings;
        let step = self.global_step;
        let m = exp.tail(&exp.mask);
        // λ first, from the window (spec §3.6), then the actor with λ fixed.
        let lambda_step = self.constraint.as_mut().and_then(|k| k.update_lambda(step));
        let adv = match (&self.constraint, &exp.cost_adv) {
            (Some(k), Some(ca)) => k.advantage(&exp.reward_adv, ca),
            _ => exp.reward_adv.shallow_clone(),
        };
        self.actor_opt.zero_grad();
        let device = self.actor.device();
        let logp_new = crate::device::autocast(device, || self.actor.token_logprobs(&exp.batch));
        let a_loss = actor_loss(
            &exp.tail(&logp_new),
            &exp.tail(&exp.logp_old),
            &adv,
            &m,
            s.clip_range_ratio,
        );
        let actor_clip_fraction = tch::no_grad(|| {
            ratio_clip_fraction(
                &exp.tail(&logp_new),
                &exp.tail(&exp.logp_old),
                &m,
                s.clip_range_ratio,
            )
        });
        let ptx_loss = if self.ptx.is_empty() {
            a_loss.backward();
            None
        } else {
            // One optimiser step over the RL micro-batch and a PTX micro-batch: ½(∇L_actor + c·∇L_ptx).
            (&a_loss * 0.5).backward();
            let k = (step as usize * s.prompt_batch_size) % self.ptx.len();
            let sel: Vec<&SftExample> = (0..s.prompt_batch_size)
                .map(|i| &self.ptx[(k + i) % self.ptx.len()])
                .collect();
            let (b, targets) = crate::sft::collate(&sel, self.pad, device);
            let l = crate::losses::sft::causal_lm_loss(&self.actor.token_logprobs(&b), &targets);
            (&l * (0.5 * s.ptx_coeff)).backward();
            Some(l.double_value(&[]))
        };
        self.actor_opt.clip_grad_norm(s.run.max_grad_norm);
        let actor_lr = self.actor_sched.at(step);
        self.actor_opt.step(actor_lr);
        // Critics, each with its own step.
        let critic_lr = self.critic_sched.at(step);
        let critic = CriticStep {
            exp,
            mask: &m,
            clip_range_value: s.clip_range_value,
            max_grad_norm: s.run.max_grad_norm,
            lr: critic_lr,
        };
        let (rc_loss, rc_clip) = critic.run(
            &self.reward_critic,
            &mut self.reward_critic_opt,
            &exp.reward_values,
            &exp.reward_returns,
        );
        let (cc_loss, cc_clip) =
            match (&mut self.constraint, &exp.cost_values, &exp.cost_returns) {
                (Some(k), Some(old), Some(ret)) => {
                    Some(critic.run(&k.critic, &mut k.opt, old, ret))
                }
                _ => None,
            }
            .unzip();
        self.global_step += 1;
        let gen_lens: Vec<usize> = episodes.iter().map(|e| e.ids.len()).collect();
        StepRecord {
            step: self.global_step,
            actor_loss: a_loss.double_value(&[]),
            reward_critic_loss: rc_loss,
            cost_critic_loss: cc_loss,
            ptx_loss,
            lambda: self.constraint.as_ref().map(|k| k.lagrange.lambda()),
            lambda_capped: lambda_step.map(|s| s.capped),
            episode_cost: self.constraint.as_ref().map(|k| k.lagrange.episode_cost()),
            cost_threshold: self.constraint.as_ref().map(|k| k.lagrange.threshold),
            lambda_max: self.constraint.as_ref().and_then(|k| k.lagrange.lambda_max),
            actor_clip_fraction,
            reward_critic_clip_fraction: rc_clip,
            cost_critic_clip_fraction: cc_clip,
            reward_with_kl_penalty: exp.masked_sum_mean(&exp.rewards_tok),
            cost_with_kl_penalty: exp.costs_tok.as_ref().map(|c| exp.masked_sum_mean(c)),
            reward_advantage: masked_mean_f(&exp.reward_adv, &m),
            reward_return: masked_mean_f(&exp.reward_returns, &m),
            reward_value: masked_mean_f(&exp.tail(&exp.reward_values), &m),
            cost_advantage: exp.cost_adv.as_ref().map(|a| masked_mean_f(a, &m)),
            cost_return: exp.cost_returns.as_ref().map(|a| masked_mean_f(a, &m)),
            kl_divergence: exp.masked_sum_mean(&(&exp.logp_old - &exp.logp_ref)),
            actor_lr,
            critic_lr,
            mean_generated_length: gen_lens.iter().sum::<usize>() as f64
                / gen_lens.len().max(1) as f64,
            max_generated_length: gen_lens.iter().copied().max().unwrap_or(0),
            behaviour_logprob_gap: experience::behaviour_gap(exp, episodes),
            ..Default::default()
        }
    }

    /// Writes a resumable checkpoint (actor, critics, optimiser moments, λ and the step) atomically.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let mut parts = vec![
            ("actor", &self.actor, &self.actor_opt),
            (
                "reward_critic",
                &self.reward_critic,
                &self.reward_critic_opt,
            ),
        ];
        if let Some(k) = &self.constraint {
            parts.push(("cost_critic", &k.critic, &k.opt));
        }
        let state = json!({
            "global_step": self.global_step,
            "objective": self.objective.name(),
            "lagrange": self.constraint.as_ref().map(|k| &k.lagrange),
        });
        crate::checkpoint::save_parts(dir, &parts, &state)
    }

    /// Continues from a checkpoint written by `save_checkpoint`; `false` when `dir` holds none.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<bool> {
        let Some(state) = crate::checkpoint::read_state(dir)? else {
            return Ok(false);
        };
        anyhow::ensure!(
            state["objective"].as_str() == Some(self.objective.name()),
            "{}: a checkpoint of `{}`, not `{}`",
            dir.display(),
            state["objective"],
            self.objective.name()
        );
        crate::checkpoint::load_part(&dir.join("actor"), &mut self.actor, &mut self.actor_opt)?;
        crate::checkpoint::load_part(
            &dir.join("reward_critic"),
            &mut self.reward_critic,
            &mut self.reward_critic_opt,
        )?;
        if let Some(k) = &mut self.constraint {
            crate::checkpoint::load_part(&dir.join("cost_critic"), &mut k.critic, &mut k.opt)?;
            k.lagrange = serde_json::from_value(state["lagrange"].clone())
                .map_err(|e| anyhow::anyhow!("{}: lagrange: {e}", dir.display()))?;
        }
        self.global_step = state["global_step"].as_u64().unwrap_or(0);
        Ok(true)
    }

    pub fn cost_critic(&self) -> Option<&Model> {
        self.constraint.as_ref().map(|k| &k.critic)
    }
}

/// One critic's optimiser step on the clipped value loss; returns the loss and the clip fraction.
struct CriticStep<'a> {
    exp: &'a Experience,
    mask: &'a tch::Tensor,
    clip_range_value: f64,
    max_grad_norm: f64,
    lr: f64,
}

impl CriticStep<'_> {
    fn run(
        &self,
        critic: &Model,
        opt: &mut AdamW,
        old: &tch::Tensor,
        returns: &tch::Tensor,
    ) -> (f64, f64) {
        opt.zero_grad();
        let v = experience::values(critic, &self.exp.batch);
        let (v, old) = (self.exp.tail(&v), self.exp.tail(old));
        let l = critic_loss(&v, &old, returns, self.mask, self.clip_range_value);
        let clipped =
            tch::no_grad(|| value_clip_fraction(&v, &old, self.mask, self.clip_range_value));
        l.backward();
        opt.clip_grad_norm(self.max_grad_norm);
        opt.step(self.lr);
        (l.double_value(&[]), clipped)
    }
}

fn masked_mean_f(x: &tch::Tensor, m: &tch::Tensor) -> f64 {
    crate::losses::masked_mean(x, m).double_value(&[])
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
