//! The model registry both binaries share: immutable, content-addressed versions plus
//! movable aliases (`champion`, `previous`, any name) with an audit history.
//!
//! Layout (a local directory, or the same keys in an object store):
//!
//! ```text
//! ROOT/NAME/versions/ID/manifest.json      written last: a version without it is invisible
//! ROOT/NAME/versions/ID/<model files>
//! ROOT/NAME/aliases/<alias>.json           {"alias", "version", "updated_ms"}
//! ROOT/NAME/history/<ms>-<n>.json          one event per alias move (from, to, reason)
//! ```

mod lock;
mod manifest;
mod s3;
mod store;

pub use lock::{Lock, LockError, LockInfo};
pub use manifest::{
    content_version, hash_files, model_files, version_id, FileEntry, Manifest, ModelKind,
    Provenance,
};
pub use s3::S3Store;
pub use store::{digest_hex, LocalStore, Store, Tagged};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry: {0}")]
    Io(String),
    #[error("registry: {0}")]
    Invalid(String),
    #[error("registry: {0}")]
    NotFound(String),
    /// A file of a version does not match its manifest.
    #[error("registry: {0}")]
    Corrupt(String),
    /// Another writer moved the alias first, too many times in a row.
    #[error("registry: {0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// Where an alias points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub alias: String,
    pub version: String,
    pub updated_ms: u64,
}

/// One alias move, kept forever: every promotion and rollback is auditable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasEvent {
    pub alias: String,
    pub from: Option<String>,
    pub to: String,
    pub at_ms: u64,
    /// `promote`, `rollback`, `set`, …
    pub reason: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A model in a registry as the command lines name it: `ROOT/NAME[@SELECTOR]`, where ROOT
/// is a directory (or `s3://bucket/prefix`) and SELECTOR an alias or a version id
/// (`champion` when omitted). The server's form is `registry:ROOT/NAME@SELECTOR`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub root: String,
    pub name: String,
    pub selector: String,
}

impl ModelRef {
    /// Parses `[registry:]ROOT/NAME[@SELECTOR]`.
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.strip_prefix("registry:").unwrap_or(spec);
        let (path, selector) = match s.rsplit_once('@') {
            Some((p, sel)) if !sel.is_empty() && p.contains('/') => (p, sel.to_string()),
            _ => (s, "champion".to_string()),
        };
        let path = path.trim_end_matches('/');
        let (root, name) = path.rsplit_once('/').ok_or_else(|| {
            RegistryError::Invalid(format!(
                "`{spec}`: expected ROOT/NAME[@ALIAS] (e.g. registry/smollm2@champion)"
            ))
        })?;
        check_name(name)?;
        if root.is_empty() {
            return Err(RegistryError::Invalid(format!(
                "`{spec}`: the registry root is empty"
            )));
        }
        Ok(Self {
            root: root.to_string(),
            name: name.to_string(),
            selector,
        })
    }

    /// Whether a `--model` value names a registry model (the `registry:` prefix).
    pub fn is_registry_spec(spec: &str) -> bool {
        spec.starts_with("registry:")
    }

    pub fn open(&self) -> Result<Registry> {
        Registry::open(&self.root)
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.root, self.name, self.selector)
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "`{name}`: model names use letters, digits, '-', '_' and '.'"
        )))
    }
}

fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty()
        && alias.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "`{alias}`: alias names use letters, digits, '-', '_', '.' and '/'"
        )))
    }
}

/// Options of a publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub kind: ModelKind,
    pub parent: Option<String>,
    pub produced_by: Provenance,
    pub eval: serde_json::Value,
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct Published {
    pub manifest: Manifest,
    /// `false` when the same bytes were already published (the existing version is returned).
    pub created: bool,
}

pub struct Registry {
    store: Box<dyn Store>,
}

impl Registry {
    /// A registry at a local directory (created on first write) or in an S3-compatible
    /// object store (`s3://bucket/prefix`, configured by the usual `AWS_*` variables).
    pub fn open(root: &str) -> Result<Self> {
        if root.starts_with("s3://") {
            return Ok(Self::with_store(Box::new(S3Store::new(root)?)));
        }
        if root.contains("://") {
            return Err(RegistryError::Invalid(format!(
                "`{root}`: a registry is a local directory or s3://bucket/prefix"
            )));
        }
        Ok(Self::with_store(Box::new(LocalStore::new(root))))
    }

