//! `safeloop-train registry list | show | publish | promote | rollback | gc`, and the
//! `--publish ROOT/NAME` flag of the training commands.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use safeloop_shared::registry::{ModelKind, ModelRef, Provenance, PublishOptions, Registry};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `--publish ROOT/NAME`: publish the trained model as a new version (no alias moves).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize)]
pub struct PublishArgs {
    /// Publish the result into a model registry as ROOT/NAME (a new immutable version; no
    /// alias moves: `registry promote` makes it the champion).
    #[arg(long, value_name = "ROOT/NAME")]
    pub publish: Option<String>,
}

impl PublishArgs {
    /// Publishes `dir` when `--publish` was given and records the version in `summary`.
    pub fn apply(&self, dir: &Path, kind: ModelKind, summary: &mut Value) -> Result<()> {
        let Some(spec) = &self.publish else {
            return Ok(());
        };
        let r = parse_ref(spec, "--publish")?;
        let command: Vec<String> = std::env::args().collect();
        let published = publish(
            &r,
            dir,
            kind,
            None,
            Provenance {
                command: Some(command.join(" ")),
                round: None,
                data: Value::Null,
            },
            summary.clone(),
        )?;
        summary["published"] = published;
        Ok(())
    }
}

fn parse_ref(spec: &str, what: &str) -> Result<ModelRef> {
    ModelRef::parse(spec).with_context(|| format!("{what} `{spec}`"))
}

fn publish(
    r: &ModelRef,
    dir: &Path,
    kind: ModelKind,
    parent: Option<String>,
    produced_by: Provenance,
    eval: Value,
) -> Result<Value> {
    let reg = r.open()?;
    let p = reg
        .publish(
            &r.name,
            dir,
            &PublishOptions {
                kind,
                parent,
                produced_by,
                eval,
            },
        )
        .with_context(|| format!("publishing {} to {}", dir.display(), reg.describe()))?;
    Ok(json!({
        "registry": reg.describe(), "name": r.name, "version": p.manifest.version,
        "kind": kind.as_str(), "bytes": p.manifest.total_bytes(), "created": p.created,
    }))
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// `ROOT`: the models with their aliases; `ROOT/NAME`: that model's versions.
    List { target: String },
    /// A version's manifest (`ROOT/NAME@ALIAS_OR_VERSION`, default champion), the aliases and
    /// the alias history.
    Show { model: String },
    /// Publish an HF directory or .gguf file as a new version of ROOT/NAME.
    Publish {
        /// ROOT/NAME
        target: String,
        /// The model directory or .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// policy, cost or reward
        #[arg(long)]
        kind: String,
        /// The version this one was trained from.
        #[arg(long)]
        parent: Option<String>,
        /// A JSON file with the evaluation summary to store in the manifest.
        #[arg(long)]
        eval_json: Option<PathBuf>,
        /// Also make it the champion (the old champion becomes `previous`).
        #[arg(long)]
        promote: bool,
    },
    /// Point an alias (default champion) at a version; for champion the old one becomes `previous`.
    Promote {
        /// ROOT/NAME
        target: String,
        /// Version id (or unique prefix) or alias.
        version: String,
        #[arg(long, default_value = "champion")]
        alias: String,
    },
    /// Move champion back to `previous` (and previous to the champion it replaces).
    Rollback { target: String },
    /// Delete all but the newest --keep versions, never one an alias points at.
    Gc {
        target: String,
        #[arg(long, default_value_t = 5)]
        keep: usize,
    },
}

fn open_name(target: &str) -> Result<(Registry, ModelRef)> {
    let r = parse_ref(target, "model")?;
    Ok((r.open()?, r))
}

pub fn run(cmd: &RegistryCommand) -> Result<Vec<Value>> {
    match cmd {
        RegistryCommand::List { target } => {
            // ROOT/NAME when that model has versions; otherwise ROOT.
            let model = ModelRef::parse(target).ok().filter(|r| {
                r.open()
                    .and_then(|reg| reg.versions(&r.name))
                    .is_ok_and(|v| !v.is_empty())
            });
            let Some(r) = model else {
                let reg = Registry::open(target)?;
                let names = reg.names()?;
                if names.is_empty() {
                    bail!("{target}: no published models here (ROOT or ROOT/NAME)");
                }
                return names
                    .into_iter()
                    .map(|name| {
                        Ok(json!({"name": name, "versions": reg.versions(&name)?.len(),
                            "aliases": reg.aliases(&name)?}))
                    })
                    .collect();
            };
            let reg = r.open()?;
            let aliases = reg.aliases(&r.name)?;
            Ok(reg
                .versions(&r.name)?
                .into_iter()
                .map(|m| {
                    let names: Vec<&String> = aliases
                        .iter()
                        .filter(|(_, v)| **v == m.version)
                        .map(|(a, _)| a)
                        .collect();
                    json!({"version": m.version, "kind": m.kind, "created_ms": m.created_ms,
                        "bytes": m.total_bytes(), "parent": m.parent, "aliases": names})
                })
                .collect())
        }
        RegistryCommand::Show { model } => {
            let (reg, r) = open_name(model)?;
            let v = reg.resolve(&r.name, &r.selector)?;
            let m = reg.manifest(&r.name, &v)?;
            Ok(vec![
                json!({"manifest": m, "aliases": reg.aliases(&r.name)?,
                "history": reg.history(&r.name)?}),
            ])
        }
        RegistryCommand::Publish {
            target,
            model,
            kind,
            parent,
            eval_json,
            promote,
        } => {
            let kind = ModelKind::parse(kind)
                .with_context(|| format!("--kind `{kind}`: expected policy, cost or reward"))?;
            let r = parse_ref(target, "target")?;
            let eval = match eval_json {
                None => Value::Null,
                Some(p) => serde_json::from_str(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("--eval-json {}", p.display()))?,
                )
                .with_context(|| format!("--eval-json {}: not JSON", p.display()))?,
            };
            let command: Vec<String> = std::env::args().collect();
            let mut out = publish(
                &r,
                model,
                kind,
                parent.clone(),
                Provenance {
                    command: Some(command.join(" ")),
                    round: None,
                    data: json!({"source": model.display().to_string()}),
                },
                eval,
            )?;
            if *promote {
                let v = out["version"].as_str().unwrap_or_default().to_string();
                let old = r.open()?.promote(&r.name, &v)?;
                out["promoted"] = json!({"alias": "champion", "previous": old});
            }
            Ok(vec![out])
        }
        RegistryCommand::Promote {
            target,
            version,
            alias,
        } => {
            let (reg, r) = open_name(target)?;
            let v = reg.resolve(&r.name, version)?;
            let old = reg.promote_alias(&r.name, alias, &v)?;
            Ok(vec![
                json!({"name": r.name, "alias": alias, "version": v, "previous": old}),
            ])
        }
        RegistryCommand::Rollback { target } => {
            let (reg, r) = open_name(target)?;
            let v = reg.rollback(&r.name)?;
            Ok(vec![json!({"name": r.name, "champion": v})])
        }
        RegistryCommand::Gc { target, keep } => {
            let (reg, r) = open_name(target)?;
            let removed = reg.gc(&r.name, *keep)?;
            Ok(vec![json!({"name": r.name, "removed": removed})])
        }
    }
}
