//! A per-sequence KV cache: one growable key/value buffer per layer, `[n_kv, len, head_dim]`.
//! Each sequence owns its cache, so sequences join and leave a running batch independently.

use candle_core::{Result, Tensor};

/// Capacity grows in steps of this many positions.
const GROW_BY: usize = 128;

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers)
                .map(|_| candle_nn::kv_cache::KvCache::new(1, GROW_BY))
                .collect(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the buffers (allocated capacity, not just the used part).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [l.k_cache().all_data(), l.v_cache().all_data()])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Appends `[n_kv, t, d]` keys/values for `layer`; returns the whole cached k and v.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.layers[layer].append(k, v)
    }

    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.reset();
        }
    }
}
