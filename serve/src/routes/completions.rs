//! `POST /v1/completions`.

use super::{json_event, seeded, token_text};
use crate::api::*;
use crate::choices::{finish_reason, random_id};
use crate::error::ApiError;
use crate::gate::Gated;
use crate::pipeline::{self, Prepared, Wire};
use crate::server::RequestId;
use crate::state::{unix_now, PolicyVersion, Shared};
use crate::stream_gate;
use crate::validate::{check_lengths, completion_prompts, sampling, ApiJson};
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use safeloop_shared::engine::{PromptLogprob, SampledToken, SeqUpdate};
use safeloop_shared::{ChatMessage, Tokenizer};
use std::sync::Arc;

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: u32 = 16;

fn top_map(tok: &Tokenizer, top: &[(u32, f32)]) -> serde_json::Map<String, serde_json::Value> {
    top.iter()
        .map(|&(id, lp)| (token_text(tok, id), serde_json::json!(lp)))
        .collect()
}

/// Legacy-format log-probs for prompt (echo) and output tokens, offsets counted in chars
/// from `offset0`.
fn logprobs(
    tok: &Tokenizer,
    prompt: &[PromptLogprob],
    out: &[SampledToken],
    offset0: u32,
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let mut offset = offset0;
    let mut push = |lp: &mut CompletionLogprobs,
                    id: u32,
                    l: Option<f32>,
                    top: Option<serde_json::Map<_, _>>| {
        let text = token_text(tok, id);
        lp.text_offset.push(offset);
        offset += text.chars().count() as u32;
        lp.tokens.push(text);
        lp.token_logprobs.push(l);
        lp.top_logprobs.push(top);
    };
    for p in prompt {
        let top = p.logprob.map(|_| top_map(tok, &p.top));
        push(&mut lp, p.token, p.logprob, top);
    }
    for t in out {
        push(&mut lp, t.id, Some(t.logprob), Some(top_map(tok, &t.top)));
    }
    lp
}

/// Creates a completion (OpenAI-compatible legacy endpoint).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses(
        (status = 200, description = "A completion, or an SSE stream when `stream` is true", body = Completion),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub async fn completions(
    State(st): State<Shared>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Response {
    pipeline::respond(&st, |served| handle(st.clone(), served, rid.0, req)).await
}

async fn handle(
    st: Shared,
    served: Arc<PolicyVersion>,
    request_id: String,
    req: CompletionRequest,
) -> Result<Response, ApiError> {
    st.check_model(&req.model)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "suffix",
            "`suffix` (insertion) is not supported",
        ));
    }
    let top = req.logprobs.unwrap_or(0);
    if top > 5 {
        return Err(ApiError::bad_request(
            "logprobs",
            "`logprobs` must be between 0 and 5",
        ));
    }
    let want_lp = req.logprobs.is_some();
    let s = sampling(
        &req.sampling,
        Some(req.sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        top,
        want_lp,
        &st,
    )?;
    if req.best_of.is_some_and(|b| b != s.n) {
        return Err(ApiError::conflicting(
            "best_of",
            "`best_of` other than `n` is not supported",
        ));
    }
    let engine = &served.engine;
    let tok = engine.tokenizer.clone();
    let prompts = completion_prompts(&req.prompt, &tok, tok.vocab_size().max(1))?;
    let prompt_texts: Vec<String> = match &req.prompt {
        Prompt::Text(t) => vec![t.clone()],
        Prompt::Texts(ts) => ts.clone(),
        _ => prompts
            .iter()
            .map(|p| tok.decode(p, false).unwrap_or_default())
            .collect(),
    };
    let mut params = s.params;
    params.prompt_logprobs = req.echo && want_lp;
    let mut jobs = Vec::new();
    let mut prompt_tokens = 0u32;
    for p in &prompts {
        let mut pp = params.clone();
        check_lengths(p.len(), &mut pp, &st, engine.max_context, "prompt")?;
        prompt_tokens += p.len() as u32;
        for i in 0..s.n {
            jobs.push((p.clone(), seeded(&pp, i)));
        }
    }
    let policy = st.gate_policy().narrowed(req.safety.as_ref())?;
    let (n, total) = (s.n as usize, jobs.len());
    let wire = CompletionWire {
        head: CompletionHead {
            id: random_id("cmpl"),
            created: unix_now(),
            model: st.cfg.served_model_name.clone(),
            fingerprint: served.fingerprint(),
        },
        tok,
        want_lp,
        echo: req.echo,
        n,
        offsets: vec![0; total],
        pending: vec![vec![]; total],
        echoed: vec![!req.echo; total],
        prompt_texts: prompt_texts.clone(),
    };
    let prepared = Prepared {
        conversations: prompt_texts
            .iter()
            .map(|t| vec![ChatMessage::new("user", t)])
            .collect(),
        jobs,
        n,
        prompt_tokens,
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        policy,
        keep_alive: st.cfg.keep_alive,
        served,
        request_id,
    };
    pipeline::run(&st, prepared, wire).await
}

