//! `ppo-lag` and its baselines on one loop (spec §3–4). PPO-Lagrangian is PPO plus `losses::lagrange`: a second
//! (cost) stream with its own critic and GAE, and the advantage `(A_r − λ·A_c)/(1+λ)` with λ = e^η learned from
//! the episode-cost window. `ppo` drops the cost stream; `--reward-shaping ν` folds a fixed ν·C into the reward.
//!
//! Rollouts run on the serving engine (`rollout`), whose model is refreshed from the actor in memory after every
//! update (`sync`); behaviour log-probs are recomputed by the tch actor. Each iteration prints and logs its
//! rollout / scoring / training time.

pub mod experience;
pub mod scorers;
pub mod sweep;
pub mod sync;

use crate::data::prompts;
use crate::losses::lagrange::{combine_advantages, Lagrange};
use crate::losses::ppo::{actor_loss, critic_loss};
use crate::metrics::{progress, MetricsLog};
use crate::model::{
    copy_tokenizer_files, save_adapter, save_hf_dir, write_dir_atomically, HeadKind, Model,
    SaveOptions,
};
use crate::optim::{AdamW, LrSchedule, Schedule};
use crate::rollout::{Policy, PromptFormat};
use anyhow::{bail, Context, Result};
use experience::Shaping;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safeloop_shared::engine::{EngineConfig, SamplingParams};
use safeloop_shared::ChatMessage;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    PpoLag,
    Ppo,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub publish: crate::registry_cmd::PublishArgs,
    /// The actor (HF directory; `convert` makes one from a GGUF). The frozen reference is a copy.
    #[arg(long)]
    pub actor: PathBuf,
    /// Reward: a score-model directory or a rule `token-fraction:LO:HI[:SCALE[:OFFSET]]`.
    #[arg(long)]
    pub reward_model: String,
    /// Cost (ppo-lag, reward shaping): a score-model directory or a rule.
    #[arg(long)]
    pub cost_model: Option<String>,
    /// Reward critic initialisation (default: the reward model; the actor with a fresh head for a rule).
    #[arg(long)]
    pub reward_critic: Option<PathBuf>,
    /// Cost critic initialisation (default: the cost model; the actor with a fresh head for a rule).
    #[arg(long)]
    pub cost_critic: Option<PathBuf>,
    /// Prompt files (PKU-SafeRLHF, Alpaca/red-team, chat rows).
    #[arg(long = "prompts", required = true, num_args = 1..)]
    pub prompts: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = PromptFormat::ChatTemplate)]
    pub prompt_format: PromptFormat,
    #[arg(long, default_value = "safe-rlhf")]
    pub score_format: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the prompts.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many iterations (0 = run the epochs).
    #[arg(long, default_value_t = 0)]
    pub max_iterations: u64,
    /// Prompts per iteration (one rollout batch = one PPO micro-batch here).
    #[arg(long, default_value_t = 16)]
    pub prompt_batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub update_iters: usize,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Generate exactly max-new-tokens (no EOS stop; synthetic tasks).
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long, default_value_t = 1e-5)]
    pub actor_lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub actor_weight_decay: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub actor_lr_scheduler: Schedule,
    #[arg(long, default_value_t = 0.03)]
    pub actor_warmup_ratio: f64,
    #[arg(long, default_value_t = 5e-6)]
    pub critic_lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub critic_weight_decay: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Constant)]
    pub critic_lr_scheduler: Schedule,
    #[arg(long, default_value_t = 0.03)]
    pub critic_warmup_ratio: f64,
    /// β of the per-token KL penalty (default 0.01 for ppo-lag, 0.02 for ppo; the paper used 0.1).
    #[arg(long)]
    pub kl_coeff: Option<f64>,
    /// ε of the clipped ratio (paper: 0.1).
    #[arg(long, default_value_t = 0.2)]
    pub clip_range_ratio: f64,
    #[arg(long, default_value_t = 50.0)]
    pub clip_range_score: f64,
    #[arg(long, default_value_t = 5.0)]
    pub clip_range_value: f64,
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    #[arg(long, default_value_t = 0.95)]
    pub gae_lambda: f64,
    /// Cost threshold d (E[C] ≤ threshold; paper rounds 2–3: −3). Negative values need no `=`.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub threshold: f64,
    #[arg(long, default_value_t = 1.0)]
    pub lambda_init: f64,
    /// Learning rate of ln λ (paper: 0.01–0.04).
    #[arg(long, default_value_t = 0.1)]
    pub lambda_lr: f64,
    /// Cap on λ (0 = none).
    #[arg(long, default_value_t = 5.0)]
    pub lambda_max: f64,
    #[arg(long, default_value_t = 0)]
    pub lambda_update_delay_steps: u64,
    #[arg(long, default_value_t = 128)]
    pub episode_cost_window_size: usize,
    /// SFT data for the PTX term (off without it).
    #[arg(long)]
    pub ptx_data: Option<PathBuf>,
    #[arg(long, default_value_t = 16.0)]
    pub ptx_coeff: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Freeze the lower N layers of the actor and the critics (CPU-sized runs).
    #[arg(long, default_value_t = 0)]
    pub freeze_layers: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    #[arg(long, default_value = "f32")]
    pub save_dtype: String,
}

