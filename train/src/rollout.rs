//! Generation on the serving engine (the candle continuous-batching engine `safeloop-serve` runs): evaluation
//! answers and PPO rollouts come from the same code path that serves users.

use anyhow::{Context, Result};
use safeloop_shared::engine::{Engine, EngineConfig, SamplingParams};
use safeloop_shared::model::CausalLm;
use safeloop_shared::scoring::safe_rlhf_text;
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions, Tokenizer};
use std::path::Path;
use std::sync::Arc;

/// How a prompt is shown to the policy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// The policy's own chat template (user turn + generation prompt).
    ChatTemplate,
    /// `BEGINNING OF CONVERSATION: USER: … ASSISTANT:` (the safe-rlhf policies).
    SafeRlhf,
}

/// The sampling flags of every command that generates (`ppo-lag`, `ppo`, `sweep`, `round`, `eval`), defined once.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SamplingArgs {
    /// Tokens generated per answer at most.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature [default: 1 for training rollouts, 0 (greedy) for evaluation].
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Generate exactly max-new-tokens (no EOS stop; synthetic tasks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// How a prompt is shown to the policy.
    #[arg(long, value_enum, default_value_t = PromptFormat::ChatTemplate)]
    pub prompt_format: PromptFormat,
}

impl SamplingArgs {
    /// Engine sampling parameters, with `default_temperature` unless `--temperature` was given; validated.
    pub fn params(&self, default_temperature: f32) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(default_temperature),
            top_p: self.top_p,
            max_tokens: Some(self.max_new_tokens),
            ignore_eos: self.ignore_eos,
            ..Default::default()
        };
        p.validate()?;
        Ok(p)
    }

    /// The same settings, greedy (evaluation).
    pub fn greedy(&self) -> Result<SamplingParams> {
        let mut p = self.params(0.0)?;
        p.temperature = 0.0;
        Ok(p)
    }
}

/// One finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    /// Behaviour log-probs as sampled by the engine.
    pub logprobs: Vec<f32>,
    pub finished_by_eos: bool,
}

pub struct Policy {
    pub engine: Engine<CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    pub format: PromptFormat,
}

impl Policy {
    /// Loads a policy (HF directory or .gguf) onto the engine.
    pub fn load(path: &Path, format: PromptFormat, engine: EngineConfig) -> Result<Self> {
        let loaded = load_causal_lm(path, &LoadOptions::default())
            .with_context(|| format!("loading policy {}", path.display()))?;
        Ok(Self::from_model(
            loaded.model,
            Arc::new(loaded.tokenizer),
            format,
            engine,
        ))
    }

    pub fn from_model(
        model: CausalLm,
        tokenizer: Arc<Tokenizer>,
        format: PromptFormat,
        engine: EngineConfig,
    ) -> Self {
        Self {
            engine: Engine::new(model, tokenizer.clone(), engine),
            tokenizer,
            format,
        }
    }

    /// Swaps in new weights (the trainer's updated actor); the next `generate` samples from them.
    pub fn replace_model(&mut self, model: CausalLm) {
        let cfg = self.engine.config().clone();
        self.engine = Engine::new(model, self.tokenizer.clone(), cfg);
    }

    pub fn encode_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        Ok(match self.format {
            PromptFormat::ChatTemplate => self.tokenizer.encode_chat(messages, true)?,
            PromptFormat::SafeRlhf => {
                let eos = self.tokenizer.eos_token().unwrap_or("");
                self.tokenizer
                    .encode(&safe_rlhf_text(messages, None, eos), true)?
            }
        })
    }

    /// Generates one answer per conversation; request `i` samples with seed `seed + i` (reproducible whatever
    /// else is in the batch).
    pub fn generate(
        &mut self,
        prompts: &[Vec<ChatMessage>],
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<Generated>> {
        let mut reqs = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let mut sp = params.clone();
            sp.seed = Some(seed.wrapping_add(i as u64));
            sp.logprobs = true;
            sp.skip_special_tokens = true;
            reqs.push((self.encode_prompt(p)?, sp));
        }
        let prompt_ids: Vec<Vec<u32>> = reqs.iter().map(|r| r.0.clone()).collect();
        let out = self.engine.generate(reqs)?;
        Ok(out
            .into_iter()
            .zip(prompt_ids)
            .map(|(c, prompt_ids)| Generated {
                prompt_ids,
                ids: c.token_ids(),
                logprobs: c.tokens.iter().map(|t| t.logprob).collect(),
                finished_by_eos: c.finish_reason.as_str() == "stop",
                text: c.text,
            })
            .collect())
    }
}
