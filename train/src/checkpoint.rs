//! Resumable checkpoints: the trained tensors of each model (adapter format), their optimiser moments and
//! `state.json`, written beside the checkpoint and renamed into place, so a crash leaves either the previous
//! checkpoint or the new one. A single-model run (`train-score`, `sft`) keeps its model at the top of the
//! directory; a run with several models (PPO: actor and critics) keeps one sub-directory per part.

use crate::model::{save_adapter, write_dir_atomically, Model};
use crate::optim::AdamW;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Writes `dir` (atomically): trainable tensors with `meta`, optimiser state, `{"global_step", "args"}`.
pub fn save(
    dir: &Path,
    model: &Model,
    opt: &AdamW,
    step: u64,
    args: &impl serde::Serialize,
    meta: Value,
) -> Result<()> {
    write_dir_atomically(dir, |tmp| {
        write_part(tmp, model, opt, meta)?;
        write_state(tmp, &json!({"global_step": step, "args": args}))
    })
}

/// Writes `dir` (atomically) with one sub-directory per named part and `state` (which must hold `global_step`).
pub fn save_parts(dir: &Path, parts: &[(&str, &Model, &AdamW)], state: &Value) -> Result<()> {
    write_dir_atomically(dir, |tmp| {
        for (name, model, opt) in parts {
            write_part(&tmp.join(name), model, opt, json!({}))?;
        }
        write_state(tmp, state)
    })
}

fn write_part(dir: &Path, model: &Model, opt: &AdamW, meta: Value) -> Result<()> {
    save_adapter(model, dir, tch::Kind::Float, meta)?;
    opt.save(&dir.join("optimizer.safetensors"))
}

fn write_state(dir: &Path, state: &Value) -> Result<()> {
    std::fs::write(dir.join("state.json"), serde_json::to_string_pretty(state)?)?;
    Ok(())
}

/// `state.json` of a checkpoint, or `None` when `dir` holds none.
pub fn read_state(dir: &Path) -> Result<Option<Value>> {
    let file = dir.join("state.json");
    if !file.is_file() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)
        .with_context(|| format!("{}: not valid JSON", file.display()))?;
    v["global_step"]
        .as_u64()
        .with_context(|| format!("{}: no global_step", file.display()))?;
    Ok(Some(v))
}

/// Loads the optimiser state of `dir` and returns its global step.
pub fn resume(dir: &Path, opt: &mut AdamW) -> Result<u64> {
    opt.load(&dir.join("optimizer.safetensors"))?;
    let state = read_state(dir)?.with_context(|| format!("{}: no state.json", dir.display()))?;
    let step = state["global_step"].as_u64().unwrap_or(0);
    eprintln!("resuming from {} at step {step}", dir.display());
    Ok(step)
}

/// Loads a part written by `save_parts` into a freshly built model and its optimiser.
pub fn load_part(dir: &Path, model: &mut Model, opt: &mut AdamW) -> Result<()> {
    let file = dir.join("adapter.safetensors");
    {
        let mut vars = model.vs.variables();
        let _g = tch::no_grad_guard();
        for (name, t) in tch::Tensor::read_safetensors(&file)
            .with_context(|| format!("reading {}", file.display()))?
        {
            let v = vars
                .get_mut(&name)
                .with_context(|| format!("{}: unknown tensor `{name}`", file.display()))?;
            v.copy_(&t);
        }
    }
    opt.load(&dir.join("optimizer.safetensors"))
}
