//! A published version's `manifest.json`: what the version is (its files with sha256 and
//! size), what kind of model, where it came from and how it evaluated. The version id is a
//! hash of the files alone, so the same bytes always get the same id.

use super::RegistryError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Policy,
    Cost,
    Reward,
}

impl ModelKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "policy" => Some(Self::Policy),
            "cost" => Some(Self::Cost),
            "reward" => Some(Self::Reward),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Cost => "cost",
            Self::Reward => "reward",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path inside the version (`/`-separated).
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// What produced a version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line (or job) that wrote the model.
    #[serde(default)]
    pub command: Option<String>,
    /// The `safeloop-train round` that produced it.
    #[serde(default)]
    pub round: Option<String>,
    /// Data provenance: dataset files, trajectory-log cursor range, counts.
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub kind: ModelKind,
    /// The `.gguf` file for a GGUF model; `None` for an HF directory.
    #[serde(default)]
    pub gguf: Option<String>,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub parent: Option<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub produced_by: Provenance,
    /// Evaluation summary (free-form figures).
    #[serde(default)]
    pub eval: serde_json::Value,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The path to load from a verified copy of the version in `dir`.
    pub fn model_path(&self, dir: &Path) -> PathBuf {
        match &self.gguf {
            Some(f) => dir.join(f),
            None => dir.to_path_buf(),
        }
    }
}

/// The files of a model: every regular file of an HF directory (recursively, hidden files
/// and partial writes skipped), or the one `.gguf` file. Returns (relative path, local path).
pub fn model_files(src: &Path) -> Result<Vec<(String, PathBuf)>, RegistryError> {
    let meta =
        std::fs::metadata(src).map_err(|e| RegistryError::Io(format!("{}: {e}", src.display())))?;
    if meta.is_file() {
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".gguf") {
            return Err(RegistryError::Invalid(format!(
                "{}: a model is an HF directory or a .gguf file",
                src.display()
            )));
        }
        return Ok(vec![(name, src.to_path_buf())]);
    }
    let mut out = vec![];
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| RegistryError::Io(format!("{}: {e}", dir.display())))?;
        for entry in rd {
            let entry = entry.map_err(|e| RegistryError::Io(format!("{}: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".partial") {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(src)
                    .expect("walked under src")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, p));
            }
        }
    }
    out.sort();
    if !out.iter().any(|(r, _)| r == "config.json") {
        return Err(RegistryError::Invalid(format!(
            "{}: an HF model directory needs config.json",
            src.display()
        )));
    }
    Ok(out)
}

/// Whether `s` can be a version id (hex digits: the content hash). Anything else — a path
/// separator, `..` — never reaches a store key or a cache path.
pub fn is_version_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A plain relative path inside a version: `/`-separated, no empty, `.` or `..` component,
/// not absolute, no backslash or NUL.
pub fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains(['\\', '\0'])
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl Manifest {
    /// A manifest read from a store is untrusted input: it must describe the version asked
    /// for, and every file path must stay inside the version's directory.
    pub fn check(&self, name: &str, version: &str) -> Result<(), String> {
        if self.name != name || self.version != version {
            return Err(format!(
                "describes {}@{}, not {name}@{version}",
                self.name, self.version
            ));
        }
        if let Some(f) = self.files.iter().find(|f| !is_safe_relative_path(&f.path)) {
            return Err(format!(
                "file path `{}` is not a plain relative path",
                f.path.escape_debug()
            ));
        }
        if let Some(g) = &self.gguf {
            if !self.files.iter().any(|f| &f.path == g) {
                return Err(format!(
                    "gguf `{}` is not one of its files",
                    g.escape_debug()
                ));
            }
        }
        if version_id(&self.files) != self.version {
            return Err("its files do not hash to its version id".into());
        }
        Ok(())
    }
}

/// The version id of a set of files: the first 16 hex digits of the sha256 over each
/// file's relative path, sha256 and size, in path order.
pub fn version_id(files: &[FileEntry]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for f in sorted {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.sha256.as_bytes());
        h.update(f.size.to_le_bytes());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hashes a model's files, as [`model_files`] lists them (the content hash the version id
/// and fingerprint come from).
pub fn hash_files(files: &[(String, PathBuf)]) -> Result<Vec<FileEntry>, RegistryError> {
    files
        .iter()
        .map(|(rel, p)| {
            let size = std::fs::metadata(p)
                .map_err(|e| RegistryError::Io(format!("{}: {e}", p.display())))?
                .len();
            let sha256 =
                crate::assets::sha256_file(p).map_err(|e| RegistryError::Io(e.to_string()))?;
            Ok(FileEntry {
                path: rel.clone(),
                sha256,
                size,
            })
        })
        .collect()
}

/// The content hash of a model directory or file, as a version id.
pub fn content_version(src: &Path) -> Result<String, RegistryError> {
    Ok(version_id(&hash_files(&model_files(src)?)?))
}
