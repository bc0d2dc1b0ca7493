//! `--pushgateway URL`: every metrics record a training command writes is also pushed to a Prometheus
//! Pushgateway, each numeric field (and those of a nested object, joined by `_`) as a gauge
//! `safeloop_train_<field>` in the group `job/<--job>/command/<command>`, with `safeloop_train_running` (1; 0
//! once the command ended) and `safeloop_train_last_push_timestamp_seconds`. The JSONL file stays the always-on
//! record; a failed push is reported on stderr and training goes on. `Exposition` builds labelled text for other groups (`round-status`).

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

/// `safeloop_train_<key>` with anything outside `[a-zA-Z0-9_]` replaced by `_`.
fn metric_name(key: &str) -> String {
    let k: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("safeloop_train_{k}")
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A Prometheus text exposition being built: samples grouped by metric family, one `# HELP`/`# TYPE` each.
#[derive(Default)]
pub struct Exposition {
    families: std::collections::BTreeMap<String, Family>,
}

struct Family {
    kind: &'static str,
    help: String,
    samples: Vec<(String, f64)>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// Adds a sample (non-finite values are left out); `kind` is `gauge` or `counter`.
    pub fn sample(
        &mut self,
        kind: &'static str,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        v: f64,
    ) -> &mut Self {
        if !v.is_finite() {
            return self;
        }
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            format!("{{{}}}", l.join(","))
        };
        self.families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                kind,
                help: help.to_string(),
                samples: vec![],
            })
            .samples
            .push((labels, v));
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> &mut Self {
        self.sample("gauge", name, help, &[], v)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            if !f.help.is_empty() {
                out.push_str(&format!("# HELP {name} {}\n", f.help.replace('\n', " ")));
            }
            out.push_str(&format!("# TYPE {name} {}\n", f.kind));
            for (labels, v) in &f.samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        }
        out
    }
}

/// The Prometheus text exposition of a record's numeric (and boolean) top-level fields, with
/// `safeloop_train_running 1` and the push time.
pub fn exposition(record: &Value) -> String {
    let mut e = Exposition::default();
    fn add(e: &mut Exposition, key: &str, v: &Value, depth: usize) {
        match v {
            Value::Number(n) => {
                e.gauge(&metric_name(key), "", n.as_f64().unwrap_or(f64::NAN));
            }
            Value::Bool(b) => {
                e.gauge(&metric_name(key), "", *b as u8 as f64);
            }
            // One level of nesting (`{"eval": {"accuracy": …}}` → `safeloop_train_eval_accuracy`).
            Value::Object(m) if depth == 0 => {
                for (k, v) in m {
                    add(e, &format!("{key}_{k}"), v, 1);
                }
            }
            _ => {}
        }
    }
    if let Some(map) = record.as_object() {
        for (k, v) in map {
            add(&mut e, k, v, 0);
        }
    }
    e.gauge(
        "safeloop_train_running",
        "1 while the command runs, 0 once it ended",
        1.0,
    );
    e.gauge(
        "safeloop_train_last_push_timestamp_seconds",
        "When the command last pushed (Unix seconds)",
        now_secs(),
    );
    e.text()
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

pub struct Pusher {
    url: String,
    client: reqwest::blocking::Client,
    failures: u64,
    /// Step records: at the end `safeloop_train_running` is set to 0 in the group.
    steps: bool,
    pushed: bool,
}

impl Pusher {
    /// A pusher for this process's command (the subcommand it runs), or `None` without `--pushgateway`.
    pub fn new(args: &PushArgs) -> Option<Self> {
        let command = std::env::args().nth(1).unwrap_or_else(|| "train".into());
        let mut p = Self::for_group(args, &command)?;
        p.steps = true;
        Some(p)
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
            steps: false,
            pushed: false,
        })
    }

    /// Sends this record's figures: the first push of the process replaces the group (a new run starts
    /// clean), later ones replace only the metrics they carry (an evaluation record leaves the step
    /// figures). A failure is reported (the first and every 100th).
    pub fn push(&mut self, record: &Value) {
        let replace = !self.pushed;
        self.send(replace, exposition(record));
    }

    /// Replaces the group with `body` (a text exposition).
    pub fn push_text(&mut self, body: String) {
        self.send(true, body);
    }

    /// `PUT` replaces the whole group, `POST` only the families in `body`.
    fn send(&mut self, replace: bool, body: String) {
        let req = if replace {
            self.client.put(&self.url)
        } else {
            self.client.post(&self.url)
        };
        let res = req
            .header("content-type", "text/plain; version=0.0.4")
            .body(body)
            .send()
            .and_then(|r| r.error_for_status());
        match res {
            Ok(_) => self.pushed = true,
            Err(e) => {
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
}

impl Drop for Pusher {
    /// The command ended (or is unwinding from an error): its group says it no longer runs, so a
    /// silent group means a finished job, not a stuck one. A killed process leaves `running 1` behind,
    /// which is what the stale-data alert looks for.
    fn drop(&mut self) {
        if self.steps && self.pushed {
            let mut e = Exposition::default();
            e.gauge(
                "safeloop_train_running",
                "1 while the command runs, 0 once it ended",
                0.0,
            );
            self.send(false, e.text());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numeric_fields_become_gauges() {
        let text = super::exposition(&serde_json::json!({
            "step": 3, "lambda": 1.5, "lambda_capped": true, "cost": null, "epoch_name": "x", "nan": f64::NAN,
            "eval": {"accuracy": 0.75, "deeper": {"x": 1}}
        }));
        assert!(
            text.contains("safeloop_train_eval_accuracy 0.75\n"),
            "{text}"
        );
        assert!(!text.contains("deeper"));
        assert!(text.contains("safeloop_train_step 3\n"), "{text}");
        assert!(text.contains("safeloop_train_lambda 1.5\n"));
        assert!(text.contains("safeloop_train_lambda_capped 1\n"));
        assert!(!text.contains("safeloop_train_cost"));
        assert!(!text.contains("epoch_name"));
        assert!(text.contains("safeloop_train_last_push_timestamp_seconds "));
        assert!(text.contains("safeloop_train_running 1\n"));
        assert_eq!(text.matches("# TYPE safeloop_train_step gauge").count(), 1);
    }

    #[test]
    fn labelled_samples_share_one_family_and_escape_their_values() {
        let mut e = super::Exposition::default();
        e.sample("counter", "x_total", "help", &[("a", "1")], 2.0)
            .sample("counter", "x_total", "help", &[("a", "q\"\\\n")], 3.0)
            .gauge("y", "", f64::INFINITY);
        assert_eq!(
            e.text(),
            "# HELP x_total help\n# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"q\\\"\\\\\\n\"} 3\n"
        );
    }
}
