//! `ppo-lag` and its baselines on one loop (spec §3–4). PPO-Lagrangian is PPO plus `constraint` (a cost critic and
//! the Lagrange multiplier of `losses::lagrange`); `ppo` drops the cost stream; `--reward-shaping ν` folds a fixed
//! ν·C into the reward. `trainer` holds the optimisation; this module runs it: rollouts, scoring, checkpoints,
//! outputs, plots.
//!
//! Rollouts run on the serving engine (`rollout`), whose model is refreshed from the actor in memory after every
//! update (`sync`); behaviour log-probs are recomputed by the tch actor. Each iteration prints and logs its
//! rollout / scoring / training time.

pub mod args;
pub mod constraint;
pub mod experience;
pub mod record;
pub mod scorers;
pub mod sweep;
pub mod sync;
pub mod trainer;

pub use args::{PpoArgs, PpoSettings};
pub use record::StepRecord;
pub use trainer::Objective;

use crate::data::prompts;
use crate::metrics::progress;
use crate::model::{copy_tokenizer_files, save_hf_dir, HeadKind, Model, SaveOptions};
use crate::rollout::Policy;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safeloop_shared::engine::EngineConfig;
use safeloop_shared::ChatMessage;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use trainer::{Models, Trainer};

/// What a run did.
pub struct RunResult {
    pub summary: Value,
    pub history: Vec<StepRecord>,
    /// The trained policy (HF directory).
    pub policy: PathBuf,
}

fn critic_init(explicit: &Option<PathBuf>, model_spec: Option<&str>, actor: &Path) -> PathBuf {
    explicit.clone().unwrap_or_else(|| match model_spec {
        Some(s) if Path::new(s).is_dir() => PathBuf::from(s),
        _ => actor.to_path_buf(),
    })
}

/// The prompts of some files, deduplicated, as single-turn conversations.
pub fn load_prompts(files: &[PathBuf]) -> Result<Vec<Vec<ChatMessage>>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for f in files {
        for p in prompts::read(f, &[])? {
            if seen.insert(p.text.clone()) {
                out.push(vec![ChatMessage::new("user", &p.text)]);
            }
        }
    }
    if out.is_empty() {
        bail!("no prompts in {files:?}");
    }
    Ok(out)
}

/// `ppo-lag` / `ppo` from the command line: the prompts of `--prompts`.
pub fn run(args: &PpoArgs, objective: Objective) -> Result<RunResult> {
    train(args, objective, &load_prompts(&args.prompts)?)
}

fn load_models(args: &PpoArgs, objective: Objective, device: tch::Device) -> Result<Models> {
    let s = &args.settings;
    let head = Some(HeadKind::Score {
        score_dim: 1,
        bias: true,
    });
    let mut models = Models {
        actor: Model::load(&args.actor, Some(HeadKind::Lm), device)?,
        reference: Model::load(&args.actor, Some(HeadKind::Lm), device)?,
        reward_critic: Model::load(
            &critic_init(&args.reward_critic, Some(&args.reward_model), &args.actor),
            head,
            device,
        )?,
        cost_critic: if objective == Objective::PpoLag {
            Some(Model::load(
                &critic_init(&args.cost_critic, args.cost_model.as_deref(), &args.actor),
                head,
                device,
            )?)
        } else {
            None
        },
    };
    let actor_layers = models.actor.num_layers();
    s.trainable.apply(&mut models.actor, false);
    for critic in std::iter::once(&mut models.reward_critic).chain(models.cost_critic.as_mut()) {
        let layers = critic.num_layers();
        s.trainable
            .for_depth(actor_layers, layers)
            .apply(critic, false);
    }
    Ok(models)
}

