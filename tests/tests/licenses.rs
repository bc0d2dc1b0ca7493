//! Every crate in the dependency tree carries an allowed licence and none is banned
//! (deny.toml), checked offline by cargo-deny (pinned and built by scripts/setup.sh).

use safeloop_tests::{repo_root, strip_cargo_env};
use std::process::Command;

#[test]
fn every_crate_has_an_allowed_licence_and_none_is_banned() {
    let deny = repo_root().join(".tools/cargo-deny/bin/cargo-deny");
    assert!(
        deny.exists(),
        "{} is missing: run scripts/setup.sh",
        deny.display()
    );
    let mut cmd = Command::new(&deny);
    cmd.args(["--offline", "check", "licenses", "bans"])
        .current_dir(repo_root());
    // cargo-deny runs `cargo metadata`: not with this test's cargo environment.
    strip_cargo_env(&mut cmd);
    let out = cmd.output().expect("run cargo-deny");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("bans ok") && text.contains("licenses ok"),
        "{text}"
    );
}
