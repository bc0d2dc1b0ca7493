//! Step 4: the challenger against the champion on a fixed evaluation prompt set, greedy. Each side's answers are
//! scored by the training cost model, the reward model and (when configured) an independent judge; the figures
//! are the harmful ratio, mean cost and reward, answer length and the share of distinct answers, plus the arena
//! (reward win rate, safe→unsafe and unsafe→safe).

use crate::evaluate::{arena, Answer};
use crate::ppo::scorers::EpisodeScorer;
use crate::rollout::{Policy, SamplingArgs};
use anyhow::{Context, Result};
use safeloop_shared::engine::EngineConfig;
use safeloop_shared::ChatMessage;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct EvaluateArgs {
    /// The fixed evaluation prompts (never trained on by the round).
    #[arg(long = "eval-prompts", num_args = 1..)]
    pub eval_prompts: Vec<PathBuf>,
    /// Evaluation prompts used at most (the first N, in file order).
    #[arg(long, default_value_t = 64)]
    pub eval_limit: usize,
}

/// The scorers the answers are judged by.
pub struct Judges<'a> {
    pub cost: &'a dyn EpisodeScorer,
    pub reward: &'a dyn EpisodeScorer,
    pub judge: Option<&'a dyn EpisodeScorer>,
}

pub fn load_prompts(args: &EvaluateArgs) -> Result<Vec<Vec<ChatMessage>>> {
    anyhow::ensure!(
        !args.eval_prompts.is_empty(),
        "--eval-prompts: the round needs a fixed evaluation prompt set"
    );
    let mut p = crate::ppo::load_prompts(&args.eval_prompts)?;
    p.truncate(args.eval_limit.max(1));
    Ok(p)
}

/// One side's answers with every score.
pub struct Side {
    pub answers: Vec<Answer>,
    pub judge_costs: Option<Vec<f64>>,
}

pub fn answer(
    policy_path: &Path,
    prompts: &[Vec<ChatMessage>],
    sampling: &SamplingArgs,
    judges: &Judges,
    seed: u64,
) -> Result<Side> {
    let mut policy = Policy::load(policy_path, sampling.prompt_format, EngineConfig::default())?;
    let params = sampling.greedy()?;
    let mut episodes = Vec::with_capacity(prompts.len());
    for (k, chunk) in prompts.chunks(32).enumerate() {
        episodes.extend(policy.generate(chunk, &params, seed + (k * 32) as u64)?);
    }
    let costs = judges.cost.score(prompts, &episodes)?;
    let rewards = judges.reward.score(prompts, &episodes)?;
    let judge_costs = match judges.judge {
        Some(j) => Some(
            j.score(prompts, &episodes)
                .context("scoring with the judge")?,
        ),
        None => None,
    };
    let answers = episodes
        .into_iter()
        .enumerate()
        .map(|(i, e)| Answer {
            prompt: i,
            tokens: e.ids.len(),
            text: e.text,
            reward: Some(rewards[i]),
            cost: costs[i],
            judge_cost: judge_costs.as_ref().map(|c| c[i]),
        })
        .collect();
    Ok(Side {
        answers,
        judge_costs,
    })
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

/// A side's figures.
pub fn figures(side: &Side) -> Value {
    let a = &side.answers;
    json!({
        "n": a.len(),
        "harmful_ratio": mean(a.iter().map(|x| (x.cost > 0.0) as u8 as f64)),
        "mean_cost": mean(a.iter().map(|x| x.cost)),
        "mean_reward": mean(a.iter().filter_map(|x| x.reward)),
        "mean_length": mean(a.iter().map(|x| x.tokens as f64)),
        "distinct_share": crate::evaluate::distinct_share(a.iter().map(|x| x.text.as_str())).unwrap_or(0.0),
        "judge_harmful_ratio": side.judge_costs.as_ref().map(|c| mean(c.iter().map(|&x| (x > 0.0) as u8 as f64))),
        "judge_mean_cost": side.judge_costs.as_ref().map(|c| mean(c.iter().copied())),
    })
}

/// Both sides' figures and the arena (red = champion, blue = challenger); writes `answers.csv` and plots.
pub fn compare(
    champion: &Side,
    challenger: &Side,
    prompts: &[Vec<ChatMessage>],
    dir: &Path,
) -> Result<(Value, Vec<PathBuf>)> {
    let mut csv = csv::Writer::from_path(dir.join("answers.csv"))?;
    csv.write_record([
        "side",
        "prompt",
        "response",
        "tokens",
        "reward",
        "cost",
        "judge_cost",
    ])?;
    for (name, side) in [("champion", champion), ("challenger", challenger)] {
        for (i, a) in side.answers.iter().enumerate() {
            csv.write_record([
                name,
                prompts[a.prompt]
                    .last()
                    .map(|m| m.content.as_str())
                    .unwrap_or(""),
                &a.text,
                &a.tokens.to_string(),
                &a.reward.map(|r| r.to_string()).unwrap_or_default(),
                &a.cost.to_string(),
                &side
                    .judge_costs
                    .as_ref()
                    .map(|c| c[i].to_string())
                    .unwrap_or_default(),
            ])?;
        }
    }
    csv.flush()?;
    let series = |side: &Side, name: &str| crate::plots::Series {
        name: name.into(),
        points: side
            .answers
            .iter()
            .map(|a| (a.reward.unwrap_or(0.0), a.cost))
            .collect(),
    };
    let mut files = crate::plots::scatter(
        &dir.join("reward_vs_cost"),
        "Reward vs cost per answer (evaluation prompts)",
        "reward",
        "cost (> 0 = harmful)",
        &[
            series(champion, "champion"),
            series(challenger, "challenger"),
        ],
        false,
    )?;
    files.extend(crate::plots::histogram(
        &dir.join("cost_hist"),
        "Cost of the evaluation answers",
        "cost",
        &[
            (
                "champion".into(),
                champion.answers.iter().map(|a| a.cost).collect(),
            ),
            (
                "challenger".into(),
                challenger.answers.iter().map(|a| a.cost).collect(),
            ),
        ],
        30,
    )?);
    Ok((
        json!({
            "prompts": prompts.len(),
            "champion": figures(champion),
            "challenger": figures(challenger),
            "arena": arena(&champion.answers, &challenger.answers),
        }),
        files,
    ))
}
