//! Writing a request's finished choices to the trajectory log.

use crate::choices::Timer;
use crate::error::ApiError;
use crate::gate::Candidate;
use crate::safety::Safety;
use crate::state::{unix_now, PolicyVersion, Shared};
use safeloop_shared::engine::SamplingParams;
use safeloop_shared::trajlog::{GateAction, GateDecision, Latencies, TrajectoryRecord};
use std::sync::Arc;

/// What a request submitted: one (prompt ids, sampling params) per choice, and the model
/// versions it was admitted with (held until it is logged, so that version stays loaded).
pub struct RequestInfo {
    pub request_id: String,
    pub created_ms: u64,
    pub jobs: Vec<(Vec<u32>, SamplingParams)>,
    pub policy: Arc<PolicyVersion>,
    pub cost_version: Option<String>,
    pub reward_version: Option<String>,
}

impl RequestInfo {
    pub fn new(
        request_id: String,
        jobs: &[(Vec<u32>, SamplingParams)],
        policy: Arc<PolicyVersion>,
        safety: &Safety,
    ) -> Self {
        Self {
            request_id,
            created_ms: unix_now() * 1000,
            jobs: jobs.to_vec(),
            policy,
            cost_version: safety.cost_version.clone(),
            reward_version: safety.reward_version.clone(),
        }
    }
}

/// Appends one record per finished choice (blocking I/O off the async runtime). With
/// `--log-fail-closed` a failed write is a 503; otherwise it is counted and the response
/// goes out unlogged.
pub async fn record(
    st: &Shared,
    info: &RequestInfo,
    candidates: Vec<Candidate>,
    timer: &Timer,
) -> Result<(), ApiError> {
    let Some(log) = st.log.clone() else {
        return Ok(());
    };
    let finished_ms = unix_now() * 1000;
    let latencies = Latencies {
        queue_ms: 0.0,
        ttft_ms: timer.ttft_ms().unwrap_or(0.0),
        e2e_ms: timer.elapsed_ms(),
    };
    let records: Vec<TrajectoryRecord> = candidates
        .into_iter()
        .map(|c| {
            let Candidate {
                job: i,
                tokens,
                finish,
                safety,
                blocked,
                params,
            } = c;
            let prompt = &info.jobs[i].0;
            let mut record = TrajectoryRecord {
                request_id: info.request_id.clone(),
                choice_index: i as u32,
                created_ms: info.created_ms,
                finished_ms,
                model: st.cfg.served_model_name.clone(),
                weight_version: info.policy.version.clone(),
                cost_version: info.cost_version.clone(),
                reward_version: info.reward_version.clone(),
                prompt_ids: prompt.clone(),
                output_ids: tokens.iter().map(|t| t.id).collect(),
                logprobs: tokens.iter().map(|t| t.logprob).collect(),
                sampling: params,
                finish_reason: finish.as_str().to_string(),
                reward: safety.as_ref().and_then(|s| s.reward),
                cost: safety.as_ref().and_then(|s| s.cost),
                gate: GateDecision {
                    action: safety.as_ref().map_or(GateAction::Off, |s| s.action),
                    flagged: safety.as_ref().is_some_and(|s| s.flagged),
                    checked_offset: safety.as_ref().and_then(|s| s.checked_offset).unwrap_or(0),
                    ..Default::default()
                },
                blocked,
                latencies: latencies.clone(),
                redacted: None,
            };
            if st.cfg.log_redact {
                record.redact();
            }
            record
        })
        .collect();
    let metrics = st.metrics.clone();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        records.iter().try_for_each(|r| log.append(r))
    })
    .await
    .map_err(|e| ApiError::internal(format!("log task: {e}")))?;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            metrics.log_errors.inc();
            tracing::error!(request = %info.request_id, "trajectory log write failed: {e}");
            if st.cfg.log_fail_closed {
                Err(ApiError::unavailable(format!(
                    "the trajectory log cannot be written: {e}"
                )))
            } else {
                Ok(())
            }
        }
    }
}

/// Ends a stream whose choices all finished: logs them, then sends the usage chunk (if any)
/// and `[DONE]` — or, when the log refuses (fail-closed), an error object instead.
pub async fn record_and_finish(
    st: &Shared,
    info: &RequestInfo,
    candidates: Vec<Candidate>,
    timer: &Timer,
    tx: &tokio::sync::mpsc::Sender<axum::response::sse::Event>,
    usage: Option<axum::response::sse::Event>,
) {
    if let Err(e) = record(st, info, candidates, timer).await {
        let _ = tx.send(crate::routes::json_event(&e.body())).await;
        return;
    }
    crate::choices::finish_stream(tx, usage, timer).await;
}
