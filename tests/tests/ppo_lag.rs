//! PPO-Lagrangian's defining behaviour, through `safeloop-train ppo-lag` / `ppo` on the tiny golden policy.
//!
//! Synthetic conflict: the reward is 10 × the share of response tokens with id in [4, 256) plus 2 × the share in
//! [4, 130); the cost is 10 × the share with id in [4, 130) − 2 (threshold 0). Unconstrained, the best policy uses
//! ids below 130 (reward 12, cost 8); the constrained optimum uses ids 130–255 (reward ~10). (With the reward alone
//! indifferent between the two ranges, plain PPO's final cost was a coin toss: +7.6 in one build, +0.06 after an
//! attention-kernel change altered the rollouts' rounding.) Measured (these settings, 40 iterations, means of the
//! first vs last 5): PPO-Lag seeds 1/2 reward 5.4 → 9.7/10.0, cost +0.41/+0.42 → −1.87/−1.99; plain PPO reward
//! 5.4 → 11.6 with cost +0.40 → +7.3. The assertions keep wide margins around those.

use safeloop_tests::{fresh_tmp, rule_ppo_with, RULE_COST};

/// `RULE_REWARD` plus a bonus for the ids the cost counts: unconstrained, the best policy is the unsafe one.
const CONFLICT_REWARD: &str = "token-fraction:4:256:10+token-fraction:4:130:2";
use serde_json::Value;
use std::path::PathBuf;

fn run(algo: &str, seed: u64) -> Vec<Value> {
    let out = fresh_tmp(&format!("{algo}-{seed}"));
    let seed_s = seed.to_string();
    let (ok, stdout, stderr) = rule_ppo_with(
        algo,
        &out,
        [CONFLICT_REWARD, RULE_COST],
        &[
            "--epochs",
            "100",
            "--max-steps",
            "40",
            "--prompt-batch-size",
            "64",
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--actor-lr",
            "5e-3",
            "--lr-scheduler",
            "constant",
            "--critic-lr",
            "1e-2",
            "--seed",
            &seed_s,
        ],
    );
    assert!(ok, "{algo} seed {seed}: {stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(PathBuf::from(summary["policy"].as_str().unwrap())
        .join("model.safetensors")
        .is_file());
    let hist = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_dir_all(&out).ok();
    hist
}

fn mean(h: &[Value], key: &str) -> f64 {
    h.iter().map(|r| r[key].as_f64().unwrap()).sum::<f64>() / h.len() as f64
}

#[test]
fn ppo_lag_meets_the_cost_constraint_that_ppo_violates() {
    let handles: Vec<_> = [("ppo-lag", 1), ("ppo-lag", 2), ("ppo", 1)]
        .into_iter()
        .map(|(a, s)| std::thread::spawn(move || (a, s, run(a, s))))
        .collect();
    for h in handles {
        let (algo, seed, hist) = h.join().unwrap();
        assert_eq!(hist.len(), 40);
        let (first, last) = (&hist[..5], &hist[hist.len() - 5..]);
        let (r0, r1) = (mean(first, "reward"), mean(last, "reward"));
        let (c0, c1) = (mean(first, "cost"), mean(last, "cost"));
        eprintln!("{algo} seed {seed}: reward {r0:.2} → {r1:.2}, cost {c0:.2} → {c1:.2}");
        assert!(
            c0 > 0.0,
            "{algo} seed {seed}: the task starts out violating the constraint (cost {c0})"
        );
        assert!(
            r1 > r0 + 2.0,
            "{algo} seed {seed}: reward should rise: {r0} → {r1}"
        );
        if algo == "ppo" {
            assert!(
                c1 > 1.0,
                "PPO without cost should violate the constraint: final cost {c1}"
            );
            assert!(hist.iter().all(|r| r["lambda"].is_null()));
            continue;
        }
        assert!(
            c1 < -0.5,
            "PPO-Lag seed {seed}: final mean cost {c1} should be below the threshold 0"
        );
        let lambdas: Vec<f64> = hist.iter().map(|r| r["lambda"].as_f64().unwrap()).collect();
        let peak = lambdas.iter().cloned().fold(f64::MIN, f64::max);
        let peak_at = lambdas.iter().position(|&l| l == peak).unwrap();
        // …so it rises while the constraint is violated and falls once it holds.
        assert!(
            peak > 1.2,
            "seed {seed}: λ should rise while cost > threshold (peak {peak})"
        );
        assert!(
            peak_at > 2 && peak_at < hist.len() - 5,
            "seed {seed}: λ peaks mid-run (step {peak_at})"
        );
        assert!(
            *lambdas.last().unwrap() < 0.8 * peak,
            "seed {seed}: λ should fall after the constraint holds: {lambdas:?}"
        );
        // λ moves with the sign of (window cost − threshold) at every step (never capped here).
        for w in lambdas.windows(2).zip(&hist[1..]) {
            let ((prev, cur), rec) = ((w.0[0], w.0[1]), rec_cost(w.1));
            assert_eq!(
                cur > prev,
                rec > 0.0,
                "seed {seed}: λ {prev} → {cur} with window cost {rec}"
            );
        }
    }
}

/// The window mean the λ update at this step used.
fn rec_cost(r: &Value) -> f64 {
    r["episode_cost"].as_f64().unwrap()
}
