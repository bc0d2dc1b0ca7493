//! Faults injected into a live server: the log's file system fills up, the scoring thread
//! panics, the engine thread panics. Each is survived or reported as its contract says:
//! nothing answered 200 is missing from the log, choices that cannot be scored are blocked,
//! and a dead engine answers 5xx error objects, turns /health 503 and exits non-zero.

use reqwest::blocking::Client;
use safeloop_shared::trajlog::LogReader;
use safeloop_tests::{fresh_tmp, golden_dir, metric, path_str, Server};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MODEL: &str = "llama-gqa";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A 512 KiB tmpfs over `dir`, private to the server's mount namespace (`unshare`: as root
/// directly, otherwise in a user namespace — no privileges needed where those are allowed),
/// pre-filled with a `filler` file so that only ~60 KiB are free. The test reaches the file
/// system through `/proc/<server pid>/root`.
fn small_fs_wrapper(dir: &Path) -> Vec<String> {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut w: Vec<String> = vec!["unshare".into()];
    if !root {
        w.extend(["--user".into(), "--map-root-user".into()]);
    }
    w.extend([
        "--mount".into(),
        "sh".into(),
        "-c".into(),
        r#"mount -t tmpfs -o size=512k tmpfs "$0" && head -c 460000 /dev/zero > "$0/filler" && exec "$@""#
            .into(),
        path_str(dir).into(),
    ]);
    w
}

fn in_server_fs(s: &Server, p: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{}", s.child.id(), p.display()))
}

#[test]
fn a_full_disk_loses_no_answered_record_and_serving_resumes_when_space_returns() {
    let tmp = fresh_tmp("faults-disk-full");
    let fs = tmp.join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    let log = fs.join("log");
    let wrapper = small_fs_wrapper(&fs);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let model = golden_dir(MODEL);
    let s = Server::start_wrapped(
        &wrapper,
        &[
            "--model",
            path_str(&model),
            "--log-dir",
            path_str(&log),
            "--log-fail-closed",
            "true",
            "--log-fsync",
            "always",
        ],
        &[],
    );
    let seen_fs = in_server_fs(&s, &fs);
    assert!(
        seen_fs.join("filler").exists(),
        "the tmpfs is not visible through /proc/<pid>/root"
    );
    let c = client();
    let ask = |i: usize| {
        let r = c
            .post(s.url("/v1/completions"))
            .header("x-request-id", format!("r{i}"))
            .json(&json!({"model": MODEL, "prompt": format!("request {i}"), "max_tokens": 8, "seed": i}))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (mut ok, mut refused) = (HashSet::new(), HashSet::new());
    let mut i = 0;
    // Fill the disk: fail-closed answers 503 for what it cannot log.
    while refused.len() < 3 {
        assert!(i < 2000, "the log never filled the 512 KiB file system");
        let (status, v) = ask(i);
        match status {
            200 => assert!(ok.insert(format!("r{i}"))),
            503 => {
                let msg = v["error"]["message"].as_str().unwrap_or("");
                assert!(msg.contains("log"), "{v}");
                refused.insert(format!("r{i}"));
            }
            other => panic!("request {i}: {other} {v}"),
        }
        i += 1;
    }
    assert!(
        ok.len() >= 5,
        "too few records before the disk filled: {}",
        ok.len()
    );
    let health = c.get(s.url("/health")).send().unwrap().status().as_u16();
    assert_eq!(health, 200, "a full disk does not take the server down");
    // Space returns: serving (and logging) resumes.
    std::fs::remove_file(seen_fs.join("filler")).unwrap();
    for _ in 0..5 {
        let (status, v) = ask(i);
        assert_eq!(status, 200, "after space returned: {v}");
        ok.insert(format!("r{i}"));
        i += 1;
    }
    let logged: HashSet<String> = LogReader::new(in_server_fs(&s, &log))
        .read_all(true)
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    let missing: Vec<_> = ok.difference(&logged).collect();
    assert!(
        missing.is_empty(),
        "answered 200 but not logged: {missing:?}"
    );
    assert!(
        refused.is_disjoint(&logged),
        "a refused request left a record"
    );
    let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metric(&m, "safeloop_log_write_errors_total").unwrap() >= 3.0);
    eprintln!(
        "disk full: {} answered and logged, {} refused (503) while full",
        ok.len(),
        refused.len()
    );
}

