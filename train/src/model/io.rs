//! HF directories in and out, in exactly the layout the candle side reads: `config.json`, `model.safetensors`
//! (or `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json` when large), tokenizer files; score
//! models in the safe-rlhf layout (`LlamaModelForScore`, `score_dim`, `score_bias`, `score_head.*`).

use super::Model;
use anyhow::{bail, Context, Result};
use safeloop_shared::config::{Family, Head, ModelConfig, RopeScaling, ScorePooling};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tch::{Kind, Tensor};

/// Copies the tensors of every safetensors file in `dir` into the model's variables, by HF name.
/// `fresh_head`: a score head may be absent (it was asked of a causal-LM directory and keeps its initialisation).
pub(super) fn load_weights(model: &mut Model, dir: &Path, fresh_head: bool) -> Result<()> {
    let files = safeloop_shared::weights::safetensors_files(dir)?;
    let mut vars = model.vs.variables();
    let mut seen = HashSet::new();
    let _g = tch::no_grad_guard();
    for file in &files {
        let tensors = Tensor::read_safetensors(file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (name, t) in tensors {
            if let Some(var) = vars.get_mut(&name) {
                if var.size() != t.size() {
                    bail!(
                        "{}: tensor `{name}` has shape {:?}, the config implies {:?}",
                        file.display(),
                        t.size(),
                        var.size()
                    );
                }
                var.copy_(&t);
                seen.insert(name);
            }
        }
    }
    let mut missing: Vec<_> = vars
        .keys()
        .filter(|n| !seen.contains(*n))
        // A score head asked of a policy directory starts fresh (see Model::load).
        .filter(|n| !(fresh_head && n.starts_with("score_head.")))
        .cloned()
        .collect();
    missing.sort();
    if !missing.is_empty() {
        bail!(
            "{}: missing tensor{} {}",
            dir.display(),
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .take(5)
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// How to write a directory.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Stored dtype: f32, bf16 or f16.
    pub kind: Kind,
    /// Shard when the weights exceed this many bytes.
    pub max_shard_bytes: u64,
    /// `score_type` written into a score model's config (`reward`, `cost`, `critic`).
    pub score_type: Option<String>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            kind: Kind::Float,
            max_shard_bytes: 2 << 30,
            score_type: None,
        }
    }
}

/// The HF `config.json` for `cfg`, with `head` deciding between a causal LM and a safe-rlhf score model.
pub fn config_json(cfg: &ModelConfig, head: &Head, kind: Kind) -> Value {
    let (model_type, prefix) = match cfg.family {
        Family::Llama => ("llama", "Llama"),
        Family::Mistral => ("mistral", "Mistral"),
        Family::Qwen2 => ("qwen2", "Qwen2"),
    };
    let rope_scaling = match cfg.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "type": "linear", "factor": factor})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings as u64,
        }),
    };
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let mut v = json!({
        "model_type": model_type,
        "hidden_act": "silu",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": match kind { Kind::BFloat16 => "bfloat16", Kind::Half => "float16", _ => "float32" },
    });
    let obj = v.as_object_mut().expect("object");
    match cfg.family {
        Family::Llama => {
            obj.insert("attention_bias".into(), json!(cfg.qkv_bias));
            obj.insert("mlp_bias".into(), json!(cfg.mlp_bias));
        }
        Family::Mistral | Family::Qwen2 => {
            obj.insert("sliding_window".into(), json!(cfg.sliding_window));
            obj.insert(
                "use_sliding_window".into(),
                json!(cfg.sliding_window.is_some()),
            );
        }
    }
    match head {
        Head::CausalLm => {
            obj.insert(
                "architectures".into(),
                json!([format!("{prefix}ForCausalLM")]),
            );
        }
        Head::Score {
            score_dim,
            bias,
            score_type,
            pooling,
        } => {
            obj.insert(
                "architectures".into(),
                json!([format!("{prefix}ModelForScore")]),
            );
            obj.insert("score_dim".into(), json!(score_dim));
            obj.insert("score_bias".into(), json!(bias));
            obj.insert("bias".into(), json!(bias));
            obj.insert("score_type".into(), json!(score_type));
            obj.insert("score_pooling".into(), json!(pooling.as_str()));
            obj.insert("do_normalize".into(), json!(false));
            obj.insert("normalizer_type".into(), Value::Null);
        }
    }
    v
}

