//! Helpers for end-to-end tests: locate (building if needed) the real binaries and the
//! reference fixtures beside the repository.

use std::path::PathBuf;
use std::process::Command;

pub mod dashboards;
pub mod moto;
mod prometheus;
pub use prometheus::{free_port, sample, Prometheus, Pushgateway};

/// Proptest settings for CI: `cases` cases (`SAFELOOP_PROPTEST_CASES` overrides) from a seed
/// (`SAFELOOP_PROPTEST_SEED`, else the clock) that is printed — shown when a test fails — so
/// the failing run can be replayed exactly. No regression files are written.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let seed = std::env::var("SAFELOOP_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    let cases = std::env::var("SAFELOOP_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    eprintln!("proptest: {cases} cases, seed {seed} (replay with SAFELOOP_PROPTEST_SEED={seed})");
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Default::default()
    }
}

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
    // The same selection as scripts/test.sh, so features resolve identically and a fresh
    // build is a no-op (building one package alone would rebuild shared dependencies).
    cmd.args(["build", "--quiet", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    strip_cargo_env(&mut cmd);
    // Always ask cargo: it is a no-op when the binary is fresh, and rebuilds a stale one.
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A running `safeloop-serve` on a free loopback port, killed on drop.
pub struct Server {
    pub child: std::process::Child,
    pub base: String,
    stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server with `args` and waits until `/health` answers 200.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let s = Self::start_with_env_no_wait(args, env);
        s.wait_ready(std::time::Duration::from_secs(120));
        s
    }

    /// Starts the server and returns once it listens (the model may still be loading).
    pub fn start_with_env_no_wait(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(args, env, None)
    }

    /// Starts the server as the last arguments of `wrapper` (a program that sets something
    /// up and then execs its arguments, keeping the process id) and waits until it is ready.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        let s = Self::spawn_with(Some(wrapper), args, env, None);
        s.wait_ready(std::time::Duration::from_secs(120));
        s
    }

    /// Starts the server with `dir` as its working directory (relative paths in a config file resolve there).
    pub fn start_in(dir: &std::path::Path, args: &[&str]) -> Server {
        let s = Self::spawn(args, &[], Some(dir));
        s.wait_ready(std::time::Duration::from_secs(180));
        s
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], dir: Option<&std::path::Path>) -> Server {
        Self::spawn_with(None, args, env, dir)
    }

    fn spawn_with(
        wrapper: Option<&[&str]>,
        args: &[&str],
        env: &[(&str, &str)],
        dir: Option<&std::path::Path>,
    ) -> Server {
        use std::io::BufRead;
        let serve = bin("safeloop-serve");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(&serve);
                c
            }
            None => Command::new(&serve),
        };
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start safeloop-serve");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("safeloop-serve: listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", lines.lock().unwrap()));
        Server {
            child,
            base,
            stderr_lines: lines,
        }
    }

    pub fn wait_ready(&self, limit: std::time::Duration) {
        let t = std::time::Instant::now();
        let client = reqwest::blocking::Client::new();
        while t.elapsed() < limit {
            if let Ok(r) = client.get(self.url("/health")).send() {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("server not ready: {:?}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits (up to a minute) until `/v1/models` says the server serves the policy `version` (after a swap).
    pub fn wait_for_version(&self, version: &str) {
        let t = std::time::Instant::now();
        loop {
            let m: serde_json::Value = reqwest::blocking::get(self.url("/v1/models"))
                .unwrap()
                .json()
                .unwrap();
            if m["data"][0]["version"] == version {
                return;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "no swap to {version}: {m}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr_lines.lock().unwrap().clone()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Value of a Prometheus sample (first line starting with `name`), if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A file of `../shared/data` (real preference data; tests may read it, the product does not).
pub fn data_file(name: &str) -> PathBuf {
    golden_dir("..").join("data").join(name)
}

/// A fresh, empty temporary directory unique to this test process.
pub fn fresh_tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("safeloop-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `safeloop-train` with one libtorch thread (tiny models: fastest, and parallel tests don't oversubscribe
/// the cores); returns (success, stdout, stderr).
pub fn run_train(args: &[&str]) -> (bool, String, String) {
    run_train_with_threads(args, 1)
}

/// Runs `safeloop-train` (one libtorch thread) with extra environment variables; returns (success, stdout, stderr).
pub fn run_train_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(bin("safeloop-train"))
        .args(args)
        .env("SAFELOOP_TRAIN_THREADS", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run safeloop-train");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `safeloop-train` with `threads` libtorch threads (SmolLM2-sized work wants every core); returns
/// (success, stdout, stderr).
pub fn run_train_with_threads(args: &[&str], threads: usize) -> (bool, String, String) {
    let out = Command::new(bin("safeloop-train"))
        .args(args)
        .env("SAFELOOP_TRAIN_THREADS", threads.to_string())
        .output()
        .expect("run safeloop-train");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A path as `&str` (test paths are UTF-8).
pub fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Writes the first `n` lines of a JSONL file into `dst`.
pub fn jsonl_head(src: &std::path::Path, n: usize, dst: &std::path::Path) {
    let text = std::fs::read_to_string(src).unwrap();
    std::fs::write(
        dst,
        text.lines().take(n).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A program of the Python test venv (`SAFELOOP_VENV`, default `.venv`, made by scripts/setup.sh).
pub fn venv_bin(name: &str) -> PathBuf {
    let p = std::env::var_os("SAFELOOP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
        .join("bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

/// Removes the test package's `CARGO_*` variables from a command that builds: `cargo test` gives them to this
/// process, and some build scripts (ring's) track CARGO_MANIFEST_DIR, so passing them on would make that build
/// differ from `cargo build` and rebuild the dependency chain twice per test run.
pub fn strip_cargo_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || matches!(
                &*k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(&*k);
        }
    }
}

/// Copies a golden model's files (without the golden outputs) into `dst`.
pub fn copy_golden(name: &str, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(golden_dir(name)).unwrap().flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if !f.starts_with("golden") {
            std::fs::copy(e.path(), dst.join(&f)).unwrap();
        }
    }
}

/// Runs `safeloop-train` and parses the JSON of its last stdout line (panics with stderr on failure).
pub fn train_json(args: &[&str]) -> serde_json::Value {
    train_json_env(args, &[])
}

/// `train_json` with extra environment variables (e.g. an object store's endpoint and keys).
pub fn train_json_env(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let (ok, out, err) = run_train_env(args, env);
    assert!(ok, "safeloop-train {args:?} failed: {err}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// The first `n` distinct prompts of `pku_saferlhf_train.jsonl`, sorted.
pub fn distinct_prompts(n: usize) -> Vec<String> {
    std::fs::read_to_string(data_file("pku_saferlhf_train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .take(n)
        .collect()
}

/// The tiny golden policy copied to `model`, published to the registry `reg` as `tiny` and promoted to
/// champion; returns its version.
pub fn tiny_champion(reg: &std::path::Path, model: &std::path::Path) -> String {
    copy_golden("llama-gqa", model);
    let spec = format!("{}/tiny", path_str(reg));
    let v = train_json(&[
        "registry",
        "publish",
        &spec,
        "--model",
        path_str(model),
        "--kind",
        "policy",
    ])["version"]
        .as_str()
        .unwrap()
        .to_string();
    train_json(&["registry", "promote", &spec, &v]);
    v
}

/// The token-rule scorers the PPO tests optimise against: reward = 10 × the share of response ids in [4, 256),
/// cost = 10 × the share in [4, 130) − 2 (the constrained optimum uses ids 130–255).
pub const RULE_REWARD: &str = "token-fraction:4:256:10";
pub const RULE_COST: &str = "token-fraction:4:130:10:-2";

/// Runs `safeloop-train <command>` (ppo, ppo-lag, sweep…) on the tiny golden policy with the rule scorers and the
/// PKU train prompts, writing to `out`, followed by `extra`; returns (success, stdout, stderr).
pub fn rule_ppo(command: &str, out: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    rule_ppo_with(command, out, [RULE_REWARD, RULE_COST], extra)
}

/// `rule_ppo` with other rules for the reward and the cost.
pub fn rule_ppo_with(
    command: &str,
    out: &std::path::Path,
    [reward, cost]: [&str; 2],
    extra: &[&str],
) -> (bool, String, String) {
    let (actor, prompts) = (
        golden_dir("llama-gqa"),
        data_file("pku_saferlhf_train.jsonl"),
    );
    let mut args = vec![
        command,
        "--actor",
        path_str(&actor),
        "--reward-model",
        reward,
        "--cost-model",
        cost,
        "--prompts",
        path_str(&prompts),
        "--out",
        path_str(out),
    ];
    args.extend_from_slice(extra);
    run_train(&args)
}

/// A round configuration for the tiny champion of `reg`, on the log in `log`, with its state in `state` and
/// annotations in `annotations`, evaluated on `pku_saferlhf_dev` prompts, followed by `settings` (TOML lines:
/// the scorers and everything else the test chooses).
pub fn write_round_config(
    path: &std::path::Path,
    [reg, log, state, annotations]: [&std::path::Path; 4],
    settings: &str,
) {
    std::fs::write(
        path,
        format!(
            "policy = \"{}/tiny\"\nlog-dir = \"{}\"\nstate-dir = \"{}\"\nannotations = \"{}\"\neval-prompts = [\"{}\"]\n{settings}\n",
            path_str(reg),
            path_str(log),
            path_str(state),
            path_str(annotations),
            path_str(&data_file("pku_saferlhf_dev.jsonl")),
        ),
    )
    .unwrap();
}

/// Round settings whose promotion gate any challenger passes (for tests about everything but the verdict).
pub const ANY_CHALLENGER_PASSES: &str = "gate-cost-target = 1000
gate-reward-tolerance = 1000
gate-harmful-tolerance = 1
gate-min-length-ratio = 0
gate-min-distinct-ratio = 0";
