//! The batched engine through its public API, on the golden models.

mod common;
use common::*;
use safeloop_shared::engine::{Engine, EngineConfig, FinishReason, SamplingParams};
use safeloop_shared::model::CausalLm;
use safeloop_shared::{load_causal_lm, Error, LoadOptions};
use std::sync::Arc;

fn engine(name: &str, cfg: EngineConfig) -> Engine<CausalLm> {
    engine_with(name, cfg, &LoadOptions::default())
}

fn engine_with(name: &str, cfg: EngineConfig, opts: &LoadOptions) -> Engine<CausalLm> {
    let m = load_causal_lm(&golden_dir(name), opts).unwrap();
    Engine::new(m.model, Arc::new(m.tokenizer), cfg)
}

fn greedy12() -> SamplingParams {
    SamplingParams {
        max_tokens: Some(12),
        ignore_eos: true,
        skip_special_tokens: false,
        ..SamplingParams::greedy()
    }
}

fn prompts(g: &serde_json::Value) -> Vec<Vec<u32>> {
    g["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect()
}

#[test]
fn greedy_tokens_match_golden_alone_and_batched() {
    for name in ["llama-gqa", "qwen2-tied"] {
        let g = golden_json(name);
        let want: Vec<Vec<u32>> = g["greedy"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| u32s(&r["new_ids"]))
            .collect();
        let mut e = engine(name, EngineConfig::default());
        for (p, w) in prompts(&g).into_iter().zip(&want) {
            let c = e.generate(vec![(p, greedy12())]).unwrap().remove(0);
            assert_eq!(&c.token_ids(), w, "{name} alone");
            assert_eq!(c.finish_reason, FinishReason::Length);
        }
        // All three together, and again with a tiny token budget that splits prefills
        // across steps while other sequences decode.
        for budget in [512, 5] {
            let mut e = engine(
                name,
                EngineConfig {
                    max_batch_tokens: budget,
                    ..Default::default()
                },
            );
            let reqs = prompts(&g).into_iter().map(|p| (p, greedy12())).collect();
            let out = e.generate(reqs).unwrap();
            for (c, w) in out.iter().zip(&want) {
                assert_eq!(&c.token_ids(), w, "{name} batched, budget {budget}");
            }
        }
        // The text is the tokens' decode (HF decode, special tokens kept).
        let c = &engine(name, EngineConfig::default())
            .generate(vec![(prompts(&g)[1].clone(), greedy12())])
            .unwrap()[0];
        assert_eq!(
            c.text,
            g["greedy"]["results"][1]["new_text"].as_str().unwrap()
        );
    }
}

#[test]
fn continuous_batching_admits_requests_while_others_run() {
    let g = golden_json("llama-gqa");
    let want = u32s(&g["greedy"]["results"][0]["new_ids"]);
    let mut e = engine(
        "llama-gqa",
        EngineConfig {
            max_running: 2,
            ..Default::default()
        },
    );
    let p = prompts(&g);
    let a = e.add_request(p[0].clone(), greedy12()).unwrap();
    for _ in 0..4 {
        e.step().unwrap();
    }
    // b joins mid-flight; c waits for a free slot.
    let b = e.add_request(p[0].clone(), greedy12()).unwrap();
    let c = e.add_request(p[0].clone(), greedy12()).unwrap();
    e.step().unwrap();
    assert_eq!(e.num_running(), 2);
    assert_eq!(e.num_waiting(), 1);
    let mut toks: std::collections::HashMap<u64, Vec<u32>> = Default::default();
    let mut finished = vec![];
    toks.insert(a, want[..5].to_vec());
    toks.entry(b).or_default().push(want[0]);
    while e.has_work() {
        for u in e.step().unwrap() {
            if let Some(t) = u.token {
                toks.entry(u.id).or_default().push(t.id);
            }
            if u.finished.is_some() {
                finished.push(u.id);
            }
        }
    }
    assert_eq!(finished, vec![a, b, c]);
    for id in [a, b, c] {
        assert_eq!(toks[&id], want, "seq {id}");
    }
}

#[test]
fn seeded_sampling_is_independent_of_the_batch() {
    let g = golden_json("qwen2-tied");
    let p = prompts(&g);
    let params = |seed| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        seed: Some(seed),
        max_tokens: Some(16),
        ignore_eos: true,
        ..Default::default()
    };
    let mut e = engine("qwen2-tied", EngineConfig::default());
    let alone = e
        .generate(vec![(p[1].clone(), params(42))])
        .unwrap()
        .remove(0);
    let batched = e
        .generate(vec![
            (p[0].clone(), params(1)),
            (p[1].clone(), params(42)),
            (p[2].clone(), params(2)),
        ])
        .unwrap();
    assert_eq!(alone.token_ids(), batched[1].token_ids());
    let other = e
        .generate(vec![(p[1].clone(), params(43))])
        .unwrap()
        .remove(0);
    assert_ne!(
        alone.token_ids(),
        other.token_ids(),
        "a different seed samples differently"
    );
}

