//! Segment files: names, framing, scanning and recovery.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const HEADER: usize = 8;
/// Records larger than this are refused (and a length field above it marks a corrupt tail).
pub const MAX_RECORD: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Sealed,
    Open,
}

pub fn name(seq: u64, state: State) -> String {
    match state {
        State::Sealed => format!("{seq:020}.seg"),
        State::Open => format!("{seq:020}.open"),
    }
}

/// `(seq, state, path)` of every segment in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, State, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let (stem, state) = if let Some(s) = name.strip_suffix(".seg") {
            (s, State::Sealed)
        } else if let Some(s) = name.strip_suffix(".open") {
            (s, State::Open)
        } else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, state, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// The payload of an intact frame starting at `pos`: the header fits, the length is within
/// `MAX_RECORD` and within the bytes present, and the CRC matches. Nothing is allocated from
/// the header's length field.
fn frame_at(buf: &[u8], pos: usize) -> Option<&[u8]> {
    let head = buf.get(pos..pos.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return None;
    }
    let payload = buf.get(pos + HEADER..(pos + HEADER).checked_add(len)?)?;
    (crc32c::crc32c(payload) == crc).then_some(payload)
}

/// A frame found past a corrupt stretch must also look like a record (a JSON object), so
/// the resynchronising search rarely computes a CRC over garbage.
fn plausible_at(buf: &[u8], pos: usize) -> Option<&[u8]> {
    let len_end = pos.checked_add(4)?;
    let len = u32::from_le_bytes(buf.get(pos..len_end)?.try_into().ok()?) as usize;
    let start = pos + HEADER;
    let last = start.checked_add(len)?.checked_sub(1)?;
    if len < 2 || buf.get(start) != Some(&b'{') || buf.get(last) != Some(&b'}') {
        return None;
    }
    frame_at(buf, pos)
}

/// One intact frame found by a scan.
pub struct Found {
    pub payload: Vec<u8>,
    /// Offset of the byte after it.
    pub end: u64,
    /// Found by resynchronising after a corrupt stretch (not right after the previous frame).
    pub resynced: bool,
}

/// What a scan of a segment found.
pub struct Scan {
    pub frames: Vec<Found>,
    /// Where the next read continues: in a stopping scan, the end of the last intact frame of
    /// the unbroken run; in a resynchronising one, the end of the data. Never before `offset`.
    pub end: u64,
    /// Bytes skipped as corrupt.
    pub skipped: u64,
}

/// Frames of `bytes` (a segment's contents) from `offset`. A stopping scan (`resync` false:
/// the open segment, whose tail the writer may still be completing) ends at the first torn or
/// corrupt frame. A resynchronising scan (sealed segments, crash recovery) skips a corrupt
/// stretch and continues at the next offset where a whole record frame with a matching CRC
/// starts, so every intact record is recovered.
pub fn scan_bytes(bytes: &[u8], offset: u64, resync: bool) -> Scan {
    let mut out = Scan {
        frames: Vec::new(),
        end: offset,
        skipped: 0,
    };
    let Ok(mut pos) = usize::try_from(offset) else {
        return out;
    };
    let mut resynced = false;
    while pos < bytes.len() {
        let found = if resynced {
            plausible_at(bytes, pos)
        } else {
            frame_at(bytes, pos)
        };
        match found {
            Some(p) => {
                let end = pos + HEADER + p.len();
                out.frames.push(Found {
                    payload: p.to_vec(),
                    end: end as u64,
                    resynced,
                });
                resynced = false;
                pos = end;
                out.end = end as u64;
            }
            None if !resync => break,
            None => {
                resynced = true;
                out.skipped += 1;
                pos += 1;
            }
        }
    }
    if resync {
        out.end = out.end.max(bytes.len() as u64);
    }
    out
}

/// `scan_bytes` over a file.
pub fn scan(path: &Path, offset: u64, resync: bool) -> io::Result<Scan> {
    let bytes = std::fs::read(path)?;
    Ok(scan_bytes(&bytes, offset, resync))
}

/// Truncates a crashed `.open` segment after its last intact record (intact records past a
/// corrupt stretch are kept; the reader skips the stretch), fsyncs it and seals it (atomic
/// rename). Returns the number of bytes dropped.
pub fn recover(dir: &Path, seq: u64, path: &Path) -> io::Result<u64> {
    let end = scan(path, 0, true)?.frames.last().map_or(0, |f| f.end);
    let f = OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    if len > end {
        f.set_len(end)?;
    }
    f.sync_all()?;
    std::fs::rename(path, dir.join(name(seq, State::Sealed)))?;
    sync_dir(dir)?;
    Ok(len - end)
}

pub fn create(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create_new(true).append(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn write_all(f: &mut File, buf: &[u8]) -> io::Result<()> {
    f.write_all(buf)
}
