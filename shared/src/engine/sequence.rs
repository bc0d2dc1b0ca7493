//! One request's state inside the engine.

use super::detokenize::Detokenizer;
use super::params::SamplingParams;
use super::sample::{SampledToken, Sampler};
use crate::model::KvCache;
use serde::{Deserialize, Serialize};

pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token, stop token id or stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// Cancelled by the caller (e.g. the client went away).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// A prompt token's log-prob (None for the first token, which nothing predicts).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

pub(crate) struct Sequence {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub output: Vec<SampledToken>,
    pub output_ids: Vec<u32>,
    pub prompt_logprobs: Vec<PromptLogprob>,
    /// Prompt tokens already in the cache.
    pub computed: usize,
    pub cache: KvCache,
    pub sampler: Sampler,
    pub detok: Detokenizer,
    pub finish: Option<FinishReason>,
    pub cancelled: bool,
    pub stop_ids: Vec<u32>,
    /// Steps in a row this sequence spent in prefill without a chunk (the budget went to shorter prompts).
    pub passed_over: u32,
}

impl Sequence {
    pub fn in_prefill(&self) -> bool {
        self.computed < self.prompt.len()
    }
}
