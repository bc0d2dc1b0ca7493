//! `--pushgateway URL`: every metrics record a training command writes is also pushed to a Prometheus
//! Pushgateway, each numeric field as a gauge `safeloop_train_<field>` in the group `job/<--job>/command/<command>`
//! (replaced at each push), with `safeloop_train_last_push_timestamp_seconds`. The JSONL file stays the always-on
//! record; a failed push is reported on stderr and training goes on.

use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PushArgs {
    /// Also push every metrics record to this Prometheus Pushgateway (e.g. http://127.0.0.1:9091).
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
    /// The Pushgateway job the metrics are grouped under.
    #[arg(long, default_value = "safeloop-train")]
    pub job: String,
}

pub struct Pusher {
    url: String,
    client: reqwest::blocking::Client,
    failures: u64,
}

/// `safeloop_train_<key>` with anything outside `[a-zA-Z0-9_]` replaced by `_`.
fn metric_name(key: &str) -> String {
    let k: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("safeloop_train_{k}")
}

/// The Prometheus text exposition of a record's numeric (and boolean) top-level fields.
pub fn exposition(record: &Value) -> String {
    let mut out = String::new();
    let mut push = |name: String, v: f64| {
        if v.is_finite() {
            out.push_str(&format!("# TYPE {name} gauge\n{name} {v}\n"));
        }
    };
    if let Some(map) = record.as_object() {
        for (k, v) in map {
            match v {
                Value::Number(n) => push(metric_name(k), n.as_f64().unwrap_or(f64::NAN)),
                Value::Bool(b) => push(metric_name(k), *b as u8 as f64),
                _ => {}
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    push("safeloop_train_last_push_timestamp_seconds".into(), now);
    out
}

fn segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Pusher {
    /// A pusher for this process's command (the subcommand it runs), or `None` without `--pushgateway`.
    pub fn new(args: &PushArgs) -> Option<Self> {
        let command = std::env::args().nth(1).unwrap_or_else(|| "train".into());
        Self::for_group(args, &command)
    }

    /// A pusher for the group `command` (e.g. `round-status` beside the round's PPO steps in `round`).
    pub fn for_group(args: &PushArgs, command: &str) -> Option<Self> {
        let base = args.pushgateway.as_ref()?.trim_end_matches('/').to_string();
        Some(Self {
            url: format!(
                "{base}/metrics/job/{}/command/{}",
                segment(&args.job),
                segment(command)
            ),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            failures: 0,
        })
    }

    /// Replaces the group with this record's figures; a failure is reported (the first and every 100th).
    pub fn push(&mut self, record: &Value) {
        let body = exposition(record);
        let res = self
            .client
            .put(&self.url)
            .header("content-type", "text/plain; version=0.0.4")
            .body(body)
            .send()
            .and_then(|r| r.error_for_status());
        if let Err(e) = res {
            if self.failures.is_multiple_of(100) {
                eprintln!(
                    "warning: pushing metrics to {} failed ({e}); training goes on, metrics.jsonl has every record",
                    self.url
                );
            }
            self.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numeric_fields_become_gauges() {
        let text = super::exposition(&serde_json::json!({
            "step": 3, "lambda": 1.5, "lambda_capped": true, "cost": null, "epoch_name": "x", "nan": f64::NAN
        }));
        assert!(text.contains("safeloop_train_step 3\n"), "{text}");
        assert!(text.contains("safeloop_train_lambda 1.5\n"));
        assert!(text.contains("safeloop_train_lambda_capped 1\n"));
        assert!(!text.contains("safeloop_train_cost"));
        assert!(!text.contains("epoch_name"));
        assert!(text.contains("safeloop_train_last_push_timestamp_seconds "));
    }
}
