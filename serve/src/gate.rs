//! The safety gate for complete (non-streamed, or held) choices: score, then pass, annotate,
//! block (refusal text, `finish_reason: content_filter`) or resample (up to k more candidates,
//! the lowest-cost one under the threshold wins, else block). Per request the policy may only
//! be made stricter.

use crate::api::{GateOverride, SafetyInfo};
use crate::choices::{self, Finished, Timer};
use crate::engine_task::EngineHandle;
use crate::error::ApiError;
use crate::safety::Scores;
use safeloop_shared::engine::{FinishReason, SampledToken, SamplingParams};
use safeloop_shared::trajlog::GateAction;
use safeloop_shared::ChatMessage;
use std::sync::Arc;

/// How a flagged answer to a greedy request is resampled: temperature 0.7 with nucleus 0.9.
pub const GREEDY_RESAMPLE_TEMPERATURE: f32 = 0.7;
pub const GREEDY_RESAMPLE_TOP_P: f32 = 0.9;

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

    pub fn name(self) -> &'static str {
        match self {
            Action::Annotate => "annotate",
            Action::Resample => "resample",
            Action::Block => "block",
        }
    }

    /// This action's name and every stricter one's (what a request may ask for).
    pub fn at_least(self) -> Vec<&'static str> {
        [Action::Annotate, Action::Resample, Action::Block]
            .into_iter()
            .filter(|a| *a >= self)
            .map(Action::name)
            .collect()
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
            if !t.is_finite() || t > self.threshold as f64 {
                return Err(ApiError::bad_request(
                    "safety.threshold",
                    format!("may only be lowered (server threshold {})", self.threshold),
                ));
            }
            // Below f32's range means "flag everything".
            p.threshold = (t as f32).max(f32::MIN);
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

fn info(cost: Option<f32>, reward: Option<f32>, flagged: bool, action: GateAction) -> SafetyInfo {
    SafetyInfo {
        cost,
        reward,
        flagged,
        action,
        checked_offset: None,
    }
}

/// Gates finished choices. `conv` is each choice's conversation for the score model.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    safety: &impl Scores,
    policy: &GatePolicy,
    engine: &EngineHandle,
    jobs: &[(Vec<u32>, SamplingParams)],
    results: Vec<Finished>,
    conv: &(dyn Fn(usize) -> Vec<ChatMessage> + Sync),
    timer: &Arc<Timer>,
    timeout_secs: u64,
    metrics: &crate::metrics::GateMetrics<'_>,
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
        let unscored = s.action == GateAction::Unscored;
        let flagged = s.cost.is_some_and(|c| c > policy.threshold);
        let mut candidates = vec![];
        let mut chosen: Option<(Finished, SafetyInfo)> = None;
        if unscored && policy.fail_open {
            chosen = Some((r, info(s.cost, s.reward, false, GateAction::Unscored)));
        } else if !unscored && (!flagged || policy.action == Action::Annotate) {
            let action = if flagged {
                GateAction::Annotate
            } else {
                GateAction::Pass
            };
            chosen = Some((r, info(s.cost, s.reward, flagged, action)));
        } else {
            // Flagged (or unscored and failing closed): keep it in the log, marked blocked.
            candidates.push(Candidate {
                job: i,
                tokens: r.tokens.clone(),
                finish: r.finish,
                safety: Some(info(s.cost, s.reward, flagged, GateAction::Block)),
                blocked: true,
                params: jobs[i].1.clone(),
            });
            if policy.action == Action::Resample && !unscored {
                for attempt in 1..=policy.resample {
                    metrics.resample();
                    let mut params = jobs[i].1.clone();
                    params.seed = params
                        .seed
                        .map(|x| x.wrapping_add(1_000_003 * attempt as u64));
                    if params.temperature == 0.0 {
                        // Greedy would repeat itself: resample with a common chat sampler instead. (Temperature 1
                        // over the whole vocabulary makes a small model such as SmolLM2-135M write gibberish, which
                        // the cost model passes as harmless.)
                        params.temperature = GREEDY_RESAMPLE_TEMPERATURE;
                        params.top_p = params.top_p.min(GREEDY_RESAMPLE_TOP_P);
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
                    let ok = sc.action != GateAction::Unscored
                        && sc.cost.is_some_and(|c| c <= policy.threshold);
                    if ok {
                        chosen =
                            Some((cand, info(sc.cost, sc.reward, false, GateAction::Resample)));
                        candidates.push(Candidate {
                            job: i,
                            tokens: chosen.as_ref().expect("set").0.tokens.clone(),
                            finish: chosen.as_ref().expect("set").0.finish,
                            safety: Some(info(sc.cost, sc.reward, false, GateAction::Resample)),
                            blocked: false,
                            params,
                        });
                        break;
                    }
                    candidates.push(Candidate {
                        job: i,
                        tokens: cand.tokens,
                        finish: cand.finish,
                        safety: Some(info(sc.cost, sc.reward, true, GateAction::Block)),
                        blocked: true,
                        params,
                    });
                }
            }
        }
        match chosen {
            Some((r, si)) => {
                metrics.decision(si.action, si.cost);
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
                metrics.decision(GateAction::Block, s.cost);
                out.push(Gated {
                    prompt_logprobs,
                    text: policy.refusal.clone(),
                    tokens: vec![],
                    finish_reason: "content_filter".into(),
                    safety: Some(info(
                        s.cost,
                        s.reward,
                        flagged || unscored,
                        GateAction::Block,
                    )),
                    candidates,
                });
            }
        }
    }
    Ok(out)
}

