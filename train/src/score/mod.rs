//! Reward and cost models: batching (`batches`), the training loop (`train`) and evaluation (`eval`).

pub mod activations;
pub mod batches;
pub mod calibrate;
pub mod classify;
pub mod eval;
pub mod train;

use crate::data::preference::ScoreKind;
use anyhow::Result;
use safeloop_shared::config::{Head, ModelConfig};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalScoreArgs {
    /// A score-model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// PKU-SafeRLHF, HH-RLHF or labelled-response files (one JSON line each).
    #[arg(long = "data", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// reward or cost (default: the model's `score_type`).
    #[arg(long, value_enum)]
    pub kind: Option<ScoreKind>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    #[arg(long, default_value = "safe-rlhf")]
    pub score_format: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 8192)]
    pub eval_tokens: usize,
    /// Cost models: flagged = cost > this for precision, recall and the false-flag rate (default: the threshold
    /// `calibrate` wrote into the model's config.json, else 0).
    #[arg(long)]
    pub threshold: Option<f64>,
}

/// `eval-score`: one JSON object per data file.
pub fn eval_score(args: &EvalScoreArgs) -> Result<Vec<Value>> {
    let cfg = ModelConfig::from_hf_file(&args.model.join("config.json"))?;
    let Head::Score { score_type, .. } = &cfg.head else {
        anyhow::bail!(
            "{}: not a score model (config.json architectures is not *ModelForScore)",
            args.model.display()
        );
    };
    let kind = match (args.kind, score_type.as_deref()) {
        (Some(k), _) => k,
        (None, Some("cost")) => ScoreKind::Cost,
        (None, Some("reward")) => ScoreKind::Reward,
        (None, other) => anyhow::bail!(
            "{}: score_type is {:?}; pass --kind reward or --kind cost",
            args.model.display(),
            other
        ),
    };
    let device = crate::device::parse_device(&args.device)?;
    let format = train::parse_score_format(&args.score_format)?;
    let model = crate::model::Model::load(&args.model, None, device)?;
    let (tok, pad) = train::load_tokenizer(&args.model)?;
    let threshold = match args.threshold {
        Some(t) => t,
        None => safeloop_shared::calibration::Calibration::read(&args.model)
            .map_err(anyhow::Error::msg)?
            .map_or(0.0, |c| c.threshold as f64),
    };
    let mut out = Vec::new();
    for file in &args.data {
        let t = std::time::Instant::now();
        let data = match train::load_data(
            kind,
            std::slice::from_ref(file),
            &tok,
            format,
            args.max_length,
        ) {
            Ok(d) => d,
            // A file with nothing for this kind (e.g. PKU safety pairs for a reward model) reports zero pairs.
            Err(e) if e.to_string().starts_with("no usable") => Default::default(),
            Err(e) => return Err(e),
        };
        let setup = eval::EvalSetup {
            batch_size: args.batch_size,
            max_tokens: args.eval_tokens,
            pad,
            cache: None,
            threshold,
        };
        let (mut e, _) = eval::evaluate(&model, &data, kind, &setup)?;
        if data.n_pairs == 0 && data.n_singles == 0 {
            e["ranking_accuracy"] = Value::Null;
            e["sign_accuracy"] = Value::Null;
        }
        e["file"] = json!(file.display().to_string());
        e["model"] = json!(args.model.display().to_string());
        e["wall_s"] = json!(t.elapsed().as_secs_f64());
        out.push(e);
    }
    Ok(out)
}
