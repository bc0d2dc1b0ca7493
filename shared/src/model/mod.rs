//! The candle Llama-family model (llama, mistral, qwen2), used for serving, rollouts and
//! scoring. One implementation covers dense (f32/f16/bf16) and quantized (GGUF) weights.
//!
//! A forward pass takes a *packed* batch: any number of sequences, each contributing a chunk
//! of tokens with explicit positions, an optional KV cache (so sequences can join and leave a
//! running batch freely) and an optional key-padding mask. All projections run once over all
//! tokens of the batch; attention runs per sequence against its own cache.

mod attention;
mod attention_tile;
mod cache;
mod host_attention;
pub mod layers;
mod load;

pub use cache::{KvCache, KvDtype};
pub use load::WeightSource;

use crate::config::{Head, ModelConfig, ScorePooling};
use crate::error::{Error, Result};
use crate::rope::RopeTables;
use candle_core::{DType, Device, Tensor};
use layers::{Embedding, Fused, Linear, RmsNorm};

/// Which rows of a sequence's chunk the caller wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRows {
    None,
    Last,
    All,
}

/// One sequence's contribution to a packed forward pass.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    /// Position id of every token (RoPE); usually `cache.len()..cache.len()+tokens.len()`.
    pub positions: Vec<u32>,
    /// `false` marks a padding token: no query attends to it. Only without a cache.
    pub key_mask: Option<&'a [bool]>,
    pub cache: Option<&'a mut KvCache>,
    pub output: OutputRows,
}

impl<'a> SeqInput<'a> {
    /// Tokens continuing `cache` (or starting at position 0 without one).
    pub fn causal(tokens: &'a [u32], cache: Option<&'a mut KvCache>, output: OutputRows) -> Self {
        let start = cache.as_ref().map_or(0, |c| c.len()) as u32;
        Self {
            tokens,
            positions: (start..start + tokens.len() as u32).collect(),
            key_mask: None,
            cache,
            output,
        }
    }

    /// A row of a padded batch: `mask[t] == false` for pads, positions
    /// `clamp(cumsum(mask) - 1, 0)` as transformers computes them for left padding.
    pub fn padded(tokens: &'a [u32], mask: &'a [bool], output: OutputRows) -> Self {
        let mut positions = Vec::with_capacity(tokens.len());
        let mut seen = 0u32;
        for &m in mask {
            if m {
                seen += 1;
            }
            positions.push(seen.saturating_sub(1));
        }
        Self {
            tokens,
            positions,
            key_mask: Some(mask),
            cache: None,
            output,
        }
    }
}

struct Attention {
    /// q, k, v projections (fused where the weights allow).
    qkv: Fused,
    o: Linear,
}

struct Mlp {
    /// gate and up projections.
    gate_up: Fused,
    down: Linear,
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

/// Embedding + decoder layers + final norm: everything below the head.
pub struct Backbone {
    /// safeloop's CPU kernels (host KV cache + attention, quantized matmul) where they apply.
    host_kernels: bool,
    kv_dtype: KvDtype,
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    rope: RopeTables,
    device: Device,
    dtype: DType,
}

impl Backbone {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn embedding(&self) -> &Embedding {
        &self.embed
    }

    /// Host buffers and the host attention kernel serve f32 on CPU.
    fn host_path(&self) -> bool {
        self.host_kernels && self.device.is_cpu() && self.dtype == DType::F32
    }

    pub fn new_cache(&self) -> KvCache {
        let width = self.cfg.num_key_value_heads * self.cfg.head_dim;
        KvCache::new(
            self.cfg.num_hidden_layers,
            self.host_path().then_some((width, self.kv_dtype)),
        )
    }

    /// Element type of host KV caches.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Changes the element type of host KV caches created from now on.
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    /// Runs the packed batch; returns, per input, the final-normed hidden states of the rows
    /// it asked for (`[rows, hidden]`), or `None` for `OutputRows::None`.
    pub fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        self.forward_rows(inputs)?.map_split(|h| Ok(h.clone()))
    }

