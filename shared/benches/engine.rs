//! Engine benchmark on the default policy (SmolLM2-135M-Instruct Q4_1): prefill tokens/s,
//! decode tokens/s at 1, 4 and 16 concurrent sequences, the batch-16 / batch-1 aggregate
//! ratio and peak memory — for safeloop's CPU kernels and, in the same process as the
//! baseline, for candle's stock ops on the same engine (ratios printed at the end).
//!
//! `cargo bench -p safeloop-shared --bench engine [-- --model PATH --new-tokens N
//!  --prompt-tokens N --streams 1,4,16 --no-baseline --device cpu|cuda[:N] --dtype f32|bf16]`
//!
//! `--device cuda` (a `--features cuda` build) runs the engine on a GPU, where the model takes
//! candle's ops (no baseline: the CPU kernels do not apply); `--dtype` is the compute dtype of a
//! dense (safetensors) model. `scripts/gpu_check.sh` runs it that way.
//!
//! `-- --prefill-sweep 256,1024,4096,7900` measures only prefill, at each prompt length (one
//! chunk of up to 2,048 tokens per step, as a server with that budget would), and prints
//! tokens/s per length for both engines, how flat ours stays, and the ratios.

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
    /// Aggregate decode tokens/s at each stream count.
    decode: Vec<f64>,
}

/// `--name a,b,c` as numbers, or `default`.
fn list_arg(name: &str, default: &[usize]) -> anyhow::Result<Vec<usize>> {
    let Some(list) = arg(name) else {
        return Ok(default.to_vec());
    };
    let v = list
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{name} {list}: {e}"))?;
    anyhow::ensure!(
        !v.is_empty() && !v.contains(&0),
        "{name}: give positive numbers"
    );
    Ok(v)
}

/// `--device` and `--dtype` as load options: the CPU kernels on CPU, candle's ops on a GPU.
fn load_options() -> anyhow::Result<LoadOptions> {
    let device =
        safeloop_shared::runtime::parse_device(arg("--device").as_deref().unwrap_or("cpu"))
            .map_err(anyhow::Error::msg)?;
    let dtype = match arg("--dtype").as_deref() {
        None | Some("f32") => candle_core::DType::F32,
        Some("bf16") => candle_core::DType::BF16,
        Some("f16") => candle_core::DType::F16,
        Some(other) => anyhow::bail!("--dtype: `{other}` is not f32, bf16 or f16"),
    };
    Ok(LoadOptions {
        host_kernels: device.is_cpu(),
        device,
        dtype,
        ..Default::default()
    })
}

fn measure(
    label: &str,
    model: &Path,
    opts: &LoadOptions,
    new_tokens: usize,
    prompt_tokens: usize,
    streams: &[usize],
) -> anyhow::Result<Figures> {
    let (mut engine, tok) = load_engine(label, model, opts)?;
    let prefill = prefill_rate(&mut engine, &tok, prompt_tokens, 3)?;
    println!("[{label}] prefill: {prefill:.1} tokens/s ({prompt_tokens} prompt tokens)");
    let mut decode = vec![];
    for &b in streams {
        let rate = decode_rate(&mut engine, &tok, b, new_tokens)?;
        println!(
            "[{label}] decode {b:>2} streams: {rate:7.1} tokens/s aggregate, {:6.1} per stream",
            rate / b as f64
        );
        decode.push(rate);
    }
    Ok(Figures { prefill, decode })
}

