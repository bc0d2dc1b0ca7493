//! One request pipeline for both completion endpoints: admission, the input check,
//! submission to the engine of the version the request was admitted with, then one of four
//! deliveries: a live stream (no blocking gate), a windowed gated stream, or collect, gate
//! and log, answered as JSON or as a held stream. The endpoints differ only in their wire
//! format ([`Wire`]), i.e. how a choice's text, tokens and scores become chunks and bodies.

use crate::api::Usage;
use crate::choices::{self, Timer};
use crate::error::ApiError;
use crate::gate::{self, GatePolicy, Gated};
use crate::safety::Scores;
use crate::state::{PolicyVersion, Shared};
use crate::stream_gate;
use crate::trajectory::{self, RequestInfo};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use safeloop_shared::engine::{FinishReason, SampledToken, SamplingParams, SeqUpdate};
use safeloop_shared::ChatMessage;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How an endpoint writes its choices.
pub trait Wire: Send + 'static {
    /// The request field a refused prompt is reported under.
    const PROMPT_PARAM: &'static str;
    /// Events before any generated text (windowed: whether text comes in checked windows).
    fn opening(&mut self, windowed: bool) -> Vec<Event>;
    /// A live (ungated) update of choice `i` as a chunk, or nothing to send yet.
    fn live(&mut self, i: usize, u: SeqUpdate) -> Option<Event>;
    /// Text released by a windowed gate as a chunk.
    fn release(&mut self, r: stream_gate::Release) -> Event;
    /// The usage chunk of a stream.
    fn usage(&self, usage: Usage) -> Event;
    /// The JSON body of a complete response.
    fn complete(self, choices: Vec<Gated>, usage: Usage) -> Response;
    /// Checked choices sent as a stream (the usage chunk and `[DONE]` follow).
    fn held(self, choices: Vec<Gated>) -> Vec<Event>;
}

/// A validated request, ready to run.
pub struct Prepared {
    /// The policy version the request was admitted with (kept to the end).
    pub served: Arc<PolicyVersion>,
    pub request_id: String,
    /// One (prompt ids, sampling params) per choice; choice `i` belongs to prompt `i / n`.
    pub jobs: Vec<(Vec<u32>, SamplingParams)>,
    /// Choices per prompt.
    pub n: usize,
    pub prompt_tokens: u32,
    /// Each prompt as the score models see it.
    pub conversations: Vec<Vec<ChatMessage>>,
    pub stream: bool,
    pub include_usage: bool,
    /// The server's gate narrowed by the request's `safety` override.
    pub policy: GatePolicy,
    pub keep_alive: u64,
}

/// Answers a completion request: takes the serving policy version (503 while loading),
/// runs `handle` with it, and stamps the version on the response.
pub async fn respond<F, Fut>(st: &Shared, handle: F) -> Response
where
    F: FnOnce(Arc<PolicyVersion>) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let served = match st.policy() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let version = served.version.clone();
    let mut resp = handle(served).await.unwrap_or_else(|e| e.into_response());
    if let Ok(v) = axum::http::HeaderValue::from_str(&version) {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_static("x-safeloop-model-version"),
            v,
        );
    }
    st.metrics
        .requests_by_version
        .with_label_values(&[&version])
        .inc();
    resp
}

