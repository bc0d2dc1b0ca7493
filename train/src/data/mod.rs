//! Datasets, read from JSONL with errors that name the file, line and field: PKU-SafeRLHF rows (`pku`), HH-RLHF
//! pairs (`hh`), single responses with a safety label (`labelled`), SFT rows (`sft`) and RL/eval prompts
//! (`prompts`). `preference` turns them into the examples the reward and cost models train on.

pub mod hh;
pub mod labelled;
pub mod logged;
pub mod pku;
pub mod preference;
pub mod prompts;
pub mod sft;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// Reads every non-blank line of a JSONL file as a JSON object.
pub fn read_jsonl_values(path: &Path) -> Result<Vec<Value>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        if !v.is_object() {
            bail!(
                "{}:{}: expected a JSON object per line",
                path.display(),
                i + 1
            );
        }
        out.push(v);
    }
    Ok(out)
}

/// Deserialises one row, naming the file, line and field on error.
pub fn parse_row<T: DeserializeOwned>(path: &Path, line: usize, v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        anyhow::anyhow!(
            "{}:{}: field `{}`: {}",
            path.display(),
            line,
            field,
            e.inner()
        )
    })
}

/// What a file holds, recognised from the keys of its first row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `prompt, response_0, response_1, is_response_{0,1}_safe, better_response_id, safer_response_id`.
    PkuSafeRlhf,
    /// `chosen, rejected` (full transcripts).
    HhRlhf,
    /// `prompt, response, is_safe`.
    Labelled,
}

pub fn detect_format(path: &Path, first: &Value) -> Result<Format> {
    let has = |k: &str| first.get(k).is_some();
    Ok(if has("response_0") && has("response_1") {
        Format::PkuSafeRlhf
    } else if has("chosen") && has("rejected") {
        Format::HhRlhf
    } else if has("response") && has("is_safe") {
        Format::Labelled
    } else {
        bail!(
            "{}: unrecognised rows (expected PKU-SafeRLHF `response_0`/`response_1`, HH-RLHF `chosen`/`rejected`, or `response` + `is_safe`)",
            path.display()
        )
    })
}