    pub fn with_store(store: Box<dyn Store>) -> Self {
        Self { store }
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    fn manifest_key(name: &str, version: &str) -> String {
        format!("{name}/versions/{version}/manifest.json")
    }

    fn alias_key(name: &str, alias: &str) -> String {
        format!("{name}/aliases/{alias}.json")
    }

    /// Model names in the registry.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list("")?
            .into_iter()
            .filter(|k| k.contains("/versions/") && k.ends_with("/manifest.json"))
            .filter_map(|k| k.split('/').next().map(str::to_string))
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Publishes a model directory or `.gguf` file as an immutable version of `name`.
    /// Files are uploaded create-only and the manifest last, so a half-written version is
    /// never visible; publishing the same bytes again returns the existing version.
    pub fn publish(&self, name: &str, src: &Path, opts: &PublishOptions) -> Result<Published> {
        check_name(name)?;
        let locals = model_files(src)?;
        let files = hash_files(&locals)?;
        let version = version_id(&files);
        if let Some(existing) = self.manifest_opt(name, &version)? {
            return Ok(Published {
                manifest: existing,
                created: false,
            });
        }
        let gguf = src
            .is_file()
            .then(|| locals[0].0.clone())
            .filter(|f| f.ends_with(".gguf"));
        for ((rel, local), entry) in locals.iter().zip(&files) {
            let key = format!("{name}/versions/{version}/{rel}");
            if !self.store.put_file_new(&key, local)? {
                // Left by an interrupted publish of the same version: keep it only if intact.
                self.verify_object(&key, entry)?;
            }
        }
        let manifest = Manifest {
            name: name.to_string(),
            version: version.clone(),
            kind: opts.kind,
            gguf,
            files,
            parent: opts.parent.clone(),
            created_ms: now_ms(),
            produced_by: opts.produced_by.clone(),
            eval: opts.eval.clone(),
        };
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let created = self
            .store
            .put_new(&Self::manifest_key(name, &version), &text)?;
        let manifest = if created {
            manifest
        } else {
            self.manifest(name, &version)?
        };
        Ok(Published { manifest, created })
    }

    fn verify_object(&self, key: &str, entry: &FileEntry) -> Result<()> {
        let ok = match self.store.local_path(key) {
            Some(p) => crate::assets::sha256_file(&p)
                .map(|h| h == entry.sha256)
                .unwrap_or(false),
            None => self
                .store
                .get(key)?
                .is_some_and(|t| digest_hex(&t.data) == entry.sha256),
        };
        if ok {
            Ok(())
        } else {
            Err(RegistryError::Corrupt(format!(
                "{key} exists in {} with other content; remove the incomplete version and publish again",
                self.describe()
            )))
        }
    }

    fn manifest_opt(&self, name: &str, version: &str) -> Result<Option<Manifest>> {
        if !manifest::is_version_id(version) {
            return Ok(None);
        }
        let key = Self::manifest_key(name, version);
        let corrupt =
            |e: String| RegistryError::Corrupt(format!("{key} in {}: {e}", self.describe()));
        match self.store.get(&key)? {
            None => Ok(None),
            Some(t) => {
                let m: Manifest =
                    serde_json::from_slice(&t.data).map_err(|e| corrupt(e.to_string()))?;
                m.check(name, version).map_err(corrupt)?;
                Ok(Some(m))
            }
        }
    }

    pub fn manifest(&self, name: &str, version: &str) -> Result<Manifest> {
        self.manifest_opt(name, version)?.ok_or_else(|| {
            RegistryError::NotFound(format!(
                "{name} has no version `{version}` in {}",
                self.describe()
            ))
        })
    }

    /// Every published version of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<Manifest>> {
        let mut out = vec![];
        for key in self.store.list(&format!("{name}/versions"))? {
            if let Some(id) = key
                .strip_suffix("/manifest.json")
                .and_then(|k| k.rsplit('/').next())
            {
                out.push(self.manifest(name, id)?);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.version).cmp(&(b.created_ms, &b.version)));
        Ok(out)
    }

