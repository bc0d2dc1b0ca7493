//! `safeloop-train train-score` / `eval-score` / `merge` through the command line, on the tiny golden model.

use safeloop_tests::{
    data_file as data, fresh_tmp as tmp, golden_dir, jsonl_head as head, path_str as s,
    run_train as run,
};
use serde_json::Value;
use std::path::Path;

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
    let (ok, _, err) = run(&[
        "merge",
        "--base",
        s(&golden_dir("llama-gqa")),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]);
    assert!(ok, "merge failed: {err}");
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
    let (ok, _, err) = run(&[
        "train-score",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--kind",
        "cost",
        "--data",
        s(&bad),
        "--out",
        s(&dir.join("o")),
    ]);
    assert!(!ok);
    assert!(
        err.contains("bad.jsonl:1") && err.contains("is_response_1_safe"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "train-score",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--kind",
        "cost",
        "--data",
        s(&data("hh_rlhf_dev.jsonl")),
        "--out",
        s(&dir.join("o")),
    ]);
    assert!(!ok);
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
