//! Engine benchmark on the default policy (SmolLM2-135M-Instruct Q4_1): prefill tokens/s,
//! decode tokens/s at 1, 4 and 16 concurrent sequences, the batch-16 / batch-1 aggregate
//! ratio and peak memory — for safeloop's CPU kernels and, in the same process as the
//! baseline, for candle's stock ops on the same engine (ratios printed at the end).
//!
//! `cargo bench -p safeloop-shared --bench engine [-- --model PATH --new-tokens N
//!  --prompt-tokens N --no-baseline]`

use safeloop_shared::engine::{Engine, EngineConfig, SamplingParams};
use safeloop_shared::model::CausalLm;
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions, Tokenizer};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Figures {
    prefill: f64,
    /// Aggregate decode tokens/s at 1, 4, 16 streams.
    decode: [f64; 3],
}

const STREAMS: [usize; 3] = [1, 4, 16];

fn measure(
    label: &str,
    model: &Path,
    opts: &LoadOptions,
    new_tokens: usize,
    prompt_tokens: usize,
) -> anyhow::Result<Figures> {
    let t0 = Instant::now();
    let m = load_causal_lm(model, opts)?;
    println!(
        "[{label}] model loaded in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let tok = Arc::new(m.tokenizer);
    let mut engine = Engine::new(
        m.model,
        tok.clone(),
        EngineConfig {
            max_running: 64,
            max_batch_tokens: 2048,
            max_context: None,
            // The prefill figure repeats one prompt: measure computing it, not reusing it.
            prefix_cache_tokens: 0,
        },
    );
    let prompt = long_prompt(&tok, prompt_tokens)?;
    let one = SamplingParams {
        max_tokens: Some(1),
        ..SamplingParams::greedy()
    };
    engine.generate(vec![(prompt.clone(), one.clone())])?; // warm-up
    let runs = 3;
    let t = Instant::now();
    for _ in 0..runs {
        engine.generate(vec![(prompt.clone(), one.clone())])?;
    }
    let prefill = (runs * prompt.len()) as f64 / t.elapsed().as_secs_f64();
    println!(
        "[{label}] prefill: {prefill:.1} tokens/s ({} prompt tokens)",
        prompt.len()
    );
    let mut decode = [0.0; 3];
    for (slot, &b) in STREAMS.iter().enumerate() {
        decode[slot] = decode_rate(&mut engine, &tok, b, new_tokens)?;
        println!(
            "[{label}] decode {b:>2} streams: {:7.1} tokens/s aggregate, {:6.1} per stream",
            decode[slot],
            decode[slot] / b as f64
        );
    }
    Ok(Figures { prefill, decode })
}

fn long_prompt(tok: &Tokenizer, n: usize) -> anyhow::Result<Vec<u32>> {
    let text = "Safe reinforcement learning from human feedback trains a policy to be helpful \
                while a cost model keeps it harmless. ";
    let mut long = String::new();
    while tok.encode(&long, false)?.len() < n {
        long.push_str(text);
    }
    let mut ids = tok.encode(&long, false)?;
    ids.truncate(n);
    Ok(ids)
}

/// Decode tokens/s with `b` concurrent greedy streams, prefills excluded from the timing.
fn decode_rate(
    engine: &mut Engine<CausalLm>,
    tok: &Tokenizer,
    b: usize,
    new_tokens: usize,
) -> anyhow::Result<f64> {
    for i in 0..b {
        let msgs = [ChatMessage::new(
            "user",
            &format!("Write a short story about robot number {i}."),
        )];
        let params = SamplingParams {
            max_tokens: Some(new_tokens),
            ignore_eos: true,
            ..SamplingParams::greedy()
        };
        engine.add_request(tok.encode_chat(&msgs, true)?, params)?;
    }
    // First step(s): prefills (and the first token of each stream).
    loop {
        engine.step()?;
        if engine.last_step().prefill_tokens == 0 || !engine.has_work() {
            break;
        }
    }
    let t = Instant::now();
    let mut decoded = 0;
    while engine.has_work() {
        decoded += engine.step()?.iter().filter(|u| u.token.is_some()).count();
    }
    Ok(decoded as f64 / t.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let model = arg("--model")
        .map(Into::into)
        .unwrap_or_else(safeloop_shared::assets::default_model_path);
    let new_tokens: usize = arg("--new-tokens").map_or(Ok(64), |s| s.parse())?;
    let prompt_tokens: usize = arg("--prompt-tokens").map_or(Ok(128), |s| s.parse())?;
    println!(
        "model {}; {new_tokens} new tokens per stream, greedy",
        model.display()
    );
    let ours = measure(
        "safeloop",
        &model,
        &LoadOptions::default(),
        new_tokens,
        prompt_tokens,
    )?;
    let peak = peak_rss_mib();
    println!(
        "[safeloop] batch-16 / batch-1 aggregate: {:.2}x",
        ours.decode[2] / ours.decode[0]
    );
    println!("[safeloop] peak memory (RSS): {peak:.0} MiB");
    if flag("--no-baseline") {
        return Ok(());
    }
    let base_opts = LoadOptions {
        host_kernels: false,
        ..Default::default()
    };
    let base = measure("candle ops", &model, &base_opts, new_tokens, prompt_tokens)?;
    println!("\nsafeloop / candle-ops baseline (same process, same engine):");
    println!("  prefill       {:5.2}x", ours.prefill / base.prefill);
    for (i, b) in STREAMS.iter().enumerate() {
        println!(
            "  decode {b:>2}     {:5.2}x",
            ours.decode[i] / base.decode[i]
        );
    }
    Ok(())
}