fn load_engine(
    label: &str,
    model: &Path,
    opts: &LoadOptions,
) -> anyhow::Result<(Engine<CausalLm>, Arc<Tokenizer>)> {
    let t0 = Instant::now();
    let m = load_causal_lm(model, opts)?;
    println!(
        "[{label}] model loaded in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let tok = Arc::new(m.tokenizer);
    let engine = Engine::new(
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
    Ok((engine, tok))
}

/// Prefill tokens/s of one `n`-token prompt (after a warm-up run), over `runs` runs.
fn prefill_rate(
    engine: &mut Engine<CausalLm>,
    tok: &Tokenizer,
    n: usize,
    runs: usize,
) -> anyhow::Result<f64> {
    let prompt = long_prompt(tok, n)?;
    let one = SamplingParams {
        max_tokens: Some(1),
        ..SamplingParams::greedy()
    };
    engine.generate(vec![(prompt.clone(), one.clone())])?; // warm-up
    let t = Instant::now();
    for _ in 0..runs {
        engine.generate(vec![(prompt.clone(), one.clone())])?;
    }
    Ok((runs * prompt.len()) as f64 / t.elapsed().as_secs_f64())
}

/// Prefill tokens/s at each prompt length, both engines, and the ratios.
fn prefill_sweep(
    model: &Path,
    lengths: &[usize],
    opts: LoadOptions,
    baseline: bool,
) -> anyhow::Result<()> {
    let mut engines = vec![("safeloop", opts)];
    if baseline {
        let opts = LoadOptions {
            host_kernels: false,
            ..Default::default()
        };
        engines.push(("candle ops", opts));
    }
    let mut rates = vec![];
    for (label, opts) in &engines {
        let (mut engine, tok) = load_engine(label, model, opts)?;
        let mut r = vec![];
        for &n in lengths {
            let runs = if n >= 4096 { 1 } else { 3 };
            let rate = prefill_rate(&mut engine, &tok, n, runs)?;
            println!("[{label}] prefill {n:>5} tokens: {rate:7.1} tokens/s");
            r.push(rate);
        }
        rates.push(r);
    }
    println!(
        "
prompt tokens   safeloop tok/s   vs shortest   {}",
        if baseline {
            "safeloop / candle ops"
        } else {
            ""
        }
    );
    for (i, &n) in lengths.iter().enumerate() {
        let ours = rates[0][i];
        let base = rates
            .get(1)
            .map_or(String::new(), |b| format!("{:5.2}x", ours / b[i]));
        println!(
            "{n:>13} {ours:>16.1} {:>12.2}x   {base}",
            ours / rates[0][0]
        );
    }
    println!("[safeloop] peak memory (RSS): {:.0} MiB", peak_rss_mib());
    Ok(())
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
    let opts = load_options()?;
    // On a GPU there is no CPU-kernel baseline to compare with.
    let baseline = !flag("--no-baseline") && opts.device.is_cpu();
    if arg("--prefill-sweep").is_some() {
        let lengths = list_arg("--prefill-sweep", &[])?;
        return prefill_sweep(&model, &lengths, opts, baseline);
    }
    let streams = list_arg("--streams", &[1, 4, 16])?;
    println!(
        "model {}; {new_tokens} new tokens per stream, greedy; device {:?}",
        model.display(),
        opts.device
    );
    let ours = measure(
        "safeloop",
        &model,
        &opts,
        new_tokens,
        prompt_tokens,
        &streams,
    )?;
    let peak = peak_rss_mib();
    println!(
        "[safeloop] batch-{} / batch-{} aggregate: {:.2}x",
        streams[streams.len() - 1],
        streams[0],
        ours.decode[streams.len() - 1] / ours.decode[0]
    );
    println!("[safeloop] peak memory (RSS): {peak:.0} MiB");
    if !baseline {
        return Ok(());
    }
    let base_opts = LoadOptions {
        host_kernels: false,
        ..Default::default()
    };
    let base = measure(
        "candle ops",
        &model,
        &base_opts,
        new_tokens,
        prompt_tokens,
        &streams,
    )?;
    println!("\nsafeloop / candle-ops baseline (same process, same engine):");
    println!("  prefill       {:5.2}x", ours.prefill / base.prefill);
    for (i, b) in streams.iter().enumerate() {
        println!(
            "  decode {b:>2}     {:5.2}x",
            ours.decode[i] / base.decode[i]
        );
    }
    Ok(())
}
