//! The trainable Llama-family model in tch (llama, mistral, qwen2: GQA, tied embeddings, q/k/v biases, RoPE
//! scaling), with the three heads the trainer needs: the LM head (policy, reference), and a score head
//! (`score_head`, safe-rlhf layout) that serves reward/cost models and the value heads of the critics.
//!
//! Parameters live in a `VarStore` under exactly the HF tensor names (`model.layers.0.self_attn.q_proj.weight`,
//! `lm_head.weight`, `score_head.weight`), so loading and saving are name-for-name copies of what the candle side
//! reads (`io.rs`). The candle model is the inference twin; `tests/` keeps the two in parity.

mod io;
mod layers;

pub use io::{
    copy_tokenizer_files, load_adapter, save_adapter, save_hf_dir, write_dir_atomically,
    SaveOptions,
};
pub use layers::rope_cos_sin;

/// LoRA adapters on every projection (q, k, v, o, gate, up, down) of the layers from `from_layer` up.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub from_layer: usize,
}

use anyhow::{bail, Context, Result};
use layers::{Attention, Embedding, Mlp, RmsNorm};
use safeloop_shared::config::{Head, ModelConfig, ScorePooling};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// One decoder layer: `h = x + attn(norm(x))`, `out = h + mlp(norm(h))`.
#[derive(Debug)]
struct DecoderLayer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            input_norm: RmsNorm::new(&vs / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            attn: Attention::new(&vs / "self_attn", cfg),
            post_norm: RmsNorm::new(
                &vs / "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            mlp: Mlp::new(&vs / "mlp", cfg),
        }
    }

    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: Option<&Tensor>) -> Tensor {
        let h = x + self.attn.forward(&self.input_norm.forward(x), rope, mask);
        let out = self.mlp.forward(&self.post_norm.forward(&h));
        h + out
    }
}

/// What the model ends in.
#[derive(Debug)]
pub enum OutputHead {
    /// Vocabulary logits; `None` = tied to the embedding.
    Lm(Option<nn::Linear>),
    /// safe-rlhf score head `Linear(hidden → score_dim)`.
    Score(nn::Linear),
}

/// A batch: `ids` `[B, L]` (i64), `mask` `[B, L]` (1 real token, 0 pad; left or right padding).
#[derive(Debug)]
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
}

impl Batch {
    /// Pads `rows` on the right (or left) with `pad` into one batch on `device`.
    pub fn pad(rows: &[Vec<i64>], pad: i64, left: bool, device: Device) -> Batch {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for r in rows {
            let n = len - r.len();
            if left {
                ids.extend(std::iter::repeat_n(pad, n));
                mask.extend(std::iter::repeat_n(0i64, n));
            }
            ids.extend_from_slice(r);
            mask.extend(std::iter::repeat_n(1i64, r.len()));
            if !left {
                ids.extend(std::iter::repeat_n(pad, n));
                mask.extend(std::iter::repeat_n(0i64, n));
            }
        }
        let shape = [rows.len() as i64, len as i64];
        Batch {
            ids: Tensor::from_slice(&ids).view(shape).to(device),
            mask: Tensor::from_slice(&mask).view(shape).to(device),
        }
    }

    /// Index of the last real token of each row (`[B]`, i64), for left or right padding.
    pub fn end_index(&self) -> Tensor {
        end_index_of(&self.mask)
    }
}

/// The trainable model. `cfg.head` says which head the directory carried; `head` is what this instance has.
#[derive(Debug)]
pub struct Model {
    pub cfg: ModelConfig,
    pub vs: nn::VarStore,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    pub head: OutputHead,
    inv_freq: Tensor,
    /// Layers below this index run without gradient (their parameters are frozen).
    frozen_layers: usize,
    pub lora: Option<LoraConfig>,
}

/// Which head to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    Lm,
    Score { score_dim: usize, bias: bool },
}

