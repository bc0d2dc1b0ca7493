//! `train-score`: a reward or cost model from preference data (spec §2). The backbone comes from a policy or
//! score-model directory; a fresh score head is added to a policy. What trains: everything (default), everything
//! above `--freeze-layers N`, only the head (`--train head`), or LoRA adapters from a layer up plus the head.
//! Per epoch it evaluates on the `--eval` files; it checkpoints every `--save-every` steps (resumable with
//! `--resume`) and writes the final model as an HF directory the server loads (and, with `--adapter-out`, only
//! the trained tensors).

use super::activations::ActivationCache;
use super::batches::{collate, epoch_batches};
use super::eval::{batch_loss, evaluate, EvalSetup};
use crate::data::preference::{self, Encoder, ScoreData, ScoreKind};
use crate::losses::preference::LossType;
use crate::metrics::{progress, MetricsLog};
use crate::model::{
    copy_tokenizer_files, load_adapter, save_adapter, save_hf_dir, HeadKind, Model, SaveOptions,
};
use crate::optim::AdamW;
use crate::run_args::RunArgs;
use crate::trainable::TrainableArgs;
use anyhow::{bail, Result};
use safeloop_shared::config::{generation_eos_ids, ModelConfig, ScorePooling};
use safeloop_shared::scoring::ScoreFormat;
use safeloop_shared::Tokenizer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct TrainScoreArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub publish: crate::registry_cmd::PublishArgs,
    /// Backbone: an HF policy directory (a fresh score head is added) or a score-model directory (trained on).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum)]
    pub kind: ScoreKind,
    /// Training files (PKU-SafeRLHF, HH-RLHF pairs, or labelled single responses for the cost sign term).
    #[arg(long = "data", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Evaluation files, evaluated after every epoch.
    #[arg(long = "eval", num_args = 1..)]
    pub eval: Vec<PathBuf>,
    /// Output directory (the final HF score model; checkpoints under OUT/checkpoint).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write only the trained tensors here (small; `merge` rebuilds the model on the base).
    #[arg(long)]
    pub adapter_out: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Examples (pairs or single responses) per optimiser step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// L2 coefficient on the scores.
    #[arg(long, default_value_t = 0.001)]
    pub regularization: f64,
    #[arg(long, value_enum, default_value_t = LossType::SequenceWise)]
    pub loss_type: LossType,
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Train only the score head.
    #[arg(long)]
    pub head_only: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub trainable: TrainableArgs,
    /// Input format the model scores: `safe-rlhf` (default; what the server uses) or `chat-template`.
    #[arg(long, default_value = "safe-rlhf")]
    pub score_format: String,
    /// Checkpoint every N optimiser steps (0 = at the end of each epoch only).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Continue from OUT/checkpoint if present.
    #[arg(long)]
    pub resume: bool,
    /// Padded tokens per forward pass in evaluation.
    #[arg(long, default_value_t = 8192)]
    pub eval_tokens: usize,
    /// Cache the frozen lower layers' output (the states entering the first trained layer; f16, memory-mapped)
    /// under DIR, keyed by the token ids and a hash of the frozen parameters: computed once (reused by later runs
    /// on the same backbone and layer), then every epoch and evaluation runs only the trained layers and the head.
    /// Needs frozen lower layers (`--lora-from-layer N`, `--freeze-layers N` or `--head-only`).
    #[arg(long, value_name = "DIR")]
    pub cache_activations: Option<PathBuf>,
    /// How the sequence score comes from the per-token scores: `end` (the last token, safe-rlhf's convention) or
    /// `mean` (over every token). Default: the model's own (`end` for a fresh head). Saved in config.json; the
    /// server and the trainer's scorers pool the same way.
    #[arg(long, value_parser = parse_pooling)]
    pub pooling: Option<ScorePooling>,
    /// Keep only the backbone's first N decoder layers: the final norm and the score head read layer N's output.
    /// A middle layer's features can separate safe from unsafe better than the last layer's (which is shaped for
    /// next-token prediction), and the shortened model costs N/total of a full forward to train and to serve.
    /// Saved in config.json (and the adapter), so every loader builds the same shortened model.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Cost models: the gate threshold at which `eval` reports precision, recall and the false-flag rate.
    #[arg(long, default_value_t = 0.0)]
    pub threshold: f64,
}

fn parse_pooling(s: &str) -> Result<ScorePooling, String> {
    ScorePooling::parse(s).ok_or_else(|| format!("`{s}` is not end or mean"))
}

