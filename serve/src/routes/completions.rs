//! `POST /v1/completions`.

use super::{admit, json_event, seeded, sse, token_text};
use crate::api::*;
use crate::choices::{self, finish_reason, random_id, Timer};
use crate::error::ApiError;
use crate::gate;
use crate::server::RequestId;
use crate::state::{unix_now, PolicyVersion, Shared};
use crate::stream_gate;
use crate::trajectory::{self, RequestInfo};
use crate::validate::{check_lengths, completion_prompts, sampling, ApiJson};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use safeloop_shared::engine::FinishReason;
use safeloop_shared::engine::{PromptLogprob, SampledToken};
use safeloop_shared::{ChatMessage, Tokenizer};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    req: CompletionRequest,
) -> Result<Response, ApiError> {
    let engine = served.engine.clone();
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
        return Err(ApiError::bad_request(
            "best_of",
            "`best_of` other than `n` is not supported",
        ));
    }
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
    let safety = st.safety();
    let policy = st.cfg.gate.narrowed(req.safety.as_ref())?;
    for t in &prompt_texts {
        gate::check_input(
            &safety,
            &policy,
            vec![ChatMessage::new("user", t)],
            "prompt",
            &st.metrics,
        )
        .await?;
    }
    // A blocking gate holds output until it is checked (streams included, for now whole).
    let held = safety.cost.is_some() && policy.holds_output();
    admit(&st, engine.in_flight(), jobs.len())?;
    let n = s.n as usize;
    let timer = Timer::new(st.metrics.clone());
    let info = RequestInfo::new(request_id, &jobs, served.clone(), &safety);
    let streams = choices::submit_all(&engine, jobs).await?;
    let head = CompletionHead {
        id: random_id("cmpl"),
        created: unix_now(),
        model: st.cfg.served_model_name.clone(),
        fingerprint: served.fingerprint(),
    };
    let echo = req.echo;

    if req.stream && !held {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let total = streams.len();
        let (tx, rx) = mpsc::channel(64);
        let metrics = st.metrics.clone();
        let st2 = st.clone();
        tokio::spawn(async move {
            let chunk =
                |choices: Vec<CompletionChoice>, usage: Option<Usage>| head.build(choices, usage);
            let mut offsets = vec![0u32; total];
            let mut pending: Vec<Vec<SampledToken>> = vec![vec![]; total];
            let mut echoed = vec![!echo; total];
            let mut texts = vec![String::new(); total];
            let mut completion_tokens = 0u32;
            let total_choices = streams.len();
            let mut outputs: Vec<Vec<SampledToken>> = vec![vec![]; total_choices];
            let mut reasons = vec![FinishReason::Stop; total_choices];
            let finished = choices::pump(streams, timer.clone(), &metrics, &tx, |i, u| {
                if let Some(t) = &u.token {
                    outputs[i].push(t.clone());
                }
                if let Some(r) = u.finished {
                    reasons[i] = r;
                }
                let mut text = String::new();
                let mut prompt_lp: Vec<PromptLogprob> = vec![];
                if !echoed[i] {
                    echoed[i] = true;
                    text.push_str(&prompt_texts[i / n]);
                    prompt_lp = u.prompt_logprobs.clone().unwrap_or_default();
                }
                if let Some(t) = u.token {
                    completion_tokens += 1;
                    if want_lp {
                        pending[i].push(t);
                    }
                }
                text.push_str(&u.text);
                texts[i].push_str(&u.text);
                if text.is_empty() && u.finished.is_none() {
                    return None;
                }
                let lp = want_lp.then(|| {
                    logprobs(
                        &tok,
                        &prompt_lp,
                        &std::mem::take(&mut pending[i]),
                        offsets[i],
                    )
                });
                offsets[i] += text.chars().count() as u32;
                Some(json_event(&chunk(
                    vec![CompletionChoice {
                        safety: None,
                        index: i as u32,
                        text,
                        finish_reason: u.finished.map(finish_reason),
                        logprobs: lp,
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
                            .enumerate()
                            .map(|(i, t)| {
                                (
                                    vec![ChatMessage::new("user", &prompt_texts[i / n])],
                                    Some(t),
                                )
                            })
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
        let total = streams.len();
        let (tx, rx) = mpsc::channel(64);
        let st2 = st.clone();
        tokio::spawn(async move {
            let chunk =
                |choices: Vec<CompletionChoice>, usage: Option<Usage>| head.build(choices, usage);
            if echo {
                for i in 0..total {
                    let c = chunk(
                        vec![CompletionChoice {
                            index: i as u32,
                            text: prompt_texts[i / n].clone(),
                            finish_reason: None,
                            logprobs: None,
                            safety: None,
                        }],
                        None,
                    );
                    if tx.send(json_event(&c)).await.is_err() {
                        return;
                    }
                }
            }
            let emit = |r: stream_gate::Release| {
                json_event(&chunk(
                    vec![CompletionChoice {
                        index: r.index as u32,
                        logprobs: (want_lp && !r.tokens.is_empty())
                            .then(|| logprobs(&tok, &[], &r.tokens, 0)),
                        text: r.text,
                        finish_reason: r.finish_reason,
                        safety: r.safety,
                    }],
                    None,
                ))
            };
            let conv = |i: usize| vec![ChatMessage::new("user", &prompt_texts[i / n])];
            let Some(cands) = stream_gate::run(
                &engine,
                streams,
                timer.clone(),
                &st2.metrics,
                &tx,
                &safety,
                &policy,
                policy.window,
                &conv,
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
    let conv = |i: usize| vec![ChatMessage::new("user", &prompt_texts[i / n])];
    let gated = gate::apply(
        &safety,
        &policy,
        &engine,
        &info.jobs,
        results,
        &conv,
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
    let mut choices_out = vec![];
    for (i, g) in gated.into_iter().enumerate() {
        candidates.extend(g.candidates);
        let prompt_text = if echo {
            prompt_texts[i / n].as_str()
        } else {
            ""
        };
        choices_out.push(CompletionChoice {
            safety: g.safety,
            index: i as u32,
            logprobs: want_lp.then(|| logprobs(&tok, &g.prompt_logprobs, &g.tokens, 0)),
            text: format!("{prompt_text}{}", g.text),
            finish_reason: Some(g.finish_reason),
        });
    }
    // Usage counts every generated token, blocked and resampled candidates included.
    let completion_tokens: u32 = candidates.iter().map(|c| c.tokens.len() as u32).sum();
    trajectory::record(&st, &info, candidates, &timer).await?;
    let usage = Usage::new(prompt_tokens, completion_tokens);
    let body = head.build(choices_out, Some(usage));
    if req.stream {
        // Held stream: every choice was checked whole; send one chunk per choice.
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let (tx, rx) = mpsc::channel(body.choices.len() + 3);
        for c in &body.choices {
            let mut one = body.clone();
            one.usage = None;
            one.choices = vec![c.clone()];
            let _ = tx.try_send(json_event(&one));
        }
        if include_usage {
            let mut u = body.clone();
            u.choices = vec![];
            let _ = tx.try_send(json_event(&u));
        }
        let _ = tx.try_send(axum::response::sse::Event::default().data("[DONE]"));
        return Ok(sse(rx, st.cfg.keep_alive));
    }
    Ok(Json(body).into_response())
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
