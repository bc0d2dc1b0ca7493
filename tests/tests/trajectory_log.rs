//! The server's trajectory log end to end: one record per finished choice, read back with
//! `safeloop-serve logs`, intact across SIGKILL.

use reqwest::blocking::Client;
use safeloop_tests::{bin, golden_dir, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const MODEL: &str = "llama-gqa";

fn logs(dir: &Path, cursor: Option<&Path>) -> Vec<Value> {
    let mut cmd = Command::new(bin("safeloop-serve"));
    cmd.arg("logs").arg("--log-dir").arg(dir);
    if let Some(c) = cursor {
        cmd.arg("--cursor").arg(c);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn start(log_dir: &Path) -> Server {
    let model = golden_dir(MODEL);
    Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--log-dir",
        log_dir.to_str().unwrap(),
        "--log-fsync",
        "always",
        "--log-segment-bytes",
        "4096",
    ])
}

#[test]
fn every_finished_choice_is_logged_and_survives_sigkill() {
    let tmp = std::env::temp_dir().join(format!("safeloop-log-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let log_dir = tmp.join("log");
    let cursor = tmp.join("cursor.json");
    let c = Client::new();
    let mut s = start(&log_dir);
    let r = c
        .post(s.url("/v1/chat/completions"))
        .header("x-request-id", "chat-1")
        .json(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2,
                      "seed": 5, "temperature": 0.8, "max_tokens": 6, "ignore_eos": true}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let chat: Value = r.json().unwrap();
    let r = c
        .post(s.url("/v1/completions"))
        .header("x-request-id", "stream-1")
        .json(
            &json!({"model": MODEL, "prompt": "Hello world", "max_tokens": 5, "temperature": 0,
                      "ignore_eos": true, "stream": true}),
        )
        .send()
        .unwrap();
    assert!(r.text().unwrap().trim_end().ends_with("data: [DONE]"));

    let recs = logs(&log_dir, Some(&cursor));
    assert_eq!(recs.len(), 3, "{recs:?}");
    let chat_recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["request_id"] == "chat-1")
        .collect();
    assert_eq!(chat_recs.len(), 2);
    for r in &chat_recs {
        let i = r["choice_index"].as_u64().unwrap() as usize;
        assert_eq!(
            r["prompt_ids"].as_array().unwrap().len() as u64,
            chat["usage"]["prompt_tokens"].as_u64().unwrap()
        );
        assert_eq!(r["output_ids"].as_array().unwrap().len(), 6);
        assert_eq!(r["logprobs"].as_array().unwrap().len(), 6);
        assert!(r["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_f64().unwrap() <= 0.0));
        assert_eq!(
            r["sampling"]["seed"],
            5 + i as u64,
            "choice seeds are recorded"
        );
        assert_eq!(r["finish_reason"], "length");
        assert_eq!(
            format!("fp_{}", r["weight_version"].as_str().unwrap()),
            chat["system_fingerprint"].as_str().unwrap()
        );
        assert_eq!(r["model"], MODEL);
        assert!(r["latencies"]["e2e_ms"].as_f64().unwrap() > 0.0);
    }
    let stream_rec = recs.iter().find(|r| r["request_id"] == "stream-1").unwrap();
    assert_eq!(stream_rec["output_ids"].as_array().unwrap().len(), 5);

    // SIGKILL at varying moments under concurrent load, 20 times; after each restart every
    // answered request's record is there and every segment reads cleanly.
    let mut answered = 3;
    for round in 0..20 {
        // Background clients keep requests in flight while the kill lands.
        let pending: Vec<_> = (0..3u64)
            .map(|k| {
                let url = s.url("/v1/completions");
                std::thread::spawn(move || {
                    Client::new()
                        .post(url)
                        .json(&json!({"model": MODEL, "prompt": "Once upon a time",
                                      "max_tokens": 20 + 40 * k, "ignore_eos": true}))
                        .send()
                        .ok()
                        .filter(|r| r.status().as_u16() == 200)
                        .and_then(|r| r.json::<Value>().ok())
                        .is_some()
                })
            })
            .collect();
        for k in 0..4 {
            let r = c
                .post(s.url("/v1/completions"))
                .header("x-request-id", format!("r{round}-{k}"))
                .json(&json!({"model": MODEL, "prompt": "abc", "max_tokens": 3}))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            answered += 1;
        }
        // A varying delay moves the kill across the in-flight requests' lifetimes.
        std::thread::sleep(std::time::Duration::from_millis((round * 7 % 40) as u64));
        s.child.kill().unwrap(); // SIGKILL
        s.child.wait().unwrap();
        answered += pending
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count();
        s = start(&log_dir);
        let all = logs(&log_dir, None);
        assert!(
            all.len() >= answered,
            "round {round}: {} records for {answered} answered requests",
            all.len()
        );
        for k in 0..4 {
            let id = format!("r{round}-{k}");
            assert!(
                all.iter().any(|r| r["request_id"] == id.as_str()),
                "{id} missing"
            );
        }
    }
    // The cursor remembers what was already read.
    let new = logs(&log_dir, Some(&cursor));
    assert!(new.iter().all(|r| r["request_id"] != "chat-1"));
    assert!(new.len() >= answered - 3);
    drop(s);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_failing_log_is_counted_and_fail_closed_answers_503() {
    for fail_closed in [false, true] {
        let tmp = std::env::temp_dir().join(format!(
            "safeloop-logfail-{}-{fail_closed}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        let log_dir = tmp.join("log");
        let model = golden_dir(MODEL);
        let s = Server::start(&[
            "--model",
            model.to_str().unwrap(),
            "--log-dir",
            log_dir.to_str().unwrap(),
            "--log-fsync",
            "always",
            // Every record rotates, so each write needs to create a file in the directory.
            "--log-segment-bytes",
            "1",
            "--log-fail-closed",
            if fail_closed { "true" } else { "false" },
        ]);
        let c = Client::new();
        let ask = || {
            c.post(s.url("/v1/completions"))
                .json(&json!({"model": MODEL, "prompt": "abc", "max_tokens": 3}))
                .send()
                .unwrap()
        };
        assert_eq!(ask().status().as_u16(), 200);
        // The directory disappears (a lost volume, a bad cleanup job).
        std::fs::remove_dir_all(&log_dir).unwrap();
        // The next record cannot be written (sealing the segment fails).
        let r = ask();
        let status = r.status().as_u16();
        if fail_closed {
            assert_eq!(status, 503, "fail-closed refuses what it cannot log");
            assert!(r.json::<Value>().unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("log"));
        } else {
            assert_eq!(status, 200, "fail-open keeps serving");
        }
        let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
        assert!(
            safeloop_tests::metric(&m, "safeloop_log_write_errors_total").unwrap() >= 1.0,
            "{m}"
        );
        assert_eq!(
            c.get(s.url("/health")).send().unwrap().status().as_u16(),
            200,
            "still serving"
        );
        // The writer recreates the directory and carries on.
        let mut healed = false;
        for _ in 0..5 {
            if ask().status().as_u16() == 200 && log_dir.exists() {
                healed = true;
                break;
            }
        }
        assert!(healed, "the log recovers once it can write again");
        assert!(!logs(&log_dir, None).is_empty());
        drop(s);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
