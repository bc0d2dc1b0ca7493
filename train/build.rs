//! Bakes the libtorch library directory into the binary's run path, so `safeloop-train` finds libtorch without
//! LD_LIBRARY_PATH. The directory is the one torch-sys linked against: `$LIBTORCH_LIB`, else `$LIBTORCH/lib`
//! (set by .cargo/config.toml to the copy scripts/setup_libtorch.sh installs), else, with LIBTORCH_USE_PYTORCH,
//! the `torch/lib` of the Python on PATH. To run the binary against libtorch elsewhere, set LD_LIBRARY_PATH
//! (it is searched before the baked-in run path) — see DEVELOPERS.md.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    for var in ["LIBTORCH", "LIBTORCH_LIB", "LIBTORCH_USE_PYTORCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let lib = if let Ok(lib) = std::env::var("LIBTORCH_LIB") {
        Some(PathBuf::from(lib))
    } else if std::env::var("LIBTORCH_USE_PYTORCH").is_ok() {
        Command::new("python3")
            .args([
                "-c",
                "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    } else {
        std::env::var("LIBTORCH")
            .ok()
            .map(|dir| PathBuf::from(dir).join("lib"))
    };
    if let Some(lib) = lib {
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
