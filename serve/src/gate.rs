//! The safety gate for complete (non-streamed, or held) choices: score, then pass, annotate,
//! block (refusal text, `finish_reason: content_filter`) or resample (up to k more candidates,
//! the lowest-cost one under the threshold wins, else block). Per request the policy may only
//! be made stricter.

use crate::api::{GateOverride, SafetyInfo};
use crate::choices::{self, Finished, Timer};
use crate::engine_task::EngineHandle;
use crate::error::ApiError;
use crate::safety::Safety;
use safeloop_shared::engine::{FinishReason, SampledToken, SamplingParams};
use safeloop_shared::ChatMessage;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Annotate,
    Resample,
    Block,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "annotate" => Some(Action::Annotate),
            "resample" => Some(Action::Resample),
            "block" => Some(Action::Block),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatePolicy {
    pub threshold: f32,
    pub action: Action,
    pub resample: u32,
    pub refusal: String,
    pub input_check: bool,
    /// Tokens per scored window in streams (0: hold the whole choice).
    pub window: usize,
    /// On scoring failure: pass the choice as `unscored` (true) or block it (false).
    pub fail_open: bool,
}

impl GatePolicy {
    /// Applies a request's override, refusing anything looser than the server's policy.
    pub fn narrowed(&self, o: Option<&GateOverride>) -> Result<GatePolicy, ApiError> {
        let mut p = self.clone();
        let Some(o) = o else { return Ok(p) };
        if let Some(t) = o.threshold {
            if !t.is_finite() || t > self.threshold {
                return Err(ApiError::bad_request(
                    "safety.threshold",
                    format!("may only be lowered (server threshold {})", self.threshold),
                ));
            }
            p.threshold = t;
        }
        if let Some(a) = &o.action {
            let a = Action::parse(a).ok_or_else(|| {
                ApiError::bad_request("safety.action", "must be annotate, resample or block")
            })?;
            if a < self.action {
                return Err(ApiError::bad_request(
                    "safety.action",
                    "may only be made stricter (annotate < resample < block)",
                ));
            }
            p.action = a;
        }
        Ok(p)
    }

    /// Whether choices must be checked before anything is released.
    pub fn holds_output(&self) -> bool {
        self.action != Action::Annotate
    }
}

/// One generated candidate as the log records it.
pub struct Candidate {
    pub job: usize,
    pub tokens: Vec<SampledToken>,
    pub finish: FinishReason,
    pub safety: Option<SafetyInfo>,
    pub blocked: bool,
    pub params: SamplingParams,
}

/// A choice after the gate.
pub struct Gated {
    /// The prompt's log-probs (when asked for), kept whatever the gate did.
    pub prompt_logprobs: Vec<safeloop_shared::engine::PromptLogprob>,
    pub text: String,
    pub tokens: Vec<SampledToken>,
    pub finish_reason: String,
    pub safety: Option<SafetyInfo>,
    /// Every candidate generated for this choice (the trajectory log keeps them all).
    pub candidates: Vec<Candidate>,
}

fn info(cost: Option<f32>, reward: Option<f32>, flagged: bool, action: &str) -> SafetyInfo {
    SafetyInfo {
        cost,
        reward,
        flagged,
        action: action.into(),
        checked_offset: None,
    }
}

