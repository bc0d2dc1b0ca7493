//! `/openapi.json`: the generated OpenAPI document, tightened to exactly what this server's
//! validator accepts — the served model names, `n` and token limits, token ids inside the
//! vocabulary, the gate overrides the server allows — and to the routes and keys it has (the
//! admin API only when `--admin-key` is set; `/v1` declares its bearer key when `--api-key` is).
//! A fuzzer that follows the document reaches generation; a request that the document allows is
//! rejected only by the cross-field rules named in the operations' descriptions (400 with code
//! `conflicting_parameters` or `context_length_exceeded`).

use crate::routes::{admin, chat, completions, models, moderations, system};
use crate::state::AppState;
use safeloop_shared::engine::params::MAX_TOP_LOGPROBS;
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "safeloop-serve",
        description = "OpenAI-compatible serving with safety gating"
    ),
    paths(
        chat::chat_completions,
        completions::completions,
        models::list,
        models::get,
        moderations::moderations,
        system::health,
        system::metrics,
        system::openapi,
        admin::list,
        admin::reload,
        admin::pin,
        admin::rollback
    ),
    components(schemas(crate::api::ErrorResponse, crate::api::ChatCompletionChunk))
)]
struct ApiDoc;

/// The document as generated from the handlers' annotations, before this server's limits.
pub fn generated() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// What one server accepts, as the document states it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Names accepted in `model`.
    pub models: Vec<String>,
    pub max_n: u32,
    /// Prompt + completion tokens (the context or `--max-total-tokens`); unknown while loading.
    pub max_total_tokens: Option<usize>,
    /// Token ids are below this; unknown while loading.
    pub vocab: Option<usize>,
    /// A request's `safety.threshold` may not exceed this.
    pub gate_threshold: f32,
    /// The `safety.action` values as strict as the server's or stricter.
    pub gate_actions: Vec<&'static str>,
    pub api_key: bool,
    pub admin: bool,
}

impl Limits {
    pub fn of(st: &AppState) -> Self {
        let policy = st.policy().ok();
        let context = policy.as_ref().map(|p| p.engine.max_context);
        Limits {
            models: vec![st.cfg.served_model_name.clone()],
            max_n: st.cfg.max_n,
            max_total_tokens: context.map(|c| st.cfg.max_total_tokens.map_or(c, |m| m.min(c))),
            vocab: policy.as_ref().map(|p| p.engine.tokenizer.vocab_size()),
            gate_threshold: st.gate_policy().threshold,
            gate_actions: st.cfg.gate.action.at_least(),
            api_key: st.cfg.api_key.is_some(),
            admin: st.cfg.admin_key.is_some(),
        }
    }
}

/// The document this server serves.
pub fn document(limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(generated()).expect("the OpenAPI document serializes");
    routes_and_keys(&mut doc, limits);
    sampling(&mut doc, limits);
    chat_request(&mut doc, limits);
    completion_request(&mut doc, limits);
    moderation_request(&mut doc);
    gate_override(&mut doc, limits);
    responses(&mut doc);
    doc
}

/// `doc[a][b]…`, created as objects on the way.
fn at<'a>(doc: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(doc, |v, k| {
        if !v.is_object() {
            *v = json!({});
        }
        v.as_object_mut()
            .expect("an object")
            .entry(k.to_string())
            .or_insert_with(|| json!({}))
    })
}

fn schema<'a>(doc: &'a mut Value, name: &str) -> &'a mut Value {
    at(doc, &["components", "schemas", name])
}

/// The object schema holding a request's own (non-flattened) properties.
fn own_properties<'a>(doc: &'a mut Value, name: &str) -> &'a mut Value {
    let s = schema(doc, name);
    if s.get("allOf").is_none() {
        return at(s, &["properties"]);
    }
    s["allOf"]
        .as_array_mut()
        .expect("allOf is a list")
        .iter_mut()
        .find_map(|p| p.get_mut("properties"))
        .expect("a flattened request keeps its own properties in allOf")
}

fn set(props: &mut Value, field: &str, schema: Value) {
    props[field] = schema;
}

fn nullable(mut s: Value) -> Value {
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        s["type"] = json!([t, "null"]);
        s
    } else {
        json!({"oneOf": [{"type": "null"}, s]})
    }
}

/// An integer field from `min` to `max`; with no limit of its own, to what the server parses (an i64 — a larger
/// JSON integer is refused as the wrong type, so the document must not admit it).
fn bounded_int(min: i64, max: Option<usize>) -> Value {
    let mut s = json!({"type": "integer", "minimum": min});
    match max {
        Some(m) => s["maximum"] = json!(m),
        None => {
            s["maximum"] = json!(i64::MAX);
            s["format"] = json!("int64");
        }
    }
    s
}

fn token_id(limits: &Limits) -> Value {
    bounded_int(0, limits.vocab.map(|v| v.saturating_sub(1)))
}

