//! Server configuration: command-line flags, then `SAFELOOP_*` environment variables, then a
//! TOML file (`--config`), then defaults — in that order of precedence.

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Every knob of the server. Each is also an environment variable and a key of the config
/// file (the same name with underscores, e.g. `max_running = 32`).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// HF model directory, .gguf file, or `registry:ROOT/NAME@ALIAS` to serve what the alias
    /// points at and follow it [default: the pinned SmolLM2-135M-Instruct]
    #[arg(long, env = "SAFELOOP_MODEL")]
    pub model: Option<PathBuf>,
    /// Seconds between checks of followed registry aliases (`registry:` models) [default: 5]
    #[arg(long, env = "SAFELOOP_REGISTRY_POLL_SECS")]
    pub registry_poll_secs: Option<f64>,
    /// Local cache for versions fetched from an object-store registry
    /// [default: $XDG_CACHE_HOME/safeloop/registry or ~/.cache/safeloop/registry]
    #[arg(long, env = "SAFELOOP_REGISTRY_CACHE")]
    pub registry_cache: Option<PathBuf>,
    /// Accept a new policy version whose tokenizer differs from the serving one [default: false]
    #[arg(long, env = "SAFELOOP_ALLOW_TOKENIZER_CHANGE")]
    pub allow_tokenizer_change: Option<bool>,
    /// Enables the admin API (/admin/v1/...) with `Authorization: Bearer <key>`; distinct from
    /// --api-key [default: admin API off]
    #[arg(long, env = "SAFELOOP_ADMIN_KEY")]
    pub admin_key: Option<String>,
    /// Name clients use in `model` [default: the model file or directory name]
    #[arg(long, env = "SAFELOOP_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, env = "SAFELOOP_HOST")]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one) [default: 8000]
    #[arg(long, env = "SAFELOOP_PORT")]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer <key>` on /v1 routes
    #[arg(long, env = "SAFELOOP_API_KEY")]
    pub api_key: Option<String>,
    /// TOML file with any of these settings
    #[arg(long, env = "SAFELOOP_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Sequences decoding at once [default: 32]
    #[arg(long, env = "SAFELOOP_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// Requests allowed to wait for a slot before 429 [default: 256]
    #[arg(long, env = "SAFELOOP_MAX_QUEUED")]
    pub max_queued: Option<usize>,
    /// Tokens per engine step (decodes first, then prefill chunks) [default: 512]
    #[arg(long, env = "SAFELOOP_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Longest accepted prompt in tokens [default: the context length]
    #[arg(long, env = "SAFELOOP_MAX_PROMPT_TOKENS")]
    pub max_prompt_tokens: Option<usize>,
    /// Prompt + completion cap per sequence [default: the context length]
    #[arg(long, env = "SAFELOOP_MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// Largest `n` accepted [default: 8]
    #[arg(long, env = "SAFELOOP_MAX_N")]
    pub max_n: Option<u32>,
    /// Request body limit in bytes [default: 4194304]
    #[arg(long, env = "SAFELOOP_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Seconds before a non-streaming request gives up with 408 [default: 600]
    #[arg(long, env = "SAFELOOP_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Seconds a client has to send a request's headers before the connection is closed
    /// [default: 10]
    #[arg(long, env = "SAFELOOP_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Seconds a client has to send a request's body before it gets 408 [default: 30]
    #[arg(long, env = "SAFELOOP_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Open connections accepted at once; more get 503 and are closed [default: 1024]
    #[arg(long, env = "SAFELOOP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds between SSE keep-alive comments while a stream waits [default: 10]
    #[arg(long, env = "SAFELOOP_KEEP_ALIVE")]
    pub keep_alive: Option<u64>,
    /// Seconds graceful shutdown waits for in-flight requests [default: 30]
    #[arg(long, env = "SAFELOOP_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// Cost model (safe-rlhf score-model directory, or `registry:ROOT/NAME@ALIAS`): every choice
    /// is scored; cost > 0 is unsafe
    #[arg(long, env = "SAFELOOP_COST_MODEL")]
    pub cost_model: Option<PathBuf>,
    /// Reward model (safe-rlhf score-model directory, or `registry:ROOT/NAME@ALIAS`) [default: none]
    #[arg(long, env = "SAFELOOP_REWARD_MODEL")]
    pub reward_model: Option<PathBuf>,
    /// Score-model input: `safe-rlhf` (BEGINNING OF CONVERSATION: USER: … ASSISTANT:…) or
    /// `chat-template` (the score model's own template) [default: safe-rlhf]
    #[arg(long, env = "SAFELOOP_SCORE_FORMAT")]
    pub score_format: Option<String>,
    /// Choices with cost above this are flagged [default: the cost model's calibrated threshold (config.json
    /// `safeloop_calibration`, written by `safeloop-train calibrate`), else 0.0]
    #[arg(long, env = "SAFELOOP_GATE_THRESHOLD", allow_negative_numbers = true)]
    pub gate_threshold: Option<f32>,
    /// What to do with a flagged choice: block, resample or annotate [default: block]
    #[arg(long, env = "SAFELOOP_GATE_ACTION")]
    pub gate_action: Option<String>,
    /// Extra candidates the resample action may generate [default: 2]
    #[arg(long, env = "SAFELOOP_GATE_RESAMPLE")]
    pub gate_resample: Option<u32>,
    /// Text that replaces a blocked choice [default: "I'm sorry, but I can't help with that."]
    #[arg(long, env = "SAFELOOP_GATE_REFUSAL")]
    pub gate_refusal: Option<String>,
    /// Streams under a blocking gate: tokens per scored window (0 holds the whole choice).
    /// Smaller windows release text sooner but score more often [default: 16]
    #[arg(long, env = "SAFELOOP_GATE_WINDOW")]
    pub gate_window: Option<usize>,
    /// Score the prompt alone first and refuse flagged prompts with 400 content_filter [default: false]
    #[arg(long, env = "SAFELOOP_GATE_INPUT_CHECK")]
    pub gate_input_check: Option<bool>,
    /// If scoring fails, pass choices as `unscored` instead of blocking them [default: false]
    #[arg(long, env = "SAFELOOP_GATE_FAIL_OPEN")]
    pub gate_fail_open: Option<bool>,
    /// Write every finished choice to a trajectory log in this directory [default: off]
    #[arg(long, env = "SAFELOOP_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Log durability: always (fsync per record), interval (group commit), never [default: interval]
    #[arg(long, env = "SAFELOOP_LOG_FSYNC")]
    pub log_fsync: Option<String>,
    /// Group-commit interval for --log-fsync interval, in ms [default: 100]
    #[arg(long, env = "SAFELOOP_LOG_FSYNC_INTERVAL_MS")]
    pub log_fsync_interval_ms: Option<u64>,
    /// Seal a log segment past this many bytes [default: 67108864]
    #[arg(long, env = "SAFELOOP_LOG_SEGMENT_BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// Seal a log segment after this many seconds [default: 3600]
    #[arg(long, env = "SAFELOOP_LOG_SEGMENT_SECS")]
    pub log_segment_secs: Option<u64>,
    /// Delete sealed segments older than this many seconds [default: keep all]
    #[arg(long, env = "SAFELOOP_LOG_RETENTION_SECS")]
    pub log_retention_secs: Option<u64>,
    /// Delete the oldest sealed segments beyond this total size [default: keep all]
    #[arg(long, env = "SAFELOOP_LOG_RETENTION_BYTES")]
    pub log_retention_bytes: Option<u64>,
    /// Drop message text from the trajectory log (prompt and output token ids, stop strings),
    /// keeping token counts, log-probs and scores; such records cannot be trained on
    /// [default: false]
    #[arg(long, env = "SAFELOOP_LOG_REDACT")]
    pub log_redact: Option<bool>,
    /// Answer 503 when a choice cannot be logged (instead of serving it unlogged) [default: false]
    #[arg(long, env = "SAFELOOP_LOG_FAIL_CLOSED")]
    pub log_fail_closed: Option<bool>,
    /// Token budget of the prompt prefix cache; 0 disables it [default: 8192]
    #[arg(long, env = "SAFELOOP_PREFIX_CACHE_TOKENS")]
    pub prefix_cache_tokens: Option<usize>,
    /// CPU kernels: `safeloop` (ours) or `candle` (stock candle ops, for comparisons) [default: safeloop]
    #[arg(long, env = "SAFELOOP_KERNELS")]
    pub kernels: Option<String>,
}