/// Writes the model as an HF directory (weights + config). Tokenizer files are copied separately
/// ([`copy_tokenizer_files`]). The directory is written next to `dir` and renamed into place, so a crash never
/// leaves a half-written checkpoint under the final name.
pub fn save_hf_dir(model: &Model, dir: &Path, opts: &SaveOptions) -> Result<()> {
    write_dir_atomically(dir, |tmp| write_hf_files(model, dir, tmp, opts))
}

/// Writes a directory so that a crash leaves either the old `dir` or the complete new one: `fill` writes into
/// `DIR.partial` (emptied first), which then replaces `dir`.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fill(&tmp)?;
    if dir.exists() && exchange_dirs(&tmp, dir)? {
        // `dir` is the new directory now and `tmp` holds the old one.
        return std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing the replaced {}", tmp.display()));
    }
    if dir.exists() {
        // No atomic exchange on this file system: the old directory moves aside first.
        let old = dir.with_extension("old");
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        return std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the replaced {}", old.display()));
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
}

/// Swaps two directories in one step (Linux `renameat2(RENAME_EXCHANGE)`), so a reader
/// always finds either the old or the new `b`. `false` where the file system cannot.
#[cfg(target_os = "linux")]
fn exchange_dirs(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; renameat2 does not keep them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(anyhow::anyhow!(
            "exchanging {} and {}: {err}",
            a.display(),
            b.display()
        )),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange_dirs(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

/// The files of [`save_hf_dir`], written into `tmp` (the future `dir`).
fn write_hf_files(model: &Model, dir: &Path, tmp: &Path, opts: &SaveOptions) -> Result<()> {
    let mut head = model.cfg.head.clone();
    if let (Head::Score { score_type, .. }, Some(t)) = (&mut head, &opts.score_type) {
        *score_type = Some(t.clone());
    }
    let cfg_text = serde_json::to_string_pretty(&config_json(&model.cfg, &head, opts.kind))?;
    std::fs::write(tmp.join("config.json"), cfg_text)?;

    // LoRA adapters are folded into their weights: the directory is a plain HF model.
    let tensors: Vec<(String, Tensor)> = model
        .export_tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.to_device(tch::Device::Cpu)
                    .to_kind(opts.kind)
                    .contiguous(),
            )
        })
        .collect();
    let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    for (n, t) in tensors {
        let b = bytes(&t);
        if size > 0 && size + b > opts.max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().expect("one shard").push((n, t));
    }
    if shards.len() == 1 {
        Tensor::write_safetensors(&shards[0], tmp.join("model.safetensors"))?;
    } else {
        let total: u64 = shards.iter().flatten().map(|(_, t)| bytes(t)).sum();
        let mut map = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
            Tensor::write_safetensors(shard, tmp.join(&file))?;
            for (n, _) in shard {
                map.insert(n.clone(), file.clone());
            }
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": map});
        std::fs::write(
            tmp.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?,
        )?;
    }
    // Keep tokenizer files already in place (a re-save over an existing checkpoint).
    if dir.exists() {
        copy_tokenizer_files(dir, tmp)?;
    }
    Ok(())
}