#[test]
fn a_scoring_thread_panic_blocks_that_batch_and_scoring_goes_on() {
    let model = golden_dir(MODEL);
    let cost = golden_dir("llama-gqa-score");
    // The scorer's 4th batch panics (loading validates with a few batches of its own).
    let s = Server::start_with_env(
        &[
            "--model",
            path_str(&model),
            "--cost-model",
            path_str(&cost),
            "--gate-action",
            "annotate",
        ],
        &[("SAFELOOP_FAULTS", "scorer=4")],
    );
    let c = client();
    let mut actions = vec![];
    for i in 0..6 {
        let v: Value = c
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": format!("hi {i}")}],
                          "max_tokens": 4, "seed": i}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let choice = &v["choices"][0];
        actions.push((
            choice["safety"]["action"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            choice["finish_reason"].as_str().unwrap_or("?").to_string(),
            choice["safety"]["cost"].as_f64(),
        ));
    }
    let failed: Vec<_> = actions.iter().filter(|a| a.2.is_none()).collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly the panicking batch is unscored: {actions:?}"
    );
    // Fail-closed: the unscored choice is blocked even under an annotating gate.
    assert_eq!(failed[0].1, "content_filter", "{actions:?}");
    let last = actions.last().unwrap();
    assert!(
        last.2.is_some(),
        "scoring goes on after the panic: {actions:?}"
    );
    let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    let errors: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("safeloop_scoring_errors_total"))
        .collect();
    assert_eq!(
        errors,
        ["safeloop_scoring_errors_total{role=\"cost\"} 1"],
        "{actions:?}"
    );
    assert_eq!(
        c.get(s.url("/health")).send().unwrap().status().as_u16(),
        200
    );
}

#[test]
fn an_engine_panic_answers_5xx_turns_health_503_and_exits_non_zero() {
    let model = golden_dir(MODEL);
    let mut s = Server::start_with_env(
        &["--model", path_str(&model)],
        &[("SAFELOOP_FAULTS", "engine_step=80")],
    );
    let base = s.base.clone();
    // Four clients keep requests in flight when the engine thread panics.
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                let c = client();
                let mut seen = vec![];
                for i in 0..200 {
                    let r = c
                        .post(format!("{base}/v1/completions"))
                        .json(&json!({"model": MODEL, "prompt": format!("client {t} request {i}"), "max_tokens": 6}))
                        .send();
                    match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().unwrap_or_default();
                            let health = c.get(format!("{base}/health")).send().map(|h| h.status().as_u16());
                            seen.push((status, body, health.ok()));
                            if status >= 500 {
                                break;
                            }
                        }
                        // The process has exited: connection refused, never a hang.
                        Err(e) => {
                            assert!(!e.is_timeout(), "a request hung: {e}");
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let seen: Vec<_> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(
        seen.iter().any(|(st, _, _)| *st == 200),
        "no request succeeded first"
    );
    let failures: Vec<_> = seen.iter().filter(|(st, _, _)| *st >= 500).collect();
    assert!(!failures.is_empty(), "no request saw the engine fail");
    // In flight when it died: 500 naming the panic; arriving after: 503 (shutting down).
    let mut died = 0;
    for (status, body, health) in &failures {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{status}: {body}"));
        let message = v["error"]["message"].as_str().unwrap();
        match status {
            500 => {
                assert_eq!(v["error"]["type"], "server_error", "{body}");
                assert!(message.contains("panicked"), "{body}");
                died += 1;
            }
            503 => assert!(message.contains("shutting down"), "{body}"),
            _ => panic!("{status}: {body}"),
        }
        // /health right after: 503 (failed) or the process is already gone.
        assert!(matches!(health, Some(503) | None), "health {health:?}");
    }
    assert!(
        died >= 1,
        "no in-flight request got the engine's failure: {failures:?}"
    );
    let t = Instant::now();
    let code = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!code.success(), "exit status {code}");
    assert!(
        s.stderr()
            .iter()
            .any(|l| l.contains("fatal") && l.contains("panicked")),
        "{:?}",
        s.stderr()
    );
}

