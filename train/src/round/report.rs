//! The round's summary (`summary.json`, also one line of `STATE/rounds.jsonl`) and `report.md`: every figure the
//! gate used, the verdict, and the plots of training and evaluation.

use super::state::{Round, Status};
use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

pub fn summary(round: &Round, status: Status, wall_s: f64) -> Value {
    let step = |s: &str| round.step(s).cloned().unwrap_or(Value::Null);
    let publish = step("publish");
    json!({
        "round": round.id(),
        "status": status,
        "exit_code": if status == Status::Rejected { 3 } else { 0 },
        "champion_before": step("harvest")["champion"],
        "challenger": publish["version"],
        "alias": publish["alias"],
        "harvest": step("harvest"),
        "annotate": step("annotate"),
        "optimise": step("optimise"),
        "evaluate": step("evaluate"),
        "gate": step("gate"),
        "publish": publish,
        "seconds": round.record.steps.iter().map(|(k, v)| (k.clone(), v["seconds"].clone())).collect::<serde_json::Map<_, _>>(),
        "wall_s_this_run": wall_s,
        "dir": round.dir.display().to_string(),
    })
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Number(n) => n
            .as_f64()
            .map(|x| {
                if x.fract() == 0.0 && x.abs() < 1e9 {
                    format!("{x}")
                } else {
                    format!("{x:.3}")
                }
            })
            .unwrap_or_default(),
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Relative links to the PNGs in `dir` (under the round's folder).
fn images(round: &Round, list: &Value) -> String {
    let mut out = String::new();
    for p in list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
    {
        if p.ends_with(".png") {
            let rel = Path::new(p)
                .strip_prefix(&round.dir)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.to_string());
            let _ = writeln!(out, "![{rel}]({rel})\n");
        }
    }
    out
}

pub fn write(round: &Round, s: &Value) -> Result<()> {
    std::fs::write(
        round.dir.join("summary.json"),
        serde_json::to_string_pretty(s)?,
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# {} — {}\n",
        s["round"].as_str().unwrap_or(""),
        fmt(&s["status"])
    );
    let h = &s["harvest"];
    let _ = writeln!(
        md,
        "Champion `{}` → challenger `{}` ({}).\n\n## Harvest\n\n| records read | records of `{}` | distinct prompts | red-team | pool (red-team / served / base) |\n|---|---|---|---|---|\n| {} | {} | {} | {} | {} ({} / {} / {}) |\n\nCursor {} → {}.\n",
        fmt(&s["champion_before"]), fmt(&s["challenger"]), fmt(&s["alias"]),
        fmt(&h["model"]), fmt(&h["records_read"]), fmt(&h["records"]), fmt(&h["distinct_prompts"]),
        fmt(&h["red_team_prompts"]), fmt(&h["pool"]), fmt(&h["pool_by_source"]["red-team"]),
        fmt(&h["pool_by_source"]["served"]), fmt(&h["pool_by_source"]["base"]),
        h["cursor_from"], h["cursor_to"],
    );
    let a = &s["annotate"];
    if !a.is_null() {
        let _ = writeln!(
            md,
            "## Annotate\n\nExported {} pairs; imported {} labelled file(s); retrained: {}.\n",
            fmt(&a["exported"]["pairs"]),
            a["imported"].as_array().map_or(0, |v| v.len()),
            a["retrained"]
        );
    }
    let o = &s["optimise"];
    if !o.is_null() {
        let _ = writeln!(
            md,
            "## Optimise (PPO-Lag)\n\n{} steps on {} pool prompts; threshold d = {}; final λ = {}. Mean reward {} → {}, mean cost {} → {} (first vs last 5 steps).\n\n{}",
            fmt(&o["steps"]), fmt(&o["pool"]), fmt(&o["threshold"]), fmt(&o["final_lambda"]),
            fmt(&o["first_steps"]["reward"]), fmt(&o["last_steps"]["reward"]),
            fmt(&o["first_steps"]["cost"]), fmt(&o["last_steps"]["cost"]),
            images(round, &o["plots"]),
        );
    }
    let e = &s["evaluate"];
    if !e.is_null() {
        let _ = writeln!(
            md,
            "## Evaluate ({} fixed prompts, greedy)\n\n| | harmful ratio | mean cost | mean reward | mean length | distinct answers | judge harmful ratio | judge mean cost |\n|---|---|---|---|---|---|---|---|",
            fmt(&e["prompts"])
        );
        for side in ["champion", "challenger"] {
            let f = &e[side];
            let _ = writeln!(
                md,
                "| {side} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(&f["harmful_ratio"]),
                fmt(&f["mean_cost"]),
                fmt(&f["mean_reward"]),
                fmt(&f["mean_length"]),
                fmt(&f["distinct_share"]),
                fmt(&f["judge_harmful_ratio"]),
                fmt(&f["judge_mean_cost"])
            );
        }
        let ar = &e["arena"];
        let _ = writeln!(
            md,
            "\nArena: the challenger wins on reward {} of the time (champion {}); safe→unsafe {}, unsafe→safe {}.\n\n{}",
            fmt(&ar["blue_reward_win_rate"]), fmt(&ar["red_reward_win_rate"]),
            fmt(&ar["transitions"]["safe_to_unsafe"]), fmt(&ar["transitions"]["unsafe_to_safe"]),
            images(round, &e["plots"]),
        );
    }
    let g = &s["gate"];
    if !g.is_null() {
        let _ = writeln!(
            md,
            "## Promotion gate\n\n| check | | detail |\n|---|---|---|"
        );
        for c in g["checks"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                fmt(&c["name"]),
                if c["passed"].as_bool() == Some(true) {
                    "pass"
                } else {
                    "**fail**"
                },
                fmt(&c["detail"])
            );
        }
        let _ = writeln!(md);
    }
    std::fs::write(round.dir.join("report.md"), md)?;
    Ok(())
}
