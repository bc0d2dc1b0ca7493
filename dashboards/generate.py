#!/usr/bin/env python3
"""Writes the Grafana dashboards of safeloop (dashboards/*.json) from the panel lists below.

    python3 dashboards/generate.py           # rewrite the JSON files
    python3 dashboards/generate.py --check   # exit 1 if a committed file differs from what this writes

Every panel has a unique id, a description, a unit and at least one PromQL target; every target and panel
uses the `datasource` variable, so the dashboards import into any Grafana with any Prometheus data source.
tests/tests/observability.rs runs every expression here against a real Prometheus.
"""

import json
import sys
from pathlib import Path

RATE = "$__rate_interval"


def q(expr, legend=""):
    return (expr, legend)


def panel(title, description, unit, targets, kind="timeseries", width=12, height=8, **extra):
    return dict(title=title, description=description, unit=unit, targets=targets, kind=kind,
                width=width, height=height, extra=extra)


def quantiles(metric, by="", qs=(0.5, 0.99), legend_prefix=""):
    labels = ", ".join(["le"] + ([by] if by else []))
    out = []
    for x in qs:
        legend = f"{legend_prefix}p{int(x * 100)}" + (f" {{{{{by}}}}}" if by else "")
        out.append(q(f"histogram_quantile({x}, sum by ({labels}) (rate({metric}_bucket[{RATE}])))",
                     legend.strip()))
    return out


FLAGGED = 'action=~"block|annotate|resample"'

SERVING = [
    panel("Requests by route and status", "HTTP requests per second, by route and status code.", "reqps",
          [q(f"sum by (route, status) (rate(safeloop_requests_total[{RATE}]))", "{{route}} {{status}}")]),
    panel("Output and prompt tokens/s",
          "Generated tokens, prompt tokens prefilled and prompt tokens served from the prefix cache, per second.",
          "short",
          [q(f"rate(safeloop_generation_tokens_total[{RATE}])", "output"),
           q(f"rate(safeloop_prompt_tokens_total[{RATE}])", "prompt"),
           q(f"rate(safeloop_prefix_cache_hit_tokens_total[{RATE}])", "prefix-cache hits")]),
    panel("Time to first token", "Arrival to first output token, p50 and p99.", "s",
          quantiles("safeloop_time_to_first_token_seconds")),
    panel("Inter-token latency", "Time between consecutive output tokens of a choice, p50 and p99.", "s",
          quantiles("safeloop_inter_token_latency_seconds")),
    panel("End-to-end and queue time",
          "Request latency from arrival to the last token (p50, p99) and time waiting for a decode slot (p99).",
          "s",
          quantiles("safeloop_e2e_request_latency_seconds", legend_prefix="e2e ")
          + quantiles("safeloop_queue_time_seconds", qs=(0.99,), legend_prefix="queue ")),
    panel("Sequences and batch size",
          "Sequences decoding and waiting for a slot, and the median number of sequences per engine step.",
          "short",
          [q("safeloop_sequences_running", "running"), q("safeloop_sequences_waiting", "waiting"),
           q(f"histogram_quantile(0.5, sum by (le) (rate(safeloop_batch_size_bucket[{RATE}])))", "batch p50")]),
    panel("KV cache", "Positions held in the KV caches of running sequences and in the prefix cache.", "short",
          [q("safeloop_kv_cache_tokens", "running sequences"), q("safeloop_prefix_cache_tokens", "prefix cache")]),
    panel("KV cache memory", "Bytes allocated for KV caches.", "bytes",
          [q("safeloop_kv_cache_bytes", "KV cache")]),
    panel("Client disconnects", "Requests per second whose client went away before the last token.", "reqps",
          [q(f"rate(safeloop_client_disconnects_total[{RATE}])", "disconnects")]),
    panel("Requests by policy version", "Completion requests per second, by the policy version that served them.",
          "reqps",
          [q(f"sum by (version) (rate(safeloop_requests_by_version_total[{RATE}]))", "{{version}}")]),
    panel("Trajectory log throughput", "Trajectory records and bytes written per second.", "short",
          [q(f"rate(safeloop_log_records_total[{RATE}])", "records/s"),
           q(f"rate(safeloop_log_bytes_total[{RATE}])", "bytes/s")]),
    panel("Trajectory log errors and fsync time",
          "Log writes that failed (should stay 0) and the mean seconds per fsync.", "short",
          [q(f"increase(safeloop_log_write_errors_total[{RATE}])", "write errors"),
           q(f"rate(safeloop_log_fsync_seconds_total[{RATE}]) / rate(safeloop_log_fsyncs_total[{RATE}])",
             "seconds per fsync")]),
]