/// Where a model comes from: a path, or a registry alias the server follows.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Path(PathBuf),
    Registry(safeloop_shared::registry::ModelRef),
}

impl ModelSource {
    fn parse(flag: &str, p: PathBuf) -> Result<Self> {
        let s = p.to_string_lossy();
        if safeloop_shared::registry::ModelRef::is_registry_spec(&s) {
            let r = safeloop_shared::registry::ModelRef::parse(&s)
                .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
            Ok(Self::Registry(r))
        } else {
            Ok(Self::Path(p))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Registry(r) => format!("registry:{r}"),
        }
    }
}

/// A key: its `Debug` never shows it, so no log line or error message can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: ModelSource,
    pub default_model: bool,
    pub served_model_name: String,
    pub host: String,
    pub port: u16,
    pub api_key: Option<Secret>,
    pub max_running: usize,
    pub max_queued: usize,
    pub max_batch_tokens: usize,
    pub max_prompt_tokens: Option<usize>,
    pub max_total_tokens: Option<usize>,
    pub max_n: u32,
    pub max_body_bytes: usize,
    pub request_timeout: u64,
    pub header_timeout: u64,
    pub body_timeout: u64,
    pub max_connections: usize,
    pub keep_alive: u64,
    pub shutdown_grace: u64,
    /// safeloop's CPU kernels (false: candle's stock ops).
    pub host_kernels: bool,
    pub prefix_cache_tokens: usize,
    pub log: Option<safeloop_shared::trajlog::LogConfig>,
    pub log_fail_closed: bool,
    pub log_redact: bool,
    pub cost_model: Option<ModelSource>,
    /// `--gate-threshold` as given: it overrides the cost model's calibrated threshold.
    pub gate_threshold: Option<f32>,
    pub reward_model: Option<ModelSource>,
    pub registry_poll: std::time::Duration,
    pub registry_cache: PathBuf,
    pub allow_tokenizer_change: bool,
    pub admin_key: Option<Secret>,
    pub score_format: safeloop_shared::scoring::ScoreFormat,
    pub gate: crate::gate::GatePolicy,
}

