//! Flags every supervised training command (`train-score`, `sft`, `dpo`) shares with the same defaults: the
//! learning-rate schedule shape, gradient clipping, seed, device, output dtype, metrics file and a step cap.
//! The learning rate, weight decay, epochs and batch size stay with each command (their defaults differ).

use crate::metrics::MetricsLog;
use crate::optim::{LrSchedule, Schedule};
use anyhow::Result;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub lr_scheduler: Schedule,
    /// Share of the steps spent warming the learning rate up linearly.
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Stored dtype of the output model: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    pub save_dtype: String,
    /// Metrics JSONL (default OUT/metrics.jsonl).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Stop after this many optimiser steps (smoke runs; 0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub max_steps: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub push: crate::push::PushArgs,
}

impl RunArgs {
    /// `--device`, parsed.
    pub fn device(&self) -> Result<tch::Device> {
        crate::device::parse_device(&self.device)
    }

    /// `--save-dtype`, parsed.
    pub fn save_kind(&self) -> Result<tch::Kind> {
        crate::device::parse_kind(&self.save_dtype)
    }

    /// The learning-rate schedule of a run of `total_steps` peaking at `lr`.
    pub fn schedule(&self, lr: f64, total_steps: u64) -> LrSchedule {
        LrSchedule::new(lr, self.lr_scheduler, self.warmup_ratio, total_steps)
    }

    /// Opens `--metrics`, or OUT/metrics.jsonl (and `--pushgateway` when given).
    pub fn metrics_log(&self, out: &Path) -> Result<MetricsLog> {
        Ok(MetricsLog::open(
            &self
                .metrics
                .clone()
                .unwrap_or_else(|| out.join("metrics.jsonl")),
        )?
        .with_push(crate::push::Pusher::new(&self.push)))
    }

    /// Whether `--max-steps` stops the run before optimiser step `step`.
    pub fn step_cap_reached(&self, step: u64) -> bool {
        self.max_steps > 0 && step >= self.max_steps
    }
}
