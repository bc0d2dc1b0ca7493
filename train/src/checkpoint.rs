//! Resumable checkpoints of a single-model run (`train-score`, `sft`): the trained tensors (adapter format), the
//! optimiser moments and `state.json`, written beside the checkpoint and renamed into place, so a crash leaves
//! either the previous checkpoint or the new one.

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
        save_adapter(model, tmp, tch::Kind::Float, meta)?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_string_pretty(&json!({"global_step": step, "args": args}))?,
        )?;
        Ok(())
    })
}

/// Loads the optimiser state of `dir` and returns its global step.
pub fn resume(dir: &Path, opt: &mut AdamW) -> Result<u64> {
    opt.load(&dir.join("optimizer.safetensors"))?;
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    let step = state["global_step"]
        .as_u64()
        .context("checkpoint state.json: global_step")?;
    eprintln!("resuming from {} at step {step}", dir.display());
    Ok(step)
}
