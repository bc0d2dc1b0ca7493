//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}`.

use crate::api::{ErrorBody, ErrorResponse};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn bad_request(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        if !param.is_empty() {
            e.param = Some(param.to_string());
        }
        e
    }

    /// A request whose fields are each valid but not together (code `conflicting_parameters`).
    pub fn conflicting(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::bad_request(param, message);
        e.code = Some("conflicting_parameters");
        e
    }

    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or invalid API key (send `Authorization: Bearer <key>`)",
        );
        e.code = Some("invalid_api_key");
        e
    }

    pub fn not_found(kind_code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message);
        e.code = Some(kind_code);
        e
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::not_found(
            "model_not_found",
            format!("the model `{model}` does not exist"),
        );
        e.param = Some("model".into());
        e
    }

    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body exceeds the limit of {limit} bytes"),
        );
        e.code = Some("request_too_large");
        e
    }

    pub fn queue_full(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server is at capacity; retry later",
        );
        e.code = Some("queue_full");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        );
        e.retry_after = Some(1);
        e
    }

    pub fn timeout(secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request did not finish within {secs} s"),
        );
        e.code = Some("timeout");
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.map(str::to_string),
            },
        }
    }
}

impl From<safeloop_shared::Error> for ApiError {
    fn from(e: safeloop_shared::Error) -> Self {
        use safeloop_shared::Error as E;
        match e {
            E::InvalidRequest { param, msg } => ApiError::bad_request(&param, msg),
            E::ContextOverflow { .. } => {
                let mut a = ApiError::bad_request("messages", e.to_string());
                a.code = Some("context_length_exceeded");
                a
            }
            E::Template(msg) => ApiError::bad_request("messages", msg),
            E::Tokenizer(msg) => ApiError::bad_request("prompt", msg),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
