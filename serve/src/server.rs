//! The HTTP server: routes, middleware (auth, request ids, body limit, metrics), background
//! model loading and graceful shutdown.

use crate::config::ServeConfig;
use crate::engine_task::EngineHandle;
use crate::error::ApiError;
use crate::routes::{chat, completions, models, system};
use crate::state::{AppState, Shared};
use crate::validate::BodyLimit;
use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use safeloop_shared::engine::EngineConfig;
use safeloop_shared::{load_causal_lm, LoadOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
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
        crate::routes::moderations::moderations,
        system::health,
        system::metrics,
        system::openapi
    ),
    components(schemas(crate::api::ErrorResponse, crate::api::ChatCompletionChunk))
)]
struct ApiDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

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

/// Bearer-token check for /v1 routes when `--api-key` is set.
async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Length-independent comparison time is not a goal here; equality is.
        let ok = given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0;
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
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
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(axum::Extension(BodyLimit(state.cfg.max_body_bytes)))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// A cheap, stable weight version: the pinned sha256 for the default model, else a digest
/// of the config and the weight files' names and sizes.
fn fingerprint(cfg: &ServeConfig) -> String {
    use sha2::{Digest, Sha256};
    if cfg.default_model {
        return format!(
            "fp_{}",
            &safeloop_shared::assets::DEFAULT_MODEL_SHA256[..12]
        );
    }
    let mut h = Sha256::new();
    let path = &cfg.model;
    if path.is_dir() {
        if let Ok(c) = std::fs::read(path.join("config.json")) {
            h.update(&c);
        }
        let mut files: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect();
        files.sort();
        for (name, len) in files {
            h.update(name.to_string_lossy().as_bytes());
            h.update(len.to_le_bytes());
        }
    } else if let Ok(m) = std::fs::metadata(path) {
        h.update(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        h.update(m.len().to_le_bytes());
    }
    let d = h.finalize();
    format!(
        "fp_{}",
        d.iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn load(state: &Shared, device: candle_core::Device) -> Result<()> {
    let cfg = &state.cfg;
    // Lets tests observe the loading phase (/health 503) with a tiny model.
    if let Some(ms) = std::env::var("SAFELOOP_TEST_LOAD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let opts = LoadOptions {
        device,
        sha256: cfg
            .default_model
            .then(|| safeloop_shared::assets::DEFAULT_MODEL_SHA256.to_string()),
        host_kernels: cfg.host_kernels,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let loaded = load_causal_lm(&cfg.model, &opts).with_context(|| {
        if cfg.default_model {
            format!(
                "loading the default model {} (scripts/setup.sh fetches it)",
                cfg.model.display()
            )
        } else {
            format!("loading {}", cfg.model.display())
        }
    })?;
    let safety = crate::safety::Safety {
        cost: cfg
            .cost_model
            .as_deref()
            .map(|p| crate::safety::ScorerHandle::start(p, "cost", cfg.score_format))
            .transpose()?,
        reward: cfg
            .reward_model
            .as_deref()
            .map(|p| crate::safety::ScorerHandle::start(p, "reward", cfg.score_format))
            .transpose()?,
        threshold: cfg.gate.threshold,
    };
    let _ = state.safety.set(safety);
    let fp = fingerprint(cfg);
    state
        .metrics
        .model_info
        .with_label_values(&[
            &cfg.served_model_name,
            &fp,
            &cfg.model.display().to_string(),
        ])
        .set(1);
    let _ = state.fingerprint.set(fp);
    let engine_cfg = EngineConfig {
        max_running: cfg.max_running,
        max_batch_tokens: cfg.max_batch_tokens,
        max_context: cfg.max_total_tokens,
        prefix_cache_tokens: cfg.prefix_cache_tokens,
    };
    let handle = EngineHandle::start(
        loaded.model,
        loaded.tokenizer,
        engine_cfg,
        state.metrics.clone(),
    );
    let _ = state.engine.set(handle);
    tracing::info!(model = %cfg.model.display(), secs = t.elapsed().as_secs_f64(), "model ready");
    Ok(())
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
    let state: Shared = Arc::new(AppState::new(cfg, log));
    // Serve /health (503 "loading") while the model loads.
    let loader = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = load(&loader, device) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        eprintln!("safeloop-serve: ready");
    });
    eprintln!("safeloop-serve: listening on http://{local}");
    let app = router(state.clone());
    let signal_state = state.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal(signal_state).await;
        let _ = done_tx.send(());
    });
    let grace_timer = async move {
        let _ = done_rx.await;
        tokio::time::sleep(Duration::from_secs(grace)).await;
    };
    tokio::select! {
        r = server => r.context("server error")?,
        _ = grace_timer => eprintln!("safeloop-serve: grace period over, exiting with requests in flight"),
    }
    if let Some(log) = &state.log {
        log.close().context("sealing the trajectory log")?;
    }
    Ok(())
}
