//! Builds the backbone from a weight source (safetensors or GGUF), tensor names as in HF.

use super::layers::{Embedding, Linear, RmsNorm};
use super::{Attention, Backbone, Block, Mlp};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::rope::RopeTables;
use crate::weights::{GgufWeights, MemoryWeights, SafetensorsWeights};
use candle_core::{DType, Device};

/// Anything that hands out the model's tensors by HF name.
pub trait WeightSource {
    fn contains(&self, name: &str) -> bool;
    fn describe(&self) -> String;
    fn is_gguf(&self) -> bool;
    /// Whether weights are held dense (not quantized).
    fn is_dense(&self) -> bool;
    fn device(&self) -> Device;
    /// Compute dtype for activations.
    fn dtype(&self) -> DType;
    /// `{prefix}.weight` `[out, in]` and, when `bias`, `{prefix}.bias` `[out]`.
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear>;
    fn vector(&self, name: &str, len: usize) -> Result<candle_core::Tensor>;
    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding>;
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: &str) -> bool {
        SafetensorsWeights::contains(self, name)
    }
    fn describe(&self) -> String {
        "the safetensors files".to_string()
    }
    fn is_gguf(&self) -> bool {
        false
    }
    fn is_dense(&self) -> bool {
        true
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::dense(w, b)?)
    }
    fn vector(&self, name: &str, len: usize) -> Result<candle_core::Tensor> {
        self.get(name, &[len])
    }
    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        Ok(Embedding::Dense(self.get(name, &[vocab, hidden])?))
    }
}

impl WeightSource for MemoryWeights {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn describe(&self) -> String {
        "the in-memory weights".to_string()
    }
    fn is_gguf(&self) -> bool {
        false
    }
    fn is_dense(&self) -> bool {
        true
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::dense(w, b)?)
    }
    fn vector(&self, name: &str, len: usize) -> Result<candle_core::Tensor> {
        self.get(name, &[len])
    }
    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        Ok(Embedding::Dense(self.get(name, &[vocab, hidden])?))
    }
}

impl WeightSource for GgufWeights {
    fn contains(&self, name: &str) -> bool {
        GgufWeights::contains(self, name)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn is_gguf(&self) -> bool {
        true
    }
    fn is_dense(&self) -> bool {
        self.dequantize
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn dtype(&self) -> DType {
        DType::F32
    }
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.qtensor(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.dense(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        if self.dequantize {
            return Ok(Linear::dense(w.dequantize(&self.device)?, b)?);
        }
        Ok(Linear::quantized(w, b, self.host_kernels)?)
    }
    fn vector(&self, name: &str, len: usize) -> Result<candle_core::Tensor> {
        self.dense(name, &[len])
    }
    fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let q = self.qtensor(name, &[vocab, hidden])?;
        if self.dequantize {
            return Ok(Embedding::Dense(q.dequantize(&self.device)?));
        }
        Ok(Embedding::Quant(q))
    }
}

pub(super) fn backbone(
    cfg: &ModelConfig,
    src: &dyn WeightSource,
    host_kernels: bool,
) -> Result<Backbone> {
    // Causal-LM and score checkpoints nest the backbone under `model.`; a bare `LlamaModel`
    // save does not.
    let p = if !src.contains("model.embed_tokens.weight") && src.contains("embed_tokens.weight") {
        ""
    } else {
        "model."
    };
    let (h, nh, nkv, d) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let ffn = cfg.intermediate_size;
    let embed = src.embedding(&format!("{p}embed_tokens.weight"), cfg.vocab_size, h)?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let l = format!("{p}layers.{i}");
        layers.push(Block {
            attn_norm: RmsNorm::new(
                src.vector(&format!("{l}.input_layernorm.weight"), h)?,
                cfg.rms_norm_eps,
            ),
            attn: Attention {
                qkv: Linear::fuse(vec![
                    src.linear(&format!("{l}.self_attn.q_proj"), nh * d, h, cfg.qkv_bias)?,
                    src.linear(&format!("{l}.self_attn.k_proj"), nkv * d, h, cfg.qkv_bias)?,
                    src.linear(&format!("{l}.self_attn.v_proj"), nkv * d, h, cfg.qkv_bias)?,
                ])?,
                o: src.linear(&format!("{l}.self_attn.o_proj"), h, nh * d, cfg.o_bias)?,
            },
            mlp_norm: RmsNorm::new(
                src.vector(&format!("{l}.post_attention_layernorm.weight"), h)?,
                cfg.rms_norm_eps,
            ),
            mlp: Mlp {
                gate_up: Linear::fuse(vec![
                    src.linear(&format!("{l}.mlp.gate_proj"), ffn, h, cfg.mlp_bias)?,
                    src.linear(&format!("{l}.mlp.up_proj"), ffn, h, cfg.mlp_bias)?,
                ])?,
                down: src.linear(&format!("{l}.mlp.down_proj"), h, ffn, cfg.mlp_bias)?,
            },
        });
    }
    let norm = RmsNorm::new(src.vector(&format!("{p}norm.weight"), h)?, cfg.rms_norm_eps);
    let device = src.device();
    let dtype = src.dtype();
    let rope = RopeTables::new(cfg, dtype, &device)?;
    Ok(Backbone {
        host_kernels,
        // Quantized models carry far more error than f16 keys/values add; dense f32 models
        // keep f32 caches (bit-for-bit parity with their full forward pass).
        kv_dtype: if src.is_gguf() && src.dtype() == DType::F32 && !src.is_dense() {
            super::KvDtype::F16
        } else {
            super::KvDtype::F32
        },
        cfg: cfg.clone(),
        embed,
        layers,
        norm,
        rope,
        device,
        dtype,
    })
}

/// The output projection shared with the input embedding.
pub(super) fn tied_head(embed: &Embedding, host_kernels: bool) -> Result<Linear> {
    Ok(match embed {
        Embedding::Dense(w) => Linear::dense(w.clone(), None)?,
        Embedding::Quant(q) => Linear::quantized(q.clone(), None, host_kernels)?,
    })
}