SAFETY = [
    panel("Flag rate by policy version",
          "Share of choices the cost model flagged (blocked, annotated or resampled), by the policy version that "
          "wrote them: the number the loop exists to bring down.", "percentunit",
          [q(f"sum by (version) (rate(safeloop_gate_decisions_total{{{FLAGGED}}}[{RATE}])) / "
             f"sum by (version) (rate(safeloop_gate_decisions_total[{RATE}]))", "{{version}}")]),
    panel("Gate actions", "Gate decisions per second by action (pass, annotate, resample, block, unscored).",
          "ops",
          [q(f"sum by (action) (rate(safeloop_gate_decisions_total[{RATE}]))", "{{action}}"),
           q(f"rate(safeloop_gate_resample_attempts_total[{RATE}])", "resample attempts")]),
    panel("Cost distribution", "Cost scores of all choices per second by bucket (cost > 0 is unsafe).", "short",
          [q(f"sum by (le) (rate(safeloop_cost_score_bucket[{RATE}]))", "{{le}}")],
          kind="heatmap", format="heatmap"),
    panel("Cost by policy version", "Median and p95 cost of the choices each policy version produced.", "short",
          quantiles("safeloop_cost_score", by="version", qs=(0.5, 0.95))),
    panel("Mean cost by policy version", "Mean cost score of each policy version's choices.", "short",
          [q(f"sum by (version) (rate(safeloop_cost_score_sum[{RATE}])) / "
             f"sum by (version) (rate(safeloop_cost_score_count[{RATE}]))", "{{version}}")]),
    panel("Gate latency", "Time spent scoring and gating a request's choices, p50 and p99.", "s",
          quantiles("safeloop_gate_latency_seconds")),
    panel("Input refusals", "Prompts refused by the input check per second, by policy version.", "reqps",
          [q(f"sum by (version) (rate(safeloop_gate_input_refusals_total[{RATE}]))", "{{version}}")]),
    panel("Scoring errors", "Score-model calls that failed per second, by role; each one is blocked (fail "
          "closed) or passed unscored (fail open).", "ops",
          [q(f"sum by (role) (rate(safeloop_scoring_errors_total[{RATE}]))", "{{role}}")]),
    panel("Score model versions", "The cost and reward model versions being served (value 1).", "none",
          [q('safeloop_model_version_info{role=~"cost|reward"}', "{{role}} {{name}} {{version}}")],
          kind="state-timeline"),
    panel("Block share of decisions", "Share of choices replaced by the refusal.", "percentunit",
          [q(f'sum(rate(safeloop_gate_decisions_total{{action="block"}}[{RATE}])) / '
             f"sum(rate(safeloop_gate_decisions_total[{RATE}]))", "blocked")]),
]

