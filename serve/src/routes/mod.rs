//! HTTP handlers.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod models;
pub mod moderations;
pub mod system;

use crate::error::ApiError;
use crate::state::AppState;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use safeloop_shared::Tokenizer;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// 429 when the queue is full.
pub fn admit(state: &AppState, in_flight: usize, n: usize) -> Result<(), ApiError> {
    if in_flight + n > state.cfg.max_running + state.cfg.max_queued {
        return Err(ApiError::queue_full(1));
    }
    Ok(())
}

/// The text of one token, as the logprobs fields show it.
pub fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// An SSE response fed by a channel; keep-alive comments while it waits.
pub fn sse(rx: mpsc::Receiver<Event>, keep_alive: u64) -> Response {
    use futures::StreamExt;
    Sse::new(ReceiverStream::new(rx).map(Ok::<_, Infallible>))
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(keep_alive.max(1)))
                .text("keep-alive"),
        )
        .into_response()
}

pub fn json_event<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".into()))
}

pub fn seeded(
    params: &safeloop_shared::engine::SamplingParams,
    i: u32,
) -> safeloop_shared::engine::SamplingParams {
    let mut p = params.clone();
    p.seed = p.seed.map(|s| s.wrapping_add(i as u64));
    p
}