    /// As `forward`, with the wanted rows left stacked so a head runs once for the batch.
    pub fn forward_rows(&self, inputs: &mut [SeqInput<'_>]) -> Result<Rows> {
        let cfg = &self.cfg;
        let n: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if n == 0 {
            return Ok(Rows {
                packed: None,
                spans: inputs.iter().map(|_| None).collect(),
            });
        }
        let mut ids = Vec::with_capacity(n);
        let mut pos = Vec::with_capacity(n);
        let host = self.host_path();
        let mut masks = Vec::with_capacity(inputs.len());
        let mut pasts = Vec::with_capacity(inputs.len());
        for inp in inputs.iter() {
            if inp.positions.len() != inp.tokens.len() {
                return Err(Error::invalid(
                    "positions",
                    "one position per token is required",
                ));
            }
            if let Some(&bad) = inp.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(Error::invalid(
                    "tokens",
                    format!(
                        "token id {bad} is outside the vocabulary ({})",
                        cfg.vocab_size
                    ),
                ));
            }
            let past = inp.cache.as_ref().map_or(0, |c| c.len());
            let max_pos = inp.positions.iter().copied().max().unwrap_or(0) as usize;
            let total = past + inp.tokens.len();
            if max_pos >= self.rope.max_positions() || total > self.rope.max_positions() {
                return Err(Error::ContextOverflow {
                    tokens: total,
                    requested: 0,
                    max: self.rope.max_positions(),
                });
            }
            if inp.key_mask.is_some() && inp.cache.is_some() {
                return Err(Error::invalid(
                    "key_mask",
                    "padding masks are for uncached batches",
                ));
            }
            ids.extend_from_slice(inp.tokens);
            pos.extend_from_slice(&inp.positions);
            pasts.push(past);
            if !host {
                masks.push(attention::build_mask(
                    past,
                    inp.tokens.len(),
                    inp.key_mask,
                    cfg.sliding_window,
                    &self.device,
                    self.dtype,
                )?);
            }
        }
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let rope = self.rope.gather(&Tensor::from_vec(pos, n, &self.device)?)?;
        let (nh, nkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );

        let mut x = self.embed.forward(&ids)?.to_dtype(self.dtype)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let qkv = layer.attn.qkv.forward(&h)?;
            let q = qkv[0].contiguous()?.reshape((n, nh, d))?;
            let k = qkv[1].contiguous()?.reshape((n, nkv, d))?;
            let v = qkv[2].contiguous()?.reshape((n, nkv, d))?;
            let q = rope.apply(&q)?;
            let k = rope.apply(&k)?;
            let a = if host {
                self.host_attention(l, &q, &k, &v, inputs, &pasts)?
            } else {
                let mut outs = Vec::with_capacity(inputs.len());
                let mut r0 = 0;
                for (inp, mask) in inputs.iter_mut().zip(&masks) {
                    let t = inp.tokens.len();
                    let qi = q.narrow(0, r0, t)?.transpose(0, 1)?.contiguous()?;
                    let ki = k.narrow(0, r0, t)?.transpose(0, 1)?.contiguous()?;
                    let vi = v.narrow(0, r0, t)?.transpose(0, 1)?.contiguous()?;
                    let (ki, vi) = match inp.cache.as_deref_mut() {
                        Some(c) => c.append_device(l, &ki, &vi)?,
                        None => (ki, vi),
                    };
                    outs.push(attention::attend(&qi, &ki, &vi, mask.as_ref())?);
                    r0 += t;
                }
                if outs.len() == 1 {
                    outs.pop().expect("one output")
                } else {
                    Tensor::cat(&outs, 0)?
                }
            };
            let x1 = (x + layer.attn.o.forward(&a)?)?;
            let h2 = layer.mlp_norm.forward(&x1)?;
            let gu = layer.mlp.gate_up.forward(&h2)?;
            let g = candle_nn::ops::silu(&gu[0].contiguous()?)?;
            x = (x1 + layer.mlp.down.forward(&(g * &gu[1])?)?)?;
        }
        // Gather every wanted row so the final norm (and the caller's head) run once.
        let mut keep: Vec<u32> = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len());
        let mut r0 = 0;
        for inp in inputs.iter() {
            let t = inp.tokens.len();
            let rows = match inp.output {
                OutputRows::None => 0..0,
                OutputRows::Last => r0 + t - 1..r0 + t,
                OutputRows::All => r0..r0 + t,
            };
            spans.push((inp.output != OutputRows::None).then_some((keep.len(), rows.len())));
            keep.extend(rows.map(|r| r as u32));
            r0 += t;
        }
        if keep.is_empty() {
            return Ok(Rows {
                packed: None,
                spans,
            });
        }
        let packed = if keep.len() == n {
            x
        } else {
            let len = keep.len();
            x.index_select(&Tensor::from_vec(keep, len, &self.device)?, 0)?
        };
        Ok(Rows {
            packed: Some(self.norm.forward(&packed)?),
            spans,
        })
    }
}