use safeloop_tests::train_json_env as train;

/// A TCP proxy in front of the object store that dies for good once any one response has
/// carried `cut_after` bytes: the store disappears in the middle of a large download.
struct DyingProxy {
    endpoint: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DyingProxy {
    fn start(upstream: &str, cut_after: u64) -> DyingProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let dead = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if dead.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                });
                let (mut s_in, mut c_out) = (server, client);
                let dead = dead.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    let mut sent = 0u64;
                    loop {
                        if dead.load(Ordering::SeqCst) {
                            break;
                        }
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        if sent > cut_after {
                            dead.store(true, Ordering::SeqCst);
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        DyingProxy { endpoint, cut }
    }

    fn is_dead(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn the_registry_store_vanishing_mid_fetch_refuses_the_swap_and_the_current_model_serves() {
    let tmp = fresh_tmp("faults-registry-gone");
    let moto = safeloop_tests::moto::Moto::start();
    moto.create_bucket("reg");
    let env = moto.env();
    let target = "s3://reg/models/tiny";
    let (v1_dir, v2_dir) = (tmp.join("v1"), tmp.join("v2"));
    safeloop_tests::copy_golden(MODEL, &v1_dir);
    safeloop_tests::copy_golden(MODEL, &v2_dir);
    // A large extra file: the store dies while the server downloads it.
    let pad: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(v2_dir.join("padding.bin"), pad).unwrap();
    let publish = |dir: &Path| {
        train(
            &[
                "registry",
                "publish",
                target,
                "--model",
                path_str(dir),
                "--kind",
                "policy",
            ],
            &env,
        )["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (v1, v2) = (publish(&v1_dir), publish(&v2_dir));
    train(&["registry", "promote", target, &v1], &env);
    let spec = format!("registry:{target}@champion");
    let cache = tmp.join("cache");
    // The server reaches the store through a proxy that dies 4 MiB into a response.
    let proxy = DyingProxy::start(&moto.endpoint, 4 << 20);
    let mut server_env = env;
    server_env[0].1 = proxy.endpoint.as_str();
    let s = Server::start_with_env(
        &[
            "--model",
            &spec,
            "--served-model-name",
            "tiny",
            "--registry-poll-secs",
            "0.2",
            "--registry-cache",
            path_str(&cache),
            "--admin-key",
            "adm",
        ],
        &server_env,
    );
    let c = client();
    let status = || -> Value {
        let v: Value = c
            .get(s.url("/admin/v1/models"))
            .bearer_auth("adm")
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "policy")
            .unwrap()
            .clone()
    };
    assert_eq!(status()["serving"], v1.as_str());
    train(&["registry", "promote", target, &v2], &env);
    let t = Instant::now();
    while !proxy.is_dead() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the fetch never started: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let after = loop {
        let st = status();
        if st["phase"] != "fetching" && st["phase"] != "loading" && st["phase"] != "validating" {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the fetch never ended: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(after["serving"], v1.as_str(), "{after}");
    assert!(
        after["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{after}"
    );
    // The current model serves on, and the server stays healthy.
    for i in 0..5 {
        let v: Value = c
            .post(s.url("/v1/completions"))
            .json(&json!({"model": "tiny", "prompt": format!("still here {i}"), "max_tokens": 4}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["system_fingerprint"], format!("fp_{v1}"), "{v}");
    }
    assert_eq!(
        c.get(s.url("/health")).send().unwrap().status().as_u16(),
        200
    );
    let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("safeloop_model_swaps_total")
                && l.contains("refused")
                && l.contains("policy")
        })
        .collect();
    eprintln!("registry gone mid-fetch: {after}\n{refused:?}");
    assert!(refused.iter().any(|l| !l.ends_with(" 0")), "{refused:?}");
}
