//! The model configuration every part agrees on, read from an HF `config.json` (Llama family:
//! `llama`, `mistral`, `qwen2`, and the safe-rlhf `LlamaModelForScore`) or from GGUF metadata.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub const SUPPORTED_ARCHITECTURES: &str = "llama, mistral, qwen2 (causal LM or LlamaModelForScore)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// RoPE frequency scaling (`rope_scaling` in transformers 4.x, `rope_parameters` in 5.x).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// What kind of head sits on the backbone.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// `lm_head` (or the tied embedding) producing vocabulary logits.
    CausalLm,
    /// safe-rlhf score head: Linear(hidden → score_dim) with optional bias.
    Score {
        score_dim: usize,
        bias: bool,
        /// `reward`, `cost` or `critic` as written in the config (informational).
        score_type: Option<String>,
        /// How a sequence's score comes from the per-token scores (`score_pooling`; default `end`).
        pooling: ScorePooling,
    },
}

/// How a score model turns per-token scores into the sequence's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScorePooling {
    /// The score at the last token (safe-rlhf's `end_scores`).
    #[default]
    End,
    /// The mean of the per-token scores over the whole sequence (prompt and response). The head is linear, so
    /// this is the head applied to the mean hidden state.
    Mean,
}

impl ScorePooling {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "end" => Some(Self::End),
            "mean" => Some(Self::Mean),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::End => "end",
            Self::Mean => "mean",
        }
    }

    /// The sequence score from per-token scores `[len][dim]`.
    pub fn pool(self, per_token: &[Vec<f32>]) -> Vec<f32> {
        match self {
            Self::End => per_token.last().cloned().unwrap_or_default(),
            Self::Mean => {
                let dim = per_token.first().map_or(0, Vec::len);
                let mut acc = vec![0f64; dim];
                for row in per_token {
                    for (a, x) in acc.iter_mut().zip(row) {
                        *a += *x as f64;
                    }
                }
                let n = per_token.len().max(1) as f64;
                acc.into_iter().map(|a| (a / n) as f32).collect()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub head: Head,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// GGUF files converted from Llama checkpoints store q/k rows permuted for interleaved RoPE.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (qwen2 always; llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn num_kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Reads and validates `config.json` in an HF model directory.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, "<json>", format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&value, path)
    }

    pub fn from_hf_json(value: &Value, file: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(file, "<root>", "expected a JSON object"))?;
        let f = Fields { obj, file };
        let architectures: Vec<String> = match obj.get("architectures") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        };
        let model_type = f.opt_str("model_type")?;
        let is_score = architectures.iter().any(|a| a.ends_with("ForScore"));
        let family = match model_type.as_deref() {
            Some("llama") => Family::Llama,
            Some("mistral") => Family::Mistral,
            Some("qwen2") => Family::Qwen2,
            Some(other) => return Err(unsupported(other, file)),
            None => match architectures.first().map(String::as_str) {
                Some(a) if a.starts_with("Llama") => Family::Llama,
                Some(a) if a.starts_with("Mistral") => Family::Mistral,
                Some(a) if a.starts_with("Qwen2") => Family::Qwen2,
                Some(a) => return Err(unsupported(a, file)),
                None => {
                    return Err(Error::config(
                        file,
                        "model_type",
                        "missing (and no `architectures` entry to infer it from)",
                    ))
                }
            },
        };
        if let Some(a) = architectures.first() {
            let known = [
                "LlamaForCausalLM",
                "MistralForCausalLM",
                "Qwen2ForCausalLM",
                "LlamaModelForScore",
                "MistralModelForScore",
                "Qwen2ModelForScore",
                "LlamaModel",
                "Qwen2Model",
                "MistralModel",
            ];
            if !known.contains(&a.as_str()) {
                return Err(unsupported(a, file));
            }
        }
        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(Error::config(
                    file,
                    "hidden_act",
                    format!("`{act}` is not supported (only silu)"),
                ));
            }
        }

        let hidden_size = f.req_usize("hidden_size")?;
        let num_attention_heads = f.req_usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 {
            return Err(Error::config(
                file,
                "num_attention_heads",
                "must be positive",
            ));
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::config(
                file,
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(Error::config(
                        file,
                        "hidden_size",
                        "not divisible by num_attention_heads and no head_dim given",
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::config(file, "head_dim", "must be even for RoPE"));
        }

        // Rope: 5.x `rope_parameters` first, then 4.x `rope_theta` + `rope_scaling`.
        let rope_params = obj.get("rope_parameters").filter(|v| !v.is_null());
        let rope_theta = match rope_params.and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::config(file, "rope_parameters.rope_theta", "expected a number")
            })?,
            None => f.opt_f64("rope_theta")?.unwrap_or(10_000.0),
        };
        let rope_scaling = match rope_params {
            Some(p) => parse_rope_scaling(p, "rope_parameters", file)?,
            None => match obj.get("rope_scaling").filter(|v| !v.is_null()) {
                Some(s) => parse_rope_scaling(s, "rope_scaling", file)?,
                None => RopeScaling::None,
            },
        };

        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            _ => {
                let b = f.opt_bool("attention_bias")?.unwrap_or(false);
                (b, b)
            }
        };
        let sliding_window = match family {
            Family::Mistral => f.opt_usize("sliding_window")?,
            Family::Qwen2 if f.opt_bool("use_sliding_window")?.unwrap_or(false) => {
                f.opt_usize("sliding_window")?
            }
            _ => None,
        };
        let head = if is_score {
            let score_dim = f.opt_usize("score_dim")?.unwrap_or(1);
            let bias = match f.opt_bool("score_bias")? {
                Some(b) => b,
                None => f.opt_bool("bias")?.unwrap_or(false),
            };
            if f.opt_bool("do_normalize")?.unwrap_or(false) {
                return Err(Error::config(
                    file,
                    "do_normalize",
                    "score normalisation is not supported; export the model with do_normalize=false",
                ));
            }
            let pooling = match f.opt_str("score_pooling")? {
                None => ScorePooling::End,
                Some(p) => ScorePooling::parse(&p).ok_or_else(|| {
                    Error::config(file, "score_pooling", format!("`{p}` is not end or mean"))
                })?,
            };
            Head::Score {
                score_dim,
                bias,
                score_type: f.opt_str("score_type")?,
                pooling,
            }
        } else {
            Head::CausalLm
        };

        Ok(ModelConfig {
            family,
            head,
            vocab_size: f.req_usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.req_usize("intermediate_size")?,
            num_hidden_layers: f.req_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_interleaved: false,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false),
            sliding_window,
            bos_token_id: f.opt_token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.opt_token_ids("eos_token_id")?,
            pad_token_id: f.opt_token_ids("pad_token_id")?.first().copied(),
        })
    }
}

