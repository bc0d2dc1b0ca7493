//! `safeloop-train convert`: a GGUF policy (e.g. the default SmolLM2 Q4_1) → an f32/bf16 HF directory the trainer
//! (and the candle side) loads. Quantized tensors are dequantized exactly; llama.cpp's q/k row permutation (for
//! interleaved RoPE) is undone so the directory uses HF's rotate-half layout; the tokenizer and chat template come
//! from the GGUF metadata.

use crate::model::{save_hf_dir, HeadKind, Model, SaveOptions};
use anyhow::{Context, Result};
use safeloop_shared::config::{self, Head, ModelConfig};
use safeloop_shared::tokenizer::Tokenizer;
use safeloop_shared::weights::GgufWeights;
use serde_json::json;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Converts `gguf` into the HF directory `out` stored as `kind`.
pub fn gguf_to_hf(gguf: &Path, out: &Path, kind: Kind) -> Result<ModelConfig> {
    let weights = GgufWeights::open(gguf, &candle_core::Device::Cpu)?;
    let mut cfg = config::from_gguf_metadata(&weights.content.metadata, gguf)?;
    let tokenizer = Tokenizer::from_gguf(&weights.content, gguf)?;
    let interleaved = cfg.rope_interleaved;
    cfg.rope_interleaved = false;
    cfg.head = Head::CausalLm;
    // GGUF files of tied models simply lack `output.weight`.
    cfg.tie_word_embeddings = !weights.contains("lm_head.weight");
    let model = Model::new(&cfg, HeadKind::Lm, Device::Cpu)?;
    let _g = tch::no_grad_guard();
    for (name, mut var) in model.vs.variables() {
        let shape: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
        let t = weights
            .dense(&name, &shape)
            .with_context(|| format!("{}: tensor {name}", gguf.display()))?;
        let data: Vec<f32> = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let mut t = Tensor::from_slice(&data).view(var.size().as_slice());
        if interleaved {
            if name.ends_with("self_attn.q_proj.weight") {
                t = unpermute(&t, cfg.num_attention_heads);
            } else if name.ends_with("self_attn.k_proj.weight") {
                t = unpermute(&t, cfg.num_key_value_heads);
            }
        }
        var.copy_(&t);
    }
    save_hf_dir(
        &model,
        out,
        &SaveOptions {
            kind,
            ..Default::default()
        },
    )?;
    write_tokenizer(&tokenizer, &cfg, out)?;
    Ok(cfg)
}

/// Inverse of llama.cpp's `permute` (`w.reshape(h, 2, d/2, in).swapaxes(1, 2)`): interleaved rows back to halves.
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = (w.size()[0], w.size()[1]);
    let h = heads as i64;
    w.reshape([h, out / h / 2, 2, inp])
        .transpose(1, 2)
        .reshape([out, inp])
}

fn write_tokenizer(tok: &Tokenizer, cfg: &ModelConfig, out: &Path) -> Result<()> {
    tok.inner()
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.join("tokenizer.json").display()))?;
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "pad_token": name(tok.pad_token_id()),
        "add_bos_token": false,
        "chat_template": tok.chat_template().map(|t| t.source().to_string()),
        "model_max_length": cfg.max_position_embeddings,
    });
    std::fs::write(
        out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tc)?,
    )?;
    let gen = json!({"eos_token_id": tok.eos_token_ids(), "bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id});
    std::fs::write(
        out.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)?,
    )?;
    Ok(())
}
