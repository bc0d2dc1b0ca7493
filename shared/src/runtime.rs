//! Process-wide CPU settings, and the `--device` spelling every binary takes.

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

/// `cpu`, `cuda` or `cuda:N` as a candle device; the error names the flag and says what went wrong (a bad
/// spelling, a bad GPU index, or a build without `--features cuda` / no GPU).
pub fn parse_device(spec: &str) -> std::result::Result<candle_core::Device, String> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .map_err(|_| format!("--device: bad GPU index in `{s}`"))?;
            candle_core::Device::new_cuda(n)
                .map_err(|e| format!("--device {s}: {e} (build with --features cuda)"))
        }
        other => Err(format!("--device: `{other}` is not cpu, cuda or cuda:N")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_specs() {
        assert!(super::parse_device("cpu").unwrap().is_cpu());
        assert!(super::parse_device("cuda:x")
            .unwrap_err()
            .contains("bad GPU index"));
        assert!(super::parse_device("tpu")
            .unwrap_err()
            .contains("not cpu, cuda or cuda:N"));
    }
}
