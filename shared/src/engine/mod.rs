//! The batched generation engine shared by the server and the trainer's rollouts.
//!
//! Continuous batching: each `step()` admits waiting requests (up to `max_running`), gives
//! every decoding sequence one token, fills the rest of the token budget with prefill chunks
//! (shortest remaining prompt first; long prompts are split across steps), runs one packed
//! forward pass, and samples. Finished
//! and cancelled sequences leave at once and free their KV cache.

mod detokenize;
pub mod params;
mod prefix;
pub mod sample;
mod sequence;

pub use detokenize::{Detokenizer, TextDelta};
pub use params::SamplingParams;
pub use sample::SampledToken;
pub use sequence::{FinishReason, PromptLogprob, SeqId};

use crate::error::{Error, Result};
use crate::model::{CausalLm, KvCache, OutputRows, SeqInput};
use crate::tokenizer::Tokenizer;
use candle_core::Tensor;
use rayon::prelude::*;
use sequence::Sequence;
use std::collections::VecDeque;
use std::sync::Arc;

/// What the engine needs from a model.
pub trait Model: Send + Sync {
    /// Logits `[rows, vocab]` (f32) for the rows each input asks for.
    fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>>;
    fn new_cache(&self) -> KvCache;
    fn max_context(&self) -> usize;
    fn vocab_size(&self) -> usize;
}

impl Model for CausalLm {
    fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        CausalLm::forward(self, inputs)
    }
    fn new_cache(&self) -> KvCache {
        CausalLm::new_cache(self)
    }
    fn max_context(&self) -> usize {
        self.config().max_position_embeddings
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
}

/// Steps a prefilling sequence may be passed over for shorter prompts before it goes first.
const PASSED_OVER_MAX: u32 = 4;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoding at once.
    pub max_running: usize,
    /// Tokens per forward pass (decode tokens first, then prefill chunks).
    pub max_batch_tokens: usize,
    /// Context cap below the model's own (None: the model's).
    pub max_context: Option<usize>,
    /// Token budget of the prompt prefix cache (0 disables it).
    pub prefix_cache_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 32,
            max_batch_tokens: 512,
            max_context: None,
            prefix_cache_tokens: 8192,
        }
    }
}

/// What happened to one sequence in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqUpdate {
    pub id: SeqId,
    /// The token sampled this step, if any.
    pub token: Option<SampledToken>,
    /// Text released this step (may be empty while a UTF-8 char or stop string is pending).
    pub text: String,
    /// Prompt log-probs, once, when the prompt finished and they were asked for.
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
    pub finished: Option<FinishReason>,
}

/// A finished request, collected by `Engine::generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub tokens: Vec<SampledToken>,
    pub text: String,
    pub prompt_logprobs: Vec<PromptLogprob>,
    pub finish_reason: FinishReason,
}

impl Completion {
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

pub struct Engine<M: Model> {
    model: M,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    next_id: SeqId,
    stats: StepStats,
    admitted: Vec<SeqId>,
    prefix: prefix::PrefixCache,
    prefix_hit_tokens: usize,
}

/// Counters of the last step (for metrics and benchmarks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    pub decode_tokens: usize,
    pub prefill_tokens: usize,
    pub batch_size: usize,
}

