//! API fuzzing in CI: scripts/fuzz_api.sh (schemathesis against a live server following its own
//! /openapi.json) with a bounded number of cases; the documented long run uses the same script.

use safeloop_tests::{bin, repo_root, venv_bin};
use std::process::Command;

#[test]
fn schemathesis_finds_no_5xx_and_no_schema_violation() {
    let serve = bin("safeloop-serve");
    venv_bin("schemathesis");
    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| {
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 1_000_000)
            .to_string()
    });
    let out = std::env::temp_dir().join(format!("safeloop-fuzz-api-{}", std::process::id()));
    let run = Command::new("bash")
        .arg(repo_root().join("scripts/fuzz_api.sh"))
        .env("FUZZ_CASES", "12")
        .env("FUZZ_SEED", &seed)
        .env("FUZZ_OUT", &out)
        .env("SAFELOOP_SERVE_BIN", &serve)
        .current_dir(repo_root())
        .output()
        .expect("run scripts/fuzz_api.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "fuzzing failed (rerun with FUZZ_SEED={seed}):\n{text}"
    );
    // All three passes ran, reached generation, and the server never answered 5xx.
    for pass in ["with-api-key", "with-admin-key", "without-keys"] {
        assert!(text.contains(&format!("{pass}: passed")), "{text}");
    }
    assert!(text.contains("(server counter): 0;"), "{text}");
    let total: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("fuzz_api: ")?
                .split(" cases in all")
                .next()?
                .parse()
                .ok()
        })
        .expect("a case count");
    assert!(total >= 300, "only {total} cases ran:\n{text}");
    let _ = std::fs::remove_dir_all(&out);
}
