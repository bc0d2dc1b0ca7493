//! Model directories in every layout the loader accepts, and the bad ones it must reject
//! with an error that names the file, field or tensor.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use safeloop_shared::model::{OutputRows, SeqInput};
use safeloop_shared::{load_causal_lm, load_score_model, Error, LoadOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Copies a golden model directory into a temp dir (without its weights when `weights` is false).
fn copy_dir(name: &str, weights: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(golden_dir(name)).unwrap() {
        let e = e.unwrap();
        let f = e.file_name();
        if !weights && f == "model.safetensors" {
            continue;
        }
        std::fs::copy(e.path(), dst.join(&f)).unwrap();
    }
    (tmp, dst)
}

fn golden_weights(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden_dir(name).join("model.safetensors"), &Device::Cpu)
        .unwrap()
}

fn last_logits(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let m = load_causal_lm(dir, &LoadOptions::default()).unwrap();
    let mut inp = [SeqInput::causal(ids, None, OutputRows::Last)];
    m.model
        .forward(&mut inp)
        .unwrap()
        .remove(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .remove(0)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn sharded_safetensors_load_like_the_single_file() {
    let g = golden_json("llama-gqa");
    let ids = u32s(&g["input_ids"][1]);
    let (_tmp, dir) = copy_dir("llama-gqa", false);
    let mut names: Vec<(String, Tensor)> = golden_weights("llama-gqa").into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let half = names.len() / 2;
    let mut index = serde_json::Map::new();
    for (shard, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let map: HashMap<String, Tensor> = part.iter().cloned().collect();
        candle_core::safetensors::save(&map, dir.join(&file)).unwrap();
        for (n, _) in part.iter() {
            index.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": index}).to_string(),
    )
    .unwrap();
    assert_close(
        "sharded",
        &last_logits(&dir, &ids),
        &f32s(&g["logits_last"][1]),
        1e-4,
    );
}

#[test]
fn half_precision_weights_load_and_stay_close() {
    let g = golden_json("qwen2-tied");
    let ids = u32s(&g["input_ids"][0]);
    for dtype in [DType::F16, DType::BF16] {
        let (_tmp, dir) = copy_dir("qwen2-tied", false);
        let map: HashMap<String, Tensor> = golden_weights("qwen2-tied")
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
        let got = last_logits(&dir, &ids);
        // Rounding the weights to 8 (bf16) or 11 (f16) mantissa bits moves logits a little.
        let tol = if dtype == DType::BF16 { 0.15 } else { 0.02 };
        assert_close(
            &format!("{dtype:?} weights"),
            &got,
            &f32s(&g["logits_last"][0]),
            tol,
        );
        // And a bf16 compute dtype works too.
        let m = load_causal_lm(
            &dir,
            &LoadOptions {
                dtype: DType::BF16,
                ..Default::default()
            },
        )
        .unwrap();
        let mut inp = [SeqInput::causal(&ids, None, OutputRows::Last)];
        let l = m.model.forward(&mut inp).unwrap().remove(0).unwrap();
        assert_eq!(l.dtype(), DType::F32);
        assert_eq!(l.dims(), &[1, 512]);
    }
}

#[test]
fn mistral_config_and_sliding_window() {
    let g = golden_json("llama-gqa");
    let ids = u32s(&g["input_ids"][2]);
    let (_tmp, dir) = copy_dir("llama-gqa", true);
    edit_config(&dir, |c| {
        c["model_type"] = "mistral".into();
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        c["sliding_window"] = 4096.into();
    });
    assert_close(
        "mistral, window wider than the prompt",
        &last_logits(&dir, &ids),
        &f32s(&g["logits_last"][2]),
        1e-4,
    );
    edit_config(&dir, |c| c["sliding_window"] = 16.into());
    let windowed = last_logits(&dir, &ids);
    assert!(
        max_abs_diff(&windowed, &f32s(&g["logits_last"][2])) > 1e-3,
        "a 16-token window changes a 113-token prompt"
    );
    // Within the window nothing changes.
    let short = &ids[..10];
    let full_dir = golden_dir("llama-gqa");
    assert_close(
        "short prompt",
        &last_logits(&dir, short),
        &last_logits(&full_dir, short),
        1e-5,
    );
}

#[test]
fn missing_path_is_an_io_error_naming_it() {
    let err = load_causal_lm(Path::new("/nonexistent/model"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}

#[test]
fn missing_tokenizer_or_weights_name_the_file() {
    let (_tmp, dir) = copy_dir("llama-gqa", false);
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let (_tmp2, dir) = copy_dir("llama-gqa", true);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let (_tmp, dir) = copy_dir("llama-gqa", true);
    let p = dir.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 1000).unwrap();
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // A file that is not safetensors at all.
    std::fs::write(&p, b"not a safetensors file").unwrap();
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_dir("llama-gqa", false);
    let mut map = golden_weights("llama-gqa");
    map.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    // An untied model without lm_head.
    let mut map = golden_weights("llama-gqa");
    map.remove("lm_head.weight");
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("lm_head.weight"), "{err}");
}

#[test]
fn wrong_shapes_and_bad_config_fields_are_named() {
    let (_tmp, dir) = copy_dir("llama-gqa", true);
    edit_config(&dir, |c| c["intermediate_size"] = 100.into());
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::TensorShape { .. }), "{err}");
    edit_config(&dir, |c| {
        c["intermediate_size"] = 176.into();
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
    edit_config(&dir, |c| {
        c["hidden_size"] = 64.into();
        c["num_key_value_heads"] = 3.into();
    });
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");
    edit_config(&dir, |c| {
        c["num_key_value_heads"] = 2.into();
        c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    });
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("rope_parameters.rope_type"),
        "{err}"
    );
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn unsupported_architecture_is_refused() {
    let (_tmp, dir) = copy_dir("llama-gqa", true);
    edit_config(&dir, |c| {
        c["model_type"] = "gpt2".into();
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    });
    let err = load_causal_lm(&dir, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("gpt2"), "{err}");
}

#[test]
fn wrong_sha256_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("model.gguf");
    std::fs::write(&p, b"GGUF but not really").unwrap();
    let opts = LoadOptions {
        sha256: Some("00".repeat(32)),
        ..Default::default()
    };
    let err = load_causal_lm(&p, &opts).unwrap_err();
    assert!(matches!(err, Error::Sha256Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("model.gguf"), "{err}");
    // With no pin, the same file fails as an invalid GGUF, not a panic.
    let err = load_causal_lm(&p, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Gguf { .. }), "{err}");
}

#[test]
fn prompt_longer_than_the_context_is_an_error_in_the_model_too() {
    let m = load_causal_lm(&golden_dir("llama-gqa"), &LoadOptions::default()).unwrap();
    let ids = vec![5u32; 300];
    let mut inp = [SeqInput::causal(&ids, None, OutputRows::Last)];
    let err = m.model.forward(&mut inp).unwrap_err();
    assert!(
        matches!(err, Error::ContextOverflow { max: 256, .. }),
        "{err}"
    );
}

#[test]
fn score_pooling_is_read_and_a_bad_value_is_named() {
    let (_tmp, dir) = copy_dir("llama-gqa-score", true);
    let seq: Vec<u32> = vec![1, 5, 9, 12, 7];
    let end = load_score_model(&dir, &LoadOptions::default())
        .unwrap()
        .model
        .score(std::slice::from_ref(&seq))
        .unwrap()
        .remove(0);
    assert_eq!(
        end.end,
        *end.per_token.last().unwrap(),
        "default: the last token"
    );
    edit_config(&dir, |c| c["score_pooling"] = "mean".into());
    let mean = load_score_model(&dir, &LoadOptions::default())
        .unwrap()
        .model
        .score(std::slice::from_ref(&seq))
        .unwrap()
        .remove(0);
    let want = mean.per_token.iter().map(|r| r[0] as f64).sum::<f64>() / seq.len() as f64;
    assert!(
        (mean.end[0] as f64 - want).abs() < 1e-5,
        "{:?} vs {want}",
        mean.end
    );
    edit_config(&dir, |c| c["score_pooling"] = "max".into());
    let Err(err) = load_score_model(&dir, &LoadOptions::default()) else {
        panic!("an unknown pooling is refused")
    };
    assert!(err.to_string().contains("score_pooling"), "{err}");
}
