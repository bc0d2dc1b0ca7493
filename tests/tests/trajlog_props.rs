//! Property tests of the trajectory-log reader against damaged segments: random truncation,
//! bit flips and appended garbage, in sealed segments and in a segment left open by a crash.
//! The reader never panics, never yields a corrupted record, recovers every intact one, and a
//! cursor never moves backwards. Bounded cases in CI; the seed is printed (see
//! `proptest_config`).

use proptest::prelude::*;
use safeloop_shared::engine::SamplingParams;
use safeloop_shared::trajlog::*;
use safeloop_tests::{fresh_tmp, proptest_config};
use std::path::{Path, PathBuf};

fn record(i: u32, prompt: &[u32]) -> TrajectoryRecord {
    TrajectoryRecord {
        request_id: format!("req-{i}"),
        choice_index: 0,
        created_ms: 1_700_000_000_000 + i as u64,
        finished_ms: 1_700_000_000_100 + i as u64,
        model: "m".into(),
        weight_version: "v".into(),
        cost_version: None,
        reward_version: None,
        prompt_ids: prompt.to_vec(),
        output_ids: vec![i, i + 1],
        logprobs: vec![-0.5, -1.0],
        sampling: SamplingParams::greedy(),
        finish_reason: "stop".into(),
        reward: None,
        cost: Some(i as f32 / 7.0),
        gate: GateDecision::default(),
        blocked: false,
        latencies: Latencies::default(),
        redacted: None,
    }
}

fn config(dir: &Path, segment_bytes: u64) -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        max_segment_bytes: segment_bytes,
        ..LogConfig::new(dir)
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Byte spans of the frames of an undamaged segment, in order.
fn frame_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        spans.push((pos, pos + 8 + len));
        pos += 8 + len;
    }
    assert_eq!(pos, bytes.len(), "an undamaged segment is whole frames");
    spans
}

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file at this fraction of its length.
    Truncate(f64),
    /// Flip these bits (position as a fraction of the length, bit index).
    Flip(Vec<(f64, u8)>),
    /// Append these bytes.
    Garbage(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Truncate),
        prop::collection::vec((0.0..1.0f64, 0u8..8), 1..4).prop_map(Damage::Flip),
        prop::collection::vec(any::<u8>(), 1..300).prop_map(Damage::Garbage),
    ]
}

/// Applies the damage to a file's bytes.
fn corrupt(bytes: &mut Vec<u8>, d: &Damage) {
    let len = bytes.len();
    let at = |f: f64| ((f * len as f64) as usize).min(len.saturating_sub(1));
    match d {
        Damage::Truncate(f) => bytes.truncate(at(*f)),
        Damage::Flip(flips) if len > 0 => {
            for &(f, bit) in flips {
                bytes[at(f)] ^= 1 << bit;
            }
        }
        Damage::Flip(_) => {}
        Damage::Garbage(g) => bytes.extend_from_slice(g),
    }
}

/// Damages `path` (an undamaged segment) and returns which of its frames are still intact.
fn apply(path: &Path, d: &Damage) -> Vec<bool> {
    let original = std::fs::read(path).unwrap();
    let spans = frame_spans(&original);
    let mut bytes = original.clone();
    corrupt(&mut bytes, d);
    std::fs::write(path, &bytes).unwrap();
    // Intact: every byte of the frame still there and unchanged (a byte flipped twice is).
    spans
        .iter()
        .map(|&(s, e)| bytes.get(s..e) == Some(&original[s..e]))
        .collect()
}

/// Writes `n` records (closing the writer, or leaving its segment open as a crash would).
fn write_log(dir: &Path, n: u32, segment_bytes: u64, close: bool) -> Vec<TrajectoryRecord> {
    let w = LogWriter::open(config(dir, segment_bytes)).unwrap();
    let recs: Vec<_> = (0..n)
        .map(|i| record(i, &(0..(i % 13) * 7).collect::<Vec<_>>()))
        .collect();
    for r in &recs {
        w.append(r).unwrap();
    }
    if close {
        w.close().unwrap();
    } else {
        // A crash: the open segment stays `.open` (Durability::Always wrote every record).
        std::mem::forget(w);
    }
    recs
}

