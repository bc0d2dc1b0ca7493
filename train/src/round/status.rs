//! The round's own figures for Prometheus (`--pushgateway`): the group `command="round-status"` is replaced at
//! every step and at the end with where the round stands (number, steps done, running), how the rounds so far
//! ended (`safeloop_rounds_total{outcome}` from `STATE/rounds.jsonl`, the last promotion's time), how this one
//! ended (`safeloop_round_last_outcome{outcome}`, exit code) and every figure its promotion gate used.

use super::state::{Round, StateDir, Status};
use crate::push::{Exposition, PushArgs, Pusher};
use serde_json::Value;
use std::collections::BTreeMap;

/// How a round can end: a finished status, or `failed` (an error; the round stays unfinished).
const OUTCOMES: [&str; 5] = ["promoted", "rejected", "skipped", "abandoned", "failed"];
const FINISHED: [Status; 4] = [
    Status::Promoted,
    Status::Rejected,
    Status::Skipped,
    Status::Abandoned,
];

/// What `STATE/rounds.jsonl` says of the finished rounds.
#[derive(Default)]
struct History {
    by_status: BTreeMap<String, u64>,
    last_promotion_ms: Option<u64>,
}

impl History {
    fn load(state: &StateDir) -> Self {
        let mut h = History::default();
        let text = std::fs::read_to_string(state.root.join("rounds.jsonl")).unwrap_or_default();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let status = v["status"].as_str().unwrap_or("unknown").to_string();
            if status == Status::Promoted.as_str() {
                let finished = v["round"]
                    .as_str()
                    .and_then(|id| state.load(id).ok())
                    .and_then(|r| r.record.finished_ms);
                h.last_promotion_ms = h.last_promotion_ms.max(finished);
            }
            *h.by_status.entry(status).or_default() += 1;
        }
        h
    }
}

/// Where the round stands, read from its record: its number and each finished step's seconds.
#[derive(Default)]
struct Progress {
    round: u64,
    step_seconds: BTreeMap<String, f64>,
}

impl Progress {
    fn of(round: &Round) -> Self {
        Self {
            round: round.number(),
            step_seconds: round
                .record
                .steps
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v["seconds"].as_f64()?)))
                .collect(),
        }
    }
}

pub struct StatusPush<'a> {
    pusher: Option<Pusher>,
    state: &'a StateDir,
    history: History,
    /// The last round seen (what a failure reports).
    progress: Progress,
}

impl<'a> StatusPush<'a> {
    /// `None` pusher without `--pushgateway`: every call is then a no-op.
    pub fn new(args: &PushArgs, state: &'a StateDir) -> Self {
        let pusher = Pusher::for_group(args, "round-status");
        Self {
            history: if pusher.is_some() {
                History::load(state)
            } else {
                History::default()
            },
            pusher,
            state,
            progress: Progress::default(),
        }
    }

    fn base(&self, running: bool) -> Exposition {
        let p = &self.progress;
        let mut e = Exposition::default();
        e.gauge(
            "safeloop_round_number",
            "The round's number",
            p.round as f64,
        )
        .gauge(
            "safeloop_round_running",
            "1 while a round runs, 0 once it ended",
            running as u8 as f64,
        )
        .gauge(
            "safeloop_round_steps_done",
            "Steps of the round done (of harvest, annotate, optimise, evaluate, gate, publish)",
            p.step_seconds.len() as f64,
        );
        for (step, s) in &p.step_seconds {
            e.sample(
                "gauge",
                "safeloop_round_step_seconds",
                "Seconds each step of the round took",
                &[("step", step)],
                *s,
            );
        }
        for status in FINISHED {
            let n = self.history.by_status.get(status.as_str()).copied();
            e.sample(
                "counter",
                "safeloop_rounds_total",
                "Rounds finished, by outcome (from the state directory's rounds.jsonl)",
                &[("outcome", status.as_str())],
                n.unwrap_or(0) as f64,
            );
        }
        if let Some(ms) = self.history.last_promotion_ms {
            e.gauge(
                "safeloop_round_last_promotion_timestamp_seconds",
                "When a round last promoted a challenger (Unix seconds)",
                ms as f64 / 1000.0,
            );
        }
        e
    }

