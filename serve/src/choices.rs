//! Running a request's choices on the engine: submit, then collect (JSON responses) or merge
//! their update streams (SSE). Records the latency metrics of each request.

use crate::engine_task::{EngineHandle, SeqEvent, SeqStream};
use crate::error::ApiError;
use crate::metrics::Metrics;
use futures::stream::{self, Stream, StreamExt};
use safeloop_shared::engine::{
    FinishReason, PromptLogprob, SampledToken, SamplingParams, SeqUpdate,
};
use std::sync::Arc;
use std::time::Instant;
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
