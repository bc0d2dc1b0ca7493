//! `safeloop-train sft`, `eval`, `data` and `convert` through their command lines (tiny golden models).

use safeloop_tests::{
    bin, data_file as data, fresh_tmp as tmp, golden_dir, jsonl_head as head, path_str as s,
    rule_ppo, run_train as train, Server, RULE_REWARD,
};
use serde_json::Value;
use std::process::Command;

#[test]
fn sft_learns_the_assistant_turns_and_writes_a_servable_policy() {
    let dir = tmp("sft");
    let rows = dir.join("alpaca.jsonl");
    head(&data("refusal_instructions.jsonl"), 6, &rows);
    let out = dir.join("run");
    let (ok, stdout, err) = train(&[
        "sft",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--data",
        s(&rows),
        "--out",
        s(&out),
        "--epochs",
        "12",
        "--batch-size",
        "3",
        "--lr",
        "3e-3",
        "--max-length",
        "128",
        "--warmup-ratio",
        "0",
        "--publish",
        &format!("{}/policy", dir.join("registry").display()),
    ]);
    assert!(ok, "sft failed: {err}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["examples"], 6);
    // --publish: the trained model is a registry version (content hash of what was written),
    // with its command in the manifest; no alias moved.
    let published = &summary["published"];
    let version = published["version"].as_str().unwrap();
    assert_eq!(
        version,
        safeloop_shared::registry::content_version(&out.join("model")).unwrap()
    );
    assert_eq!(published["kind"], "policy");
    let reg =
        safeloop_shared::registry::Registry::open(dir.join("registry").to_str().unwrap()).unwrap();
    let m = reg.manifest("policy", version).unwrap();
    assert!(m.produced_by.command.unwrap().contains(" sft "));
    assert!(reg.aliases("policy").unwrap().is_empty());
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 24);
    assert!(
        losses[losses.len() - 1] < 0.5 * losses[0],
        "SFT loss went {} → {}",
        losses[0],
        losses[losses.len() - 1]
    );
    // The candle server loads what the trainer wrote.
    let out_serve = Command::new(bin("safeloop-serve"))
        .args([
            "generate",
            "--max-tokens",
            "4",
            "--prompt",
            "hello",
            "--model",
            s(&out.join("model")),
        ])
        .output()
        .unwrap();
    assert!(
        out_serve.status.success(),
        "{}",
        String::from_utf8_lossy(&out_serve.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_reports_harmful_ratio_arena_and_plots() {
    let dir = tmp("eval");
    let (ok, stdout, err) = train(&[
        "eval",
        "--policy",
        s(&golden_dir("llama-gqa")),
        "--against",
        s(&golden_dir("qwen2-tied")),
        "--cost-model",
        s(&golden_dir("llama-gqa-score")),
        "--reward-model",
        s(&golden_dir("llama-gqa-score")),
        // The judge here is the cost model's own file: its figures must equal the cost model's.
        "--judge",
        s(&golden_dir("llama-gqa-score")),
        "--prompts",
        s(&data("pku_saferlhf_dev.jsonl")),
        s(&data("redteam_eval_prompts.jsonl")),
        "--eval-set",
        "I-MaliciousInstructions",
        "--limit",
        "5",
        "--max-new-tokens",
        "12",
        "--out",
        s(&dir),
    ]);
    assert!(ok, "eval failed: {err}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    // The red-team filter applies to rows that name an eval_set; the PKU rows have none and are kept.
    assert_eq!(summary["prompts"], 10, "{summary}");
    let p = &summary["policy"];
    let ratio = p["harmful_ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ratio));
    assert_eq!(p["judge_harmful_ratio"].as_f64(), Some(ratio), "{p}");
    assert_eq!(p["judge_mean_cost"], p["mean_cost"], "{p}");
    let distinct = p["distinct_answers"].as_f64().unwrap();
    assert!(distinct > 0.0 && distinct <= 1.0, "{p}");
    assert!(p["by_set"]["redteam_eval_prompts/I-MaliciousInstructions"]["n"] == 5);
    let t = &summary["arena"]["transitions"];
    let total: u64 = [
        "safe_to_safe",
        "safe_to_unsafe",
        "unsafe_to_safe",
        "unsafe_to_unsafe",
    ]
    .iter()
    .map(|k| t[k].as_u64().unwrap())
    .sum();
    assert_eq!(total, 10);
    assert_eq!(p["by_set"]["pku_saferlhf_dev"]["n"], 5);
    let csv = std::fs::read_to_string(dir.join("responses.csv")).unwrap();
    assert!(
        csv.starts_with("policy,model,set,prompt,response,tokens,reward,cost,harmful,judge_cost")
    );
    // One record per answer (responses may span lines inside quotes; records start with the policy column).
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("against,")).count(),
        10
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("policy,")).count(),
        1 + 10
    );
    for f in [
        "reward_vs_cost.png",
        "reward_vs_cost.svg",
        "cost_hist.png",
        "reward_hist.svg",
    ] {
        assert!(
            dir.join(f)
                .metadata()
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{f} missing or empty"
        );
    }
    let (ok, _, err) = train(&[
        "eval",
        "--cost-model",
        s(&golden_dir("llama-gqa-score")),
        "--prompts",
        s(&data("redteam_eval_prompts.jsonl")),
        "--eval-set",
        "NoSuchSet",
        "--out",
        s(&dir.join("x")),
    ]);
    assert!(!ok && err.contains("no prompts selected"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn data_validate_import_and_export_logged_pairs() {
    let dir = tmp("data");
    let (ok, stdout, err) = train(&[
        "data",
        "validate",
        s(&data("pku_saferlhf_dev.jsonl")),
        s(&data("hh_rlhf_dev.jsonl")),
    ]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["format"], "pku-safe-rlhf");
    assert_eq!(lines[0]["rows"], 28);
    assert_eq!(lines[1]["format"], "hh-rlhf");
    // Import drops rows whose safety labels contradict the preference.
    let src = dir.join("pku.jsonl");
    let good = std::fs::read_to_string(data("pku_saferlhf_dev.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let mut bad: Value = serde_json::from_str(&good).unwrap();
    bad["safer_response_id"] = 0.into();
    bad["is_response_0_safe"] = false.into();
    bad["is_response_1_safe"] = true.into();
    std::fs::write(&src, format!("{good}\n{bad}\n")).unwrap();
    let (ok, stdout, err) = train(&[
        "data",
        "import",
        "--in",
        s(&src),
        "--out",
        s(&dir.join("clean.jsonl")),
    ]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (r["rows"].as_u64(), r["dropped_conflicting"].as_u64()),
        (Some(1), Some(1))
    );

    // Trajectories logged by the server become unlabelled PKU pairs.
    let log_dir = dir.join("log");
    let model = golden_dir("llama-gqa");
    let server = Server::start(&[
        "--model",
        s(&model),
        "--log-dir",
        s(&log_dir),
        "--log-fsync",
        "always",
    ]);
    let body = serde_json::json!({"model": "llama-gqa", "messages": [{"role": "user", "content": "How do I pick a lock?"}],
        "n": 3, "max_tokens": 8, "temperature": 1.0, "seed": 5});
    let resp = reqwest::blocking::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    server.terminate();
    drop(server);
    let out = dir.join("pairs.jsonl");
    let (ok, stdout, err) = train(&[
        "data",
        "export-pairs",
        "--log-dir",
        s(&log_dir),
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--include-open",
    ]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["records"], 3);
    let rows: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty() && rows.len() <= 3);
    assert_eq!(rows[0]["prompt"], "How do I pick a lock?");
    assert!(rows[0]["safer_response_id"].is_null() && rows[0]["is_response_0_safe"].is_null());
    // The export reads back as PKU-SafeRLHF rows.
    let (ok, stdout, err) = train(&["data", "validate", s(&out)]);
    assert!(ok, "{err}");
    assert!(stdout.contains("pku-safe-rlhf"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn convert_writes_an_hf_directory_for_the_default_gguf() {
    let dir = tmp("convert");
    let gguf = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (ok, stdout, err) = train(&[
        "convert",
        "--gguf",
        s(&gguf),
        "--out",
        s(&dir.join("hf")),
        "--dtype",
        "bf16",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["layers"], 30);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hf/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    assert_eq!(cfg["tie_word_embeddings"], true);
    let (ok, _, err) = train(&[
        "convert",
        "--gguf",
        s(&dir.join("missing.gguf")),
        "--out",
        s(&dir.join("x")),
    ]);
    assert!(!ok && err.contains("missing.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dpo_prefers_the_better_responses() {
    let dir = tmp("dpo");
    let rows = dir.join("hh.jsonl");
    head(&data("hh_rlhf_dev.jsonl"), 8, &rows);
    let (ok, stdout, err) = train(&[
        "dpo",
        "--model",
        s(&golden_dir("llama-gqa")),
        "--data",
        s(&rows),
        "--eval",
        s(&rows),
        "--out",
        s(&dir.join("run")),
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--max-length",
        "1024",
        "--warmup-ratio",
        "0",
    ]);
    assert!(ok, "dpo failed: {err}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["pairs"], 8);
    let evals = r["evaluations"].as_array().unwrap();
    assert_eq!(evals.last().unwrap()["reward_accuracy"], 1.0, "{r}");
    assert!(
        evals.last().unwrap()["reward_margin"].as_f64().unwrap()
            > evals[0]["reward_margin"].as_f64().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sweep_trains_shaping_and_ppo_lag_and_plots_them_together() {
    let dir = tmp("sweep");
    // Several policies come out of a sweep: --publish is refused before any work, naming why.
    let (ok, _, err) = train(&[
        "sweep",
        "--actor",
        s(&golden_dir("llama-gqa")),
        "--reward-model",
        RULE_REWARD,
        "--prompts",
        s(&data("pku_saferlhf_train.jsonl")),
        "--out",
        s(&dir),
        "--publish",
        s(&dir.join("registry/x")),
    ]);
    assert!(
        !ok && err.contains("--publish") && err.contains("registry publish"),
        "{err}"
    );
    assert!(!dir.join("registry").exists());
    let (ok, stdout, err) = rule_ppo(
        "sweep",
        &dir,
        &[
            "--max-steps",
            "2",
            "--prompt-batch-size",
            "8",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--nus",
            "0.5",
            "5",
            "--eval-limit",
            "8",
        ],
    );
    assert!(ok, "sweep failed: {err}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    let names: Vec<&str> = r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "initial",
            "reward shaping ν=0.5",
            "reward shaping ν=5",
            "PPO-Lag"
        ]
    );
    for p in r["policies"].as_array().unwrap() {
        assert!(
            p["mean_reward"].as_f64().unwrap().is_finite()
                && p["mean_cost"].as_f64().unwrap().is_finite()
        );
    }
    assert!(dir.join("sweep.png").is_file() && dir.join("sweep.svg").is_file());
    // Each run is an HF policy directory plus its metrics.
    assert!(
        dir.join("ppo-lag/policy/config.json").is_file()
            && dir.join("shaping-5/metrics.jsonl").is_file()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ppo_lag_resumes_from_its_checkpoint() {
    let dir = tmp("ppo-resume");
    let run = |steps: &str, resume: &[&str]| {
        let mut a = vec![
            "--max-steps",
            steps,
            "--prompt-batch-size",
            "8",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--save-every",
            "1",
            // The paper's threshold, written the way users type it.
            "--threshold",
            "-3",
            "--lambda-max",
            "0",
        ];
        a.extend_from_slice(resume);
        rule_ppo("ppo-lag", &dir, &a)
    };
    let (ok, _, err) = run("2", &[]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = run("4", &["--resume"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("resuming from") && err.contains("at step 2"),
        "{err}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap()["steps"],
        4
    );
    let recs: Vec<Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = recs.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    // Costs here are ≥ −2 > d = −3, so (uncapped) λ rises at every step, and it continues from the
    // checkpoint instead of restarting at λ_init.
    let lambdas: Vec<f64> = recs.iter().map(|r| r["lambda"].as_f64().unwrap()).collect();
    assert!(lambdas[0] > 1.0, "λ {lambdas:?}");
    assert!(lambdas.windows(2).all(|w| w[1] > w[0]), "λ {lambdas:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--pushgateway`: a training command's per-step figures reach a real Pushgateway, grouped by job and command; an
/// unreachable one is reported and training goes on.
#[test]
fn ppo_lag_pushes_its_step_metrics_to_a_real_pushgateway() {
    use safeloop_tests::{sample, Pushgateway};
    let gw = Pushgateway::start();
    let dir = tmp("ppo-push");
    let run = |url: &str, out: &std::path::Path| {
        rule_ppo(
            "ppo-lag",
            out,
            &[
                "--max-steps",
                "3",
                "--prompt-batch-size",
                "8",
                "--max-new-tokens",
                "6",
                "--ignore-eos",
                "--pushgateway",
                url,
                "--job",
                "ci-ppo",
            ],
        )
    };
    // A previous run's figure in the group: the run's first push replaces the group, so it goes.
    reqwest::blocking::Client::new()
        .put(format!("{}/metrics/job/ci-ppo/command/ppo-lag", gw.url))
        .body("safeloop_train_leftover 1\n")
        .send()
        .unwrap()
        .error_for_status()
        .unwrap();
    let (ok, _, err) = run(&gw.url, &dir.join("a"));
    assert!(ok, "{err}");
    let text = gw.metrics();
    let labels = [("job", "ci-ppo"), ("command", "ppo-lag")];
    assert_eq!(
        sample(&text, "safeloop_train_leftover", &labels),
        None,
        "{text}"
    );
    // Later pushes (the end's `running 0`) keep the step figures.
    assert_eq!(sample(&text, "safeloop_train_running", &labels), Some(0.0));
    assert_eq!(
        sample(&text, "safeloop_train_step", &labels),
        Some(3.0),
        "{text}"
    );
    let recs: Vec<Value> = std::fs::read_to_string(dir.join("a/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = recs.last().unwrap();
    for key in [
        "lambda",
        "episode_cost",
        "reward",
        "cost",
        "kl_divergence",
        "actor_loss",
        "rollout_s",
    ] {
        let pushed = sample(&text, &format!("safeloop_train_{key}"), &labels)
            .unwrap_or_else(|| panic!("{key} not pushed: {text}"));
        assert!(
            (pushed - last[key].as_f64().unwrap()).abs() < 1e-9,
            "{key}: {pushed} vs {}",
            last[key]
        );
    }
    assert!(sample(&text, "safeloop_train_last_push_timestamp_seconds", &labels).unwrap() > 1e9);
    // Nothing listens on port 9 (discard): the push fails, the run does not.
    let (ok, _, err) = run("http://127.0.0.1:9", &dir.join("b"));
    assert!(ok, "{err}");
    assert!(err.contains("warning: pushing metrics"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("b/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    std::fs::remove_dir_all(&dir).ok();
}