impl Model {
    /// Builds a model with freshly initialised parameters (HF's init: normal(0, 0.02), zero biases, unit norms).
    pub fn new(cfg: &ModelConfig, head: HeadKind, device: Device) -> Result<Self> {
        let mut cfg = cfg.clone();
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let model = &root / "model";
        let embed = Embedding::new(&model / "embed_tokens", cfg.vocab_size, cfg.hidden_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&model / "layers" / i, &cfg))
            .collect();
        let norm = RmsNorm::new(&model / "norm", cfg.hidden_size, cfg.rms_norm_eps);
        let init = nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: false,
        };
        let head = match head {
            HeadKind::Lm => {
                cfg.head = Head::CausalLm;
                if cfg.tie_word_embeddings {
                    OutputHead::Lm(None)
                } else {
                    OutputHead::Lm(Some(nn::linear(
                        &root / "lm_head",
                        cfg.hidden_size as i64,
                        cfg.vocab_size as i64,
                        init,
                    )))
                }
            }
            HeadKind::Score { score_dim, bias } => {
                let (score_type, pooling) = match &cfg.head {
                    Head::Score {
                        score_type,
                        pooling,
                        ..
                    } => (score_type.clone(), *pooling),
                    Head::CausalLm => (None, ScorePooling::End),
                };
                cfg.head = Head::Score {
                    score_dim,
                    bias,
                    score_type,
                    pooling,
                };
                OutputHead::Score(nn::linear(
                    &root / "score_head",
                    cfg.hidden_size as i64,
                    score_dim as i64,
                    nn::LinearConfig { bias, ..init },
                ))
            }
        };
        let inv = safeloop_shared::rope::inv_freq(&cfg);
        let inv_freq = Tensor::from_slice(&inv).to(device);
        Ok(Self {
            cfg,
            vs,
            embed,
            layers,
            norm,
            head,
            inv_freq,
            frozen_layers: 0,
            lora: None,
        })
    }

    /// Loads an HF directory. `head` picks the head; `None` = what the directory's config says. A score head asked
    /// of a causal-LM directory starts fresh (zero bias, normal(0, 0.02) weight) — how reward models are initialised
    /// from a policy.
    pub fn load(dir: &Path, head: Option<HeadKind>, device: Device) -> Result<Self> {
        Self::load_layers(dir, head, device, None)
    }

    /// [`Model::load`] keeping only the first `keep` decoder layers (all when `None`): the final norm and the head
    /// then read layer `keep`'s output. The saved config says `keep` layers, so every loader (the server's too)
    /// builds the same shortened model.
    pub fn load_layers(
        dir: &Path,
        head: Option<HeadKind>,
        device: Device,
        keep: Option<usize>,
    ) -> Result<Self> {
        let mut cfg = ModelConfig::from_hf_file(&dir.join("config.json"))
            .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
        if let Some(k) = keep {
            if k == 0 || k > cfg.num_hidden_layers {
                bail!(
                    "{}: cannot keep {k} layers of a model with {} (1..={})",
                    dir.display(),
                    cfg.num_hidden_layers,
                    cfg.num_hidden_layers
                );
            }
            cfg.num_hidden_layers = k;
        }
        if cfg.rope_interleaved {
            bail!("{}: interleaved-RoPE checkpoints are GGUF-only; run `safeloop-train convert` first", dir.display());
        }
        let head = head.unwrap_or(match &cfg.head {
            Head::CausalLm => HeadKind::Lm,
            Head::Score {
                score_dim, bias, ..
            } => HeadKind::Score {
                score_dim: *score_dim,
                bias: *bias,
            },
        });
        let fresh_head =
            matches!(head, HeadKind::Score { .. }) && matches!(cfg.head, Head::CausalLm);
        let mut model = Self::new(&cfg, head, device)?;
        io::load_weights(&mut model, dir, fresh_head)?;
        Ok(model)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Freezes the embedding and the lower `n` decoder layers (they then run without autograd).
    pub fn freeze_lower_layers(&mut self, n: usize) {
        let n = n.min(self.layers.len());
        self.frozen_layers = n;
        for (name, var) in self.vs.variables() {
            if name.starts_with("model.embed_tokens.") || layer_index(&name).is_some_and(|i| i < n)
            {
                let _ = var.set_requires_grad(false);
            }
        }
    }

    /// Freezes everything but the head (`--train head`).
    pub fn freeze_all_but_head(&mut self) {
        self.frozen_layers = self.layers.len();
        for (name, var) in self.vs.variables() {
            if !(name.starts_with("score_head.") || name.starts_with("lm_head.")) {
                let _ = var.set_requires_grad(false);
            }
        }
    }

    /// Adds LoRA adapters (see [`LoraConfig`]) and freezes every base weight: what trains is the adapters and the
    /// score head, if any. Layers below `from_layer` run without autograd.
    pub fn add_lora(&mut self, cfg: LoraConfig) {
        let root = self.vs.root();
        for (i, layer) in self.layers.iter_mut().enumerate().skip(cfg.from_layer) {
            let p = &root / "model" / "layers" / i;
            let a = &mut layer.attn;
            for (name, lin) in [
                ("q_proj", &mut a.q),
                ("k_proj", &mut a.k),
                ("v_proj", &mut a.v),
                ("o_proj", &mut a.o),
            ] {
                lin.add_lora(&(&p / "self_attn" / name), cfg.rank, cfg.alpha);
            }
            let m = &mut layer.mlp;
            for (name, lin) in [
                ("gate_proj", &mut m.gate),
                ("up_proj", &mut m.up),
                ("down_proj", &mut m.down),
            ] {
                lin.add_lora(&(&p / "mlp" / name), cfg.rank, cfg.alpha);
            }
        }
        for (name, var) in self.vs.variables() {
            if !(name.contains(".lora_") || name.starts_with("score_head.")) {
                let _ = var.set_requires_grad(false);
            }
        }
        self.frozen_layers = cfg.from_layer.min(self.layers.len());
        self.lora = Some(cfg);
    }

    /// The HF tensors to save: every base parameter, with LoRA adapters folded into their weights.
    pub fn export_tensors(&self) -> Vec<(String, Tensor)> {
        let mut merged = std::collections::HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.attn;
            let m = &layer.mlp;
            for (name, lin) in [
                ("self_attn.q_proj", &a.q),
                ("self_attn.k_proj", &a.k),
                ("self_attn.v_proj", &a.v),
                ("self_attn.o_proj", &a.o),
                ("mlp.gate_proj", &m.gate),
                ("mlp.up_proj", &m.up),
                ("mlp.down_proj", &m.down),
            ] {
                if lin.lora.is_some() {
                    merged.insert(
                        format!("model.layers.{i}.{name}.weight"),
                        lin.merged_weight(),
                    );
                }
            }
        }
        let mut out: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| !n.contains(".lora_"))
            .map(|(n, t)| {
                let t = merged.remove(&n).unwrap_or_else(|| t.detach());
                (n, t)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Parameters that take gradient, with their names.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Final hidden states `[B, L, H]` (after the last norm). Position ids follow the mask
    /// (`clamp(cumsum(mask) − 1, 0)`), so left-padded rows see the positions they would alone.
    pub fn hidden(&self, batch: &Batch) -> Tensor {
        self.hidden_at(&batch.ids, &batch.mask, &mask_positions(&batch.mask))
    }

    /// Final hidden states with explicit positions.
    pub fn hidden_at(&self, ids: &Tensor, mask: &Tensor, positions: &Tensor) -> Tensor {
        let x = self.lower_hidden_at(ids, mask, positions);
        self.upper_hidden_at(&x, mask, positions)
    }

    /// The element kind of the parameters (f32 for training on CPU).
    pub fn param_kind(&self) -> Kind {
        self.embed.weight.kind()
    }

    /// Number of lower layers that run frozen (without autograd): the first trained layer's index.
    pub fn frozen_layers(&self) -> usize {
        self.frozen_layers
    }

    /// Hidden states entering the first trained layer (`[B, L, H]`, without autograd): the embedding and the
    /// frozen lower layers — what an activation cache stores. With every layer frozen (head-only) this is the
    /// last layer's output before the final norm.
    pub fn lower_hidden(&self, batch: &Batch) -> Tensor {
        let positions = mask_positions(&batch.mask);
        self.lower_hidden_at(&batch.ids, &batch.mask, &positions)
    }

    /// Final hidden states from the output of [`Model::lower_hidden`]: the trained layers and the final norm.
    pub fn upper_hidden(&self, lower: &Tensor, mask: &Tensor) -> Tensor {
        let positions = mask_positions(mask);
        self.upper_hidden_at(lower, mask, &positions)
    }

    fn lower_hidden_at(&self, ids: &Tensor, mask: &Tensor, positions: &Tensor) -> Tensor {
        let _g = (self.frozen_layers > 0).then(tch::no_grad_guard);
        let x = self.embed.forward(ids);
        self.run_layers(x, 0..self.frozen_layers, mask, positions)
    }

    fn upper_hidden_at(&self, x: &Tensor, mask: &Tensor, positions: &Tensor) -> Tensor {
        let x = self.run_layers(
            x.shallow_clone(),
            self.frozen_layers..self.layers.len(),
            mask,
            positions,
        );
        self.norm.forward(&x)
    }

    fn run_layers(
        &self,
        mut x: Tensor,
        range: std::ops::Range<usize>,
        mask: &Tensor,
        positions: &Tensor,
    ) -> Tensor {
        if range.is_empty() {
            return x;
        }
        let rope = rope_cos_sin(&self.inv_freq, positions);
        // Padded batches need the explicit mask; unpadded ones run plain causal attention.
        let padded = mask.min().int64_value(&[]) == 0;
        let attn_mask = padded.then(|| layers::attention_mask(mask));
        for i in range {
            // Frozen lower layers run without autograd.
            let _g = (i < self.frozen_layers).then(tch::no_grad_guard);
            x = self.layers[i].forward(&x, &rope, attn_mask.as_ref());
        }
        x
    }

    /// Output of the head over every position: logits `[B, L, V]` or scores `[B, L, D]` (f32).
    pub fn forward(&self, batch: &Batch) -> Tensor {
        let h = self.hidden(batch);
        self.project(&h)
    }

    /// Applies the head to hidden states.
    pub fn project(&self, h: &Tensor) -> Tensor {
        match &self.head {
            OutputHead::Lm(Some(lin)) => h.apply(lin),
            OutputHead::Lm(None) => h.matmul(&self.embed.weight.tr()),
            OutputHead::Score(lin) => h.apply(lin),
        }
        .to_kind(Kind::Float)
    }

    /// Per-token scores `[B, L]` and each row's sequence score `[B]` (first score dimension): at the last real
    /// token (safe-rlhf's `end_scores`), or the mean over the real tokens with `score_pooling = mean`.
    pub fn end_scores(&self, batch: &Batch) -> (Tensor, Tensor) {
        self.pool_scores(&self.forward(batch), &batch.mask)
    }

    /// [`Model::end_scores`] from the output of [`Model::lower_hidden`] (e.g. read from an activation cache).
    pub fn end_scores_upper(&self, lower: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
        self.pool_scores(&self.project(&self.upper_hidden(lower, mask)), mask)
    }

    /// How this score model pools (`end` for language models).
    pub fn pooling(&self) -> ScorePooling {
        match &self.cfg.head {
            Head::Score { pooling, .. } => *pooling,
            Head::CausalLm => ScorePooling::End,
        }
    }

    /// Sets how a score model pools (no-op for a language model).
    pub fn set_pooling(&mut self, p: ScorePooling) {
        if let Head::Score { pooling, .. } = &mut self.cfg.head {
            *pooling = p;
        }
    }

    fn pool_scores(&self, out: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
        let scores = out.select(2, 0);
        let pooled = match self.pooling() {
            ScorePooling::End => scores
                .gather(1, &end_index_of(mask).unsqueeze(1), false)
                .squeeze_dim(1),
            ScorePooling::Mean => {
                let m = mask.to_kind(scores.kind());
                (&scores * &m).sum_dim_intlist(1, false, scores.kind())
                    / m.sum_dim_intlist(1, false, scores.kind())
            }
        };
        (scores, pooled)
    }

    /// `log softmax(logits[t])[ids[t+1]]` for t = 0..L−2: `[B, L−1]` (f32).
    pub fn token_logprobs(&self, batch: &Batch) -> Tensor {
        let logits = self.forward(batch);
        gather_logprobs(&logits, &batch.ids)
    }

    /// Copies every parameter from `other` (same architecture), e.g. a reference model from the actor.
    pub fn copy_from(&mut self, other: &Model) -> Result<()> {
        self.vs.copy(&other.vs).context("copying parameters")?;
        Ok(())
    }

    /// Moves parameters to `kind` (e.g. bf16 for a frozen reference on GPU).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }
}

/// `log softmax(logits[:, t])[ids[:, t+1]]`, `[B, L−1]`, computed in f32.
/// Position ids that follow the mask (`clamp(cumsum(mask) − 1, 0)`).
fn mask_positions(mask: &Tensor) -> Tensor {
    (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

fn end_index_of(mask: &Tensor) -> Tensor {
    let l = mask.size()[1];
    let ar = Tensor::arange(l, (Kind::Int64, mask.device()));
    (mask * ar).argmax(1, false)
}

pub fn gather_logprobs(logits: &Tensor, ids: &Tensor) -> Tensor {
    let l = logits.size()[1];
    let lp = logits
        .narrow(1, 0, l - 1)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let next = ids.narrow(1, 1, l - 1).unsqueeze(-1);
    lp.gather(2, &next, false).squeeze_dim(-1)
}

pub(crate) fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}
