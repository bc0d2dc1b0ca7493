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
            } else if body_timed_out(&rej) {
                let mut e = ApiError::bad_request("", "the request body did not arrive in time");
                e.status = axum::http::StatusCode::REQUEST_TIMEOUT;
                e.kind = "timeout";
                e
            } else {
                ApiError::bad_request("", format!("could not read the body: {rej}"))
            }
        })?;
        let parsed = serde_json::from_slice::<serde_json::Value>(&bytes).map(integral_numbers);
        let value = match parsed {
            Ok(v) => v,
            Err(e) => {
                return Err(ApiError::bad_request(
                    "",
                    format!("the body is not valid JSON: {e}"),
                ))
            }
        };
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "",
                "the request body must be a JSON object",
            ));
        }
        serde_path_to_error::deserialize(value.clone())
            .map(ApiJson)
            .map_err(|e| field_error(e, &value))
    }
}

/// Whether reading the body failed on the body timeout (`--body-timeout`).
fn body_timed_out(rej: &axum::extract::rejection::BytesRejection) -> bool {
    let mut err: Option<&(dyn std::error::Error + 'static)> = Some(rej);
    while let Some(e) = err {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        err = e.source();
    }
    false
}

/// A deserialization error as a 400 naming the field at fault (`param`).
fn field_error(
    e: serde_path_to_error::Error<serde_json::Error>,
    body: &serde_json::Value,
) -> ApiError {
    let mut path = e.path().to_string();
    let mut inner = e.into_inner();
    if path == "." {
        // serde's `flatten` (the shared sampling fields) loses the path: deserialize those
        // fields alone to name the one at fault.
        if let Err(e2) = serde_path_to_error::deserialize::<_, SamplingFields>(body.clone()) {
            path = e2.path().to_string();
            inner = e2.into_inner();
        }
    }
    let text = inner.to_string();
    // "missing field `x`" is about a field below the path.
    if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        path = if path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
    }
    let param = if path == "." { String::new() } else { path };
    let msg = if param.is_empty() {
        text
    } else {
        format!("`{param}`: {text}")
    };
    ApiError::bad_request(&param, msg)
}

/// JSON Schema's reading of numbers: `3.0` is the integer 3. Integral floats within the 64-bit
/// range become integers, so `"n": 2.0` is accepted where an integer is expected (as OpenAI's
/// and vLLM's Python validators do); `2.5` still is not.
pub fn integral_numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // In range: [-2^63, 2^63) for i64, [0, 2^64) for u64 (powers of two are exact).
            const I: f64 = 9_223_372_036_854_775_808.0;
            const U: f64 = 18_446_744_073_709_551_616.0;
            if f.fract() == 0.0 && (-I..I).contains(&f) {
                Value::from(f as i64)
            } else if f.fract() == 0.0 && (0.0..U).contains(&f) {
                Value::from(f as u64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(a) => Value::Array(a.into_iter().map(integral_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, integral_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The configured body limit, passed to the extractor for its error message.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A float sampling field's accepted range: the validator checks it, the OpenAPI document
/// states it. Checked in f64 (the JSON value) before narrowing to the engine's f32.
pub struct FloatRange {
    pub field: &'static str,
    pub default: f32,
    pub min: f64,
    pub exclusive_min: bool,
    pub max: f64,
}

/// In `SamplingFields` order: temperature, top_p, min_p, repetition_penalty, presence_penalty,
/// frequency_penalty.
pub const FLOAT_RANGES: [FloatRange; 6] = [
    FloatRange::closed("temperature", 1.0, 0.0, 2.0),
    FloatRange {
        exclusive_min: true,
        ..FloatRange::closed("top_p", 1.0, 0.0, 1.0)
    },
    FloatRange::closed("min_p", 0.0, 0.0, 1.0),
    FloatRange {
        exclusive_min: true,
        ..FloatRange::closed("repetition_penalty", 1.0, 0.0, 100.0)
    },
    FloatRange::closed("presence_penalty", 0.0, -2.0, 2.0),
    FloatRange::closed("frequency_penalty", 0.0, -2.0, 2.0),
];

impl FloatRange {
    const fn closed(field: &'static str, default: f32, min: f64, max: f64) -> Self {
        FloatRange {
            field,
            default,
            min,
            exclusive_min: false,
            max,
        }
    }

    pub fn contains(&self, v: f64) -> bool {
        (if self.exclusive_min {
            v > self.min
        } else {
            v >= self.min
        }) && v <= self.max
    }

    /// The value for the engine, or a 400 naming the field.
    pub fn check(&self, v: Option<f64>) -> Result<f32, ApiError> {
        let Some(v) = v else { return Ok(self.default) };
        if !self.contains(v) {
            let (open, close) = (if self.exclusive_min { "(" } else { "[" }, "]");
            return Err(ApiError::bad_request(
                self.field,
                format!(
                    "`{}` must be in {open}{}, {}{close}",
                    self.field, self.min, self.max
                ),
            ));
        }
        let narrowed = v as f32;
        // A tiny positive value must stay positive where the bound is exclusive.
        Ok(if self.exclusive_min && narrowed <= self.min as f32 {
            f32::MIN_POSITIVE
        } else {
            narrowed
        })
    }
}

/// Most stop sequences a request may give.
pub const MAX_STOP: usize = 16;

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
    if stop.len() > MAX_STOP {
        return Err(ApiError::bad_request(
            "stop",
            format!("at most {MAX_STOP} stop sequences"),
        ));
    }
    if let (Some(min), Some(max)) = (s.min_tokens, max_tokens) {
        if min > max {
            return Err(ApiError::conflicting(
                "min_tokens",
                format!("`min_tokens` ({min}) must not exceed `max_tokens` ({max})"),
            ));
        }
    }
    let [temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty] = [
        s.temperature,
        s.top_p,
        s.min_p,
        s.repetition_penalty,
        s.presence_penalty,
        s.frequency_penalty,
    ]
    .into_iter()
    .zip(&FLOAT_RANGES)
    .map(|(v, r)| r.check(v))
    .collect::<Result<Vec<_>, _>>()?
    .try_into()
    .expect("one value per range");
    let params = SamplingParams {
        temperature,
        top_p,
        top_k,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
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
            // Without max_tokens the completion may use the room the prompt leaves: min_tokens
            // must fit in it.
            if params.min_tokens > room {
                let mut e = ApiError::bad_request(
                    "min_tokens",
                    format!(
                        "min_tokens ({}) exceeds the {room} tokens the prompt ({prompt_len} tokens) leaves of the limit of {max_total}",
                        params.min_tokens
                    ),
                );
                e.code = Some("context_length_exceeded");
                return Err(e);
            }
        }
    }
    Ok(())
}
