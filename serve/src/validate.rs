//! Request validation: OpenAI fields → engine prompts and sampling parameters. Every error
//! names the offending parameter.

use crate::api::{ChatMessageIn, MessageContent, Prompt, SamplingFields};
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use safeloop_shared::engine::params::MAX_TOP_LOGPROBS;
use safeloop_shared::engine::SamplingParams;
use safeloop_shared::{ChatMessage, Tokenizer};
use serde::de::DeserializeOwned;

/// JSON body extractor whose rejections are OpenAI errors naming the bad field (413 when the
/// body is over the limit).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request("", format!("could not read the body: {rej}"))
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(ApiJson)
            .map_err(|e| {
                let mut path = e.path().to_string();
                let mut inner = e.into_inner();
                if path == "." && !inner.is_syntax() && !inner.is_eof() {
                    // serde's `flatten` (the shared sampling fields) loses the path:
                    // deserialize those fields alone to name the one at fault.
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                        if let Err(e2) = serde_path_to_error::deserialize::<_, SamplingFields>(v) {
                            path = e2.path().to_string();
                            inner = e2.into_inner();
                        }
                    }
                }
                let param = if path == "." { String::new() } else { path };
                let msg = if inner.is_syntax() || inner.is_eof() {
                    format!("the body is not valid JSON: {inner}")
                } else if param.is_empty() {
                    inner.to_string()
                } else {
                    format!("`{param}`: {inner}")
                };
                ApiError::bad_request(&param, msg)
            })
    }
}

/// The configured body limit, passed to the extractor for its error message.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Validated sampling settings of one request.
pub struct Sampling {
    pub params: SamplingParams,
    pub n: u32,
}

pub fn sampling(
    s: &SamplingFields,
    max_tokens: Option<u32>,
    top_logprobs: u32,
    logprobs: bool,
    state: &AppState,
) -> Result<Sampling, ApiError> {
    if let Some(user) = &s.user {
        tracing::debug!(user = %user, "request from end user");
    }
    let n = s.n.unwrap_or(1);
    if n == 0 || n > state.cfg.max_n {
        return Err(ApiError::bad_request(
            "n",
            format!("`n` must be between 1 and {}", state.cfg.max_n),
        ));
    }
    if top_logprobs as usize > MAX_TOP_LOGPROBS {
        return Err(ApiError::bad_request(
            "top_logprobs",
            format!("`top_logprobs` must be at most {MAX_TOP_LOGPROBS}"),
        ));
    }
    if s.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::bad_request(
            "logit_bias",
            "`logit_bias` is not supported",
        ));
    }
    let top_k = match s.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(_) => {
            return Err(ApiError::bad_request(
                "top_k",
                "`top_k` must be -1, 0 or positive",
            ))
        }
    };
    let stop = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::bad_request("stop", "at most 16 stop sequences"));
    }
    let params = SamplingParams {
        temperature: s.temperature.unwrap_or(1.0),
        top_p: s.top_p.unwrap_or(1.0),
        top_k,
        min_p: s.min_p.unwrap_or(0.0),
        repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        seed: s.seed.map(|v| v as u64),
        max_tokens: max_tokens.map(|m| m as usize),
        min_tokens: s.min_tokens.unwrap_or(0) as usize,
        stop,
        stop_token_ids: s.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: s.ignore_eos.unwrap_or(false),
        logprobs,
        top_logprobs: top_logprobs as usize,
        prompt_logprobs: false,
        skip_special_tokens: true,
    };
    params.validate()?;
    Ok(Sampling { params, n })
}

/// Chat messages → template → token ids.
pub fn chat_prompt(
    messages: &[ChatMessageIn],
    tok: &Tokenizer,
) -> Result<(Vec<u32>, Vec<ChatMessage>), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut msgs = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role.clone(),
            "developer" => "system".to_string(),
            other => {
                return Err(ApiError::bad_request(
                    &format!("messages[{i}].role"),
                    format!("role `{other}` is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::bad_request(
                                &format!("messages[{i}].content[{j}].text"),
                                "a text part needs `text`",
                            ))
                        }
                        (other, _) => {
                            return Err(ApiError::bad_request(
                                &format!("messages[{i}].content[{j}].type"),
                                format!("content part type `{other}` is not supported (text only)"),
                            ))
                        }
                    }
                }
                text
            }
        };
        msgs.push(ChatMessage { role, content });
    }
    let add_generation_prompt = msgs.last().is_none_or(|m| m.role != "assistant");
    Ok((tok.encode_chat(&msgs, add_generation_prompt)?, msgs))
}

/// Completion prompts → token ids (one list per prompt).
pub fn completion_prompts(
    prompt: &Prompt,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let lists = match prompt {
        Prompt::Text(t) => vec![tok.encode(t, true)?],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| tok.encode(t, true))
            .collect::<safeloop_shared::Result<_>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(l) => l.clone(),
    };
    if lists.is_empty() {
        return Err(ApiError::bad_request(
            "prompt",
            "`prompt` must not be empty",
        ));
    }
    for (i, ids) in lists.iter().enumerate() {
        if ids.is_empty() {
            return Err(ApiError::bad_request(
                "prompt",
                format!("prompt {i} has no tokens"),
            ));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::bad_request(
                "prompt",
                format!("token id {bad} is outside the vocabulary ({vocab})"),
            ));
        }
    }
    Ok(lists)
}

/// Enforces the prompt and total token limits (clear 400s instead of engine errors).
pub fn check_lengths(
    prompt_len: usize,
    params: &mut SamplingParams,
    state: &AppState,
    context: usize,
    param: &str,
) -> Result<(), ApiError> {
    let max_prompt = state.cfg.max_prompt_tokens.unwrap_or(context).min(context);
    if prompt_len > max_prompt || prompt_len >= context {
        let mut e = ApiError::bad_request(
            param,
            format!(
                "the prompt has {prompt_len} tokens; the limit is {}",
                max_prompt.min(context - 1)
            ),
        );
        e.code = Some("context_length_exceeded");
        return Err(e);
    }
    let max_total = state.cfg.max_total_tokens.unwrap_or(context).min(context);
    let room = max_total.saturating_sub(prompt_len);
    match params.max_tokens {
        Some(m) if m > room => {
            let mut e = ApiError::bad_request(
                "max_tokens",
                format!(
                    "prompt ({prompt_len} tokens) + max_tokens ({m}) exceeds the limit of {max_total} tokens"
                ),
            );
            e.code = Some("context_length_exceeded");
            return Err(e);
        }
        Some(_) => {}
        None => {
            if room == 0 {
                return Err(ApiError::bad_request(
                    param,
                    "no room left for a completion",
                ));
            }
            params.max_tokens = Some(room);
        }
    }
    Ok(())
}
