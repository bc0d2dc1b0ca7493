//! `safeloop-serve generate`: run the batched engine from the command line.

use anyhow::{Context, Result};
use clap::Args;
use safeloop_shared::engine::{Engine, EngineConfig, SamplingParams};
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HF model directory or .gguf file (default: the pinned SmolLM2-135M-Instruct).
    #[arg(long, env = "SAFELOOP_MODEL")]
    pub model: Option<PathBuf>,
    /// Prompt(s); several run as one batch. Without any, prompts are read from stdin, one per line.
    #[arg(long, short)]
    pub prompt: Vec<String>,
    /// System message (chat mode only; default: whatever the chat template supplies).
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as raw text instead of through the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print the token ids and log-probs of each completion as JSON after the text.
    #[arg(long)]
    pub json: bool,
    /// Keep special tokens in the printed text.
    #[arg(long)]
    pub keep_special: bool,
    /// Ignore end-of-sequence tokens (generate exactly --max-tokens).
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (path, sha) = match &args.model {
        Some(p) => (p.clone(), None),
        None => (
            safeloop_shared::assets::default_model_path(),
            Some(safeloop_shared::assets::DEFAULT_MODEL_SHA256.to_string()),
        ),
    };
    let opts = LoadOptions {
        sha256: sha,
        ..Default::default()
    };
    let default = args.model.is_none();
    let loaded = load_causal_lm(&path, &opts).with_context(|| {
        if default {
            "loading the default model (scripts/setup.sh fetches it)".to_string()
        } else {
            format!("loading {}", path.display())
        }
    })?;
    tracing::info!(model = %path.display(), "loaded");
    let tok = Arc::new(loaded.tokenizer);
    let mut engine = Engine::new(loaded.model, tok.clone(), EngineConfig::default());
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: Some(args.max_tokens),
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        logprobs: args.json,
        skip_special_tokens: !args.keep_special,
        ..Default::default()
    };
    params.validate()?;
    let encode = |text: &str| -> Result<Vec<u32>> {
        if args.raw {
            return Ok(tok.encode(text, true)?);
        }
        let mut msgs = vec![];
        if let Some(s) = &args.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", text));
        Ok(tok.encode_chat(&msgs, true)?)
    };
    let stdout = std::io::stdout();
    if !args.prompt.is_empty() {
        let reqs = args
            .prompt
            .iter()
            .map(|p| Ok((encode(p)?, params.clone())))
            .collect::<Result<Vec<_>>>()?;
        let out = engine.generate(reqs)?;
        let mut w = stdout.lock();
        for c in out {
            writeln!(w, "{}", c.text)?;
            if args.json {
                let lp: Vec<f32> = c.tokens.iter().map(|t| t.logprob).collect();
                writeln!(
                    w,
                    "{}",
                    serde_json::json!({"token_ids": c.token_ids(), "logprobs": lp,
                        "finish_reason": c.finish_reason.as_str()})
                )?;
            }
        }
        return Ok(());
    }
    // Interactive: stream each answer as it is generated.
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let id = engine.add_request(encode(&line)?, params.clone())?;
        let mut w = stdout.lock();
        while engine.has_work() {
            for u in engine.step()? {
                if u.id == id {
                    write!(w, "{}", u.text)?;
                    w.flush()?;
                }
            }
        }
        writeln!(w)?;
    }
    Ok(())
}
