//! Engine benchmark on the default policy (SmolLM2-135M-Instruct Q4_1):
//! prefill tokens/s, decode tokens/s at 1, 4 and 16 concurrent sequences, the batch-16 /
//! batch-1 aggregate ratio, and peak memory.
//!
//! `cargo bench -p safeloop-shared --bench engine [-- --model PATH --new-tokens N --prompt-tokens N]`

use safeloop_shared::engine::{Engine, EngineConfig, SamplingParams};
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions};
use std::sync::Arc;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
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

fn main() -> anyhow::Result<()> {
    let model = arg("--model")
        .map(Into::into)
        .unwrap_or_else(safeloop_shared::assets::default_model_path);
    let new_tokens: usize = arg("--new-tokens").map_or(64, |s| s.parse().unwrap());
    let prompt_tokens: usize = arg("--prompt-tokens").map_or(128, |s| s.parse().unwrap());
    let t0 = Instant::now();
    let m = load_causal_lm(&model, &LoadOptions::default())?;
    println!(
        "model {} loaded in {:.2}s",
        model.display(),
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
        },
    );
    let text = "Safe reinforcement learning from human feedback trains a policy to be helpful \
                while a cost model keeps it harmless. ";
    let mut long = String::new();
    while tok.encode(&long, false)?.len() < prompt_tokens {
        long.push_str(text);
    }
    let mut prompt = tok.encode(&long, false)?;
    prompt.truncate(prompt_tokens);

    // Prefill: one prompt, one output token, timed after a warm-up.
    let one = SamplingParams {
        max_tokens: Some(1),
        ..SamplingParams::greedy()
    };
    engine.generate(vec![(prompt.clone(), one.clone())])?;
    let runs = 3;
    let t = Instant::now();
    for _ in 0..runs {
        engine.generate(vec![(prompt.clone(), one.clone())])?;
    }
    let prefill = (runs * prompt.len()) as f64 / t.elapsed().as_secs_f64();
    println!(
        "prefill: {prefill:.1} tokens/s ({} prompt tokens)",
        prompt.len()
    );

    // Decode at several concurrencies: short distinct chat prompts, greedy, ignore eos.
    let mut results = vec![];
    for &b in &[1usize, 4, 16] {
        let reqs: Vec<_> = (0..b)
            .map(|i| {
                let msgs = [ChatMessage::new(
                    "user",
                    &format!("Write a short story about robot number {i}."),
                )];
                let ids = tok.encode_chat(&msgs, true).unwrap();
                (
                    ids,
                    SamplingParams {
                        max_tokens: Some(new_tokens),
                        ignore_eos: true,
                        ..SamplingParams::greedy()
                    },
                )
            })
            .collect();
        for (ids, p) in &reqs {
            engine.add_request(ids.clone(), p.clone())?;
        }
        // Run prefills to completion first so the timing covers decode steps only.
        let mut generated = 0usize;
        while engine.last_step().prefill_tokens > 0 || generated == 0 {
            generated += engine.step()?.iter().filter(|u| u.token.is_some()).count();
        }
        let t = Instant::now();
        let mut steps = 0;
        let mut decoded = 0;
        while engine.has_work() {
            decoded += engine.step()?.iter().filter(|u| u.token.is_some()).count();
            steps += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        let agg = decoded as f64 / secs;
        println!(
            "decode batch {b:>2}: {agg:7.1} tokens/s aggregate, {:6.1} tokens/s per stream, {:.1} ms/step",
            agg / b as f64,
            1e3 * secs / steps as f64
        );
        results.push(agg);
    }
    println!(
        "batch-16 / batch-1 aggregate: {:.2}x",
        results[2] / results[0]
    );
    println!("peak memory (RSS): {:.0} MiB", peak_rss_mib());
    Ok(())
}