/// Trains on `prompts` (the library entry point: `round` passes its prompt pool, repeats included).
pub fn train(
    args: &PpoArgs,
    objective: Objective,
    prompts: &[Vec<ChatMessage>],
) -> Result<RunResult> {
    let started = Instant::now();
    let s = &args.settings;
    let device = s.run.device()?;
    let score_format = crate::score::train::parse_score_format(&s.score_format)?;
    if objective.uses_cost() && args.cost_model.is_none() {
        bail!("--cost-model is required for ppo-lag and --reward-shaping");
    }
    if prompts.is_empty() {
        bail!("no prompts to train on");
    }
    if s.prompt_batch_size == 0 || s.update_iters == 0 {
        bail!("--prompt-batch-size and --update-iters must be at least 1");
    }
    tch::manual_seed(s.run.seed as i64);
    let reward_scorer = scorers::load(&args.reward_model, score_format)?;
    // Scored whenever given (plain PPO logs the cost it does not optimise).
    let cost_scorer = match &args.cost_model {
        Some(c) => Some(scorers::load(c, score_format)?),
        None => None,
    };
    let (tok, pad) = crate::score::train::load_tokenizer(&args.actor)?;
    let ptx: Vec<crate::sft::SftExample> = match &s.ptx_data {
        Some(f) => crate::data::sft::read(f)?
            .iter()
            .map(|c| crate::sft::tokenize(&tok, s.sampling.prompt_format, c, 512))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|e| e.target.iter().any(|&t| t))
            .collect(),
        None => vec![],
    };
    let iters_per_epoch = prompts.len().div_ceil(s.prompt_batch_size) as u64;
    let mut total = iters_per_epoch * s.epochs as u64 * s.update_iters as u64;
    if s.run.max_steps > 0 {
        total = total.min(s.run.max_steps);
    }
    let models = load_models(args, objective, device)?;
    let mut trainer = Trainer::new(s, objective, models, total, ptx, pad);
    let ckpt = args.out.join("checkpoint");
    if args.resume && trainer.load_checkpoint(&ckpt)? {
        eprintln!(
            "resuming from {} at step {}",
            ckpt.display(),
            trainer.global_step
        );
    }

    let engine_cfg = EngineConfig {
        max_running: s.prompt_batch_size,
        ..Default::default()
    };
    let mut policy = Policy::from_model(
        sync::to_candle(&trainer.actor)?,
        std::sync::Arc::new(tok),
        s.sampling.prompt_format,
        engine_cfg,
    );
    let params = s.sampling.params(1.0)?;
    let mut log = s.run.metrics_log(&args.out)?;
    let mut history = Vec::new();
    let pb = progress(total, objective.name());
    pb.set_position(trainer.global_step);
    let mut iteration = 0u64;
    'outer: for epoch in 0..s.epochs {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            s.run.seed.wrapping_add(epoch as u64),
        ));
        for chunk in order.chunks(s.prompt_batch_size) {
            if trainer.global_step >= total {
                break 'outer;
            }
            iteration += 1;
            if iteration * (s.update_iters as u64) <= trainer.global_step {
                continue; // resumed past this batch
            }
            let batch_prompts: Vec<Vec<ChatMessage>> =
                chunk.iter().map(|&i| prompts[i].clone()).collect();
            // 1. Rollout on the serving engine.
            let t0 = Instant::now();
            let episodes = policy.generate(
                &batch_prompts,
                &params,
                s.run
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(iteration * 7919),
            )?;
            let rollout_s = t0.elapsed().as_secs_f64();
            // 2. Scoring.
            let t1 = Instant::now();
            let rewards = reward_scorer.score(&batch_prompts, &episodes)?;
            let costs = match &cost_scorer {
                Some(c) => Some(c.score(&batch_prompts, &episodes)?),
                None => None,
            };
            let scoring_s = t1.elapsed().as_secs_f64();
            // 3. Training.
            let t2 = Instant::now();
            let mut rec = trainer.train_batch(&episodes, &rewards, costs.as_deref(), epoch + 1);
            // 4. The engine samples from the updated actor next time.
            let t3 = Instant::now();
            policy.replace_model(sync::to_candle(&trainer.actor)?);
            rec.sync_s = t3.elapsed().as_secs_f64();
            rec.training_s = t3.duration_since(t2).as_secs_f64();
            rec.rollout_s = rollout_s;
            rec.scoring_s = scoring_s;
            rec.generated_tokens = episodes.iter().map(|e| e.ids.len()).sum();
            let step_s = t0.elapsed().as_secs_f64();
            rec.rollout_tokens_per_second = rec.generated_tokens as f64 / rollout_s.max(1e-9);
            rec.tokens_per_second = rec.generated_tokens as f64 / step_s.max(1e-9);
            log.write(&serde_json::to_value(&rec)?)?;
            pb.set_message(format!(
                "R {:.3} C {} λ {} | rollout {:.1}s score {:.1}s train {:.1}s",
                rec.reward,
                rec.cost.map_or("-".into(), |c| format!("{c:.3}")),
                rec.lambda.map_or("-".into(), |l| format!("{l:.3}")),
                rollout_s,
                scoring_s,
                rec.training_s
            ));
            pb.set_position(trainer.global_step);
            history.push(rec);
            if s.save_every > 0 && trainer.global_step.is_multiple_of(s.save_every) {
                trainer.save_checkpoint(&ckpt)?;
            }
        }
    }
    pb.finish_and_clear();
    trainer.save_checkpoint(&ckpt)?;
    let policy_dir = save_outputs(&trainer, args)?;
    let plots = plot_history(&args.out, &history, s.constraint.threshold)?;
    let mean_of = |f: fn(&StepRecord) -> f64| -> Option<f64> {
        (!history.is_empty()).then(|| history.iter().map(f).sum::<f64>() / history.len() as f64)
    };
    let summary = json!({
        "algorithm": objective.name(),
        "reward_shaping": match objective { Objective::RewardShaping(nu) => Some(nu), _ => None },
        "steps": trainer.global_step,
        "policy": policy_dir.display().to_string(),
        "final_lambda": trainer.constraint.as_ref().map(|k| k.lagrange.lambda()),
        "mean_rollout_s": mean_of(|r| r.rollout_s), "mean_scoring_s": mean_of(|r| r.scoring_s),
        "mean_training_s": mean_of(|r| r.training_s), "mean_sync_s": mean_of(|r| r.sync_s),
        "plots": plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "wall_s": started.elapsed().as_secs_f64(),
    });
    Ok(RunResult {
        summary,
        history,
        policy: policy_dir,
    })
}

