//! The dashboards and alert rules as Grafana and Prometheus need them, checked without a running system:
//! the dashboard JSON (schema, ids, the data-source variable, a query in every panel), the generator in sync
//! with the committed files, and promtool on the configuration, the rules and the rules' unit tests.
//! `observability.rs` runs every query against a live Prometheus.

use safeloop_tests::dashboards::{alert_rules, dashboards, dashboards_dir};
use std::collections::BTreeSet;
use std::process::Command;

const DS: &str = "${datasource}";

#[test]
fn dashboards_are_what_grafana_imports() {
    let all = dashboards();
    let files: Vec<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        [
            "safeloop-loop.json",
            "safeloop-safety.json",
            "safeloop-serving.json",
            "safeloop-training.json"
        ]
    );
    let mut uids = BTreeSet::new();
    for (file, d) in &all {
        let at = |what: &str| format!("{file}: {what}");
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{}",
            at("schemaVersion ≥ 36 (Grafana 9+)")
        );
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40 && uids.insert(uid.to_string()),
            "{}",
            at("a unique uid of at most 40 characters")
        );
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{}",
            at("a `datasource` variable of type datasource (prometheus)")
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{}", at("no panels"));
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default();
            let here = |what: &str| at(&format!("panel {} `{title}`: {what}", p["id"]));
            assert!(!title.is_empty(), "{}", here("a title"));
            assert!(
                p["id"].as_u64().is_some_and(|id| ids.insert(id)),
                "{}",
                here("a unique numeric id")
            );
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 10),
                "{}",
                here("a description")
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{}",
                here("a unit")
            );
            assert!(p["type"].as_str().is_some(), "{}", here("a type"));
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            assert!(
                x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24)
                    && h.is_some_and(|h| h > 0)
                    && g["y"].as_u64().is_some(),
                "{}",
                here("a gridPos inside the 24-column grid")
            );
            assert_eq!(p["datasource"]["uid"], DS, "{}", here("the variable"));
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{}", here("no query"));
            let mut refs = BTreeSet::new();
            for t in targets {
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{}",
                    here("an empty query")
                );
                assert_eq!(t["datasource"]["uid"], DS, "{}", here("a target"));
                assert!(
                    t["refId"]
                        .as_str()
                        .is_some_and(|r| refs.insert(r.to_string())),
                    "{}",
                    here("unique refIds")
                );
            }
        }
    }
}

#[test]
fn the_committed_dashboards_are_what_the_generator_writes() {
    let out = Command::new("python3")
        .arg(dashboards_dir().join("generate.py"))
        .arg("--check")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dashboards_dir())
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_every_alert_passes_its_unit_test() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = alert_rules();
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a case that fires it and one that does not.
    let tests = std::fs::read_to_string(dashboards_dir().join("alerts_test.yml")).unwrap();
    let v: serde_json::Value = serde_yaml_ng::from_str(&tests).unwrap();
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in v["tests"].as_array().unwrap() {
        for c in t["alert_rule_test"].as_array().unwrap() {
            let name = c["alertname"].as_str().unwrap().to_string();
            if c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fired.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    for (name, _) in &rules {
        assert!(
            fired.contains(name) && silent.contains(name),
            "{name}: needs a firing and a silent case in alerts_test.yml"
        );
    }
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "SafeloopFlagRateSpike",
        "SafeloopScoringErrors",
        "SafeloopLogWriteErrors",
        "SafeloopHighTTFT",
        "SafeloopSwapFailed",
        "SafeloopNoPromotion",
        "SafeloopRoundFailed",
        "SafeloopLambdaAtCap",
        "SafeloopTrainerStale",
    ] {
        assert!(names.contains(wanted), "{wanted} missing from alerts.yml");
    }
}
