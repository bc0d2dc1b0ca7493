//! Optimisation as safe-rlhf does it (spec §3.10): AdamW (β 0.9/0.95) with weight decay on every parameter except
//! those whose lower-cased name contains `bias` or `layernorm.weight`, global gradient-norm clipping, and a
//! learning rate with linear warmup then cosine decay to zero (or constant). State saves and loads for resuming.

use anyhow::{Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub lr: f64,
    pub kind: Schedule,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// `warmup_ratio` of `total_steps` (rounded down) warm up linearly.
    pub fn new(lr: f64, kind: Schedule, warmup_ratio: f64, total_steps: u64) -> Self {
        Self {
            lr,
            kind,
            warmup_steps: (warmup_ratio * total_steps as f64) as u64,
            total_steps: total_steps.max(1),
        }
    }

    /// The rate for optimiser step `step` (0-based), as transformers' schedulers compute it.
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        match self.kind {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Does weight decay apply to this parameter? (safe-rlhf: not to biases and layer-norm weights.)
pub fn decays(name: &str) -> bool {
    let n = name.to_lowercase();
    !(n.contains("bias") || n.contains("layernorm.weight"))
}

struct Slot {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

pub struct AdamW {
    slots: Vec<Slot>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, weight_decay: f64) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param)| Slot {
                decay: decays(&name),
                m: param.zeros_like().to_kind(Kind::Float),
                v: param.zeros_like().to_kind(Kind::Float),
                name,
                param,
            })
            .collect();
        Self {
            slots,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _g = tch::no_grad_guard();
        let mut total = 0.0;
        for s in &self.slots {
            let g = s.param.grad();
            if g.defined() {
                total += g.norm().double_value(&[]).powi(2);
            }
        }
        let norm = total.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for s in &self.slots {
                let mut g = s.param.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// One AdamW step at learning rate `lr` (decoupled decay `p ← p − lr·wd·p`).
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        for s in &mut self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            if s.decay && self.weight_decay > 0.0 {
                let _ = s.param.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            // In place, two temporaries per parameter (g², the denominator), as torch's AdamW does it:
            // m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − lr/bc1 · m / (√v/√bc2 + ε).
            let _ = s.m.lerp_(&g, 1.0 - b1);
            let _ = s.v.lerp_(&g.square(), 1.0 - b2);
            if lr == 0.0 {
                continue; // warm-up step 0: moments only
            }
            let mut denom = s.v.sqrt();
            let _ = denom.g_div_scalar_(bc2.sqrt());
            let _ = denom.g_add_scalar_(self.eps);
            let _ = denom.g_div_scalar_(-lr / bc1);
            if s.param.kind() == Kind::Float {
                let _ = s.param.addcdiv_(&s.m, &denom);
            } else {
                let _ = s.param.g_add_(&(&s.m / &denom).to_kind(s.param.kind()));
            }
        }
    }

    /// Writes the moments and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(self.slots.len() * 2 + 1);
        for s in &self.slots {
            tensors.push((
                format!("{}.exp_avg", s.name),
                s.m.to_device(tch::Device::Cpu),
            ));
            tensors.push((
                format!("{}.exp_avg_sq", s.name),
                s.v.to_device(tch::Device::Cpu),
            ));
        }
        tensors.push(("step".into(), Tensor::from_slice(&[self.step as i64])));
        Tensor::write_safetensors(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
        let _g = tch::no_grad_guard();
        for s in &mut self.slots {
            let m = map
                .get(&format!("{}.exp_avg", s.name))
                .with_context(|| format!("{}: no state for `{}`", path.display(), s.name))?;
            let v = map
                .get(&format!("{}.exp_avg_sq", s.name))
                .with_context(|| format!("{}: no state for `{}`", path.display(), s.name))?;
            s.m.copy_(m);
            s.v.copy_(v);
        }
        self.step = map
            .get("step")
            .map(|t| t.int64_value(&[0]) as u64)
            .unwrap_or(0);
        Ok(())
    }
}