fn routes_and_keys(doc: &mut Value, limits: &Limits) {
    let paths = at(doc, &["paths"]).as_object_mut().expect("paths");
    if !limits.admin {
        paths.retain(|p, _| !p.starts_with("/admin/"));
    }
    let mut schemes = serde_json::Map::new();
    if limits.admin {
        schemes.insert(
            "admin_key".into(),
            json!({"type": "http", "scheme": "bearer", "description": "--admin-key"}),
        );
    }
    if limits.api_key {
        schemes.insert(
            "api_key".into(),
            json!({"type": "http", "scheme": "bearer", "description": "--api-key"}),
        );
    }
    for (path, item) in paths.iter_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            if path.starts_with("/admin/") {
                op["security"] = json!([{"admin_key": []}]);
            } else if path.starts_with("/v1/") && limits.api_key {
                op["security"] = json!([{"api_key": []}]);
            }
        }
    }
    if !schemes.is_empty() {
        *at(doc, &["components", "securitySchemes"]) = Value::Object(schemes);
    }
}

/// The fields both generation endpoints share (`SamplingFields`).
fn sampling(doc: &mut Value, limits: &Limits) {
    // A completion needs at least one prompt token.
    let max_new = limits.max_total_tokens.map(|t| t.saturating_sub(1));
    let props = at(schema(doc, "SamplingFields"), &["properties"]);
    set(props, "max_tokens", nullable(bounded_int(1, max_new)));
    set(props, "min_tokens", nullable(bounded_int(0, max_new)));
    set(
        props,
        "n",
        nullable(bounded_int(1, Some(limits.max_n as usize))),
    );
    for r in &crate::validate::FLOAT_RANGES {
        let bound = if r.exclusive_min {
            "exclusiveMinimum"
        } else {
            "minimum"
        };
        let mut s = json!({"type": "number", "maximum": r.max});
        s[bound] = json!(r.min);
        set(props, r.field, nullable(s));
    }
    set(props, "top_k", nullable(bounded_int(-1, None)));
    set(
        props,
        "seed",
        nullable(json!({"type": "integer", "format": "int64"})),
    );
    let stop = json!({"type": "string", "minLength": 1});
    set(
        props,
        "stop",
        json!({"oneOf": [{"type": "null"}, stop, {"type": "array", "maxItems": crate::validate::MAX_STOP, "items": stop}],
               "description": "Up to 16 non-empty stop strings"}),
    );
    set(
        props,
        "stop_token_ids",
        nullable(json!({"type": "array", "items": token_id(limits)})),
    );
    set(
        props,
        "logit_bias",
        json!({"type": ["object", "null"], "maxProperties": 0, "description": "Not supported: only an empty object is accepted"}),
    );
}

fn model_name(limits: &Limits) -> Value {
    json!({"type": "string", "enum": limits.models, "description": "A served model id (GET /v1/models)"})
}

