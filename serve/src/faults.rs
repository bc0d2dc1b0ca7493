//! Fault injection for tests and chaos drills: `SAFELOOP_FAULTS="engine_step=3,scorer=2"`
//! makes the named point panic the N-th time it is reached (once). Points: `engine_step` (the
//! engine thread, before a step), `scorer` (a score model's thread, before scoring a batch).
//! Unset in production; reading it costs one atomic load per point hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn points() -> &'static HashMap<String, (u64, AtomicU64)> {
    static P: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
    P.get_or_init(|| {
        std::env::var("SAFELOOP_FAULTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                let n = v.trim().parse().ok()?;
                Some((k.trim().to_string(), (n, AtomicU64::new(0))))
            })
            .collect()
    })
}

/// Panics if `point` is armed and this is its N-th hit.
pub fn hit(point: &str) {
    if let Some((at, count)) = points().get(point) {
        if count.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            panic!("injected fault at {point} (SAFELOOP_FAULTS)");
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
