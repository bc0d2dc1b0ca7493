//! Helpers for end-to-end tests: locate (building if needed) the real binaries and the
//! reference fixtures beside the repository.

use std::path::PathBuf;
use std::process::Command;

/// The golden fixtures (`../shared/golden`, or `$SAFELOOP_GOLDEN`).
pub fn golden_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("SAFELOOP_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    root.join(name)
}

pub fn golden_json(name: &str) -> serde_json::Value {
    let p = golden_dir(name).join("golden.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .expect("golden.json parses")
}

/// Path of a workspace binary built with the same profile as the running test, built on
/// demand (`cargo test` does not build other packages' binaries).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", name, "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    // Always ask cargo: it is a no-op when the binary is fresh, and rebuilds a stale one.
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    assert!(path.exists(), "{} missing after build", path.display());
    path
}
