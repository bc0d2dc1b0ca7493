//! Live model versions: loading, validating and swapping the policy and the score models
//! while the server runs.
//!
//! A `registry:ROOT/NAME@ALIAS` model is followed: every `--registry-poll-secs` the alias is
//! resolved and, when it points at a new version, that version is fetched and verified
//! (every file's sha256), loaded beside the serving one and validated (weights finite,
//! tokenizer compatible, a short smoke generation or scoring) before it takes traffic. New
//! requests then go to the new version; requests in flight finish on the old one, which is
//! unloaded when its last sequence ends (drain). A version that fails any check is refused
//! with its reason and the serving one stays.

use crate::config::{ModelSource, ServeConfig};
use crate::engine_task::EngineHandle;
use crate::safety::ScorerHandle;
use crate::state::{AppState, PolicyVersion, Shared};
use safeloop_shared::engine::{EngineConfig, SamplingParams};
use safeloop_shared::registry::{ModelKind, ModelRef, Registry};
use safeloop_shared::{load_causal_lm, LoadOptions, Tokenizer};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Policy,
    Cost,
    Reward,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Policy => "policy",
            Role::Cost => "cost",
            Role::Reward => "reward",
        }
    }

    fn kind(self) -> ModelKind {
        match self {
            Role::Policy => ModelKind::Policy,
            Role::Cost => ModelKind::Cost,
            Role::Reward => ModelKind::Reward,
        }
    }
}

/// Where a swap stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Idle,
    Fetching,
    Loading,
    Validating,
    Failed,
}

/// A model role as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoleStatus {
    pub role: Role,
    /// Registry model name, or the file's stem.
    pub name: String,
    pub source: String,
    /// The alias followed (registry models not pinned to a version).
    pub follows: Option<String>,
    /// Pinned to a version by `/swap` (not following the alias until `/reload`).
    pub pinned: bool,
    pub serving: Option<String>,
    pub serving_since_ms: u64,
    pub phase: Phase,
    /// The version being loaded, or the last one refused.
    pub target: Option<String>,
    /// Why the last version was refused.
    pub error: Option<String>,
    /// Older versions still finishing requests in flight.
    pub draining: Vec<String>,
}

/// One model role: its source, status and swap lock.
pub struct Slot {
    pub role: Role,
    pub source: ModelSource,
    pub status: Mutex<RoleStatus>,
    /// Held for the whole of a swap: a second one answers 409.
    pub busy: tokio::sync::Mutex<()>,
    /// Versions swapped out whose requests may still run.
    draining: Mutex<Vec<(String, Weak<PolicyVersion>)>>,
    /// A version refused by the poller is not tried again until the alias moves.
    refused: Mutex<Option<String>>,
}

impl Slot {
    fn new(role: Role, source: ModelSource) -> Self {
        let (name, follows) = match &source {
            ModelSource::Registry(r) => (r.name.clone(), Some(r.selector.clone())),
            ModelSource::Path(p) => (
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into()),
                None,
            ),
        };
        Self {
            role,
            status: Mutex::new(RoleStatus {
                role,
                name,
                source: source.describe(),
                follows,
                pinned: false,
                serving: None,
                serving_since_ms: 0,
                phase: Phase::Idle,
                target: None,
                error: None,
                draining: vec![],
            }),
            source,
            busy: tokio::sync::Mutex::new(()),
            draining: Mutex::new(vec![]),
            refused: Mutex::new(None),
        }
    }

    pub fn status(&self) -> RoleStatus {
        let mut s = self.status.lock().expect("status lock").clone();
        let mut d = self.draining.lock().expect("draining lock");
        d.retain(|(_, w)| w.strong_count() > 0);
        s.draining = d.iter().map(|(v, _)| v.clone()).collect();
        s
    }

    fn set_phase(&self, phase: Phase, target: Option<&str>) {
        let mut s = self.status.lock().expect("status lock");
        s.phase = phase;
        s.target = target.map(str::to_string);
    }

    pub fn registry(&self) -> Option<&ModelRef> {
        match &self.source {
            ModelSource::Registry(r) => Some(r),
            ModelSource::Path(_) => None,
        }
    }

    /// Whether a name in an admin URL means this slot: the registry name / file stem, the
    /// role, or (for the policy) the served model name.
    pub fn answers_to(&self, name: &str, served_name: &str) -> bool {
        name == self.role.as_str()
            || name == self.status.lock().expect("status lock").name
            || (self.role == Role::Policy && name == served_name)
    }
}