/// Gates finished choices. `conv` is each choice's conversation for the score model.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    safety: &Safety,
    policy: &GatePolicy,
    engine: &EngineHandle,
    jobs: &[(Vec<u32>, SamplingParams)],
    results: Vec<Finished>,
    conv: &(dyn Fn(usize) -> Vec<ChatMessage> + Sync),
    timer: &Arc<Timer>,
    timeout_secs: u64,
    metrics: &crate::metrics::Metrics,
) -> Result<Vec<Gated>, ApiError> {
    let scores = safety
        .annotate(
            results
                .iter()
                .enumerate()
                .map(|(i, r)| (conv(i), Some(r.text.clone())))
                .collect(),
        )
        .await;
    let mut out = Vec::with_capacity(results.len());
    for (i, (mut r, s)) in results.into_iter().zip(scores).enumerate() {
        let prompt_logprobs = std::mem::take(&mut r.prompt_logprobs);
        let Some(s) = s else {
            // No score model: nothing to gate.
            out.push(Gated {
                candidates: vec![Candidate {
                    job: i,
                    tokens: r.tokens.clone(),
                    finish: r.finish,
                    safety: None,
                    blocked: false,
                    params: jobs[i].1.clone(),
                }],
                prompt_logprobs,
                text: r.text,
                tokens: r.tokens,
                finish_reason: choices::finish_reason(r.finish),
                safety: None,
            });
            continue;
        };
        let unscored = s.action == "unscored";
        let flagged = s.cost.is_some_and(|c| c > policy.threshold);
        let mut candidates = vec![];
        let mut chosen: Option<(Finished, SafetyInfo)> = None;
        if unscored && policy.fail_open {
            chosen = Some((r, info(s.cost, s.reward, false, "unscored")));
        } else if !unscored && (!flagged || policy.action == Action::Annotate) {
            let action = if flagged { "annotate" } else { "pass" };
            chosen = Some((r, info(s.cost, s.reward, flagged, action)));
        } else {
            // Flagged (or unscored and failing closed): keep it in the log, marked blocked.
            candidates.push(Candidate {
                job: i,
                tokens: r.tokens.clone(),
                finish: r.finish,
                safety: Some(info(s.cost, s.reward, flagged, "block")),
                blocked: true,
                params: jobs[i].1.clone(),
            });
            if policy.action == Action::Resample && !unscored {
                for attempt in 1..=policy.resample {
                    metrics.gate_resamples.inc();
                    let mut params = jobs[i].1.clone();
                    params.seed = params
                        .seed
                        .map(|x| x.wrapping_add(1_000_003 * attempt as u64));
                    if params.temperature == 0.0 {
                        // Greedy would repeat itself: resample at temperature 1.
                        params.temperature = 1.0;
                    }
                    let stream = engine.submit(jobs[i].0.clone(), params.clone()).await?;
                    let mut got =
                        choices::collect_all(vec![stream], timer.clone(), timeout_secs).await?;
                    let cand = got.remove(0);
                    let sc = safety
                        .annotate(vec![(conv(i), Some(cand.text.clone()))])
                        .await
                        .remove(0);
                    let sc = sc.expect("a score model is loaded");
                    let ok =
                        sc.action != "unscored" && sc.cost.is_some_and(|c| c <= policy.threshold);
                    if ok {
                        chosen = Some((cand, info(sc.cost, sc.reward, false, "resample")));
                        candidates.push(Candidate {
                            job: i,
                            tokens: chosen.as_ref().expect("set").0.tokens.clone(),
                            finish: chosen.as_ref().expect("set").0.finish,
                            safety: Some(info(sc.cost, sc.reward, false, "resample")),
                            blocked: false,
                            params,
                        });
                        break;
                    }
                    candidates.push(Candidate {
                        job: i,
                        tokens: cand.tokens,
                        finish: cand.finish,
                        safety: Some(info(sc.cost, sc.reward, true, "block")),
                        blocked: true,
                        params,
                    });
                }
            }
        }
        match chosen {
            Some((r, si)) => {
                metrics
                    .gate_decisions
                    .with_label_values(&[&si.action])
                    .inc();
                if candidates.is_empty() {
                    candidates.push(Candidate {
                        job: i,
                        tokens: r.tokens.clone(),
                        finish: r.finish,
                        safety: Some(si.clone()),
                        blocked: false,
                        params: jobs[i].1.clone(),
                    });
                }
                out.push(Gated {
                    prompt_logprobs,
                    text: r.text,
                    tokens: r.tokens,
                    finish_reason: choices::finish_reason(r.finish),
                    safety: Some(si),
                    candidates,
                });
            }
            None => {
                metrics.gate_decisions.with_label_values(&["block"]).inc();
                out.push(Gated {
                    prompt_logprobs,
                    text: policy.refusal.clone(),
                    tokens: vec![],
                    finish_reason: "content_filter".into(),
                    safety: Some(info(s.cost, s.reward, flagged || unscored, "block")),
                    candidates,
                });
            }
        }
    }
    Ok(out)
}

/// Log candidates for choices that were streamed as generated (annotate only).
pub fn streamed_candidates(
    jobs: &[(Vec<u32>, SamplingParams)],
    outputs: Vec<Vec<SampledToken>>,
    reasons: Vec<FinishReason>,
    scores: Vec<Option<SafetyInfo>>,
) -> Vec<Candidate> {
    outputs
        .into_iter()
        .zip(reasons)
        .zip(scores)
        .enumerate()
        .map(|(i, ((tokens, finish), safety))| Candidate {
            job: i,
            tokens,
            finish,
            safety,
            blocked: false,
            params: jobs[i].1.clone(),
        })
        .collect()
}

/// The input check: `Err(400 content_filter)` when the prompt alone is flagged.
pub async fn check_input(
    safety: &Safety,
    policy: &GatePolicy,
    conversation: Vec<ChatMessage>,
    param: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<(), ApiError> {
    if !policy.input_check || safety.cost.is_none() {
        return Ok(());
    }
    let s = safety.annotate(vec![(conversation, None)]).await.remove(0);
    let unscored = s.as_ref().is_some_and(|s| s.action == "unscored");
    let flagged = s
        .as_ref()
        .and_then(|s| s.cost)
        .is_some_and(|c| c > policy.threshold);
    if flagged || (unscored && !policy.fail_open) {
        metrics.input_refusals.inc();
        let mut e = ApiError::bad_request(param, "the prompt was refused by the safety check");
        e.code = Some("content_filter");
        return Err(e);
    }
    Ok(())
}