/// The legacy completions wire format: `text_completion` bodies and chunks.
struct CompletionWire {
    head: CompletionHead,
    tok: Arc<Tokenizer>,
    want_lp: bool,
    echo: bool,
    /// Choices per prompt.
    n: usize,
    prompt_texts: Vec<String>,
    /// Streams: characters sent so far per choice (log-prob text offsets).
    offsets: Vec<u32>,
    /// Streams: tokens whose log-probs wait for the next chunk with text.
    pending: Vec<Vec<SampledToken>>,
    /// Streams: whether the prompt was echoed yet.
    echoed: Vec<bool>,
}

impl CompletionWire {
    fn event(&self, choice: CompletionChoice) -> Event {
        json_event(&self.head.build(vec![choice], None))
    }
}

impl Wire for CompletionWire {
    const PROMPT_PARAM: &'static str = "prompt";

    fn opening(&mut self, windowed: bool) -> Vec<Event> {
        // Live streams echo the prompt with the first update (and its log-probs).
        if !windowed || !self.echo {
            return vec![];
        }
        (0..self.echoed.len())
            .map(|i| {
                self.echoed[i] = true;
                self.event(CompletionChoice {
                    index: i as u32,
                    text: self.prompt_texts[i / self.n].clone(),
                    finish_reason: None,
                    logprobs: None,
                    safety: None,
                })
            })
            .collect()
    }

    fn live(&mut self, i: usize, u: SeqUpdate) -> Option<Event> {
        let mut text = String::new();
        let mut prompt_lp: Vec<PromptLogprob> = vec![];
        if !self.echoed[i] {
            self.echoed[i] = true;
            text.push_str(&self.prompt_texts[i / self.n]);
            prompt_lp = u.prompt_logprobs.clone().unwrap_or_default();
        }
        if let Some(t) = u.token {
            if self.want_lp {
                self.pending[i].push(t);
            }
        }
        text.push_str(&u.text);
        if text.is_empty() && u.finished.is_none() {
            return None;
        }
        let lp = self.want_lp.then(|| {
            logprobs(
                &self.tok,
                &prompt_lp,
                &std::mem::take(&mut self.pending[i]),
                self.offsets[i],
            )
        });
        self.offsets[i] += text.chars().count() as u32;
        Some(self.event(CompletionChoice {
            safety: None,
            index: i as u32,
            text,
            finish_reason: u.finished.map(finish_reason),
            logprobs: lp,
        }))
    }

    fn release(&mut self, r: stream_gate::Release) -> Event {
        self.event(CompletionChoice {
            index: r.index as u32,
            logprobs: (self.want_lp && !r.tokens.is_empty())
                .then(|| logprobs(&self.tok, &[], &r.tokens, 0)),
            text: r.text,
            finish_reason: r.finish_reason,
            safety: r.safety,
        })
    }

    fn usage(&self, usage: Usage) -> Event {
        json_event(&self.head.build(vec![], Some(usage)))
    }

    fn complete(self, choices: Vec<Gated>, usage: Usage) -> Response {
        Json(self.body(choices, Some(usage))).into_response()
    }

    fn held(self, choices: Vec<Gated>) -> Vec<Event> {
        let body = self.body(choices, None);
        body.choices
            .iter()
            .map(|c| json_event(&self.head.build(vec![c.clone()], None)))
            .collect()
    }
}

impl CompletionWire {
    fn body(&self, choices: Vec<Gated>, usage: Option<Usage>) -> Completion {
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let prompt_text = if self.echo {
                    self.prompt_texts[i / self.n].as_str()
                } else {
                    ""
                };
                CompletionChoice {
                    safety: g.safety,
                    index: i as u32,
                    logprobs: self
                        .want_lp
                        .then(|| logprobs(&self.tok, &g.prompt_logprobs, &g.tokens, 0)),
                    text: format!("{prompt_text}{}", g.text),
                    finish_reason: Some(g.finish_reason),
                }
            })
            .collect();
        self.head.build(choices, usage)
    }
}

/// The envelope shared by this request's completion object and stream chunks.
#[derive(Clone)]
struct CompletionHead {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

impl CompletionHead {
    fn build(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        }
    }
}
