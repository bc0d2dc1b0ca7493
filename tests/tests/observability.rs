//! The whole loop under a real Prometheus: the shipped `dashboards/prometheus.yml` (ports rewritten, intervals
//! shortened) scrapes a server that follows a registry and a Pushgateway; the server gets traffic and a request
//! its gate blocks; `ppo-lag`, `train-score` and a `round` push to the Pushgateway; the round promotes and the
//! server swaps to the new version. Then every PromQL expression of every dashboard panel must parse and
//! return at least one series, and every alert rule must parse with each of its operands (the signals its
//! comparisons read) returning at least one series — the whole rule is empty while nothing is wrong.

use safeloop_tests::dashboards::{
    alert_rules, dashboards_dir, expand_grafana_variables, operands, panel_queries, reads_series,
};
use safeloop_tests::{
    data_file, distinct_prompts, fresh_tmp, golden_dir, jsonl_head, path_str, rule_ppo,
    tiny_champion, train_json, write_round_config, Prometheus, Pushgateway, Server,
    ANY_CHALLENGER_PASSES, RULE_COST, RULE_REWARD,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn chat(http: &reqwest::blocking::Client, base: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().unwrap()
}

/// The shipped Prometheus configuration pointed at this test's server and Pushgateway.
fn prometheus_config(server: &str, gateway: &str) -> String {
    let shipped = std::fs::read_to_string(dashboards_dir().join("prometheus.yml")).unwrap();
    let rules = dashboards_dir().join("alerts.yml");
    let out = shipped
        .replace("127.0.0.1:8000", server)
        .replace("127.0.0.1:9091", gateway)
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("  - alerts.yml", &format!("  - {}", rules.display()));
    assert!(
        out.contains(server) && out.contains(gateway) && out.contains("scrape_interval: 1s"),
        "dashboards/prometheus.yml changed shape:\n{out}"
    );
    out
}

#[test]
fn every_dashboard_query_and_alert_signal_returns_series_from_a_live_loop() {
    let tmp = fresh_tmp("observability");
    let (reg, log, state) = (tmp.join("registry"), tmp.join("log"), tmp.join("state"));
    tiny_champion(&reg, &tmp.join("tiny"));
    let spec = format!("{}/tiny", path_str(&reg));

    let gw = Pushgateway::start();
    let score = golden_dir("llama-gqa-score");
    let server = Server::start(&[
        "--model",
        &format!("registry:{spec}@champion"),
        "--served-model-name",
        "tiny",
        "--registry-poll-secs",
        "0.5",
        "--registry-cache",
        path_str(&tmp.join("serve-cache")),
        "--cost-model",
        path_str(&score),
        "--log-dir",
        path_str(&log),
        "--log-segment-bytes",
        "8192",
    ]);
    let host = |url: &str| url.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(
        &tmp.join("prometheus"),
        &prometheus_config(&host(&server.base), &host(&gw.url)),
    );

    // `SAFELOOP_DASHBOARD_PICTURES=DIR` (scripts/dashboard_pictures.sh): a longer run with traffic throughout,
    // then screenshots of Prometheus's graph page for the README.
    let pictures = std::env::var_os("SAFELOOP_DASHBOARD_PICTURES").map(std::path::PathBuf::from);
    let background = pictures
        .as_ref()
        .map(|_| Background::start(&server.base, distinct_prompts(24)));

    // Traffic, sampled; one request whose gate blocks it (a threshold no answer meets).
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let texts = distinct_prompts(24);
    for (i, t) in texts.iter().enumerate() {
        chat(
            &http,
            &server.base,
            json!({"model": "tiny", "messages": [{"role": "user", "content": t}], "max_tokens": 12,
                   "ignore_eos": true, "temperature": 1.0, "seed": i, "n": 2}),
        );
    }
    let blocked = chat(
        &http,
        &server.base,
        json!({"model": "tiny", "messages": [{"role": "user", "content": texts[0]}], "max_tokens": 4,
               "safety": {"threshold": -1.0e6, "action": "block"}}),
    );
    assert_eq!(
        blocked["choices"][0]["finish_reason"], "content_filter",
        "{blocked}"
    );

    if pictures.is_some() {
        std::thread::sleep(Duration::from_secs(60)); // the first version serving for a while
    }

    // The trainer: a short PPO-Lag run, a score model, and a round that promotes a challenger.
    let (ok, _, err) = rule_ppo(
        "ppo-lag",
        &tmp.join("ppo"),
        &[
            "--max-steps",
            if pictures.is_some() { "120" } else { "2" },
            "--prompt-batch-size",
            if pictures.is_some() { "64" } else { "4" },
            "--max-new-tokens",
            if pictures.is_some() { "32" } else { "6" },
            "--ignore-eos",
            "--epochs",
            "1000",
            "--pushgateway",
            &gw.url,
        ],
    );
    assert!(ok, "ppo-lag: {err}");
    let pairs = tmp.join("pairs.jsonl");
    jsonl_head(&data_file("pku_saferlhf_dev.jsonl"), 8, &pairs);
    train_json(&[
        "train-score",
        "--model",
        path_str(&golden_dir("llama-gqa")),
        "--kind",
        "cost",
        "--data",
        path_str(&pairs),
        "--out",
        path_str(&tmp.join("cost")),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "64",
        "--pushgateway",
        &gw.url,
    ]);
    let config = tmp.join("round.toml");
    // A gate that any challenger passes: this test is about what the round reports, not its verdict.
    write_round_config(
        &config,
        [&reg, &log, &state, &state.join("annotations")],
        &format!(
            r#"reward-model = "{RULE_REWARD}"
cost-model = "{RULE_COST}"
eval-limit = 8
min-new-records = 8
max-new-tokens = 8
ignore-eos = true
prompt-batch-size = 8
max-steps = 2
{ANY_CHALLENGER_PASSES}"#
        ),
    );
    let summary = train_json(&[
        "round",
        "--config",
        path_str(&config),
        "--pushgateway",
        &gw.url,
    ]);
    assert_eq!(summary["status"], "promoted", "{summary}");
    let v1 = summary["challenger"].as_str().unwrap().to_string();

    // The server swaps to it; traffic continues on the new version.
    server.wait_for_version(&v1);
    for (i, t) in texts.iter().take(6).enumerate() {
        chat(
            &http,
            &server.base,
            json!({"model": "tiny", "messages": [{"role": "user", "content": t}], "max_tokens": 8,
                   "seed": i, "stream": false}),
        );
    }

    // Prometheus has scraped both targets since, and the swap and the round are in its data.
    let t = Instant::now();
    loop {
        let up = prom.targets_up();
        let swapped = prom
            .query(&format!(
                "safeloop_model_version_info{{role=\"policy\", version=\"{v1}\"}}"
            ))
            .unwrap();
        let round = prom
            .query("safeloop_round_last_promotion_timestamp_seconds")
            .unwrap();
        if up.len() == 2
            && up.iter().all(|(_, ok)| *ok)
            && !swapped.as_array().unwrap().is_empty()
            && !round.as_array().unwrap().is_empty()
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "targets {up:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3)); // a few more scrapes for the rates

    let mut failures = vec![];
    let mut checked = 0;
    let series = |expr: &str| -> Result<usize, String> {
        prom.query(expr).map(|r| match &r {
            Value::Array(a) => a.len(),
            _ => 1, // a scalar
        })
    };
    for (at, expr) in panel_queries() {
        let e = expand_grafana_variables(&expr);
        checked += 1;
        match series(&e) {
            Ok(0) => failures.push(format!("{at}: no series for `{e}`")),
            Ok(_) => {}
            Err(err) => failures.push(format!("{at}: `{e}`: {err}")),
        }
    }
    for (name, expr) in alert_rules() {
        if let Err(err) = series(&expr) {
            failures.push(format!("alert {name}: `{expr}`: {err}"));
        }
        for op in operands(&expr).into_iter().filter(|o| reads_series(o)) {
            checked += 1;
            match series(&op) {
                Ok(0) => failures.push(format!("alert {name}: no series for `{op}`")),
                Ok(_) => {}
                Err(err) => failures.push(format!("alert {name}: `{op}`: {err}")),
            }
        }
    }
    eprintln!("{checked} expressions checked against Prometheus");
    assert!(checked > 80, "{checked}");
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // What the panels show is what happened: one swap of the policy, a block by the gate, λ from both runs.
    let swaps = prom
        .query(r#"sum(safeloop_model_swaps_total{role="policy", outcome="swapped"})"#)
        .unwrap();
    assert_eq!(
        swaps[0]["value"][1], "2",
        "first load + the promotion: {swaps}"
    );
    let blocks = prom
        .query(r#"sum(safeloop_gate_decisions_total{action="block"})"#)
        .unwrap();
    assert!(
        blocks[0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 1.0,
        "{blocks}"
    );
    let lambdas = prom
        .query("count by (command) (safeloop_train_lambda)")
        .unwrap();
    let commands: BTreeSet<&str> = lambdas
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"]["command"].as_str())
        .collect();
    assert_eq!(commands, BTreeSet::from(["ppo-lag", "round"]), "{lambdas}");
    if let Some(dir) = &pictures {
        std::thread::sleep(Duration::from_secs(60)); // the new version serving for a while
        drop(background);
        screenshots(&prom, dir);
    }
    drop(prom);
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Chat requests from two clients until dropped (picture mode).
struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(base: &str, texts: Vec<String>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let texts = std::sync::Arc::new(texts);
        let threads = (0..2)
            .map(|c| {
                let (stop, texts, base) = (stop.clone(), texts.clone(), base.to_string());
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    let mut i = c * 11;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        let _ = http
                            .post(format!("{base}/v1/chat/completions"))
                            .json(&json!({"model": "tiny", "messages": [{"role": "user", "content": texts[i % texts.len()]}],
                                "max_tokens": 16, "temperature": 1.0, "seed": i, "stream": i % 3 == 0}))
                            .send()
                            .and_then(|r| r.text());
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One PNG per dashboard area: Prometheus's graph page with a few of its panels' queries, in headless Chromium.
fn screenshots(prom: &Prometheus, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let areas: [(&str, &[&str]); 4] = [
        ("serving", &[
            "histogram_quantile(0.99, sum by (le) (rate(safeloop_time_to_first_token_seconds_bucket[1m])))",
            "rate(safeloop_generation_tokens_total[1m])",
            "sum by (version) (rate(safeloop_requests_by_version_total[1m]))",
        ]),
        ("safety", &[
            r#"sum by (version) (rate(safeloop_gate_decisions_total{action=~"block|annotate|resample"}[1m])) / sum by (version) (rate(safeloop_gate_decisions_total[1m]))"#,
            "sum by (version) (rate(safeloop_cost_score_sum[1m])) / sum by (version) (rate(safeloop_cost_score_count[1m]))",
            "histogram_quantile(0.99, sum by (le) (rate(safeloop_gate_latency_seconds_bucket[1m])))",
        ]),
        ("training", &[
            r#"{__name__=~"safeloop_train_lambda|safeloop_train_lambda_max", command="ppo-lag"}"#,
            r#"{__name__=~"safeloop_train_episode_cost|safeloop_train_cost_threshold", command="ppo-lag"}"#,
            r#"{__name__=~"safeloop_train_reward|safeloop_train_cost", command="ppo-lag"}"#,
        ]),
        ("loop", &[
            r#"max by (version) (safeloop_model_version_info{role="policy"})"#,
            "max by (outcome) (safeloop_rounds_total)",
            "safeloop_round_harmful_ratio",
        ]),
    ];
    for (name, exprs) in areas {
        let mut url = format!("{}/graph?", prom.url);
        for (i, e) in exprs.iter().enumerate() {
            let e: String = e
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            url.push_str(&format!(
                "g{i}.expr={e}&g{i}.tab=0&g{i}.stacked=0&g{i}.show_exemplars=0&g{i}.range_input=5m&"
            ));
        }
        let png = dir.join(format!("{name}.png"));
        let profile =
            std::env::temp_dir().join(format!("safeloop-chromium-{}", std::process::id()));
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--virtual-time-budget=15000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size=1200,{}", 160 + 580 * exprs.len()))
            .arg(format!("--screenshot={}", png.display()))
            .arg(&url)
            .output()
            .expect("chromium (Debian package; scripts/dashboard_pictures.sh installs it)");
        assert!(
            png.is_file(),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("wrote {}", png.display());
    }
}
