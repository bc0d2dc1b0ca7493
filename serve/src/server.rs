//! The HTTP server: routes, middleware (auth, request ids, body limit, metrics), background
//! model loading and graceful shutdown.

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::routes::{admin, chat, completions, models, system};
use crate::state::{AppState, Shared};
use crate::validate::BodyLimit;
use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Accepts the client's `X-Request-Id` or makes one; echoes it on the response.
/// The request's id, available to handlers as an extension.
#[derive(Clone)]
pub struct RequestId(pub String);

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| crate::choices::random_id("req"));
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Counts requests by route and status.
async fn count(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    st.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

/// Whether the request carries `Authorization: Bearer <key>`. Compared in constant time:
/// both sides are hashed (SHA-256) first, so neither the key's length nor the position of the
/// first differing byte shows in the timing; the comparison of the digests reads every byte.
fn bearer_matches(req: &Request, key: &str) -> bool {
    use sha2::{Digest, Sha256};
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(key.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Bearer-token check for /v1 routes when `--api-key` is set.
async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        if !bearer_matches(&req, key.expose()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// The admin API's own key (`--admin-key`; the routes exist only when it is set).
async fn admin_auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match &st.cfg.admin_key {
        Some(key) if bearer_matches(&req, key.expose()) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

async fn not_found(req: Request) -> Response {
    ApiError::not_found(
        "not_found",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut e = ApiError::bad_request(
        "",
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    );
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e.into_response()
}

pub fn router(state: Shared) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(chat::chat_completions))
        .route("/completions", post(completions::completions))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::get))
        .route(
            "/moderations",
            post(crate::routes::moderations::moderations),
        )
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut app = Router::new().nest("/v1", v1);
    if state.cfg.admin_key.is_some() {
        let admin = Router::new()
            .route("/models", get(admin::list))
            .route("/models/{name}/reload", post(admin::reload))
            .route("/models/{name}/swap", post(admin::pin))
            .route("/models/{name}/rollback", post(admin::rollback))
            .layer(middleware::from_fn_with_state(state.clone(), admin_auth));
        app = app.nest("/admin/v1", admin);
    }
    app.route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(state.cfg.body_timeout),
        ))
        .layer(axum::Extension(BodyLimit(state.cfg.max_body_bytes)))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn shutdown_signal(state: Shared) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
    eprintln!("safeloop-serve: shutting down, finishing in-flight requests");
    state.shutting_down.store(true, Ordering::Relaxed);
}

pub async fn serve(cfg: ServeConfig, device: candle_core::Device) -> Result<()> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let grace = cfg.shutdown_grace;
    let log = match &cfg.log {
        Some(lc) => Some(
            safeloop_shared::trajlog::LogWriter::open(lc.clone())
                .with_context(|| format!("opening the trajectory log in {}", lc.dir.display()))?,
        ),
        None => None,
    };
    let state: Shared = Arc::new(AppState::new(cfg, device, log));
    // Serve /health (503 "loading") while the models load; then follow the registry.
    let loader = state.clone();
    tokio::spawn(async move {
        let t = std::time::Instant::now();
        if let Err(e) = crate::swap::load_initial(&loader).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        tracing::info!(secs = t.elapsed().as_secs_f64(), "models ready");
        eprintln!("safeloop-serve: ready");
        crate::swap::follow(loader).await;
    });
    eprintln!("safeloop-serve: listening on http://{local}");
    let app = router(state.clone());
    let signal_state = state.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = crate::listen::ConnLimits {
        max_connections: state.cfg.max_connections,
        header_timeout: Duration::from_secs(state.cfg.header_timeout),
    };
    let server = crate::listen::serve(listener, app, limits, state.metrics.clone(), async move {
        shutdown_signal(signal_state).await;
        let _ = done_tx.send(());
    });
    let grace_timer = async move {
        let _ = done_rx.await;
        tokio::time::sleep(Duration::from_secs(grace)).await;
    };
    let failed = engine_watchdog(state.clone());
    let failure = tokio::select! {
        _ = server => None,
        _ = grace_timer => { eprintln!("safeloop-serve: grace period over, exiting with requests in flight"); None }
        why = failed => Some(why),
    };
    if let Some(log) = &state.log {
        log.close().context("sealing the trajectory log")?;
    }
    match failure {
        Some(why) => anyhow::bail!("{why}; exiting so that a supervisor restarts the server"),
        None => Ok(()),
    }
}

/// Resolves when the serving engine has died (its thread panicked): /health already answers
/// 503 `failed` and the requests it held got 5xx error objects; the server stops accepting,
/// lets those answers go out, and the process exits non-zero.
async fn engine_watchdog(state: Shared) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(why) = state.engine_failure() {
            eprintln!("safeloop-serve: fatal: {why}");
            state.shutting_down.store(true, Ordering::Relaxed);
            // The failed requests' error responses are being written.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return why;
        }
    }
}
