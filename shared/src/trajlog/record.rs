//! One trajectory record: a finished choice with everything the trainer needs.

use crate::engine::SamplingParams;
use serde::{Deserialize, Serialize};

/// What the safety gate decided for a choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// `pass`, `block`, `resample`, `annotate`, `unscored` (or `off` without a gate).
    pub action: String,
    pub flagged: bool,
    /// Bytes of the response text that had been checked (streamed windows).
    pub checked_offset: usize,
    /// End offsets of the scored windows.
    pub window_offsets: Vec<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub e2e_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryRecord {
    pub request_id: String,
    pub choice_index: u32,
    /// Unix milliseconds at arrival and at the end.
    pub created_ms: u64,
    pub finished_ms: u64,
    pub model: String,
    pub weight_version: String,
    /// The rendered prompt as token ids (chat template applied).
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// Behaviour-policy log-prob of each output token.
    pub logprobs: Vec<f32>,
    pub sampling: SamplingParams,
    pub finish_reason: String,
    pub reward: Option<f32>,
    pub cost: Option<f32>,
    pub gate: GateDecision,
    /// Blocked choices are kept (they are cost-model data) and marked.
    pub blocked: bool,
    pub latencies: Latencies,
}