impl<M: Model> Engine<M> {
    pub fn new(model: M, tokenizer: Arc<Tokenizer>, cfg: EngineConfig) -> Self {
        Self {
            model,
            tokenizer,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 1,
            stats: StepStats::default(),
            admitted: Vec::new(),
            prefix: prefix::PrefixCache::new(cfg.prefix_cache_tokens),
            prefix_hit_tokens: 0,
            cfg,
        }
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn max_context(&self) -> usize {
        let m = self.model.max_context();
        self.cfg.max_context.map_or(m, |c| c.min(m))
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn last_step(&self) -> &StepStats {
        &self.stats
    }

    /// Tokens held by the prompt prefix cache.
    pub fn prefix_cache_tokens(&self) -> usize {
        self.prefix.used_tokens()
    }

    /// Prompt tokens served from the prefix cache since the last call.
    pub fn take_prefix_hit_tokens(&mut self) -> usize {
        std::mem::take(&mut self.prefix_hit_tokens)
    }

    /// Requests that left the waiting queue for the running batch since the last call.
    pub fn take_admitted(&mut self) -> Vec<SeqId> {
        std::mem::take(&mut self.admitted)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Positions held in the KV caches of running sequences.
    pub fn kv_cache_tokens(&self) -> usize {
        self.running.iter().map(|s| s.cache.len()).sum()
    }

    /// KV cache bytes held by running sequences.
    pub fn kv_cache_bytes(&self) -> usize {
        self.running.iter().map(|s| s.cache.allocated_bytes()).sum()
    }

    /// Validates and queues a request; its tokens arrive through `step()`.
    pub fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "the prompt is empty"));
        }
        let vocab = self.model.vocab_size();
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                "prompt",
                format!("token id {bad} is outside the vocabulary ({vocab})"),
            ));
        }
        let ctx = self.max_context();
        let room = ctx.saturating_sub(prompt.len());
        let max_tokens = match params.max_tokens {
            Some(m) if m > room => {
                return Err(Error::ContextOverflow {
                    tokens: prompt.len(),
                    requested: m,
                    max: ctx,
                })
            }
            Some(m) => m,
            None if room == 0 => {
                return Err(Error::ContextOverflow {
                    tokens: prompt.len(),
                    requested: 1,
                    max: ctx,
                })
            }
            None => room,
        };
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(self.tokenizer.eos_token_ids());
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence {
            id,
            sampler: sample::Sampler::new(&params, &prompt),
            detok: Detokenizer::new(&params.stop, params.skip_special_tokens),
            cache: self.model.new_cache(),
            prompt,
            max_tokens,
            params,
            output: vec![],
            output_ids: vec![],
            prompt_logprobs: vec![],
            computed: 0,
            finish: None,
            cancelled: false,
            stop_ids,
            passed_over: 0,
        });
        Ok(id)
    }

    /// Cancels a request; it leaves the batch (freeing its cache) at the next step.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
            s.cancelled = true;
            return true;
        }
        if let Some(s) = self.waiting.iter_mut().find(|s| s.id == id) {
            s.cancelled = true;
            return true;
        }
        false
    }

    /// One engine iteration. Returns an update for every sequence that progressed or ended.
    pub fn step(&mut self) -> Result<Vec<SeqUpdate>> {
        let mut updates = Vec::new();
        // Cancelled sequences leave first.
        for s in self
            .running
            .iter()
            .chain(self.waiting.iter())
            .filter(|s| s.cancelled)
        {
            updates.push(SeqUpdate {
                id: s.id,
                token: None,
                text: String::new(),
                prompt_logprobs: None,
                finished: Some(FinishReason::Cancelled),
            });
        }
        self.running.retain(|s| !s.cancelled);
        self.waiting.retain(|s| !s.cancelled);
        while self.running.len() < self.cfg.max_running {
            match self.waiting.pop_front() {
                Some(mut s) => {
                    self.admitted.push(s.id);
                    // Reuse a cached prompt prefix (not when prompt log-probs are wanted:
                    // those need every prompt row computed).
                    if self.prefix.enabled() && !s.params.prompt_logprobs {
                        if let Some((len, cache)) = self.prefix.lookup(&s.prompt) {
                            s.cache = cache;
                            s.computed = len;
                            self.prefix_hit_tokens += len;
                        }
                    }
                    self.running.push(s);
                }
                None => break,
            }
        }
        if self.running.is_empty() {
            self.stats = StepStats::default();
            return Ok(updates);
        }

        // Plan: decodes get one token each, then prefill chunks under the budget.
        let mut budget = self.cfg.max_batch_tokens.max(1);
        let mut plan: Vec<Option<(usize, usize)>> = vec![None; self.running.len()];
        let mut stats = StepStats::default();
        for (i, s) in self.running.iter().enumerate() {
            if !s.in_prefill() {
                plan[i] = Some((0, 1));
                budget = budget.saturating_sub(1);
                stats.decode_tokens += 1;
            }
        }
        // Prefill chunks, fewest remaining prompt tokens first: a short prompt (a new turn whose conversation is in
        // the prefix cache) is not held a whole step behind a long one's chunks, which is what a TTFT tail is made of.
        // A prompt passed over PASSED_OVER_MAX steps in a row goes first, so a stream of short ones cannot starve it.
        let mut order: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].in_prefill())
            .collect();
        order.sort_by_key(|&i| {
            let s = &self.running[i];
            (s.passed_over < PASSED_OVER_MAX, s.prompt.len() - s.computed)
        });
        for i in order {
            let s = &mut self.running[i];
            if budget == 0 {
                s.passed_over += 1;
                continue;
            }
            let n = (s.prompt.len() - s.computed).min(budget);
            plan[i] = Some((s.computed, n));
            budget -= n;
            stats.prefill_tokens += n;
            s.passed_over = 0;
        }
        stats.batch_size = plan.iter().filter(|p| p.is_some()).count();

        let chunks: Vec<Option<Vec<u32>>> = self
            .running
            .iter()
            .zip(&plan)
            .map(|(s, p)| {
                p.map(|(start, n)| {
                    if s.in_prefill() {
                        s.prompt[start..start + n].to_vec()
                    } else {
                        vec![*s.output_ids.last().expect("decoding sequences have output")]
                    }
                })
            })
            .collect();
        let mut inputs = Vec::with_capacity(stats.batch_size);
        let mut who = Vec::with_capacity(stats.batch_size);
        for (i, (s, chunk)) in self.running.iter_mut().zip(&chunks).enumerate() {
            let Some(tokens) = chunk else { continue };
            let completes_prompt = s.in_prefill() && s.computed + tokens.len() == s.prompt.len();
            let output = if s.in_prefill() && s.params.prompt_logprobs {
                OutputRows::All
            } else if !s.in_prefill() || completes_prompt {
                OutputRows::Last
            } else {
                OutputRows::None
            };
            inputs.push(SeqInput::causal(tokens, Some(&mut s.cache), output));
            who.push(i);
        }
        let logits = self.model.forward(&mut inputs)?;
        drop(inputs);

        // Rows to host memory, then sample sequences in parallel.
        let mut rows: Vec<(usize, Vec<Vec<f32>>)> = Vec::with_capacity(who.len());
        for (&i, l) in who.iter().zip(logits) {
            let n = chunks[i].as_ref().map_or(0, Vec::len);
            let s = &mut self.running[i];
            if s.in_prefill() {
                s.computed += n;
                if !s.in_prefill() && self.prefix.enabled() {
                    self.prefix.insert(&s.prompt, &s.cache);
                }
            }
            if let Some(l) = l {
                rows.push((i, l.to_vec2::<f32>()?));
            }
        }
        let tokenizer = self.tokenizer.clone();
        let mut step_updates: Vec<Option<SeqUpdate>> = Vec::new();
        {
            let mut work: Vec<(&mut Sequence, Vec<Vec<f32>>)> = Vec::with_capacity(rows.len());
            let mut rows_iter = rows.into_iter().peekable();
            for (i, s) in self.running.iter_mut().enumerate() {
                if rows_iter.peek().is_some_and(|(j, _)| *j == i) {
                    let (_, r) = rows_iter.next().expect("peeked");
                    work.push((s, r));
                }
            }
            step_updates.par_extend(work.into_par_iter().map(|(s, r)| advance(s, r, &tokenizer)));
        }
        for u in step_updates.into_iter().flatten() {
            updates.push(u);
        }
        self.running.retain(|s| s.finish.is_none());
        self.stats = stats;
        Ok(updates)
    }

    /// Runs requests to completion (the trainer's rollouts, benchmarks, the CLI).
    pub fn generate(
        &mut self,
        requests: Vec<(Vec<u32>, SamplingParams)>,
    ) -> Result<Vec<Completion>> {
        let mut ids = Vec::with_capacity(requests.len());
        for (prompt, params) in requests {
            ids.push(self.add_request(prompt, params)?);
        }
        let mut done: std::collections::HashMap<SeqId, Completion> = Default::default();
        let mut partial: std::collections::HashMap<SeqId, Completion> = Default::default();
        while self.has_work() {
            for u in self.step()? {
                let c = partial.entry(u.id).or_insert_with(|| Completion {
                    id: u.id,
                    prompt: vec![],
                    tokens: vec![],
                    text: String::new(),
                    prompt_logprobs: vec![],
                    finish_reason: FinishReason::Stop,
                });
                if let Some(t) = u.token {
                    c.tokens.push(t);
                }
                c.text.push_str(&u.text);
                if let Some(p) = u.prompt_logprobs {
                    c.prompt_logprobs = p;
                }
                if let Some(f) = u.finished {
                    let mut c = partial.remove(&u.id).expect("just inserted");
                    c.finish_reason = f;
                    done.insert(u.id, c);
                }
            }
        }
        Ok(ids
            .into_iter()
            .map(|id| done.remove(&id).expect("every request finishes"))
            .collect())
    }
}