pub fn parse_score_format(s: &str) -> Result<ScoreFormat> {
    Ok(match s {
        "safe-rlhf" => ScoreFormat::SafeRlhf,
        "chat-template" => ScoreFormat::ChatTemplate,
        other => bail!("--score-format: `{other}` is not safe-rlhf or chat-template"),
    })
}

/// The tokenizer of an HF directory (and its pad id: the tokenizer's pad token, else eos, else 0).
pub fn load_tokenizer(dir: &Path) -> Result<(Tokenizer, i64)> {
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let eos = generation_eos_ids(dir)?;
    let tok = Tokenizer::from_hf_dir(dir, &cfg, &eos)?;
    let pad = tok
        .pad_token_id()
        .or_else(|| tok.eos_token_ids().first().copied())
        .unwrap_or(0) as i64;
    Ok((tok, pad))
}

pub fn load_data(
    kind: ScoreKind,
    files: &[PathBuf],
    tok: &Tokenizer,
    format: ScoreFormat,
    max_len: usize,
) -> Result<ScoreData> {
    preference::load(
        kind,
        files,
        &Encoder {
            tokenizer: tok,
            format,
            max_len,
        },
    )
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

pub fn run(args: &TrainScoreArgs) -> Result<Value> {
    let started = Instant::now();
    let device = args.run.device()?;
    let save_kind = args.run.save_kind()?;
    let format = parse_score_format(&args.score_format)?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    tch::manual_seed(args.run.seed as i64);
    let (tok, pad) = load_tokenizer(&args.model)?;
    let train = load_data(args.kind, &args.data, &tok, format, args.max_length)?;
    let evals: Vec<(PathBuf, ScoreData)> = args
        .eval
        .iter()
        .map(|f| {
            Ok((
                f.clone(),
                load_data(
                    args.kind,
                    std::slice::from_ref(f),
                    &tok,
                    format,
                    args.max_length,
                )?,
            ))
        })
        .collect::<Result<_>>()?;
    eprintln!(
        "train-score {}: {} pairs + {} single responses (dropped: {} conflicting labels, {} without a preference, {} identical)",
        args.kind.name(),
        train.n_pairs,
        train.n_singles,
        train.dropped_conflicting_labels,
        train.dropped_no_preference,
        train.dropped_identical
    );

    let head = HeadKind::Score {
        score_dim: 1,
        bias: true,
    };
    let ckpt = checkpoint_dir(&args.out);
    let resuming = args.resume && ckpt.join("state.json").is_file();
    let mut model = if resuming {
        load_adapter(&args.model, &ckpt, device)?
    } else {
        Model::load_layers(&args.model, Some(head), device, args.layers)?
    };
    if let safeloop_shared::config::Head::Score { score_type, .. } = &mut model.cfg.head {
        *score_type = Some(args.kind.name().to_string());
    }
    if let Some(p) = args.pooling {
        model.set_pooling(p);
    }
    // A resumed LoRA run comes back from its checkpoint with its adapters (and its base frozen).
    args.trainable.apply(&mut model, args.head_only);
    let trainable = model.trainable();
    let n_params: i64 = trainable.iter().map(|(_, t)| t.numel() as i64).sum();
    eprintln!(
        "trainable parameters: {n_params} in {} tensors",
        trainable.len()
    );
    let mut opt = AdamW::new(trainable, args.weight_decay);
    let cache = match &args.cache_activations {
        Some(dir) => {
            let mut cache = ActivationCache::open(dir, &model)?;
            let seqs = std::iter::once(&train)
                .chain(evals.iter().map(|(_, d)| d))
                .flat_map(|d| d.sequences());
            let stats = cache.fill(&model, seqs, pad, args.eval_tokens)?;
            eprintln!(
                "activation cache {}: {} sequences, {} computed now ({} tokens, {:.1} s), {:.1} MB on disk",
                cache.dir().display(),
                stats.sequences,
                stats.computed,
                stats.computed_tokens,
                stats.compute_s,
                stats.bytes as f64 / 1e6
            );
            Some((cache, stats))
        }
        None => None,
    };
    let cached = cache.as_ref().map(|(c, _)| (c, model.param_kind()));

    let steps_per_epoch =
        epoch_batches(&train, args.batch_size, args.run.seed, 0, true).len() as u64;
    let total_steps = steps_per_epoch * args.epochs as u64;
    let sched = args.run.schedule(args.lr, total_steps);
    let mut global_step = 0u64;
    if resuming {
        global_step = crate::checkpoint::resume(&ckpt, &mut opt)?;
    }
    let mut log = args.run.metrics_log(&args.out)?;
    let mut evaluations = Vec::new();
    let save_ckpt = |model: &Model, opt: &AdamW, step: u64| -> Result<()> {
        crate::checkpoint::save(
            &ckpt,
            model,
            opt,
            step,
            args,
            json!({"score_type": args.kind.name()}),
        )
    };

    'epochs: for epoch in 0..args.epochs {
        let batches = epoch_batches(&train, args.batch_size, args.run.seed, epoch, true);
        let pb = progress(
            batches.len() as u64,
            &format!("epoch {}/{}", epoch + 1, args.epochs),
        );
        for (k, items) in batches.iter().enumerate() {
            let step = epoch as u64 * steps_per_epoch + k as u64;
            if step < global_step {
                pb.inc(1);
                continue;
            }
            if args.run.step_cap_reached(global_step) {
                pb.finish_and_clear();
                break 'epochs;
            }
            let t = Instant::now();
            let c = collate(&train, items, pad, device, cached)?;
            opt.zero_grad();
            let b = batch_loss(&model, &c, args.kind, args.loss_type, args.regularization);
            b.total.backward();
            let grad_norm = opt.clip_grad_norm(args.run.max_grad_norm);
            let lr = sched.at(global_step);
            opt.step(lr);
            global_step += 1;
            let acc = (b.pairs > 0).then(|| b.rank_correct as f64 / b.pairs as f64);
            let sign = (b.signed > 0).then(|| b.sign_correct as f64 / b.signed as f64);
            log.write(&json!({
                "step": global_step, "epoch": epoch + 1, "loss": b.loss, "l2": b.l2, "lr": lr,
                "grad_norm": grad_norm, "accuracy": acc, "sign_accuracy": sign,
                "tokens": c.batch.ids.numel(), "step_s": t.elapsed().as_secs_f64(),
            }))?;
            pb.set_message(format!("loss {:.4}", b.loss));
            pb.inc(1);
            if args.save_every > 0 && global_step.is_multiple_of(args.save_every) {
                save_ckpt(&model, &opt, global_step)?;
            }
        }
        pb.finish_and_clear();
        save_ckpt(&model, &opt, global_step)?;
        let e = run_evals(&model, &evals, args, pad, cached, epoch + 1, &mut log)?;
        evaluations.extend(e);
    }
    if evaluations.is_empty() {
        // Stopped by --max-steps before an epoch ended.
        save_ckpt(&model, &opt, global_step)?;
        let e = run_evals(&model, &evals, args, pad, cached, args.epochs, &mut log)?;
        evaluations.extend(e);
    }

    save_hf_dir(
        &model,
        &args.out.join("model"),
        &SaveOptions {
            kind: save_kind,
            score_type: Some(args.kind.name().into()),
            ..Default::default()
        },
    )?;
    copy_tokenizer_files(&args.model, &args.out.join("model"))?;
    if let Some(a) = &args.adapter_out {
        save_adapter(
            &model,
            a,
            tch::Kind::BFloat16,
            json!({"score_type": args.kind.name(), "base": args.model.display().to_string()}),
        )?;
    }
    Ok(json!({
        "kind": args.kind.name(),
        "out": args.out.join("model").display().to_string(),
        "steps": global_step,
        "train": train,
        "evaluations": evaluations,
        "activation_cache": cache.as_ref().map(|(c, stats)| json!({"dir": c.dir().display().to_string(), "fill": stats})),
        "wall_s": started.elapsed().as_secs_f64(),
    }))
}

fn run_evals(
    model: &Model,
    evals: &[(PathBuf, ScoreData)],
    args: &TrainScoreArgs,
    pad: i64,
    cache: Option<(&ActivationCache, tch::Kind)>,
    epoch: usize,
    log: &mut MetricsLog,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let setup = EvalSetup {
        batch_size: args.batch_size,
        max_tokens: args.eval_tokens,
        pad,
        cache,
        threshold: args.threshold,
    };
    for (file, data) in evals {
        let (mut e, _) = evaluate(model, data, args.kind, &setup)?;
        e["epoch"] = json!(epoch);
        e["file"] = json!(file.display().to_string());
        log.write(&json!({ "eval": e }))?;
        eprintln!("eval {e}");
        out.push(e);
    }
    Ok(out)
}
