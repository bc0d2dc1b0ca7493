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

#[test]
fn loadgen_sends_the_prompts_of_files_and_the_server_logs_them() {
    use safeloop_tests::{data_file, fresh_tmp, jsonl_head, path_str, Server};
    let tmp = fresh_tmp("loadgen-prompts");
    let (pku, redteam) = (tmp.join("pku.jsonl"), tmp.join("redteam.jsonl"));
    jsonl_head(&data_file("pku_saferlhf_train.jsonl"), 5, &pku);
    jsonl_head(&data_file("redteam_eval_prompts.jsonl"), 4, &redteam);
    let log = tmp.join("log");
    let server = Server::start(&[
        "--model",
        path_str(&golden_dir("llama-gqa")),
        "--log-dir",
        path_str(&log),
    ]);
    let out = Command::new(bin("safeloop-loadgen"))
        .args([
            "--url",
            &server.base,
            "-c",
            "3",
            "--max-tokens",
            "6",
            "--stop-at-eos",
        ])
        .args(["--json", "--prompts", path_str(&pku), path_str(&redteam)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // One request per prompt unless -n says otherwise.
    assert_eq!(r["requests"], 9, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    server.terminate();
    drop(server);
    let records = safeloop_shared::trajlog::LogReader::new(&log)
        .read_all(true)
        .unwrap();
    assert_eq!(records.len(), 9);
    // Real prompts went out (not the synthetic story prompt): the first PKU prompt is among the logged ones.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&pku)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let tok = safeloop_shared::load_causal_lm(&golden_dir("llama-gqa"), &Default::default())
        .unwrap()
        .tokenizer;
    let want = first["prompt"].as_str().unwrap();
    assert!(
        records
            .iter()
            .any(|r| tok.decode(&r.prompt_ids, false).unwrap().contains(want)),
        "no logged prompt contains {want:?}"
    );
    // A malformed file is named.
    std::fs::write(tmp.join("bad.jsonl"), "{\"text\": 1}\n").unwrap();
    let out = Command::new(bin("safeloop-loadgen"))
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--prompts",
            path_str(&tmp.join("bad.jsonl")),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:1"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}
