//! Where a round's models come from: the policy's champion in the registry (a GGUF is converted once into an HF
//! directory for training), and each score model — a rule (`token-fraction:…`), a directory, or a registry model
//! (`registry:ROOT/NAME[@ALIAS]`, its champion by default) fetched and verified into the cache.

use anyhow::{Context, Result};
use safeloop_shared::registry::{Manifest, ModelRef, Registry};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A score model as the round's flags name it.
#[derive(Debug, Clone)]
pub enum ScoreSource {
    Rule(String),
    Dir(PathBuf),
    Registry(ModelRef),
}

/// A score model resolved for this step: what `ppo::scorers::load` takes, and its version when it has one.
#[derive(Debug, Clone)]
pub struct ResolvedScore {
    pub spec: String,
    pub version: Option<String>,
    pub dir: Option<PathBuf>,
}

impl ScoreSource {
    pub fn parse(spec: &str) -> Result<Self> {
        Ok(if spec.starts_with("token-fraction:") {
            ScoreSource::Rule(spec.to_string())
        } else if ModelRef::is_registry_spec(spec) {
            ScoreSource::Registry(ModelRef::parse(spec)?)
        } else {
            ScoreSource::Dir(PathBuf::from(spec))
        })
    }

    /// The model as of now (a registry alias is resolved at each call: a score model retrained by this round's
    /// annotate step is what the later steps use).
    pub fn resolve(&self, cache: &Path) -> Result<ResolvedScore> {
        Ok(match self {
            ScoreSource::Rule(r) => ResolvedScore {
                spec: r.clone(),
                version: None,
                dir: None,
            },
            ScoreSource::Dir(d) => ResolvedScore {
                spec: d.display().to_string(),
                version: Some(safeloop_shared::registry::content_version(d)?),
                dir: Some(d.clone()),
            },
            ScoreSource::Registry(r) => {
                let reg = r.open()?;
                let version = reg.resolve(&r.name, &r.selector)?;
                let (dir, _) = reg.fetch(&r.name, &version, cache)?;
                ResolvedScore {
                    spec: dir.display().to_string(),
                    version: Some(version),
                    dir: Some(dir),
                }
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            ScoreSource::Rule(r) => r.clone(),
            ScoreSource::Dir(d) => d.display().to_string(),
            ScoreSource::Registry(r) => format!("registry:{r}"),
        }
    }
}

impl ResolvedScore {
    pub fn to_json(&self) -> Value {
        json!({"model": self.spec, "version": self.version})
    }
}

/// The champion policy: its version, manifest and the file or directory to load.
pub struct Champion {
    pub version: String,
    pub manifest: Manifest,
    pub path: PathBuf,
}

pub fn fetch_policy(reg: &Registry, name: &str, version: &str, cache: &Path) -> Result<Champion> {
    let (dir, manifest) = reg
        .fetch(name, version, cache)
        .with_context(|| format!("fetching {name}@{version} from {}", reg.describe()))?;
    Ok(Champion {
        version: version.to_string(),
        path: manifest.model_path(&dir),
        manifest,
    })
}

/// An HF directory of the champion for training: the directory itself, or a GGUF converted (f32) into `dest`.
pub fn trainable_dir(champion: &Champion, dest: &Path) -> Result<PathBuf> {
    if champion.path.is_dir() {
        return Ok(champion.path.clone());
    }
    if !dest.join("config.json").is_file() {
        eprintln!(
            "converting {} into {} for training",
            champion.path.display(),
            dest.display()
        );
        crate::convert::gguf_to_hf(&champion.path, dest, tch::Kind::Float)?;
    }
    Ok(dest.to_path_buf())
}
