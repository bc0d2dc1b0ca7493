//! `safeloop-train train-score` / `eval-score` / `merge` through the command line, on the tiny golden model.

use safeloop_tests::{
    data_file as data, fresh_tmp as tmp, golden_dir, jsonl_head as head, path_str as s,
    run_train as run,
};
use serde_json::Value;
use std::path::Path;

/// `merge`: the golden base + `adapter` into `out`.
fn merge(adapter: &Path, out: &Path) {
    let (ok, _, err) = run(&[
        "merge",
        "--base",
        s(&golden_dir("llama-gqa")),
        "--adapter",
        s(adapter),
        "--out",
        s(out),
    ]);
    assert!(ok, "merge failed: {err}");
}

/// A cost run on the tiny model from `file` that must be refused; returns its error output.
fn refused_cost_run(file: &Path, out: &Path, extra: &[&str]) -> String {
    let golden = golden_dir("llama-gqa");
    let mut args = vec![
        "train-score",
        "--model",
        s(&golden),
        "--kind",
        "cost",
        "--data",
        s(file),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    let (ok, _, err) = run(&args);
    assert!(!ok, "train-score {extra:?} on {} succeeded", file.display());
    err
}

fn eval_line(model: &Path, file: &Path, max_len: &str) -> Value {
    // Evaluate on the same truncation the model was trained with.
    let (ok, out, err) = run(&[
        "eval-score",
        "--model",
        s(model),
        "--data",
        s(file),
        "--max-length",
        max_len,
    ]);
    assert!(ok, "eval-score failed: {err}");
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

#[test]
fn tiny_cost_model_overfits_a_small_preference_set() {
    let dir = tmp("overfit");
    let pairs = dir.join("pairs.jsonl");
    head(&data("pku_saferlhf_dev.jsonl"), 12, &pairs);
    let out = dir.join("run");
    let (ok, stdout, err) = run(&[
        "train-score",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--kind",
        "cost",
        "--data",
        s(&pairs),
        "--eval",
        s(&pairs),
        "--out",
        s(&out),
        "--epochs",
        "20",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--warmup-ratio",
        "0",
        "--lr-scheduler",
        "constant",
        "--max-length",
        "96",
        "--seed",
        "7",
    ]);
    assert!(ok, "train-score failed: {err}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["train"]["n_pairs"], 12);
    let e = eval_line(&out.join("model"), &pairs, "96");
    assert_eq!(e["pairs"], 12);
    assert_eq!(e["ranking_accuracy"], 1.0, "{e}");
    assert_eq!(e["sign_accuracy"], 1.0, "{e}");
    // The metrics file has one line per step and one per evaluation.
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"eval\"")).count(), 20);
    assert!(lines.lines().filter(|l| l.contains("\"step\"")).count() >= 20 * 3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tiny_reward_model_overfits_hh_pairs_and_lora_adapter_round_trips() {
    let dir = tmp("reward");
    let pairs = dir.join("hh.jsonl");
    head(&data("hh_rlhf_dev.jsonl"), 10, &pairs);
    let out = dir.join("run");
    let adapter = dir.join("adapter");
    let (ok, _, err) = run(&[
        "train-score",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--kind",
        "reward",
        "--data",
        s(&pairs),
        "--out",
        s(&out),
        "--adapter-out",
        s(&adapter),
        "--epochs",
        "15",
        "--batch-size",
        "5",
        "--lr",
        "1e-2",
        "--warmup-ratio",
        "0",
        "--lr-scheduler",
        "constant",
        "--max-length",
        "128",
        "--lora-rank",
        "8",
        "--lora-from-layer",
        "0",
    ]);
    assert!(ok, "train-score failed: {err}");
    let e = eval_line(&out.join("model"), &pairs, "128");
    assert_eq!(e["ranking_accuracy"], 1.0, "{e}");
    assert!(
        e["sign_accuracy"].is_null(),
        "a reward model has no sign accuracy: {e}"
    );
    // merge(base, adapter) gives the same model as the merged output.
    let merged = dir.join("merged");
    merge(&adapter, &merged);
    let e2 = eval_line(&merged, &pairs, "128");
    assert_eq!(e2["ranking_accuracy"], 1.0);
    let (a, b) = (
        e["score_mean"].as_f64().unwrap(),
        e2["score_mean"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() < 0.05 * a.abs().max(1.0),
        "merged adapter scores {b} vs {a} (bf16 adapter)"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_continues_from_the_checkpoint() {
    let dir = tmp("resume");
    let pairs = dir.join("pairs.jsonl");
    head(&data("pku_saferlhf_dev.jsonl"), 8, &pairs);
    let out = dir.join("run");
    let model = golden_dir("llama-gqa");
    let base = [
        "train-score",
        "--model",
        s(&model),
        "--kind",
        "cost",
        "--data",
        s(&pairs),
        "--out",
        s(&out),
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--max-length",
        "64",
        "--save-every",
        "3",
        "--freeze-layers",
        "1",
    ];
    let mut first = base.to_vec();
    first.extend(["--max-steps", "3"]);
    let (ok, stdout, err) = run(&first);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap()["steps"],
        3
    );
    let mut second = base.to_vec();
    second.push("--resume");
    let (ok, stdout, err) = run(&second);
    assert!(ok, "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap()["steps"],
        8
    );
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["step"].as_u64())
        .collect();
    assert_eq!(
        steps,
        (1..=8).collect::<Vec<_>>(),
        "every step logged once across the two runs"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_inputs_name_the_file_and_field() {
    let dir = tmp("bad");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"p\", \"response_0\": \"a\", \"response_1\": \"b\", \"is_response_0_safe\": true, \"is_response_1_safe\": \"no\", \"safer_response_id\": 0}\n").unwrap();
    let err = refused_cost_run(&bad, &dir.join("o"), &[]);
    assert!(
        err.contains("bad.jsonl:1") && err.contains("is_response_1_safe"),
        "{err}"
    );
    let err = refused_cost_run(&data("hh_rlhf_dev.jsonl"), &dir.join("o"), &[]);
    assert!(err.contains("no safety labels"), "{err}");
    let (ok, _, err) = run(&[
        "eval-score",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--data",
        s(&bad),
    ]);
    assert!(!ok);
    assert!(err.contains("not a score model"), "{err}");
    // A config file supplies flags; the command line overrides them.
    let cfg = dir.join("ts.toml");
    std::fs::write(&cfg, format!("model = \"{}\"\nkind = \"cost\"\ndata = [\"{}\"]\nout = \"{}\"\nepochs = 1\nmax-steps = 1\nmax_length = 64\n",
        s(&golden_dir("llama-gqa")), s(&data("pku_saferlhf_dev.jsonl")), s(&dir.join("c")))).unwrap();
    let (ok, stdout, err) = run(&["train-score", "--config", s(&cfg), "--max-steps", "2"]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap()["steps"],
        2
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A cost run on the tiny model: LoRA on the upper layer, `extra` flags appended; returns the summary.
fn cost_run(pairs: &Path, qa: &Path, out: &Path, extra: &[&str]) -> Value {
    let base = golden_dir("llama-gqa");
    let mut args = vec![
        "train-score",
        "--model",
        s(&base),
        "--kind",
        "cost",
        "--data",
        s(pairs),
        s(qa),
        "--eval",
        s(pairs),
        s(qa),
        "--out",
        s(out),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--warmup-ratio",
        "0",
        "--lr-scheduler",
        "constant",
        "--max-length",
        "96",
        "--lora-rank",
        "4",
        "--lora-from-layer",
        "1",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, err) = run(&args);
    assert!(ok, "train-score failed: {err}");
    serde_json::from_str(stdout.trim()).unwrap()
}

fn last_eval(summary: &Value, i: usize) -> Value {
    let e = summary["evaluations"].as_array().unwrap();
    e[e.len() - 2 + i].clone()
}

#[test]
fn activation_cache_trains_like_the_full_model_and_is_reused() {
    let dir = tmp("cache");
    let (pairs, qa) = (dir.join("pairs.jsonl"), dir.join("qa.jsonl"));
    head(&data("pku_safety_pairs_dev.jsonl"), 10, &pairs);
    head(&data("safety_qa_dev.jsonl"), 12, &qa);
    let cache = dir.join("cache");
    let plain = cost_run(&pairs, &qa, &dir.join("plain"), &[]);
    let cached = cost_run(
        &pairs,
        &qa,
        &dir.join("cached"),
        &["--cache-activations", s(&cache)],
    );
    // 10 pairs × 2 + 12 responses, all distinct, computed once (training and evaluation share them).
    let fill = &cached["activation_cache"]["fill"];
    assert_eq!(fill["sequences"], 32, "{fill}");
    assert_eq!(fill["computed"], 32, "{fill}");
    let hidden = 64; // llama-gqa's hidden size
    assert_eq!(
        fill["bytes"].as_u64().unwrap(),
        fill["computed_tokens"].as_u64().unwrap() * hidden * 2,
        "f16 states, one row per token: {fill}"
    );
    // The same training from cached (f16) lower-layer states lands where the full forward does.
    for i in 0..2 {
        let (a, b) = (last_eval(&plain, i), last_eval(&cached, i));
        let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!(
            (la - lb).abs() < 0.02 * la.abs().max(0.1),
            "eval loss {lb} from the cache vs {la}"
        );
    }
    // A second run reuses every state; a different first trained layer gets its own cache.
    let again = cost_run(
        &pairs,
        &qa,
        &dir.join("again"),
        &["--cache-activations", s(&cache), "--epochs", "1"],
    );
    assert_eq!(again["activation_cache"]["fill"]["computed"], 0);
    assert_eq!(
        again["activation_cache"]["dir"],
        cached["activation_cache"]["dir"]
    );
    let head_only = cost_run(
        &pairs,
        &qa,
        &dir.join("head"),
        &[
            "--cache-activations",
            s(&cache),
            "--epochs",
            "1",
            "--lora-rank",
            "0",
            "--head-only",
        ],
    );
    assert_eq!(head_only["activation_cache"]["fill"]["computed"], 32);
    assert_ne!(
        head_only["activation_cache"]["dir"],
        cached["activation_cache"]["dir"]
    );
    // Nothing frozen, nothing to cache: a clear error.
    let err = refused_cost_run(&qa, &dir.join("bad"), &["--cache-activations", s(&cache)]);
    assert!(
        err.contains("--cache-activations needs frozen lower layers"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn calibrate_writes_the_threshold_that_merge_and_eval_score_carry() {
    let dir = tmp("calibrate");
    let (pairs, qa) = (dir.join("pairs.jsonl"), dir.join("qa.jsonl"));
    head(&data("pku_safety_pairs_dev.jsonl"), 10, &pairs);
    head(&data("safety_qa_dev.jsonl"), 16, &qa);
    let out = dir.join("run");
    let adapter = dir.join("adapter");
    cost_run(
        &pairs,
        &qa,
        &out,
        &["--adapter-out", s(&adapter), "--pooling", "mean"],
    );
    let model = out.join("model");
    let (ok, stdout, err) = run(&[
        "calibrate",
        "--model",
        s(&model),
        "--data",
        s(&qa),
        s(&pairs),
        "--target-false-flag-rate",
        "0.1",
        "--adapter",
        s(&adapter),
    ]);
    assert!(ok, "calibrate failed: {err}");
    let c: Value = serde_json::from_str(stdout.trim()).unwrap();
    let cal = &c["calibration"];
    // 16 responses + 10 pairs × 2, each with its own label.
    assert_eq!(cal["responses"], 36, "{c}");
    assert!(cal["false_flag_rate"].as_f64().unwrap() <= 0.1, "{c}");
    let t = cal["threshold"].as_f64().unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["safeloop_calibration"]["threshold"].as_f64(), Some(t));
    assert_eq!(cfg["score_pooling"], "mean");
    // eval-score reports at the calibrated threshold by default: the same false-flag rate.
    let (ok, stdout, err) = run(&[
        "eval-score",
        "--model",
        s(&model),
        "--data",
        s(&qa),
        s(&pairs),
        "--max-length",
        "96",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // (The first rows of safety_qa_dev are all safe; the pairs carry both labels.)
    assert_eq!(lines[0]["classification"]["threshold"].as_f64(), Some(t));
    let cl = &lines[1]["classification"];
    assert_eq!(cl["threshold"].as_f64(), Some(t), "{cl}");
    for k in ["roc_auc", "precision", "recall", "false_flag_rate"] {
        assert!(cl[k].is_number(), "{k} missing: {cl}");
    }
    // merge rebuilds the model from the adapter with its pooling and calibration.
    let merged = dir.join("merged");
    merge(&adapter, &merged);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["safeloop_calibration"]["threshold"].as_f64(), Some(t));
    assert_eq!(cfg["score_pooling"], "mean");
    // inspect shows what the server will gate with.
    let (ok, stdout, err) = run(&["inspect", "--model", s(&merged)]);
    assert!(ok, "inspect failed: {err}");
    let info: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(info["score_type"], "cost", "{info}");
    assert_eq!(info["score_pooling"], "mean", "{info}");
    assert_eq!(info["calibration"]["threshold"].as_f64(), Some(t), "{info}");
    // Bad input: a target outside [0, 1) names the flag; nothing is written.
    let (ok, _, err) = run(&[
        "calibrate",
        "--model",
        s(&merged),
        "--data",
        s(&qa),
        "--target-false-flag-rate",
        "1.5",
    ]);
    assert!(!ok);
    assert!(err.contains("--target-false-flag-rate"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_shortened_backbone_trains_saves_merges_and_serves_with_its_layer_count() {
    let dir = tmp("layers");
    let (pairs, qa) = (dir.join("pairs.jsonl"), dir.join("qa.jsonl"));
    head(&data("pku_safety_pairs_dev.jsonl"), 10, &pairs);
    head(&data("safety_qa_dev.jsonl"), 12, &qa);
    let out = dir.join("run");
    let adapter = dir.join("adapter");
    let summary = cost_run(
        &pairs,
        &qa,
        &out,
        &[
            "--layers",
            "1",
            "--lora-rank",
            "0",
            "--head-only",
            "--pooling",
            "mean",
            "--adapter-out",
            s(&adapter),
            "--cache-activations",
            s(&dir.join("cache")),
        ],
    );
    // llama-gqa has two layers; the model keeps the first, in its config and its tensors.
    let model = out.join("model");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1, "{cfg}");
    let names = safeloop_shared::weights::SafetensorsWeights::open(
        &model,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .names();
    assert!(names.iter().any(|n| n.starts_with("model.layers.0.")));
    assert!(
        !names.iter().any(|n| n.starts_with("model.layers.1.")),
        "{names:?}"
    );
    // The saved model scores as it did in training (the last evaluation, on the same files).
    let saved = eval_line(&model, &pairs, "96");
    let trained = last_eval(&summary, 0);
    assert!(
        (saved["loss"].as_f64().unwrap() - trained["loss"].as_f64().unwrap()).abs() < 1e-3,
        "{saved} vs {trained}"
    );
    // merge rebuilds the one-layer model from the two-layer base and the adapter.
    let merged = dir.join("merged");
    merge(&adapter, &merged);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1, "{cfg}");
    assert_eq!(eval_line(&merged, &pairs, "96")["loss"], saved["loss"]);
    // The server's (candle) scorer loads it as a cost model and gates with it.
    let server = safeloop_tests::Server::start(&[
        "--model",
        s(&golden_dir("llama-gqa")),
        "--cost-model",
        s(&merged),
    ]);
    let m: Value = reqwest::blocking::Client::new()
        .post(server.url("/v1/moderations"))
        .json(&serde_json::json!({"input": "How do I bake bread?"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(m["results"][0]["cost"].is_number(), "{m}");
    // Bad input: more layers than the model has is named.
    let err = refused_cost_run(&qa, &dir.join("bad"), &["--layers", "3"]);
    assert!(
        err.contains("cannot keep 3 layers of a model with 2"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
