//! Load generator for any OpenAI-compatible server: N concurrent streaming chat clients run a
//! fixed number of requests; prints requests/s, output tokens/s, TTFT and inter-token latency
//! percentiles. Loopback or your own hosts only.
//!
//! `safeloop-loadgen --url http://127.0.0.1:8000 --concurrency 4 --requests 32 --max-tokens 64`
//!
//! `--prompt-tokens N` sends distinct synthetic prompts of about N tokens (no prefix shared between requests, nor
//! with an earlier run) and reports prefill tokens/s; `--turns K` makes each request a K-turn conversation that
//! grows (the answer and a new question appended each turn), the workload where a prefix cache pays.
//!
//! With `--prompts FILE…` the requests carry real prompts instead (JSONL rows with `prompt`, `instruction` +
//! `input`, or chat `messages`), e.g. to put red-team traffic through a server whose trajectory log feeds a round.

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "safeloop-loadgen",
    about = "Concurrent streaming load against an OpenAI-compatible server"
)]
struct Args {
    /// Server base URL
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Model name to send [default: the first from /v1/models]
    #[arg(long)]
    model: Option<String>,
    /// Concurrent clients
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Total requests, spread over the clients [default: 16, or one per prompt with --prompts]
    #[arg(long, short = 'n')]
    requests: Option<usize>,
    /// Tokens to generate per request (end-of-sequence ignored so every request is equal, unless --stop-at-eos)
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Prompt files (JSONL: `prompt`, `instruction` + `input`, or chat `messages`); request i sends prompt i
    #[arg(long, num_args = 1..)]
    prompts: Vec<std::path::PathBuf>,
    /// Let answers end at end-of-sequence (real traffic) instead of always generating --max-tokens
    #[arg(long)]
    stop_at_eos: bool,
    /// Sampling temperature (0 = greedy)
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, env = "SAFELOOP_API_KEY")]
    api_key: Option<String>,
    /// Give up on a request after this many seconds
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print one JSON line instead of the table
    #[arg(long)]
    json: bool,
    /// Send non-streamed requests (latency = the full response)
    #[arg(long)]
    no_stream: bool,
    /// Distinct synthetic prompts of about this many tokens (prefill benchmark)
    #[arg(long, conflicts_with = "prompts")]
    prompt_tokens: Option<usize>,
    /// Turns per conversation: each request is a conversation that grows by the answer and a new question a turn
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    turns: u32,
}

/// Common words that are one token each in byte-level BPE vocabularies (with their leading space).
const WORDS: [&str; 48] = [
    "the",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
];

/// About `tokens` tokens of text, different from the first token on for every (nonce, i).
fn synthetic_prompt(nonce: u64, i: usize, tokens: usize) -> String {
    let mut x = nonce ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut text = format!("Request {nonce:x}-{i}: summarise these notes.");
    for _ in 0..tokens.saturating_sub(12) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push(' ');
        text.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
    }
    text
}

#[derive(Default)]
struct Sample {
    e2e: f64,
    prompt_tokens: u64,
    /// The answer's text (multi-turn conversations carry it into the next turn).
    text: String,
    ttft: Option<f64>,
    itls: Vec<f64>,
    tokens: u64,
    ok: bool,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// The user messages of a prompt file's rows.
fn read_prompts(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let messages = if let Some(p) = v["prompt"].as_str() {
            serde_json::json!([{"role": "user", "content": p}])
        } else if let Some(i) = v["instruction"].as_str() {
            let input = v["input"].as_str().unwrap_or("");
            let content = if input.is_empty() {
                i.to_string()
            } else {
                format!("{i}\n\n{input}")
            };
            serde_json::json!([{"role": "user", "content": content}])
        } else if v["messages"].is_array() {
            v["messages"].clone()
        } else {
            anyhow::bail!(
                "{}:{}: no `prompt`, `instruction` or `messages`",
                path.display(),
                n + 1
            );
        };
        out.push(messages);
    }
    Ok(out)
}

/// The first turn's messages of request `i`.
fn first_messages(
    a: &Args,
    prompts: &[serde_json::Value],
    nonce: u64,
    i: usize,
) -> serde_json::Value {
    if let Some(n) = a.prompt_tokens {
        serde_json::json!([{"role": "user", "content": synthetic_prompt(nonce, i, n)}])
    } else if prompts.is_empty() {
        serde_json::json!([{"role": "user", "content": format!("Write a short story about robot number {i}.")}])
    } else {
        prompts[i % prompts.len()].clone()
    }
}

