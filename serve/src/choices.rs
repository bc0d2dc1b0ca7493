//! Running a request's choices on the engine: submit, then collect (JSON responses) or merge
//! their update streams (SSE). Records the latency metrics of each request.

use crate::engine_task::{EngineHandle, SeqEvent, SeqStream};
use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::response::sse::Event;
use futures::stream::{self, Stream, StreamExt};
use safeloop_shared::engine::{
    FinishReason, PromptLogprob, SampledToken, SamplingParams, SeqUpdate,
};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Per-request latency bookkeeping.
pub struct Timer {
    arrival: Instant,
    first_token: std::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Timer {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            arrival: Instant::now(),
            first_token: std::sync::Mutex::new(None),
            metrics,
        })
    }

    fn token(&self, last: &mut Option<Instant>) {
        let now = Instant::now();
        let mut first = self.first_token.lock().expect("timer lock");
        if first.is_none() {
            *first = Some(now);
            self.metrics
                .ttft
                .observe((now - self.arrival).as_secs_f64());
        }
        if let Some(prev) = last.replace(now) {
            self.metrics.itl.observe((now - prev).as_secs_f64());
        }
    }

    pub fn ttft_ms(&self) -> Option<f64> {
        self.first_token
            .lock()
            .expect("timer lock")
            .map(|t| (t - self.arrival).as_secs_f64() * 1e3)
    }

    pub fn elapsed_ms(&self) -> f64 {
        self.arrival.elapsed().as_secs_f64() * 1e3
    }

    pub fn finish(&self) {
        self.metrics
            .e2e
            .observe(self.arrival.elapsed().as_secs_f64());
    }
}

/// Submits every (prompt, params) pair; if one is refused the others are dropped (cancelled).
pub async fn submit_all(
    engine: &EngineHandle,
    jobs: Vec<(Vec<u32>, SamplingParams)>,
) -> Result<Vec<SeqStream>, ApiError> {
    let mut out = Vec::with_capacity(jobs.len());
    for (prompt, params) in jobs {
        out.push(engine.submit(prompt, params).await?);
    }
    Ok(out)
}

/// A finished choice.
pub struct Finished {
    pub tokens: Vec<SampledToken>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_logprobs: Vec<PromptLogprob>,
}

/// Waits for one choice to finish.
pub async fn collect(mut s: SeqStream, timer: Arc<Timer>) -> Result<Finished, ApiError> {
    let mut f = Finished {
        tokens: vec![],
        text: String::new(),
        finish: FinishReason::Stop,
        prompt_logprobs: vec![],
    };
    let mut last = None;
    while let Some(ev) = s.events.recv().await {
        match ev {
            SeqEvent::Failed(msg) => {
                return Err(ApiError::internal(format!("generation failed: {msg}")))
            }
            SeqEvent::Update(u) => {
                if let Some(t) = u.token {
                    timer.token(&mut last);
                    f.tokens.push(t);
                }
                f.text.push_str(&u.text);
                if let Some(p) = u.prompt_logprobs {
                    f.prompt_logprobs = p;
                }
                if let Some(r) = u.finished {
                    f.finish = r;
                    return Ok(f);
                }
            }
        }
    }
    Err(ApiError::internal("the engine dropped the request"))
}

/// Waits for every choice (non-streaming responses), or 408 after `timeout_secs`.
pub async fn collect_all(
    streams: Vec<SeqStream>,
    timer: Arc<Timer>,
    timeout_secs: u64,
) -> Result<Vec<Finished>, ApiError> {
    let all = futures::future::try_join_all(streams.into_iter().map(|s| collect(s, timer.clone())));
    let results = tokio::time::timeout(Duration::from_secs(timeout_secs), all)
        .await
        .map_err(|_| ApiError::timeout(timeout_secs))??;
    timer.finish();
    Ok(results)
}

/// Feeds an SSE channel from the choices' updates: `on_update` turns an update into the
/// chunk to send (or none). Returns `false` when the stream ended early — the client went
/// away (the sequences are cancelled as `streams` drop) or the engine failed (an error
/// object was sent); `true` when every choice finished.
pub async fn pump(
    streams: Vec<SeqStream>,
    timer: Arc<Timer>,
    metrics: &Metrics,
    tx: &mpsc::Sender<Event>,
    mut on_update: impl FnMut(usize, SeqUpdate) -> Option<Event>,
) -> bool {
    let total = streams.len();
    let mut updates = Updates::new(streams, timer);
    let mut done = 0;
    while done < total {
        let Some((i, u)) = updates.next(tx, metrics).await else {
            return false;
        };
        if u.finished.is_some() {
            done += 1;
        }
        if let Some(event) = on_update(i, u) {
            if !send(tx, event, metrics).await {
                return false;
            }
        }
    }
    true
}

/// The merged updates of a request's choices, as an SSE response consumes them.
pub struct Updates {
    merged: std::pin::Pin<Box<dyn Stream<Item = (usize, SeqEvent)> + Send>>,
}

impl Updates {
    pub fn new(streams: Vec<SeqStream>, timer: Arc<Timer>) -> Self {
        Self {
            merged: Box::pin(merge(streams, timer)),
        }
    }

    /// The next update of any choice, or `None` when the stream must end: the client went
    /// away (counted) or the engine failed (an error object was sent). Dropping `self` then
    /// cancels the sequences.
    pub async fn next(
        &mut self,
        tx: &mpsc::Sender<Event>,
        metrics: &Metrics,
    ) -> Option<(usize, SeqUpdate)> {
        let next = tokio::select! {
            ev = self.merged.next() => ev,
            _ = tx.closed() => {
                metrics.disconnects.inc();
                return None;
            }
        };
        match next? {
            (i, SeqEvent::Update(u)) => Some((i, u)),
            (_, SeqEvent::Failed(msg)) => {
                let e = ApiError::internal(format!("generation failed: {msg}"));
                let _ = tx.send(crate::routes::json_event(&e.body())).await;
                None
            }
        }
    }
}

/// Sends an SSE event; `false` (and a counted disconnect) when the client is gone.
pub async fn send(tx: &mpsc::Sender<Event>, event: Event, metrics: &Metrics) -> bool {
    let ok = tx.send(event).await.is_ok();
    if !ok {
        metrics.disconnects.inc();
    }
    ok
}

/// Ends a stream: the usage chunk (when asked for), then `data: [DONE]`.
pub async fn finish_stream(tx: &mpsc::Sender<Event>, usage: Option<Event>, timer: &Timer) {
    if let Some(u) = usage {
        let _ = tx.send(u).await;
    }
    let _ = tx.send(Event::default().data("[DONE]")).await;
    timer.finish();
}

/// All choices' updates as one stream of `(choice index, event)`, with metrics recorded.
pub fn merge(
    streams: Vec<SeqStream>,
    timer: Arc<Timer>,
) -> impl Stream<Item = (usize, SeqEvent)> + Send {
    let per_choice = streams.into_iter().enumerate().map(move |(i, s)| {
        let timer = timer.clone();
        let mut last = None;
        UnboundedReceiverStream::new(s.events).map(move |ev| {
            if let SeqEvent::Update(SeqUpdate { token: Some(_), .. }) = &ev {
                timer.token(&mut last);
            }
            (i, ev)
        })
    });
    stream::select_all(per_choice)
}

pub fn finish_reason(r: FinishReason) -> String {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
    .to_string()
}

pub fn random_id(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let n: u128 = rng.random();
    format!("{prefix}-{:024x}", n & ((1u128 << 96) - 1))
}