T = "safeloop_train_"
TRAINING = [
    panel("λ against its cap", "The Lagrange multiplier of PPO-Lag (per job and command) and its cap; λ pinned "
          "at the cap means the cost threshold is out of reach.", "short",
          [q(f"{T}lambda", "λ {{job}}/{{command}}"), q(f"{T}lambda_max", "cap {{job}}/{{command}}")]),
    panel("Episode cost against d", "The episode-cost window mean Ĵ_C that λ follows, and the threshold d it is "
          "held to (λ rises while Ĵ_C > d).", "short",
          [q(f"{T}episode_cost", "Ĵ_C {{command}}"), q(f"{T}cost_threshold", "d {{command}}")]),
    panel("Reward and cost", "Mean end reward and cost of each rollout batch.", "short",
          [q(f"{T}reward", "reward {{command}}"), q(f"{T}cost", "cost {{command}}")]),
    panel("KL to the reference", "KL divergence of the policy from the reference model (summed over a response).",
          "short", [q(f"{T}kl_divergence", "{{command}}")]),
    panel("Losses", "Actor loss and the reward and cost critics' value losses.", "short",
          [q(f"{T}actor_loss", "actor {{command}}"), q(f"{T}reward_critic_loss", "reward critic {{command}}"),
           q(f"{T}cost_critic_loss", "cost critic {{command}}")]),
    panel("Clip fractions", "Share of tokens whose ratio (actor) or value (critics) was clipped.", "percentunit",
          [q(f"{T}actor_clip_fraction", "actor {{command}}"),
           q(f"{T}reward_critic_clip_fraction", "reward critic {{command}}"),
           q(f"{T}cost_critic_clip_fraction", "cost critic {{command}}")]),
    panel("Response length", "Mean and longest generated response of the batch, in tokens.", "short",
          [q(f"{T}mean_generated_length", "mean {{command}}"), q(f"{T}max_generated_length", "max {{command}}")]),
    panel("Throughput", "Generated tokens per second of rollout and per second of the whole step.", "short",
          [q(f"{T}rollout_tokens_per_second", "rollout {{command}}"), q(f"{T}tokens_per_second", "step {{command}}")]),
    panel("Step time", "Seconds per step in rollout, scoring, training and the weight hand-over to the engine.",
          "s",
          [q(f"{T}rollout_s", "rollout {{command}}"), q(f"{T}scoring_s", "scoring {{command}}"),
           q(f"{T}training_s", "training {{command}}"), q(f"{T}sync_s", "sync {{command}}")]),
    panel("Score model training", "Loss and accuracy of reward/cost model training (train-score).", "short",
          [q(f"{T}loss", "loss {{command}}"), q(f"{T}accuracy", "accuracy {{command}}")]),
    panel("Progress", "Optimiser step of each job and command.", "short",
          [q(f"{T}step", "{{job}}/{{command}}")]),
    panel("Seconds since the last push", "Age of each job's last push; a running job that stopped pushing has "
          "stalled or died (alert SafeloopTrainerStale).", "s",
          [q(f"time() - {T}last_push_timestamp_seconds", "{{job}}/{{command}}"),
           q(f"{T}running", "running {{job}}/{{command}}")]),
]

