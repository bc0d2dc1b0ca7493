//! Cost and reward scoring in the server: each score model runs on its own thread and
//! scores every queued request's items in one batch.

use crate::api::SafetyInfo;
use safeloop_shared::scoring::{ScoreFormat, Scorer};
use safeloop_shared::trajlog::GateAction;
use safeloop_shared::{ChatMessage, LoadOptions};
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

pub type Item = (Vec<ChatMessage>, Option<String>);

struct Job {
    items: Vec<Item>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

#[derive(Clone)]
pub struct ScorerHandle {
    tx: mpsc::UnboundedSender<Job>,
}

impl ScorerHandle {
    pub fn start(path: &Path, name: &str, format: ScoreFormat) -> anyhow::Result<Self> {
        let scorer = Scorer::load(path, &LoadOptions::default(), format)
            .map_err(|e| anyhow::anyhow!("loading the {name} model {}: {e}", path.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name(format!("safeloop-{name}"))
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while let Ok(j) = rx.try_recv() {
                        jobs.push(j);
                    }
                    let all: Vec<Item> =
                        jobs.iter().flat_map(|j| j.items.iter().cloned()).collect();
                    // A panic fails this batch (its choices are unscored: blocked unless
                    // --gate-fail-open) and the thread keeps scoring the next ones.
                    let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::faults::hit("scorer");
                        scorer.score(&all).map_err(|e| e.to_string())
                    }))
                    .unwrap_or_else(|p| {
                        Err(format!(
                            "the scorer panicked: {}",
                            crate::faults::panic_message(&*p)
                        ))
                    });
                    match scored {
                        Ok(scores) => {
                            let mut it = scores
                                .into_iter()
                                .map(|s| s.first().copied().unwrap_or(0.0));
                            for j in jobs {
                                let mine: Vec<f32> = it.by_ref().take(j.items.len()).collect();
                                let _ = j.reply.send(Ok(mine));
                            }
                        }
                        Err(e) => {
                            for j in jobs {
                                let _ = j.reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            })?;
        Ok(Self { tx })
    }

    pub async fn score(&self, items: Vec<Item>) -> Result<Vec<f32>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { items, reply })
            .map_err(|_| "the scorer stopped".to_string())?;
        rx.await.map_err(|_| "the scorer stopped".to_string())?
    }
}

/// What the gate needs from the score models: a trait, so the gate can be driven by fixed
/// scores in tests.
pub trait Scores: Sync {
    /// Whether a cost model is loaded (without one the gate has nothing to act on).
    fn has_cost(&self) -> bool;
    /// Scores each item; `None` per item when no model is loaded, `action: unscored` when
    /// scoring failed.
    fn annotate(
        &self,
        items: Vec<Item>,
    ) -> impl std::future::Future<Output = Vec<Option<SafetyInfo>>> + Send;
}

impl Scores for Safety {
    fn has_cost(&self) -> bool {
        self.cost.is_some()
    }

    async fn annotate(&self, items: Vec<Item>) -> Vec<Option<SafetyInfo>> {
        Safety::annotate(self, items).await
    }
}

/// The score models the server loaded, with their versions.
#[derive(Clone, Default)]
pub struct Safety {
    pub cost: Option<ScorerHandle>,
    pub reward: Option<ScorerHandle>,
    /// Version ids (content hashes) of the cost and reward models.
    pub cost_version: Option<String>,
    pub reward_version: Option<String>,
    /// Cost above this is flagged (cost > 0 means unsafe).
    pub threshold: f32,
    /// `safeloop_scoring_errors_total{role}`, counted per failed scoring call.
    pub errors: Option<prometheus::IntCounterVec>,
}

impl Safety {
    pub fn enabled(&self) -> bool {
        self.cost.is_some() || self.reward.is_some()
    }

    /// Scores each item; `None` per item when no model is loaded. Scoring failures are
    /// reported as `action: "unscored"`.
    pub async fn annotate(&self, items: Vec<Item>) -> Vec<Option<SafetyInfo>> {
        if !self.enabled() {
            return vec![None; items.len()];
        }
        let n = items.len();
        let cost = match &self.cost {
            Some(c) => Some(c.score(items.clone()).await),
            None => None,
        };
        let reward = match &self.reward {
            Some(r) => Some(r.score(items).await),
            None => None,
        };
        for (role, r) in [("cost", &cost), ("reward", &reward)] {
            if let (Some(Err(e)), Some(errors)) = (r, &self.errors) {
                errors.with_label_values(&[role]).inc();
                tracing::warn!(role, error = %e, "scoring failed");
            }
        }
        (0..n)
            .map(|i| {
                let c = cost.as_ref().and_then(|r| r.as_ref().ok()).map(|v| v[i]);
                let r = reward.as_ref().and_then(|r| r.as_ref().ok()).map(|v| v[i]);
                let failed = cost.as_ref().is_some_and(|r| r.is_err())
                    || reward.as_ref().is_some_and(|r| r.is_err());
                let flagged = c.is_some_and(|c| c > self.threshold);
                Some(SafetyInfo {
                    cost: c,
                    reward: r,
                    flagged,
                    action: if failed {
                        GateAction::Unscored
                    } else {
                        GateAction::Annotate
                    },
                    checked_offset: None,
                })
            })
            .collect()
    }
}

/// Moderation scores in [0, 1]: `sigmoid(cost)`, so cost 0 (the safe/unsafe boundary) is 0.5.
pub fn moderation_score(cost: f32) -> f32 {
    1.0 / (1.0 + (-cost).exp())
}
