//! `data`: validate and import PKU-SafeRLHF / HH-RLHF files, and export logged trajectories as pairs for
//! decoupled annotation (PKU schema, labels left empty for the annotators).

use crate::data::{detect_format, hh, labelled, logged, pku, read_jsonl_values, Format};
use anyhow::{bail, Context, Result};
use safeloop_shared::trajlog::LogReader;
use safeloop_shared::Tokenizer;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// Check files and print one JSON line each: format, rows, usable reward and cost pairs, what would be dropped.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate a file and write it in canonical form (PKU: the 7 core fields, conflicting rows dropped;
    /// HH: `chosen`/`rejected` transcripts).
    Import {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export logged trajectories as response pairs per prompt (PKU schema with empty labels), for annotation.
    ExportPairs {
        /// The trajectory log directory (`safeloop-serve --log-dir`).
        #[arg(long)]
        log_dir: PathBuf,
        /// The served policy (its tokenizer decodes the logged ids).
        #[arg(long, default_value_os_t = safeloop_shared::assets::default_model_path())]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Pairs per prompt at most (all k(k−1)/2 by default).
        #[arg(long, default_value_t = usize::MAX)]
        max_pairs_per_prompt: usize,
        /// Include segments still being written.
        #[arg(long)]
        include_open: bool,
    },
}

pub fn run(cmd: &DataCommand) -> Result<Vec<Value>> {
    match cmd {
        DataCommand::Validate { files } => files.iter().map(|f| validate(f)).collect(),
        DataCommand::Import { input, out } => Ok(vec![import(input, out)?]),
        DataCommand::ExportPairs {
            log_dir,
            model,
            out,
            max_pairs_per_prompt,
            include_open,
        } => Ok(vec![export_pairs(
            log_dir,
            model,
            out,
            *max_pairs_per_prompt,
            *include_open,
        )?]),
    }
}

fn first_row(path: &Path) -> Result<Value> {
    read_jsonl_values(path)?
        .into_iter()
        .next()
        .with_context(|| format!("{}: empty file", path.display()))
}

fn validate(path: &Path) -> Result<Value> {
    let format = detect_format(path, &first_row(path)?)?;
    Ok(match format {
        Format::PkuSafeRlhf => {
            let rows = pku::read(path)?;
            let reward = rows
                .iter()
                .filter(|r| r.better_response_id.is_some() && r.response_0 != r.response_1)
                .count();
            let labelled = |r: &&pku::PkuRow| {
                r.safer_response_id.is_some()
                    && r.is_response_0_safe.is_some()
                    && r.is_response_1_safe.is_some()
            };
            let conflicting = rows.iter().filter(|r| r.conflicting_safety()).count();
            let cost = rows
                .iter()
                .filter(labelled)
                .filter(|r| !r.conflicting_safety() && r.response_0 != r.response_1)
                .count();
            let responses: Vec<bool> = rows
                .iter()
                .flat_map(|r| [r.is_response_0_safe, r.is_response_1_safe])
                .flatten()
                .collect();
            json!({"file": path.display().to_string(), "format": format, "rows": rows.len(), "reward_pairs": reward,
                "cost_pairs": cost, "conflicting_safety_labels": conflicting,
                "safe_response_ratio": responses.iter().filter(|&&s| s).count() as f64 / responses.len().max(1) as f64})
        }
        Format::HhRlhf => {
            let rows = hh::read(path)?;
            let identical = rows.iter().filter(|r| r.chosen == r.rejected).count();
            json!({"file": path.display().to_string(), "format": format, "rows": rows.len(), "reward_pairs": rows.len() - identical,
                "cost_pairs": 0, "identical_pairs": identical})
        }
        Format::Labelled => {
            let rows = labelled::read(path)?;
            let safe = rows.iter().filter(|r| r.is_safe).count();
            json!({"file": path.display().to_string(), "format": format, "rows": rows.len(), "reward_pairs": 0, "cost_pairs": 0,
                "labelled_responses": rows.len(), "safe_response_ratio": safe as f64 / rows.len().max(1) as f64})
        }
    })
}

fn write_jsonl(out: &Path, rows: impl Iterator<Item = Value>) -> Result<usize> {
    let tmp = out.with_extension("partial");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut n = 0;
    for r in rows {
        serde_json::to_writer(&mut w, &r)?;
        w.write_all(b"\n")?;
        n += 1;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(n)
}

fn import(input: &Path, out: &Path) -> Result<Value> {
    let format = detect_format(input, &first_row(input)?)?;
    let (written, dropped) = match format {
        Format::PkuSafeRlhf => {
            let rows = pku::read(input)?;
            let total = rows.len();
            let kept: Vec<_> = rows
                .into_iter()
                .filter(|r| !r.conflicting_safety())
                .collect();
            let dropped = total - kept.len();
            (
                write_jsonl(
                    out,
                    kept.into_iter()
                        .map(|r| serde_json::to_value(r).expect("serialisable")),
                )?,
                dropped,
            )
        }
        Format::HhRlhf => {
            // Parse to validate, then keep the transcripts as they are.
            hh::read(input)?;
            let rows = read_jsonl_values(input)?;
            (
                write_jsonl(
                    out,
                    rows.into_iter()
                        .map(|v| json!({"chosen": v["chosen"], "rejected": v["rejected"]})),
                )?,
                0,
            )
        }
        Format::Labelled => bail!(
            "{}: labelled single responses need no import; train-score reads them as they are",
            input.display()
        ),
    };
    Ok(
        json!({"in": input.display().to_string(), "out": out.display().to_string(), "format": format, "rows": written, "dropped_conflicting": dropped}),
    )
}

fn export_pairs(
    log_dir: &Path,
    model: &Path,
    out: &Path,
    max_pairs: usize,
    include_open: bool,
) -> Result<Value> {
    let loaded = safeloop_shared::load_causal_lm(model, &Default::default())
        .with_context(|| format!("loading tokenizer of {}", model.display()))?;
    let tok: Tokenizer = loaded.tokenizer;
    let records = LogReader::new(log_dir)
        .read_all(include_open)
        .with_context(|| format!("reading {}", log_dir.display()))?;
    let responses = records
        .iter()
        .map(|r| logged::Response::decode(r, &tok))
        .collect::<Result<Vec<_>>>()?;
    let (prompts, rows) = logged::pair_rows(&responses, max_pairs);
    let written = write_jsonl(out, rows.into_iter())?;
    Ok(
        json!({"records": records.len(), "prompts": prompts, "pairs": written, "out": out.display().to_string()}),
    )
}
