//! `POST /v1/chat/completions`.

use super::{json_event, seeded, token_text};
use crate::api::*;
use crate::choices::{finish_reason, random_id};
use crate::error::ApiError;
use crate::gate::Gated;
use crate::pipeline::{self, Prepared, Wire};
use crate::server::RequestId;
use crate::state::{unix_now, PolicyVersion, Shared};
use crate::stream_gate;
use crate::validate::{chat_prompt, check_lengths, sampling, ApiJson};
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use safeloop_shared::engine::{SampledToken, SeqUpdate};
use safeloop_shared::Tokenizer;
use std::sync::Arc;

fn logprobs(tok: &Tokenizer, tokens: &[SampledToken]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| {
                let token = token_text(tok, t.id);
                TokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: t.logprob,
                    top_logprobs: t
                        .top
                        .iter()
                        .map(|&(id, lp)| {
                            let token = token_text(tok, id);
                            TopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob: lp,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Creates a chat completion (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or an SSE stream of chunks when `stream` is true", body = ChatCompletion),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub async fn chat_completions(
    State(st): State<Shared>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Response {
    pipeline::respond(&st, |served| handle(st.clone(), served, rid.0, req)).await
}

async fn handle(
    st: Shared,
    served: Arc<PolicyVersion>,
    request_id: String,
    req: ChatCompletionRequest,
) -> Result<Response, ApiError> {
    st.check_model(&req.model)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request(
            "tools",
            "tool calling is not supported",
        ));
    }
    if let Some(rf) = &req.response_format {
        if rf.get("type").and_then(|t| t.as_str()) != Some("text") {
            return Err(ApiError::bad_request(
                "response_format",
                "only `{\"type\": \"text\"}` is supported",
            ));
        }
    }
    let top = req.top_logprobs.unwrap_or(0);
    if top > 0 && !req.logprobs {
        return Err(ApiError::conflicting(
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`",
        ));
    }
    let engine = &served.engine;
    let max = req.max_completion_tokens.or(req.sampling.max_tokens);
    let s = sampling(&req.sampling, max, top, req.logprobs, &st)?;
    let mut params = s.params;
    let (prompt, conversation) = chat_prompt(&req.messages, &engine.tokenizer)?;
    check_lengths(
        prompt.len(),
        &mut params,
        &st,
        engine.max_context,
        "messages",
    )?;
    let policy = st.gate_policy().narrowed(req.safety.as_ref())?;
    let n = s.n as usize;
    let wire = ChatWire {
        chunks: ChatChunks {
            id: random_id("chatcmpl"),
            created: unix_now(),
            model: st.cfg.served_model_name.clone(),
            fingerprint: served.fingerprint(),
        },
        tok: engine.tokenizer.clone(),
        want_lp: req.logprobs,
        pending: vec![vec![]; n],
    };
    let prepared = Prepared {
        jobs: (0..s.n)
            .map(|i| (prompt.clone(), seeded(&params, i)))
            .collect(),
        prompt_tokens: prompt.len() as u32,
        n,
        conversations: vec![conversation],
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        policy,
        keep_alive: st.cfg.keep_alive,
        served,
        request_id,
    };
    pipeline::run(&st, prepared, wire).await
}

/// The chat wire format: `chat.completion` bodies and `chat.completion.chunk` events.
struct ChatWire {
    chunks: ChatChunks,
    tok: Arc<Tokenizer>,
    want_lp: bool,
    /// Streams: tokens whose log-probs wait for the next chunk with text.
    pending: Vec<Vec<SampledToken>>,
}

impl ChatWire {
    fn event(&self, choice: ChunkChoice) -> Event {
        json_event(&self.chunks.chunk(vec![choice], None))
    }
}

impl Wire for ChatWire {
    const PROMPT_PARAM: &'static str = "messages";

    fn opening(&mut self, _windowed: bool) -> Vec<Event> {
        (0..self.pending.len())
            .map(|i| self.chunks.role(i))
            .collect()
    }

    fn live(&mut self, i: usize, u: SeqUpdate) -> Option<Event> {
        if let Some(t) = u.token {
            if self.want_lp {
                self.pending[i].push(t);
            }
        }
        if u.text.is_empty() && u.finished.is_none() {
            return None;
        }
        let lp = (self.want_lp && !self.pending[i].is_empty())
            .then(|| logprobs(&self.tok, &std::mem::take(&mut self.pending[i])));
        Some(self.event(ChunkChoice {
            index: i as u32,
            delta: Delta {
                role: None,
                content: (!u.text.is_empty()).then_some(u.text),
            },
            finish_reason: u.finished.map(finish_reason),
            logprobs: lp,
            safety: None,
        }))
    }

    fn release(&mut self, r: stream_gate::Release) -> Event {
        self.event(ChunkChoice {
            index: r.index as u32,
            logprobs: (self.want_lp && !r.tokens.is_empty())
                .then(|| logprobs(&self.tok, &r.tokens)),
            delta: Delta {
                role: None,
                content: (!r.text.is_empty()).then_some(r.text),
            },
            finish_reason: r.finish_reason,
            safety: r.safety,
        })
    }

    fn usage(&self, usage: Usage) -> Event {
        json_event(&self.chunks.chunk(vec![], Some(usage)))
    }

    fn complete(self, choices: Vec<Gated>, usage: Usage) -> Response {
        let c = &self.chunks;
        Json(ChatCompletion {
            id: c.id.clone(),
            object: "chat.completion".into(),
            created: c.created,
            model: c.model.clone(),
            system_fingerprint: c.fingerprint.clone(),
            choices: choices
                .into_iter()
                .enumerate()
                .map(|(i, g)| ChatChoice {
                    index: i as u32,
                    logprobs: self.want_lp.then(|| logprobs(&self.tok, &g.tokens)),
                    message: ChatMessageOut {
                        role: "assistant".into(),
                        content: g.text,
                    },
                    finish_reason: g.finish_reason,
                    safety: g.safety,
                })
                .collect(),
            usage,
        })
        .into_response()
    }

    fn held(self, choices: Vec<Gated>) -> Vec<Event> {
        let mut events = vec![];
        for (i, g) in choices.into_iter().enumerate() {
            events.push(self.chunks.role(i));
            events.push(self.event(ChunkChoice {
                index: i as u32,
                logprobs: self.want_lp.then(|| logprobs(&self.tok, &g.tokens)),
                delta: Delta {
                    role: None,
                    content: Some(g.text),
                },
                finish_reason: None,
                safety: None,
            }));
            events.push(self.event(ChunkChoice {
                index: i as u32,
                delta: Delta::default(),
                finish_reason: Some(g.finish_reason),
                logprobs: None,
                safety: None,
            }));
        }
        events
    }
}

/// Builds this request's `chat.completion.chunk` objects.
#[derive(Clone)]
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        }
    }

    /// The first chunk of a choice: the assistant role.
    fn role(&self, i: usize) -> axum::response::sse::Event {
        json_event(&self.chunk(
            vec![ChunkChoice {
                index: i as u32,
                delta: Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                },
                finish_reason: None,
                logprobs: None,
                safety: None,
            }],
            None,
        ))
    }
}