#[test]
fn prompt_logprobs_match_golden() {
    let g = golden_json("llama-gqa");
    for budget in [512, 7] {
        let mut e = engine(
            "llama-gqa",
            EngineConfig {
                max_batch_tokens: budget,
                ..Default::default()
            },
        );
        let params = SamplingParams {
            prompt_logprobs: true,
            top_logprobs: 3,
            logprobs: true,
            max_tokens: Some(1),
            ..SamplingParams::greedy()
        };
        let reqs = prompts(&g)
            .into_iter()
            .map(|p| (p, params.clone()))
            .collect();
        for (i, c) in e.generate(reqs).unwrap().into_iter().enumerate() {
            assert_eq!(
                c.prompt_logprobs.len(),
                c.prompt.len().max(prompts(&g)[i].len())
            );
            assert_eq!(c.prompt_logprobs[0].logprob, None);
            let got: Vec<f32> = c.prompt_logprobs[1..]
                .iter()
                .map(|p| p.logprob.unwrap())
                .collect();
            assert_close(
                &format!("prompt {i} budget {budget}"),
                &got,
                &f32s(&g["logprobs"][i]),
                1e-4,
            );
            for p in &c.prompt_logprobs[1..] {
                assert_eq!(p.top.len(), 3);
                assert!(p.top[0].1 >= p.top[1].1 && p.top[1].1 >= p.top[2].1);
            }
            // The generated token's log-prob is the greedy choice: the top-1 of its row.
            let t = &c.tokens[0];
            assert_eq!(t.top[0].0, t.id);
            assert!((t.top[0].1 - t.logprob).abs() < 1e-6);
        }
    }
}

#[test]
fn stop_strings_stop_token_ids_and_max_tokens() {
    let g = golden_json("llama-gqa");
    let p = prompts(&g)[0].clone();
    let want_ids = u32s(&g["greedy"]["results"][0]["new_ids"]);
    let want_text = g["greedy"]["results"][0]["new_text"].as_str().unwrap();
    let mut e = engine("llama-gqa", EngineConfig::default());

    let stop = SamplingParams {
        stop: vec!["tter".into()],
        ..greedy12()
    };
    let c = e.generate(vec![(p.clone(), stop)]).unwrap().remove(0);
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.text, want_text[..want_text.find("tter").unwrap()]);
    assert!(c.tokens.len() < 12);

    let ids = SamplingParams {
        stop_token_ids: vec![want_ids[3]],
        ..greedy12()
    };
    let c = e.generate(vec![(p.clone(), ids)]).unwrap().remove(0);
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.token_ids(), want_ids[..4]);

    let short = SamplingParams {
        max_tokens: Some(5),
        ..greedy12()
    };
    let c = e.generate(vec![(p.clone(), short)]).unwrap().remove(0);
    assert_eq!(c.finish_reason, FinishReason::Length);
    assert_eq!(c.token_ids(), want_ids[..5]);

    // min_tokens holds the stop id back.
    let min = SamplingParams {
        stop_token_ids: vec![want_ids[0]],
        min_tokens: 3,
        ..greedy12()
    };
    let c = e.generate(vec![(p, min)]).unwrap().remove(0);
    assert_ne!(c.tokens[0].id, want_ids[0]);
    assert!(c.tokens.len() >= 3);
}

#[test]
fn cancellation_frees_the_slot_at_the_next_step() {
    let g = golden_json("llama-gqa");
    let mut e = engine("llama-gqa", EngineConfig::default());
    let a = e.add_request(prompts(&g)[0].clone(), greedy12()).unwrap();
    let b = e.add_request(prompts(&g)[1].clone(), greedy12()).unwrap();
    e.step().unwrap();
    assert_eq!(e.num_running(), 2);
    let held = e.kv_cache_bytes();
    assert!(e.cancel(a));
    let ups = e.step().unwrap();
    assert!(ups
        .iter()
        .any(|u| u.id == a && u.finished == Some(FinishReason::Cancelled)));
    assert!(ups.iter().any(|u| u.id == b && u.token.is_some()));
    assert_eq!(e.num_running(), 1);
    assert!(e.kv_cache_bytes() < held);
    assert!(!e.cancel(12345));
}

#[test]
fn bad_requests_are_clear_errors() {
    let mut e = engine("llama-gqa", EngineConfig::default());
    // The golden models have 256 positions.
    let err = e
        .add_request(vec![5; 300], SamplingParams::greedy())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContextOverflow {
                tokens: 300,
                max: 256,
                ..
            }
        ),
        "{err}"
    );
    let err = e
        .add_request(
            vec![5; 250],
            SamplingParams {
                max_tokens: Some(10),
                ..SamplingParams::greedy()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    let err = e.add_request(vec![], SamplingParams::greedy()).unwrap_err();
    assert!(err.to_string().contains("prompt"), "{err}");
    let err = e
        .add_request(vec![9999], SamplingParams::greedy())
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    for (bad, param) in [
        (
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_logprobs: 21,
                ..Default::default()
            },
            "top_logprobs",
        ),
        (
            SamplingParams {
                max_tokens: Some(0),
                ..Default::default()
            },
            "max_tokens",
        ),
        (
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
            "stop",
        ),
        (
            SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
            "presence_penalty",
        ),
    ] {
        match e.add_request(vec![5], bad).unwrap_err() {
            Error::InvalidRequest { param: p, .. } => assert_eq!(p, param),
            other => panic!("{other}"),
        }
    }
    assert!(!e.has_work(), "rejected requests leave nothing behind");
}

