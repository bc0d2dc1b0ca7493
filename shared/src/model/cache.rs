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

/// Host keys and values, one row of `width` floats per position.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub width: usize,
}

impl HostKv {
    pub fn len(&self) -> usize {
        self.k.len().checked_div(self.width).unwrap_or(0)
    }

    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        if self.k.capacity() < self.k.len() + k.len() {
            let extra = k.len().max(GROW_BY * self.width);
            self.k.reserve_exact(extra);
            self.v.reserve_exact(extra);
        }
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
    }
}

impl KvCache {
    /// `host_width`: `Some(n_kv * head_dim)` for host buffers, `None` for device tensors.
    pub(crate) fn new(num_layers: usize, host_width: Option<usize>) -> Self {
        Self {
            layers: (0..num_layers)
                .map(|_| match host_width {
                    Some(width) => LayerKv::Host(HostKv {
                        width,
                        ..Default::default()
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
                LayerKv::Host(h) => (h.k.capacity() + h.v.capacity()) * 4,
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
