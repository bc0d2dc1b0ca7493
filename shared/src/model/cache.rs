//! A per-sequence KV cache. Each sequence owns its cache, so sequences join and leave a
//! running batch independently. On CPU (f32) keys and values live in plain host buffers,
//! `[len, n_kv * head_dim]` per layer, read by the host attention kernel; on other devices
//! they are candle tensors `[n_kv, len, head_dim]`.

use candle_core::{Result, Tensor};

/// Capacity grows in steps of this many positions.
const GROW_BY: usize = 128;

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

#[derive(Debug, Clone)]
pub(crate) enum LayerKv {
    Host(HostKv),
    Device(candle_nn::kv_cache::KvCache),
}

/// Element type of host KV buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// Half the memory and memory traffic; keys/values rounded to 11 significant bits.
    F16,
}

/// Host keys or values, one row of `width` elements per position.
#[derive(Debug, Clone)]
pub(crate) enum HostBuf {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl HostBuf {
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => HostBuf::F32(Vec::new()),
            KvDtype::F16 => HostBuf::F16(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            HostBuf::F32(b) => b.len(),
            HostBuf::F16(b) => b.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            HostBuf::F32(b) => b.capacity() * 4,
            HostBuf::F16(b) => b.capacity() * 2,
        }
    }

    fn append(&mut self, rows: &[f32], grow: usize) {
        match self {
            HostBuf::F32(b) => {
                if b.capacity() < b.len() + rows.len() {
                    b.reserve_exact(rows.len().max(grow));
                }
                b.extend_from_slice(rows);
            }
            HostBuf::F16(b) => {
                if b.capacity() < b.len() + rows.len() {
                    b.reserve_exact(rows.len().max(grow));
                }
                let start = b.len();
                b.resize(start + rows.len(), half::f16::ZERO);
                half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut b[start..], rows);
            }
        }
    }

    fn clear(&mut self) {
        match self {
            HostBuf::F32(b) => b.clear(),
            HostBuf::F16(b) => b.clear(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    pub k: HostBuf,
    pub v: HostBuf,
    pub width: usize,
}

impl HostKv {
    pub fn len(&self) -> usize {
        self.k.len().checked_div(self.width).unwrap_or(0)
    }

    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        self.k.append(k, GROW_BY * self.width);
        self.v.append(v, GROW_BY * self.width);
    }
}

impl KvCache {
    /// `host`: `Some((n_kv * head_dim, dtype))` for host buffers, `None` for device tensors.
    pub(crate) fn new(num_layers: usize, host: Option<(usize, KvDtype)>) -> Self {
        Self {
            layers: (0..num_layers)
                .map(|_| match host {
                    Some((width, dtype)) => LayerKv::Host(HostKv {
                        k: HostBuf::new(dtype),
                        v: HostBuf::new(dtype),
                        width,
                    }),
                    None => LayerKv::Device(candle_nn::kv_cache::KvCache::new(1, GROW_BY)),
                })
                .collect(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(LayerKv::Host(h)) => h.len(),
            Some(LayerKv::Device(d)) => d.current_seq_len(),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the buffers (allocated capacity, not just the used part).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerKv::Host(h) => h.k.bytes() + h.v.bytes(),
                LayerKv::Device(d) => [d.k_cache().all_data(), d.v_cache().all_data()]
                    .into_iter()
                    .flatten()
                    .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                    .sum(),
            })
            .sum()
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerKv {
        &mut self.layers[layer]
    }

    pub(crate) fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }

    /// Device path: appends `[n_kv, t, d]` keys/values; returns the whole cached k and v.
    pub(crate) fn append_device(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        match &mut self.layers[layer] {
            LayerKv::Device(d) => d.append(k, v),
            LayerKv::Host(_) => candle_core::bail!("host KV cache used on the device path"),
        }
    }

    /// A copy of the first `len` positions (host caches only; `None` for device caches or
    /// when fewer positions are cached).
    pub fn truncated_clone(&self, len: usize) -> Option<KvCache> {
        if len > self.len() {
            return None;
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                LayerKv::Host(h) => {
                    let n = len * h.width;
                    let copy = |b: &HostBuf| match b {
                        HostBuf::F32(v) => HostBuf::F32(v[..n].to_vec()),
                        HostBuf::F16(v) => HostBuf::F16(v[..n].to_vec()),
                    };
                    Some(LayerKv::Host(HostKv {
                        k: copy(&h.k),
                        v: copy(&h.v),
                        width: h.width,
                    }))
                }
                LayerKv::Device(_) => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(KvCache { layers })
    }

    pub fn reset(&mut self) {
        for l in &mut self.layers {
            match l {
                LayerKv::Host(h) => {
                    h.k.clear();
                    h.v.clear();
                }
                LayerKv::Device(d) => d.reset(),
            }
        }
    }
}
