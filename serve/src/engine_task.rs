//! The engine runs on its own OS thread; HTTP handlers talk to it through channels. Each
//! sequence's updates go to its own channel: when the client goes away the receiver is
//! dropped, and the sequence is cancelled (its KV cache freed) at the next engine step.

use crate::metrics::Metrics;
use safeloop_shared::engine::{Engine, EngineConfig, SamplingParams, SeqId, SeqUpdate};
use safeloop_shared::model::CausalLm;
use safeloop_shared::Tokenizer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub enum SeqEvent {
    Update(SeqUpdate),
    /// The engine failed; the request cannot finish.
    Failed(String),
}

enum Command {
    /// Stop a sequence now (its KV cache is freed at the next step).
    Cancel(SeqId),
    Submit {
        prompt: Vec<u32>,
        params: SamplingParams,
        events: mpsc::UnboundedSender<SeqEvent>,
        reply: oneshot::Sender<safeloop_shared::Result<SeqId>>,
    },
}

/// A handle to the engine thread (cheap to clone).
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
    pub tokenizer: Arc<Tokenizer>,
    pub max_context: usize,
    /// Sequences submitted and not yet finished (queued + running).
    in_flight: Arc<AtomicUsize>,
    /// Why the engine thread died (it panicked); `None` while it runs.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

/// A submitted sequence: its update stream. Dropping it cancels the sequence.
pub struct SeqStream {
    pub id: SeqId,
    pub events: mpsc::UnboundedReceiver<SeqEvent>,
}

impl EngineHandle {
    pub fn start(
        model: CausalLm,
        tokenizer: Tokenizer,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let tokenizer = Arc::new(tokenizer);
        let max_context = {
            let m = model.config().max_position_embeddings;
            cfg.max_context.map_or(m, |c| c.min(m))
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let engine = Engine::new(model, tokenizer.clone(), cfg);
        let counter = in_flight.clone();
        let failure = Arc::new(std::sync::Mutex::new(None));
        let failed = failure.clone();
        std::thread::Builder::new()
            .name("safeloop-engine".into())
            .spawn(move || {
                let mut live = HashMap::new();
                // The queue outlives a panic so that queued submissions hear why (below).
                let mut rx = rx;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(engine, &mut rx, &mut live, metrics, counter)
                }));
                if let Err(p) = r {
                    // The engine's state is unknown after a panic: fail what is in flight
                    // (each request answers a 5xx error object) and stop. The server sees
                    // `failure()` and exits non-zero so a supervisor restarts it.
                    let why = format!(
                        "the engine thread panicked: {}",
                        crate::faults::panic_message(&*p)
                    );
                    tracing::error!("{why}");
                    // Mark the failure before any request hears of it, so that a client that
                    // got its 5xx and then asks /health never sees 200.
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                    for (_, l) in live.drain() {
                        let _ = l.events.send(SeqEvent::Failed(why.clone()));
                    }
                }
            })
            .expect("spawn the engine thread");
        Self {
            tx,
            tokenizer,
            max_context,
            in_flight,
            failure,
        }
    }

    /// Why the engine thread died, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Submits one sequence; validation errors (context length, parameters) come back here.
    pub async fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> safeloop_shared::Result<SeqStream> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply_tx, reply) = oneshot::channel();
        let cmd = Command::Submit {
            prompt,
            params,
            events: events_tx,
            reply: reply_tx,
        };
        // Only a panic stops an engine while handles exist; its reason is recorded before
        // the command queue is dropped.
        let stopped = || {
            safeloop_shared::Error::EngineFailed(
                self.failure()
                    .unwrap_or_else(|| "the engine has stopped".into()),
            )
        };
        self.tx.send(cmd).map_err(|_| stopped())?;
        let id = reply.await.map_err(|_| stopped())??;
        Ok(SeqStream { id, events })
    }

    /// Cancels a sequence whose output is no longer wanted (e.g. blocked by the gate).
    pub fn cancel(&self, id: SeqId) {
        let _ = self.tx.send(Command::Cancel(id));
    }
}

