//! Process-wide CPU settings.

use std::sync::Once;

static INIT: Once = Once::new();

/// Pins the CPU thread count once. candle's CPU matmul asks for its thread count on every
/// call and, unless `RAYON_NUM_THREADS` is set, re-reads `/proc/cpuinfo` each time (a large
/// share of a decode step on a small model). Sets it to the available parallelism unless
/// the user chose a value. Called by the model loaders; cheap to call again.
pub fn init_cpu_threads() {
    INIT.call_once(|| {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            // Runs before the first model is built, i.e. before candle's pools start.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    });
}
