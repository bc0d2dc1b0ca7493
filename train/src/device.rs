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
        // Before any CUDA query: libtorch decides once whether it has CUDA.
        load_torch_cuda();
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

/// A trainer built against a CPU libtorch (`scripts/setup_libtorch.sh`) runs on a GPU when it finds a CUDA build of
/// the same libtorch at run time (`LD_LIBRARY_PATH=…/site-packages/torch/lib`, e.g. PyTorch 2.11+cu130): it never
/// linked `libtorch_cuda.so`, so this loads the one beside the `libtorch_cpu.so` in use, whose initialisers register
/// libtorch's CUDA backend. Nothing happens when that file is absent (a CPU libtorch) or already loaded (a trainer
/// linked against a CUDA libtorch).
fn load_torch_cuda() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    if maps.contains("/libtorch_cuda.so") {
        return;
    }
    let Some(dir) = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent())
    else {
        return;
    };
    let lib = dir.join("libtorch_cuda.so");
    if !lib.exists() {
        return;
    }
    let Ok(c) = std::ffi::CString::new(lib.to_string_lossy().as_bytes()) else {
        return;
    };
    // SAFETY: dlopen of a library of the libtorch already loaded; the handle is never closed.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated per dlerror's contract.
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        tracing::warn!("{}: {msg}", lib.display());
    } else {
        tracing::info!("loaded {} for --device cuda", lib.display());
    }
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