LOOP = [
    panel("Rounds by outcome", "Rounds finished by outcome (promoted, rejected, skipped, abandoned), from the "
          "round's state directory.", "short",
          [q("max by (outcome) (safeloop_rounds_total)", "{{outcome}}")], kind="bargauge", width=8),
    panel("Time since the last promotion", "Since a round last promoted a challenger (alert SafeloopNoPromotion).",
          "s", [q("time() - max(safeloop_round_last_promotion_timestamp_seconds)", "since promotion")],
          kind="stat", width=8),
    panel("Last round", "The last round's number, steps done (of 6), whether it runs, and its exit code (0 "
          "promoted or skipped, 3 rejected, 1 failed).", "short",
          [q("safeloop_round_number", "round"), q("safeloop_round_steps_done", "steps done"),
           q("safeloop_round_running", "running"), q("safeloop_round_exit_code", "exit code")],
          kind="stat", width=8),
    panel("Champion version over time", "The policy version each server serves (value 1 while served): a change "
          "is a promotion reaching serving.", "none",
          [q('max by (version) (safeloop_model_version_info{role="policy"})', "{{version}}")], kind="state-timeline"),
    panel("Last round's harmful ratio", "Share of evaluation answers scored harmful, champion against challenger, "
          "by the training cost model and the independent judge.", "percentunit",
          [q("safeloop_round_harmful_ratio", "{{policy}} ({{scorer}})")]),
    panel("Last round's cost and reward", "Mean cost and reward of the evaluation answers, champion against "
          "challenger.", "short",
          [q("safeloop_round_mean_cost", "cost {{policy}}"), q("safeloop_round_mean_reward", "reward {{policy}}")]),
    panel("Promotion gate checks", "Each check of the last round's promotion gate (1 passed, 0 failed).", "none",
          [q("safeloop_round_gate_check_passed", "{{check}}")], kind="bargauge"),
    panel("Round step seconds", "Seconds each step of the last round took.", "s",
          [q("safeloop_round_step_seconds", "{{step}}")], kind="bargauge"),
    panel("Model swaps by outcome", "Model version changes by role and outcome (swapped, refused) over the "
          "interval.", "short",
          [q(f"sum by (role, outcome) (increase(safeloop_model_swaps_total[{RATE}]))", "{{role}} {{outcome}}")]),
    panel("Swap duration by phase", "Mean seconds per swap phase (fetch, load, validate, drain) by role.", "s",
          [q(f"sum by (role, phase) (rate(safeloop_model_swap_phase_seconds_sum[{RATE}])) / "
             f"sum by (role, phase) (rate(safeloop_model_swap_phase_seconds_count[{RATE}]))", "{{role}} {{phase}}")]),
    panel("Flag rate by policy version", "The served effect of each promotion: share of choices flagged, by "
          "policy version.", "percentunit",
          [q(f"sum by (version) (rate(safeloop_gate_decisions_total{{{FLAGGED}}}[{RATE}])) / "
             f"sum by (version) (rate(safeloop_gate_decisions_total[{RATE}]))", "{{version}}")]),
    panel("Requests by policy version", "Traffic moving to each new version after a swap.", "reqps",
          [q(f"sum by (version) (rate(safeloop_requests_by_version_total[{RATE}]))", "{{version}}")]),
]

DASHBOARDS = [
    ("safeloop-serving.json", "safeloop-serve", "safeloop — serving",
     "Traffic, latency, batching, KV cache and the trajectory log of safeloop-serve.", SERVING),
    ("safeloop-safety.json", "safeloop-safety", "safeloop — safety",
     "The safety gate: flag rate and cost by policy version, actions, latency, refusals and scoring errors.",
     SAFETY),
    ("safeloop-training.json", "safeloop-training", "safeloop — training",
     "PPO-Lag and score-model training as pushed by safeloop-train --pushgateway.", TRAINING),
    ("safeloop-loop.json", "safeloop-loop", "safeloop — loop",
     "Rounds, verdicts, promotions and the swaps that bring them to serving.", LOOP),
]


def build(uid, title, description, panels):
    out, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p["width"] > 24:
            x, y, row_h = 0, y + row_h, 0
        ds = {"type": "prometheus", "uid": "${datasource}"}
        targets = []
        for j, (expr, legend) in enumerate(p["targets"]):
            t = {"refId": chr(ord("A") + j), "datasource": ds, "expr": expr, "legendFormat": legend}
            if p["extra"].get("format"):
                t["format"] = p["extra"]["format"]
            targets.append(t)
        item = {
            "id": i,
            "type": p["kind"],
            "title": p["title"],
            "description": p["description"],
            "gridPos": {"x": x, "y": y, "w": p["width"], "h": p["height"]},
            "datasource": ds,
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": {},
            "targets": targets,
        }
        if p["kind"] == "timeseries":
            item["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                               "tooltip": {"mode": "multi", "sort": "none"}}
        out.append(item)
        x += p["width"]
        row_h = max(row_h, p["height"])
    return {
        "title": title,
        "uid": uid,
        "description": description,
        "tags": ["safeloop"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "options": [],
        }]},
        "annotations": {"list": []},
        "links": [{"title": "safeloop dashboards", "type": "dashboards", "tags": ["safeloop"], "asDropdown": True}],
        "panels": out,
    }


def main():
    here = Path(__file__).resolve().parent
    check = "--check" in sys.argv[1:]
    stale = []
    for file, uid, title, description, panels in DASHBOARDS:
        text = json.dumps(build(uid, title, description, panels), indent=2, ensure_ascii=False) + "\n"
        path = here / file
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(file)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python3 dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
