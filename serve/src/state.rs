//! Shared server state. The served policy and score models are versions that can be
//! swapped while the server runs: a request takes a snapshot (an `Arc`) of each when it is
//! admitted and keeps it to the end, so it never mixes versions, and an old version is
//! dropped when its last request ends.

use crate::config::ServeConfig;
use crate::engine_task::EngineHandle;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::safety::Safety;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// One loaded policy version and its engine (its own KV and prefix caches).
pub struct PolicyVersion {
    /// Registry model name (or the file's stem).
    pub name: String,
    /// The content hash: the registry version id (same bytes ⇒ same id).
    pub version: String,
    /// Where it was loaded from.
    pub source: String,
    pub engine: EngineHandle,
    pub loaded_ms: u64,
    /// When it was swapped out (its drain time is measured from there to its drop).
    pub retired: std::sync::Mutex<Option<std::time::Instant>>,
    pub metrics: Arc<Metrics>,
}

impl Drop for PolicyVersion {
    /// The last request holding a swapped-out version has ended: it is drained.
    fn drop(&mut self) {
        if let Some(t) = *self.retired.lock().expect("retired lock") {
            let secs = t.elapsed().as_secs_f64();
            self.metrics
                .swap_seconds
                .with_label_values(&["policy", "drain"])
                .observe(secs);
            tracing::info!(version = %self.version, secs, "drained: the old version is unloaded");
        }
    }
}

impl PolicyVersion {
    /// `system_fingerprint`: the version id.
    pub fn fingerprint(&self) -> String {
        format!("fp_{}", self.version)
    }
}

pub struct AppState {
    pub cfg: ServeConfig,
    /// Where models run (cpu, cuda:N).
    pub device: candle_core::Device,
    pub metrics: Arc<Metrics>,
    /// The serving policy; `None` until the first version loaded (/v1 routes answer 503).
    pub policy: RwLock<Option<Arc<PolicyVersion>>>,
    /// The serving cost / reward models.
    pub safety: RwLock<Safety>,
    /// Each model role's source, status and swap lock.
    pub swaps: crate::swap::Swaps,
    pub shutting_down: AtomicBool,
    /// Set once every model's first version is loaded: until then /v1 routes answer 503.
    pub ready: AtomicBool,
    /// Unix time the server started (models' `created`).
    pub started: u64,
    /// The trajectory log, when `--log-dir` is set.
    pub log: Option<Arc<safeloop_shared::trajlog::LogWriter>>,
}

pub type Shared = Arc<AppState>;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    pub fn new(
        cfg: ServeConfig,
        device: candle_core::Device,
        log: Option<Arc<safeloop_shared::trajlog::LogWriter>>,
    ) -> Self {
        let swaps = crate::swap::Swaps::new(&cfg);
        let metrics = Arc::new(Metrics::new());
        for slot in &swaps.slots {
            metrics.init_role(slot.role.as_str());
        }
        Self {
            device,
            log,
            safety: RwLock::new(Safety {
                threshold: cfg.gate.threshold,
                errors: Some(metrics.scoring_errors.clone()),
                ..Default::default()
            }),
            swaps,
            cfg,
            metrics,
            policy: RwLock::new(None),
            shutting_down: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            started: unix_now(),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Why the serving policy's engine died, if it did (the server then exits non-zero).
    pub fn engine_failure(&self) -> Option<String> {
        self.policy
            .read()
            .expect("policy lock")
            .as_ref()
            .and_then(|p| p.engine.failure())
    }

    /// The server's gate policy with the threshold in force: `--gate-threshold` if given, else the serving cost
    /// model's calibrated threshold, else 0.
    pub fn gate_policy(&self) -> crate::gate::GatePolicy {
        let mut p = self.cfg.gate.clone();
        p.threshold = self.safety.read().expect("safety lock").threshold;
        p
    }

    /// Whether the policy and the score models have their first versions.
    pub fn is_loaded(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The serving policy version, or 503 while loading or shutting down.
    pub fn policy(&self) -> Result<Arc<PolicyVersion>, ApiError> {
        if self.is_shutting_down() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let loading = || ApiError::unavailable("the model is still loading");
        if !self.is_loaded() {
            return Err(loading());
        }
        self.policy
            .read()
            .expect("policy lock")
            .clone()
            .ok_or_else(loading)
    }

    /// The serving score models (a snapshot).
    pub fn safety(&self) -> Safety {
        self.safety.read().expect("safety lock").clone()
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
