//! The binaries through their command lines.

use safeloop_tests::{bin, golden_dir, golden_json};
use std::process::Command;

#[test]
fn generate_reproduces_golden_greedy_tokens() {
    let g = golden_json("llama-gqa");
    let prompt = g["prompts"][0].as_str().unwrap();
    let want: Vec<u64> = g["greedy"]["results"][0]["new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let out = Command::new(bin("safeloop-serve"))
        .args([
            "generate",
            "--raw",
            "--json",
            "--ignore-eos",
            "--keep-special",
            "--max-tokens",
            "12",
            "--prompt",
            prompt,
        ])
        .arg("--model")
        .arg(golden_dir("llama-gqa"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json_line = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    let got: Vec<u64> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["logprobs"].as_array().unwrap().len(), 12);
}

#[test]
fn bad_model_path_and_bad_parameter_fail_with_a_clear_message() {
    let out = Command::new(bin("safeloop-serve"))
        .args(["generate", "--model", "/no/such/model", "--prompt", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(bin("safeloop-serve"))
        .args([
            "generate",
            "--temperature",
            "9",
            "--prompt",
            "hi",
            "--model",
        ])
        .arg(golden_dir("llama-gqa"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("temperature"), "{err}");
}

#[test]
fn train_inspect_reports_a_score_model() {
    let out = Command::new(bin("safeloop-train"))
        .arg("inspect")
        .arg("--model")
        .arg(golden_dir("llama-gqa-score"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "score");
    assert_eq!(v["score_dim"], 1);
    assert_eq!(v["kv_heads"], 2);
}