struct Live {
    events: mpsc::UnboundedSender<SeqEvent>,
    submitted: Instant,
}

fn run(
    mut engine: Engine<CausalLm>,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    live: &mut HashMap<SeqId, Live>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicUsize>,
) {
    // Set when every handle is gone (this version was swapped out): finish the sequences
    // in flight (drain), then exit and free the weights.
    let mut drain_started: Option<Instant> = None;
    let handle =
        |engine: &mut Engine<CausalLm>, live: &mut HashMap<SeqId, Live>, cmd: Command| match cmd {
            Command::Cancel(id) => {
                engine.cancel(id);
            }
            Command::Submit {
                prompt,
                params,
                events,
                reply,
            } => {
                let n_prompt = prompt.len();
                let r = engine.add_request(prompt, params);
                if let Ok(id) = &r {
                    metrics.prompt_tokens.inc_by(n_prompt as u64);
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    live.insert(
                        *id,
                        Live {
                            events,
                            submitted: Instant::now(),
                        },
                    );
                }
                let _ = reply.send(r);
            }
        };
    let drained = |since: Option<Instant>| {
        let secs = since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        tracing::info!(secs, "engine stopped: its version is unloaded");
    };
    loop {
        // Take every pending command; sleep only when there is nothing to do.
        while drain_started.is_none() {
            match rx.try_recv() {
                Ok(cmd) => handle(&mut engine, live, cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    drain_started = Some(Instant::now());
                }
            }
        }
        if !engine.has_work() {
            if drain_started.is_some() {
                return drained(drain_started);
            }
            match rx.blocking_recv() {
                Some(cmd) => {
                    handle(&mut engine, live, cmd);
                    continue;
                }
                None => return drained(None),
            }
        }
        // Clients that went away: cancel before spending a step on them.
        for (id, l) in live.iter() {
            if l.events.is_closed() {
                engine.cancel(*id);
            }
        }
        crate::faults::hit("engine_step");
        let result = engine.step();
        for id in engine.take_admitted() {
            if let Some(l) = live.get(&id) {
                metrics
                    .queue_time
                    .observe(l.submitted.elapsed().as_secs_f64());
            }
        }
        let stats = engine.last_step().clone();
        metrics.batch_size.observe(stats.batch_size as f64);
        if stats.decode_tokens > 0 {
            metrics
                .step_tokens
                .with_label_values(&["decode"])
                .observe(stats.decode_tokens as f64);
        }
        if stats.prefill_tokens > 0 {
            metrics
                .step_tokens
                .with_label_values(&["prefill"])
                .observe(stats.prefill_tokens as f64);
        }
        match result {
            Ok(updates) => {
                for u in updates {
                    if u.token.is_some() {
                        metrics.generation_tokens.inc();
                    }
                    let done = u.finished.is_some();
                    let id = u.id;
                    if let Some(l) = live.get(&id) {
                        if l.events.send(SeqEvent::Update(u)).is_err() && !done {
                            engine.cancel(id);
                        }
                    }
                    if done && live.remove(&id).is_some() {
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                // Not caused by one request (inputs are validated on submit): fail everything
                // in flight and carry on with an empty engine.
                tracing::error!("engine step failed: {e}");
                for (id, l) in live.drain() {
                    let _ = l.events.send(SeqEvent::Failed(e.to_string()));
                    engine.cancel(id);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                let _ = engine.step();
            }
        }
        if drain_started.is_some() {
            continue; // the serving version's engine owns the gauges
        }
        metrics.running.set(engine.num_running() as i64);
        metrics.waiting.set(engine.num_waiting() as i64);
        metrics.kv_cache_tokens.set(engine.kv_cache_tokens() as i64);
        metrics.kv_cache_bytes.set(engine.kv_cache_bytes() as i64);
        metrics
            .prefix_cache_tokens
            .set(engine.prefix_cache_tokens() as i64);
        metrics
            .prefix_cache_hits
            .inc_by(engine.take_prefix_hit_tokens() as u64);
    }
}
