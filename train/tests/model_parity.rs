//! The tch model against transformers (the golden folders, within 1e-4) and against the candle model on the same
//! directory; and a checkpoint written by the trainer served by candle with the same logits.

use safeloop_shared::config::ScorePooling;
use safeloop_shared::model::{OutputRows, SeqInput};
use safeloop_shared::{load_causal_lm, load_score_model, LoadOptions};
use safeloop_train::model::{
    copy_tokenizer_files, save_hf_dir, Batch, HeadKind, Model, SaveOptions,
};
use serde_json::Value;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn golden_dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")).join(name)
}

fn golden_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir(name).join("golden.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn floats(v: &Value) -> Tensor {
    let xs: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_slice(&xs)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn candle_logits(dir: &std::path::Path, tokens: &[i64]) -> Tensor {
    let m = load_causal_lm(dir, &LoadOptions::default()).unwrap();
    let toks: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let mut inp = [SeqInput::causal(&toks, None, OutputRows::All)];
    let rows = m
        .model
        .forward(&mut inp)
        .unwrap()
        .remove(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1])
}

#[test]
fn causal_models_match_transformers_and_candle() {
    for name in ["llama-gqa", "qwen2-tied"] {
        let g = golden_json(name);
        let model = Model::load(&golden_dir(name), None, Device::Cpu).unwrap();
        for (i, p) in g["input_ids"].as_array().unwrap().iter().enumerate() {
            let p = ids(p);
            let batch = Batch::pad(std::slice::from_ref(&p), 3, false, Device::Cpu);
            let logits = tch::no_grad(|| model.forward(&batch)).get(0);
            let last = logits.get(p.len() as i64 - 1);
            let d = max_diff(&last, &floats(&g["logits_last"][i]));
            assert!(
                d < TOL,
                "{name} prompt {i}: last logits differ from transformers by {d}"
            );
            let lp = tch::no_grad(|| model.token_logprobs(&batch)).get(0);
            let d = max_diff(&lp, &floats(&g["logprobs"][i]));
            assert!(d < TOL, "{name} prompt {i}: logprobs differ by {d}");
            let d = max_diff(&logits, &candle_logits(&golden_dir(name), &p));
            assert!(
                d < TOL,
                "{name} prompt {i}: tch and candle logits differ by {d}"
            );
        }
        // Left-padded batch: positions from the mask, pads masked out.
        let rows: Vec<Vec<i64>> = g["batch"]["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let mask: Vec<Vec<i64>> = g["batch"]["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let batch = Batch {
            ids: Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1]),
            mask: Tensor::from_slice(&mask.concat()).view([rows.len() as i64, -1]),
        };
        let logits = tch::no_grad(|| model.forward(&batch));
        let l = logits.size()[1];
        for b in 0..rows.len() {
            let d = max_diff(
                &logits.get(b as i64).get(l - 1),
                &floats(&g["batch_logits_last"][b]),
            );
            assert!(d < TOL, "{name} batch row {b}: differs by {d}");
        }
    }
}

#[test]
fn score_model_matches_transformers() {
    let g = golden_json("llama-gqa-score");
    let model = Model::load(&golden_dir("llama-gqa-score"), None, Device::Cpu).unwrap();
    let rows: Vec<Vec<i64>> = g["input_ids"].as_array().unwrap().iter().map(ids).collect();
    let mask: Vec<Vec<i64>> = g["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let batch = Batch {
        ids: Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1]),
        mask: Tensor::from_slice(&mask.concat()).view([rows.len() as i64, -1]),
    };
    let (scores, end) = tch::no_grad(|| model.end_scores(&batch));
    let d = max_diff(&end, &floats(&g["end_scores"]));
    assert!(d < TOL, "end scores differ by {d}");
    assert_eq!(
        Vec::<i64>::try_from(&batch.end_index()).unwrap(),
        ids(&g["end_index"])
    );
    for (b, m) in mask.iter().enumerate() {
        let n = m.iter().sum::<i64>();
        let want = floats(&g["scores"][b]).narrow(0, 0, n);
        let d = max_diff(&scores.get(b as i64).narrow(0, 0, n), &want);
        assert!(d < TOL, "row {b} per-token scores differ by {d}");
    }
}

