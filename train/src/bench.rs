//! `bench-step`: times one PPO actor update (forward over a `[batch, seq]` batch, log-prob gather, clipped
//! surrogate loss, backward, gradient clipping, AdamW step) — the step `scripts/bench_train.sh` compares with the
//! same step in PyTorch (`scripts/bench_train_step.py`).

use crate::losses::ppo::actor_loss;
use crate::model::{Batch, HeadKind, Model};
use crate::optim::AdamW;
use anyhow::Result;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchStepArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    #[arg(long, default_value_t = 128)]
    pub seq: i64,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: &BenchStepArgs) -> Result<Value> {
    let device: Device = crate::device::parse_device(&args.device)?;
    tch::manual_seed(0);
    let model = Model::load(&args.model, Some(HeadKind::Lm), device)?;
    let mut opt = AdamW::new(model.trainable(), 0.01);
    let vocab = model.cfg.vocab_size as i64;
    let ids = Tensor::randint(vocab, [args.batch, args.seq], (Kind::Int64, device));
    let batch = Batch {
        mask: ids.ones_like(),
        ids,
    };
    let adv = Tensor::randn([args.batch, args.seq - 1], (Kind::Float, device));
    let mask = Tensor::ones([args.batch, args.seq - 1], (Kind::Float, device));
    let old = tch::no_grad(|| model.token_logprobs(&batch)) - 0.05;
    let mut times = Vec::new();
    for i in 0..args.warmup + args.iters {
        let t = Instant::now();
        opt.zero_grad();
        let lp = crate::device::autocast(device, || model.token_logprobs(&batch));
        let loss = actor_loss(&lp, &old, &adv, &mask, 0.2);
        loss.backward();
        opt.clip_grad_norm(1.0);
        opt.step(1e-5);
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    Ok(
        json!({"impl": "safeloop (tch)", "model": args.model.display().to_string(), "batch": args.batch, "seq": args.seq,
        "median_ms": median * 1e3, "tokens_per_s": (args.batch * args.seq) as f64 / median,
        "threads": tch::get_num_threads()}),
    )
}
