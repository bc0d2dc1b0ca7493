//! Appending records: framing, rotation, durability policy, recovery and retention.

use super::record::TrajectoryRecord;
use super::segment::{self, State};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync after every record: a record is durable when `append` returns.
    Always,
    /// Group commit: dirty segments are fsynced at this interval (and on rotation/close).
    Interval(Duration),
    /// Leave it to the OS.
    Never,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Seal and start a new segment past this size.
    pub max_segment_bytes: u64,
    /// ... or past this age.
    pub max_segment_age: Duration,
    pub durability: Durability,
    /// Delete the oldest sealed segments beyond this total size.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments older than this.
    pub retention_age: Option<Duration>,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_segment_bytes: 64 << 20,
            max_segment_age: Duration::from_secs(3600),
            durability: Durability::Interval(Duration::from_millis(100)),
            retention_bytes: None,
            retention_age: None,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos: AtomicU64,
    pub recovered_bytes_dropped: AtomicU64,
}

struct Active {
    seq: u64,
    file: File,
    size: u64,
    opened: Instant,
    dirty: bool,
}

struct Slot {
    active: Option<Active>,
    /// Sequence number of the next segment to create.
    next: u64,
    closed: bool,
}

pub struct LogWriter {
    cfg: LogConfig,
    slot: Mutex<Slot>,
    stats: LogStats,
}

impl LogWriter {
    /// Opens (creating) the log directory, recovers and seals segments left open by a crash,
    /// and starts a new segment.
    pub fn open(cfg: LogConfig) -> io::Result<Arc<Self>> {
        create_dir(&cfg.dir)?;
        let stats = LogStats::default();
        let mut next = 0;
        for (seq, state, path) in segment::list(&cfg.dir)? {
            if state == State::Open {
                let dropped = segment::recover(&cfg.dir, seq, &path)?;
                stats
                    .recovered_bytes_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(
                        segment = seq,
                        dropped,
                        "trajectory log: truncated a torn tail"
                    );
                }
            }
            next = next.max(seq + 1);
        }
        let w = Arc::new(Self {
            slot: Mutex::new(Slot {
                active: Some(Self::start(&cfg.dir, next)?),
                next: next + 1,
                closed: false,
            }),
            cfg,
            stats,
        });
        w.apply_retention()?;
        if let Durability::Interval(every) = w.cfg.durability {
            let weak: Weak<Self> = Arc::downgrade(&w);
            std::thread::Builder::new()
                .name("safeloop-log-sync".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    match weak.upgrade() {
                        Some(w) => {
                            let _ = w.flush();
                        }
                        None => return,
                    }
                })?;
        }
        Ok(w)
    }

    fn start(dir: &Path, seq: u64) -> io::Result<Active> {
        let file = segment::create(&dir.join(segment::name(seq, State::Open)))?;
        segment::sync_dir(dir)?;
        Ok(Active {
            seq,
            file,
            size: 0,
            opened: Instant::now(),
            dirty: false,
        })
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Appends one record. Errors (disk full, permissions) are returned and counted; the
    /// log stays usable for later records.
    pub fn append(&self, rec: &TrajectoryRecord) -> io::Result<()> {
        let r = self.append_inner(rec);
        if r.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn append_inner(&self, rec: &TrajectoryRecord) -> io::Result<()> {
        let payload = serde_json::to_vec(rec).map_err(io::Error::other)?;
        if payload.len() > segment::MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large",
            ));
        }
        let buf = segment::frame(&payload);
        let mut slot = self.slot.lock().expect("log lock");
        if slot.closed {
            return Err(io::Error::other("the log is closed"));
        }
        let rotate = slot.active.as_ref().is_some_and(|a| {
            a.size > 0
                && (a.size + buf.len() as u64 > self.cfg.max_segment_bytes
                    || a.opened.elapsed() >= self.cfg.max_segment_age)
        });
        if rotate {
            let a = slot.active.take().expect("checked");
            self.seal(a)?;
            self.apply_retention()?;
        }
        if slot.active.is_none() {
            // After a rotation, or after a failure lost the segment (e.g. the directory
            // vanished): start a fresh segment, recreating the directory if needed.
            create_dir(&self.cfg.dir)?;
            let seq = slot.next;
            slot.active = Some(Self::start(&self.cfg.dir, seq)?);
            slot.next = seq + 1;
        }
        let a = slot.active.as_mut().expect("active segment");
        if let Err(e) = segment::write_all(&mut a.file, &buf) {
            // Cut any partial frame so later records stay readable.
            let _ = a.file.set_len(a.size);
            return Err(e);
        }
        a.size += buf.len() as u64;
        a.dirty = true;
        if self.cfg.durability == Durability::Always {
            self.sync(a)?;
        }
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync(&self, a: &mut Active) -> io::Result<()> {
        let t = Instant::now();
        a.file.sync_data()?;
        a.dirty = false;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fsync_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs the active segment if it has unsynced records.
    pub fn flush(&self) -> io::Result<()> {
        let mut slot = self.slot.lock().expect("log lock");
        match slot.active.as_mut() {
            Some(a) if a.dirty => self.sync(a),
            _ => Ok(()),
        }
    }

    /// Seals a segment: fsync, atomic rename to `.seg`, fsync the directory.
    fn seal(&self, mut a: Active) -> io::Result<u64> {
        self.sync(&mut a)?;
        let dir = &self.cfg.dir;
        std::fs::rename(
            dir.join(segment::name(a.seq, State::Open)),
            dir.join(segment::name(a.seq, State::Sealed)),
        )?;
        segment::sync_dir(dir)?;
        Ok(a.seq)
    }

    /// Seals the active segment; later appends fail. Called on shutdown (and by `Drop`).
    pub fn close(&self) -> io::Result<()> {
        let taken = {
            let mut slot = self.slot.lock().expect("log lock");
            slot.closed = true;
            slot.active.take()
        };
        match taken {
            Some(a) => self.seal(a).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Deletes the oldest sealed segments beyond the size or age limits.
    fn apply_retention(&self) -> io::Result<()> {
        if self.cfg.retention_bytes.is_none() && self.cfg.retention_age.is_none() {
            return Ok(());
        }
        let sealed: Vec<(u64, PathBuf, u64, SystemTime)> = segment::list(&self.cfg.dir)?
            .into_iter()
            .filter(|(_, s, _)| *s == State::Sealed)
            .filter_map(|(seq, _, p)| {
                let m = std::fs::metadata(&p).ok()?;
                Some((seq, p, m.len(), m.modified().ok()?))
            })
            .collect();
        let mut total: u64 = sealed.iter().map(|s| s.2).sum();
        for (_, path, len, modified) in sealed {
            let too_big = self.cfg.retention_bytes.is_some_and(|max| total > max);
            let too_old = self
                .cfg
                .retention_age
                .is_some_and(|max| modified.elapsed().is_ok_and(|age| age > max));
            if !(too_big || too_old) {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}