/// Every model role the server runs.
pub struct Swaps {
    pub slots: Vec<Arc<Slot>>,
}

impl Swaps {
    pub fn new(cfg: &ServeConfig) -> Self {
        let mut slots = vec![Arc::new(Slot::new(Role::Policy, cfg.model.clone()))];
        if let Some(c) = &cfg.cost_model {
            slots.push(Arc::new(Slot::new(Role::Cost, c.clone())));
        }
        if let Some(r) = &cfg.reward_model {
            slots.push(Arc::new(Slot::new(Role::Reward, r.clone())));
        }
        Self { slots }
    }

    pub fn find(&self, name: &str, served_name: &str) -> Option<Arc<Slot>> {
        self.slots
            .iter()
            .find(|s| s.answers_to(name, served_name))
            .cloned()
    }

    pub fn follows_registry(&self) -> bool {
        self.slots.iter().any(|s| s.registry().is_some())
    }
}

/// What a swap attempt did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// The wanted version is already serving.
    Unchanged {
        version: String,
    },
    Swapped {
        from: Option<String>,
        to: String,
    },
}

#[derive(Debug)]
pub enum SwapError {
    /// Another swap of this model is in progress.
    Busy,
    /// The version failed a check; the serving one stays.
    Refused { version: String, reason: String },
    /// The alias or version could not be resolved (registry unreachable, no such version).
    Resolve(String),
}

impl std::fmt::Display for SwapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwapError::Busy => write!(f, "a swap of this model is already in progress"),
            SwapError::Refused { version, reason } => {
                write!(f, "version {version} refused: {reason}")
            }
            SwapError::Resolve(e) => write!(f, "{e}"),
        }
    }
}

/// A loaded, validated version ready to take traffic.
enum Prepared {
    Policy(Arc<PolicyVersion>),
    Score {
        version: String,
        handle: ScorerHandle,
        /// The gate threshold `safeloop-train calibrate` wrote into the model's config.json.
        calibrated: Option<f32>,
    },
}

/// What to load: a registry version, or a path (re-hashed).
enum Target {
    Registry { reg: ModelRef, version: String },
    Path(PathBuf),
}

fn now_ms() -> u64 {
    safeloop_shared::registry::now_ms()
}

fn registry(r: &ModelRef) -> Result<Registry, String> {
    r.open().map_err(|e| e.to_string())
}

