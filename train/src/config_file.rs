//! `--config FILE` for every command: a TOML table whose keys are the command's long flags (`lr = 1e-5`,
//! `data = ["a.jsonl", "b.jsonl"]`, `head-only = true`). Its values are placed before the command-line flags, and
//! later flags override earlier ones, so the command line wins.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;

/// Expands `--config FILE` (anywhere after the subcommand) into flags.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(pos) = args.iter().position(|a| a == "--config") else {
        return Ok(args);
    };
    let Some(path) = args.get(pos + 1).cloned() else {
        bail!("--config needs a file")
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config {}", path.to_string_lossy()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{}: not valid TOML", path.to_string_lossy()))?;
    let mut flags: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let flag = OsString::from(format!("--{}", key.replace('_', "-")));
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                flags.push(flag);
                for it in items {
                    flags.push(scalar(&path, &key, it)?.into());
                }
            }
            other => {
                flags.push(flag);
                flags.push(scalar(&path, &key, other)?.into());
            }
        }
    }
    // Subcommand name stays first: insert the file's flags right after it.
    let mut out: Vec<OsString> = Vec::with_capacity(args.len() + flags.len());
    for (i, a) in args.into_iter().enumerate() {
        if i == pos || i == pos + 1 {
            continue;
        }
        out.push(a);
        if i == 1 {
            out.append(&mut flags);
        }
    }
    Ok(out)
}

fn scalar(path: &OsString, key: &str, v: toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!(
            "{}: key `{key}`: unsupported value {other}",
            path.to_string_lossy()
        ),
    })
}
