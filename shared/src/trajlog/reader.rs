//! Reading the log: everything, or what is new since a persisted cursor (the trainer's way).

use super::record::TrajectoryRecord;
use super::segment::{self, State};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// A position in the log: the next byte to read in segment `segment`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

pub struct LogReader {
    dir: PathBuf,
}

fn parse(p: &[u8]) -> io::Result<TrajectoryRecord> {
    serde_json::from_slice(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl LogReader {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Records after `cursor` (sealed segments, and the open one's intact prefix when
    /// `include_open`), with the cursor to continue from.
    pub fn read_since(
        &self,
        cursor: Cursor,
        include_open: bool,
    ) -> io::Result<(Vec<TrajectoryRecord>, Cursor)> {
        let mut out = Vec::new();
        let mut cur = cursor;
        for (seq, state, path) in segment::list(&self.dir)? {
            if seq < cursor.segment || (state == State::Open && !include_open) {
                continue;
            }
            let start = if seq == cursor.segment {
                cursor.offset
            } else {
                0
            };
            // A sealed segment is complete: skip corrupt stretches. The open one stops at its
            // first torn frame, which the writer may still be completing.
            let scan = match segment::scan(&path, start, state == State::Sealed) {
                Ok(r) => r,
                // Sealed (renamed) between listing and reading: read it under its new name.
                Err(e) if e.kind() == io::ErrorKind::NotFound && state == State::Open => {
                    segment::scan(
                        &self.dir.join(segment::name(seq, State::Sealed)),
                        start,
                        true,
                    )?
                }
                Err(e) => return Err(e),
            };
            if scan.skipped > 0 {
                tracing::warn!(
                    segment = seq,
                    bytes = scan.skipped,
                    "trajectory log: skipped a corrupt stretch"
                );
            }
            for f in scan.frames {
                match parse(&f.payload) {
                    Ok(r) => out.push(r),
                    // A frame found past corruption whose CRC matched by chance.
                    Err(_) if f.resynced => {}
                    Err(e) => return Err(e),
                }
            }
            cur = Cursor {
                segment: seq,
                offset: scan.end,
            };
        }
        Ok((out, cur))
    }

    /// Every record in the log.
    pub fn read_all(&self, include_open: bool) -> io::Result<Vec<TrajectoryRecord>> {
        Ok(self.read_since(Cursor::default(), include_open)?.0)
    }

    /// Loads a cursor saved by `save_cursor` (the start of the log if there is none).
    pub fn load_cursor(path: &Path) -> io::Result<Cursor> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves a cursor atomically (write a temporary file, fsync, rename).
    pub fn save_cursor(path: &Path, cursor: Cursor) -> io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&cursor).map_err(io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            segment::sync_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?;
        }
        Ok(())
    }
}
