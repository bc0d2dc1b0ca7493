//! One entry point for loading a policy or score model with its tokenizer from an HF
//! directory or a `.gguf` file.

use crate::config::{self, Head, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{CausalLm, ScoreModel, WeightSource};
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufWeights, SafetensorsWeights};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype for dense (safetensors) weights; GGUF weights stay quantized.
    pub dtype: DType,
    /// Check the file against this sha256 before loading (GGUF files only).
    pub sha256: Option<String>,
    /// safeloop's CPU kernels (quantized matmul, host KV cache and attention) where they
    /// apply; `false` runs candle's ops only, the path GPUs take.
    pub host_kernels: bool,
    /// GGUF only: dequantize all weights to dense f32 at load (exact, ~4 bytes per weight).
    pub dequantize: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            sha256: None,
            host_kernels: true,
            dequantize: false,
        }
    }
}

/// A loaded model, its tokenizer, and where it came from.
pub struct Loaded<M> {
    pub model: M,
    pub tokenizer: Tokenizer,
    pub config: ModelConfig,
    pub path: PathBuf,
}

enum Source {
    Dir(SafetensorsWeights),
    Gguf(GgufWeights),
}

fn open(path: &Path, opts: &LoadOptions) -> Result<(ModelConfig, Source, Tokenizer)> {
    crate::runtime::init_cpu_threads();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model file or directory",
            ),
        ));
    }
    if let Some(sha) = &opts.sha256 {
        if path.is_file() {
            crate::assets::verify_sha256(path, sha)?;
        }
    }
    if path.is_dir() {
        let cfg = ModelConfig::from_hf_file(&path.join("config.json"))?;
        let gen_eos = config::generation_eos_ids(path)?;
        let tokenizer = Tokenizer::from_hf_dir(path, &cfg, &gen_eos)?;
        let weights = SafetensorsWeights::open(path, opts.dtype, &opts.device)?;
        Ok((cfg, Source::Dir(weights), tokenizer))
    } else {
        let mut weights = GgufWeights::open(path, &opts.device)?;
        weights.host_kernels = opts.host_kernels;
        weights.dequantize = opts.dequantize;
        let cfg = config::from_gguf_metadata(&weights.content.metadata, path)?;
        let tokenizer = Tokenizer::from_gguf(&weights.content, path)?;
        Ok((cfg, Source::Gguf(weights), tokenizer))
    }
}

impl Source {
    fn as_dyn(&self) -> &dyn WeightSource {
        match self {
            Source::Dir(w) => w,
            Source::Gguf(w) => w,
        }
    }
}

/// Loads a causal LM (the policy) from an HF directory or a `.gguf` file.
pub fn load_causal_lm(path: &Path, opts: &LoadOptions) -> Result<Loaded<CausalLm>> {
    let (cfg, src, tokenizer) = open(path, opts)?;
    let model = CausalLm::load(&cfg, src.as_dyn(), opts.host_kernels)?;
    Ok(Loaded {
        model,
        tokenizer,
        config: cfg,
        path: path.to_path_buf(),
    })
}

/// Loads a score model (safe-rlhf layout: backbone + `score_head`).
pub fn load_score_model(path: &Path, opts: &LoadOptions) -> Result<Loaded<ScoreModel>> {
    let (cfg, src, tokenizer) = open(path, opts)?;
    if !matches!(cfg.head, Head::Score { .. }) {
        return Err(Error::config(
            path.join("config.json"),
            "architectures",
            "a score model needs [\"LlamaModelForScore\"] (backbone + score_head)",
        ));
    }
    let model = ScoreModel::load(&cfg, src.as_dyn(), opts.host_kernels)?;
    Ok(Loaded {
        model,
        tokenizer,
        config: cfg,
        path: path.to_path_buf(),
    })
}

impl<M> std::fmt::Debug for Loaded<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer)
            .finish_non_exhaustive()
    }
}
