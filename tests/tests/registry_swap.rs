//! The registry and live weight swap, end to end: a server follows `champion` of a local
//! registry under continuous concurrent traffic (streamed and not) while versions are
//! promoted, rolled back, pinned and refused (a NaN weight, a flipped byte). No request may
//! fail or be cut short, each answer must equal an offline greedy generation of the version
//! it reports, and the trajectory log must carry the same versions.

use safeloop_shared::engine::{Engine, EngineConfig, SamplingParams};
use safeloop_shared::{load_causal_lm, LoadOptions};
use safeloop_tests::{copy_golden, fresh_tmp, golden_dir, metric, moto::Moto, path_str, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROMPTS: &[&[u32]] = &[&[5, 17, 42, 99], &[300, 12, 7], &[64, 65, 66, 67, 68, 69]];
const MAX_TOKENS: usize = 8;
const ADMIN: &str = "admin-secret";

/// The tiny golden model's files (without the golden outputs).
fn copy_model(dst: &Path) {
    copy_golden("llama-gqa", dst);
}

/// Rewrites model.safetensors with `f(tensor name, index, value)` applied to every f32.
fn edit_weights(dir: &Path, f: impl Fn(&str, usize, f32) -> f32) {
    edit_file(dir, "model.safetensors", f)
}

fn edit_file(dir: &Path, file: &str, f: impl Fn(&str, usize, f32) -> f32) {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        let data: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, b)| {
                f(&name, i, f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
            })
            .collect();
        tensors.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

/// Offline greedy outputs (text, token ids) of a model directory for every prompt.
fn offline(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let loaded = load_causal_lm(dir, &LoadOptions::default()).unwrap();
    let mut engine = Engine::new(
        loaded.model,
        Arc::new(loaded.tokenizer),
        EngineConfig::default(),
    );
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(MAX_TOKENS),
        ignore_eos: true,
        ..Default::default()
    };
    let reqs = PROMPTS
        .iter()
        .map(|p| (p.to_vec(), params.clone()))
        .collect();
    engine
        .generate(reqs)
        .unwrap()
        .into_iter()
        .map(|c| (c.text, c.tokens.iter().map(|t| t.id).collect()))
        .collect()
}

use safeloop_tests::{train_json as train, train_json_env as train_env};

/// Publishes a model directory as a version of ROOT/tiny (ROOT: a directory or s3:// URL).
fn publish_to(root: &str, dir: &Path, env: &[(&str, &str)]) -> String {
    let target = format!("{root}/tiny");
    let args = [
        "registry",
        "publish",
        &target,
        "--model",
        path_str(dir),
        "--kind",
        "policy",
    ];
    train_env(&args, env)["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn promote_in(root: &str, version: &str, env: &[(&str, &str)]) {
    train_env(
        &["registry", "promote", &format!("{root}/tiny"), version],
        env,
    );
}

fn publish(reg: &Path, dir: &Path) -> String {
    publish_to(path_str(reg), dir, &[])
}

fn promote(reg: &Path, version: &str) {
    promote_in(path_str(reg), version, &[])
}

/// A server following `champion` of ROOT/tiny (polled every 0.5 s), served as `tiny`.
fn follow(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let spec = format!("registry:{model}@champion");
    let mut args = vec![
        "--model",
        &spec,
        "--served-model-name",
        "tiny",
        "--registry-poll-secs",
        "0.5",
    ];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, env)
}

/// One answer as a client saw it.
#[derive(Debug)]
struct Answer {
    version: String,
    prompt: usize,
    text: String,
    stream: bool,
}

