//! Slow and hostile clients, and the security surface: slow headers and bodies are cut off,
//! connections are capped, oversize / deeply nested / invalid UTF-8 / absurd requests get 4xx
//! error objects; keys are checked (and never logged or shown), the admin API takes only its
//! own key, and the trajectory log is private and can drop message text (`--log-redact`).

use reqwest::blocking::Client;
use safeloop_shared::trajlog::LogReader;
use safeloop_tests::{fresh_tmp, golden_dir, path_str, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MODEL: &str = "llama-gqa";

fn start(extra: &[&str]) -> Server {
    let dir = golden_dir(MODEL);
    let mut args = vec!["--model", path_str(&dir)];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn connect(s: &Server) -> TcpStream {
    let t = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    t
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
fn read_to_close(mut t: TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

fn post_raw(s: &Server, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = Client::new()
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn assert_error(status: u16, v: &Value, want: u16, param: Option<&str>) {
    assert_eq!(status, want, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    if let Some(p) = param {
        assert_eq!(v["error"]["param"], p, "{v}");
    }
}

#[test]
fn slow_headers_and_slow_bodies_are_cut_off() {
    let s = start(&["--header-timeout", "1", "--body-timeout", "1"]);
    // Headers that never finish: the connection is closed after the header deadline.
    let mut t = connect(&s);
    t.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        .unwrap();
    let (_, took) = read_to_close(t);
    assert!(
        took < Duration::from_secs(5),
        "slow headers held the connection for {took:?}"
    );
    // A body that stops halfway: 408 with an error object.
    let mut t = connect(&s);
    t.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .unwrap();
    let (answer, took) = read_to_close(t);
    assert!(
        took < Duration::from_secs(5),
        "a slow body held the connection for {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    // The server is fine.
    let r = Client::new().get(s.url("/health")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn open_connections_are_capped() {
    let s = start(&["--max-connections", "3", "--header-timeout", "30"]);
    // Three idle connections hold every slot.
    let idle: Vec<TcpStream> = (0..3).map(|_| connect(&s)).collect();
    let c = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // Once the server has accepted all three (a busy machine may take a moment), the next
    // connection is refused.
    let t = Instant::now();
    let r = loop {
        let r = c.get(s.url("/health")).send().unwrap();
        if r.status().as_u16() != 200 || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "too_many_connections", "{v}");
    // Slots free up when clients leave.
    drop(idle);
    let t = Instant::now();
    loop {
        if let Ok(r) = c.get(s.url("/metrics")).send() {
            if r.status().as_u16() == 200 {
                let m = r.text().unwrap();
                assert!(m.contains("safeloop_connections_refused_total 1"), "{m}");
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "slots never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_bodies_get_4xx_error_objects() {
    let s = start(&["--max-body-bytes", "200000", "--max-n", "8"]);
    // Over the body limit.
    let big = format!(
        r#"{{"model":"{MODEL}","prompt":"{}"}}"#,
        "x".repeat(300_000)
    );
    let (st, v) = post_raw(&s, "/v1/completions", big.into_bytes());
    assert_error(st, &v, 413, None);
    // Nested far deeper than any request.
    let deep = format!(
        r#"{{"model":"{MODEL}","messages":{}{}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let (st, v) = post_raw(&s, "/v1/chat/completions", deep.into_bytes());
    assert_error(st, &v, 400, None);
    // Invalid UTF-8 inside a string.
    let mut bad = format!(r#"{{"model":"{MODEL}","prompt":"ab"#).into_bytes();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"\"}");
    let (st, v) = post_raw(&s, "/v1/completions", bad);
    assert_error(st, &v, 400, None);
    let ask = |body: Value| post_raw(&s, "/v1/completions", serde_json::to_vec(&body).unwrap());
    // Huge n × max_tokens.
    let (st, v) =
        ask(json!({"model": MODEL, "prompt": "a", "n": 100000, "max_tokens": 1_000_000_000u64}));
    assert_error(st, &v, 400, Some("n"));
    let (st, v) =
        ask(json!({"model": MODEL, "prompt": "a", "n": 8, "max_tokens": 1_000_000_000u64}));
    assert_error(st, &v, 400, Some("max_tokens"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (st, v) = ask(json!({"model": MODEL, "prompt": "a", "max_tokens": 1e300}));
    assert_error(st, &v, 400, Some("max_tokens"));
    // Thousands of stop strings.
    let stops: Vec<String> = (0..5000).map(|i| format!("s{i}")).collect();
    let (st, v) = ask(json!({"model": MODEL, "prompt": "a", "stop": stops}));
    assert_error(st, &v, 400, Some("stop"));
    // Prompt token ids outside the vocabulary, negative, or beyond u32.
    for ids in [
        json!([1, 2, 4_000_000_000u64]),
        json!([1, -5]),
        json!([[1], [99_999_999_999u64]]),
    ] {
        let (st, v) = ask(json!({"model": MODEL, "prompt": ids}));
        assert_error(st, &v, 400, Some("prompt"));
    }
    let (st, v) = ask(json!({"model": MODEL, "prompt": [1, 2, 1_000_000]}));
    assert_error(st, &v, 400, Some("prompt"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vocabulary"),
        "{v}"
    );
    // Still serving.
    let (st, v) = ask(json!({"model": MODEL, "prompt": "a", "max_tokens": 2}));
    assert_eq!(st, 200, "{v}");
}

#[test]
fn keys_are_checked_never_logged_and_the_log_is_private_and_redactable() {
    let api_key = "sk-test-9d41c0ffee2b7a55";
    let admin_key = "adm-test-51e6bead7c0de";
    let tmp = fresh_tmp("hostile-keys");
    let log = tmp.join("log");
    let s = Server::start_with_env(
        &[
            "--model",
            path_str(&golden_dir(MODEL)),
            "--api-key",
            api_key,
            "--admin-key",
            admin_key,
            "--log-dir",
            path_str(&log),
            "--log-redact",
            "true",
        ],
        &[("RUST_LOG", "trace")],
    );
    let c = Client::new();
    let chat = |key: Option<&str>| {
        let mut r = c.post(s.url("/v1/chat/completions")).json(&json!({
            "model": MODEL, "messages": [{"role": "user", "content": "secret user text"}],
            "max_tokens": 3, "stop": ["private-stop"]}));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(chat(Some(api_key)), 200);
    for wrong in [
        None,
        Some("sk-test-9d41c0ffee2b7a56"),
        Some("short"),
        Some(admin_key),
    ] {
        assert_eq!(chat(wrong), 401, "{wrong:?}");
    }
    // The admin API takes only its own key.
    let admin = |key: &str| {
        c.get(s.url("/admin/v1/models"))
            .bearer_auth(key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(admin(admin_key), 200);
    assert_eq!(admin(api_key), 401);
    // Nothing public shows a key.
    for path in ["/metrics", "/health", "/openapi.json"] {
        let body = c.get(s.url(path)).send().unwrap().text().unwrap();
        assert!(
            !body.contains(api_key) && !body.contains(admin_key),
            "{path} shows a key"
        );
    }
    // The log: 0600, redacted (no token ids, no stop strings), counts and scores kept.
    s.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let records = LogReader::new(&log).read_all(true).unwrap();
    assert_eq!(records.len(), 1, "only the authorized request was served");
    let r = &records[0];
    assert!(r.prompt_ids.is_empty() && r.output_ids.is_empty() && r.sampling.stop.is_empty());
    let red = r.redacted.expect("marked redacted");
    assert!(red.prompt_tokens > 3 && red.output_tokens >= 1, "{red:?}");
    assert_eq!(r.logprobs.len(), red.output_tokens);
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(&log).unwrap() {
        let p = e.unwrap().path();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        let bytes = std::fs::read(&p).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("private-stop"));
    }
    // Trace-level logs never carry a key.
    let stderr = s.stderr().join("\n");
    assert!(stderr.lines().count() > 5, "tracing was on");
    assert!(
        !stderr.contains(api_key) && !stderr.contains(admin_key),
        "a key was logged"
    );
}
