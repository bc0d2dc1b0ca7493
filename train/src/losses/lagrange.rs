//! The Lagrange multiplier of PPO-Lag (§3.6): λ = e^η with η learned by plain SGD on
//! `−(Ĵ_C − threshold)·e^η`, i.e. `η ← η + lr·e^η·(Ĵ_C − threshold)`, capped at ln λ_max; and the advantage it
//! mixes into the actor objective.

use std::collections::VecDeque;
use tch::Tensor;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Lagrange {
    /// η = ln λ.
    pub eta: f64,
    pub lr: f64,
    pub threshold: f64,
    pub lambda_max: Option<f64>,
    /// Episode costs seen most recently (the moving window Ĵ_C is averaged over).
    pub window: VecDeque<f64>,
    pub window_size: usize,
    /// Updates are skipped before this many global steps.
    pub update_delay_steps: u64,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambdaStep {
    pub mean_cost: f64,
    pub lambda_before: f64,
    pub lambda_after: f64,
    pub capped: bool,
}

impl Lagrange {
    pub fn new(
        lambda_init: f64,
        lr: f64,
        threshold: f64,
        lambda_max: Option<f64>,
        window_size: usize,
    ) -> Self {
        Self {
            eta: lambda_init.ln(),
            lr,
            threshold,
            lambda_max,
            window: VecDeque::with_capacity(window_size),
            window_size: window_size.max(1),
            update_delay_steps: 0,
        }
    }

    pub fn lambda(&self) -> f64 {
        self.eta.exp()
    }

    /// Appends the end costs of a rollout batch to the episode-cost window.
    pub fn record_costs(&mut self, costs: &[f64]) {
        for &c in costs {
            if self.window.len() == self.window_size {
                self.window.pop_front();
            }
            self.window.push_back(c);
        }
    }

    /// Ĵ_C: the mean of the window (NaN when empty).
    pub fn episode_cost(&self) -> f64 {
        self.window.iter().sum::<f64>() / self.window.len() as f64
    }

    /// One SGD step on η from the current window, unless `global_step` is still inside the delay or the window is
    /// empty. Returns what happened.
    pub fn update(&mut self, global_step: u64) -> Option<LambdaStep> {
        if global_step < self.update_delay_steps || self.window.is_empty() {
            return None;
        }
        Some(self.step(self.episode_cost()))
    }

    /// The update itself on a given Ĵ_C.
    pub fn step(&mut self, mean_cost: f64) -> LambdaStep {
        let before = self.lambda();
        // d/dη of −(Ĵ_C − d)·e^η is −(Ĵ_C − d)·e^η; SGD subtracts lr times it.
        let mut eta = self.eta + self.lr * self.eta.exp() * (mean_cost - self.threshold);
        let mut capped = false;
        if let Some(max) = self.lambda_max {
            if eta > max.ln() {
                eta = max.ln();
                capped = true;
            }
        }
        self.eta = eta;
        LambdaStep {
            mean_cost,
            lambda_before: before,
            lambda_after: self.lambda(),
            capped,
        }
    }
}

/// `(A_r − λ·A_c) / (1 + λ)`.
pub fn combine_advantages(reward_adv: &Tensor, cost_adv: &Tensor, lambda: f64) -> Tensor {
    (reward_adv - cost_adv * lambda) / (1.0 + lambda)
}