/// Applies one forward result to a sequence: prompt log-probs, then sampling and stops.
fn advance(s: &mut Sequence, rows: Vec<Vec<f32>>, tok: &Tokenizer) -> Option<SeqUpdate> {
    let mut update = SeqUpdate {
        id: s.id,
        token: None,
        text: String::new(),
        prompt_logprobs: None,
        finished: None,
    };
    let prefill_rows = s.params.prompt_logprobs && s.output_ids.is_empty();
    if prefill_rows {
        // Row t of this chunk predicts prompt token (chunk_start + t + 1).
        let start = s.computed - rows.len();
        if start == 0 {
            s.prompt_logprobs.push(PromptLogprob {
                token: s.prompt[0],
                logprob: None,
                top: vec![],
            });
        }
        for (t, row) in rows.iter().enumerate() {
            let pos = start + t + 1;
            if pos < s.prompt.len() {
                let lse = sample::log_sum_exp(row);
                s.prompt_logprobs.push(PromptLogprob {
                    token: s.prompt[pos],
                    logprob: Some(row[s.prompt[pos] as usize] - lse),
                    top: sample::top_logprobs(row, lse, s.params.top_logprobs),
                });
            }
        }
        if s.in_prefill() {
            return None;
        }
        update.prompt_logprobs = Some(std::mem::take(&mut s.prompt_logprobs));
    }
    let row = rows.last()?;
    let banned: &[u32] = if s.output_ids.len() < s.params.min_tokens {
        &s.stop_ids
    } else {
        &[]
    };
    let t = s.sampler.sample(&s.params, row, banned);
    s.output_ids.push(t.id);
    s.output.push(t.clone());
    update.token = Some(t.clone());
    let hit_stop_id = s.stop_ids.contains(&t.id);
    match s.detok.step(tok, &s.output_ids) {
        Ok(delta) => {
            update.text = delta.text;
            if delta.stopped {
                s.finish = Some(FinishReason::Stop);
            }
        }
        Err(e) => {
            tracing::warn!(seq = s.id, "detokenization failed: {e}");
        }
    }
    if s.finish.is_none() {
        if hit_stop_id {
            s.finish = Some(FinishReason::Stop);
        } else if s.output_ids.len() >= s.max_tokens {
            s.finish = Some(FinishReason::Length);
        }
        if s.finish.is_some() {
            match s.detok.flush(tok, &s.output_ids) {
                Ok(rest) => update.text.push_str(&rest),
                Err(e) => tracing::warn!(seq = s.id, "detokenization failed: {e}"),
            }
        }
    }
    update.finished = s.finish;
    Some(update)
}
