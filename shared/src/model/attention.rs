//! Scaled dot-product attention for one sequence, GQA without materialising repeated KV heads.

use candle_core::{DType, Device, Result, Tensor};

/// A large finite negative (as transformers uses `finfo.min`) so fully masked rows stay finite.
const MASKED: f32 = f32::MIN;

/// Additive mask `[t, past + t]` for a chunk of `t` queries following `past` cached keys, or
/// `None` when every query may see every key up to itself without one (a single decode token).
pub fn build_mask(
    past: usize,
    t: usize,
    key_mask: Option<&[bool]>,
    sliding_window: Option<usize>,
    device: &Device,
    dtype: DType,
) -> Result<Option<Tensor>> {
    let s = past + t;
    let window_bites = sliding_window.is_some_and(|w| s > w);
    if t == 1 && key_mask.is_none() && !window_bites {
        return Ok(None);
    }
    let mut m = vec![0f32; t * s];
    for j in 0..t {
        let qi = past + j;
        for k in 0..s {
            let visible = k <= qi
                && key_mask.is_none_or(|km| k < past || km[k - past])
                && sliding_window.is_none_or(|w| qi - k < w);
            if !visible {
                m[j * s + k] = MASKED;
            }
        }
    }
    Ok(Some(Tensor::from_vec(m, (t, s), device)?.to_dtype(dtype)?))
}

/// `q`: `[n_heads, t, d]`, `k`/`v`: `[n_kv, s, d]` → `[t, n_heads * d]`.
/// Query head `h` uses kv head `h / (n_heads / n_kv)`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (nh, t, d) = q.dims3()?;
    let (nkv, s, _) = k.dims3()?;
    let rep = nh / nkv;
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.reshape((nkv, rep * t, d))?;
    let att = (q.matmul(&k.t()?)? * scale)?;
    let att = match mask {
        Some(m) => att
            .reshape((nkv, rep, t, s))?
            .broadcast_add(m)?
            .reshape((nkv, rep * t, s))?,
        None => att,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let o = att.matmul(&v.contiguous()?)?;
    o.reshape((nh, t, d))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, nh * d))
}
