//! Sampling parameters of one request and their validation (errors name the parameter).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Largest `top_logprobs` accepted (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    pub min_p: f32,
    /// Multiplicative penalty on tokens seen in the prompt or output (1 = off), as in HF/vLLM.
    pub repetition_penalty: f32,
    /// OpenAI: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI: subtracted per occurrence in the generated text.
    pub frequency_penalty: f32,
    /// Same seed ⇒ same tokens, whatever else runs in the batch.
    pub seed: Option<u64>,
    /// None: up to the context length.
    pub max_tokens: Option<usize>,
    /// End-of-sequence and stop ids are suppressed until this many tokens exist.
    pub min_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the chosen token's log-prob for every output token.
    pub logprobs: bool,
    /// Also return this many most likely alternatives per position.
    pub top_logprobs: usize,
    /// Return log-probs of the prompt tokens (completions `echo` + `logprobs`).
    pub prompt_logprobs: bool,
    /// Strip special tokens from the returned text.
    pub skip_special_tokens: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: None,
            min_tokens: 0,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            logprobs: false,
            top_logprobs: 0,
            prompt_logprobs: false,
            skip_special_tokens: true,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        fn finite(name: &str, v: f32) -> Result<()> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::invalid(name, "must be a finite number"))
            }
        }
        finite("temperature", self.temperature)?;
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(Error::invalid("temperature", "must be between 0 and 2"));
        }
        finite("top_p", self.top_p)?;
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("top_p", "must be in (0, 1]"));
        }
        finite("min_p", self.min_p)?;
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid("min_p", "must be in [0, 1]"));
        }
        finite("repetition_penalty", self.repetition_penalty)?;
        if self.repetition_penalty <= 0.0 {
            return Err(Error::invalid(
                "repetition_penalty",
                "must be greater than 0",
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            finite(name, v)?;
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::invalid(name, "must be between -2 and 2"));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(Error::invalid("max_tokens", "must be at least 1"));
        }
        if let Some(m) = self.max_tokens {
            if self.min_tokens > m {
                return Err(Error::invalid("min_tokens", "must not exceed max_tokens"));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::invalid(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::invalid("stop", "stop strings must not be empty"));
        }
        Ok(())
    }
}
