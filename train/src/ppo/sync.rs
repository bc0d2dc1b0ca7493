//! Hands the actor's current weights (tch) to the serving engine's model (candle) in memory, after every update,
//! so the next rollout samples from the updated policy. No files are written.

use crate::model::Model;
use anyhow::Result;
use candle_core::{DType, Device, Tensor as CTensor};
use safeloop_shared::config::Head;
use safeloop_shared::model::CausalLm;
use safeloop_shared::weights::MemoryWeights;
use std::collections::HashMap;

/// A candle causal LM with the tch model's weights (LoRA adapters folded in).
pub fn to_candle(model: &Model) -> Result<CausalLm> {
    let mut tensors = HashMap::new();
    for (name, t) in model.export_tensors() {
        let t = t
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<f32>::try_from(t.flatten(0, -1))?;
        tensors.insert(name, CTensor::from_vec(data, shape, &Device::Cpu)?);
    }
    let src = MemoryWeights {
        tensors,
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let mut cfg = model.cfg.clone();
    cfg.head = Head::CausalLm;
    Ok(CausalLm::load(&cfg, &src, true)?)
}
