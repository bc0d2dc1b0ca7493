//! Every metric the Grafana dashboard and the alert rules reference is exported by the server.

use reqwest::blocking::Client;
use safeloop_tests::{golden_dir, Server};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("safeloop_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        // Skip identifiers that are not metric names (the dashboard uid, job names).
        if base != "safeloop_" && !base.starts_with("safeloop_serve") {
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_reference_only_exported_metrics() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let dash = std::fs::read_to_string(root.join("safeloop-serving.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dash).expect("the dashboard is valid JSON");
    assert!(!v["panels"].as_array().unwrap().is_empty());
    let alerts = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let mut wanted = referenced_metrics(&dash);
    wanted.extend(referenced_metrics(&alerts));
    assert!(wanted.len() > 15, "{wanted:?}");

    let tmp = std::env::temp_dir().join(format!("safeloop-dash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (policy, score) = (golden_dir("llama-gqa"), golden_dir("llama-gqa-score"));
    let s = Server::start(&[
        "--model",
        policy.to_str().unwrap(),
        "--cost-model",
        score.to_str().unwrap(),
        "--log-dir",
        tmp.to_str().unwrap(),
    ]);
    let c = Client::new();
    // One request so every histogram and labelled series has a sample.
    let r = c
        .post(s.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "llama-gqa", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let exported = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    let have = referenced_metrics(&exported);
    let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "referenced but not exported: {missing:?}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&tmp);
}
