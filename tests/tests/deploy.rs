//! The scheduling files of `deploy/` are valid where they will run: the systemd units by `systemd-analyze verify`
//! (with the install prefix pointed at this checkout, so the binaries it names exist), the Kubernetes manifests by
//! `kubernetes-validate --strict` (the API schemas, from PyPI), and the round configurations they run parse
//! (`safeloop-train round --check`).

use safeloop_tests::{bin, fresh_tmp, path_str, repo_root, run_train, venv_bin};
use std::process::Command;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn systemd_units_verify_and_schedule_the_round_persistently() {
    bin("safeloop-serve");
    bin("safeloop-train");
    let tmp = fresh_tmp("deploy-systemd");
    let root = repo_root().canonicalize().unwrap();
    for unit in [
        "safeloop-serve.service",
        "safeloop-round.service",
        "safeloop-round.timer",
    ] {
        let text = read(&format!("deploy/systemd/{unit}"));
        std::fs::write(
            tmp.join(unit),
            text.replace("/opt/safeloop", path_str(&root)),
        )
        .unwrap();
    }
    let units: Vec<String> = [
        "safeloop-serve.service",
        "safeloop-round.service",
        "safeloop-round.timer",
    ]
    .iter()
    .map(|u| path_str(&tmp.join(u)).to_string())
    .collect();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and unparsable values are only warnings to systemd: none may appear.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze warnings:\n{stderr}"
    );
    let timer = read("deploy/systemd/safeloop-round.timer");
    assert!(timer.contains("Persistent=true"), "{timer}");
    let service = read("deploy/systemd/safeloop-round.service");
    assert!(
        service.contains("SuccessExitStatus=3"),
        "a rejected round is not a failed unit"
    );
    assert!(service.contains("round --config /opt/safeloop/config/round.toml"));
    let cron = read("deploy/cron/safeloop-round.crontab");
    let line = cron
        .lines()
        .find(|l| !l.starts_with('#') && l.contains("safeloop-train round"))
        .expect("a crontab line runs the round");
    assert_eq!(
        line.split_whitespace().take(5).count(),
        5,
        "five schedule fields: {line}"
    );
    assert!(line.contains("--config config/round.toml"), "{line}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn kubernetes_manifests_match_the_api_schemas_and_the_loop_contract() {
    let files: Vec<String> = ["storage", "configmap", "serve", "round-cronjob"]
        .iter()
        .map(|f| path_str(&repo_root().join(format!("deploy/k8s/{f}.yaml"))).to_string())
        .collect();
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 5, "{text}");
    let cron = read("deploy/k8s/round-cronjob.yaml");
    for needle in [
        "concurrencyPolicy: Forbid",
        "startingDeadlineSeconds:",
        "backoffLimit: 0",
        "restartPolicy: Never",
        "claimName: safeloop-data",
    ] {
        assert!(cron.contains(needle), "round CronJob lacks `{needle}`");
    }
    let serve = read("deploy/k8s/serve.yaml");
    assert!(serve.contains("readinessProbe:") && serve.contains("path: /health"));
    assert!(serve.contains("claimName: safeloop-data"));

    // The round configuration of the ConfigMap parses: `--check` only finds the cluster's /data paths missing.
    let cm = read("deploy/k8s/configmap.yaml");
    let round_toml: String = cm
        .split("round.toml: |\n")
        .nth(1)
        .expect("round.toml in the ConfigMap")
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let tmp = fresh_tmp("deploy-k8s");
    std::fs::write(tmp.join("round.toml"), &round_toml).unwrap();
    let (ok, stdout, stderr) = run_train(&[
        "round",
        "--config",
        path_str(&tmp.join("round.toml")),
        "--check",
    ]);
    assert!(!ok, "the cluster paths do not exist here");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    for p in report["problems"].as_array().unwrap() {
        assert!(
            p.as_str().unwrap().contains("/data/"),
            "unexpected problem: {p}"
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn the_default_round_configuration_is_ready_after_setup() {
    // scripts/round.sh (set-up, build, build_models.sh, then the round on config/round.toml) with --check: the
    // policy and the score models config/round.toml names are published, its prompt files load.
    bin("safeloop-train");
    let mut cmd = Command::new("bash");
    cmd.current_dir(repo_root())
        .args(["scripts/round.sh", "--check"]);
    safeloop_tests::strip_cargo_env(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
}
