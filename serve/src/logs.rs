//! `safeloop-serve logs`: prints trajectory records as JSON lines.

use anyhow::{Context, Result};
use clap::Args;
use safeloop_shared::trajlog::{Cursor, LogReader};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The server's --log-dir
    #[arg(long, env = "SAFELOOP_LOG_DIR")]
    pub log_dir: PathBuf,
    /// Only sealed segments (skip the one being written)
    #[arg(long)]
    pub sealed_only: bool,
    /// Resume from (and then advance) the cursor stored in this file
    #[arg(long)]
    pub cursor: Option<PathBuf>,
}

pub fn run(a: LogsArgs) -> Result<()> {
    if !a.log_dir.is_dir() {
        anyhow::bail!("--log-dir {}: no such directory", a.log_dir.display());
    }
    let reader = LogReader::new(&a.log_dir);
    let start = match &a.cursor {
        Some(p) => {
            LogReader::load_cursor(p).with_context(|| format!("reading cursor {}", p.display()))?
        }
        None => Cursor::default(),
    };
    let (records, next) = reader
        .read_since(start, !a.sealed_only)
        .with_context(|| format!("reading {}", a.log_dir.display()))?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    for r in &records {
        serde_json::to_writer(&mut w, r)?;
        writeln!(w)?;
    }
    if let Some(p) = &a.cursor {
        LogReader::save_cursor(p, next)
            .with_context(|| format!("writing cursor {}", p.display()))?;
    }
    Ok(())
}
