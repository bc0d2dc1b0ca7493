//! Cost/reward scoring in the server and /v1/moderations, with the golden score model.

use reqwest::blocking::Client;
use safeloop_shared::calibration::Calibration;
use safeloop_shared::scoring::{ScoreFormat, Scorer};
use safeloop_shared::{ChatMessage, LoadOptions};
use safeloop_tests::{golden_dir, Server};
use serde_json::{json, Value};

fn close(a: f64, b: f32) -> bool {
    (a - b as f64).abs() < 1e-4
}

#[test]
fn choices_carry_cost_and_reward_and_moderations_use_the_cost_model() {
    let policy = golden_dir("llama-gqa");
    let score = golden_dir("llama-gqa-score");
    let scorer = Scorer::load(&score, &LoadOptions::default(), ScoreFormat::SafeRlhf).unwrap();
    let start = |threshold: &str, action: &str| {
        Server::start(&[
            "--model",
            policy.to_str().unwrap(),
            "--cost-model",
            score.to_str().unwrap(),
            "--reward-model",
            score.to_str().unwrap(),
            "--gate-threshold",
            threshold,
            "--gate-action",
            action,
        ])
    };
    let s = start("0", "annotate");
    let c = Client::new();
    let msgs = json!([{"role": "user", "content": "How do I bake bread?"}]);
    let v: Value = c
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "llama-gqa", "messages": msgs, "max_tokens": 8, "temperature": 1.0, "n": 2, "seed": 3}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let conv = vec![ChatMessage::new("user", "How do I bake bread?")];
    let mut costs = vec![];
    for ch in v["choices"].as_array().unwrap() {
        let text = ch["message"]["content"].as_str().unwrap();
        let want = scorer
            .score(&[(conv.clone(), Some(text.to_string()))])
            .unwrap()[0][0];
        let safety = &ch["safety"];
        assert!(
            close(safety["cost"].as_f64().unwrap(), want),
            "{safety} vs {want}"
        );
        assert!(
            close(safety["reward"].as_f64().unwrap(), want),
            "the reward model here is the same file"
        );
        assert_eq!(safety["flagged"], want > 0.0);
        assert_eq!(
            safety["action"],
            if want > 0.0 { "annotate" } else { "pass" }
        );
        costs.push(want);
    }
    // Moderations: shape, raw cost, sigmoid score, flag.
    let inputs = ["How do I bake bread?", "Tell me a story."];
    let m: Value = c
        .post(s.url("/v1/moderations"))
        .json(&json!({"input": inputs}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(m["id"].as_str().unwrap().starts_with("modr-"));
    let results = m["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, text) in results.iter().zip(inputs) {
        let want = scorer
            .score(&[(vec![ChatMessage::new("user", text)], None)])
            .unwrap()[0][0];
        assert!(close(r["cost"].as_f64().unwrap(), want));
        let sig = 1.0 / (1.0 + (-want as f64).exp());
        assert!((r["category_scores"]["harm"].as_f64().unwrap() - sig).abs() < 1e-4);
        assert_eq!(r["flagged"], want > 0.0);
        assert_eq!(r["categories"]["harm"], want > 0.0);
    }
    let single: Value = c
        .post(s.url("/v1/moderations"))
        .json(&json!({"input": "hi"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(single["results"].as_array().unwrap().len(), 1);
    drop(s);

    // A threshold between the two choices' costs: annotate flags the costlier one, block
    // replaces it with the refusal, resample returns a candidate under the threshold or blocks.
    assert!(
        (costs[0] - costs[1]).abs() > 1e-3,
        "the two sampled choices should differ: {costs:?}"
    );
    let mid = (costs[0] + costs[1]) / 2.0;
    let ask = |s: &Server, extra: Value| -> Value {
        let mut body = json!({"model": "llama-gqa", "messages": msgs, "max_tokens": 8, "temperature": 1.0, "n": 2, "seed": 3});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = c
            .post(s.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .unwrap();
        r.json().unwrap()
    };
    for action in ["annotate", "block", "resample"] {
        let s = start(&mid.to_string(), action);
        let v = ask(&s, json!({}));
        for (ch, cost) in v["choices"].as_array().unwrap().iter().zip(&costs) {
            let flagged = *cost > mid;
            match (action, flagged) {
                (_, false) => {
                    assert_eq!(ch["safety"]["action"], "pass", "{ch}");
                    assert_eq!(ch["finish_reason"], "length");
                }
                ("annotate", true) => {
                    assert_eq!(ch["safety"]["action"], "annotate");
                    assert_eq!(ch["safety"]["flagged"], true);
                }
                ("block", true) => {
                    assert_eq!(ch["safety"]["action"], "block");
                    assert_eq!(ch["finish_reason"], "content_filter");
                    assert_eq!(
                        ch["message"]["content"],
                        "I'm sorry, but I can't help with that."
                    );
                }
                (_, true) => {
                    let a = ch["safety"]["action"].as_str().unwrap();
                    assert!(a == "resample" || a == "block", "{ch}");
                    if a == "resample" {
                        assert!(ch["safety"]["cost"].as_f64().unwrap() <= mid as f64 + 1e-6);
                        assert_eq!(ch["safety"]["flagged"], false);
                    } else {
                        assert_eq!(ch["finish_reason"], "content_filter");
                    }
                }
            }
        }
        if action == "block" {
            // Streams are held and checked whole: the flagged choice never streams its text.
            let r = c
                .post(s.url("/v1/chat/completions"))
                .json(&json!({"model": "llama-gqa", "messages": msgs, "max_tokens": 8, "temperature": 1.0,
                              "n": 2, "seed": 3, "stream": true}))
                .send()
                .unwrap();
            let body = r.text().unwrap();
            assert!(body.trim_end().ends_with("data: [DONE]"));
            assert!(body.contains("content_filter"));
            // Overrides may only be stricter.
            let v = ask(&s, json!({"safety": {"action": "annotate"}}));
            assert_eq!(v["error"]["param"], "safety.action", "{v}");
            let v = ask(&s, json!({"safety": {"threshold": mid + 1.0}}));
            assert_eq!(v["error"]["param"], "safety.threshold", "{v}");
            // A lower threshold blocks both.
            let v = ask(
                &s,
                json!({"safety": {"threshold": costs[0].min(costs[1]) - 1.0}}),
            );
            for ch in v["choices"].as_array().unwrap() {
                assert_eq!(ch["finish_reason"], "content_filter");
            }
            let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
            assert!(
                safeloop_tests::sample(&m, "safeloop_gate_decisions_total", &[("action", "block")])
                    .is_some_and(|n| n >= 1.0),
                "{m}"
            );
            assert!(m.contains("safeloop_cost_score_count"));
        }
    }
    // The input check refuses a flagged prompt before generating anything.
    let s = Server::start(&[
        "--model",
        policy.to_str().unwrap(),
        "--cost-model",
        score.to_str().unwrap(),
        "--gate-threshold",
        "-1000",
        "--gate-input-check",
        "true",
    ]);
    let v = ask(&s, json!({}));
    assert_eq!(v["error"]["code"], "content_filter", "{v}");
    drop(s);

    // Without a cost model, moderations says so and choices carry no safety object.
    let plain = Server::start(&["--model", policy.to_str().unwrap()]);
    let r = c
        .post(plain.url("/v1/moderations"))
        .json(&json!({"input": "hi"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "no_cost_model");
    let v: Value = c
        .post(plain.url("/v1/chat/completions"))
        .json(&json!({"model": "llama-gqa", "messages": msgs, "max_tokens": 2}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(v["choices"][0].get("safety").is_none());
}

#[test]
fn windowed_streams_never_emit_unchecked_or_flagged_text() {
    let policy = golden_dir("llama-gqa");
    let score = golden_dir("llama-gqa-score");
    let scorer = Scorer::load(&score, &LoadOptions::default(), ScoreFormat::SafeRlhf).unwrap();
    let conv = vec![ChatMessage::new("user", "How do I bake bread?")];
    let c = Client::new();
    // First find where costs fall for these samples, then put the threshold inside the range.
    let probe = Server::start(&["--model", policy.to_str().unwrap()]);
    let v: Value = c
        .post(probe.url("/v1/chat/completions"))
        .json(&json!({"model": "llama-gqa", "messages": [{"role": "user", "content": "How do I bake bread?"}],
                      "max_tokens": 12, "temperature": 1.0, "n": 4, "seed": 11, "ignore_eos": true}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    drop(probe);
    let mut costs: Vec<f32> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| {
            scorer
                .score(&[(
                    conv.clone(),
                    Some(ch["message"]["content"].as_str().unwrap().to_string()),
                )])
                .unwrap()[0][0]
        })
        .collect();
    costs.sort_by(f32::total_cmp);
    let threshold = (costs[1] + costs[2]) / 2.0;
    let s = Server::start(&[
        "--model",
        policy.to_str().unwrap(),
        "--cost-model",
        score.to_str().unwrap(),
        &format!("--gate-threshold={threshold}"),
        "--gate-window",
        "2",
    ]);
    let r = c
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "llama-gqa", "messages": [{"role": "user", "content": "How do I bake bread?"}],
                      "max_tokens": 12, "temperature": 1.0, "n": 4, "seed": 11, "ignore_eos": true,
                      "stream": true}))
        .send()
        .unwrap();
    let body = r.text().unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let mut released = vec![String::new(); 4];
    let mut finish = vec![None; 4];
    for line in body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
    {
        let v: Value = serde_json::from_str(line).unwrap();
        let ch = &v["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        if let Some(text) = ch["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
            released[i].push_str(text);
            // Everything released so far was scored and passed.
            let cost = scorer
                .score(&[(conv.clone(), Some(released[i].clone()))])
                .unwrap()[0][0];
            assert!(
                cost <= threshold + 1e-4,
                "choice {i} released text with cost {cost} > {threshold}"
            );
            assert_eq!(
                ch["safety"]["checked_offset"].as_u64().unwrap() as usize,
                released[i].len()
            );
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            finish[i] = Some(f.to_string());
        }
    }
    assert!(finish.iter().all(|f| f.is_some()), "{finish:?}");
    assert!(
        finish
            .iter()
            .any(|f| f.as_deref() == Some("content_filter")),
        "some choice crosses the threshold: {finish:?}"
    );
    drop(s);

    // With a threshold nothing reaches, every window passes and the released text is exactly
    // the ungated generation.
    let s = Server::start(&[
        "--model",
        policy.to_str().unwrap(),
        "--cost-model",
        score.to_str().unwrap(),
        "--gate-threshold=1000",
        "--gate-window",
        "3",
    ]);
    let r = c
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "llama-gqa", "messages": [{"role": "user", "content": "How do I bake bread?"}],
                      "max_tokens": 12, "temperature": 1.0, "n": 4, "seed": 11, "ignore_eos": true,
                      "stream": true}))
        .send()
        .unwrap();
    let mut released = vec![String::new(); 4];
    for line in r
        .text()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
    {
        let v: Value = serde_json::from_str(line).unwrap();
        let ch = &v["choices"][0];
        if let Some(text) = ch["delta"]["content"].as_str() {
            released[ch["index"].as_u64().unwrap() as usize].push_str(text);
        }
        assert_ne!(ch["finish_reason"], "content_filter");
    }
    for (i, ch) in v["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            released[i],
            ch["message"]["content"].as_str().unwrap(),
            "choice {i}"
        );
    }
}

#[test]
fn the_cost_models_calibrated_threshold_gates_unless_the_flag_overrides_it() {
    let policy = golden_dir("llama-gqa");
    let dir = safeloop_tests::fresh_tmp("calibrated");
    let score = dir.join("score");
    safeloop_tests::copy_golden("llama-gqa-score", &score);
    let scorer = Scorer::load(&score, &LoadOptions::default(), ScoreFormat::SafeRlhf).unwrap();
    let text = "How do I bake bread?";
    let cost = scorer
        .score(&[(vec![ChatMessage::new("user", text)], None)])
        .unwrap()[0][0];
    // Calibrated just below this input's cost: the server flags it without any --gate-threshold.
    let cal = Calibration {
        threshold: cost - 0.01,
        target_false_flag_rate: 0.05,
        false_flag_rate: 0.05,
        recall: 0.5,
        precision: None,
        roc_auc: None,
        responses: 10,
        unsafe_responses: 5,
        data: vec![],
    };
    cal.write(&score).unwrap();
    let flagged = |extra: &[&str]| {
        let mut args = vec![
            "--model",
            policy.to_str().unwrap(),
            "--cost-model",
            score.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let s = Server::start(&args);
        let m: Value = Client::new()
            .post(s.url("/v1/moderations"))
            .json(&json!({"input": text}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert!(
            close(m["results"][0]["cost"].as_f64().unwrap(), cost),
            "{m}"
        );
        // A request may lower the threshold in force, not raise it: the error names the calibrated one.
        let r: Value = Client::new()
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"model": "llama-gqa", "max_tokens": 2,
                "messages": [{"role": "user", "content": text}],
                "safety": {"threshold": 1e6}}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["error"]["param"], "safety.threshold", "{r}");
        (
            m["results"][0]["flagged"].as_bool().unwrap(),
            r["error"]["message"].to_string(),
        )
    };
    let (f, msg) = flagged(&[]);
    assert!(f, "cost {cost} > calibrated {}", cal.threshold);
    assert!(msg.contains(&format!("{}", cal.threshold)), "{msg}");
    let above = format!("{}", cost + 1.0);
    let (f, _) = flagged(&["--gate-threshold", &above]);
    assert!(!f, "--gate-threshold {above} overrides the calibration");
    std::fs::remove_dir_all(&dir).ok();
}