#[test]
fn prefix_cache_reuses_shared_prompt_prefixes_exactly() {
    let g = golden_json("llama-gqa");
    let p = prompts(&g);
    let shared: Vec<u32> = p[2][..60].to_vec();
    let b: Vec<u32> = shared.iter().chain(&p[1]).copied().collect();
    let params = SamplingParams {
        max_tokens: Some(12),
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let mut cold = engine(
        "llama-gqa",
        EngineConfig {
            prefix_cache_tokens: 0,
            ..Default::default()
        },
    );
    let want_a = cold
        .generate(vec![(p[2].clone(), params.clone())])
        .unwrap()
        .remove(0);
    let want_b = cold
        .generate(vec![(b.clone(), params.clone())])
        .unwrap()
        .remove(0);
    assert_eq!(cold.take_prefix_hit_tokens(), 0);

    let mut warm = engine("llama-gqa", EngineConfig::default());
    let a = warm
        .generate(vec![(p[2].clone(), params.clone())])
        .unwrap()
        .remove(0);
    assert_eq!(warm.take_prefix_hit_tokens(), 0, "nothing cached yet");
    assert_eq!(a.token_ids(), want_a.token_ids());
    assert!(warm.prefix_cache_tokens() >= p[2].len());
    // B shares A's first 60 tokens: those come from the cache, and the output is unchanged.
    let got_b = warm
        .generate(vec![(b.clone(), params.clone())])
        .unwrap()
        .remove(0);
    assert_eq!(warm.take_prefix_hit_tokens(), 60);
    assert_eq!(got_b.token_ids(), want_b.token_ids());
    for (x, y) in got_b.tokens.iter().zip(&want_b.tokens) {
        assert!((x.logprob - y.logprob).abs() < 1e-5);
    }
    // The same prompt again reuses all but its last token.
    let again = warm
        .generate(vec![(p[2].clone(), params.clone())])
        .unwrap()
        .remove(0);
    assert_eq!(warm.take_prefix_hit_tokens(), p[2].len() - 1);
    assert_eq!(again.token_ids(), want_a.token_ids());
    // Prompt log-probs need every row computed: no reuse.
    let echo = SamplingParams {
        prompt_logprobs: true,
        ..params
    };
    let c = warm.generate(vec![(p[2].clone(), echo)]).unwrap().remove(0);
    assert_eq!(warm.take_prefix_hit_tokens(), 0);
    assert_eq!(c.prompt_logprobs.len(), p[2].len());
}

/// Prefill chunks go to the prompt with the fewest tokens left first, so a short prompt admitted behind a long one
/// gets its first token in the first step instead of after every chunk of the long one; and a prompt passed over
/// four steps in a row goes first, so a stream of short prompts cannot starve it.
#[test]
fn short_prompts_prefill_first_and_long_ones_are_not_starved() {
    let mut e = engine(
        "llama-gqa",
        EngineConfig {
            max_batch_tokens: 8,
            prefix_cache_tokens: 0,
            ..Default::default()
        },
    );
    let long: Vec<u32> = (0..40).map(|i| 5 + (i * 7) % 90).collect();
    let short = |k: u32, len: u32| (0..len).map(|i| 3 + (k * 5 + i) % 90).collect::<Vec<u32>>();
    let one = SamplingParams {
        max_tokens: Some(1),
        ..greedy12()
    };
    let long_id = e.add_request(long, one.clone()).unwrap();
    let first_short = e.add_request(short(0, 5), one.clone()).unwrap();
    let updates = e.step().unwrap();
    assert!(
        updates
            .iter()
            .any(|u| u.id == first_short && u.token.is_some()),
        "the 5-token prompt is answered in the first step, not behind the 40-token one"
    );
    // Then a new 8-token prompt every step: each would take the whole budget, so shortest-first alone would never
    // give the long prompt (37 tokens left) another token.
    let mut long_done_at = None;
    for step in 1..60 {
        e.add_request(short(step, 8), one.clone()).unwrap();
        let updates = e.step().unwrap();
        if updates.iter().any(|u| u.id == long_id && u.token.is_some()) {
            long_done_at = Some(step);
            break;
        }
    }
    let at = long_done_at.expect("the long prompt starved behind a stream of short ones");
    // Passed over 4 steps, then first for an 8-token chunk: 37 tokens in 5 chunks, the last at step 25.
    assert!(
        (20..=26).contains(&at),
        "the long prompt finished at step {at}"
    );
}
