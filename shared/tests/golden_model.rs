//! The candle model against transformers' outputs for the tiny golden models.

mod common;
use common::*;
use safeloop_shared::model::{OutputRows, SeqInput};
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions};

const TOL: f32 = 1e-4;
const CAUSAL: [&str; 2] = ["llama-gqa", "qwen2-tied"];

#[test]
fn tokenizer_ids_match_golden() {
    for name in CAUSAL {
        let g = golden_json(name);
        let m = load_causal_lm(&golden_dir(name), &LoadOptions::default()).unwrap();
        for (p, ids) in g["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(g["input_ids"].as_array().unwrap())
        {
            let got = m.tokenizer.encode(p.as_str().unwrap(), true).unwrap();
            assert_eq!(got, u32s(ids), "{name}: ids for {p}");
        }
    }
}

#[test]
fn last_position_logits_and_logprobs_match_golden() {
    for opts in both_paths() {
        for name in CAUSAL {
            let g = golden_json(name);
            let m = load_causal_lm(&golden_dir(name), &opts).unwrap();
            for (i, ids) in g["input_ids"].as_array().unwrap().iter().enumerate() {
                let ids = u32s(ids);
                let mut inp = [SeqInput::causal(&ids, None, OutputRows::All)];
                let logits = m.model.forward(&mut inp).unwrap().remove(0).unwrap();
                let rows = logits.to_vec2::<f32>().unwrap();
                assert_close(
                    &format!("{name} prompt {i} last logits"),
                    rows.last().unwrap(),
                    &f32s(&g["logits_last"][i]),
                    TOL,
                );
                let lp: Vec<f32> = (0..ids.len() - 1)
                    .map(|t| log_prob(&rows[t], ids[t + 1]))
                    .collect();
                assert_close(
                    &format!("{name} prompt {i} logprobs"),
                    &lp,
                    &f32s(&g["logprobs"][i]),
                    TOL,
                );
            }
        }
    }
}

#[test]
fn left_padded_batch_matches_golden() {
    for opts in both_paths() {
        for name in CAUSAL {
            let g = golden_json(name);
            let m = load_causal_lm(&golden_dir(name), &opts).unwrap();
            let ids: Vec<Vec<u32>> = g["batch"]["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(u32s)
                .collect();
            let masks: Vec<Vec<bool>> = g["batch"]["attention_mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| u32s(r).iter().map(|&x| x == 1).collect())
                .collect();
            let mut inputs: Vec<SeqInput> = ids
                .iter()
                .zip(&masks)
                .map(|(i, m)| SeqInput::padded(i, m, OutputRows::Last))
                .collect();
            // Positions follow transformers: clamp(cumsum(mask) - 1, 0).
            for (inp, pos) in inputs
                .iter()
                .zip(g["batch"]["position_ids"].as_array().unwrap())
            {
                assert_eq!(inp.positions, u32s(pos));
            }
            let out = m.model.forward(&mut inputs).unwrap();
            for (b, o) in out.into_iter().enumerate() {
                let row = o.unwrap().to_vec2::<f32>().unwrap().remove(0);
                assert_close(
                    &format!("{name} batch row {b}"),
                    &row,
                    &f32s(&g["batch_logits_last"][b]),
                    TOL,
                );
            }
        }
    }
}

#[test]
fn chat_template_text_ids_and_logits_match_golden() {
    for opts in both_paths() {
        for name in CAUSAL {
            let g = golden_json(name);
            let m = load_causal_lm(&golden_dir(name), &opts).unwrap();
            let msgs: Vec<ChatMessage> =
                serde_json::from_value(g["chat"]["messages"].clone()).unwrap();
            let add = g["chat"]["add_generation_prompt"].as_bool().unwrap();
            let text = m.tokenizer.apply_chat_template(&msgs, add).unwrap();
            assert_eq!(text, g["chat"]["text"].as_str().unwrap(), "{name}");
            let ids = m.tokenizer.encode_chat(&msgs, add).unwrap();
            assert_eq!(ids, u32s(&g["chat"]["input_ids"]), "{name}");
            let mut inp = [SeqInput::causal(&ids, None, OutputRows::Last)];
            let row = m
                .model
                .forward(&mut inp)
                .unwrap()
                .remove(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .remove(0);
            assert_close(
                &format!("{name} chat logits"),
                &row,
                &f32s(&g["chat"]["logits_last"]),
                TOL,
            );
        }
    }
}

#[test]
fn incremental_kv_cache_equals_full_forward() {
    // Prefill in uneven chunks, then one token at a time: same logits as the full pass.
    for opts in both_paths() {
        let g = golden_json("llama-gqa");
        let m = load_causal_lm(&golden_dir("llama-gqa"), &opts).unwrap();
        let ids = u32s(&g["input_ids"][2]);
        let mut cache = m.model.new_cache();
        let mut got = Vec::new();
        let mut t = 0;
        for chunk in [1usize, 7, 30, 70] {
            let end = (t + chunk).min(ids.len());
            let mut inp = [SeqInput::causal(
                &ids[t..end],
                Some(&mut cache),
                OutputRows::All,
            )];
            got.extend(
                m.model
                    .forward(&mut inp)
                    .unwrap()
                    .remove(0)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
            );
            t = end;
        }
        while t < ids.len() {
            let mut inp = [SeqInput::causal(
                &ids[t..t + 1],
                Some(&mut cache),
                OutputRows::Last,
            )];
            got.extend(
                m.model
                    .forward(&mut inp)
                    .unwrap()
                    .remove(0)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
            );
            t += 1;
        }
        assert_eq!(cache.len(), ids.len());
        assert_close(
            "cached last logits",
            got.last().unwrap(),
            &f32s(&g["logits_last"][2]),
            TOL,
        );
        let lp: Vec<f32> = (0..ids.len() - 1)
            .map(|t| log_prob(&got[t], ids[t + 1]))
            .collect();
        assert_close("cached logprobs", &lp, &f32s(&g["logprobs"][2]), TOL);
    }
}

#[test]
fn rope_inv_freq_matches_transformers_and_llama3_scaling_follows_its_formula() {
    use candle_core::safetensors::load;
    let tensors = load(
        golden_dir("llama-gqa").join("golden_tensors.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = tensors["rope.inv_freq"].to_vec1::<f32>().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir("llama-gqa").join("config.json")).unwrap(),
    )
    .unwrap();
    let plain = safeloop_shared::ModelConfig::from_hf_json(&cfg, "config.json".as_ref()).unwrap();
    let base = safeloop_shared::rope::inv_freq(&plain);
    assert_close("default inv_freq", &base, &want, 1e-9);

    // llama3 scaling, given the 5.x way and the 4.x way.
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let c5 = safeloop_shared::ModelConfig::from_hf_json(&cfg, "config.json".as_ref()).unwrap();
    cfg.as_object_mut().unwrap().remove("rope_parameters");
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let c4 = safeloop_shared::ModelConfig::from_hf_json(&cfg, "config.json".as_ref()).unwrap();
    assert_eq!(c4.rope_scaling, c5.rope_scaling);
    let got = safeloop_shared::rope::inv_freq(&c4);
    // The golden README's statement of transformers' rule: keep if wl < 64/4, divide by 8 if
    // wl > 64/1, else blend with s = (64/wl - 1)/(4 - 1).
    let mut branches = [0; 3];
    for (g, &b) in got.iter().zip(&want) {
        let wl = 2.0 * std::f64::consts::PI / b as f64;
        let e = if wl < 16.0 {
            branches[0] += 1;
            b as f64
        } else if wl > 64.0 {
            branches[1] += 1;
            b as f64 / 8.0
        } else {
            branches[2] += 1;
            let s = (64.0 / wl - 1.0) / 3.0;
            (1.0 - s) * b as f64 / 8.0 + s * b as f64
        };
        assert!((*g as f64 - e).abs() < 1e-7 * e.max(1e-3), "{g} vs {e}");
    }
    assert!(
        branches.iter().all(|&n| n > 0),
        "every branch exercised: {branches:?}"
    );

    // linear scaling divides every frequency.
    cfg["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    let lin = safeloop_shared::ModelConfig::from_hf_json(&cfg, "config.json".as_ref()).unwrap();
    let got = safeloop_shared::rope::inv_freq(&lin);
    let halved: Vec<f32> = want.iter().map(|x| x / 2.0).collect();
    assert_close("linear inv_freq", &got, &halved, 1e-9);
}
