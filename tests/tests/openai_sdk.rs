//! The official `openai` Python package (pinned in tests/python/requirements.txt, installed
//! into .venv by scripts/setup.sh) runs chat, streaming chat, completions, the models list
//! and invalid requests against the real server, unmodified.

use safeloop_tests::{golden_dir, Server};
use std::process::Command;

#[test]
fn unmodified_openai_sdk_talks_to_the_server() {
    let root = safeloop_tests::repo_root();
    let python = safeloop_tests::venv_bin("python");
    let dir = golden_dir("llama-gqa");
    let s = Server::start(&["--model", dir.to_str().unwrap()]);
    let out = Command::new(&python)
        .arg(root.join("tests/python/openai_sdk_check.py"))
        .arg(&s.base)
        .arg("llama-gqa")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai SDK checks passed"));
}
