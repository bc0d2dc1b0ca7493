//! Building blocks: linear layers over dense or quantized weights, embeddings, RMSNorm.

use crate::quant::QuantMatrix;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use std::sync::Arc;

/// `y = x·Wᵀ (+ b)` with W stored `[out, in]`, dense or quantized.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    out_features: usize,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// Stored `[out, in]`; the matmul reads it through a transposed view (no copy, so a
    /// tied embedding shares its storage).
    Dense(Tensor),
    /// Q4_0/Q4_1/Q8_0 on CPU: our batched kernel.
    Packed(Arc<QuantMatrix>),
    /// Other quantized formats, or other devices: candle's quantized matmul.
    Quant(QMatMul),
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let out_features = weight.dim(0)?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            out_features,
        })
    }

    /// `host_kernels`: use safeloop's CPU kernels where the format has one.
    pub fn quantized(
        weight: Arc<QTensor>,
        bias: Option<Tensor>,
        host_kernels: bool,
    ) -> Result<Self> {
        let out_features = weight.shape().dims()[0];
        let packed = if host_kernels {
            QuantMatrix::from_qtensor(&weight)?
        } else {
            None
        };
        let weight = match packed {
            Some(m) => LinearWeight::Packed(Arc::new(m)),
            None => LinearWeight::Quant(QMatMul::from_arc(weight)?),
        };
        Ok(Self {
            weight,
            bias,
            out_features,
        })
    }

    /// Stacks layers that read the same input (q/k/v, gate/up) into one matmul where the
    /// weights allow it; otherwise keeps them apart.
    pub fn fuse(parts: Vec<Linear>) -> Result<Fused> {
        let sizes: Vec<usize> = parts.iter().map(|p| p.out_features).collect();
        let out_features = sizes.iter().sum();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let bias = match biases {
            Some(b) => Some(Tensor::cat(&b, 0)?),
            None if parts.iter().all(|p| p.bias.is_none()) => None,
            None => {
                return Ok(Fused {
                    kind: FusedKind::Many(parts),
                    sizes,
                })
            }
        };
        let weight = match parts.first().map(|p| &p.weight) {
            Some(LinearWeight::Dense(_)) => {
                let ws: Option<Vec<&Tensor>> = parts
                    .iter()
                    .map(|p| match &p.weight {
                        LinearWeight::Dense(w) => Some(w),
                        _ => None,
                    })
                    .collect();
                ws.map(|ws| Tensor::cat(&ws, 0))
                    .transpose()?
                    .map(LinearWeight::Dense)
            }
            Some(LinearWeight::Packed(_)) => {
                let ms: Option<Vec<&QuantMatrix>> = parts
                    .iter()
                    .map(|p| match &p.weight {
                        LinearWeight::Packed(m) => Some(m.as_ref()),
                        _ => None,
                    })
                    .collect();
                ms.and_then(|ms| QuantMatrix::concat_rows(&ms))
                    .map(|m| LinearWeight::Packed(Arc::new(m)))
            }
            _ => None,
        };
        Ok(match weight {
            Some(weight) => Fused {
                kind: FusedKind::One(Linear {
                    weight,
                    bias,
                    out_features,
                }),
                sizes,
            },
            None => Fused {
                kind: FusedKind::Many(parts),
                sizes,
            },
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x`: `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.t()?)?,
            LinearWeight::Packed(m)
                if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 =>
            {
                m.forward(x)?
            }
            LinearWeight::Packed(_) => {
                candle_core::bail!("packed quantized weights run on CPU in f32")
            }
            LinearWeight::Quant(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Several projections of the same input computed as one matmul when possible.
#[derive(Debug, Clone)]
pub struct Fused {
    kind: FusedKind,
    sizes: Vec<usize>,
}

#[derive(Debug, Clone)]
enum FusedKind {
    One(Linear),
    Many(Vec<Linear>),
}

impl Fused {
    /// `x` `[n, in]` → one `[n, out_i]` tensor per part.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match &self.kind {
            FusedKind::Many(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            FusedKind::One(l) => {
                let y = l.forward(x)?;
                let mut off = 0;
                self.sizes
                    .iter()
                    .map(|&s| {
                        let part = y.narrow(1, off, s);
                        off += s;
                        part
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

impl Embedding {
    /// `ids`: `[n]` u32 → `[n, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(w) => w.index_select(ids, 0),
            Embedding::Quant(q) => q.embedding(ids),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}
