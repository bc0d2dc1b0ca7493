//! Shared server state.

use crate::config::ServeConfig;
use crate::engine_task::EngineHandle;
use crate::error::ApiError;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

pub struct AppState {
    pub cfg: ServeConfig,
    pub metrics: Arc<Metrics>,
    /// Set once the model has loaded; until then /v1 routes answer 503.
    pub engine: OnceLock<EngineHandle>,
    /// The weight version reported as `system_fingerprint`.
    pub fingerprint: OnceLock<String>,
    pub shutting_down: AtomicBool,
    /// Unix time the server started (models' `created`).
    pub started: u64,
    /// The trajectory log, when `--log-dir` is set.
    pub log: Option<Arc<safeloop_shared::trajlog::LogWriter>>,
    /// Cost / reward models (set with the policy once loaded).
    pub safety: OnceLock<crate::safety::Safety>,
}

pub type Shared = Arc<AppState>;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    pub fn new(cfg: ServeConfig, log: Option<Arc<safeloop_shared::trajlog::LogWriter>>) -> Self {
        Self {
            log,
            safety: OnceLock::new(),
            cfg,
            metrics: Arc::new(Metrics::new()),
            engine: OnceLock::new(),
            fingerprint: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            started: unix_now(),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The engine, or 503 while loading or shutting down.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        if self.is_shutting_down() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    pub fn safety(&self) -> crate::safety::Safety {
        self.safety.get().cloned().unwrap_or_default()
    }

    pub fn fingerprint(&self) -> String {
        self.fingerprint.get().cloned().unwrap_or_default()
    }

    /// 404 unless `model` names the served model.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.cfg.served_model_name {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model))
        }
    }
}
