//! safeloop-train: the trainer. This stage ships `inspect`, which loads a policy or score
//! model through the shared loader and prints what the trainer will see; training commands
//! (sft, train-score, ppo-lag, round) build on it.

use anyhow::Result;
use clap::{Parser, Subcommand};
use safeloop_shared::config::Head;
use safeloop_shared::{load_causal_lm, load_score_model, LoadOptions, ModelConfig};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "safeloop-train",
    version,
    about = "Safe RLHF training jobs (safeloop)"
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
}

fn describe(cfg: &ModelConfig, path: &std::path::Path, eos: &[u32]) -> serde_json::Value {
    let (kind, score_dim) = match &cfg.head {
        Head::CausalLm => ("causal_lm", None),
        Head::Score { score_dim, .. } => ("score", Some(*score_dim)),
    };
    serde_json::json!({
        "path": path.display().to_string(),
        "family": cfg.family.name(),
        "kind": kind,
        "score_dim": score_dim,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "context": cfg.max_position_embeddings,
        "tied_embeddings": cfg.tie_word_embeddings,
        "eos_token_ids": eos,
    })
}

fn run(cli: Cli) -> Result<()> {
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
            println!("{}", describe(&cfg, &model, &eos));
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