/// Runs a prepared request and delivers it in `wire`'s format.
pub async fn run<W: Wire>(st: &Shared, p: Prepared, mut wire: W) -> Result<Response, ApiError> {
    let engine = p.served.engine.clone();
    // Admission before any scoring work.
    crate::routes::admit(st, engine.in_flight(), p.jobs.len())?;
    let safety = st.safety();
    let version = p.served.version.clone();
    for conv in &p.conversations {
        gate::check_input(
            &safety,
            &p.policy,
            conv.clone(),
            W::PROMPT_PARAM,
            &st.metrics.gate(&version),
        )
        .await?;
    }
    // A blocking gate holds output until it is checked.
    let held = safety.has_cost() && p.policy.holds_output();
    let timer = Timer::new(st.metrics.clone());
    let info = RequestInfo::new(p.request_id, &p.jobs, p.served.clone(), &safety);
    let streams = choices::submit_all(&engine, p.jobs).await?;
    let (n, prompt_tokens) = (p.n, p.prompt_tokens);
    let conversations = p.conversations;
    let conv = move |i: usize| conversations[i / n].clone();

    if p.stream && !held {
        let (tx, rx) = mpsc::channel(64);
        let st = st.clone();
        tokio::spawn(async move {
            for e in wire.opening(false) {
                if !choices::send(&tx, e, &st.metrics).await {
                    return;
                }
            }
            let total = streams.len();
            let mut outputs: Vec<Vec<SampledToken>> = vec![vec![]; total];
            let mut reasons = vec![FinishReason::Stop; total];
            let mut texts = vec![String::new(); total];
            let finished = choices::pump(streams, timer.clone(), &st.metrics, &tx, |i, u| {
                if let Some(t) = &u.token {
                    outputs[i].push(t.clone());
                }
                texts[i].push_str(&u.text);
                if let Some(r) = u.finished {
                    reasons[i] = r;
                }
                wire.live(i, u)
            })
            .await;
            if !finished {
                return;
            }
            let items = texts
                .into_iter()
                .enumerate()
                .map(|(i, t)| (conv(i), Some(t)))
                .collect();
            let scores = safety.annotate(items).await;
            let completion_tokens = outputs.iter().map(|o| o.len() as u32).sum();
            let logged = gate::streamed_candidates(
                &info.jobs,
                outputs,
                reasons,
                scores,
                &st.metrics.gate(&version),
            );
            let usage = p
                .include_usage
                .then(|| wire.usage(Usage::new(prompt_tokens, completion_tokens)));
            trajectory::record_and_finish(&st, &info, logged, &timer, &tx, usage).await;
        });
        return Ok(crate::routes::sse(rx, p.keep_alive));
    }

    if p.stream && p.policy.window > 0 {
        // Windowed gating: text is released only after its window is scored.
        let (tx, rx) = mpsc::channel(64);
        let st = st.clone();
        let policy = p.policy;
        tokio::spawn(async move {
            for e in wire.opening(true) {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            let wire = std::sync::Mutex::new(wire);
            let emit = |r: stream_gate::Release| wire.lock().expect("wire lock").release(r);
            let Some(cands) = stream_gate::run(
                &engine,
                streams,
                timer.clone(),
                &st.metrics.gate(&version),
                &tx,
                &safety,
                &policy,
                policy.window,
                &conv,
                &info.jobs,
                &emit,
            )
            .await
            else {
                return;
            };
            let completion_tokens = cands.iter().map(|c| c.tokens.len() as u32).sum();
            let usage = p.include_usage.then(|| {
                wire.lock()
                    .expect("wire lock")
                    .usage(Usage::new(prompt_tokens, completion_tokens))
            });
            trajectory::record_and_finish(&st, &info, cands, &timer, &tx, usage).await;
        });
        return Ok(crate::routes::sse(rx, p.keep_alive));
    }

    let results = choices::collect_all(streams, timer.clone(), st.cfg.request_timeout).await?;
    let t_gate = std::time::Instant::now();
    let gated = gate::apply(
        &safety,
        &p.policy,
        &engine,
        &info.jobs,
        results,
        &conv,
        &timer,
        st.cfg.request_timeout,
        &st.metrics.gate(&version),
    )
    .await?;
    if safety.enabled() {
        st.metrics
            .gate(&version)
            .latency(t_gate.elapsed().as_secs_f64());
    }
    let mut candidates = vec![];
    let mut out = vec![];
    for mut g in gated {
        candidates.append(&mut g.candidates);
        out.push(g);
    }
    // Usage counts every generated token, blocked and resampled candidates included.
    let completion_tokens = candidates.iter().map(|c| c.tokens.len() as u32).sum();
    trajectory::record(st, &info, candidates, &timer).await?;
    let usage = Usage::new(prompt_tokens, completion_tokens);
    if !p.stream {
        return Ok(wire.complete(out, usage));
    }
    // Held stream: every choice was checked whole; send it as chunks.
    let usage_event = p.include_usage.then(|| wire.usage(usage));
    let mut events = wire.held(out);
    events.extend(usage_event);
    events.push(Event::default().data("[DONE]"));
    let (tx, rx) = mpsc::channel(events.len());
    for e in events {
        let _ = tx.try_send(e);
    }
    Ok(crate::routes::sse(rx, p.keep_alive))
}

#[cfg(test)]
mod tests {
    //! The pipeline with a recording wire on the tiny golden model: admission comes first,
    //! a complete response goes through `complete`, a live stream through `opening` / `live`
    //! / `usage` and ends with `[DONE]`.
    use super::*;
    use crate::config::{ServeArgs, ServeConfig};
    use crate::state::AppState;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
        fn calls(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Wire for Recorder {
        const PROMPT_PARAM: &'static str = "prompt";
        fn opening(&mut self, windowed: bool) -> Vec<Event> {
            self.push(format!("opening windowed={windowed}"));
            vec![Event::default().data("opening")]
        }
        fn live(&mut self, i: usize, u: SeqUpdate) -> Option<Event> {
            self.push(format!("live {i} finished={}", u.finished.is_some()));
            Some(Event::default().data(format!("live {i}")))
        }
        fn release(&mut self, r: stream_gate::Release) -> Event {
            self.push(format!("release {}", r.index));
            Event::default().data("release")
        }
        fn usage(&self, usage: Usage) -> Event {
            self.push(format!("usage {}", usage.completion_tokens));
            Event::default().data("usage")
        }
        fn complete(self, choices: Vec<Gated>, usage: Usage) -> Response {
            self.push(format!(
                "complete {} choices, {} tokens",
                choices.len(),
                usage.completion_tokens
            ));
            "done".into_response()
        }
        fn held(self, choices: Vec<Gated>) -> Vec<Event> {
            self.push(format!("held {}", choices.len()));
            vec![]
        }
    }

    async fn state(max_queued: usize) -> Shared {
        let model =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/llama-gqa");
        let cfg = ServeConfig::resolve(ServeArgs {
            model: Some(model),
            max_running: Some(1),
            max_queued: Some(max_queued),
            ..Default::default()
        })
        .unwrap();
        let st: Shared = Arc::new(AppState::new(cfg, candle_core::Device::Cpu, None));
        crate::swap::load_initial(&st).await.unwrap();
        st
    }

    fn prepared(st: &Shared, stream: bool) -> Prepared {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(3),
            ignore_eos: true,
            ..Default::default()
        };
        Prepared {
            served: st.policy().unwrap(),
            request_id: "req-test".into(),
            jobs: vec![(vec![5, 6, 7], params.clone()), (vec![5, 6, 7], params)],
            n: 2,
            prompt_tokens: 3,
            conversations: vec![vec![ChatMessage::new("user", "hi")]],
            stream,
            include_usage: true,
            policy: st.cfg.gate.clone(),
            keep_alive: 10,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_comes_before_any_work() {
        let st = state(0).await;
        let wire = Recorder::default();
        let e = run(&st, prepared(&st, false), wire.clone())
            .await
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert!(wire.calls().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn complete_and_live_stream_deliveries() {
        let st = state(8).await;
        let wire = Recorder::default();
        let resp = run(&st, prepared(&st, false), wire.clone()).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(wire.calls(), ["complete 2 choices, 6 tokens"]);

        let wire = Recorder::default();
        let resp = run(&st, prepared(&st, true), wire.clone()).await.unwrap();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        let calls = wire.calls();
        assert_eq!(calls[0], "opening windowed=false");
        assert_eq!(calls.iter().filter(|c| c.starts_with("live")).count(), 6);
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.ends_with("finished=true"))
                .count(),
            2
        );
        assert_eq!(calls.last().unwrap(), "usage 6");
    }
}
