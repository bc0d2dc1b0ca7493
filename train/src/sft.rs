//! `sft`: supervised fine-tuning on prompt/response, chat-message or Alpaca rows. Each conversation is rendered
//! with the model's own chat template (default) or the safe-rlhf template; only assistant tokens are targets
//! (every user/system segment is masked, spec §1.5). Same training machinery as `train-score`: AdamW, cosine
//! schedule with warmup, freezing / LoRA, resumable checkpoints, JSONL metrics; the output is an HF directory.

use crate::data::sft as sft_data;
use crate::losses::sft::causal_lm_loss;
use crate::metrics::progress;
use crate::model::{
    copy_tokenizer_files, gather_logprobs, load_adapter, save_hf_dir, Batch, HeadKind, Model,
    SaveOptions,
};
use crate::optim::AdamW;
use crate::rollout::PromptFormat;
use crate::run_args::RunArgs;
use crate::trainable::TrainableArgs;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safeloop_shared::scoring::safe_rlhf_text;
use safeloop_shared::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SftArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub publish: crate::registry_cmd::PublishArgs,
    /// The policy to fine-tune (HF directory; `convert` makes one from a GGUF).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long = "data", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Prompt rendering: the model's chat template (default) or the safe-rlhf template.
    #[arg(long, value_enum, default_value_t = PromptFormat::ChatTemplate)]
    pub prompt_format: PromptFormat,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub trainable: TrainableArgs,
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    #[arg(long)]
    pub resume: bool,
}

/// A tokenised conversation: ids and, per position, whether the token is a target.
#[derive(Debug, Clone)]
pub struct SftExample {
    pub ids: Vec<i64>,
    pub target: Vec<bool>,
}

fn render(
    tok: &Tokenizer,
    format: PromptFormat,
    msgs: &[ChatMessage],
    gen_prompt: bool,
) -> Result<Vec<u32>> {
    Ok(match format {
        PromptFormat::ChatTemplate => tok.encode_chat(msgs, gen_prompt)?,
        PromptFormat::SafeRlhf => {
            let eos = tok.eos_token().unwrap_or("");
            tok.encode(&safe_rlhf_text(msgs, None, eos), true)?
        }
    })
}

/// Ids and target mask of a conversation: for each assistant turn, the tokens between the rendering of the
/// conversation up to it (with the generation prompt) and the rendering including it are targets.
pub fn tokenize(
    tok: &Tokenizer,
    format: PromptFormat,
    conv: &[ChatMessage],
    max_len: usize,
) -> Result<SftExample> {
    let full = render(tok, format, conv, false)?;
    let mut target = vec![false; full.len()];
    for (i, m) in conv.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let start = render(tok, format, &conv[..i], true)?.len();
        let end = render(tok, format, &conv[..=i], false)?.len();
        for t in target.iter_mut().take(end.min(full.len())).skip(start) {
            *t = true;
        }
    }
    let mut ids: Vec<i64> = full.into_iter().map(i64::from).collect();
    ids.truncate(max_len);
    target.truncate(max_len);
    Ok(SftExample { ids, target })
}

/// Collates examples into a right-padded batch and the `[B, L−1]` target mask of next-token positions.
pub fn collate(examples: &[&SftExample], pad: i64, device: tch::Device) -> (Batch, Tensor) {
    let rows: Vec<Vec<i64>> = examples.iter().map(|e| e.ids.clone()).collect();
    let batch = Batch::pad(&rows, pad, false, device);
    let l = batch.ids.size()[1];
    let mut t = Vec::with_capacity(examples.len() * (l as usize - 1).max(1));
    for e in examples {
        for k in 1..l as usize {
            t.push(e.target.get(k).copied().unwrap_or(false) as i64);
        }
    }
    let targets = Tensor::from_slice(&t)
        .view([examples.len() as i64, l - 1])
        .to(device);
    (batch, targets)
}