fn chat_request(doc: &mut Value, limits: &Limits) {
    let max_new = limits.max_total_tokens.map(|t| t.saturating_sub(1));
    let props = own_properties(doc, "ChatCompletionRequest");
    set(props, "model", model_name(limits));
    set(
        props,
        "messages",
        json!({"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/ChatMessageIn"}}),
    );
    set(
        props,
        "max_completion_tokens",
        nullable(bounded_int(1, max_new)),
    );
    set(
        props,
        "top_logprobs",
        nullable(bounded_int(0, Some(MAX_TOP_LOGPROBS))),
    );
    set(
        props,
        "tools",
        json!({"type": ["array", "null"], "maxItems": 0, "description": "Tool calling is not supported: only an empty list is accepted"}),
    );
    set(
        props,
        "response_format",
        json!({"oneOf": [{"type": "null"}, {"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}}]}),
    );
    let role = at(schema(doc, "ChatMessageIn"), &["properties", "role"]);
    *role = json!({"type": "string", "enum": ["system", "developer", "user", "assistant"]});
    *schema(doc, "ContentPart") = json!({
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        "description": "A text part (the only kind accepted)",
    });
    describe(
        doc,
        "/v1/chat/completions",
        "Cross-field rules (400, code `conflicting_parameters`): `top_logprobs` > 0 needs \
         `logprobs: true`; `min_tokens` ≤ `max_tokens`. The rendered prompt plus `max_tokens` \
         (or, without it, `min_tokens`) must fit the context (400, code `context_length_exceeded`).",
    );
}

fn completion_request(doc: &mut Value, limits: &Limits) {
    let props = own_properties(doc, "CompletionRequest");
    set(props, "model", model_name(limits));
    set(props, "logprobs", nullable(bounded_int(0, Some(5))));
    set(
        props,
        "suffix",
        json!({"type": ["string", "null"], "maxLength": 0, "description": "Insertion is not supported: only an empty suffix is accepted"}),
    );
    set(
        props,
        "best_of",
        nullable(bounded_int(1, Some(limits.max_n as usize))),
    );
    let text = json!({"type": "string", "minLength": 1});
    let ids = json!({"type": "array", "minItems": 1, "items": token_id(limits)});
    *schema(doc, "Prompt") = json!({
        "oneOf": [text, {"type": "array", "minItems": 1, "items": text}, ids,
                  {"type": "array", "minItems": 1, "items": ids}],
        "description": "A string, a list of strings, a list of token ids, or a list of such lists (none empty)",
    });
    describe(
        doc,
        "/v1/completions",
        "Cross-field rules (400, code `conflicting_parameters`): `best_of` equals `n` when given; \
         `min_tokens` ≤ `max_tokens` (16 when absent). Each prompt plus `max_tokens` must fit \
         the context (400, code `context_length_exceeded`).",
    );
}

fn moderation_request(doc: &mut Value) {
    let props = at(schema(doc, "ModerationRequest"), &["properties"]);
    set(
        props,
        "input",
        json!({"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}],
               "description": "A string or a non-empty list of strings"}),
    );
}

fn gate_override(doc: &mut Value, limits: &Limits) {
    let props = at(schema(doc, "GateOverride"), &["properties"]);
    set(
        props,
        "threshold",
        nullable(json!({"type": "number", "maximum": limits.gate_threshold,
                        "description": "May only lower the server's threshold"})),
    );
    set(
        props,
        "action",
        nullable(json!({"type": "string", "enum": limits.gate_actions,
                        "description": "As strict as the server's action or stricter (annotate < resample < block)"})),
    );
}

fn describe(doc: &mut Value, path: &str, text: &str) {
    let op = at(doc, &["paths", path, "post"]);
    let old = op
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    op["description"] = json!(if old.is_empty() {
        text.to_string()
    } else {
        format!("{old}\n\n{text}")
    });
}

/// Statuses every operation can answer besides its own: a bad method (405), a timeout (408),
/// an internal error (500), and the generation endpoints' SSE bodies.
fn responses(doc: &mut Value) {
    let error = json!({"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}});
    let paths = at(doc, &["paths"]).as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let rs = at(op, &["responses"]).as_object_mut().expect("responses");
            if path.starts_with("/v1/") || path.starts_with("/admin/") {
                for code in ["400", "401", "408", "500", "503"] {
                    rs.entry(code).or_insert_with(|| error.clone());
                }
                rs.entry("413").or_insert_with(|| error.clone());
            }
            let chunk = match path.as_str() {
                "/v1/chat/completions" => "ChatCompletionChunk",
                "/v1/completions" => "Completion",
                _ => continue,
            };
            rs.entry("429").or_insert_with(|| error.clone());
            if let Some(ok) = rs.get_mut("200") {
                // Each event's `data` is a JSON chunk, the last one `[DONE]`.
                let data = json!({
                    "type": "string",
                    "if": {"const": "[DONE]"},
                    "else": {"contentMediaType": "application/json",
                             "contentSchema": {"$ref": format!("#/components/schemas/{chunk}")}},
                });
                ok["content"]["text/event-stream"] = json!({
                    "schema": {"type": "object", "required": ["data"], "properties": {"data": data},
                               "description": "Server-sent events (one schema per event): JSON chunks, then `data: [DONE]`"},
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            models: vec!["m".into()],
            max_n: 4,
            max_total_tokens: Some(128),
            vocab: Some(100),
            gate_threshold: 0.5,
            gate_actions: vec!["resample", "block"],
            api_key: true,
            admin: false,
        }
    }

    #[test]
    fn states_this_servers_limits() {
        let d = document(&limits());
        assert!(d["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/admin")));
        let s = &d["components"]["schemas"];
        assert_eq!(s["SamplingFields"]["properties"]["n"]["maximum"], 4);
        assert_eq!(
            s["SamplingFields"]["properties"]["max_tokens"]["maximum"],
            127
        );
        assert_eq!(s["Prompt"]["oneOf"][2]["items"]["maximum"], 99);
        // No limit of its own: what the request parser takes (a fuzzer found 6.5e30 admitted, then refused).
        assert_eq!(
            s["SamplingFields"]["properties"]["top_k"]["maximum"],
            i64::MAX
        );
        assert_eq!(
            s["GateOverride"]["properties"]["action"]["enum"],
            json!(["resample", "block"])
        );
        assert_eq!(
            d["paths"]["/v1/models"]["get"]["security"],
            json!([{"api_key": []}])
        );
        assert_eq!(d["paths"]["/health"]["get"].get("security"), None);
        let chat = &d["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"];
        assert!(chat.get("text/event-stream").is_some());
    }

    #[test]
    fn admin_routes_need_the_admin_key() {
        let d = document(&Limits {
            admin: true,
            api_key: false,
            ..limits()
        });
        assert_eq!(
            d["paths"]["/admin/v1/models"]["get"]["security"],
            json!([{"admin_key": []}])
        );
        assert_eq!(d["paths"]["/v1/models"]["get"].get("security"), None);
    }
}