    /// alias → version of `name`.
    pub fn aliases(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let prefix = format!("{name}/aliases/");
        let mut out = BTreeMap::new();
        for key in self.store.list(&prefix)? {
            if let Some(alias) = key
                .strip_prefix(&prefix)
                .and_then(|a| a.strip_suffix(".json"))
            {
                if let Some(v) = self.alias(name, alias)? {
                    out.insert(alias.to_string(), v);
                }
            }
        }
        Ok(out)
    }

    fn alias_tagged(&self, name: &str, alias: &str) -> Result<Option<(AliasRecord, String)>> {
        let key = Self::alias_key(name, alias);
        match self.store.get(&key)? {
            None => Ok(None),
            Some(t) => {
                let rec: AliasRecord = serde_json::from_slice(&t.data).map_err(|e| {
                    RegistryError::Corrupt(format!("{key} in {}: {e}", self.describe()))
                })?;
                Ok(Some((rec, t.tag)))
            }
        }
    }

    pub fn alias(&self, name: &str, alias: &str) -> Result<Option<String>> {
        Ok(self.alias_tagged(name, alias)?.map(|(r, _)| r.version))
    }

    /// Points `alias` at `version` (which must exist) with compare-and-swap, and appends the
    /// move to the history. `expected_from`: only move if the alias currently points there
    /// (`Some(None)`: only if unset). Returns the version it pointed at before.
    pub fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: &str,
        reason: &str,
        expected_from: Option<Option<&str>>,
    ) -> Result<Option<String>> {
        check_alias(alias)?;
        self.manifest(name, version)?;
        let key = Self::alias_key(name, alias);
        for _ in 0..32 {
            let current = self.alias_tagged(name, alias)?;
            let from = current.as_ref().map(|(r, _)| r.version.clone());
            if let Some(exp) = expected_from {
                if from.as_deref() != exp {
                    return Err(RegistryError::Conflict(format!(
                        "{name}@{alias} points at {} now, not {}",
                        from.as_deref().unwrap_or("nothing"),
                        exp.unwrap_or("nothing")
                    )));
                }
            }
            let rec = AliasRecord {
                alias: alias.to_string(),
                version: version.to_string(),
                updated_ms: now_ms(),
            };
            let data = serde_json::to_vec_pretty(&rec).expect("alias serializes");
            let tag = current.as_ref().map(|(_, t)| t.as_str());
            if self.store.put_if(&key, &data, tag)? {
                self.append_history(
                    name,
                    &AliasEvent {
                        alias: alias.to_string(),
                        from: from.clone(),
                        to: version.to_string(),
                        at_ms: rec.updated_ms,
                        reason: reason.to_string(),
                    },
                )?;
                return Ok(from);
            }
        }
        Err(RegistryError::Conflict(format!(
            "{name}@{alias}: other writers kept moving it; try again"
        )))
    }

    fn append_history(&self, name: &str, ev: &AliasEvent) -> Result<()> {
        let data = serde_json::to_vec(ev).expect("event serializes");
        for n in 0..1000u32 {
            let key = format!("{name}/history/{:013}-{n:03}.json", ev.at_ms);
            if self.store.put_new(&key, &data)? {
                return Ok(());
            }
        }
        Err(RegistryError::Conflict(format!(
            "{name}: could not append to the alias history"
        )))
    }

    /// Every alias move of `name`, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<AliasEvent>> {
        let mut out = vec![];
        for key in self.store.list(&format!("{name}/history"))? {
            if let Some(t) = self.store.get(&key)? {
                out.push(serde_json::from_slice(&t.data).map_err(|e| {
                    RegistryError::Corrupt(format!("{key} in {}: {e}", self.describe()))
                })?);
            }
        }
        Ok(out)
    }

    /// Makes `version` the champion; the old champion becomes `previous`.
    pub fn promote(&self, name: &str, version: &str) -> Result<Option<String>> {
        self.promote_alias(name, "champion", version)
    }

    /// Points `alias` at `version`; for `champion`, the old one becomes `previous`.
    pub fn promote_alias(&self, name: &str, alias: &str, version: &str) -> Result<Option<String>> {
        let old = self.set_alias(name, alias, version, "promote", None)?;
        if alias == "champion" {
            if let Some(old) = old.as_deref().filter(|o| *o != version) {
                self.set_alias(name, "previous", old, "promote", None)?;
            }
        }
        Ok(old)
    }

    /// Moves `champion` back to `previous` (and `previous` to the champion it replaced).
    /// Returns the version now champion.
    pub fn rollback(&self, name: &str) -> Result<String> {
        let prev = self.alias(name, "previous")?.ok_or_else(|| {
            RegistryError::NotFound(format!("{name} has no `previous` version to roll back to"))
        })?;
        let old = self.set_alias(name, "champion", &prev, "rollback", None)?;
        if let Some(old) = old.filter(|o| *o != prev) {
            self.set_alias(name, "previous", &old, "rollback", None)?;
        }
        Ok(prev)
    }

    /// An alias or a version id (or a unique prefix of one) → the version id.
    pub fn resolve(&self, name: &str, selector: &str) -> Result<String> {
        if let Some(v) = self.alias(name, selector).ok().flatten() {
            return Ok(v);
        }
        if self.manifest_opt(name, selector)?.is_some() {
            return Ok(selector.to_string());
        }
        let matches: Vec<String> = self
            .versions(name)?
            .into_iter()
            .map(|m| m.version)
            .filter(|v| v.starts_with(selector))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(RegistryError::NotFound(format!(
                "{name}@{selector}: no such alias or version in {}",
                self.describe()
            ))),
            _ => Err(RegistryError::Invalid(format!(
                "{name}@{selector}: the prefix matches {} versions",
                matches.len()
            ))),
        }
    }

    /// A verified local copy of a version: its directory and the manifest. A local registry
    /// is verified in place; an object store's files are downloaded into `cache` first
    /// (kept, and re-verified on each use). Every file's size and sha256 must match.
    pub fn fetch(&self, name: &str, version: &str, cache: &Path) -> Result<(PathBuf, Manifest)> {
        let manifest = self.manifest(name, version)?;
        let dir = match self
            .store
            .local_path(&format!("{name}/versions/{version}/manifest.json"))
        {
            Some(p) => p.parent().expect("manifest has a parent").to_path_buf(),
            None => {
                let dir = cache.join(name).join(version);
                for f in &manifest.files {
                    let dest = dir.join(&f.path);
                    let fresh = crate::assets::sha256_file(&dest)
                        .map(|h| h == f.sha256)
                        .unwrap_or(false);
                    if !fresh {
                        self.store
                            .get_to_file(&format!("{name}/versions/{version}/{}", f.path), &dest)?;
                    }
                }
                dir
            }
        };
        verify_dir(&dir, &manifest)?;
        Ok((dir, manifest))
    }

    /// Deletes all but the newest `keep` versions of `name`, never one an alias points at.
    /// Returns the deleted version ids.
    pub fn gc(&self, name: &str, keep: usize) -> Result<Vec<String>> {
        let pinned: std::collections::BTreeSet<String> =
            self.aliases(name)?.into_values().collect();
        let versions = self.versions(name)?;
        let n = versions.len();
        let mut removed = vec![];
        for m in versions.into_iter().take(n.saturating_sub(keep)) {
            if pinned.contains(&m.version) {
                continue;
            }
            // Manifest first, so a half-deleted version is invisible, never half-present.
            let prefix = format!("{name}/versions/{}", m.version);
            self.store
                .delete_prefix(&format!("{prefix}/manifest.json"))?;
            self.store.delete_prefix(&prefix)?;
            removed.push(m.version);
        }
        Ok(removed)
    }
}

/// Checks every file of a version directory against its manifest (size, then sha256).
pub fn verify_dir(dir: &Path, manifest: &Manifest) -> Result<()> {
    for f in &manifest.files {
        let p = dir.join(&f.path);
        let size = std::fs::metadata(&p)
            .map_err(|e| RegistryError::Corrupt(format!("{}: {e}", p.display())))?
            .len();
        if size != f.size {
            return Err(RegistryError::Corrupt(format!(
                "{}: {size} bytes, the manifest says {}",
                p.display(),
                f.size
            )));
        }
        let h =
            crate::assets::sha256_file(&p).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        if h != f.sha256 {
            return Err(RegistryError::Corrupt(format!(
                "{}: sha256 {h}, the manifest says {}",
                p.display(),
                f.sha256
            )));
        }
    }
    Ok(())
}
