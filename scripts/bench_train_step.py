"""The PyTorch baseline for `safeloop-train bench-step`: the same PPO actor update on the same HF directory —
a Llama-family model written directly in torch (RMSNorm, rotate-half RoPE, GQA attention via SDPA, SwiGLU; tied
or separate LM head), forward over a random [batch, seq] batch, log-prob gather, clipped surrogate loss, backward,
gradient clipping, AdamW(0.9, 0.95). Prints one JSON line. Run by scripts/bench_train.sh."""
import argparse, json, math, os, time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def load(dir_):
    cfg = json.load(open(os.path.join(dir_, "config.json")))
    w = {}
    for f in sorted(os.listdir(dir_)):
        if f.endswith(".safetensors"):
            w.update(load_file(os.path.join(dir_, f)))
    params = {k: torch.nn.Parameter(v.float()) for k, v in w.items() if not k.startswith("score_head")}
    return cfg, params


def forward(cfg, p, ids):
    b, l = ids.shape
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // h
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(l, dtype=torch.float32)[:, None] * inv[None]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]

    def norm(x, wt):
        return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rot(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat([-x2, x1], -1)

    def lin(x, name):
        y = x @ p[name + ".weight"].t()
        if name + ".bias" in p:
            y = y + p[name + ".bias"]
        return y

    x = F.embedding(ids, p["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        a = norm(x, p[pre + "input_layernorm.weight"])
        q = lin(a, pre + "self_attn.q_proj").view(b, l, h, hd).transpose(1, 2)
        k = lin(a, pre + "self_attn.k_proj").view(b, l, kv, hd).transpose(1, 2)
        v = lin(a, pre + "self_attn.v_proj").view(b, l, kv, hd).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + lin(y.transpose(1, 2).reshape(b, l, h * hd), pre + "self_attn.o_proj")
        m = norm(x, p[pre + "post_attention_layernorm.weight"])
        x = x + lin(F.silu(lin(m, pre + "mlp.gate_proj")) * lin(m, pre + "mlp.up_proj"), pre + "mlp.down_proj")
    x = norm(x, p["model.norm.weight"])
    head = p["lm_head.weight"] if "lm_head.weight" in p else p["model.embed_tokens.weight"]
    return x @ head.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg, p = load(a.model)
    decay = [v for k, v in p.items() if "bias" not in k.lower() and "layernorm.weight" not in k.lower()]
    no_decay = [v for k, v in p.items() if "bias" in k.lower() or "layernorm.weight" in k.lower()]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-5, betas=(0.9, 0.95), eps=1e-8)
    ids = torch.randint(cfg["vocab_size"], (a.batch, a.seq))
    adv = torch.randn(a.batch, a.seq - 1)
    mask = torch.ones(a.batch, a.seq - 1)

    def logprobs():
        lp = forward(cfg, p, ids)[:, :-1].float().log_softmax(-1)
        return lp.gather(2, ids[:, 1:, None]).squeeze(-1)

    with torch.no_grad():
        old = logprobs() - 0.05
    times = []
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        ratio = (logprobs() - old).exp()
        surr = torch.minimum(adv * ratio, adv * ratio.clamp(0.8, 1.2))
        loss = -((surr * mask).sum(1) / mask.sum(1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"impl": f"pytorch {torch.__version__}", "model": a.model, "batch": a.batch, "seq": a.seq,
                      "median_ms": med * 1e3, "tokens_per_s": a.batch * a.seq / med, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