/// A client loop: alternates streamed and plain completions until `stop`; every failure
/// (status, transport, a stream without its end) is recorded.
fn client(
    base: String,
    id: usize,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut n = id;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let prompt = n % PROMPTS.len();
        let stream = n.is_multiple_of(2);
        let body = json!({"model": "tiny", "prompt": PROMPTS[prompt], "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": true, "stream": stream});
        let resp = match http
            .post(format!("{base}/v1/completions"))
            .json(&body)
            .send()
        {
            Ok(r) => r,
            Err(e) => {
                failures.lock().unwrap().push(format!("transport: {e}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("x-safeloop-model-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != 200 {
            let text = resp.text().unwrap_or_default();
            failures.lock().unwrap().push(format!("{status}: {text}"));
            continue;
        }
        let (text, fingerprint, finished) = if stream {
            let mut text = String::new();
            let mut fp = String::new();
            let mut finish = None;
            let mut done = false;
            for line in std::io::BufReader::new(resp).lines() {
                let Ok(line) = line else { break };
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                if v.get("error").is_some() {
                    failures.lock().unwrap().push(format!("stream error: {v}"));
                    break;
                }
                fp = v["system_fingerprint"].as_str().unwrap_or("").to_string();
                text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
            (text, fp, done && finish.is_some())
        } else {
            let v: Value = match resp.json() {
                Ok(v) => v,
                Err(e) => {
                    failures.lock().unwrap().push(format!("body: {e}"));
                    continue;
                }
            };
            (
                v["choices"][0]["text"].as_str().unwrap_or("").to_string(),
                v["system_fingerprint"].as_str().unwrap_or("").to_string(),
                v["choices"][0]["finish_reason"].is_string(),
            )
        };
        if !finished {
            failures.lock().unwrap().push(format!(
                "truncated ({}) answer",
                if stream { "stream" } else { "json" }
            ));
            continue;
        }
        if fingerprint != format!("fp_{header}") {
            failures
                .lock()
                .unwrap()
                .push(format!("fingerprint {fingerprint} vs header {header}"));
        }
        answers.lock().unwrap().push(Answer {
            version: header,
            prompt,
            text,
            stream,
        });
    }
}

/// Continuous traffic from 8 concurrent clients until `finish`.
struct Traffic {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(base: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(vec![]));
        let failures = Arc::new(Mutex::new(vec![]));
        let clients = (0..8)
            .map(|i| {
                let (b, st, a, f) = (
                    base.to_string(),
                    stop.clone(),
                    answers.clone(),
                    failures.clone(),
                );
                std::thread::spawn(move || client(b, i, st, a, f))
            })
            .collect();
        Self {
            stop,
            answers,
            failures,
            clients,
        }
    }

    /// Stops the clients; asserts no request failed and every answer equals the offline
    /// greedy output of the version it reports. Returns the answers.
    fn finish(self, expected: &HashMap<String, Vec<(String, Vec<u32>)>>) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        assert!(answers.len() > 50, "only {} answers", answers.len());
        for a in &answers {
            let want = &expected
                .get(&a.version)
                .unwrap_or_else(|| panic!("answer from unknown version {}", a.version))[a.prompt];
            assert_eq!(a.text, want.0, "{a:?}");
        }
        answers
    }
}

fn admin(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::blocking::Client::new();
    let url = s.url(path);
    let req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    }
    .bearer_auth(ADMIN);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.send().unwrap();
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

fn policy_status(s: &Server) -> Value {
    let (code, v) = admin(s, "GET", "/admin/v1/models", None);
    assert_eq!(code, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "policy")
        .unwrap()
        .clone()
}

/// Waits until new answers report `version` (what a client sees after a swap).
fn wait_for_version(answers: &Mutex<Vec<Answer>>, version: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    let start = answers.lock().unwrap().len();
    while t.elapsed() < limit {
        if answers.lock().unwrap()[start..]
            .iter()
            .any(|a| a.version == version)
        {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no answer from version {version} within {limit:?}");
}

#[test]
fn swaps_under_load_with_zero_failed_requests_validation_and_rollback() {
    let tmp = fresh_tmp("registry-swap");
    let reg = tmp.join("registry");
    let log = tmp.join("log");
    let v1_dir = tmp.join("v1");
    copy_model(&v1_dir);
    // v2: every weight nudged, so greedy answers differ.
    let v2_dir = tmp.join("v2");
    copy_model(&v2_dir);
    edit_weights(&v2_dir, |_, i, x| x + 0.08 * ((i as f32) * 0.37).sin());
    // One NaN weight (a diverged training run).
    let nan_dir = tmp.join("nan");
    copy_model(&nan_dir);
    edit_weights(&nan_dir, |name, i, x| {
        if name.contains("layers.1.mlp.down_proj") && i == 5 {
            f32::NAN
        } else {
            x
        }
    });
    // A valid version whose stored file is corrupted after publishing (one flipped byte).
    let flip_dir = tmp.join("flip");
    copy_model(&flip_dir);
    edit_weights(&flip_dir, |_, i, x| x - 0.05 * ((i as f32) * 0.11).cos());

    // The same weights with a different tokenizer (two token ids swapped).
    let tok_dir = tmp.join("tokenizer-change");
    copy_model(&tok_dir);
    let tok_path = tok_dir.join("tokenizer.json");
    let mut tok: Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (e, o) = (vocab["e"].clone(), vocab["o"].clone());
    vocab.insert("e".into(), o);
    vocab.insert("o".into(), e);
    std::fs::write(&tok_path, tok.to_string()).unwrap();

    let expected: HashMap<String, Vec<(String, Vec<u32>)>> = [&v1_dir, &v2_dir]
        .iter()
        .map(|d| {
            (
                safeloop_shared::registry::content_version(d).unwrap(),
                offline(d),
            )
        })
        .collect();
    let outs: Vec<_> = expected.values().collect();
    assert_ne!(outs[0], outs[1], "the two versions must answer differently");

    let v1 = publish(&reg, &v1_dir);
    let v2 = publish(&reg, &v2_dir);
    let v_nan = publish(&reg, &nan_dir);
    let v_flip = publish(&reg, &flip_dir);
    let v_tok = publish(&reg, &tok_dir);
    assert!(expected.contains_key(&v1) && expected.contains_key(&v2));
    // Same bytes ⇒ same version id.
    assert_eq!(publish(&reg, &v1_dir), v1);
    let stored = reg.join(format!("tiny/versions/{v_flip}/model.safetensors"));
    let mut bytes = std::fs::read(&stored).unwrap();
    let k = bytes.len() - 1000;
    bytes[k] ^= 0x01;
    std::fs::write(&stored, bytes).unwrap();
    promote(&reg, &v1);

    // Every load takes ≥ 300 ms, so a second swap request meets the first one in progress.
    let s = follow(
        &format!("{}/tiny", reg.display()),
        &[
            "--admin-key",
            ADMIN,
            "--log-dir",
            path_str(&log),
            "--log-fsync",
            "always",
        ],
        &[("SAFELOOP_TEST_LOAD_DELAY_MS", "300")],
    );
    assert_eq!(policy_status(&s)["serving"], v1.as_str());
    // The admin API needs its own key.
    let r = reqwest::blocking::Client::new()
        .get(s.url("/admin/v1/models"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let traffic = Traffic::start(&s.base);
    let answers = traffic.answers.clone();
    std::thread::sleep(Duration::from_millis(1500));

    // Promote v2: served within the poll interval (+ load and validation).
    promote(&reg, &v2);
    // Within the poll interval plus the load (300 ms here) and validation.
    let took = wait_for_version(&answers, &v2, Duration::from_secs(5));
    eprintln!("v2 served {took:?} after the promotion");
    std::thread::sleep(Duration::from_millis(1000));

    // Rollback through the admin API: champion goes back to v1.
    let (code, v) = admin(&s, "POST", "/admin/v1/models/tiny/rollback", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"]["to"], v1.as_str(), "{v}");
    wait_for_version(&answers, &v1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));

    // A NaN weight, a flipped byte and a changed tokenizer are refused; v1 keeps serving.
    for (bad, why) in [
        (&v_nan, "NaN"),
        (&v_flip, "sha256"),
        (&v_tok, "tokenizes differently"),
    ] {
        promote(&reg, bad);
        let t = Instant::now();
        loop {
            let p = policy_status(&s);
            if p["phase"] == "failed" && p["target"] == bad.as_str() {
                assert!(
                    p["error"].as_str().unwrap().contains(why),
                    "refusal should mention {why}: {p}"
                );
                assert_eq!(p["serving"], v1.as_str());
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{bad} not refused: {p}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let n = answers.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(700));
        assert!(answers.lock().unwrap()[n..].iter().all(|a| a.version == v1));
    }
    // Asked for explicitly, the refusal comes back as a 422 error object.
    let (code, v) = admin(
        &s,
        "POST",
        "/admin/v1/models/tiny/swap",
        Some(json!({"version": v_nan})),
    );
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["error"]["code"], "version_refused");

    // Pin v2 (by id prefix) with two concurrent swaps: one wins, the other gets 409.
    let pins: Vec<_> = (0..2)
        .map(|_| {
            let base = s.base.clone();
            let body = json!({"version": &v2[..8]});
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::new()
                    .post(format!("{base}/admin/v1/models/tiny/swap"))
                    .bearer_auth(ADMIN)
                    .json(&body)
                    .send()
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    let mut codes: Vec<u16> = pins.into_iter().map(|h| h.join().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, [200, 409]);
    wait_for_version(&answers, &v2, Duration::from_secs(10));
    let p = policy_status(&s);
    assert_eq!(p["pinned"], true);
    assert_eq!(p["serving"], v2.as_str());
    std::thread::sleep(Duration::from_millis(1000));

    let answers = traffic.finish(&expected);
    let per_version = |v: &str| answers.iter().filter(|a| a.version == v).count();
    eprintln!(
        "{} answers ({} from v1, {} from v2), 0 failed",
        answers.len(),
        per_version(&v1),
        per_version(&v2)
    );
    for v in [&v1, &v2] {
        for stream in [false, true] {
            assert!(
                answers
                    .iter()
                    .any(|a| a.version == **v && a.stream == stream),
                "no {} answer from {v}",
                if stream { "streamed" } else { "plain" }
            );
        }
    }

    // The log carries the versions, and each record's tokens are that version's.
    let (records, _) = safeloop_shared::trajlog::LogReader::new(&log)
        .read_since(Default::default(), true)
        .unwrap();
    assert!(records.len() >= answers.len());
    for r in &records {
        let want = &expected
            .get(&r.weight_version)
            .unwrap_or_else(|| panic!("record from unknown version {}", r.weight_version));
        let i = PROMPTS.iter().position(|p| *p == r.prompt_ids).unwrap();
        assert_eq!(r.output_ids, want[i].1);
    }

    let m = reqwest::blocking::get(s.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let swapped = m
        .lines()
        .find(|l| l.starts_with("safeloop_model_swaps_total{") && l.contains("swapped"))
        .unwrap();
    assert!(swapped.ends_with(" 4"), "{swapped}"); // v1, v2, v1, v2
    assert!(metric(&m, "safeloop_model_version_info").is_some());
    assert!(m.contains(&format!("version=\"{v2}\"")));
    let history = train(&["registry", "show", &format!("{}/tiny", reg.display())]);
    let moves = history["history"].as_array().unwrap();
    assert!(moves.iter().any(|e| e["reason"] == "rollback"));
}

#[test]
fn the_cost_model_follows_its_alias_too() {
    let tmp = fresh_tmp("registry-cost");
    let reg = tmp.join("registry");
    let log = tmp.join("log");
    let (c1, c2) = (tmp.join("cost1"), tmp.join("cost2"));
    copy_golden("llama-gqa-score", &c1);
    copy_golden("llama-gqa-score", &c2);
    // The second version scores everything 5 higher (the head is in both files).
    for file in ["model.safetensors", "score_head.safetensors"] {
        edit_file(&c2, file, |name, _, x| {
            if name == "score_head.bias" {
                x + 5.0
            } else {
                x
            }
        });
    }
    let root = path_str(&reg).to_string();
    let publish_cost = |dir: &Path| {
        let target = format!("{root}/cost");
        train(&[
            "registry",
            "publish",
            &target,
            "--model",
            path_str(dir),
            "--kind",
            "cost",
        ])["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (v1, v2) = (publish_cost(&c1), publish_cost(&c2));
    train(&["registry", "promote", &format!("{root}/cost"), &v1]);
    let spec = format!("registry:{root}/cost@champion");
    let s = Server::start(&[
        "--model",
        path_str(&golden_dir("llama-gqa")),
        "--served-model-name",
        "tiny",
        "--cost-model",
        &spec,
        "--gate-action",
        "annotate",
        "--registry-poll-secs",
        "0.5",
        "--log-dir",
        path_str(&log),
        "--log-fsync",
        "always",
    ]);
    let cost = || {
        let body = json!({"model": "tiny", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": true});
        let v: Value = reqwest::blocking::Client::new()
            .post(s.url("/v1/completions"))
            .json(&body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["choices"][0]["safety"]["cost"].as_f64().unwrap()
    };
    let before = cost();
    train(&["registry", "promote", &format!("{root}/cost"), &v2]);
    let t = Instant::now();
    let after = loop {
        let c = cost();
        if (c - before - 5.0).abs() < 1e-3 {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still {c} (was {before})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(after > before);
    let (records, _) = safeloop_shared::trajlog::LogReader::new(&log)
        .read_since(Default::default(), true)
        .unwrap();
    let first = records.first().unwrap();
    let last = records.last().unwrap();
    assert_eq!(first.cost_version.as_deref(), Some(v1.as_str()));
    assert_eq!(last.cost_version.as_deref(), Some(v2.as_str()));
    assert!((last.cost.unwrap() as f64 - after).abs() < 1e-4);
    // A policy version promoted under the cost model's name is refused by kind.
    let policy = tmp.join("policy");
    copy_model(&policy);
    let target = format!("{root}/cost");
    let pv = train(&[
        "registry",
        "publish",
        &target,
        "--model",
        path_str(&policy),
        "--kind",
        "policy",
    ])["version"]
        .as_str()
        .unwrap()
        .to_string();
    train(&["registry", "promote", &target, &pv]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        (cost() - after).abs() < 1e-4,
        "the cost model must not change"
    );
    assert!(s
        .stderr()
        .iter()
        .any(|l| l.contains("refused") && l.contains("not a cost model")));
}

#[test]
fn publish_promote_and_swap_through_an_s3_compatible_store() {
    let tmp = fresh_tmp("registry-s3");
    let moto = Moto::start();
    let bucket = "safeloop-registry";
    moto.create_bucket(bucket);
    let env = moto.env();
    let root = format!("s3://{bucket}/models");
    let (v1_dir, v2_dir) = (tmp.join("v1"), tmp.join("v2"));
    copy_model(&v1_dir);
    copy_model(&v2_dir);
    edit_weights(&v2_dir, |_, i, x| x + 0.08 * ((i as f32) * 0.37).sin());
    let v1 = publish_to(&root, &v1_dir, &env);
    let v2 = publish_to(&root, &v2_dir, &env);
    // Create-only: publishing the same bytes again is a no-op with the same id.
    assert_eq!(publish_to(&root, &v1_dir, &env), v1);
    promote_in(&root, &v1, &env);
    let expected: HashMap<String, Vec<(String, Vec<u32>)>> = [
        (v1.clone(), offline(&v1_dir)),
        (v2.clone(), offline(&v2_dir)),
    ]
    .into();

    let cache = tmp.join("cache");
    let s = follow(
        &format!("{root}/tiny"),
        &["--registry-cache", path_str(&cache)],
        &env,
    );
    let traffic = Traffic::start(&s.base);
    std::thread::sleep(Duration::from_millis(1000));
    promote_in(&root, &v2, &env);
    let took = wait_for_version(&traffic.answers, &v2, Duration::from_secs(20));
    eprintln!("s3: v2 served {took:?} after the promotion");
    std::thread::sleep(Duration::from_millis(1000));
    let answers = traffic.finish(&expected);
    assert!(answers.iter().any(|a| a.version == v1));
    // The server keeps a verified local copy of what it fetched.
    assert!(cache.join(format!("tiny/{v2}/model.safetensors")).exists());
    let shown = train_env(&["registry", "show", &format!("{root}/tiny")], &env);
    assert_eq!(shown["manifest"]["version"], v2.as_str());
    assert_eq!(shown["aliases"]["previous"], v1.as_str());
}