async fn one(
    client: &reqwest::Client,
    a: &Args,
    model: &str,
    messages: &serde_json::Value,
) -> Result<Sample> {
    let mut body = serde_json::json!({
        "model": model,
        "messages": messages,
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "ignore_eos": !a.stop_at_eos,
        "stream": !a.no_stream,
    });
    if !a.no_stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut req = client
        .post(format!("{}/v1/chat/completions", a.url))
        .json(&body);
    if let Some(k) = &a.api_key {
        req = req.bearer_auth(k);
    }
    let start = Instant::now();
    let resp = req.send().await?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "HTTP {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut s = Sample::default();
    if a.no_stream {
        let v: serde_json::Value = resp.json().await?;
        s.e2e = start.elapsed().as_secs_f64();
        s.ttft = Some(s.e2e);
        s.tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        s.prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        s.text = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        s.ok = true;
        return Ok(s);
    }
    let mut last: Option<Instant> = None;
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(pos) = buf.find("\n\n") {
            let event: String = buf.drain(..pos + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    s.ok = true;
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(data).context("bad SSE chunk")?;
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    s.tokens = n;
                }
                if let Some(n) = v["usage"]["prompt_tokens"].as_u64() {
                    s.prompt_tokens = n;
                }
                let content = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
                s.text.push_str(content);
                if !content.is_empty() {
                    let now = Instant::now();
                    match last {
                        None => s.ttft = Some((now - start).as_secs_f64()),
                        Some(prev) => s.itls.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                }
            }
        }
    }
    s.e2e = start.elapsed().as_secs_f64();
    Ok(s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Arc::new(Args::parse());
    let mut prompts = Vec::new();
    for f in &a.prompts {
        prompts.extend(read_prompts(f)?);
    }
    let prompts = Arc::new(prompts);
    let requests = a.requests.unwrap_or(if prompts.is_empty() {
        16
    } else {
        prompts.len()
    });
    // A fresh connection per request: some servers (llama-server) close a kept-alive connection after a
    // streamed response without saying so, and a pooled connection would fail the next request.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(a.timeout))
        .build()?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => {
            let mut req = client.get(format!("{}/v1/models", a.url));
            if let Some(k) = &a.api_key {
                req = req.bearer_auth(k);
            }
            let v: serde_json::Value = req.send().await.context("GET /v1/models")?.json().await?;
            v["data"][0]["id"]
                .as_str()
                .context("no model listed")?
                .to_string()
        }
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    // Synthetic prompts differ from any earlier run's (a server's prefix cache must not help).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (client, a, model, next, prompts) = (
            client.clone(),
            a.clone(),
            model.clone(),
            next.clone(),
            prompts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let mut messages = first_messages(&a, &prompts, nonce, i);
                for turn in 0..a.turns {
                    let r = one(&client, &a, &model, &messages).await;
                    let next_turn = match &r {
                        Ok(s) if s.ok && turn + 1 < a.turns => Some(s.text.clone()),
                        _ => None,
                    };
                    out.push(r);
                    let Some(answer) = next_turn else { break };
                    let list = messages.as_array_mut().expect("messages are a list");
                    list.push(serde_json::json!({"role": "assistant", "content": answer}));
                    list.push(serde_json::json!({"role": "user", "content": format!(
                        "Thank you. Now say more about the {} part, in other words.", WORDS[(turn as usize * 7 + i) % WORDS.len()])}));
                }
            }
            out
        }));
    }
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        for r in t.await? {
            match r {
                Ok(s) if s.ok => samples.push(s),
                Ok(_) => errors.push("stream ended without [DONE]".to_string()),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens: u64 = samples.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<f64> = samples.iter().filter_map(|s| s.ttft).collect();
    let mut itl: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.itls.iter().copied())
        .collect();
    let mut e2e: Vec<f64> = samples.iter().map(|s| s.e2e).collect();
    let prompt_tokens: u64 = samples.iter().map(|s| s.prompt_tokens).sum();
    // Prefill speed: prompt tokens over the time to the first token (meaningful at 1 client).
    let ttft_sum: f64 = samples.iter().filter_map(|s| s.ttft).sum();
    let r = serde_json::json!({
        "concurrency": a.concurrency,
        "requests": samples.len(),
        "errors": errors.len(),
        "seconds": secs,
        "requests_per_s": samples.len() as f64 / secs,
        "output_tokens_per_s": tokens as f64 / secs,
        "ttft_p50_ms": 1e3 * percentile(&mut ttft, 50.0),
        "ttft_p99_ms": 1e3 * percentile(&mut ttft, 99.0),
        "itl_p50_ms": 1e3 * percentile(&mut itl, 50.0),
        "itl_p99_ms": 1e3 * percentile(&mut itl, 99.0),
        "e2e_p50_ms": 1e3 * percentile(&mut e2e, 50.0),
        "e2e_p99_ms": 1e3 * percentile(&mut e2e, 99.0),
        "turns": a.turns,
        "prompt_tokens_mean": prompt_tokens as f64 / samples.len().max(1) as f64,
        "prefill_tokens_per_s": if ttft_sum > 0.0 { prompt_tokens as f64 / ttft_sum } else { f64::NAN },
    });
    if a.json {
        println!("{r}");
    } else {
        println!(
            "{} clients, {} requests ({} errors) in {:.1}s: {:.2} req/s, {:.1} output tokens/s, TTFT p50 {:.0} ms p99 {:.0} ms, ITL p50 {:.1} ms p99 {:.1} ms",
            a.concurrency, samples.len(), errors.len(), secs, r["requests_per_s"].as_f64().unwrap_or(0.0),
            r["output_tokens_per_s"].as_f64().unwrap_or(0.0), r["ttft_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["ttft_p99_ms"].as_f64().unwrap_or(f64::NAN), r["itl_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["itl_p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
