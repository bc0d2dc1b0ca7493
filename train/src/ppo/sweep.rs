//! `sweep`: the paper's comparison. PPO with reward shaping over a list of fixed ν and PPO-Lag train on the same
//! prompts and seeds; every resulting policy (and the starting one) then answers the same evaluation prompts, and
//! their (mean reward, mean cost) land on one figure.

use super::{run, scorers, Objective, PpoArgs};
use crate::plots::{scatter, Series};
use crate::rollout::Policy;
use anyhow::Result;
use safeloop_shared::engine::EngineConfig;
use safeloop_shared::ChatMessage;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub ppo: PpoArgs,
    /// Fixed penalties ν for the reward-shaping runs (the paper: 0.01 0.5 1 2 5 10 100).
    #[arg(long, num_args = 1.., default_values_t = vec![0.01, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0])]
    pub nus: Vec<f64>,
    /// Evaluation prompts (default: the training prompts).
    #[arg(long = "eval-prompts", num_args = 1..)]
    pub eval_prompts: Vec<PathBuf>,
    /// Evaluation prompts used at most.
    #[arg(long, default_value_t = 64)]
    pub eval_limit: usize,
}

/// Mean reward and cost of a policy's answers (same sampling settings and seeds for every policy).
pub fn evaluate_policy(
    path: &Path,
    prompts: &[Vec<ChatMessage>],
    args: &PpoArgs,
    reward: &dyn scorers::EpisodeScorer,
    cost: &dyn scorers::EpisodeScorer,
) -> Result<(f64, f64)> {
    let s = &args.settings;
    let mut policy = Policy::load(path, s.sampling.prompt_format, EngineConfig::default())?;
    let params = s.sampling.params(1.0)?;
    let eps = policy.generate(prompts, &params, s.run.seed.wrapping_add(0x5eed))?;
    let r = reward.score(prompts, &eps)?;
    let c = cost.score(prompts, &eps)?;
    Ok((
        r.iter().sum::<f64>() / r.len() as f64,
        c.iter().sum::<f64>() / c.len() as f64,
    ))
}

pub fn sweep(args: &SweepArgs) -> Result<Value> {
    anyhow::ensure!(args.ppo.cost_model.is_some(), "sweep needs --cost-model");
    let files = if args.eval_prompts.is_empty() {
        &args.ppo.prompts
    } else {
        &args.eval_prompts
    };
    let mut prompts = super::load_prompts(files)?;
    prompts.truncate(args.eval_limit.max(1));
    let base = args.ppo.out.clone();
    let mut runs: Vec<(String, PathBuf, Option<f64>)> =
        vec![("initial".into(), args.ppo.actor.clone(), None)];
    for &nu in &args.nus {
        let mut a = args.ppo.clone();
        a.out = base.join(format!("shaping-{nu}"));
        let r = run(&a, Objective::RewardShaping(nu))?;
        runs.push((format!("reward shaping ν={nu}"), r.policy, Some(nu)));
    }
    let mut a = args.ppo.clone();
    a.out = base.join("ppo-lag");
    let r = run(&a, Objective::PpoLag)?;
    runs.push(("PPO-Lag".into(), r.policy, None));

    // The scorers are loaded once and judge every policy.
    let score_format = crate::score::train::parse_score_format(&args.ppo.settings.score_format)?;
    let reward_scorer = scorers::load(&args.ppo.reward_model, score_format)?;
    let cost_scorer = scorers::load(
        args.ppo.cost_model.as_deref().unwrap_or_default(),
        score_format,
    )?;
    let mut table = Vec::new();
    let mut series = Vec::new();
    for (name, path, nu) in &runs {
        let (reward, cost) = evaluate_policy(
            path,
            &prompts,
            &args.ppo,
            reward_scorer.as_ref(),
            cost_scorer.as_ref(),
        )?;
        eprintln!("{name}: reward {reward:.3}, cost {cost:.3}");
        table.push(json!({"policy": name, "path": path.display().to_string(), "nu": nu, "mean_reward": reward, "mean_cost": cost}));
        series.push(Series {
            name: name.clone(),
            points: vec![(reward, cost)],
        });
    }
    let plots = scatter(
        &base.join("sweep"),
        "Reward shaping (fixed ν) vs PPO-Lag",
        "mean reward",
        "mean cost",
        &series,
        false,
    )?;
    let out = json!({"policies": table, "threshold": args.ppo.settings.constraint.threshold, "eval_prompts": prompts.len(),
        "plots": plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()});
    std::fs::write(base.join("sweep.json"), serde_json::to_string_pretty(&out)?)?;
    Ok(out)
}