fn positive(flag: &str, v: u64) -> Result<u64> {
    if v == 0 {
        anyhow::bail!("--{flag}: must be at least 1");
    }
    Ok(v)
}

fn read_file(path: &Path) -> Result<ServeArgs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
}

impl ServeConfig {
    pub fn resolve(args: ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => ServeArgs::default(),
        };
        // Flags and env (clap) win over the file.
        macro_rules! pick {
            ($f:ident) => {
                args.$f.clone().or(file.$f.clone())
            };
        }
        let default_model = pick!(model).is_none();
        let model = ModelSource::parse(
            "model",
            pick!(model).unwrap_or_else(safeloop_shared::assets::default_model_path),
        )?;
        let served_model_name = pick!(served_model_name).unwrap_or_else(|| {
            if default_model {
                "SmolLM2-135M-Instruct".to_string()
            } else {
                match &model {
                    ModelSource::Registry(r) => r.name.clone(),
                    ModelSource::Path(p) => p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "model".into()),
                }
            }
        });
        let poll = pick!(registry_poll_secs).unwrap_or(5.0);
        if !(poll.is_finite() && poll > 0.0) {
            anyhow::bail!("--registry-poll-secs: must be a positive number of seconds");
        }
        let registry_cache = pick!(registry_cache).unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("safeloop/registry")
        });
        let cfg = Self {
            model,
            default_model,
            served_model_name,
            host: pick!(host).unwrap_or_else(|| "127.0.0.1".into()),
            port: pick!(port).unwrap_or(8000),
            api_key: pick!(api_key).filter(|k| !k.is_empty()).map(Secret),
            max_running: pick!(max_running).unwrap_or(32),
            max_queued: pick!(max_queued).unwrap_or(256),
            max_batch_tokens: pick!(max_batch_tokens).unwrap_or(512),
            max_prompt_tokens: pick!(max_prompt_tokens),
            max_total_tokens: pick!(max_total_tokens),
            max_n: pick!(max_n).unwrap_or(8),
            max_body_bytes: pick!(max_body_bytes).unwrap_or(4 << 20),
            request_timeout: pick!(request_timeout).unwrap_or(600),
            header_timeout: positive("header-timeout", pick!(header_timeout).unwrap_or(10))?,
            body_timeout: positive("body-timeout", pick!(body_timeout).unwrap_or(30))?,
            max_connections: positive(
                "max-connections",
                pick!(max_connections).unwrap_or(1024) as u64,
            )? as usize,
            keep_alive: pick!(keep_alive).unwrap_or(10),
            shutdown_grace: pick!(shutdown_grace).unwrap_or(30),
            prefix_cache_tokens: pick!(prefix_cache_tokens).unwrap_or(8192),
            log: match pick!(log_dir) {
                None => None,
                Some(dir) => {
                    use safeloop_shared::trajlog::{Durability, LogConfig};
                    let interval = std::time::Duration::from_millis(
                        pick!(log_fsync_interval_ms).unwrap_or(100).max(1),
                    );
                    let durability = match pick!(log_fsync).as_deref() {
                        None | Some("interval") => Durability::Interval(interval),
                        Some("always") => Durability::Always,
                        Some("never") => Durability::Never,
                        Some(other) => {
                            anyhow::bail!("--log-fsync: `{other}` is not always, interval or never")
                        }
                    };
                    let mut c = LogConfig::new(dir);
                    c.durability = durability;
                    if let Some(b) = pick!(log_segment_bytes) {
                        c.max_segment_bytes = b.max(1);
                    }
                    c.retention_bytes = pick!(log_retention_bytes);
                    if let Some(secs) = pick!(log_segment_secs) {
                        c.max_segment_age = std::time::Duration::from_secs(secs.max(1));
                    }
                    c.retention_age = pick!(log_retention_secs).map(std::time::Duration::from_secs);
                    Some(c)
                }
            },
            log_fail_closed: pick!(log_fail_closed).unwrap_or(false),
            log_redact: pick!(log_redact).unwrap_or(false),
            cost_model: pick!(cost_model)
                .map(|p| ModelSource::parse("cost-model", p))
                .transpose()?,
            gate_threshold: pick!(gate_threshold),
            registry_poll: std::time::Duration::from_secs_f64(poll),
            registry_cache,
            allow_tokenizer_change: pick!(allow_tokenizer_change).unwrap_or(false),
            admin_key: pick!(admin_key).filter(|k| !k.is_empty()).map(Secret),
            score_format: match pick!(score_format).as_deref() {
                None | Some("safe-rlhf") => safeloop_shared::scoring::ScoreFormat::SafeRlhf,
                Some("chat-template") => safeloop_shared::scoring::ScoreFormat::ChatTemplate,
                Some(other) => {
                    anyhow::bail!("--score-format: `{other}` is not safe-rlhf or chat-template")
                }
            },
            reward_model: pick!(reward_model)
                .map(|p| ModelSource::parse("reward-model", p))
                .transpose()?,
            gate: crate::gate::GatePolicy {
                threshold: pick!(gate_threshold).unwrap_or(0.0),
                action: match pick!(gate_action) {
                    None => crate::gate::Action::Block,
                    Some(a) => crate::gate::Action::parse(&a).ok_or_else(|| {
                        anyhow::anyhow!("--gate-action: `{a}` is not block, resample or annotate")
                    })?,
                },
                resample: pick!(gate_resample).unwrap_or(2),
                refusal: pick!(gate_refusal)
                    .unwrap_or_else(|| "I'm sorry, but I can't help with that.".into()),
                input_check: pick!(gate_input_check).unwrap_or(false),
                window: pick!(gate_window).unwrap_or(16),
                fail_open: pick!(gate_fail_open).unwrap_or(false),
            },
            host_kernels: match pick!(kernels).as_deref() {
                None | Some("safeloop") => true,
                Some("candle") => false,
                Some(other) => anyhow::bail!("--kernels: `{other}` is not safeloop or candle"),
            },
        };
        if cfg.admin_key.is_some() && cfg.admin_key == cfg.api_key {
            anyhow::bail!(
                "--admin-key: must differ from --api-key (clients must not get admin rights)"
            );
        }
        for (name, v) in [
            ("max_running", cfg.max_running),
            ("max_batch_tokens", cfg.max_batch_tokens),
            ("max_body_bytes", cfg.max_body_bytes),
            ("max_n", cfg.max_n as usize),
        ] {
            if v == 0 {
                anyhow::bail!("--{}: must be at least 1", name.replace('_', "-"));
            }
        }
        Ok(cfg)
    }
}