    /// A step of `round` was recorded.
    pub fn step(&mut self, round: &Round) {
        if self.pusher.is_none() {
            return;
        }
        self.progress = Progress::of(round);
        let body = self.base(true).text();
        self.send(body);
    }

    /// `round` was finished (recorded in the state directory); its summary carries the gate's figures.
    pub fn finished(&mut self, round: &Round, summary: &Value) {
        if self.pusher.is_none() {
            return;
        }
        self.progress = Progress::of(round);
        self.history = History::load(self.state);
        let mut e = self.base(false);
        outcome_samples(
            &mut e,
            round.record.status.as_str(),
            summary["exit_code"].as_f64().unwrap_or(0.0),
        );
        gate_samples(&mut e, summary);
        self.send(e.text());
    }

    /// The round stopped on an error (it stays unfinished: `--resume` or `--abandon`).
    pub fn failed(&mut self) {
        if self.pusher.is_none() {
            return;
        }
        let mut e = self.base(false);
        outcome_samples(&mut e, "failed", 1.0);
        self.send(e.text());
    }

    fn send(&mut self, body: String) {
        if let Some(p) = &mut self.pusher {
            p.push_text(body);
        }
    }
}

fn outcome_samples(e: &mut Exposition, outcome: &str, exit_code: f64) {
    for o in OUTCOMES {
        e.sample(
            "gauge",
            "safeloop_round_last_outcome",
            "How the last round ended (1 for its outcome)",
            &[("outcome", o)],
            (o == outcome) as u8 as f64,
        );
    }
    e.gauge(
        "safeloop_round_exit_code",
        "The last round's exit status (0 promoted or skipped, 3 rejected, 1 failed)",
        exit_code,
    );
}

/// The evaluation's figures for champion and challenger, and each gate check.
fn gate_samples(e: &mut Exposition, summary: &Value) {
    let ev = &summary["evaluate"];
    for policy in ["champion", "challenger"] {
        let p = &ev[policy];
        let l = [("policy", policy)];
        let mut f = |name: &str, help: &str, v: &Value, labels: &[(&str, &str)]| {
            if let Some(x) = v.as_f64() {
                e.sample("gauge", name, help, labels, x);
            }
        };
        let hr = "Share of evaluation answers scored harmful, by policy and scorer";
        f(
            "safeloop_round_harmful_ratio",
            hr,
            &p["harmful_ratio"],
            &[("policy", policy), ("scorer", "cost_model")],
        );
        f(
            "safeloop_round_harmful_ratio",
            hr,
            &p["judge_harmful_ratio"],
            &[("policy", policy), ("scorer", "judge")],
        );
        f(
            "safeloop_round_mean_cost",
            "Mean cost of the evaluation answers",
            &p["mean_cost"],
            &l,
        );
        f(
            "safeloop_round_mean_reward",
            "Mean reward of the evaluation answers",
            &p["mean_reward"],
            &l,
        );
        f(
            "safeloop_round_mean_length",
            "Mean answer length in tokens",
            &p["mean_length"],
            &l,
        );
        f(
            "safeloop_round_distinct_share",
            "Share of distinct answers",
            &p["distinct_share"],
            &l,
        );
    }
    let checks = summary["gate"]["checks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut failed = 0;
    for c in &checks {
        let passed = c["passed"].as_bool().unwrap_or(false);
        failed += (!passed) as u32;
        if let Some(name) = c["name"].as_str() {
            e.sample(
                "gauge",
                "safeloop_round_gate_check_passed",
                "1 when the promotion gate's check passed",
                &[("check", name)],
                passed as u8 as f64,
            );
        }
    }
    e.gauge(
        "safeloop_round_gate_checks_failed",
        "Promotion gate checks that failed",
        failed as f64,
    );
    if let Some(w) = summary["wall_s_this_run"].as_f64() {
        e.gauge(
            "safeloop_round_wall_seconds",
            "Wall time of the round's last run",
            w,
        );
    }
}
