//! Cost/reward scoring in the server and /v1/moderations, with the golden score model.

use reqwest::blocking::Client;
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
    let start = |threshold: &str| {
        Server::start(&[
            "--model",
            policy.to_str().unwrap(),
            "--cost-model",
            score.to_str().unwrap(),
            "--reward-model",
            score.to_str().unwrap(),
            "--gate-threshold",
            threshold,
        ])
    };
    let s = start("0");
    let c = Client::new();
    let msgs = json!([{"role": "user", "content": "How do I bake bread?"}]);
    let v: Value = c
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "llama-gqa", "messages": msgs, "max_tokens": 8, "temperature": 0, "n": 2, "seed": 3}))
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
        assert_eq!(safety["action"], "annotate");
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

    // A threshold between the two choices' costs flags exactly the costlier one.
    if (costs[0] - costs[1]).abs() > 1e-3 {
        let mid = (costs[0] + costs[1]) / 2.0;
        let s = start(&mid.to_string());
        let v: Value = c
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"model": "llama-gqa", "messages": msgs, "max_tokens": 8, "temperature": 0, "n": 2, "seed": 3}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        for (ch, cost) in v["choices"].as_array().unwrap().iter().zip(&costs) {
            assert_eq!(ch["safety"]["flagged"], *cost > mid);
        }
    }

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