/// The records each file holds, in file order.
fn records_by_file(dir: &Path, recs: &[TrajectoryRecord]) -> Vec<(PathBuf, Vec<TrajectoryRecord>)> {
    let mut all: Vec<_> = files(dir, "seg");
    all.extend(files(dir, "open"));
    all.sort();
    let mut next = 0;
    all.into_iter()
        .map(|p| {
            let k = frame_spans(&std::fs::read(&p).unwrap()).len();
            let held = recs[next..next + k].to_vec();
            next += k;
            (p, held)
        })
        .collect()
}

fn expected_after(
    per_file: &[(PathBuf, Vec<TrajectoryRecord>)],
    damaged: usize,
    intact: &[bool],
) -> Vec<TrajectoryRecord> {
    per_file
        .iter()
        .enumerate()
        .flat_map(|(i, (_, held))| {
            held.iter()
                .enumerate()
                .filter(move |(j, _)| i != damaged || intact[*j])
                .map(|(_, r)| r.clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(proptest_config(48))]

    #[test]
    fn sealed_segments_lose_only_damaged_records(
        n in 1u32..40,
        segment_bytes in 400u64..4000,
        which in 0.0..1.0f64,
        d in damage(),
    ) {
        let tmp = fresh_tmp("trajlog-props-sealed");
        let recs = write_log(&tmp, n, segment_bytes, true);
        let per_file = records_by_file(&tmp, &recs);
        let damaged = ((which * per_file.len() as f64) as usize).min(per_file.len() - 1);
        let intact = apply(&per_file[damaged].0, &d);
        let got = LogReader::new(&tmp).read_all(true).unwrap();
        prop_assert_eq!(got, expected_after(&per_file, damaged, &intact));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn crash_recovery_keeps_every_intact_record_and_appends_after_them(
        n in 1u32..30,
        d in damage(),
    ) {
        let tmp = fresh_tmp("trajlog-props-crash");
        let recs = write_log(&tmp, n, 1 << 20, false);
        let per_file = records_by_file(&tmp, &recs);
        let open = per_file.len() - 1;
        prop_assert!(per_file[open].0.extension().is_some_and(|e| e == "open"));
        let intact = apply(&per_file[open].0, &d);
        let w = LogWriter::open(config(&tmp, 1 << 20)).unwrap();
        prop_assert!(files(&tmp, "seg").len() == per_file.len(), "the crashed segment was sealed");
        let extra = record(1000, &[1, 2, 3]);
        w.append(&extra).unwrap();
        w.close().unwrap();
        let mut want = expected_after(&per_file, open, &intact);
        want.push(extra);
        prop_assert_eq!(LogReader::new(&tmp).read_all(true).unwrap(), want);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn a_cursor_never_moves_backwards_and_never_repeats_a_record(
        steps in prop::collection::vec((0u32..6, prop::option::of(damage()), any::<bool>()), 1..8),
    ) {
        let tmp = fresh_tmp("trajlog-props-cursor");
        let w = LogWriter::open(config(&tmp, 700)).unwrap();
        let mut cursor = Cursor::default();
        let mut seen = std::collections::HashSet::new();
        let mut next = 0;
        for (appends, d, include_open) in steps {
            for _ in 0..appends {
                w.append(&record(next, &[next])).unwrap();
                next += 1;
            }
            if let (Some(d), Some(last)) = (d, files(&tmp, "seg").last()) {
                let mut bytes = std::fs::read(last).unwrap();
                corrupt(&mut bytes, &d);
                std::fs::write(last, &bytes).unwrap();
            }
            let (got, after) = LogReader::new(&tmp).read_since(cursor, include_open).unwrap();
            prop_assert!((after.segment, after.offset) >= (cursor.segment, cursor.offset),
                "cursor went back from {:?} to {:?}", cursor, after);
            for r in got {
                prop_assert!(r.request_id.starts_with("req-"));
                prop_assert!(seen.insert(r.request_id.clone()), "{} read twice", r.request_id);
            }
            cursor = after;
        }
        w.close().unwrap();
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