/// Output rows of a packed forward: all wanted rows stacked, and each input's slice of them.
pub struct Rows {
    pub packed: Option<Tensor>,
    pub spans: Vec<Option<(usize, usize)>>,
}

impl Rows {
    /// Applies `f` (a head) once to the stacked rows, then splits per input.
    pub fn map_split(
        self,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Vec<Option<Tensor>>> {
        let Some(packed) = self.packed else {
            return Ok(self.spans.iter().map(|_| None).collect());
        };
        let y = f(&packed)?;
        self.spans
            .into_iter()
            .map(|s| match s {
                None => Ok(None),
                Some((off, len)) => Ok(Some(y.narrow(0, off, len)?)),
            })
            .collect()
    }
}

impl Backbone {
    /// Appends this layer's keys/values to the host caches and runs the host kernel.
    fn host_attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inputs: &mut [SeqInput<'_>],
        pasts: &[usize],
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let n = q.dim(0)?;
        let qv = q.flatten_all()?.to_vec1::<f32>()?;
        let kv = k.flatten_all()?.to_vec1::<f32>()?;
        let vv = v.flatten_all()?.to_vec1::<f32>()?;
        let w = cfg.num_key_value_heads * cfg.head_dim;
        let mut r0 = 0;
        for inp in inputs.iter_mut() {
            let t = inp.tokens.len();
            if let Some(c) = inp.cache.as_deref_mut() {
                match c.layer_mut(layer) {
                    cache::LayerKv::Host(h) => {
                        h.append(&kv[r0 * w..(r0 + t) * w], &vv[r0 * w..(r0 + t) * w])
                    }
                    cache::LayerKv::Device(_) => {
                        return Err(Error::invalid("cache", "a device KV cache on the CPU path"))
                    }
                }
            }
            r0 += t;
        }
        let mut seqs = Vec::with_capacity(inputs.len());
        let mut r0 = 0;
        for (inp, &past) in inputs.iter().zip(pasts) {
            let t = inp.tokens.len();
            let (kk, vk, past) = match inp.cache.as_deref().map(|c| c.layer(layer)) {
                Some(cache::LayerKv::Host(h)) => ((&h.k).into(), (&h.v).into(), past),
                _ => (
                    host_attention::KvView::F32(&kv[r0 * w..(r0 + t) * w]),
                    host_attention::KvView::F32(&vv[r0 * w..(r0 + t) * w]),
                    0,
                ),
            };
            seqs.push(host_attention::HostSeq {
                row0: r0,
                t,
                past,
                k: kk,
                v: vk,
                key_mask: inp.key_mask,
            });
            r0 += t;
        }
        let shape = host_attention::Shape {
            n_heads: cfg.num_attention_heads,
            n_kv: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            sliding_window: cfg.sliding_window,
        };
        let out = host_attention::attend(&qv, n, &seqs, &shape);
        Ok(Tensor::from_vec(
            out,
            (n, cfg.num_attention_heads * cfg.head_dim),
            &self.device,
        )?)
    }
}

/// Backbone + LM head: the policy.
pub struct CausalLm {
    backbone: Backbone,
    lm_head: Linear,
}

impl CausalLm {
    /// `host_kernels`: safeloop's CPU kernels where they apply (false: candle ops only, as
    /// on a GPU; tests and the benchmark baseline use it).
    pub fn load(cfg: &ModelConfig, src: &dyn WeightSource, host_kernels: bool) -> Result<Self> {
        if cfg.head != Head::CausalLm {
            return Err(Error::invalid(
                "model",
                "this directory holds a score model (LlamaModelForScore), not a causal LM",
            ));
        }
        let backbone = load::backbone(cfg, src, host_kernels)?;
        let lm_head = if src.contains("lm_head.weight") {
            src.linear("lm_head", cfg.vocab_size, cfg.hidden_size, false)?
        } else if cfg.tie_word_embeddings || src.is_gguf() {
            load::tied_head(&backbone.embed, host_kernels)?
        } else {
            return Err(Error::MissingTensor {
                name: "lm_head.weight".into(),
                source_desc: format!("{} (tie_word_embeddings is false)", src.describe()),
            });
        };
        Ok(Self { backbone, lm_head })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.backbone.cfg
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub fn device(&self) -> &Device {
        &self.backbone.device
    }

    pub fn new_cache(&self) -> KvCache {
        self.backbone.new_cache()
    }

    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.backbone.set_kv_dtype(dtype);
    }