/// The version a slot should serve now: `explicit` (a version id or alias) or the followed
/// alias; for a path, the path's current content hash.
fn resolve(slot: &Slot, explicit: Option<&str>) -> Result<(String, Target), String> {
    match &slot.source {
        ModelSource::Registry(r) => {
            let reg = registry(r)?;
            let sel = explicit.unwrap_or(&r.selector);
            let v = reg.resolve(&r.name, sel).map_err(|e| e.to_string())?;
            Ok((
                v.clone(),
                Target::Registry {
                    reg: r.clone(),
                    version: v,
                },
            ))
        }
        ModelSource::Path(p) => {
            if explicit.is_some() {
                return Err(
                    "only registry models (registry:ROOT/NAME@ALIAS) can be pinned to a version"
                        .into(),
                );
            }
            let v = safeloop_shared::registry::content_version(p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((v, Target::Path(p.clone())))
        }
    }
}

/// Fetches (and verifies) a target: the local path to load.
fn fetch(st: &AppState, slot: &Slot, target: &Target) -> Result<PathBuf, String> {
    match target {
        Target::Path(p) => Ok(p.clone()),
        Target::Registry { reg, version } => {
            let registry = registry(reg)?;
            let (dir, manifest) = registry
                .fetch(&reg.name, version, &st.cfg.registry_cache)
                .map_err(|e| e.to_string())?;
            if manifest.kind != slot.role.kind() {
                return Err(format!(
                    "{}@{version} is a {} model, not a {} model",
                    reg.name,
                    manifest.kind.as_str(),
                    slot.role.as_str()
                ));
            }
            Ok(manifest.model_path(&dir))
        }
    }
}

/// Probe texts whose token ids must not change between policy versions.
const TOKENIZER_PROBES: &[&str] = &[
    "Hello, world! How are you today?",
    "The quick brown fox jumps over 13 lazy dogs.",
    "  Indented\n\ttabs and unicode: café, 東京, 🙂",
];

fn tokenizer_change(old: &Tokenizer, new: &Tokenizer) -> Option<String> {
    if old.vocab_size() != new.vocab_size() {
        return Some(format!(
            "vocabulary size {} differs from the serving {}",
            new.vocab_size(),
            old.vocab_size()
        ));
    }
    if old.eos_token_ids() != new.eos_token_ids() {
        return Some(format!(
            "end-of-sequence ids {:?} differ from the serving {:?}",
            new.eos_token_ids(),
            old.eos_token_ids()
        ));
    }
    for p in TOKENIZER_PROBES {
        if old.encode(p, false).ok() != new.encode(p, false).ok() {
            return Some(format!("`{p}` tokenizes differently"));
        }
    }
    None
}

fn observe(st: &AppState, role: Role, phase: &str, t: Instant) {
    st.metrics
        .swap_seconds
        .with_label_values(&[role.as_str(), phase])
        .observe(t.elapsed().as_secs_f64());
}

/// Loads and validates a version (blocking: run off the async runtime).
fn prepare(
    st: &AppState,
    slot: &Slot,
    version: &str,
    target: &Target,
    rt: &tokio::runtime::Handle,
) -> Result<Prepared, String> {
    slot.set_phase(Phase::Fetching, Some(version));
    let t = Instant::now();
    let path = fetch(st, slot, target)?;
    observe(st, slot.role, "fetch", t);
    slot.set_phase(Phase::Loading, Some(version));
    if let Some(ms) = std::env::var("SAFELOOP_TEST_LOAD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Lets tests observe the loading phase (/health 503, a swap in progress).
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if path.is_dir() {
        safeloop_shared::weights::check_finite(&path).map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    match slot.role {
        Role::Policy => {
            let cfg = &st.cfg;
            let default = matches!(&cfg.model, ModelSource::Path(p)
                if *p == safeloop_shared::assets::default_model_path());
            let opts = LoadOptions {
                sha256: default.then(|| safeloop_shared::assets::DEFAULT_MODEL_SHA256.to_string()),
                host_kernels: cfg.host_kernels,
                device: st.device.clone(),
                ..Default::default()
            };
            let loaded = load_causal_lm(&path, &opts).map_err(|e| {
                if default {
                    format!(
                        "loading the default model {} (scripts/setup.sh fetches it): {e}",
                        path.display()
                    )
                } else {
                    format!("loading {}: {e}", path.display())
                }
            })?;
            observe(st, slot.role, "load", t);
            slot.set_phase(Phase::Validating, Some(version));
            let t = Instant::now();
            if let Some(current) = st.policy.read().expect("policy lock").clone() {
                if let Some(why) = tokenizer_change(&current.engine.tokenizer, &loaded.tokenizer) {
                    if !cfg.allow_tokenizer_change {
                        return Err(format!(
                            "tokenizer incompatible with the serving version ({why}); start the server with --allow-tokenizer-change to accept it"
                        ));
                    }
                }
            }
            let engine = EngineHandle::start(
                loaded.model,
                loaded.tokenizer,
                EngineConfig {
                    max_running: cfg.max_running,
                    max_batch_tokens: cfg.max_batch_tokens,
                    max_context: cfg.max_total_tokens,
                    prefix_cache_tokens: cfg.prefix_cache_tokens,
                },
                st.metrics.clone(),
            );
            rt.block_on(smoke_generation(&engine))?;
            observe(st, slot.role, "validate", t);
            let name = slot.status.lock().expect("status lock").name.clone();
            Ok(Prepared::Policy(Arc::new(PolicyVersion {
                name,
                version: version.to_string(),
                source: path.display().to_string(),
                engine,
                loaded_ms: now_ms(),
                retired: Mutex::new(None),
                metrics: st.metrics.clone(),
            })))
        }
        Role::Cost | Role::Reward => {
            let handle = ScorerHandle::start(&path, slot.role.as_str(), st.cfg.score_format)
                .map_err(|e| format!("{e:#}"))?;
            let calibrated = if path.is_dir() {
                safeloop_shared::calibration::Calibration::read(&path)?.map(|c| c.threshold)
            } else {
                None
            };
            if let Some(t) = calibrated.filter(|t| !t.is_finite()) {
                return Err(format!("the calibrated gate threshold is not finite: {t}"));
            }
            observe(st, slot.role, "load", t);
            slot.set_phase(Phase::Validating, Some(version));
            let t = Instant::now();
            let probe = vec![(
                vec![safeloop_shared::ChatMessage::new("user", "Hello")],
                Some("Hello! How can I help you today?".to_string()),
            )];
            let scores = rt.block_on(handle.score(probe))?;
            if scores.iter().any(|s| !s.is_finite()) {
                return Err(format!("the smoke score is not finite: {scores:?}"));
            }
            observe(st, slot.role, "validate", t);
            Ok(Prepared::Score {
                version: version.to_string(),
                handle,
                calibrated,
            })
        }
    }
}

/// A short greedy generation: tokens must come out with finite log-probs.
async fn smoke_generation(engine: &EngineHandle) -> Result<(), String> {
    let prompt = engine
        .tokenizer
        .encode("Hello, my name is", true)
        .map_err(|e| e.to_string())?;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(4),
        logprobs: true,
        ..Default::default()
    };
    let stream = engine
        .submit(prompt, params)
        .await
        .map_err(|e| format!("smoke generation: {e}"))?;
    let mut events = stream.events;
    let mut n = 0;
    while let Some(ev) = events.recv().await {
        match ev {
            crate::engine_task::SeqEvent::Failed(e) => {
                return Err(format!("smoke generation failed: {e}"))
            }
            crate::engine_task::SeqEvent::Update(u) => {
                if let Some(t) = &u.token {
                    n += 1;
                    if !t.logprob.is_finite() {
                        return Err(format!(
                            "smoke generation: token {n} has log-prob {} (NaN or infinite weights?)",
                            t.logprob
                        ));
                    }
                }
                if u.finished.is_some() {
                    break;
                }
            }
        }
    }
    if n == 0 {
        return Err("smoke generation produced no token".into());
    }
    Ok(())
}

/// Puts a validated version into service; the one it replaces drains.
fn install(st: &AppState, slot: &Slot, prepared: Prepared) -> Option<String> {
    let (version, name) = {
        let s = slot.status.lock().expect("status lock");
        (s.target.clone().unwrap_or_default(), s.name.clone())
    };
    let old = match prepared {
        Prepared::Policy(p) => {
            let mut cur = st.policy.write().expect("policy lock");
            let old = cur.replace(p);
            if let Some(o) = &old {
                *o.retired.lock().expect("retired lock") = Some(Instant::now());
                slot.draining
                    .lock()
                    .expect("draining lock")
                    .push((o.version.clone(), Arc::downgrade(o)));
            }
            old.map(|o| o.version.clone())
        }
        Prepared::Score {
            version,
            handle,
            calibrated,
        } => {
            let mut s = st.safety.write().expect("safety lock");
            if slot.role == Role::Cost {
                // An explicit --gate-threshold wins; else the version's calibrated threshold, else 0.
                s.threshold = st.cfg.gate_threshold.or(calibrated).unwrap_or(0.0);
                tracing::info!(
                    threshold = s.threshold,
                    calibrated = ?calibrated,
                    explicit = ?st.cfg.gate_threshold,
                    "gate threshold for cost model {version}"
                );
                s.cost = Some(handle);
                s.cost_version.replace(version)
            } else {
                s.reward = Some(handle);
                s.reward_version.replace(version)
            }
        }
    };
    let m = &st.metrics;
    if let Some(o) = &old {
        let _ = m
            .model_version
            .remove_label_values(&[slot.role.as_str(), &name, o]);
        if slot.role == Role::Policy {
            let _ = m.model_info.remove_label_values(&[
                &st.cfg.served_model_name,
                &format!("fp_{o}"),
                &slot.source.describe(),
            ]);
        }
    }
    m.model_version
        .with_label_values(&[slot.role.as_str(), &name, &version])
        .set(1);
    if slot.role == Role::Policy {
        m.init_version(&version);
        m.model_info
            .with_label_values(&[
                &st.cfg.served_model_name,
                &format!("fp_{version}"),
                &slot.source.describe(),
            ])
            .set(1);
    }
    let mut s = slot.status.lock().expect("status lock");
    s.serving = Some(version);
    s.serving_since_ms = now_ms();
    s.phase = Phase::Idle;
    s.target = None;
    s.error = None;
    old
}

/// Brings a slot to the version it should serve (`explicit`, or what its source says now).
/// `poll`: a version the poller saw refused is not retried until the alias moves.
pub async fn update(
    st: &Shared,
    slot: &Arc<Slot>,
    explicit: Option<String>,
    poll: bool,
) -> Result<Outcome, SwapError> {
    let _guard = slot.busy.try_lock().map_err(|_| SwapError::Busy)?;
    let (slot2, exp) = (slot.clone(), explicit.clone());
    let (version, target) = tokio::task::spawn_blocking(move || resolve(&slot2, exp.as_deref()))
        .await
        .map_err(|e| SwapError::Resolve(e.to_string()))?
        .map_err(SwapError::Resolve)?;
    let serving = slot.status.lock().expect("status lock").serving.clone();
    if serving.as_deref() == Some(version.as_str()) {
        return Ok(Outcome::Unchanged { version });
    }
    if poll && slot.refused.lock().expect("refused lock").as_deref() == Some(version.as_str()) {
        return Ok(Outcome::Unchanged {
            version: serving.unwrap_or_default(),
        });
    }
    let (st2, slot2, v2) = (st.clone(), slot.clone(), version.clone());
    let rt = tokio::runtime::Handle::current();
    let prepared = tokio::task::spawn_blocking(move || prepare(&st2, &slot2, &v2, &target, &rt))
        .await
        .map_err(|e| SwapError::Resolve(format!("loading task: {e}")))?;
    match prepared {
        Ok(p) => {
            let from = install(st, slot, p);
            *slot.refused.lock().expect("refused lock") = None;
            st.metrics
                .swaps
                .with_label_values(&[slot.role.as_str(), "swapped"])
                .inc();
            tracing::info!(role = slot.role.as_str(), from = ?from, to = %version, "model version swapped");
            eprintln!(
                "safeloop-serve: {} now serves version {version}{}",
                slot.role.as_str(),
                from.as_deref()
                    .map(|f| format!(" (was {f})"))
                    .unwrap_or_default()
            );
            Ok(Outcome::Swapped { from, to: version })
        }
        Err(reason) => {
            {
                let mut s = slot.status.lock().expect("status lock");
                s.phase = Phase::Failed;
                s.target = Some(version.clone());
                s.error = Some(reason.clone());
            }
            *slot.refused.lock().expect("refused lock") = Some(version.clone());
            st.metrics
                .swaps
                .with_label_values(&[slot.role.as_str(), "refused"])
                .inc();
            tracing::warn!(role = slot.role.as_str(), %version, %reason, "model version refused");
            eprintln!(
                "safeloop-serve: {} version {version} refused: {reason}",
                slot.role.as_str()
            );
            Err(SwapError::Refused { version, reason })
        }
    }
}

/// Loads every role's first version (the server answers 503 until this is done).
pub async fn load_initial(st: &Shared) -> anyhow::Result<()> {
    for slot in st.swaps.slots.clone() {
        update(st, &slot, None, false).await.map_err(|e| {
            anyhow::anyhow!(
                "{} model {}: {e}",
                slot.role.as_str(),
                slot.source.describe()
            )
        })?;
    }
    st.ready.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Follows the registry aliases of every non-pinned registry model until shutdown.
pub async fn follow(st: Shared) {
    if !st.swaps.follows_registry() {
        return;
    }
    let mut tick = tokio::time::interval(st.cfg.registry_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if st.is_shutting_down() {
            return;
        }
        for slot in st.swaps.slots.clone() {
            let pinned = slot.status.lock().expect("status lock").pinned;
            if slot.registry().is_none() || pinned {
                continue;
            }
            match update(&st, &slot, None, true).await {
                Ok(_) | Err(SwapError::Busy) | Err(SwapError::Refused { .. }) => {}
                Err(SwapError::Resolve(e)) => {
                    tracing::warn!(role = slot.role.as_str(), "registry poll: {e}")
                }
            }
        }
    }
}

/// The registry aliases of a slot's model (for the admin API).
pub fn aliases(slot: &Slot) -> serde_json::Value {
    match slot.registry() {
        None => serde_json::Value::Null,
        Some(r) => {
            match registry(r).and_then(|reg| reg.aliases(&r.name).map_err(|e| e.to_string())) {
                Ok(a) => serde_json::to_value(a).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e }),
            }
        }
    }
}

/// Moves the registry's `champion` back to `previous` (auditable in its history).
pub fn registry_rollback(slot: &Slot) -> Result<String, String> {
    let r = slot
        .registry()
        .ok_or("only registry models (registry:ROOT/NAME@ALIAS) can be rolled back")?;
    registry(r)?.rollback(&r.name).map_err(|e| e.to_string())
}