/// The files that carry the tokenizer and generation settings.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Copies the tokenizer files that exist in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Writes only what training changed — the trainable tensors (LoRA adapters, unfrozen layers, the head) — as
/// `adapter.safetensors` + `adapter.json` (the LoRA settings and the config of the head). [`load_adapter`] puts them
/// back on the same base; a small artefact instead of a whole model.
pub fn save_adapter(model: &Model, dir: &Path, kind: Kind, meta: Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors: Vec<(String, Tensor)> = model
        .trainable()
        .into_iter()
        .map(|(n, t)| {
            // Heads and norms stay f32: they are tiny and sensitive.
            let k = if n.starts_with("score_head.") || n.contains("norm") {
                Kind::Float
            } else {
                kind
            };
            (
                n,
                t.detach()
                    .to_device(tch::Device::Cpu)
                    .to_kind(k)
                    .contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&tensors, dir.join("adapter.safetensors"))?;
    let mut head = model.cfg.head.clone();
    if let (Head::Score { score_type, .. }, Some(t)) =
        (&mut head, meta.get("score_type").and_then(Value::as_str))
    {
        *score_type = Some(t.to_string());
    }
    let (score_dim, bias, pooling) = match head {
        Head::Score {
            score_dim,
            bias,
            pooling,
            ..
        } => (Some(score_dim), Some(bias), Some(pooling)),
        Head::CausalLm => (None, None, None),
    };
    let info = json!({
        // The base's first N layers: a model shortened with `train-score --layers N` rebuilds shortened.
        "num_hidden_layers": model.cfg.num_hidden_layers,
        "lora": model.lora,
        "score_dim": score_dim,
        "score_bias": bias,
        "score_pooling": pooling,
        "tensors": tensors.len(),
        "meta": meta,
    });
    std::fs::write(
        dir.join("adapter.json"),
        serde_json::to_string_pretty(&info)?,
    )?;
    Ok(())
}

/// Builds base + adapter: loads `base` with the adapter's head, adds its LoRA, and copies its tensors in.
pub fn load_adapter(base: &Path, adapter: &Path, device: tch::Device) -> Result<Model> {
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter.json"))
            .with_context(|| format!("reading {}", adapter.join("adapter.json").display()))?,
    )
    .with_context(|| format!("{}: not valid JSON", adapter.join("adapter.json").display()))?;
    let head = match info["score_dim"].as_u64() {
        Some(d) => super::HeadKind::Score {
            score_dim: d as usize,
            bias: info["score_bias"].as_bool().unwrap_or(true),
        },
        None => super::HeadKind::Lm,
    };
    let keep = match &info["num_hidden_layers"] {
        Value::Null => None,
        v => Some(v.as_u64().with_context(|| {
            format!(
                "{}: num_hidden_layers `{v}` is not a layer count",
                adapter.join("adapter.json").display()
            )
        })? as usize),
    };
    let mut model = Model::load_layers(base, Some(head), device, keep)?;
    if let Some(score_type) = info["meta"]["score_type"].as_str() {
        if let Head::Score { score_type: st, .. } = &mut model.cfg.head {
            *st = Some(score_type.to_string());
        }
    }
    if let Some(p) = info["score_pooling"].as_str() {
        model.set_pooling(ScorePooling::parse(p).with_context(|| {
            format!(
                "{}: score_pooling `{p}` is not end or mean",
                adapter.join("adapter.json").display()
            )
        })?);
    }
    if !info["lora"].is_null() {
        let lora: super::LoraConfig =
            serde_json::from_value(info["lora"].clone()).context("adapter.json: `lora`")?;
        model.add_lora(lora);
    }
    let file = adapter.join("adapter.safetensors");
    let mut vars = model.vs.variables();
    let _g = tch::no_grad_guard();
    for (name, t) in
        Tensor::read_safetensors(&file).with_context(|| format!("reading {}", file.display()))?
    {
        let var = vars.get_mut(&name).with_context(|| {
            format!(
                "{}: tensor `{name}` does not exist on base {}",
                file.display(),
                base.display()
            )
        })?;
        if var.size() != t.size() {
            bail!(
                "{}: tensor `{name}` has shape {:?}, the base needs {:?}",
                file.display(),
                t.size(),
                var.size()
            );
        }
        var.copy_(&t);
    }
    Ok(model)
}