pub fn run(args: &SftArgs) -> Result<Value> {
    let started = Instant::now();
    let device = args.run.device()?;
    let save_kind = args.run.save_kind()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    tch::manual_seed(args.run.seed as i64);
    let (tok, pad) = crate::score::train::load_tokenizer(&args.model)?;
    if args.prompt_format == PromptFormat::ChatTemplate && tok.chat_template().is_none() {
        bail!(
            "{}: the model has no chat template; use --prompt-format safe-rlhf",
            args.model.display()
        );
    }
    let mut examples = Vec::new();
    for f in &args.data {
        for conv in sft_data::read(f)? {
            let e = tokenize(&tok, args.prompt_format, &conv, args.max_length)
                .with_context(|| format!("tokenising {}", f.display()))?;
            if e.target.iter().any(|&t| t) {
                examples.push(e);
            }
        }
    }
    if examples.is_empty() {
        bail!("no SFT examples with target tokens in {:?}", args.data);
    }
    let ckpt = args.out.join("checkpoint");
    let resuming = args.resume && ckpt.join("state.json").is_file();
    let mut model = if resuming {
        load_adapter(&args.model, &ckpt, device)?
    } else {
        Model::load(&args.model, Some(HeadKind::Lm), device)?
    };
    args.trainable.apply(&mut model, false);
    let mut opt = AdamW::new(model.trainable(), args.weight_decay);
    let steps_per_epoch = examples.len().div_ceil(args.batch_size) as u64;
    let sched = args
        .run
        .schedule(args.lr, steps_per_epoch * args.epochs as u64);
    let mut global_step = 0u64;
    if resuming {
        global_step = crate::checkpoint::resume(&ckpt, &mut opt)?;
    }
    let mut log = args.run.metrics_log(&args.out)?;
    let save_ckpt = |model: &Model, opt: &AdamW, step: u64| -> Result<()> {
        crate::checkpoint::save(&ckpt, model, opt, step, args, json!({}))
    };
    let mut last_loss = f64::NAN;
    'epochs: for epoch in 0..args.epochs {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            args.run.seed + epoch as u64,
        ));
        let pb = progress(
            steps_per_epoch,
            &format!("sft epoch {}/{}", epoch + 1, args.epochs),
        );
        for (k, chunk) in order.chunks(args.batch_size).enumerate() {
            let step = epoch as u64 * steps_per_epoch + k as u64;
            if step < global_step {
                pb.inc(1);
                continue;
            }
            if args.run.step_cap_reached(global_step) {
                break 'epochs;
            }
            let t = Instant::now();
            let batch: Vec<&SftExample> = chunk.iter().map(|&i| &examples[i]).collect();
            let (b, targets) = collate(&batch, pad, device);
            opt.zero_grad();
            let logits = crate::device::autocast(device, || model.forward(&b));
            let loss = causal_lm_loss(&gather_logprobs(&logits, &b.ids), &targets);
            loss.backward();
            let grad_norm = opt.clip_grad_norm(args.run.max_grad_norm);
            let lr = sched.at(global_step);
            opt.step(lr);
            global_step += 1;
            last_loss = loss.double_value(&[]);
            log.write(&json!({"step": global_step, "epoch": epoch + 1, "loss": last_loss, "lr": lr, "grad_norm": grad_norm,
                "target_tokens": targets.sum(tch::Kind::Int64).int64_value(&[]), "step_s": t.elapsed().as_secs_f64()}))?;
            pb.set_message(format!("loss {last_loss:.4}"));
            pb.inc(1);
            if args.save_every > 0 && global_step.is_multiple_of(args.save_every) {
                save_ckpt(&model, &opt, global_step)?;
            }
        }
        pb.finish_and_clear();
        save_ckpt(&model, &opt, global_step)?;
    }
    save_ckpt(&model, &opt, global_step)?;
    save_hf_dir(
        &model,
        &args.out.join("model"),
        &SaveOptions {
            kind: save_kind,
            ..Default::default()
        },
    )?;
    copy_tokenizer_files(&args.model, &args.out.join("model"))?;
    Ok(
        json!({"out": args.out.join("model").display().to_string(), "examples": examples.len(), "steps": global_step,
        "final_loss": last_loss, "wall_s": started.elapsed().as_secs_f64()}),
    )
}
