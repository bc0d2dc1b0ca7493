//! `dpo` (spec §4): direct preference optimisation on helpfulness pairs against a frozen reference copy of the
//! policy. Log-probs are summed over each response's tokens in the policy's own format;
//! `L = −logσ(β[(lp_w − lpref_w) − (lp_l − lpref_l)])`; logs the implicit-reward accuracy and margin.

use crate::data::preference::{reward_text_pairs, TextPair};
use crate::losses::dpo::dpo_loss;
use crate::metrics::progress;
use crate::model::{
    copy_tokenizer_files, gather_logprobs, save_hf_dir, HeadKind, Model, SaveOptions,
};
use crate::optim::AdamW;
use crate::rollout::PromptFormat;
use crate::run_args::RunArgs;
use crate::sft::{collate, tokenize, SftExample};
use crate::trainable::TrainableArgs;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safeloop_shared::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub publish: crate::registry_cmd::PublishArgs,
    #[arg(long)]
    pub model: PathBuf,
    /// Helpfulness pairs: PKU-SafeRLHF (`better_response_id`) or HH-RLHF files.
    #[arg(long = "data", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Held-out pairs: implicit-reward accuracy after each epoch.
    #[arg(long = "eval", num_args = 1..)]
    pub eval: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// β (safe-rlhf `scale_coeff`: script 0.1, CLI 0.02).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-6)]
    pub lr: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    #[arg(long, value_enum, default_value_t = PromptFormat::ChatTemplate)]
    pub prompt_format: PromptFormat,
    #[command(flatten)]
    #[serde(flatten)]
    pub trainable: TrainableArgs,
}

fn encode(
    tok: &Tokenizer,
    fmt: PromptFormat,
    p: &TextPair,
    max_len: usize,
) -> Result<(SftExample, SftExample)> {
    let conv = |r: &str| {
        let mut c = p.messages.clone();
        c.push(ChatMessage::new("assistant", r));
        c
    };
    Ok((
        tokenize(tok, fmt, &conv(&p.better), max_len)?,
        tokenize(tok, fmt, &conv(&p.worse), max_len)?,
    ))
}

/// Summed response log-probs of each row under `model`.
fn seq_logprobs(model: &Model, rows: &[&SftExample], pad: i64) -> Tensor {
    let (b, targets) = collate(rows, pad, model.device());
    let lp = crate::device::autocast(model.device(), || {
        gather_logprobs(&model.forward(&b), &b.ids)
    });
    (lp * targets.to_kind(Kind::Float)).sum_dim_intlist(1, false, Kind::Float)
}

fn batch(
    policy: &Model,
    reference: &Model,
    pairs: &[&(SftExample, SftExample)],
    pad: i64,
    beta: f64,
) -> (Tensor, Tensor, Tensor) {
    let rows: Vec<&SftExample> = pairs
        .iter()
        .map(|p| &p.0)
        .chain(pairs.iter().map(|p| &p.1))
        .collect();
    let n = pairs.len() as i64;
    let lp = seq_logprobs(policy, &rows, pad);
    let lpref = tch::no_grad(|| seq_logprobs(reference, &rows, pad));
    dpo_loss(
        &lp.narrow(0, 0, n),
        &lp.narrow(0, n, n),
        &lpref.narrow(0, 0, n),
        &lpref.narrow(0, n, n),
        beta,
    )
}

