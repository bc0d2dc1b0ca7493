//! Prometheus metrics (`safeloop_` prefix), served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use safeloop_shared::trajlog::GateAction;

/// Every decision the gate reports for a choice.
const DECISIONS: [GateAction; 5] = [
    GateAction::Pass,
    GateAction::Annotate,
    GateAction::Resample,
    GateAction::Block,
    GateAction::Unscored,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub running: IntGauge,
    pub waiting: IntGauge,
    pub batch_size: Histogram,
    pub step_tokens: HistogramVec,
    pub kv_cache_tokens: IntGauge,
    pub kv_cache_bytes: IntGauge,
    pub model_info: IntGaugeVec,
    pub disconnects: IntCounter,
    pub open_connections: IntGauge,
    pub heap_allocated: IntGauge,
    pub heap_resident: IntGauge,
    pub connections_refused: IntCounter,
    pub prefix_cache_tokens: IntGauge,
    pub prefix_cache_hits: IntCounter,
    /// Gate decisions by policy version and action.
    pub gate_decisions: IntCounterVec,
    pub gate_resamples: IntCounter,
    /// Prompts refused by the input check, by policy version.
    pub input_refusals: IntCounterVec,
    /// Cost scores of the choices each policy version produced.
    pub cost: HistogramVec,
    /// Scoring calls that failed, by score-model role (cost, reward).
    pub scoring_errors: IntCounterVec,
    pub gate_latency: Histogram,
    pub log_errors: IntCounter,
    pub log_records: IntGauge,
    pub log_bytes: IntGauge,
    pub log_fsyncs: IntGauge,
    pub log_fsync_seconds: prometheus::Gauge,
    /// Model swaps by role (policy, cost, reward) and outcome (swapped, refused).
    pub swaps: IntCounterVec,
    /// Seconds per swap phase (fetch, load, validate, drain) by role.
    pub swap_seconds: HistogramVec,
    /// 1 for the version each role serves (registry name and version id).
    pub model_version: IntGaugeVec,
    /// Completion requests by the policy version that served them.
    pub requests_by_version: IntCounterVec,
}

fn secs(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram")
}

