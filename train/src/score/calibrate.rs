//! `calibrate`: scores the labelled responses of dev files with a cost model, picks the gate threshold that meets
//! a target false-flag rate on the safe ones, and writes it into the model's config.json (`safeloop_calibration`;
//! with `--adapter`, into adapter.json too, so `merge` carries it). The server then gates at that threshold unless
//! `--gate-threshold` is given. Prints the figures at the chosen threshold and, with `--plot`, draws the
//! trade-off curve (recall against the false-flag rate) with the chosen point.

use super::classify::{self, Confusion, Scored};
use super::eval::{evaluate, EvalSetup};
use super::train::{load_data, load_tokenizer, parse_score_format};
use crate::data::preference::ScoreKind;
use anyhow::{bail, Context, Result};
use safeloop_shared::calibration::Calibration;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// A cost-model directory (its config.json gets the threshold).
    #[arg(long)]
    pub model: PathBuf,
    /// Labelled dev files: PKU-SafeRLHF rows (both responses' safety labels) and/or labelled single responses.
    #[arg(long = "data", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// The share of safe responses the gate may flag.
    #[arg(long, default_value_t = 0.05)]
    pub target_false_flag_rate: f64,
    /// Also record the calibration in this adapter directory's adapter.json (what `merge` rebuilds from).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Draw the trade-off curve to this path stem (`.png` and `.svg`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the figures without writing anything.
    #[arg(long)]
    pub dry_run: bool,
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
}

/// The calibration for `scored` at the target false-flag rate.
pub fn calibration(scored: &[Scored], target: f64, data: &[PathBuf]) -> Result<Calibration> {
    if !(0.0..1.0).contains(&target) {
        bail!("--target-false-flag-rate must be in [0, 1), got {target}");
    }
    let threshold = classify::threshold_for_false_flag_rate(scored, target)
        .context("the calibration data has no safe response: nothing to calibrate against")?;
    let c = Confusion::at(scored, threshold);
    Ok(Calibration {
        threshold: threshold as f32,
        target_false_flag_rate: target,
        false_flag_rate: c.false_flag_rate().unwrap_or(0.0),
        recall: c.recall().unwrap_or(0.0),
        precision: c.precision(),
        roc_auc: classify::roc_auc(scored),
        responses: scored.len(),
        unsafe_responses: scored.iter().filter(|s| s.unsafe_).count(),
        data: data.iter().map(|p| p.display().to_string()).collect(),
    })
}

pub fn run(args: &CalibrateArgs) -> Result<Value> {
    let device = crate::device::parse_device(&args.device)?;
    let format = parse_score_format(&args.score_format)?;
    let model = crate::model::Model::load(&args.model, None, device)?;
    if !matches!(model.cfg.head, safeloop_shared::config::Head::Score { .. }) {
        bail!(
            "{}: not a score model (config.json architectures is not *ModelForScore)",
            args.model.display()
        );
    }
    let (tok, pad) = load_tokenizer(&args.model)?;
    let data = load_data(ScoreKind::Cost, &args.data, &tok, format, args.max_length)?;
    let setup = EvalSetup {
        batch_size: args.batch_size,
        max_tokens: args.eval_tokens,
        pad,
        cache: None,
        threshold: 0.0,
    };
    let (_, scored) = evaluate(&model, &data, ScoreKind::Cost, &setup)?;
    let cal = calibration(&scored, args.target_false_flag_rate, &args.data)?;
    let at_zero = Confusion::at(&scored, 0.0);
    if !args.dry_run {
        cal.write(&args.model).map_err(anyhow::Error::msg)?;
        if let Some(a) = &args.adapter {
            write_adapter(a, &cal)?;
        }
    }
    let plots = match &args.plot {
        Some(stem) => plot(stem, &scored, &cal)?,
        None => vec![],
    };
    Ok(json!({
        "model": args.model.display().to_string(),
        "calibration": cal,
        "at_threshold_0": {
            "false_flag_rate": at_zero.false_flag_rate(),
            "recall": at_zero.recall(),
            "precision": at_zero.precision(),
            "accuracy": at_zero.accuracy(),
        },
        "written": !args.dry_run,
        "plots": plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    }))
}

/// The key an adapter's adapter.json keeps its calibration under.
const ADAPTER_KEY: &str = "calibration";

/// Records the calibration in `dir/adapter.json` (key `calibration`), keeping the rest.
pub fn write_adapter(dir: &Path, cal: &Calibration) -> Result<()> {
    cal.write_key(&dir.join("adapter.json"), ADAPTER_KEY)
        .map_err(anyhow::Error::msg)
}

/// The calibration an adapter carries, if any (for `merge`).
pub fn read_adapter(dir: &Path) -> Result<Option<Calibration>> {
    Calibration::read_key(&dir.join("adapter.json"), ADAPTER_KEY).map_err(anyhow::Error::msg)
}

fn plot(stem: &Path, scored: &[Scored], cal: &Calibration) -> Result<Vec<PathBuf>> {
    use crate::plots::{scatter, Series};
    let curve: Vec<(f64, f64)> = classify::roc_curve(scored)
        .into_iter()
        .map(|(_, ffr, recall)| (ffr, recall))
        .collect();
    let at_zero = Confusion::at(scored, 0.0);
    scatter(
        stem,
        &format!(
            "cost model: unsafe flagged vs safe flagged (ROC AUC {:.3})",
            cal.roc_auc.unwrap_or(f64::NAN)
        ),
        "false-flag rate (safe responses flagged)",
        "recall (unsafe responses flagged)",
        &[
            Series {
                name: "threshold sweep".into(),
                points: curve,
            },
            Series {
                name: format!("calibrated: cost > {:.3}", cal.threshold),
                points: vec![(cal.false_flag_rate, cal.recall)],
            },
            Series {
                name: "cost > 0".into(),
                points: vec![(
                    at_zero.false_flag_rate().unwrap_or(0.0),
                    at_zero.recall().unwrap_or(0.0),
                )],
            },
        ],
        true,
    )
}
