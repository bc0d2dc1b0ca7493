//! `--device` and `--dtype` for the trainer: `cpu` (default), `cuda` / `cuda:N` when libtorch has CUDA. On GPU,
//! forward passes run under bf16 autocast (parameters and optimiser state stay f32).

use anyhow::{bail, Result};
use tch::{Device, Kind};

pub fn parse_device(s: &str) -> Result<Device> {
    let d = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("--device: `{s}` is not cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(n) = d {
        if !tch::Cuda::is_available() {
            bail!("--device {s}: this libtorch build has no CUDA (or no GPU is visible); build against a CUDA PyTorch, see DEVELOPERS.md");
        }
        if n >= tch::Cuda::device_count() as usize {
            bail!(
                "--device {s}: only {} CUDA device(s) visible",
                tch::Cuda::device_count()
            );
        }
    }
    Ok(d)
}

pub fn parse_kind(s: &str) -> Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" => Kind::Half,
        other => bail!("--dtype: `{other}` is not f32, bf16 or f16"),
    })
}

/// Runs `f` under bf16 autocast on CUDA, plainly on CPU.
pub fn autocast<T>(device: Device, f: impl FnOnce() -> T) -> T {
    if device.is_cuda() {
        tch::autocast(true, f)
    } else {
        f()
    }
}

/// Intra-op threads for libtorch on CPU: `SAFELOOP_TRAIN_THREADS`, else every core.
pub fn init_threads() {
    let n = std::env::var("SAFELOOP_TRAIN_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    tch::set_num_threads(n as i32);
}
