//! safeloop-serve over HTTP: the real binary on the tiny golden model, loopback only.

use reqwest::blocking::Client;
use safeloop_tests::{golden_dir, golden_json, metric, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const MODEL: &str = "llama-gqa";

fn start(extra: &[&str]) -> Server {
    let dir = golden_dir(MODEL);
    let mut args = vec!["--model", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn post(s: &Server, path: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = Client::new().post(s.url(path)).json(&body).send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v: Value = r.json().unwrap_or(Value::Null);
    (status, v, headers)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Reads an SSE response into its `data:` payloads.
fn sse_events(resp: reqwest::blocking::Response) -> Vec<String> {
    BufReader::new(resp)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn chat_completion_fields_usage_and_fingerprint() {
    let s = start(&[]);
    let g = golden_json(MODEL);
    let messages = g["chat"]["messages"].clone();
    let (st, v, h) = post(
        &s,
        "/v1/chat/completions",
        json!({
            "model": MODEL, "messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": true,
            "logprobs": true, "top_logprobs": 2, "user": "test-user"
        }),
    );
    assert_eq!(st, 200, "{v}");
    assert!(h.get("x-request-id").is_some());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(c["logprobs"]["content"].as_array().unwrap().len(), 5);
    assert_eq!(
        c["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Usage: the golden chat prompt has 37 tokens.
    assert_eq!(
        v["usage"]["prompt_tokens"],
        g["chat"]["input_ids"].as_array().unwrap().len()
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 5
    );
    // Content parts are accepted like a plain string.
    let (st, v2, _) = post(
        &s,
        "/v1/chat/completions",
        json!({
            "model": MODEL, "max_completion_tokens": 5, "temperature": 0, "ignore_eos": true,
            "messages": [{"role": "system", "content": [{"type": "text", "text": "You are helpful."}]},
                         {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]
        }),
    );
    assert_eq!(st, 200, "{v2}");
    assert_eq!(
        v2["choices"][0]["message"]["content"],
        v["choices"][0]["message"]["content"]
    );
}

#[test]
fn echo_logprobs_equal_the_golden_per_token_logprobs() {
    let s = start(&[]);
    let g = golden_json(MODEL);
    for i in 0..3 {
        let prompt = g["input_ids"][i].clone();
        let (st, v, _) = post(
            &s,
            "/v1/completions",
            json!({
                "model": MODEL, "prompt": prompt, "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0
            }),
        );
        assert_eq!(st, 200, "{v}");
        let lp = &v["choices"][0]["logprobs"]["token_logprobs"];
        let want = g["logprobs"][i].as_array().unwrap();
        assert!(lp[0].is_null(), "the first prompt token has no log-prob");
        for (t, w) in want.iter().enumerate() {
            let got = lp[t + 1].as_f64().unwrap();
            assert!(
                (got - w.as_f64().unwrap()).abs() < 1e-4,
                "prompt {i} token {}: {got} vs {w}",
                t + 1
            );
        }
        let n = g["input_ids"][i].as_array().unwrap().len();
        assert_eq!(
            v["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .unwrap()
                .len(),
            n + 1
        );
        assert_eq!(v["usage"]["prompt_tokens"], n);
    }
}

#[test]
fn completions_greedy_stop_seed_and_n() {
    let s = start(&[]);
    let g = golden_json(MODEL);
    let prompt = g["prompts"][0].as_str().unwrap();
    let new_text = g["greedy"]["results"][0]["new_text"].as_str().unwrap();
    // Greedy continuation of a string prompt equals transformers'.
    let (st, v, _) = post(
        &s,
        "/v1/completions",
        json!({
            "model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true
        }),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], new_text);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    // Stop string: the text ends before it; finish_reason stop.
    let (_, v, _) = post(
        &s,
        "/v1/completions",
        json!({
            "model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true, "stop": ["tter"]
        }),
    );
    assert_eq!(
        v["choices"][0]["text"],
        &new_text[..new_text.find("tter").unwrap()]
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // stop as a single string, and stop_token_ids.
    let want_ids = ids(&g["greedy"]["results"][0]["new_ids"]);
    let (_, v, _) = post(
        &s,
        "/v1/completions",
        json!({
            "model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true,
            "stop": "zzzz", "stop_token_ids": [want_ids[2]]
        }),
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // Seeds: same seed, same text; n=2 gives two indexed choices.
    let sample = |seed: u64| {
        let (st, v, _) = post(
            &s,
            "/v1/completions",
            json!({
                "model": MODEL, "prompt": prompt, "max_tokens": 16, "temperature": 1.0, "top_p": 0.9,
                "seed": seed, "ignore_eos": true, "n": 2
            }),
        );
        assert_eq!(st, 200, "{v}");
        let c = v["choices"].as_array().unwrap().clone();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["index"], 0);
        assert_eq!(c[1]["index"], 1);
        assert_eq!(v["usage"]["completion_tokens"], 32);
        (
            c[0]["text"].as_str().unwrap().to_string(),
            c[1]["text"].as_str().unwrap().to_string(),
        )
    };
    let a = sample(7);
    assert_eq!(a, sample(7));
    assert_ne!(a.0, a.1, "the n choices sample independently");
    assert_ne!(a, sample(8));
    // A list of prompts: one choice per prompt; token-id prompts work too.
    let (st, v, _) = post(
        &s,
        "/v1/completions",
        json!({
            "model": MODEL, "prompt": [prompt, g["prompts"][1]], "max_tokens": 2, "temperature": 0
        }),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let (st, v, _) = post(
        &s,
        "/v1/completions",
        json!({
            "model": MODEL, "prompt": [g["input_ids"][0], g["input_ids"][1]], "max_tokens": 12,
            "temperature": 0, "ignore_eos": true
        }),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], new_text);
}

#[test]
fn streaming_chunks_usage_and_done() {
    let s = start(&[]);
    let g = golden_json(MODEL);
    let prompt = g["prompts"][0].as_str().unwrap();
    let new_text = g["greedy"]["results"][0]["new_text"].as_str().unwrap();
    let r = Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                      "temperature": 0, "ignore_eos": true, "stream": true, "n": 2,
                      "stream_options": {"include_usage": true}, "logprobs": true}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(r);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(c["model"], MODEL);
    }
    let first: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"] == "assistant")
        .collect();
    assert_eq!(first.len(), 2, "a role chunk per choice");
    for idx in 0..2 {
        let finals: Vec<&Value> = chunks
            .iter()
            .filter(|c| {
                c["choices"][0]["index"] == idx && !c["choices"][0]["finish_reason"].is_null()
            })
            .collect();
        assert_eq!(finals.len(), 1);
        assert_eq!(finals[0]["choices"][0]["finish_reason"], "length");
        let lps: usize = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == idx)
            .filter_map(|c| {
                c["choices"][0]["logprobs"]["content"]
                    .as_array()
                    .map(Vec::len)
            })
            .sum();
        assert_eq!(lps, 6, "every token's log-prob is streamed");
    }
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 12);

    // Completions stream: the concatenated text equals the greedy text.
    let r = Client::new()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                      "ignore_eos": true, "stream": true}),
        )
        .send()
        .unwrap();
    let events = sse_events(r);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, new_text);
}

#[test]
fn models_health_metrics_openapi_and_request_ids() {
    let s = start(&["--served-model-name", "tiny"]);
    let c = Client::new();
    let v: Value = c.get(s.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(
        c.get(s.url("/v1/models/tiny"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let r = c.get(s.url("/v1/models/other")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "model_not_found"
    );
    let health: Value = c.get(s.url("/health")).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(
        c.get(s.url("/v1/chat/completions"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        405
    );
    let r = c
        .get(s.url("/nope"))
        .header("x-request-id", "abc-123")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["type"],
        "invalid_request_error"
    );
    // One request so the latency histograms have samples.
    let (st, _, _) = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "hello", "max_tokens": 3}),
    );
    assert_eq!(st, 200);
    let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    for name in [
        "safeloop_requests_total",
        "safeloop_time_to_first_token_seconds_count",
        "safeloop_inter_token_latency_seconds_count",
        "safeloop_e2e_request_latency_seconds_count",
        "safeloop_queue_time_seconds_count",
        "safeloop_prompt_tokens_total",
        "safeloop_generation_tokens_total",
        "safeloop_sequences_running",
        "safeloop_sequences_waiting",
        "safeloop_batch_size_count",
        "safeloop_kv_cache_tokens",
        "safeloop_model_info",
    ] {
        assert!(metric(&m, name).is_some(), "{name} missing from /metrics");
    }
    assert!(metric(&m, "safeloop_generation_tokens_total").unwrap() >= 3.0);
    assert!(
        m.contains("route=\"/v1/completions\",status=\"200\""),
        "{m}"
    );
    let api: Value = c
        .get(s.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{id}",
        "/health",
        "/metrics",
    ] {
        assert!(
            api["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(api["components"]["schemas"]
        .get("ChatCompletionRequest")
        .is_some());
}

#[test]
fn every_error_code_is_an_openai_error_object() {
    let s = start(&["--api-key", "sekret", "--max-body-bytes", "4096"]);
    let c = Client::new();
    let send = |body: Value, key: Option<&str>| {
        let mut r = c.post(s.url("/v1/chat/completions")).json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    let ok =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (st, v) = send(ok.clone(), None);
    assert_eq!(st, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(send(ok.clone(), Some("wrong")).0, 401);
    assert_eq!(send(ok.clone(), Some("sekret")).0, 200);
    assert_eq!(
        c.get(s.url("/health")).send().unwrap().status().as_u16(),
        200
    );
    let key = Some("sekret");
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (body, param) in [
        (
            json!({"model": MODEL, "messages": hi, "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": MODEL, "messages": hi, "temperature": 7}),
            "temperature",
        ),
        (json!({"model": MODEL, "messages": hi, "top_p": 0}), "top_p"),
        (json!({"model": MODEL, "messages": hi, "n": 0}), "n"),
        (
            json!({"model": MODEL, "messages": hi, "top_logprobs": 3}),
            "top_logprobs",
        ),
        (
            json!({"model": MODEL, "messages": hi, "logprobs": true, "top_logprobs": 30}),
            "top_logprobs",
        ),
        (json!({"model": MODEL, "messages": []}), "messages"),
        (
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0].type",
        ),
        (json!({"model": MODEL}), ""),
        (
            json!({"model": MODEL, "messages": hi, "max_tokens": 100000}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "messages": hi, "stop": [""]}),
            "stop",
        ),
        (
            json!({"model": MODEL, "messages": hi, "tools": [{"type": "function"}]}),
            "tools",
        ),
        (
            json!({"model": MODEL, "messages": hi, "presence_penalty": 3}),
            "presence_penalty",
        ),
    ] {
        let (st, v) = send(body.clone(), key);
        assert_eq!(st, 400, "{body} → {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], param, "{body} → {v}");
        }
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // A prompt longer than the context (256 positions).
    let long = "word ".repeat(400);
    let (st, v) = send(
        json!({"model": MODEL, "messages": [{"role": "user", "content": long}]}),
        key,
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // Without max_tokens, min_tokens must fit in what the prompt leaves of the context.
    let (st, v) = send(
        json!({"model": MODEL, "messages": hi, "min_tokens": 250}),
        key,
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["param"], "min_tokens", "{v}");
    // Broken JSON.
    let r = c
        .post(s.url("/v1/completions"))
        .bearer_auth("sekret")
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    // suffix is refused on completions.
    let r = c
        .post(s.url("/v1/completions"))
        .bearer_auth("sekret")
        .json(&json!({"model": MODEL, "prompt": "a", "suffix": "b"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["param"], "suffix");
    // Out-of-vocabulary token ids.
    let r = c
        .post(s.url("/v1/completions"))
        .bearer_auth("sekret")
        .json(&json!({"model": MODEL, "prompt": [5, 99999]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // 404 unknown model.
    let (st, v) = send(json!({"model": "gpt-9", "messages": hi}), key);
    assert_eq!(st, 404);
    assert_eq!(v["error"]["param"], "model");
    // 413 body over the limit.
    let big = "x".repeat(10_000);
    let (st, v) = send(
        json!({"model": MODEL, "messages": [{"role": "user", "content": big}]}),
        key,
    );
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["code"], "request_too_large");
    // Still serving after all of that, and nothing panicked.
    assert_eq!(send(ok, key).0, 200);
    assert!(
        !s.stderr().iter().any(|l| l.contains("panicked")),
        "{:?}",
        s.stderr()
    );
}

fn long_stream(s: &Server) -> reqwest::blocking::Response {
    Client::new()
        .post(s.url("/v1/completions"))
        .json(
            &json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 240,
                      "ignore_eos": true, "stream": true}),
        )
        .send()
        .unwrap()
}

#[test]
fn queue_full_is_429_and_a_disconnect_frees_the_slot() {
    let s = start(&["--max-running", "1", "--max-queued", "0"]);
    let mut first = BufReader::new(long_stream(&s));
    let mut line = String::new();
    first.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: "), "{line}");
    // The only slot is busy and nothing may queue: 429 with Retry-After.
    let r = Client::new()
        .post(s.url("/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "queue_full");
    // The client goes away: its sequence leaves the batch at the next engine step.
    drop(first);
    let t = Instant::now();
    loop {
        let m = Client::new()
            .get(s.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        if metric(&m, "safeloop_sequences_running") == Some(0.0)
            && metric(&m, "safeloop_client_disconnects_total").unwrap_or(0.0) >= 1.0
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "slot not freed: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, _, _) = post(
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(st, 200);
}

#[test]
fn loading_is_503_and_shutdown_finishes_in_flight_requests() {
    let dir = golden_dir(MODEL);
    // A slow load: /health and /v1 answer 503 until the model is ready.
    let slow = Server::start_with_env_no_wait(
        &["--model", dir.to_str().unwrap()],
        &[("SAFELOOP_TEST_LOAD_DELAY_MS", "1500")],
    );
    let r = Client::new().get(slow.url("/health")).send().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.json::<Value>().unwrap()["status"], "loading");
    let r = Client::new()
        .post(slow.url("/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "a"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    slow.wait_ready(Duration::from_secs(60));

    // Graceful shutdown: an in-flight stream still completes with [DONE], exit status 0.
    let mut s = slow;
    let stream = long_stream(&s);
    std::thread::sleep(Duration::from_millis(100));
    s.terminate();
    let events = sse_events(stream);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn config_file_env_and_flags_in_that_order_of_precedence() {
    let dir = golden_dir(MODEL);
    let tmp = std::env::temp_dir().join(format!("safeloop-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("serve.toml");
    std::fs::write(
        &file,
        format!(
            "model = {:?}\nserved_model_name = \"from-file\"\nmax_n = 1\n",
            dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let model_id = |s: &Server| -> String {
        let v: Value = Client::new()
            .get(s.url("/v1/models"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["data"][0]["id"].as_str().unwrap().to_string()
    };
    let s = Server::start(&["--config", f]);
    assert_eq!(model_id(&s), "from-file");
    // The file's max_n applies.
    let (st, v, _) = post(
        &s,
        "/v1/completions",
        json!({"model": "from-file", "prompt": "a", "n": 2}),
    );
    assert_eq!(st, 400, "{v}");
    drop(s);
    let s = Server::start_with_env(
        &["--config", f],
        &[("SAFELOOP_SERVED_MODEL_NAME", "from-env")],
    );
    assert_eq!(model_id(&s), "from-env");
    drop(s);
    let s = Server::start_with_env(
        &["--config", f, "--served-model-name", "from-flag"],
        &[("SAFELOOP_SERVED_MODEL_NAME", "from-env")],
    );
    assert_eq!(model_id(&s), "from-flag");
    drop(s);
    // An unknown key is a startup error naming it.
    std::fs::write(&file, "max_runing = 3\n").unwrap();
    let out = std::process::Command::new(safeloop_tests::bin("safeloop-serve"))
        .args(["--config", f])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_runing"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}
