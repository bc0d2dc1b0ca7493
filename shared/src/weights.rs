//! Where tensors come from: HF safetensors (single file or sharded by
//! `model.safetensors.index.json`) or a GGUF file. Both are addressed by HF tensor names;
//! the GGUF source translates them to llama.cpp names.

use crate::error::{Error, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Lists the safetensors files of an HF directory: the shards named by the index, or
/// `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&index, "<json>", format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::config(&index, "weight_map", "missing or not an object"))?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::config(
                    &index,
                    &format!("weight_map.{name}"),
                    "expected a file name",
                )
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(Error::config(
                    &index,
                    &format!("weight_map.{name}"),
                    "shard names must be plain file names",
                ));
            }
            files.insert(dir.join(file));
        }
        if files.is_empty() {
            return Err(Error::config(&index, "weight_map", "is empty"));
        }
        return Ok(files.into_iter().collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::io(
        single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors or model.safetensors.index.json in the model directory",
        ),
    ))
}

/// Memory-mapped safetensors, converted to `dtype` on load.
pub struct SafetensorsWeights {
    st: candle_core::safetensors::MmapedSafetensors,
    desc: String,
    pub device: Device,
    pub dtype: DType,
}

impl SafetensorsWeights {
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = safetensors_files(dir)?;
        for f in &files {
            if !f.exists() {
                return Err(Error::io(
                    f,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "shard listed in the index is missing",
                    ),
                ));
            }
            // Validate each header with a message that names the file.
            let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
            // SAFETY: read-only map of a file we do not modify; the mmap lives only for this check.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(f, e))?;
            safetensors::SafeTensors::deserialize(&map).map_err(|e| Error::Safetensors {
                path: f.clone(),
                msg: e.to_string(),
            })?;
        }
        // SAFETY: as above; candle keeps the maps alive for the lifetime of `st`.
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| {
                Error::Safetensors {
                    path: files[0].clone(),
                    msg: e.to_string(),
                }
            })?;
        Ok(Self {
            st,
            desc: dir.display().to_string(),
            device: device.clone(),
            dtype,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = self.st.get(name).map_err(|_| Error::MissingTensor {
            name: name.to_string(),
            source_desc: self.desc.clone(),
        })?;
        if view.shape() != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                source_desc: self.desc.clone(),
                expected: shape.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        let t = self.st.load(name, &self.device)?;
        Ok(t.to_dtype(self.dtype)?)
    }

    pub fn names(&self) -> Vec<String> {
        self.st.tensors().into_iter().map(|(n, _)| n).collect()
    }
}

/// Tensors handed over in memory, by HF name — how the trainer gives the engine its updated policy weights
/// after each optimiser step without a round trip through disk.
pub struct MemoryWeights {
    pub tensors: std::collections::HashMap<String, Tensor>,
    pub device: Device,
    pub dtype: DType,
}

impl MemoryWeights {
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            source_desc: "the in-memory weights".into(),
        })?;
        if t.dims() != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                source_desc: "the in-memory weights".into(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?)
    }
}

/// A parsed GGUF file: metadata plus lazily read quantized tensors.
pub struct GgufWeights {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    pub device: Device,
    /// Use safeloop's CPU kernels for Q4_0/Q4_1/Q8_0 (otherwise candle's quantized matmul).
    pub host_kernels: bool,
    /// Dequantize every tensor to dense f32 at load (exact arithmetic, 4 bytes per weight).
    pub dequantize: bool,
}

impl GgufWeights {
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // candle's parser bounds every length by the file size, but a few malformed headers
        // still panic inside it (e.g. `general.alignment` = 0 divides by zero): a damaged
        // file must be an error naming it, never a crash of the server that follows a registry.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gguf_file::Content::read(&mut file)
        }));
        let gguf_error = |msg: String| Error::Gguf {
            path: path.to_path_buf(),
            msg,
        };
        let content = match read {
            Ok(r) => r.map_err(|e| gguf_error(e.to_string()))?,
            Err(_) => return Err(gguf_error("malformed header (the parser gave up)".into())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            content,
            device: device.clone(),
            host_kernels: true,
            dequantize: false,
        })
    }

    /// llama.cpp's name for an HF tensor name.
    pub fn gguf_name(hf: &str) -> String {
        if let Some(rest) = hf.strip_prefix("model.layers.") {
            let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let tail = tail
                .replace("input_layernorm", "attn_norm")
                .replace("post_attention_layernorm", "ffn_norm")
                .replace("self_attn.q_proj", "attn_q")
                .replace("self_attn.k_proj", "attn_k")
                .replace("self_attn.v_proj", "attn_v")
                .replace("self_attn.o_proj", "attn_output")
                .replace("mlp.gate_proj", "ffn_gate")
                .replace("mlp.up_proj", "ffn_up")
                .replace("mlp.down_proj", "ffn_down");
            return format!("blk.{idx}.{tail}");
        }
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            "lm_head.weight" => "output.weight".into(),
            other => other.into(),
        }
    }

    pub fn contains(&self, hf_name: &str) -> bool {
        self.content
            .tensor_infos
            .contains_key(&Self::gguf_name(hf_name))
    }

    /// Reads a tensor as stored (quantized or not). `shape` is the HF shape `[out, in]`.
    pub fn qtensor(&self, hf_name: &str, shape: &[usize]) -> Result<Arc<QTensor>> {
        let name = Self::gguf_name(hf_name);
        let info = self
            .content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| Error::MissingTensor {
                name: format!("{name} (HF {hf_name})"),
                source_desc: self.path.display().to_string(),
            })?;
        if info.shape.dims() != shape {
            return Err(Error::TensorShape {
                name,
                source_desc: self.path.display().to_string(),
                expected: shape.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        let mut file = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let t = info
            .read(&mut file, self.content.tensor_data_offset, &self.device)
            .map_err(|e| Error::Gguf {
                path: self.path.clone(),
                msg: format!("tensor {name}: {e}"),
            })?;
        Ok(Arc::new(t))
    }

    /// Reads a small tensor (norm weights, biases) dequantized to f32.
    pub fn dense(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.qtensor(hf_name, shape)?.dequantize(&self.device)?)
    }
}

/// Fails naming the first tensor of an HF directory's safetensors files that holds a NaN or
/// an infinity (f32, f16 and bf16 tensors are checked; integer tensors cannot).
pub fn check_finite(dir: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        // SAFETY: read-only map of a file nobody writes while it is checked (a published
        // version is immutable).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&f, e))?;
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| Error::Safetensors {
            path: f.clone(),
            msg: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let bad = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .any(|b| !half::f16::from_le_bytes([b[0], b[1]]).is_finite()),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .any(|b| !half::bf16::from_le_bytes([b[0], b[1]]).is_finite()),
                _ => false,
            };
            if bad {
                return Err(Error::Safetensors {
                    path: f.clone(),
                    msg: format!("tensor `{name}` holds NaN or infinite values"),
                });
            }
        }
    }
    Ok(())
}