/// What a run did.
pub struct RunResult {
    pub summary: Value,
    pub history: Vec<Value>,
}

fn critic_init(explicit: &Option<PathBuf>, model_spec: Option<&str>, actor: &Path) -> PathBuf {
    explicit.clone().unwrap_or_else(|| match model_spec {
        Some(s) if Path::new(s).is_dir() => PathBuf::from(s),
        _ => actor.to_path_buf(),
    })
}

pub(crate) fn load_prompts(files: &[PathBuf]) -> Result<Vec<Vec<ChatMessage>>> {
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

fn masked_mean_f(x: &tch::Tensor, m: &tch::Tensor) -> f64 {
    crate::losses::masked_mean(x, m).double_value(&[])
}

/// Runs PPO-Lag (`shaping = None`, `algo = PpoLag`), PPO (`Ppo`, no cost) or PPO with reward shaping
/// (`Ppo`, `shaping = Some(ν)`).
pub fn run(args: &PpoArgs, algo: Algorithm, reward_shaping: Option<f64>) -> Result<RunResult> {
    let started = Instant::now();
    let device = crate::device::parse_device(&args.device)?;
    let score_format = crate::score::train::parse_score_format(&args.score_format)?;
    let uses_cost = algo == Algorithm::PpoLag || reward_shaping.is_some();
    if uses_cost && args.cost_model.is_none() {
        bail!("--cost-model is required for ppo-lag and --reward-shaping");
    }
    let kl_coeff = args.kl_coeff.unwrap_or(if algo == Algorithm::PpoLag {
        0.01
    } else {
        0.02
    });
    tch::manual_seed(args.seed as i64);
    let prompts = load_prompts(&args.prompts)?;
    let reward_scorer = scorers::load(&args.reward_model, score_format)?;
    let cost_scorer = match &args.cost_model {
        Some(c) => Some(scorers::load(c, score_format)?),
        None => None,
    };
    let (tok, pad) = crate::score::train::load_tokenizer(&args.actor)?;

    // Models: actor (trainable), reference (frozen copy), critics (trainable).
    let mut actor = Model::load(&args.actor, Some(HeadKind::Lm), device)?;
    let reference = Model::load(&args.actor, Some(HeadKind::Lm), device)?;
    let head = Some(HeadKind::Score {
        score_dim: 1,
        bias: true,
    });
    let mut reward_critic = Model::load(
        &critic_init(&args.reward_critic, Some(&args.reward_model), &args.actor),
        head,
        device,
    )?;
    let mut cost_critic = if algo == Algorithm::PpoLag {
        Some(Model::load(
            &critic_init(&args.cost_critic, args.cost_model.as_deref(), &args.actor),
            head,
            device,
        )?)
    } else {
        None
    };
    if args.freeze_layers > 0 {
        actor.freeze_lower_layers(args.freeze_layers);
        reward_critic.freeze_lower_layers(args.freeze_layers);
        if let Some(c) = &mut cost_critic {
            c.freeze_lower_layers(args.freeze_layers);
        }
    }
    let ptx: Vec<crate::sft::SftExample> = match &args.ptx_data {
        Some(f) => crate::data::sft::read(f)?
            .iter()
            .map(|c| crate::sft::tokenize(&tok, args.prompt_format, c, 512))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|e| e.target.iter().any(|&t| t))
            .collect(),
        None => vec![],
    };

    let iters_per_epoch = prompts.len().div_ceil(args.prompt_batch_size) as u64;
    let mut total = iters_per_epoch * args.epochs as u64 * args.update_iters as u64;
    if args.max_iterations > 0 {
        total = total.min(args.max_iterations * args.update_iters as u64);
    }
    let mut actor_opt = AdamW::new(actor.trainable(), args.actor_weight_decay);
    let mut rc_opt = AdamW::new(reward_critic.trainable(), args.critic_weight_decay);
    let mut cc_opt = cost_critic
        .as_ref()
        .map(|c| AdamW::new(c.trainable(), args.critic_weight_decay));
    let actor_sched = LrSchedule::new(
        args.actor_lr,
        args.actor_lr_scheduler,
        args.actor_warmup_ratio,
        total,
    );
    let critic_sched = LrSchedule::new(
        args.critic_lr,
        args.critic_lr_scheduler,
        args.critic_warmup_ratio,
        total,
    );
    let mut lagrange = Lagrange::new(
        args.lambda_init,
        args.lambda_lr,
        args.threshold,
        (args.lambda_max > 0.0).then_some(args.lambda_max),
        args.episode_cost_window_size,
    );
    lagrange.update_delay_steps = args.lambda_update_delay_steps;

    let ckpt = args.out.join("checkpoint");
    let mut global_step = 0u64;
    if args.resume && ckpt.join("state.json").is_file() {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json"))?)?;
        global_step = state["global_step"]
            .as_u64()
            .context("checkpoint state.json: global_step")?;
        lagrange = serde_json::from_value(state["lagrange"].clone())
            .context("checkpoint state.json: lagrange")?;
        load_trainable(&mut actor, &ckpt.join("actor"))?;
        load_trainable(&mut reward_critic, &ckpt.join("reward_critic"))?;
        actor_opt.load(&ckpt.join("actor/optimizer.safetensors"))?;
        rc_opt.load(&ckpt.join("reward_critic/optimizer.safetensors"))?;
        if let (Some(c), Some(o)) = (&mut cost_critic, &mut cc_opt) {
            load_trainable(c, &ckpt.join("cost_critic"))?;
            o.load(&ckpt.join("cost_critic/optimizer.safetensors"))?;
        }
        eprintln!("resuming from {} at step {global_step}", ckpt.display());
    }

    let engine_cfg = EngineConfig {
        max_running: args.prompt_batch_size.max(1),
        ..Default::default()
    };
    let mut policy = Policy::from_model(
        sync::to_candle(&actor)?,
        std::sync::Arc::new(tok),
        args.prompt_format,
        engine_cfg,
    );
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: Some(args.max_new_tokens),
        ignore_eos: args.ignore_eos,
        ..Default::default()
    };
    params.validate()?;
    let shaping_cfg = Shaping {
        kl_coeff,
        clip_range_score: args.clip_range_score,
        gamma: args.gamma,
        gae_lambda: args.gae_lambda,
    };
    let mut log = MetricsLog::open(
        &args
            .metrics
            .clone()
            .unwrap_or_else(|| args.out.join("metrics.jsonl")),
    )?;
    let mut history = Vec::new();
    let pb = progress(
        total,
        match (algo, reward_shaping) {
            (Algorithm::PpoLag, _) => "ppo-lag",
            (Algorithm::Ppo, Some(_)) => "ppo (reward shaping)",
            (Algorithm::Ppo, None) => "ppo",
        },
    );
    pb.set_position(global_step);
    let mut iteration = 0u64;
    'outer: for epoch in 0..args.epochs {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            args.seed.wrapping_add(epoch as u64),
        ));
        for chunk in order.chunks(args.prompt_batch_size) {
            if global_step >= total {
                break 'outer;
            }
            iteration += 1;
            if iteration * (args.update_iters as u64) <= global_step {
                continue; // resumed past this batch
            }
            let batch_prompts: Vec<Vec<ChatMessage>> =
                chunk.iter().map(|&i| prompts[i].clone()).collect();
            // 1. Rollout on the serving engine.
            let t0 = Instant::now();
            let episodes = policy.generate(
                &batch_prompts,
                &params,
                args.seed
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
            let end_rewards: Vec<f64> = match (reward_shaping, &costs) {
                (Some(nu), Some(c)) => rewards.iter().zip(c).map(|(r, c)| r - nu * c).collect(),
                _ => rewards.clone(),
            };
            if let Some(c) = &costs {
                lagrange.record_costs(c);
            }
            let cost_stream = if algo == Algorithm::PpoLag {
                costs.as_deref()
            } else {
                None
            };
            let exp = experience::build(
                &actor,
                &reference,
                &reward_critic,
                cost_critic.as_ref(),
                &episodes,
                &end_rewards,
                cost_stream,
                pad,
                &shaping_cfg,
            );
            let mut rec = json!({});
            for _ in 0..args.update_iters {
                // λ first, from the window (spec §3.6), then the actor with λ fixed.
                let lambda_step = if algo == Algorithm::PpoLag {
                    lagrange.update(global_step)
                } else {
                    None
                };
                let lambda = lagrange.lambda();
                let m = exp.tail(&exp.mask);
                let adv = match (&exp.cost_adv, algo) {
                    (Some(ca), Algorithm::PpoLag) => {
                        combine_advantages(&exp.reward_adv, ca, lambda)
                    }
                    _ => exp.reward_adv.shallow_clone(),
                };
                actor_opt.zero_grad();
                let logp_new = crate::device::autocast(device, || actor.token_logprobs(&exp.batch));
                let a_loss = actor_loss(
                    &exp.tail(&logp_new),
                    &exp.tail(&exp.logp_old),
                    &adv,
                    &m,
                    args.clip_range_ratio,
                );
                let mut ptx_loss = None;
                if ptx.is_empty() {
                    a_loss.backward();
                } else {
                    // One optimiser step over the RL micro-batch and a PTX micro-batch: ½(∇L_actor + c·∇L_ptx).
                    (&a_loss * 0.5).backward();
                    let k = (global_step as usize * args.prompt_batch_size) % ptx.len();
                    let sel: Vec<&crate::sft::SftExample> = (0..args.prompt_batch_size)
                        .map(|i| &ptx[(k + i) % ptx.len()])
                        .collect();
                    let (b, targets) = crate::sft::collate(&sel, pad, device);
                    let l = crate::losses::sft::causal_lm_loss(&actor.token_logprobs(&b), &targets);
                    (&l * (0.5 * args.ptx_coeff)).backward();
                    ptx_loss = Some(l.double_value(&[]));
                }
                actor_opt.clip_grad_norm(args.max_grad_norm);
                let actor_lr = actor_sched.at(global_step);
                actor_opt.step(actor_lr);
                // Critics, each with its own step.
                let critic_lr = critic_sched.at(global_step);
                let step_critic =
                    |critic: &Model, opt: &mut AdamW, old: &tch::Tensor, returns: &tch::Tensor| {
                        opt.zero_grad();
                        let v = experience::values(critic, &exp.batch);
                        let l = critic_loss(
                            &exp.tail(&v),
                            &exp.tail(old),
                            returns,
                            &m,
                            args.clip_range_value,
                        );
                        l.backward();
                        opt.clip_grad_norm(args.max_grad_norm);
                        opt.step(critic_lr);
                        l.double_value(&[])
                    };
                let rc_loss = step_critic(
                    &reward_critic,
                    &mut rc_opt,
                    &exp.reward_values,
                    &exp.reward_returns,
                );
                let cc_loss = match (
                    &cost_critic,
                    &mut cc_opt,
                    &exp.cost_values,
                    &exp.cost_returns,
                ) {
                    (Some(c), Some(o), Some(old), Some(ret)) => Some(step_critic(c, o, old, ret)),
                    _ => None,
                };
                global_step += 1;
                let gen_lens: Vec<usize> = episodes.iter().map(|e| e.ids.len()).collect();
                rec = json!({
                    "step": global_step, "epoch": epoch + 1,
                    "actor_loss": a_loss.double_value(&[]), "reward_critic_loss": rc_loss, "cost_critic_loss": cc_loss,
                    "ptx_loss": ptx_loss,
                    "lambda": if algo == Algorithm::PpoLag { Some(lambda) } else { None },
                    "lambda_capped": lambda_step.map(|s| s.capped),
                    "episode_cost": costs.as_ref().map(|_| lagrange.episode_cost()),
                    "reward": rewards.iter().sum::<f64>() / rewards.len() as f64,
                    "cost": costs.as_ref().map(|c| c.iter().sum::<f64>() / c.len() as f64),
                    "reward_with_kl_penalty": exp.masked_sum_mean(&exp.rewards_tok),
                    "cost_with_kl_penalty": exp.costs_tok.as_ref().map(|c| exp.masked_sum_mean(c)),
                    "reward_advantage": masked_mean_f(&exp.reward_adv, &m),
                    "reward_return": masked_mean_f(&exp.reward_returns, &m),
                    "reward_value": masked_mean_f(&exp.tail(&exp.reward_values), &m),
                    "cost_advantage": exp.cost_adv.as_ref().map(|a| masked_mean_f(a, &m)),
                    "cost_return": exp.cost_returns.as_ref().map(|a| masked_mean_f(a, &m)),
                    "kl_divergence": exp.masked_sum_mean(&(&exp.logp_old - &exp.logp_ref)),
                    "actor_lr": actor_lr, "critic_lr": critic_lr,
                    "mean_generated_length": gen_lens.iter().sum::<usize>() as f64 / gen_lens.len() as f64,
                    "max_generated_length": gen_lens.iter().max(),
                    "rollout_s": rollout_s, "scoring_s": scoring_s,
                    "behaviour_logprob_gap": experience::behaviour_gap(&exp, &episodes),
                });
            }
            // 4. The engine samples from the updated actor next time.
            let t3 = Instant::now();
            policy.replace_model(sync::to_candle(&actor)?);
            let sync_s = t3.elapsed().as_secs_f64();
            rec["training_s"] = json!(t2.elapsed().as_secs_f64() - sync_s);
            rec["sync_s"] = json!(sync_s);
            log.write(&rec)?;
            pb.set_message(format!(
                "R {:.3} C {} λ {} | rollout {:.1}s score {:.1}s train {:.1}s",
                rec["reward"].as_f64().unwrap_or(0.0),
                rec["cost"]
                    .as_f64()
                    .map_or("-".into(), |c| format!("{c:.3}")),
                rec["lambda"]
                    .as_f64()
                    .map_or("-".into(), |l| format!("{l:.3}")),
                rollout_s,
                scoring_s,
                rec["training_s"].as_f64().unwrap_or(0.0)
            ));
            pb.set_position(global_step);
            history.push(rec);
            if args.save_every > 0 && global_step.is_multiple_of(args.save_every) {
                save_checkpoint(
                    &ckpt,
                    &actor,
                    &reward_critic,
                    cost_critic.as_ref(),
                    &actor_opt,
                    &rc_opt,
                    cc_opt.as_ref(),
                    &lagrange,
                    global_step,
                )?;
            }
        }
    }
    pb.finish_and_clear();
    save_checkpoint(
        &ckpt,
        &actor,
        &reward_critic,
        cost_critic.as_ref(),
        &actor_opt,
        &rc_opt,
        cc_opt.as_ref(),
        &lagrange,
        global_step,
    )?;
    let save_kind = crate::device::parse_kind(&args.save_dtype)?;
    let policy_dir = args.out.join("policy");
    save_hf_dir(
        &actor,
        &policy_dir,
        &SaveOptions {
            kind: save_kind,
            ..Default::default()
        },
    )?;
    copy_tokenizer_files(&args.actor, &policy_dir)?;
    let critic_dir = args.out.join("reward_critic");
    save_hf_dir(
        &reward_critic,
        &critic_dir,
        &SaveOptions {
            kind: save_kind,
            score_type: Some("critic".into()),
            ..Default::default()
        },
    )?;
    copy_tokenizer_files(&args.actor, &critic_dir)?;
    if let Some(c) = &cost_critic {
        let d = args.out.join("cost_critic");
        save_hf_dir(
            c,
            &d,
            &SaveOptions {
                kind: save_kind,
                score_type: Some("critic".into()),
                ..Default::default()
            },
        )?;
        copy_tokenizer_files(&args.actor, &d)?;
    }
    let plots = plot_history(&args.out, &history, args.threshold)?;
    let mean_of = |k: &str| -> Option<f64> {
        let v: Vec<f64> = history.iter().filter_map(|r| r[k].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let summary = json!({
        "algorithm": algo, "reward_shaping": reward_shaping, "steps": global_step,
        "policy": policy_dir.display().to_string(),
        "final_lambda": (algo == Algorithm::PpoLag).then(|| lagrange.lambda()),
        "mean_rollout_s": mean_of("rollout_s"), "mean_scoring_s": mean_of("scoring_s"),
        "mean_training_s": mean_of("training_s"), "mean_sync_s": mean_of("sync_s"),
        "plots": plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "wall_s": started.elapsed().as_secs_f64(),
    });
    Ok(RunResult { summary, history })
}

fn load_trainable(model: &mut Model, dir: &Path) -> Result<()> {
    let file = dir.join("adapter.safetensors");
    let mut vars = model.vs.variables();
    let _g = tch::no_grad_guard();
    for (name, t) in tch::Tensor::read_safetensors(&file)
        .with_context(|| format!("reading {}", file.display()))?
    {
        let v = vars
            .get_mut(&name)
            .with_context(|| format!("{}: unknown tensor `{name}`", file.display()))?;
        v.copy_(&t);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    ckpt: &Path,
    actor: &Model,
    rc: &Model,
    cc: Option<&Model>,
    actor_opt: &AdamW,
    rc_opt: &AdamW,
    cc_opt: Option<&AdamW>,
    lagrange: &Lagrange,
    step: u64,
) -> Result<()> {
    write_dir_atomically(ckpt, |tmp| {
        for (name, m, o) in [
            ("actor", Some(actor), Some(actor_opt)),
            ("reward_critic", Some(rc), Some(rc_opt)),
            ("cost_critic", cc, cc_opt),
        ] {
            if let (Some(m), Some(o)) = (m, o) {
                save_adapter(m, &tmp.join(name), tch::Kind::Float, json!({}))?;
                o.save(&tmp.join(name).join("optimizer.safetensors"))?;
            }
        }
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_string_pretty(&json!({"global_step": step, "lagrange": lagrange}))?,
        )?;
        Ok(())
    })
}

/// Training curves: reward/cost per step, λ and the episode-cost window mean against the threshold d.
fn plot_history(out: &Path, history: &[Value], threshold: f64) -> Result<Vec<PathBuf>> {
    use crate::plots::{scatter, Series};
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