fn unsupported(arch: &str, file: &Path) -> Error {
    Error::UnsupportedArchitecture {
        arch: arch.to_string(),
        file: file.to_path_buf(),
        supported: SUPPORTED_ARCHITECTURES,
    }
}

fn parse_rope_scaling(v: &Value, key: &str, file: &Path) -> Result<RopeScaling> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(file, key, "expected an object"))?;
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |name: &str| -> Result<f64> {
        obj.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::config(file, &format!("{key}.{name}"), "missing or not a number"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(Error::config(
            file,
            &format!("{key}.rope_type"),
            format!("`{other}` is not supported (default, linear, llama3)"),
        )),
    }
}

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'a Path,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }
    fn err(&self, name: &str, msg: &str) -> Error {
        Error::config(PathBuf::from(self.file), name, msg)
    }
    fn req_usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?
            .ok_or_else(|| self.err(name, "missing"))
    }
    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(name, "expected a non-negative integer")),
        }
    }
    fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(name, "expected a number")),
        }
    }
    fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(name, "expected true or false")),
        }
    }
    fn opt_str(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(name, "expected a string")),
        }
    }
    /// Token id fields may be a single integer or a list.
    fn opt_token_ids(&self, name: &str) -> Result<Vec<u32>> {
        match self.get(name) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.err(name, "expected integer token ids"))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|n| vec![n as u32])
                .ok_or_else(|| self.err(name, "expected an integer token id or a list")),
        }
    }
}

/// `generation_config.json` eos ids (they take precedence in HF's generate).
pub fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(&path, "<json>", format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::config(&path, "<root>", "expected a JSON object"))?;
    Fields { obj, file: &path }.opt_token_ids("eos_token_id")
}

/// Builds the configuration from GGUF metadata (`general.architecture` = llama or qwen2).
pub fn from_gguf_metadata(
    md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
    file: &Path,
) -> Result<ModelConfig> {
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| Error::config(file, "general.architecture", "missing"))?;
    let family = match arch.as_str() {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        other => return Err(unsupported(other, file)),
    };
    let key = |k: &str| format!("{arch}.{k}");
    let num = |k: &str| -> Result<Option<f64>> {
        use candle_core::quantized::gguf_file::Value as V;
        Ok(match md.get(&key(k)) {
            None => None,
            Some(V::U8(v)) => Some(*v as f64),
            Some(V::U16(v)) => Some(*v as f64),
            Some(V::U32(v)) => Some(*v as f64),
            Some(V::U64(v)) => Some(*v as f64),
            Some(V::I32(v)) => Some(*v as f64),
            Some(V::I64(v)) => Some(*v as f64),
            Some(V::F32(v)) => Some(*v as f64),
            Some(V::F64(v)) => Some(*v),
            Some(_) => return Err(Error::config(file, &key(k), "expected a number")),
        })
    };
    let req = |k: &str| -> Result<usize> {
        num(k)?
            .map(|v| v as usize)
            .ok_or_else(|| Error::config(file, &key(k), "missing"))
    };
    let hidden_size = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = num("attention.head_count_kv")?.map_or(heads, |v| v as usize);
    let head_dim = num("rope.dimension_count")?.map_or(hidden_size / heads.max(1), |v| v as usize);
    let vocab_size = match num("vocab_size")? {
        Some(v) => v as usize,
        None => md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.len())
            .ok_or_else(|| Error::config(file, &key("vocab_size"), "missing"))?,
    };
    let rope_scaling = match md
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: num("rope.scaling.factor")?.unwrap_or(1.0),
        },
        Some(other) => {
            return Err(Error::config(
                file,
                &key("rope.scaling.type"),
                format!("`{other}` is not supported"),
            ))
        }
    };
    let tok = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    Ok(ModelConfig {
        family,
        head: Head::CausalLm,
        vocab_size,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        num_hidden_layers: req("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: num("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
        rope_theta: num("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
        // llama.cpp's converter permutes llama q/k rows for its interleaved rope; qwen2 uses
        // the NeoX (rotate-half) form unpermuted.
        rope_interleaved: family == Family::Llama,
        max_position_embeddings: req("context_length")?,
        tie_word_embeddings: false,
        qkv_bias: family == Family::Qwen2,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: tok("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: tok("tokenizer.ggml.padding_token_id"),
    })
}
