//! `/health`, `/metrics`, `/openapi.json`.

use crate::api::Health;
use crate::state::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// 200 when ready; 503 while the model loads, when the engine has failed (the process is
/// about to exit) or while the server shuts down.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(State(st): State<Shared>) -> Response {
    let (code, status) = if st.engine_failure().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "failed")
    } else if st.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if !st.is_loaded() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        code,
        Json(Health {
            status: status.into(),
        }),
    )
        .into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
pub async fn metrics(State(st): State<Shared>) -> Response {
    if let Some(log) = &st.log {
        use std::sync::atomic::Ordering::Relaxed;
        let s = log.stats();
        st.metrics.log_records.set(s.records.load(Relaxed) as i64);
        st.metrics.log_bytes.set(s.bytes.load(Relaxed) as i64);
        st.metrics.log_fsyncs.set(s.fsyncs.load(Relaxed) as i64);
        st.metrics
            .log_fsync_seconds
            .set(s.fsync_nanos.load(Relaxed) as f64 / 1e9);
    }
    #[cfg(all(target_os = "linux", not(target_env = "msvc")))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_ok() {
            if let (Ok(a), Ok(r)) = (stats::allocated::read(), stats::resident::read()) {
                st.metrics.heap_allocated.set(a as i64);
                st.metrics.heap_resident.set(r as i64);
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// This server's OpenAPI 3 description: its routes, keys and limits.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn openapi(State(st): State<Shared>) -> Response {
    Json(crate::openapi::document(&crate::openapi::Limits::of(&st))).into_response()
}
