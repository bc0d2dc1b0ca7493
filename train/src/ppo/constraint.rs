//! What PPO-Lag adds to PPO (spec §3.6): a cost critic with its own optimiser and GAE stream, and the Lagrange
//! multiplier λ = e^η learned from the episode-cost window; the actor then follows `(A_r − λ·A_c)/(1+λ)`.

use crate::losses::lagrange::{combine_advantages, Lagrange, LambdaStep};
use crate::model::Model;
use crate::optim::AdamW;
use tch::Tensor;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ConstraintArgs {
    /// Cost threshold d (E[C] ≤ threshold; paper rounds 2–3: −3). Negative values need no `=`.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub threshold: f64,
    #[arg(long, default_value_t = 1.0)]
    pub lambda_init: f64,
    /// Learning rate of ln λ (paper: 0.01–0.04).
    #[arg(long, default_value_t = 0.1)]
    pub lambda_lr: f64,
    /// Cap on λ (0 = none).
    #[arg(long, default_value_t = 5.0)]
    pub lambda_max: f64,
    /// Optimiser steps before λ starts to move.
    #[arg(long, default_value_t = 0)]
    pub lambda_update_delay_steps: u64,
    /// Episodes in the moving window Ĵ_C is averaged over.
    #[arg(long, default_value_t = 128)]
    pub episode_cost_window_size: usize,
}

impl ConstraintArgs {
    pub fn lagrange(&self) -> Lagrange {
        let mut l = Lagrange::new(
            self.lambda_init,
            self.lambda_lr,
            self.threshold,
            (self.lambda_max > 0.0).then_some(self.lambda_max),
            self.episode_cost_window_size,
        );
        l.update_delay_steps = self.lambda_update_delay_steps;
        l
    }
}

/// The cost side of PPO-Lag.
pub struct CostConstraint {
    pub critic: Model,
    pub opt: AdamW,
    pub lagrange: Lagrange,
}

impl CostConstraint {
    pub fn new(critic: Model, weight_decay: f64, args: &ConstraintArgs) -> Self {
        let opt = AdamW::new(critic.trainable(), weight_decay);
        Self {
            critic,
            opt,
            lagrange: args.lagrange(),
        }
    }

    /// Appends a rollout batch's end costs to the episode-cost window.
    pub fn record_costs(&mut self, costs: &[f64]) {
        self.lagrange.record_costs(costs);
    }

    /// λ's step for this optimiser step (before the actor's, with the window as it stands).
    pub fn update_lambda(&mut self, global_step: u64) -> Option<LambdaStep> {
        self.lagrange.update(global_step)
    }

    /// The actor's advantage with the current λ.
    pub fn advantage(&self, reward_adv: &Tensor, cost_adv: &Tensor) -> Tensor {
        combine_advantages(reward_adv, cost_adv, self.lagrange.lambda())
    }
}
