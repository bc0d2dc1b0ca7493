//! Segment files: names, framing, scanning and recovery.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
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

/// Reads the frame at the reader's position: `Ok(None)` at a clean end of file or at a torn
/// or corrupt frame (the caller stops there).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; HEADER];
    match read_full(r, &mut head)? {
        0 => return Ok(None),
        n if n < HEADER => return Ok(None),
        _ => {}
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if read_full(r, &mut payload)? < len || crc32c::crc32c(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Byte length of the intact prefix of a segment (every frame up to the first torn or
/// corrupt one) and the number of records in it.
pub fn valid_prefix(path: &Path) -> io::Result<(u64, u64)> {
    let mut f = std::io::BufReader::new(File::open(path)?);
    let (mut end, mut count) = (0u64, 0u64);
    while let Some(p) = read_frame(&mut f)? {
        end += (HEADER + p.len()) as u64;
        count += 1;
    }
    Ok((end, count))
}

/// Truncates a crashed `.open` segment after its last intact record, fsyncs it and seals it
/// (atomic rename). Returns the number of bytes dropped.
pub fn recover(dir: &Path, seq: u64, path: &Path) -> io::Result<u64> {
    let (end, _) = valid_prefix(path)?;
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

/// Seeks `f` to `offset` and reads frames until the end; returns the payloads and the offset
/// after the last intact frame.
pub fn read_from(path: &Path, offset: u64) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut r = std::io::BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    while let Some(p) = read_frame(&mut r)? {
        pos += (HEADER + p.len()) as u64;
        out.push(p);
    }
    Ok((out, pos))
}

pub fn write_all(f: &mut File, buf: &[u8]) -> io::Result<()> {
    f.write_all(buf)
}
