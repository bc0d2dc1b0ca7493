//! Step 1: the round's prompt pool from what the server logged. Reads the sealed segments after the committed
//! cursor, keeps this model's records, dedupes prompts, oversamples the prompts whose responses had a high cost
//! (the red-team pool) and mixes in a base prompt set at a configured ratio. Writes `pool.jsonl` (one row per pool
//! entry, with its source), `records.jsonl` (which log records were read) and the provenance.

use crate::data::logged::Response;
use crate::data::prompts;
use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safeloop_shared::trajlog::{Cursor, LogReader, TrajectoryRecord};
use safeloop_shared::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct HarvestArgs {
    /// The server's trajectory log (`safeloop-serve --log-dir`).
    #[arg(long)]
    pub log_dir: PathBuf,
    /// The served model name whose records are harvested [default: the policy's registry name].
    #[arg(long)]
    pub served_model: Option<String>,
    /// Base prompt files mixed into the pool (PKU-SafeRLHF, Alpaca/red-team, chat rows).
    #[arg(long = "base-prompts", num_args = 1..)]
    pub base_prompts: Vec<PathBuf>,
    /// Share of the pool drawn from the base prompts (0–1; all base prompts, up to --max-pool, when nothing new
    /// was served).
    #[arg(long, default_value_t = 0.5)]
    pub base_ratio: f64,
    /// A served prompt whose response cost exceeded this is a red-team prompt.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub red_team_threshold: f64,
    /// How many times a red-team prompt appears in the pool (other served prompts: once).
    #[arg(long, default_value_t = 4)]
    pub red_team_factor: usize,
    /// Pool entries at most.
    #[arg(long, default_value_t = 512)]
    pub max_pool: usize,
    /// Fewer new records of this model than this: the round is skipped (exit 0, the cursor stays).
    #[arg(long, default_value_t = 1)]
    pub min_new_records: usize,
}

/// One pool entry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PoolEntry {
    pub prompt: String,
    /// `red-team`, `served` or `base`.
    pub source: String,
    /// Highest cost among the logged responses to this prompt (served prompts).
    #[serde(default)]
    pub max_cost: Option<f64>,
}

fn write_rows<T: serde::Serialize>(path: &Path, rows: impl Iterator<Item = T>) -> Result<()> {
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for r in rows {
        serde_json::to_writer(&mut w, &r)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// Reads the log after `cursor` and writes the pool into `dir`.
pub fn run(
    args: &HarvestArgs,
    model_name: &str,
    cursor: Cursor,
    tok: &Tokenizer,
    dir: &Path,
    seed: u64,
) -> Result<Value> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.base_ratio),
        "--base-ratio must be within 0–1"
    );
    // No log directory yet: nothing has been served (the server creates it).
    let (all, cursor_to) = if args.log_dir.is_dir() {
        LogReader::new(&args.log_dir)
            .read_since(cursor, false)
            .with_context(|| format!("reading the trajectory log {}", args.log_dir.display()))?
    } else {
        (Vec::new(), cursor)
    };
    let records: Vec<TrajectoryRecord> = all
        .iter()
        .filter(|r| r.model == model_name)
        .cloned()
        .collect();
    // Every record read, decoded: what the annotation export pairs up, and the proof of what was read.
    let responses = records
        .iter()
        .map(|r| Response::decode(r, tok))
        .collect::<Result<Vec<_>>>()?;
    write_rows(&dir.join("responses.jsonl"), responses.iter())?;
    // Distinct prompts, with the highest cost among their responses.
    let mut served: BTreeMap<String, Option<f64>> = BTreeMap::new();
    for r in &responses {
        let text = r.prompt.clone();
        if text.is_empty() {
            continue;
        }
        let e = served.entry(text).or_insert(None);
        if let Some(c) = r.cost {
            *e = Some(e.map_or(c, |m: f64| m.max(c)));
        }
    }
    let mut pool: Vec<PoolEntry> = Vec::new();
    let (mut red, mut plain) = (0usize, 0usize);
    for (text, max_cost) in &served {
        let is_red = max_cost.is_some_and(|c| c > args.red_team_threshold);
        let (source, times) = if is_red {
            red += 1;
            ("red-team", args.red_team_factor.max(1))
        } else {
            plain += 1;
            ("served", 1)
        };
        for _ in 0..times {
            pool.push(PoolEntry {
                prompt: text.clone(),
                source: source.into(),
                max_cost: *max_cost,
            });
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut base_used = 0usize;
    if !args.base_prompts.is_empty() {
        let mut base: Vec<String> = Vec::new();
        for f in &args.base_prompts {
            base.extend(prompts::read(f, &[])?.into_iter().map(|p| p.text));
        }
        base.sort();
        base.dedup();
        base.retain(|b| !served.contains_key(b));
        base.shuffle(&mut rng);
        let want = if pool.is_empty() {
            args.max_pool
        } else if args.base_ratio >= 1.0 {
            args.max_pool.saturating_sub(pool.len())
        } else {
            (pool.len() as f64 * args.base_ratio / (1.0 - args.base_ratio)).round() as usize
        };
        base_used = want.min(base.len());
        pool.extend(base.into_iter().take(base_used).map(|p| PoolEntry {
            prompt: p,
            source: "base".into(),
            max_cost: None,
        }));
    }
    pool.shuffle(&mut rng);
    pool.truncate(args.max_pool);
    let count = |s: &str| pool.iter().filter(|e| e.source == s).count();
    write_rows(&dir.join("pool.jsonl"), pool.iter())?;
    let result = json!({
        "cursor_from": cursor, "cursor_to": cursor_to,
        "records_read": all.len(), "records": records.len(), "model": model_name,
        "new_records_enough": records.len() >= args.min_new_records,
        "distinct_prompts": served.len(), "red_team_prompts": red, "other_served_prompts": plain,
        "base_prompts_drawn": base_used,
        "pool": pool.len(),
        "pool_by_source": {"red-team": count("red-team"), "served": count("served"), "base": count("base")},
        "red_team_threshold": args.red_team_threshold, "red_team_factor": args.red_team_factor,
        "base_ratio": args.base_ratio,
    });
    Ok(result)
}

/// The responses written by `run`.
pub fn read_responses(dir: &Path) -> Result<Vec<Response>> {
    read_rows(&dir.join("responses.jsonl"))
}

fn read_rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not valid", path.display(), i + 1))
        })
        .collect()
}

/// The pool written by `run`, as single-turn conversations (repeats kept: that is the oversampling).
pub fn read_pool(dir: &Path) -> Result<Vec<Vec<ChatMessage>>> {
    let pool: Vec<PoolEntry> = read_rows(&dir.join("pool.jsonl"))?;
    Ok(pool
        .iter()
        .map(|e| vec![ChatMessage::new("user", &e.prompt)])
        .collect())
}
