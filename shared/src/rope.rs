//! Rotary position embedding tables, with the `linear` and `llama3` frequency scalings
//! computed exactly as transformers does (in f32 after an f64 base computation).

use crate::config::{ModelConfig, RopeScaling};
use candle_core::{DType, Device, Result, Tensor};

/// `inv_freq_i = theta^(-2i/d)`, then scaled.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32)
        .collect();
    match cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let low_wl = original_max_position_embeddings / low_freq_factor;
            let high_wl = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wl = 2.0 * std::f64::consts::PI / f as f64;
                    if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        (f as f64 / factor) as f32
                    } else {
                        let s = (original_max_position_embeddings / wl - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - s) * f as f64 / factor + s * f as f64) as f32
                    }
                })
                .collect()
        }
    }
}

/// Precomputed cos/sin tables `[max_positions, head_dim/2]`; rows are gathered per token.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub interleaved: bool,
    max_positions: usize,
}

impl RopeTables {
    pub fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inv_freq(cfg);
        let half = inv.len();
        let n = cfg.max_position_embeddings.max(1);
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &inv {
                // transformers computes the angle in f32.
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
            interleaved: cfg.rope_interleaved,
            max_positions: n,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The cos/sin rows for `positions` (`[n]` u32), gathered once per forward pass and
    /// shared by every layer's q and k.
    pub fn gather(&self, positions: &Tensor) -> Result<RopeRows> {
        let n = positions.dim(0)?;
        let half = self.cos.dim(1)?;
        Ok(RopeRows {
            cos: self.cos.index_select(positions, 0)?.reshape((n, 1, half))?,
            sin: self.sin.index_select(positions, 0)?.reshape((n, 1, half))?,
            interleaved: self.interleaved,
        })
    }
}

/// cos/sin for the tokens of one forward pass, `[n, 1, head_dim/2]`.
pub struct RopeRows {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl RopeRows {
    /// Applies RoPE to `x` of shape `[n_tokens, n_heads, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, d) = x.dims3()?;
        // Each token is its own batch row with a sequence of one: [n, h, 1, d].
        let x = x.reshape((n, h, 1, d))?.contiguous()?;
        let y = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?
        };
        y.reshape((n, h, d))
    }
}
