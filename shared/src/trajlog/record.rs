//! One trajectory record: a finished choice with everything the trainer needs.

use crate::engine::SamplingParams;
use serde::{Deserialize, Serialize};

/// What the safety gate did with a choice (serialized in lowercase, as the API shows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateAction {
    /// No score model: nothing was gated.
    #[default]
    Off,
    /// Scored under the threshold.
    Pass,
    /// Flagged and returned as is (annotate mode).
    Annotate,
    /// A resampled candidate under the threshold replaced a flagged one.
    Resample,
    /// Flagged (or unscored, failing closed) and withheld.
    Block,
    /// Scoring failed and the choice passed (fail-open).
    Unscored,
}

impl GateAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GateAction::Off => "off",
            GateAction::Pass => "pass",
            GateAction::Annotate => "annotate",
            GateAction::Resample => "resample",
            GateAction::Block => "block",
            GateAction::Unscored => "unscored",
        }
    }
}

/// What the safety gate decided for a choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub action: GateAction,
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
    /// The policy version that generated the choice (registry version id / content hash).
    pub weight_version: String,
    /// Versions of the cost and reward models that scored it (when loaded).
    #[serde(default)]
    pub cost_version: Option<String>,
    #[serde(default)]
    pub reward_version: Option<String>,
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
    /// Set when the server ran with `--log-redact`: the message text was dropped (prompt and
    /// output token ids, stop strings); the counts, log-probs and scores remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<Redacted>,
}

/// What a redacted record still says about the text it dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redacted {
    pub prompt_tokens: usize,
    pub output_tokens: usize,
}

impl TrajectoryRecord {
    /// Drops the message text, keeping its token counts.
    pub fn redact(&mut self) {
        self.redacted = Some(Redacted {
            prompt_tokens: self.prompt_ids.len(),
            output_tokens: self.output_ids.len(),
        });
        self.prompt_ids.clear();
        self.output_ids.clear();
        self.sampling.stop.clear();
    }
}