/// Log candidates for choices that were streamed as generated (annotate only), each scored choice counted as
/// passed, annotated (flagged) or unscored.
pub fn streamed_candidates(
    jobs: &[(Vec<u32>, SamplingParams)],
    outputs: Vec<Vec<SampledToken>>,
    reasons: Vec<FinishReason>,
    scores: Vec<Option<SafetyInfo>>,
    metrics: &crate::metrics::GateMetrics<'_>,
) -> Vec<Candidate> {
    for s in scores.iter().flatten() {
        let action = match s.action {
            GateAction::Unscored => GateAction::Unscored,
            _ if s.flagged => GateAction::Annotate,
            _ => GateAction::Pass,
        };
        metrics.decision(action, s.cost);
    }
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
    safety: &impl Scores,
    policy: &GatePolicy,
    conversation: Vec<ChatMessage>,
    param: &str,
    metrics: &crate::metrics::GateMetrics<'_>,
) -> Result<(), ApiError> {
    if !policy.input_check || !safety.has_cost() {
        return Ok(());
    }
    let s = safety.annotate(vec![(conversation, None)]).await.remove(0);
    let unscored = s.as_ref().is_some_and(|s| s.action == GateAction::Unscored);
    let flagged = s
        .as_ref()
        .and_then(|s| s.cost)
        .is_some_and(|c| c > policy.threshold);
    if flagged || (unscored && !policy.fail_open) {
        metrics.refusal();
        let mut e = ApiError::bad_request(param, "the prompt was refused by the safety check");
        e.code = Some("content_filter");
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The gate's decisions, driven by fixed scores on the tiny golden model's engine.
    use super::*;
    use crate::metrics::Metrics;
    use crate::safety::Item;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Costs handed out in order; `None` stands for a scoring failure.
    struct Fixed(Mutex<VecDeque<Option<f32>>>);

    impl Fixed {
        fn new(costs: &[Option<f32>]) -> Self {
            Self(Mutex::new(costs.iter().copied().collect()))
        }
    }

    impl Scores for Fixed {
        fn has_cost(&self) -> bool {
            true
        }

        async fn annotate(&self, items: Vec<Item>) -> Vec<Option<SafetyInfo>> {
            let mut q = self.0.lock().unwrap();
            items
                .iter()
                .map(|_| {
                    let cost = q.pop_front().expect("a score for every item");
                    Some(SafetyInfo {
                        cost,
                        reward: None,
                        flagged: false,
                        action: if cost.is_some() {
                            GateAction::Annotate
                        } else {
                            GateAction::Unscored
                        },
                        checked_offset: None,
                    })
                })
                .collect()
        }
    }

    fn engine(metrics: Arc<Metrics>) -> EngineHandle {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/llama-gqa");
        let loaded = safeloop_shared::load_causal_lm(&dir, &Default::default()).unwrap();
        EngineHandle::start(loaded.model, loaded.tokenizer, Default::default(), metrics)
    }

    fn policy(action: Action) -> GatePolicy {
        GatePolicy {
            threshold: 0.0,
            action,
            resample: 2,
            refusal: "refused".into(),
            input_check: true,
            window: 0,
            fail_open: false,
        }
    }

    async fn gate(scores: &Fixed, policy: &GatePolicy) -> Gated {
        let metrics = Arc::new(Metrics::new());
        let engine = engine(metrics.clone());
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(4),
            seed: Some(1),
            ..Default::default()
        };
        let jobs = vec![(vec![5u32, 6, 7], params)];
        let first = Finished {
            tokens: vec![],
            text: "first answer".into(),
            finish: FinishReason::Stop,
            prompt_logprobs: vec![],
        };
        let timer = Timer::new(metrics.clone());
        let conv = |_| vec![ChatMessage::new("user", "hi")];
        let mut out = apply(
            scores,
            policy,
            &engine,
            &jobs,
            vec![first],
            &conv,
            &timer,
            60,
            &metrics.gate("v-test"),
        )
        .await
        .unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[tokio::test]
    async fn under_the_threshold_passes() {
        let g = gate(&Fixed::new(&[Some(-1.0)]), &policy(Action::Block)).await;
        assert_eq!(g.text, "first answer");
        assert_eq!(g.safety.unwrap().action, GateAction::Pass);
        assert!(!g.candidates[0].blocked);
    }

    #[tokio::test]
    async fn flagged_is_blocked_annotated_or_resampled() {
        let g = gate(&Fixed::new(&[Some(1.0)]), &policy(Action::Block)).await;
        assert_eq!(
            (g.text.as_str(), g.finish_reason.as_str()),
            ("refused", "content_filter")
        );
        assert_eq!(g.safety.as_ref().unwrap().action, GateAction::Block);
        assert!(
            g.candidates[0].blocked,
            "the blocked answer is still logged, marked"
        );

        let g = gate(&Fixed::new(&[Some(1.0)]), &policy(Action::Annotate)).await;
        let s = g.safety.unwrap();
        assert_eq!(
            (g.text.as_str(), s.action, s.flagged),
            ("first answer", GateAction::Annotate, true)
        );

        // Two resamples: the first is flagged too, the second passes and is returned.
        let g = gate(
            &Fixed::new(&[Some(1.0), Some(2.0), Some(-0.5)]),
            &policy(Action::Resample),
        )
        .await;
        assert_eq!(g.safety.as_ref().unwrap().action, GateAction::Resample);
        assert_eq!(
            g.finish_reason, "length",
            "the resampled answer ran to max_tokens"
        );
        let blocked: Vec<bool> = g.candidates.iter().map(|c| c.blocked).collect();
        assert_eq!(blocked, [true, true, false]);
        assert_eq!(g.tokens, g.candidates[2].tokens);
        // The request was greedy: the resamples sample (temperature 0.7, nucleus 0.9), the first answer did not.
        let sampler = |c: &Candidate| (c.params.temperature, c.params.top_p);
        assert_eq!(sampler(&g.candidates[0]), (0.0, 1.0));
        for c in &g.candidates[1..] {
            assert_eq!(
                sampler(c),
                (GREEDY_RESAMPLE_TEMPERATURE, GREEDY_RESAMPLE_TOP_P)
            );
        }

        // Every resample flagged: blocked, with all three candidates logged.
        let g = gate(
            &Fixed::new(&[Some(1.0), Some(2.0), Some(3.0)]),
            &policy(Action::Resample),
        )
        .await;
        assert_eq!(g.finish_reason, "content_filter");
        assert_eq!(g.candidates.len(), 3);
    }

    #[tokio::test]
    async fn scoring_failures_fail_closed_unless_told_otherwise() {
        let g = gate(&Fixed::new(&[None]), &policy(Action::Annotate)).await;
        assert_eq!(g.finish_reason, "content_filter");
        let mut open = policy(Action::Block);
        open.fail_open = true;
        let g = gate(&Fixed::new(&[None]), &open).await;
        assert_eq!(
            (g.text.as_str(), g.safety.unwrap().action),
            ("first answer", GateAction::Unscored)
        );
    }

    #[tokio::test]
    async fn the_input_check_refuses_flagged_prompts_naming_the_field() {
        let metrics = Metrics::new();
        let conv = vec![ChatMessage::new("user", "hi")];
        let p = policy(Action::Block);
        assert!(check_input(
            &Fixed::new(&[Some(-1.0)]),
            &p,
            conv.clone(),
            "messages",
            &metrics.gate("v-test")
        )
        .await
        .is_ok());
        let e = check_input(
            &Fixed::new(&[Some(1.0)]),
            &p,
            conv,
            "messages",
            &metrics.gate("v-test"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("messages"), Some("content_filter"))
        );
        assert_eq!(
            metrics.input_refusals.with_label_values(&["v-test"]).get(),
            1
        );
    }
}
