//! Gated streaming: text is released only after its window has been scored. Every `window`
//! tokens (and at the end) the whole text so far is scored; if it passes, the buffered part
//! is sent; if it is flagged, the choice ends with `finish_reason: "content_filter"` and
//! nothing unchecked is ever sent. Smaller windows give lower latency to first text and cost
//! more scoring passes.

use crate::api::SafetyInfo;
use crate::choices::{self, Timer};
use crate::engine_task::{EngineHandle, SeqStream};
use crate::gate::{Candidate, GatePolicy};
use crate::safety::Scores;
use axum::response::sse::Event;
use safeloop_shared::engine::{FinishReason, SampledToken, SamplingParams};
use safeloop_shared::trajlog::GateAction;
use safeloop_shared::ChatMessage;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a gated stream sends for one choice.
pub struct Release {
    pub index: usize,
    pub text: String,
    pub tokens: Vec<SampledToken>,
    pub finish_reason: Option<String>,
    pub safety: Option<SafetyInfo>,
}

#[derive(Default)]
struct ChoiceState {
    released: String,
    pending: String,
    pending_tokens: Vec<SampledToken>,
    all_tokens: Vec<SampledToken>,
    since_check: usize,
    done: bool,
    blocked: bool,
    windows: Vec<usize>,
    last: Option<SafetyInfo>,
    finish: Option<FinishReason>,
}

/// Runs the choices' streams through the gate; `emit` turns a release into an SSE event.
/// Returns the log candidates, or `None` if the client went away or the engine failed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    engine: &EngineHandle,
    streams: Vec<SeqStream>,
    timer: Arc<Timer>,
    gm: &crate::metrics::GateMetrics<'_>,
    tx: &mpsc::Sender<Event>,
    safety: &impl Scores,
    policy: &GatePolicy,
    window: usize,
    conv: &(dyn Fn(usize) -> Vec<ChatMessage> + Sync),
    jobs: &[(Vec<u32>, SamplingParams)],
    emit: &(dyn Fn(Release) -> Event + Sync),
) -> Option<Vec<Candidate>> {
    let total = streams.len();
    let ids: Vec<_> = streams.iter().map(|s| s.id).collect();
    let mut state: Vec<ChoiceState> = (0..total).map(|_| ChoiceState::default()).collect();
    let mut updates = choices::Updates::new(streams, timer);
    let mut done = 0;
    while done < total {
        let (i, u) = updates.next(tx, gm.all).await?;
        let st = &mut state[i];
        if st.done {
            continue; // a blocked choice: its remaining tokens are never sent
        }
        if let Some(t) = u.token {
            st.all_tokens.push(t.clone());
            st.pending_tokens.push(t);
            st.since_check += 1;
        }
        st.pending.push_str(&u.text);
        if u.finished.is_some() {
            st.finish = u.finished;
        }
        if st.since_check < window.max(1) && u.finished.is_none() {
            continue;
        }
        // Score everything generated so far.
        let t0 = std::time::Instant::now();
        let text = format!("{}{}", st.released, st.pending);
        let s = safety
            .annotate(vec![(conv(i), Some(text.clone()))])
            .await
            .remove(0);
        gm.latency(t0.elapsed().as_secs_f64());
        let s = s.expect("gated streams have a cost model");
        let unscored = s.action == GateAction::Unscored;
        let flagged = s.cost.is_some_and(|c| c > policy.threshold);
        st.since_check = 0;
        if let Some(c) = s.cost {
            gm.cost(c);
        }
        let release = if flagged || (unscored && !policy.fail_open) {
            st.blocked = true;
            st.done = true;
            done += 1;
            // Its remaining tokens would never be sent: stop generating them.
            engine.cancel(ids[i]);
            gm.decision(GateAction::Block, None);
            Release {
                index: i,
                text: String::new(),
                tokens: vec![],
                finish_reason: Some("content_filter".into()),
                safety: Some(SafetyInfo {
                    action: GateAction::Block,
                    flagged: true,
                    checked_offset: Some(st.released.len()),
                    ..s.clone()
                }),
            }
        } else {
            let newly = std::mem::take(&mut st.pending);
            st.released.push_str(&newly);
            st.windows.push(st.released.len());
            let finished = u.finished.is_some();
            if finished {
                st.done = true;
                done += 1;
                gm.decision(
                    if unscored {
                        GateAction::Unscored
                    } else {
                        GateAction::Pass
                    },
                    None,
                );
            }
            Release {
                index: i,
                text: newly,
                tokens: std::mem::take(&mut st.pending_tokens),
                finish_reason: u.finished.map(choices::finish_reason),
                safety: Some(SafetyInfo {
                    action: if unscored {
                        GateAction::Unscored
                    } else {
                        GateAction::Pass
                    },
                    checked_offset: Some(st.released.len()),
                    ..s.clone()
                }),
            }
        };
        st.last = Some(s);
        if !choices::send(tx, emit(release), gm.all).await {
            return None;
        }
    }
    Some(
        state
            .into_iter()
            .enumerate()
            .map(|(i, st)| Candidate {
                job: i,
                tokens: st.all_tokens,
                finish: st.finish.unwrap_or(FinishReason::Stop),
                safety: st.last.map(|s| SafetyInfo {
                    action: if st.blocked {
                        GateAction::Block
                    } else {
                        s.action
                    },
                    flagged: st.blocked,
                    checked_offset: st.windows.last().copied(),
                    ..s
                }),
                blocked: st.blocked,
                params: jobs[i].1.clone(),
            })
            .collect(),
    )
}
