//! The building blocks, in HF's exact arithmetic: RMSNorm `x / sqrt(mean(x²) + eps) · w` (in f32), rotate-half
//! RoPE, GQA attention with a causal + padding mask, and the SwiGLU MLP.

use safeloop_shared::config::ModelConfig;
use tch::{nn, Kind, Tensor};

/// A projection `y = x·Wᵀ (+ b)` with an optional LoRA adapter `+ (x·Aᵀ)·Bᵀ·(α/r)`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

/// Low-rank adapter (PEFT layout: `lora_A.weight [r, in]`, `lora_B.weight [out, r]`, B starts at zero).
#[derive(Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.matmul(&self.weight.tr());
        if let Some(b) = &self.bias {
            y += b;
        }
        if let Some(l) = &self.lora {
            y += x.matmul(&l.a.tr()).matmul(&l.b.tr()) * l.scale;
        }
        y
    }

    /// Adds a rank-`r` adapter under `vs` (`lora_A`, `lora_B`).
    pub fn add_lora(&mut self, vs: &nn::Path, r: usize, alpha: f64) {
        let (out, inp) = (self.weight.size()[0], self.weight.size()[1]);
        let bound = 1.0 / (inp as f64).sqrt();
        let a = (vs / "lora_A").var(
            "weight",
            &[r as i64, inp],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let b = (vs / "lora_B").var("weight", &[out, r as i64], nn::Init::Const(0.0));
        self.lora = Some(Lora {
            a,
            b,
            scale: alpha / r as f64,
        });
    }

    /// `W + scale·B·A`: the weight with the adapter folded in.
    pub fn merged_weight(&self) -> Tensor {
        match &self.lora {
            Some(l) => (&self.weight + l.b.matmul(&l.a) * l.scale).detach(),
            None => self.weight.detach(),
        }
    }
}

#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(vs: nn::Path, vocab: usize, hidden: usize) -> Self {
        let weight = vs.var(
            "weight",
            &[vocab as i64, hidden as i64],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        Self { weight }
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, size: usize, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[size as i64], nn::Init::Const(1.0)),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = xf * (var + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// cos/sin `[B, 1, L, head_dim]` for explicit positions `[B, L]`, the angle computed in f32 as transformers does.
pub fn rope_cos_sin(inv_freq: &Tensor, positions: &Tensor) -> (Tensor, Tensor) {
    let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
    let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
    (emb.cos(), emb.sin())
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, d, d), x.narrow(3, 0, d)], 3)
}

/// Additive attention mask `[B, 1, L, L]`: 0 where query t may see key s (s ≤ t and s is a real token), the f32
/// minimum elsewhere (HF's convention, so fully masked pad rows stay finite).
pub fn attention_mask(mask: &Tensor) -> Tensor {
    let l = mask.size()[1];
    let device = mask.device();
    let causal = Tensor::ones([l, l], (Kind::Bool, device)).tril(0);
    let keys = mask.to_kind(Kind::Bool).view([mask.size()[0], 1, 1, l]);
    let allowed = causal.view([1, 1, l, l]).logical_and(&keys);
    Tensor::zeros(allowed.size(), (Kind::Float, device))
        .masked_fill(&allowed.logical_not(), f32::MIN as f64)
}

#[derive(Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

fn linear(vs: nn::Path, i: usize, o: usize, bias: bool) -> Linear {
    let weight = vs.var(
        "weight",
        &[o as i64, i as i64],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    );
    let bias = bias.then(|| vs.var("bias", &[o as i64], nn::Init::Const(0.0)));
    Linear {
        weight,
        bias,
        lora: None,
    }
}

impl Attention {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        Self {
            q: linear(&vs / "q_proj", cfg.hidden_size, h * d, cfg.qkv_bias),
            k: linear(&vs / "k_proj", cfg.hidden_size, kv * d, cfg.qkv_bias),
            v: linear(&vs / "v_proj", cfg.hidden_size, kv * d, cfg.qkv_bias),
            o: linear(&vs / "o_proj", h * d, cfg.hidden_size, cfg.o_bias),
            heads: h as i64,
            kv_heads: kv as i64,
            head_dim: d as i64,
        }
    }

    /// `mask`: the additive `[B, 1, L, L]` mask, or `None` for an unpadded batch (plain causal attention, which
    /// lets libtorch pick its fused kernels).
    pub fn forward(
        &self,
        x: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let q = self
            .q
            .forward(x)
            .view([b, l, self.heads, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k
            .forward(x)
            .view([b, l, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v
            .forward(x)
            .view([b, l, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        let (cos, sin) = (cos.to_kind(q.kind()), sin.to_kind(q.kind()));
        let q = &q * &cos + rotate_half(&q) * &sin;
        let k = &k * &cos + rotate_half(&k) * &sin;
        let rep = self.heads / self.kv_heads;
        let (k, v) = if rep > 1 {
            (
                k.repeat_interleave_self_int(rep, 1, None),
                v.repeat_interleave_self_int(rep, 1, None),
            )
        } else {
            (k, v)
        };
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask.map(|m| m.to_kind(q.kind())),
            0.0,
            mask.is_none(),
            None::<f64>,
            false,
        );
        self.o.forward(
            &y.transpose(1, 2)
                .reshape([b, l, self.heads * self.head_dim]),
        )
    }
}

#[derive(Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self {
            gate: linear(
                &vs / "gate_proj",
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.mlp_bias,
            ),
            up: linear(
                &vs / "up_proj",
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.mlp_bias,
            ),
            down: linear(
                &vs / "down_proj",
                cfg.intermediate_size,
                cfg.hidden_size,
                cfg.mlp_bias,
            ),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down
            .forward(&(self.gate.forward(x).silu() * self.up.forward(x)))
    }
}
