//! safeloop-train: the trainer's command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use safeloop_shared::config::Head;
use safeloop_shared::registry::ModelKind;
use safeloop_shared::{load_causal_lm, load_score_model, LoadOptions, ModelConfig};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "safeloop-train",
    version,
    about = "Safe RLHF training jobs (safeloop)",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a model (HF directory or .gguf) and print its configuration as JSON.
    Inspect {
        #[arg(long)]
        model: PathBuf,
    },
    /// Convert a GGUF policy (default: the SmolLM2 Q4_1 from scripts/setup.sh) into an HF directory for training.
    Convert {
        /// The .gguf file.
        #[arg(long, default_value_os_t = safeloop_shared::assets::default_model_path())]
        gguf: PathBuf,
        /// Output directory (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Stored dtype: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Train a reward or cost model on preference data (PKU-SafeRLHF, HH-RLHF, labelled responses).
    TrainScore(Box<safeloop_train::score::train::TrainScoreArgs>),
    /// Evaluate a reward or cost model: one JSON line per file with pairs, ranking_accuracy, sign_accuracy.
    EvalScore(safeloop_train::score::EvalScoreArgs),
    /// Pick a cost model's gate threshold for a target false-flag rate on labelled dev data and write it into the
    /// model's config.json (the server gates at it unless --gate-threshold is given).
    Calibrate(safeloop_train::score::calibrate::CalibrateArgs),
    /// Supervised fine-tuning on prompt/response, chat or Alpaca rows (assistant tokens only are targets).
    Sft(Box<safeloop_train::sft::SftArgs>),
    /// Validate / import preference data; export logged trajectories as pairs for annotation.
    #[command(subcommand)]
    Data(safeloop_train::data_cmd::DataCommand),
    /// PPO-Lagrangian (Safe RLHF): maximise reward subject to E[cost] ≤ threshold, λ learned in log space.
    PpoLag(Box<safeloop_train::ppo::PpoArgs>),
    /// PPO on the reward only, or with a fixed cost penalty (--reward-shaping ν: reward − ν·cost).
    Ppo {
        #[command(flatten)]
        args: Box<safeloop_train::ppo::PpoArgs>,
        #[arg(long)]
        reward_shaping: Option<f64>,
    },
    /// Reward shaping over a list of ν and PPO-Lag on the same prompts and seeds; one (reward, cost) figure.
    Sweep(Box<safeloop_train::ppo::sweep::SweepArgs>),
    /// Time one PPO actor update (forward, loss, backward, AdamW) — compared with PyTorch by scripts/bench_train.sh.
    BenchStep(safeloop_train::bench::BenchStepArgs),
    /// DPO on helpfulness pairs against a frozen reference (the spec's DPO baseline).
    Dpo(Box<safeloop_train::dpo::DpoArgs>),
    /// Evaluate a policy with the cost (and reward) model: harmful ratio, means, arena against a second policy, plots.
    Eval(Box<safeloop_train::evaluate::EvalArgs>),
    /// One scheduled Safe RLHF round: harvest the served logs, annotate, PPO-Lag from the champion, evaluate,
    /// promotion gate, publish. Exit 0 promoted (or nothing to do), 3 rejected by the gate, 1 error.
    Round(Box<safeloop_train::round::RoundArgs>),
    /// Plot CSV columns as lines (PNG and SVG), e.g. the RSS curve of scripts/soak.sh.
    Plot(safeloop_train::plots::PlotArgs),
    /// The model registry: list, show, publish, promote, rollback, gc.
    #[command(subcommand)]
    Registry(safeloop_train::registry_cmd::RegistryCommand),
    /// Rebuild a model from a base directory and an adapter written by --adapter-out.
    Merge {
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

fn describe(cfg: &ModelConfig, path: &std::path::Path, eos: &[u32]) -> Result<serde_json::Value> {
    let (kind, score_dim, score_type, pooling) = match &cfg.head {
        Head::CausalLm => ("causal_lm", None, None, None),
        Head::Score {
            score_dim,
            score_type,
            pooling,
            ..
        } => (
            "score",
            Some(*score_dim),
            score_type.clone(),
            Some(*pooling),
        ),
    };
    // A score model's gate threshold (`safeloop-train calibrate`), if it has one.
    let calibration = if path.is_dir() && score_dim.is_some() {
        safeloop_shared::calibration::Calibration::read(path).map_err(anyhow::Error::msg)?
    } else {
        None
    };
    Ok(serde_json::json!({
        "path": path.display().to_string(),
        "family": cfg.family.name(),
        "kind": kind,
        "score_dim": score_dim,
        "score_type": score_type,
        "score_pooling": pooling,
        "calibration": calibration,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "context": cfg.max_position_embeddings,
        "tied_embeddings": cfg.tie_word_embeddings,
        "eos_token_ids": eos,
    }))
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Inspect { model } => {
            let opts = LoadOptions::default();
            let is_score = model.is_dir()
                && matches!(
                    ModelConfig::from_hf_file(&model.join("config.json"))?.head,
                    Head::Score { .. }
                );
            let (cfg, eos) = if is_score {
                let m = load_score_model(&model, &opts)?;
                (m.config, m.tokenizer.eos_token_ids().to_vec())
            } else {
                let m = load_causal_lm(&model, &opts)?;
                (m.config, m.tokenizer.eos_token_ids().to_vec())
            };
            println!("{}", describe(&cfg, &model, &eos)?);
        }
        Command::Convert { gguf, out, dtype } => {
            let kind = safeloop_train::device::parse_kind(&dtype)?;
            let t = std::time::Instant::now();
            let cfg = safeloop_train::convert::gguf_to_hf(&gguf, &out, kind)?;
            println!("{}", describe(&cfg, &out, &cfg.eos_token_ids)?);
            eprintln!(
                "converted {} → {} in {:.1}s",
                gguf.display(),
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Command::TrainScore(args) => {
            let mut summary = safeloop_train::score::train::run(&args)?;
            let kind = match args.kind {
                safeloop_train::data::preference::ScoreKind::Reward => ModelKind::Reward,
                safeloop_train::data::preference::ScoreKind::Cost => ModelKind::Cost,
            };
            args.publish
                .apply(&args.out.join("model"), kind, &mut summary)?;
            println!("{summary}");
        }
        Command::EvalScore(args) => {
            for line in safeloop_train::score::eval_score(&args)? {
                println!("{line}");
            }
        }
        Command::Calibrate(args) => {
            println!("{}", safeloop_train::score::calibrate::run(&args)?);
        }
        Command::Sft(args) => {
            let mut summary = safeloop_train::sft::run(&args)?;
            args.publish
                .apply(&args.out.join("model"), ModelKind::Policy, &mut summary)?;
            println!("{summary}");
        }
        Command::Data(cmd) => {
            for line in safeloop_train::data_cmd::run(&cmd)? {
                println!("{line}");
            }
        }
        Command::PpoLag(args) => {
            let mut r = safeloop_train::ppo::run(&args, safeloop_train::ppo::Objective::PpoLag)?;
            args.publish
                .apply(&r.policy, ModelKind::Policy, &mut r.summary)?;
            println!("{}", r.summary);
        }
        Command::Ppo {
            args,
            reward_shaping,
        } => {
            let objective = match reward_shaping {
                Some(nu) => safeloop_train::ppo::Objective::RewardShaping(nu),
                None => safeloop_train::ppo::Objective::Ppo,
            };
            let mut r = safeloop_train::ppo::run(&args, objective)?;
            args.publish
                .apply(&r.policy, ModelKind::Policy, &mut r.summary)?;
            println!("{}", r.summary);
        }
        Command::Sweep(args) => {
            if args.ppo.publish.publish.is_some() {
                anyhow::bail!(
                    "--publish: a sweep trains one policy per setting; publish the one you pick with `safeloop-train registry publish`"
                );
            }
            let summary = safeloop_train::ppo::sweep::sweep(&args)?;
            println!("{summary}");
        }
        Command::BenchStep(args) => {
            println!("{}", safeloop_train::bench::run(&args)?);
        }
        Command::Dpo(args) => {
            let mut summary = safeloop_train::dpo::run(&args)?;
            args.publish
                .apply(&args.out.join("model"), ModelKind::Policy, &mut summary)?;
            println!("{summary}");
        }
        Command::Eval(args) => {
            let summary = safeloop_train::evaluate::run(&args)?;
            println!("{summary}");
        }
        Command::Round(args) if args.check => {
            let report = safeloop_train::round::check(&args);
            println!("{report}");
            return Ok(if report["ok"] == true { 0 } else { 1 });
        }
        Command::Round(args) => {
            let (outcome, summary) = safeloop_train::round::run(&args)?;
            println!("{summary}");
            return Ok(outcome.exit_code());
        }
        Command::Plot(args) => {
            println!("{}", safeloop_train::plots::plot_csv(&args)?);
        }
        Command::Registry(cmd) => {
            for line in safeloop_train::registry_cmd::run(&cmd)? {
                println!("{line}");
            }
        }
        Command::Merge {
            base,
            adapter,
            out,
            dtype,
        } => {
            let kind = safeloop_train::device::parse_kind(&dtype)?;
            let model = safeloop_train::model::load_adapter(&base, &adapter, tch::Device::Cpu)?;
            let score_type = match &model.cfg.head {
                Head::Score { score_type, .. } => score_type.clone(),
                Head::CausalLm => None,
            };
            safeloop_train::model::save_hf_dir(
                &model,
                &out,
                &safeloop_train::model::SaveOptions {
                    kind,
                    score_type,
                    ..Default::default()
                },
            )?;
            safeloop_train::model::copy_tokenizer_files(&base, &out)?;
            if let Some(cal) = safeloop_train::score::calibrate::read_adapter(&adapter)? {
                cal.write(&out).map_err(anyhow::Error::msg)?;
            }
            println!("{}", describe(&model.cfg, &out, &model.cfg.eos_token_ids)?);
        }
    }
    Ok(0)
}

fn main() {
    safeloop_train::device::init_threads();
    let args = match safeloop_train::config_file::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    match run(Cli::parse_from(args)) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
