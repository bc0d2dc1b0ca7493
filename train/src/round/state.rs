//! The round's folder on disk. `STATE/` holds what rounds hand to each other — the committed trajectory-log cursor,
//! the annotation files already consumed, one line per finished round (`rounds.jsonl`) — and `rounds/<id>/`, one
//! folder per round with `round.json` (its status and each finished step's result) and the steps' outputs. A step
//! is recorded only after it finished, so a round killed at any point resumes at the first unrecorded step; the
//! cursor moves only when the round commits.

use anyhow::{bail, Context, Result};
use safeloop_shared::trajlog::{Cursor, LogReader};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The steps of a round, in order.
pub const STEPS: [&str; 6] = [
    "harvest", "annotate", "optimise", "evaluate", "gate", "publish",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Promoted,
    Rejected,
    Skipped,
    Abandoned,
}

impl Status {
    /// The name it is written with (`rounds.jsonl`, summaries, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Promoted => "promoted",
            Status::Rejected => "rejected",
            Status::Skipped => "skipped",
            Status::Abandoned => "abandoned",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundRecord {
    pub id: String,
    pub status: Status,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Each finished step's result, by step name.
    #[serde(default)]
    pub steps: BTreeMap<String, Value>,
}

pub struct StateDir {
    pub root: PathBuf,
}

/// One round's folder.
pub struct Round {
    pub dir: PathBuf,
    pub record: RoundRecord,
}

fn write_json_atomically(path: &Path, v: &impl Serialize) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl StateDir {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("rounds"))
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn current_file(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The round that started and neither committed nor was abandoned.
    pub fn unfinished(&self) -> Result<Option<Round>> {
        match std::fs::read_to_string(self.current_file()) {
            Ok(id) => Ok(Some(self.load(id.trim())?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.current_file().display())),
        }
    }

    pub fn load(&self, id: &str) -> Result<Round> {
        let dir = self.root.join("rounds").join(id);
        let file = dir.join("round.json");
        let record: RoundRecord = serde_json::from_str(
            &std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?,
        )
        .with_context(|| format!("{}: not a round record", file.display()))?;
        Ok(Round { dir, record })
    }

    /// Starts the next round (`round-0001`, `round-0002`, …) and marks it current.
    pub fn begin(&self) -> Result<Round> {
        let n = std::fs::read_dir(self.root.join("rounds"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("round-")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        let id = format!("round-{:04}", n + 1);
        let dir = self.root.join("rounds").join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let round = Round {
            dir,
            record: RoundRecord {
                id: id.clone(),
                status: Status::Running,
                started_ms: safeloop_shared::registry::now_ms(),
                finished_ms: None,
                steps: BTreeMap::new(),
            },
        };
        round.save()?;
        let tmp = self.root.join("current.tmp");
        std::fs::write(&tmp, &id).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.current_file())?;
        Ok(round)
    }

    /// The committed log cursor (the start of the log before the first round).
    pub fn cursor(&self) -> Result<Cursor> {
        let p = self.root.join("cursor.json");
        LogReader::load_cursor(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// Annotation files (by sha256) already consumed by a round.
    pub fn consumed_annotations(&self) -> Result<BTreeMap<String, String>> {
        let p = self.root.join("annotations.json");
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                serde_json::from_str(&s).with_context(|| format!("{}: not valid", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Ends `round` with `status`: for a committed round (promoted, rejected, skipped), first advances the cursor
    /// and records the consumed annotations; then writes the round's record, appends it to `rounds.jsonl` and
    /// clears `current`. An abandoned round leaves the cursor where it was.
    pub fn finish(
        &self,
        round: &mut Round,
        status: Status,
        cursor: Option<Cursor>,
        consumed: &BTreeMap<String, String>,
        summary: &Value,
    ) -> Result<()> {
        if status == Status::Running {
            bail!("a round cannot finish as running");
        }
        if status != Status::Abandoned {
            if let Some(c) = cursor {
                LogReader::save_cursor(&self.root.join("cursor.json"), c)?;
            }
            let mut all = self.consumed_annotations()?;
            all.extend(consumed.iter().map(|(k, v)| (k.clone(), v.clone())));
            write_json_atomically(&self.root.join("annotations.json"), &all)?;
        }
        round.record.status = status;
        round.record.finished_ms = Some(safeloop_shared::registry::now_ms());
        round.save()?;
        crate::metrics::MetricsLog::open(&self.root.join("rounds.jsonl"))?.write(summary)?;
        match std::fs::remove_file(self.current_file()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Round {
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// N of `round-000N`.
    pub fn number(&self) -> u64 {
        self.id().trim_start_matches("round-").parse().unwrap_or(0)
    }

    pub fn step(&self, name: &str) -> Option<&Value> {
        self.record.steps.get(name)
    }

    /// Records a finished step (atomically, before the next one starts).
    pub fn record_step(&mut self, name: &str, result: Value) -> Result<()> {
        self.record.steps.insert(name.to_string(), result);
        self.save()
    }

    pub fn save(&self) -> Result<()> {
        write_json_atomically(&self.dir.join("round.json"), &self.record)
    }

    /// `rounds/<id>/<step>/`, created.
    pub fn step_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn status_names_are_the_serialised_ones() {
        for s in [
            Status::Running,
            Status::Promoted,
            Status::Rejected,
            Status::Skipped,
            Status::Abandoned,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
