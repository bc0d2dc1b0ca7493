//! Real Prometheus services for the tests (Debian packages `prometheus` and `prometheus-pushgateway`, installed
//! by scripts/setup.sh), each on a free loopback port and killed on drop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_ready(url: &str, what: &str, child: &mut std::process::Child) {
    let t = Instant::now();
    while reqwest::blocking::get(format!("{url}/-/ready"))
        .map_or(true, |r| !r.status().is_success())
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real Prometheus Pushgateway (Debian package `prometheus-pushgateway`, installed by scripts/setup.sh) on a free
/// loopback port, killed on drop.
pub struct Pushgateway {
    child: std::process::Child,
    pub url: String,
}

impl Pushgateway {
    pub fn start() -> Pushgateway {
        let port = free_port();
        let mut child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway (Debian package; scripts/setup.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&url, "prometheus-pushgateway", &mut child);
        Pushgateway { child, url }
    }

    /// The exposition of every pushed group.
    pub fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/metrics", self.url))
            .unwrap()
            .text()
            .unwrap()
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `name{labels…}` whose labels include every `key="value"` of `want`.
pub fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A real Prometheus server with `config` (YAML text, written beside its TSDB in `dir`; relative `rule_files`
/// resolve against `dir`).
pub struct Prometheus {
    child: std::process::Child,
    pub url: String,
}

impl Prometheus {
    pub fn start(dir: &std::path::Path, config: &str) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package; scripts/setup.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&url, "prometheus", &mut child);
        Prometheus { child, url }
    }

    /// An instant query through the HTTP API: `Ok(result)` (the `data.result` array, or a scalar's pair) or
    /// `Err(error)` as Prometheus words it (a parse error, say).
    pub fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let r: serde_json::Value = reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/query", self.url))
            .form(&[("query", expr)])
            .send()
            .map_err(|e| e.to_string())?
            .json()
            .map_err(|e| e.to_string())?;
        if r["status"] == "success" {
            Ok(r["data"]["result"].clone())
        } else {
            Err(format!("{}: {}", r["errorType"], r["error"]))
        }
    }

    /// The health of each scrape target (`job` → `up`).
    pub fn targets_up(&self) -> Vec<(String, bool)> {
        let r: serde_json::Value = reqwest::blocking::get(format!("{}/api/v1/targets", self.url))
            .unwrap()
            .json()
            .unwrap();
        r["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or("").to_string(),
                    t["health"] == "up",
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
