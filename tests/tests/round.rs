//! `safeloop-train round` end to end: the loop serve → log → round → registry → swap → serve.
//!
//! A server follows `tiny@champion` of a local registry and logs every trajectory while clients keep sending
//! chat requests. A round runs on those logs with the token-rule scorers of the PPO-Lag behaviour test (reward:
//! share of ids in [4, 256); cost: share in [4, 130), threshold 0), so the challenger lowers the cost. It is killed
//! with SIGKILL mid-optimisation while a second round is refused with "locked", resumes with `--resume`, passes
//! the gate and is promoted; the server swaps with no failed request, and the cost of what it serves (by the same
//! rule, from the trajectory log) falls. A second round with an unmeetable gate exits 3 and leaves the champion;
//! a third that fails is abandoned. Across rounds the log cursor never skips or repeats a record.

use safeloop_shared::trajlog::{Cursor, LogReader};
use safeloop_tests::{
    bin, copy_golden, data_file, distinct_prompts, fresh_tmp, path_str, tiny_champion, train_json,
    write_round_config, Server, ANY_CHALLENGER_PASSES, RULE_COST, RULE_REWARD,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ids `RULE_COST` counts.
const COST_IDS: std::ops::Range<u32> = 4..130;

/// The rule cost of a response (the round's cost model).
fn rule_cost(ids: &[u32]) -> f64 {
    let n = ids.iter().filter(|&&t| COST_IDS.contains(&t)).count();
    10.0 * n as f64 / ids.len().max(1) as f64 - 2.0
}

/// Clients sending sampled chat requests until `stop`; every non-200 or transport error is a failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(base: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let texts = Arc::new(distinct_prompts(48));
        let threads = (0..clients)
            .map(|c| {
                let (stop, sent, failures, texts) =
                    (stop.clone(), sent.clone(), failures.clone(), texts.clone());
                let base = base.to_string();
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .unwrap();
                    let mut i = c * 7;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let body = json!({"model": "tiny", "messages": [{"role": "user", "content": texts[i % texts.len()]}],
                            "max_tokens": 16, "ignore_eos": true, "temperature": 1.0, "seed": i});
                        match http
                            .post(format!("{base}/v1/chat/completions"))
                            .json(&body)
                            .send()
                        {
                            Ok(r) if r.status().as_u16() == 200 => {
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: {}", r.status(), r.text().unwrap_or_default())),
                            Err(e) => failures.lock().unwrap().push(format!("transport: {e}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failures,
            threads,
        }
    }

    fn wait_for(&self, n: usize) {
        let t = Instant::now();
        while self.sent.load(Ordering::Relaxed) < n {
            assert!(t.elapsed() < Duration::from_secs(120), "traffic stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.failures)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn round_cmd(config: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin("safeloop-train"));
    c.args(["round", "--config", path_str(config)])
        .args(extra)
        .env("SAFELOOP_TRAIN_THREADS", "1");
    c
}

/// Runs a round to the end: (exit code, summary or null, stderr).
fn round(config: &Path, extra: &[&str]) -> (i32, Value, String) {
    let out = round_cmd(config, extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        summary,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// (request_id, choice) of every record a round's harvest read.
fn harvested(state: &Path, round: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(
        state
            .join("rounds")
            .join(round)
            .join("harvest/responses.jsonl"),
    )
    .unwrap()
    .lines()
    .map(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        (
            v["request_id"].as_str().unwrap().to_string(),
            v["choice_index"].as_u64().unwrap(),
        )
    })
    .collect()
}

fn write_config(
    path: &Path,
    reg: &Path,
    log: &Path,
    state: &Path,
    annotations: &Path,
    extra: &str,
) {
    write_round_config(
        path,
        [reg, log, state, annotations],
        &format!(
            r#"reward-model = "{RULE_REWARD}"
cost-model = "{RULE_COST}"
eval-limit = 24
min-new-records = 16
max-new-tokens = 16
ignore-eos = true
prompt-batch-size = 48
epochs = 1000
actor-lr = 5e-3
lr-scheduler = "constant"
critic-lr = 1e-2
save-every = 1
{extra}"#
        ),
    );
}

fn champion(reg: &Path) -> String {
    let v = train_json(&["registry", "show", &format!("{}/tiny", path_str(reg))]);
    v["manifest"]["version"].as_str().unwrap().to_string()
}

/// Mean rule cost of the logged responses of each policy version.
fn served_cost(log: &Path, version: &str) -> (usize, f64) {
    let recs: Vec<_> = LogReader::new(log)
        .read_all(true)
        .unwrap()
        .into_iter()
        .filter(|r| r.weight_version == version)
        .collect();
    let n = recs.len();
    (
        n,
        recs.iter().map(|r| rule_cost(&r.output_ids)).sum::<f64>() / n.max(1) as f64,
    )
}

#[test]
fn a_round_on_served_logs_promotes_a_safer_policy_that_the_server_swaps_in() {
    let tmp = fresh_tmp("round");
    let (reg, log, state, annotations) = (
        tmp.join("registry"),
        tmp.join("log"),
        tmp.join("state"),
        tmp.join("annotations"),
    );
    let v0 = tiny_champion(&reg, &tmp.join("tiny"));

    let spec = format!("registry:{}/tiny@champion", path_str(&reg));
    let server = Server::start(&[
        "--model",
        &spec,
        "--served-model-name",
        "tiny",
        "--registry-poll-secs",
        "0.5",
        "--registry-cache",
        path_str(&tmp.join("serve-cache")),
        "--log-dir",
        path_str(&log),
        "--log-segment-bytes",
        "16384",
    ]);
    let traffic = Traffic::start(&server.base, 3);
    traffic.wait_for(120);

    // Round 1, killed mid-optimisation; a concurrent round is refused meanwhile.
    let config = tmp.join("round.toml");
    // The synthetic rules pay for token ranges, not answers: a policy that says the same safe tokens to every
    // prompt is this task's optimum, and whether 24 steps get there depends on the rollouts' rounding. The
    // distinct-answers gate is unit-tested (round::gate); here it is off.
    write_config(
        &config,
        &reg,
        &log,
        &state,
        &annotations,
        "max-steps = 24\ngate-min-distinct-ratio = 0",
    );
    let mut first = round_cmd(&config, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = state.join("rounds/round-0001/optimise/checkpoint/state.json");
    let t = Instant::now();
    loop {
        let step = std::fs::read_to_string(&ckpt)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["global_step"].as_u64())
            .unwrap_or(0);
        if step >= 3 {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "round 1 ended before it was killed"
        );
        assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = round(&config, &[]);
    assert_eq!(code, 1, "a concurrent round must fail: {err}");
    assert!(err.contains("locked"), "{err}");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let harvest_before =
        read_json(&state.join("rounds/round-0001/round.json"))["steps"]["harvest"].clone();
    assert!(
        !harvest_before.is_null(),
        "harvest was recorded before the kill"
    );
    assert!(
        !state.join("cursor.json").exists(),
        "the cursor moves only when a round commits"
    );
    // Without --resume the unfinished round is reported, not silently restarted.
    let (code, _, err) = round(&config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--resume") && err.contains("round-0001"),
        "{err}"
    );

    let (code, s1, err) = round(&config, &["--resume"]);
    assert_eq!(code, 0, "round 1 should be promoted: {err}\n{s1}");
    assert!(err.contains("resuming at optimise"), "{err}");
    assert!(
        err.contains("resuming from"),
        "PPO resumed from its checkpoint: {err}"
    );
    assert_eq!(s1["status"], "promoted", "{s1}");
    assert_eq!(s1["harvest"], harvest_before, "harvest was not redone");
    let v1 = s1["challenger"].as_str().unwrap().to_string();
    assert_eq!(champion(&reg), v1);
    let e = &s1["evaluate"];
    assert!(
        e["challenger"]["mean_cost"].as_f64().unwrap()
            < e["champion"]["mean_cost"].as_f64().unwrap() - 0.5,
        "{e}"
    );
    let steps: Vec<u64> =
        std::fs::read_to_string(state.join("rounds/round-0001/optimise/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
    assert_eq!(*steps.last().unwrap(), 24);
    assert_eq!(steps.iter().collect::<BTreeSet<_>>().len(), 24, "{steps:?}");
    let manifest = train_json(&["registry", "show", &format!("{}/tiny@{v1}", path_str(&reg))]);
    assert_eq!(manifest["manifest"]["eval"]["verdict"], "promoted");
    assert_eq!(manifest["manifest"]["produced_by"]["round"], "round-0001");
    let report = std::fs::read_to_string(state.join("rounds/round-0001/report.md")).unwrap();
    assert!(
        report.contains("Promotion gate") && report.contains(".png"),
        "{report}"
    );
    assert!(
        annotations.join("pending/round-0001.jsonl").is_file()
            || s1["annotate"]["exported"]["pairs"] == 0,
        "{}",
        s1["annotate"]
    );

    // The server swaps to the challenger.
    server.wait_for_version(&v1);
    let after_swap = traffic.sent.load(Ordering::Relaxed);
    traffic.wait_for(after_swap + 150);

    // Round 2: the gate cannot be met; it exits 3 and the champion stays.
    let config2 = tmp.join("round2.toml");
    write_config(
        &config2,
        &reg,
        &log,
        &state,
        &annotations,
        "max-steps = 2\ngate-cost-target = -100\ngate-cost-margin = 100",
    );
    let gw = safeloop_tests::Pushgateway::start();
    let (code, s2, err) = round(&config2, &["--pushgateway", &gw.url]);
    assert_eq!(code, 3, "the gate should reject: {err}\n{s2}");
    assert_eq!(s2["status"], "rejected");
    // Its figures reached the Pushgateway: the PPO steps (group `round`) and the round's own (`round-status`).
    let text = gw.metrics();
    let status = [("job", "safeloop-train"), ("command", "round-status")];
    let sample = |name: &str, labels: &[(&str, &str)]| safeloop_tests::sample(&text, name, labels);
    assert_eq!(
        sample("safeloop_round_exit_code", &status),
        Some(3.0),
        "{text}"
    );
    let outcome = |o: &str| {
        let mut l = status.to_vec();
        l.push(("outcome", o));
        (
            sample("safeloop_round_last_outcome", &l),
            sample("safeloop_rounds_total", &l),
        )
    };
    assert_eq!(outcome("rejected"), (Some(1.0), Some(1.0)));
    assert_eq!(
        outcome("promoted"),
        (Some(0.0), Some(1.0)),
        "round 1 counted"
    );
    assert_eq!(sample("safeloop_round_number", &status), Some(2.0));
    assert_eq!(sample("safeloop_round_running", &status), Some(0.0));
    assert_eq!(sample("safeloop_round_steps_done", &status), Some(6.0));
    let promoted_at = sample("safeloop_round_last_promotion_timestamp_seconds", &status).unwrap();
    assert!(promoted_at > 1e9, "round 1's promotion time: {promoted_at}");
    assert!(sample("safeloop_round_gate_checks_failed", &status).unwrap() >= 1.0);
    let mut l = status.to_vec();
    l.extend([("policy", "challenger"), ("scorer", "cost_model")]);
    assert_eq!(
        sample("safeloop_round_harmful_ratio", &l),
        s2["evaluate"]["challenger"]["harmful_ratio"].as_f64()
    );
    let ppo = [("job", "safeloop-train"), ("command", "round")];
    assert_eq!(sample("safeloop_train_step", &ppo), Some(2.0), "{text}");
    assert!(sample("safeloop_train_lambda", &ppo).is_some());
    assert_eq!(
        sample("safeloop_train_running", &ppo),
        Some(0.0),
        "the PPO group says it ended"
    );
    assert_eq!(champion(&reg), v1);
    let aliases =
        train_json(&["registry", "show", &format!("{}/tiny", path_str(&reg))])["aliases"].clone();
    assert_eq!(
        aliases["rejected/round-0002"], s2["challenger"],
        "{aliases}"
    );

    // Round 3 fails (its evaluation set is missing), is reported unfinished and abandoned; the cursor stays.
    let cursor2: Cursor = serde_json::from_value(read_json(&state.join("cursor.json"))).unwrap();
    traffic.wait_for(traffic.sent.load(Ordering::Relaxed) + 60);
    let config3 = tmp.join("round3.toml");
    write_config(&config3, &reg, &log, &state, &annotations, "max-steps = 1");
    let (code, _, err) = round(
        &config3,
        &[
            "--eval-prompts",
            path_str(&tmp.join("missing.jsonl")),
            "--pushgateway",
            &gw.url,
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing.jsonl"), "{err}");
    let text = gw.metrics();
    let failed = [
        ("job", "safeloop-train"),
        ("command", "round-status"),
        ("outcome", "failed"),
    ];
    assert_eq!(
        safeloop_tests::sample(&text, "safeloop_round_last_outcome", &failed),
        Some(1.0),
        "{text}"
    );
    let (code, s3, err) = round(&config3, &["--abandon"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s3["status"], "abandoned");
    let cursor3: Cursor = serde_json::from_value(read_json(&state.join("cursor.json"))).unwrap();
    assert_eq!(cursor2, cursor3, "an abandoned round leaves the cursor");

    let failures = traffic.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    drop(server);

    // Served cost fell after the swap (same rule, same prompts, sampled).
    let (n0, c0) = served_cost(&log, &v0);
    let (n1, c1) = served_cost(&log, &v1);
    eprintln!("served cost: {v0} {c0:.3} over {n0}; {v1} {c1:.3} over {n1}");
    assert!(n0 >= 100 && n1 >= 100, "{n0} / {n1}");
    assert!(c1 < c0 - 0.5, "served cost {c0} → {c1}");

    // The cursor: round 2 starts where round 1 ended; no record is read twice or skipped.
    let h1 = read_json(&state.join("rounds/round-0001/round.json"))["steps"]["harvest"].clone();
    let h2 = read_json(&state.join("rounds/round-0002/round.json"))["steps"]["harvest"].clone();
    assert_eq!(h1["cursor_to"], h2["cursor_from"]);
    let (r1, r2) = (
        harvested(&state, "round-0001"),
        harvested(&state, "round-0002"),
    );
    let (s1set, s2set): (BTreeSet<_>, BTreeSet<_>) =
        (r1.iter().cloned().collect(), r2.iter().cloned().collect());
    assert_eq!(s1set.len(), r1.len());
    assert!(s1set.is_disjoint(&s2set), "a record was harvested twice");
    let to: Cursor = serde_json::from_value(h2["cursor_to"].clone()).unwrap();
    let all: BTreeSet<_> = s1set.union(&s2set).cloned().collect();
    assert_eq!(
        all,
        records_before(&log, to),
        "rounds 1 and 2 together read exactly the records before round 2's cursor"
    );
    if std::env::var_os("SAFELOOP_KEEP_TMP").is_none() {
        std::fs::remove_dir_all(&tmp).ok();
    }
}

/// Every sealed record before `to`: all of them minus those after it.
fn records_before(log: &Path, to: Cursor) -> BTreeSet<(String, u64)> {
    let reader = LogReader::new(log);
    let key = |r: &safeloop_shared::trajlog::TrajectoryRecord| {
        (r.request_id.clone(), r.choice_index as u64)
    };
    let after: BTreeSet<_> = reader
        .read_since(to, false)
        .unwrap()
        .0
        .iter()
        .map(key)
        .collect();
    reader
        .read_since(Cursor::default(), false)
        .unwrap()
        .0
        .iter()
        .map(key)
        .filter(|k| !after.contains(k))
        .collect()
}

/// Graceful shutdown (the open log segment is sealed), waited for.
fn stop(mut server: Server) {
    server.terminate();
    let t = Instant::now();
    while server.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serves `policy` as `tiny` with logging, sends `n` sampled requests over `clients` with the prompts of a file,
/// and stops the server gracefully (its log segment sealed).
fn serve_prompts(policy: &Path, log: &Path, prompts: &Path, clients: usize, n: usize) {
    let server = Server::start(&[
        "--model",
        path_str(policy),
        "--served-model-name",
        "tiny",
        "--log-dir",
        path_str(log),
    ]);
    let out = Command::new(bin("safeloop-loadgen"))
        .args([
            "--url",
            &server.base,
            "-c",
            &clients.to_string(),
            "-n",
            &n.to_string(),
        ])
        .args([
            "--max-tokens",
            "8",
            "--temperature",
            "1",
            "--prompts",
            path_str(prompts),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(server);
}

/// Decoupled annotation inside a round: served answer pairs are exported for labelling, a labelled file is
/// imported once, and the registry's cost model continues training from its champion on it; the new version is
/// published and becomes the champion only if its held-out accuracy did not fall.
#[test]
fn a_round_exports_pairs_imports_labels_and_retrains_the_cost_model() {
    let tmp = fresh_tmp("round-annotate");
    let (reg, log, state, annotations) = (
        tmp.join("registry"),
        tmp.join("log"),
        tmp.join("state"),
        tmp.join("annotations"),
    );
    let (policy, cost) = (tmp.join("tiny"), tmp.join("cost"));
    copy_golden("llama-gqa", &policy);
    copy_golden("llama-gqa-score", &cost);
    // The champion cost model is calibrated: its retrained successor must be recalibrated at the same target.
    safeloop_shared::calibration::Calibration {
        threshold: 0.0,
        target_false_flag_rate: 0.25,
        false_flag_rate: 0.25,
        recall: 0.5,
        precision: None,
        roc_auc: None,
        responses: 0,
        unsafe_responses: 0,
        data: vec![],
    }
    .write(&cost)
    .unwrap();
    for (name, dir, kind) in [("tiny", &policy, "policy"), ("cost", &cost, "cost")] {
        let target = format!("{}/{name}", path_str(&reg));
        let v = train_json(&[
            "registry",
            "publish",
            &target,
            "--model",
            path_str(dir),
            "--kind",
            kind,
        ])["version"]
            .as_str()
            .unwrap()
            .to_string();
        train_json(&["registry", "promote", &target, &v]);
    }
    let cost_v0 = train_json(&["registry", "show", &format!("{}/cost", path_str(&reg))])
        ["manifest"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    // Traffic: 6 prompts asked 3 times each, sampled, so every prompt has distinct answers to pair.
    let prompts_file = tmp.join("prompts.jsonl");
    safeloop_tests::jsonl_head(&data_file("pku_saferlhf_train.jsonl"), 6, &prompts_file);
    serve_prompts(&policy, &log, &prompts_file, 3, 18);
    // The annotators' file: labelled PKU safety pairs.
    std::fs::create_dir_all(annotations.join("labelled")).unwrap();
    safeloop_tests::jsonl_head(
        &data_file("pku_safety_pairs_train.jsonl"),
        48,
        &annotations.join("labelled/batch-1.jsonl"),
    );
    let held_out = tmp.join("held-out.jsonl");
    safeloop_tests::jsonl_head(&data_file("pku_safety_pairs_dev.jsonl"), 32, &held_out);
    let config = tmp.join("round.toml");
    write_round_config(
        &config,
        [&reg, &log, &state, &annotations],
        &format!(
            r#"reward-model = "{RULE_REWARD}"
cost-model = "registry:{reg}/cost"
score-eval = ["{held_out}"]
score-train-args = "--epochs 1 --batch-size 8 --max-length 128 --lr 1e-3"
eval-limit = 8
max-new-tokens = 8
prompt-batch-size = 8
max-steps = 2
{ANY_CHALLENGER_PASSES}"#,
            reg = path_str(&reg),
            held_out = path_str(&held_out),
        ),
    );
    let (code, s, err) = round(&config, &[]);
    assert_eq!(code, 0, "{err}\n{s}");
    let a = &s["annotate"];
    // Export: PKU schema, labels empty, the logged scores kept.
    let pending = annotations.join("pending/round-0001.jsonl");
    let rows: Vec<Value> = std::fs::read_to_string(&pending)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 6, "{a}");
    assert_eq!(a["exported"]["pairs"], rows.len());
    for r in &rows {
        assert!(r["is_response_0_safe"].is_null() && r["safer_response_id"].is_null());
        assert_ne!(r["response_0"], r["response_1"]);
        assert_eq!(r["source"]["model_costs"].as_array().unwrap().len(), 2);
    }
    // Import and retraining from the champion.
    assert_eq!(a["imported"][0]["rows"], 48, "{a}");
    let c = &a["retrained"]["cost"];
    assert_eq!(c["from"], json!(cost_v0), "{a}");
    let (before, after) = (
        c["held_out_accuracy_before"].as_f64().unwrap(),
        c["held_out_accuracy_after"].as_f64().unwrap(),
    );
    let v1 = c["version"].as_str().unwrap();
    assert_ne!(v1, cost_v0, "a new version was published");
    let cal = &c["calibration"];
    assert_eq!(cal["target_false_flag_rate"], 0.25, "{c}");
    assert!(cal["false_flag_rate"].as_f64().unwrap() <= 0.25, "{c}");
    // The published version carries it (what a following server gates at).
    let (fetched, _) = safeloop_shared::registry::Registry::open(path_str(&reg))
        .unwrap()
        .fetch("cost", v1, &tmp.join("fetch-cache"))
        .unwrap();
    let carried = safeloop_shared::calibration::Calibration::read(&fetched)
        .unwrap()
        .expect("the retrained version is calibrated");
    assert_eq!(
        Some(carried.threshold as f64),
        cal["threshold"].as_f64(),
        "{c}"
    );
    let aliases =
        train_json(&["registry", "show", &format!("{}/cost", path_str(&reg))])["aliases"].clone();
    if after >= before {
        assert_eq!(c["promoted"], true);
        assert_eq!(aliases["champion"], json!(v1), "{aliases}");
    } else {
        assert_eq!(c["promoted"], false);
        assert_eq!(aliases["champion"], json!(cost_v0), "{aliases}");
        assert_eq!(aliases["rejected/round-0001"], json!(v1), "{aliases}");
    }
    eprintln!(
        "cost model held-out accuracy {before:.3} → {after:.3}, promoted: {}",
        c["promoted"]
    );
    assert!(a["retrained"]["reward"]["skipped"]
        .as_str()
        .unwrap()
        .contains("not a registry model"));
    // The later steps used the cost model as of then.
    let used = s["optimise"]["cost_model"]["version"].as_str().unwrap();
    assert_eq!(used, aliases["champion"].as_str().unwrap());
    // Committed: the file is consumed and not imported again by the next round.
    let consumed = read_json(&state.join("annotations.json"));
    assert_eq!(consumed.as_object().unwrap().len(), 1, "{consumed}");
    serve_prompts(&policy, &log, &prompts_file, 2, 8);
    let (code, s2, err) = round(&config, &["--min-new-records", "4"]);
    assert_eq!(code, 0, "{err}\n{s2}");
    assert_eq!(s2["annotate"]["imported"], json!([]), "{}", s2["annotate"]);
    assert_eq!(s2["annotate"]["retrained"], json!({}));
    if std::env::var_os("SAFELOOP_KEEP_TMP").is_none() {
        std::fs::remove_dir_all(&tmp).ok();
    }
}
