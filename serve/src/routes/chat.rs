//! `POST /v1/chat/completions`.

use super::{admit, json_event, seeded, sse, token_text};
use crate::api::*;
use crate::choices::{self, finish_reason, random_id, Timer};
use crate::error::ApiError;
use crate::gate;
use crate::server::RequestId;
use crate::state::{unix_now, PolicyVersion, Shared};
use crate::stream_gate;
use crate::trajectory::{self, RequestInfo};
use crate::validate::{chat_prompt, check_lengths, sampling, ApiJson};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use safeloop_shared::engine::FinishReason;
use safeloop_shared::engine::SampledToken;
use safeloop_shared::Tokenizer;
use std::sync::Arc;
use tokio::sync::mpsc;

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
    let served = match st.policy() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let version = served.version.clone();
    let mut resp = match handle(st.clone(), served, rid.0, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    super::stamp_version(&st, &mut resp, &version);
    resp
}

async fn handle(
    st: Shared,
    served: Arc<PolicyVersion>,
    request_id: String,
    req: ChatCompletionRequest,
) -> Result<Response, ApiError> {
    let engine = served.engine.clone();
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
        return Err(ApiError::bad_request(
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`",
        ));
    }
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
    let safety = st.safety();
    let policy = st.cfg.gate.narrowed(req.safety.as_ref())?;
    gate::check_input(
        &safety,
        &policy,
        conversation.clone(),
        "messages",
        &st.metrics,
    )
    .await?;
    // A blocking gate holds output until it is checked (streams included, for now whole).
    let held = safety.cost.is_some() && policy.holds_output();
    admit(&st, engine.in_flight(), s.n as usize)?;
    let prompt_tokens = prompt.len() as u32;
    let jobs: Vec<_> = (0..s.n)
        .map(|i| (prompt.clone(), seeded(&params, i)))
        .collect();
    let timer = Timer::new(st.metrics.clone());
    let info = RequestInfo::new(request_id, &jobs, served.clone(), &safety);
    let streams = choices::submit_all(&engine, jobs).await?;
    let id = random_id("chatcmpl");
    let created = unix_now();
    let model = st.cfg.served_model_name.clone();
    let fingerprint = served.fingerprint();
    let tok = engine.tokenizer.clone();
    let chunks = ChatChunks {
        id: id.clone(),
        created,
        model: model.clone(),
        fingerprint: fingerprint.clone(),
    };

    if req.stream && !held {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let n = s.n as usize;
        let want_lp = req.logprobs;
        let (tx, rx) = mpsc::channel(64);
        let metrics = st.metrics.clone();
        let st2 = st.clone();
        tokio::spawn(async move {
            let chunk =
                |choices: Vec<ChunkChoice>, usage: Option<Usage>| chunks.chunk(choices, usage);
            for i in 0..n {
                let c = chunks.role(i);
                if tx.send(c).await.is_err() {
                    metrics.disconnects.inc();
                    return;
                }
            }
            let mut pending: Vec<Vec<SampledToken>> = vec![vec![]; n];
            let mut completion_tokens = 0u32;
            let total_choices = streams.len();
            let mut outputs: Vec<Vec<SampledToken>> = vec![vec![]; total_choices];
            let mut reasons = vec![FinishReason::Stop; total_choices];
            let mut texts = vec![String::new(); total_choices];
            let finished = choices::pump(streams, timer.clone(), &metrics, &tx, |i, u| {
                if let Some(t) = &u.token {
                    outputs[i].push(t.clone());
                }
                texts[i].push_str(&u.text);
                if let Some(r) = u.finished {
                    reasons[i] = r;
                }
                if let Some(t) = u.token {
                    completion_tokens += 1;
                    if want_lp {
                        pending[i].push(t);
                    }
                }
                if u.text.is_empty() && u.finished.is_none() {
                    return None;
                }
                let lp = (want_lp && !pending[i].is_empty())
                    .then(|| logprobs(&tok, &std::mem::take(&mut pending[i])));
                Some(json_event(&chunk(
                    vec![ChunkChoice {
                        index: i as u32,
                        delta: Delta {
                            role: None,
                            content: (!u.text.is_empty()).then_some(u.text),
                        },
                        finish_reason: u.finished.map(finish_reason),
                        logprobs: lp,
                        safety: None,
                    }],
                    None,
                )))
            })
            .await;
            if finished {
                let scores = st2
                    .safety()
                    .annotate(
                        texts
                            .into_iter()
                            .map(|t| (conversation.clone(), Some(t)))
                            .collect(),
                    )
                    .await;
                let logged = gate::streamed_candidates(&info.jobs, outputs, reasons, scores);
                let usage = include_usage.then(|| {
                    json_event(&chunk(
                        vec![],
                        Some(Usage::new(prompt_tokens, completion_tokens)),
                    ))
                });
                trajectory::record_and_finish(&st2, &info, logged, &timer, &tx, usage).await;
            }
        });
        return Ok(sse(rx, st.cfg.keep_alive));
    }

    if req.stream && held && policy.window > 0 {
        // Windowed gating: release text only after its window is scored.
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let want_lp = req.logprobs;
        let n = s.n as usize;
        let (tx, rx) = mpsc::channel(64);
        let st2 = st.clone();
        tokio::spawn(async move {
            let chunk =
                |choices: Vec<ChunkChoice>, usage: Option<Usage>| chunks.chunk(choices, usage);
            for i in 0..n {
                let c = chunks.role(i);
                if tx.send(c).await.is_err() {
                    return;
                }
            }
            let emit = |r: stream_gate::Release| {
                json_event(&chunk(
                    vec![ChunkChoice {
                        index: r.index as u32,
                        delta: Delta {
                            role: None,
                            content: (!r.text.is_empty()).then_some(r.text),
                        },
                        finish_reason: r.finish_reason,
                        logprobs: (want_lp && !r.tokens.is_empty())
                            .then(|| logprobs(&tok, &r.tokens)),
                        safety: r.safety,
                    }],
                    None,
                ))
            };
            let Some(cands) = stream_gate::run(
                &engine,
                streams,
                timer.clone(),
                &st2.metrics,
                &tx,
                &safety,
                &policy,
                policy.window,
                &|_| conversation.clone(),
                &info.jobs,
                &emit,
            )
            .await
            else {
                return;
            };
            let completion_tokens: u32 = cands.iter().map(|c| c.tokens.len() as u32).sum();
            let usage = include_usage.then(|| {
                json_event(&chunk(
                    vec![],
                    Some(Usage::new(prompt_tokens, completion_tokens)),
                ))
            });
            trajectory::record_and_finish(&st2, &info, cands, &timer, &tx, usage).await;
        });
        return Ok(sse(rx, st.cfg.keep_alive));
    }
    let results = choices::collect_all(streams, timer.clone(), st.cfg.request_timeout).await?;
    let t_gate = std::time::Instant::now();
    let gated = gate::apply(
        &safety,
        &policy,
        &engine,
        &info.jobs,
        results,
        &|_| conversation.clone(),
        &timer,
        st.cfg.request_timeout,
        &st.metrics,
    )
    .await?;
    if safety.enabled() {
        st.metrics
            .gate_latency
            .observe(t_gate.elapsed().as_secs_f64());
        for g in &gated {
            if let Some(c) = g.safety.as_ref().and_then(|s| s.cost) {
                st.metrics.cost.observe(c as f64);
            }
        }
    }
    let mut candidates = vec![];
    let mut outs = vec![];
    for g in gated {
        candidates.extend(g.candidates);
        outs.push((g.text, g.tokens, g.finish_reason, g.safety));
    }
    // Usage counts every generated token, blocked and resampled candidates included.
    let completion_tokens: u32 = candidates.iter().map(|c| c.tokens.len() as u32).sum();
    trajectory::record(&st, &info, candidates, &timer).await?;
    let usage = Usage::new(prompt_tokens, completion_tokens);
    if req.stream {
        // Held stream: every choice was checked whole; send it as chunks.
        let (tx, rx) = mpsc::channel(4 * outs.len() + 4);
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| chunks.chunk(choices, usage);
        for (i, (text, tokens, reason, _)) in outs.into_iter().enumerate() {
            for (delta, fr, lp) in [
                (
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    None,
                    None,
                ),
                (
                    Delta {
                        role: None,
                        content: Some(text),
                    },
                    None,
                    req.logprobs.then(|| logprobs(&tok, &tokens)),
                ),
                (Delta::default(), Some(reason), None),
            ] {
                let c = chunk(
                    vec![ChunkChoice {
                        index: i as u32,
                        delta,
                        finish_reason: fr,
                        logprobs: lp,
                        safety: None,
                    }],
                    None,
                );
                let _ = tx.try_send(json_event(&c));
            }
        }
        if include_usage {
            let _ = tx.try_send(json_event(&chunk(vec![], Some(usage))));
        }
        let _ = tx.try_send(axum::response::sse::Event::default().data("[DONE]"));
        return Ok(sse(rx, st.cfg.keep_alive));
    }
    let body = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model,
        system_fingerprint: fingerprint,
        choices: outs
            .into_iter()
            .enumerate()
            .map(|(i, (text, tokens, reason, safety))| ChatChoice {
                safety,
                index: i as u32,
                logprobs: req.logprobs.then(|| logprobs(&tok, &tokens)),
                message: ChatMessageOut {
                    role: "assistant".into(),
                    content: text,
                },
                finish_reason: reason,
            })
            .collect(),
        usage,
    };
    Ok(Json(body).into_response())
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