#[test]
fn trainer_checkpoint_is_served_by_candle_with_the_same_logits() {
    let tmp = std::env::temp_dir().join(format!("safeloop-parity-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for name in ["llama-gqa", "qwen2-tied"] {
        let model = Model::load(&golden_dir(name), None, Device::Cpu).unwrap();
        // Move the weights away from the golden ones so the check is about the save, not the source.
        tch::no_grad(|| {
            for (_, mut v) in model.vs.variables() {
                let _ = v.g_add_(&(v.randn_like() * 0.01));
            }
        });
        let out = tmp.join(name);
        save_hf_dir(&model, &out, &SaveOptions::default()).unwrap();
        copy_tokenizer_files(&golden_dir(name), &out).unwrap();
        let p: Vec<i64> = ids(&golden_json(name)["input_ids"][1]);
        let batch = Batch::pad(std::slice::from_ref(&p), 3, false, Device::Cpu);
        let ours = tch::no_grad(|| model.forward(&batch)).get(0);
        let d = max_diff(&ours, &candle_logits(&out, &p));
        assert!(
            d < TOL,
            "{name}: candle serving the saved checkpoint differs by {d}"
        );
    }
    // A score model saved from a policy (fresh head) round-trips through candle's score loader too.
    let mut model = Model::load(
        &golden_dir("llama-gqa"),
        Some(HeadKind::Score {
            score_dim: 1,
            bias: true,
        }),
        Device::Cpu,
    )
    .unwrap();
    model.freeze_lower_layers(1);
    let out = tmp.join("score");
    save_hf_dir(
        &model,
        &out,
        &SaveOptions {
            score_type: Some("cost".into()),
            max_shard_bytes: 100_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        out.join("model.safetensors.index.json").is_file(),
        "small shard limit writes an index"
    );
    copy_tokenizer_files(&golden_dir("llama-gqa"), &out).unwrap();
    let p: Vec<i64> = ids(&golden_json("llama-gqa")["input_ids"][0]);
    let batch = Batch::pad(std::slice::from_ref(&p), 3, false, Device::Cpu);
    let (_, ours) = tch::no_grad(|| model.end_scores(&batch));
    let c = load_score_model(&out, &LoadOptions::default()).unwrap();
    let toks: Vec<u32> = p.iter().map(|&t| t as u32).collect();
    let mut inp = [SeqInput::causal(&toks, None, OutputRows::Last)];
    let theirs = c
        .model
        .forward(&mut inp)
        .unwrap()
        .remove(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = (ours.double_value(&[0]) - theirs[0] as f64).abs();
    assert!(d < TOL, "score model: candle differs by {d}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaModelForScore");
    assert_eq!(cfg["score_type"], "cost");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn lora_adapters_are_folded_into_the_saved_weights() {
    use safeloop_train::model::{load_adapter, save_adapter, LoraConfig};
    let tmp = std::env::temp_dir().join(format!("safeloop-lora-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut model = Model::load(&golden_dir("llama-gqa"), None, Device::Cpu).unwrap();
    model.add_lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        from_layer: 1,
    });
    // Non-zero adapters (B starts at zero), so folding them in matters.
    tch::no_grad(|| {
        for (n, mut v) in model.vs.variables() {
            if n.contains("lora_B") {
                v.copy_(&(v.randn_like() * 0.05));
            }
        }
    });
    let p: Vec<i64> = ids(&golden_json("llama-gqa")["input_ids"][1]);
    let batch = Batch::pad(std::slice::from_ref(&p), 3, false, Device::Cpu);
    let ours = tch::no_grad(|| model.forward(&batch)).get(0);
    let base = tch::no_grad(|| {
        Model::load(&golden_dir("llama-gqa"), None, Device::Cpu)
            .unwrap()
            .forward(&batch)
    })
    .get(0);
    assert!(
        max_diff(&ours, &base) > 1e-3,
        "the adapters change the output"
    );
    // Saved directory: candle and tch both see the adapted model.
    let out = tmp.join("merged");
    save_hf_dir(&model, &out, &SaveOptions::default()).unwrap();
    copy_tokenizer_files(&golden_dir("llama-gqa"), &out).unwrap();
    let d = max_diff(&ours, &candle_logits(&out, &p));
    assert!(d < TOL, "candle on the saved LoRA model differs by {d}");
    let reloaded = Model::load(&out, None, Device::Cpu).unwrap();
    let d = max_diff(&ours, &tch::no_grad(|| reloaded.forward(&batch)).get(0));
    assert!(d < TOL, "tch reload differs by {d}");
    // Adapter only, rebuilt on the base.
    save_adapter(
        &model,
        &tmp.join("adapter"),
        Kind::Float,
        serde_json::json!({}),
    )
    .unwrap();
    let rebuilt =
        load_adapter(&golden_dir("llama-gqa"), &tmp.join("adapter"), Device::Cpu).unwrap();
    let d = max_diff(&ours, &tch::no_grad(|| rebuilt.forward(&batch)).get(0));
    assert!(d < TOL, "base + adapter differs by {d}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn mean_pooled_scores_match_between_trainer_and_candle() {
    let tmp = std::env::temp_dir().join(format!("safeloop-pool-{}", std::process::id()));
    let mut model = Model::load(
        &golden_dir("llama-gqa"),
        Some(HeadKind::Score {
            score_dim: 1,
            bias: true,
        }),
        Device::Cpu,
    )
    .unwrap();
    model.set_pooling(ScorePooling::Mean);
    save_hf_dir(
        &model,
        &tmp,
        &SaveOptions {
            score_type: Some("cost".into()),
            ..Default::default()
        },
    )
    .unwrap();
    copy_tokenizer_files(&golden_dir("llama-gqa"), &tmp).unwrap();
    let g = golden_json("llama-gqa");
    let rows: Vec<Vec<i64>> = (0..2).map(|i| ids(&g["input_ids"][i])).collect();
    let short: Vec<i64> = rows[1][..rows[1].len() / 2].to_vec();
    let rows = vec![rows[0].clone(), short];
    // Right-padded batch of two lengths: the mean covers real tokens only.
    let batch = Batch::pad(&rows, 3, false, Device::Cpu);
    let (per_token, ours) = tch::no_grad(|| model.end_scores(&batch));
    let c = load_score_model(&tmp, &LoadOptions::default()).unwrap();
    let seqs: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let theirs = c.model.score(&seqs).unwrap();
    for (b, r) in rows.iter().enumerate() {
        let want = per_token
            .get(b as i64)
            .narrow(0, 0, r.len() as i64)
            .mean(Kind::Double)
            .double_value(&[]);
        let got = ours.double_value(&[b as i64]);
        assert!(
            (got - want).abs() < 1e-5,
            "row {b}: pooled {got} vs mean {want}"
        );
        let d = (got - theirs[b].end[0] as f64).abs();
        assert!(
            d < TOL,
            "row {b}: candle's mean-pooled score differs by {d}"
        );
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["score_pooling"], "mean");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn lower_and_upper_halves_compose_to_the_whole_model() {
    let mut model = Model::load(&golden_dir("llama-gqa-score"), None, Device::Cpu).unwrap();
    model.freeze_lower_layers(1);
    let g = golden_json("llama-gqa-score");
    let rows: Vec<Vec<i64>> = (0..2).map(|i| ids(&g["input_ids"][i])).collect();
    let batch = Batch::pad(&rows, 3, false, Device::Cpu);
    let (_, whole) = tch::no_grad(|| model.end_scores(&batch));
    let lower = model.lower_hidden(&batch);
    // Through f16, as the activation cache stores it.
    let lower16 = lower.to_kind(Kind::Half).to_kind(Kind::Float);
    let (_, split) = tch::no_grad(|| model.end_scores_upper(&lower, &batch.mask));
    let (_, split16) = tch::no_grad(|| model.end_scores_upper(&lower16, &batch.mask));
    assert!(max_diff(&whole, &split) < 1e-6, "lower + upper ≠ whole");
    assert!(
        max_diff(&whole, &split16) < 1e-2,
        "f16 states move the score by {}",
        max_diff(&whole, &split16)
    );
}