/// OUT/policy (with the actor's tokenizer files) and the critics beside it.
fn save_outputs(trainer: &Trainer, args: &PpoArgs) -> Result<PathBuf> {
    let kind = args.settings.run.save_kind()?;
    let policy_dir = args.out.join("policy");
    save_hf_dir(
        &trainer.actor,
        &policy_dir,
        &SaveOptions {
            kind,
            ..Default::default()
        },
    )?;
    copy_tokenizer_files(&args.actor, &policy_dir)?;
    for (name, critic) in [
        ("reward_critic", Some(&trainer.reward_critic)),
        ("cost_critic", trainer.cost_critic()),
    ] {
        if let Some(c) = critic {
            let d = args.out.join(name);
            save_hf_dir(
                c,
                &d,
                &SaveOptions {
                    kind,
                    score_type: Some("critic".into()),
                    ..Default::default()
                },
            )?;
            copy_tokenizer_files(&args.actor, &d)?;
        }
    }
    Ok(policy_dir)
}

/// Training curves: reward/cost per step, λ and the episode-cost window mean against the threshold d.
fn plot_history(out: &Path, history: &[StepRecord], threshold: f64) -> Result<Vec<PathBuf>> {
    use crate::plots::{scatter, Series};
    let history: Vec<Value> = history
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let series = |k: &str, name: &str| Series {
        name: name.into(),
        points: history
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[k].as_f64()?)))
            .collect(),
    };
    let mut files = scatter(
        &out.join("reward_cost"),
        "Reward and cost per step",
        "step",
        "mean end score",
        &[series("reward", "reward"), series("cost", "cost")]
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect::<Vec<_>>(),
        true,
    )?;
    let lam = series("lambda", "λ");
    if let (Some(first), Some(last)) = (lam.points.first(), lam.points.last()) {
        let d = Series {
            name: format!("threshold d = {threshold}"),
            points: vec![(first.0, threshold), (last.0, threshold)],
        };
        files.extend(scatter(
            &out.join("lambda"),
            "Lagrange multiplier and episode cost",
            "step",
            "value",
            &[lam, series("episode_cost", "episode cost (window mean)"), d],
            true,
        )?);
    }
    Ok(files)
}