pub fn run(args: &DpoArgs) -> Result<Value> {
    let started = Instant::now();
    let device = args.run.device()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    tch::manual_seed(args.run.seed as i64);
    let (tok, pad) = crate::score::train::load_tokenizer(&args.model)?;
    // Pairs whose responses fall entirely past --max-length carry no signal and are left out (counted).
    let mut truncated = 0usize;
    let mut load = |files: &[PathBuf]| -> Result<Vec<(SftExample, SftExample)>> {
        let mut out = Vec::new();
        for p in reward_text_pairs(files)? {
            let (w, l) = encode(&tok, args.prompt_format, &p, args.max_length)?;
            if w.target.iter().any(|&t| t) && l.target.iter().any(|&t| t) {
                out.push((w, l));
            } else {
                truncated += 1;
            }
        }
        Ok(out)
    };
    let train = load(&args.data)?;
    let evals = if args.eval.is_empty() {
        vec![]
    } else {
        load(&args.eval)?
    };
    if train.is_empty() {
        bail!("every pair is longer than --max-length {}", args.max_length);
    }
    let mut policy = Model::load(&args.model, Some(HeadKind::Lm), device)?;
    let reference = Model::load(&args.model, Some(HeadKind::Lm), device)?;
    args.trainable.apply(&mut policy, false);
    let mut opt = AdamW::new(policy.trainable(), args.weight_decay);
    let steps_per_epoch = train.len().div_ceil(args.batch_size) as u64;
    let sched = args
        .run
        .schedule(args.lr, steps_per_epoch * args.epochs as u64);
    let mut log = args.run.metrics_log(&args.out)?;
    let mut step = 0u64;
    let mut evaluations = Vec::new();
    'epochs: for epoch in 0..args.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            args.run.seed + epoch as u64,
        ));
        let pb = progress(
            steps_per_epoch,
            &format!("dpo epoch {}/{}", epoch + 1, args.epochs),
        );
        for chunk in order.chunks(args.batch_size) {
            if args.run.step_cap_reached(step) {
                break 'epochs;
            }
            let pairs: Vec<&(SftExample, SftExample)> = chunk.iter().map(|&i| &train[i]).collect();
            opt.zero_grad();
            let (loss, rw, rl) = batch(&policy, &reference, &pairs, pad, args.beta);
            loss.backward();
            opt.clip_grad_norm(args.run.max_grad_norm);
            let lr = sched.at(step);
            opt.step(lr);
            step += 1;
            let acc = rw
                .gt_tensor(&rl)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            let margin = (&rw - &rl).mean(Kind::Float).double_value(&[]);
            log.write(&json!({"step": step, "epoch": epoch + 1, "loss": loss.double_value(&[]), "reward_accuracy": acc,
                "reward_margin": margin, "better_reward": rw.mean(Kind::Float).double_value(&[]),
                "worse_reward": rl.mean(Kind::Float).double_value(&[]), "lr": lr}))?;
            pb.set_message(format!("loss {:.4} acc {acc:.2}", loss.double_value(&[])));
            pb.inc(1);
        }
        pb.finish_and_clear();
        if !evals.is_empty() {
            let _g = tch::no_grad_guard();
            let (mut correct, mut margin) = (0.0, 0.0);
            for chunk in evals.chunks(args.batch_size) {
                let pairs: Vec<&(SftExample, SftExample)> = chunk.iter().collect();
                let (_, rw, rl) = batch(&policy, &reference, &pairs, pad, args.beta);
                correct += rw
                    .gt_tensor(&rl)
                    .to_kind(Kind::Float)
                    .sum(Kind::Float)
                    .double_value(&[]);
                margin += (&rw - &rl).sum(Kind::Float).double_value(&[]);
            }
            let e = json!({"epoch": epoch + 1, "pairs": evals.len(), "reward_accuracy": correct / evals.len() as f64,
                "reward_margin": margin / evals.len() as f64});
            log.write(&json!({"eval": e}))?;
            evaluations.push(e);
        }
    }
    let dir = args.out.join("model");
    save_hf_dir(
        &policy,
        &dir,
        &SaveOptions {
            kind: args.run.save_kind()?,
            ..Default::default()
        },
    )?;
    copy_tokenizer_files(&args.model, &dir)?;
    Ok(
        json!({"out": dir.display().to_string(), "pairs": train.len(), "dropped_truncated": truncated, "steps": step, "evaluations": evaluations,
        "wall_s": started.elapsed().as_secs_f64()}),
    )
}