impl Metrics {
    pub fn new() -> Self {
        let lat = vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "safeloop_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )
            .expect("valid"),
            ttft: secs(
                "safeloop_time_to_first_token_seconds",
                "Time to first token",
                lat.clone(),
            ),
            itl: secs(
                "safeloop_inter_token_latency_seconds",
                "Time between consecutive output tokens of a choice",
                vec![
                    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
                ],
            ),
            e2e: secs(
                "safeloop_e2e_request_latency_seconds",
                "Request latency, arrival to last token",
                {
                    let mut b = lat.clone();
                    b.extend([60.0, 120.0, 300.0]);
                    b
                },
            ),
            queue_time: secs(
                "safeloop_queue_time_seconds",
                "Time from submission until a sequence joins the running batch",
                lat,
            ),
            prompt_tokens: IntCounter::new(
                "safeloop_prompt_tokens_total",
                "Prompt tokens processed",
            )
            .expect("valid"),
            generation_tokens: IntCounter::new(
                "safeloop_generation_tokens_total",
                "Tokens generated",
            )
            .expect("valid"),
            running: IntGauge::new(
                "safeloop_sequences_running",
                "Sequences in the running batch",
            )
            .expect("valid"),
            waiting: IntGauge::new("safeloop_sequences_waiting", "Sequences waiting for a slot")
                .expect("valid"),
            batch_size: Histogram::with_opts(
                HistogramOpts::new("safeloop_batch_size", "Sequences per engine step")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )
            .expect("valid"),
            step_tokens: HistogramVec::new(
                HistogramOpts::new("safeloop_step_tokens", "Tokens per engine step by phase")
                    .buckets(vec![
                        1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
                    ]),
                &["phase"],
            )
            .expect("valid"),
            kv_cache_tokens: IntGauge::new(
                "safeloop_kv_cache_tokens",
                "Positions held in the KV caches of running sequences",
            )
            .expect("valid"),
            kv_cache_bytes: IntGauge::new(
                "safeloop_kv_cache_bytes",
                "Bytes allocated for KV caches",
            )
            .expect("valid"),
            model_info: IntGaugeVec::new(
                Opts::new(
                    "safeloop_model_info",
                    "The served model and weight version (value 1)",
                ),
                &["model", "version", "path"],
            )
            .expect("valid"),
            disconnects: IntCounter::new(
                "safeloop_client_disconnects_total",
                "Requests whose client went away before the end",
            )
            .expect("valid"),
            heap_allocated: IntGauge::new(
                "safeloop_heap_allocated_bytes",
                "Bytes the server has allocated and not freed (jemalloc stats.allocated)",
            )
            .expect("valid"),
            heap_resident: IntGauge::new(
                "safeloop_heap_resident_bytes",
                "Bytes of the allocator's pages resident in memory (jemalloc stats.resident)",
            )
            .expect("valid"),
            open_connections: IntGauge::new(
                "safeloop_open_connections",
                "Open client connections",
            )
            .expect("valid"),
            connections_refused: IntCounter::new(
                "safeloop_connections_refused_total",
                "Connections closed with 503 at the --max-connections cap",
            )
            .expect("valid"),
            prefix_cache_tokens: IntGauge::new(
                "safeloop_prefix_cache_tokens",
                "Prompt tokens held by the prefix cache",
            )
            .expect("valid"),
            prefix_cache_hits: IntCounter::new(
                "safeloop_prefix_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache instead of prefill",
            )
            .expect("valid"),
            gate_decisions: IntCounterVec::new(
                Opts::new(
                    "safeloop_gate_decisions_total",
                    "Gate decisions by policy version and action (pass, annotate, resample, block, unscored)",
                ),
                &["version", "action"],
            )
            .expect("valid"),
            gate_resamples: IntCounter::new(
                "safeloop_gate_resample_attempts_total",
                "Resampled candidates",
            )
            .expect("valid"),
            input_refusals: IntCounterVec::new(
                Opts::new(
                    "safeloop_gate_input_refusals_total",
                    "Prompts refused by the input check, by policy version",
                ),
                &["version"],
            )
            .expect("valid"),
            cost: HistogramVec::new(
                HistogramOpts::new(
                    "safeloop_cost_score",
                    "Cost-model scores of choices by the policy version that produced them (> 0 unsafe)",
                )
                .buckets(vec![
                    -10.0, -5.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 5.0, 10.0,
                ]),
                &["version"],
            )
            .expect("valid"),
            scoring_errors: IntCounterVec::new(
                Opts::new(
                    "safeloop_scoring_errors_total",
                    "Score-model calls that failed, by role (cost, reward)",
                ),
                &["role"],
            )
            .expect("valid"),
            gate_latency: secs(
                "safeloop_gate_latency_seconds",
                "Time spent scoring and gating a request's choices",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            log_errors: IntCounter::new(
                "safeloop_log_write_errors_total",
                "Trajectory log writes that failed",
            )
            .expect("valid"),
            log_records: IntGauge::new("safeloop_log_records_total", "Trajectory records written")
                .expect("valid"),
            log_bytes: IntGauge::new("safeloop_log_bytes_total", "Trajectory log bytes written")
                .expect("valid"),
            log_fsyncs: IntGauge::new("safeloop_log_fsyncs_total", "Trajectory log fsyncs")
                .expect("valid"),
            log_fsync_seconds: prometheus::Gauge::new(
                "safeloop_log_fsync_seconds_total",
                "Time spent in trajectory log fsyncs",
            )
            .expect("valid"),
            swaps: IntCounterVec::new(
                Opts::new(
                    "safeloop_model_swaps_total",
                    "Model version changes (the first load included) by role and outcome (swapped, refused)",
                ),
                &["role", "outcome"],
            )
            .expect("valid"),
            swap_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "safeloop_model_swap_phase_seconds",
                    "Seconds per model swap phase (fetch, load, validate, drain)",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
                &["role", "phase"],
            )
            .expect("valid"),
            model_version: IntGaugeVec::new(
                Opts::new(
                    "safeloop_model_version_info",
                    "The version each model role serves (value 1)",
                ),
                &["role", "name", "version"],
            )
            .expect("valid"),
            requests_by_version: IntCounterVec::new(
                Opts::new(
                    "safeloop_requests_by_version_total",
                    "Completion requests by the policy version that served them",
                ),
                &["version"],
            )
            .expect("valid"),
            registry: Registry::new(),
        };
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.queue_time.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generation_tokens.clone()),
            Box::new(m.running.clone()),
            Box::new(m.waiting.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.step_tokens.clone()),
            Box::new(m.kv_cache_tokens.clone()),
            Box::new(m.kv_cache_bytes.clone()),
            Box::new(m.model_info.clone()),
            Box::new(m.disconnects.clone()),
            Box::new(m.open_connections.clone()),
            Box::new(m.heap_allocated.clone()),
            Box::new(m.heap_resident.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.prefix_cache_tokens.clone()),
            Box::new(m.prefix_cache_hits.clone()),
            Box::new(m.gate_decisions.clone()),
            Box::new(m.gate_resamples.clone()),
            Box::new(m.input_refusals.clone()),
            Box::new(m.cost.clone()),
            Box::new(m.gate_latency.clone()),
            Box::new(m.log_errors.clone()),
            Box::new(m.log_records.clone()),
            Box::new(m.log_bytes.clone()),
            Box::new(m.log_fsyncs.clone()),
            Box::new(m.log_fsync_seconds.clone()),
        ];
        let extra: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.swaps.clone()),
            Box::new(m.swap_seconds.clone()),
            Box::new(m.model_version.clone()),
            Box::new(m.requests_by_version.clone()),
            Box::new(m.scoring_errors.clone()),
        ];
        for c in all.into_iter().chain(extra) {
            r.register(c).expect("unique metric names");
        }
        m
    }

    /// The series of a newly served policy version, at zero, so that rates and ratios by version exist
    /// before its first decision.
    pub fn init_version(&self, version: &str) {
        for a in DECISIONS {
            self.gate_decisions
                .with_label_values(&[version, a.as_str()]);
        }
        self.input_refusals.with_label_values(&[version]);
        self.requests_by_version.with_label_values(&[version]);
    }

    /// The series of a model role the server serves, at zero (swaps by outcome, scoring errors).
    pub fn init_role(&self, role: &str) {
        for o in ["swapped", "refused"] {
            self.swaps.with_label_values(&[role, o]);
        }
        if role != "policy" {
            self.scoring_errors.with_label_values(&[role]);
        }
    }

    /// The gate's metrics for one request, labelled by the policy version that serves it.
    pub fn gate<'a>(&'a self, version: &'a str) -> GateMetrics<'a> {
        GateMetrics { all: self, version }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

/// What a request's gate records, by the policy version that produced its choices.
pub struct GateMetrics<'a> {
    pub all: &'a Metrics,
    pub version: &'a str,
}

impl GateMetrics<'_> {
    /// A choice's final decision, with its cost when it was scored.
    pub fn decision(&self, action: GateAction, cost: Option<f32>) {
        self.all
            .gate_decisions
            .with_label_values(&[self.version, action.as_str()])
            .inc();
        if let Some(c) = cost {
            self.cost(c);
        }
    }

    pub fn cost(&self, c: f32) {
        self.all
            .cost
            .with_label_values(&[self.version])
            .observe(c as f64);
    }

    pub fn refusal(&self) {
        self.all
            .input_refusals
            .with_label_values(&[self.version])
            .inc();
    }

    pub fn resample(&self) {
        self.all.gate_resamples.inc();
    }

    pub fn latency(&self, secs: f64) {
        self.all.gate_latency.observe(secs);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
