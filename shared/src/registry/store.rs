//! Where a registry keeps its objects. Keys are `/`-separated paths (`NAME/versions/ID/file`).
//! Versions are written create-only; aliases are replaced with compare-and-swap on a tag
//! (the content digest here, the ETag on an object store), so two writers never lose an
//! update and a reader never sees half an object.

use super::RegistryError;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, RegistryError>;

/// An object's current contents and the tag a conditional write must quote.
pub struct Tagged {
    pub data: Vec<u8>,
    pub tag: String,
}

pub trait Store: Send + Sync {
    /// Where the store is, for messages (`/srv/registry`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// The object, or `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Tagged>>;
    /// Writes `data` under `key` unless the key exists; `false` when it did.
    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool>;
    /// Copies a local file under `key` unless the key exists; `false` when it did.
    fn put_file_new(&self, key: &str, src: &Path) -> Result<bool>;
    /// Replaces `key` only if its current tag is `expected` (`None`: only if absent).
    /// `false` when another writer got there first.
    fn put_if(&self, key: &str, data: &[u8], expected: Option<&str>) -> Result<bool>;
    /// Copies `key` into the local file `dest` (written beside it, then renamed).
    fn get_to_file(&self, key: &str, dest: &Path) -> Result<()>;
    /// Every key under `prefix` (recursive), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Deletes every key under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> Result<()>;
    /// A local path holding the object, when the store is a local directory (no copy needed).
    fn local_path(&self, key: &str) -> Option<PathBuf>;
}

pub fn digest_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A registry in a local directory. Create-only writes go to a temporary file that is
/// fsynced and then hard-linked into place (the link fails if the name exists); replaced
/// objects are renamed over the old one under an exclusive lock, and the directory is
/// fsynced after each.
pub struct LocalStore {
    root: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> RegistryError {
    RegistryError::Io(format!("{}: {e}", path.display()))
}

fn tmp_name(path: &Path) -> PathBuf {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{n:016x}.tmp"))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(RegistryError::Invalid(format!("bad object key `{key}`")));
        }
        Ok(self.root.join(key))
    }

    fn parent(path: &Path) -> Result<&Path> {
        let parent = path.parent().expect("keys have a parent");
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        Ok(parent)
    }

    /// Writes a complete temporary file with `write`, fsyncs it and links it to `path`
    /// unless `path` exists.
    fn create_with(
        &self,
        path: &Path,
        write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<bool> {
        let parent = Self::parent(path)?;
        if path.exists() {
            return Ok(false);
        }
        let tmp = tmp_name(path);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            write(&mut f)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path, e));
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsync_dir(parent)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path, e)),
        }
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Option<Tagged>> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(Tagged {
                tag: digest_hex(&data),
                data,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        let path = self.path(key)?;
        self.create_with(&path, |f| f.write_all(data))
    }

    fn put_file_new(&self, key: &str, src: &Path) -> Result<bool> {
        let path = self.path(key)?;
        self.create_with(&path, |f| {
            let mut from = std::fs::File::open(src)?;
            std::io::copy(&mut from, f).map(|_| ())
        })
    }

    fn put_if(&self, key: &str, data: &[u8], expected: Option<&str>) -> Result<bool> {
        let path = self.path(key)?;
        let parent = Self::parent(&path)?;
        // One writer at a time per directory; the lock file stays (it holds no data).
        let lock_path = parent.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        lock.lock().map_err(|e| io(&lock_path, e))?;
        let current = self.get(key)?.map(|t| t.tag);
        if current.as_deref() != expected {
            return Ok(false);
        }
        let tmp = tmp_name(&path);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&path, e));
        }
        fsync_dir(parent)?;
        Ok(true)
    }

    fn get_to_file(&self, key: &str, dest: &Path) -> Result<()> {
        let path = self.path(key)?;
        let tmp = tmp_name(dest);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
        }
        std::fs::copy(&path, &tmp).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&path, e)
        })?;
        std::fs::rename(&tmp, dest).map_err(|e| io(dest, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        let start = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)?
        };
        let mut out = vec![];
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io(&dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // temporary files and locks
                }
                let p = entry.path();
                if entry.file_type().map_err(|e| io(&p, e))?.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let path = self.path(prefix.trim_end_matches('/'))?;
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                std::fs::remove_file(&path).map_err(|e| io(&path, e))
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }
}