    /// Logits `[rows, vocab]` (f32) per input, for the rows each asked for.
    pub fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        self.backbone
            .forward_rows(inputs)?
            .map_split(|h| Ok(self.lm_head.forward(h)?.to_dtype(DType::F32)?))
    }
}

/// Per-token and end scores of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutput {
    /// `[len][score_dim]`
    pub per_token: Vec<Vec<f32>>,
    /// The sequence's score: at the last (non-pad) token, or pooled as the model's `score_pooling` says.
    pub end: Vec<f32>,
}

/// Backbone + `score_head` (safe-rlhf `LlamaModelForScore`): reward, cost and critic models.
pub struct ScoreModel {
    backbone: Backbone,
    head: Linear,
    score_dim: usize,
    pooling: ScorePooling,
}

impl ScoreModel {
    pub fn load(cfg: &ModelConfig, src: &dyn WeightSource, host_kernels: bool) -> Result<Self> {
        let Head::Score {
            score_dim,
            bias,
            pooling,
            ..
        } = cfg.head
        else {
            return Err(Error::invalid(
                "model",
                "not a score model: config.json must have architectures [\"LlamaModelForScore\"]",
            ));
        };
        let backbone = load::backbone(cfg, src, host_kernels)?;
        let head = src.linear("score_head", score_dim, cfg.hidden_size, bias)?;
        Ok(Self {
            backbone,
            head,
            score_dim,
            pooling,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.backbone.cfg
    }

    pub fn score_dim(&self) -> usize {
        self.score_dim
    }

    /// Raw scores `[rows, score_dim]` per input for the rows each asked for.
    pub fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        self.backbone
            .forward_rows(inputs)?
            .map_split(|h| Ok(self.head.forward(h)?.to_dtype(DType::F32)?))
    }

    /// Scores a batch of unpadded sequences in one packed pass.
    pub fn score(&self, seqs: &[Vec<u32>]) -> Result<Vec<ScoreOutput>> {
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(Error::invalid(&format!("input[{i}]"), "empty sequence"));
        }
        let mut inputs: Vec<SeqInput> = seqs
            .iter()
            .map(|s| SeqInput::causal(s, None, OutputRows::All))
            .collect();
        let out = self.forward(&mut inputs)?;
        out.into_iter()
            .map(|t| {
                let per_token = t.expect("asked for all rows").to_vec2::<f32>()?;
                let end = self.pooling.pool(&per_token);
                Ok(ScoreOutput { per_token, end })
            })
            .collect()
    }

    /// Scores a right- or left-padded batch (`mask[b][t] == false` for pads) the way
    /// safe-rlhf does: positions `0..L-1` for right padding, the end score at the last
    /// index where the mask is set.
    pub fn score_padded(&self, ids: &[Vec<u32>], mask: &[Vec<bool>]) -> Result<Vec<ScoreOutput>> {
        if ids.len() != mask.len() {
            return Err(Error::invalid(
                "attention_mask",
                "one mask row per sequence",
            ));
        }
        let mut inputs = Vec::with_capacity(ids.len());
        for (b, (row, m)) in ids.iter().zip(mask).enumerate() {
            if row.len() != m.len() {
                return Err(Error::invalid(
                    &format!("attention_mask[{b}]"),
                    "mask length differs from the sequence length",
                ));
            }
            if !m.iter().any(|&x| x) {
                return Err(Error::invalid(
                    &format!("attention_mask[{b}]"),
                    "sequence is all padding",
                ));
            }
            inputs.push(SeqInput::padded(row, m, OutputRows::All));
        }
        let out = self.forward(&mut inputs)?;
        out.into_iter()
            .zip(mask)
            .map(|(t, m)| {
                let per_token = t.expect("asked for all rows").to_vec2::<f32>()?;
                let real: Vec<Vec<f32>> = per_token
                    .iter()
                    .zip(m)
                    .filter(|(_, &x)| x)
                    .map(|(r, _)| r.clone())
                    .collect();
                Ok(ScoreOutput {
                    end: self.pooling.pool(&real),
                    per_token,
                })
            })
            .collect()
    }
}
