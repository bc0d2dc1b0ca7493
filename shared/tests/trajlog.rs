//! The trajectory log: framing, rotation, recovery of torn tails, cursors, retention.

use safeloop_shared::engine::SamplingParams;
use safeloop_shared::trajlog::*;
use std::io::Write;
use std::time::Duration;

fn rec(i: u32) -> TrajectoryRecord {
    TrajectoryRecord {
        request_id: format!("req-{i}"),
        choice_index: i % 2,
        created_ms: 1_700_000_000_000 + i as u64,
        finished_ms: 1_700_000_000_100 + i as u64,
        model: "m".into(),
        weight_version: "fp_test".into(),
        cost_version: None,
        reward_version: None,
        prompt_ids: (0..20).map(|t| t + i).collect(),
        output_ids: vec![i, i + 1, i + 2],
        logprobs: vec![-0.5, -1.25, -0.125],
        sampling: SamplingParams {
            seed: Some(i as u64),
            ..SamplingParams::greedy()
        },
        finish_reason: "stop".into(),
        reward: Some(0.5),
        cost: Some(-1.0 + i as f32),
        gate: GateDecision {
            action: safeloop_shared::trajlog::GateAction::Pass,
            ..Default::default()
        },
        blocked: i.is_multiple_of(5),
        latencies: Latencies {
            queue_ms: 1.0,
            ttft_ms: 2.0,
            e2e_ms: 3.0,
        },
        redacted: None,
    }
}

fn cfg(dir: &std::path::Path) -> LogConfig {
    LogConfig {
        durability: Durability::Always,
        ..LogConfig::new(dir)
    }
}

fn segments(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn records_round_trip_rotate_and_seal_on_close() {
    let tmp = tempfile::tempdir().unwrap();
    let w = LogWriter::open(LogConfig {
        max_segment_bytes: 2_000,
        ..cfg(tmp.path())
    })
    .unwrap();
    for i in 0..50 {
        w.append(&rec(i)).unwrap();
    }
    assert_eq!(
        w.stats().records.load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    // Size-based rotation sealed earlier segments; the reader sees the open one on request.
    assert!(segments(tmp.path(), "seg").len() > 3);
    let r = LogReader::new(tmp.path());
    let all = r.read_all(true).unwrap();
    assert_eq!(all, (0..50).map(rec).collect::<Vec<_>>());
    assert!(r.read_all(false).unwrap().len() < 50);
    w.close().unwrap();
    assert!(segments(tmp.path(), "open").is_empty());
    assert_eq!(r.read_all(false).unwrap().len(), 50);
    assert!(w.append(&rec(99)).is_err(), "closed log refuses appends");
    #[cfg(unix)]
    for p in segments(tmp.path(), "seg") {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn torn_and_corrupt_tails_are_truncated_on_restart() {
    for damage in ["torn", "crc", "garbage-length"] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let w = LogWriter::open(cfg(tmp.path())).unwrap();
            for i in 0..10 {
                w.append(&rec(i)).unwrap();
            }
            // Simulate a crash: the writer never closes, the .open segment stays.
            std::mem::forget(w);
        }
        let open = segments(tmp.path(), "open").pop().unwrap();
        let len = std::fs::metadata(&open).unwrap().len();
        match damage {
            // Half of the last record written.
            "torn" => std::fs::OpenOptions::new()
                .write(true)
                .open(&open)
                .unwrap()
                .set_len(len - 20)
                .unwrap(),
            // A flipped byte in the last record's payload.
            "crc" => {
                let mut bytes = std::fs::read(&open).unwrap();
                let n = bytes.len();
                bytes[n - 5] ^= 0xff;
                std::fs::write(&open, bytes).unwrap();
            }
            // A partial header of a record that never made it.
            _ => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&open)
                    .unwrap();
                f.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2]).unwrap();
            }
        }
        let w = LogWriter::open(cfg(tmp.path())).unwrap();
        assert!(
            segments(tmp.path(), "seg").len() == 1,
            "{damage}: the crashed segment is sealed"
        );
        let got = LogReader::new(tmp.path()).read_all(true).unwrap();
        let keep = if damage == "garbage-length" { 10 } else { 9 };
        assert_eq!(got, (0..keep).map(rec).collect::<Vec<_>>(), "{damage}");
        // The log carries on after recovery.
        w.append(&rec(100)).unwrap();
        assert_eq!(
            LogReader::new(tmp.path())
                .read_all(true)
                .unwrap()
                .last()
                .unwrap(),
            &rec(100)
        );
    }
}

#[test]
fn cursor_reads_only_new_records_and_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let cursor_file = tmp.path().join("trainer.cursor");
    let logdir = tmp.path().join("log");
    let w = LogWriter::open(LogConfig {
        max_segment_bytes: 1_500,
        ..cfg(&logdir)
    })
    .unwrap();
    for i in 0..10 {
        w.append(&rec(i)).unwrap();
    }
    let r = LogReader::new(&logdir);
    let c0 = LogReader::load_cursor(&cursor_file).unwrap();
    assert_eq!(c0, Cursor::default());
    let (first, c1) = r.read_since(c0, true).unwrap();
    assert_eq!(first.len(), 10);
    LogReader::save_cursor(&cursor_file, c1).unwrap();
    for i in 10..25 {
        w.append(&rec(i)).unwrap();
    }
    let c = LogReader::load_cursor(&cursor_file).unwrap();
    assert_eq!(c, c1);
    let (next, c2) = r.read_since(c, true).unwrap();
    assert_eq!(next, (10..25).map(rec).collect::<Vec<_>>());
    let (none, c3) = r.read_since(c2, true).unwrap();
    assert!(none.is_empty());
    assert_eq!(c3, c2);
    // The open segment being sealed under the reader does not lose or repeat records.
    w.close().unwrap();
    let (after_close, _) = r.read_since(c2, true).unwrap();
    assert!(after_close.is_empty());
}

#[test]
fn retention_deletes_the_oldest_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let w = LogWriter::open(LogConfig {
        max_segment_bytes: 1_000,
        retention_bytes: Some(3_000),
        ..cfg(tmp.path())
    })
    .unwrap();
    for i in 0..60 {
        w.append(&rec(i)).unwrap();
    }
    let sealed: u64 = segments(tmp.path(), "seg")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(sealed <= 3_000, "{sealed}");
    let left = LogReader::new(tmp.path()).read_all(true).unwrap();
    assert!(left.len() < 60 && !left.is_empty());
    assert_eq!(left.last().unwrap(), &rec(59), "the newest records survive");
}

#[test]
fn group_commit_and_concurrent_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let w = LogWriter::open(LogConfig {
        durability: Durability::Interval(Duration::from_millis(10)),
        ..LogConfig::new(tmp.path())
    })
    .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let w = &w;
            s.spawn(move || {
                for i in 0..50 {
                    w.append(&rec(t * 1000 + i)).unwrap();
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        w.stats().fsyncs.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the sync thread ran"
    );
    let all = LogReader::new(tmp.path()).read_all(true).unwrap();
    assert_eq!(all.len(), 200);
    // Each writer's records appear complete and in its own order.
    for t in 0..4u32 {
        let mine: Vec<u32> = all
            .iter()
            .map(|r| {
                r.request_id
                    .trim_start_matches("req-")
                    .parse::<u32>()
                    .unwrap()
            })
            .filter(|id| id / 1000 == t)
            .map(|id| id % 1000)
            .collect();
        assert_eq!(mine, (0..50).collect::<Vec<_>>(), "writer {t}");
    }
}
