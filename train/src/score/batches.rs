//! Batches of score-model examples. A pair contributes two sequences, a single one; all sequences of a batch go
//! through one right-padded forward. Batches group examples of similar length (sorted within windows of 64
//! batches, then the batch order shuffled) so little compute goes to padding.

use super::activations::ActivationCache;
use crate::data::preference::{Pair, ScoreData, Single};
use crate::model::Batch;
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub enum Item {
    Pair(usize),
    Single(usize),
}

/// The batches of one epoch, a pure function of (data, batch size, seed, epoch) — so a resumed run sees the same
/// order and can skip the steps it already took.
pub fn epoch_batches(
    data: &ScoreData,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    shuffle: bool,
) -> Vec<Vec<Item>> {
    let mut items: Vec<Item> = (0..data.pairs.len())
        .map(Item::Pair)
        .chain((0..data.singles.len()).map(Item::Single))
        .collect();
    let len = |it: &Item| match *it {
        Item::Pair(i) => data.pairs[i].higher.len().max(data.pairs[i].lower.len()),
        Item::Single(i) => data.singles[i].ids.len(),
    };
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64 * 0x9E37_79B9));
    if shuffle {
        items.shuffle(&mut rng);
    }
    let window = batch_size * 64;
    for chunk in items.chunks_mut(window) {
        chunk.sort_by_key(len);
    }
    let mut batches: Vec<Vec<Item>> = items
        .chunks(batch_size.max(1))
        .map(<[Item]>::to_vec)
        .collect();
    if shuffle {
        batches.shuffle(&mut rng);
    }
    batches
}

/// The tensors of one batch: sequences `[higher_0, lower_0, …, single_0, …]`.
pub struct Collated {
    pub batch: Batch,
    /// With an activation cache: the cached states entering the first trained layer (`[B, L, H]`).
    pub lower: Option<Tensor>,
    /// Row indices of each pair's higher and lower sequence.
    pub pair_rows: Vec<(i64, i64)>,
    pub pair_safe: Vec<(Option<bool>, Option<bool>)>,
    /// Token-wise spans `[d, e]` per pair.
    pub spans: Vec<(usize, usize)>,
    pub single_rows: Vec<i64>,
    pub single_safe: Vec<bool>,
}

/// Collates `items`; with `cache`, also reads their cached lower-layer states (in `kind`).
pub fn collate(
    data: &ScoreData,
    items: &[Item],
    pad: i64,
    device: Device,
    cache: Option<(&ActivationCache, Kind)>,
) -> Result<Collated> {
    let mut rows: Vec<Vec<i64>> = Vec::new();
    let mut c = Collated {
        batch: Batch {
            ids: Tensor::new(),
            mask: Tensor::new(),
        },
        lower: None,
        pair_rows: vec![],
        pair_safe: vec![],
        spans: vec![],
        single_rows: vec![],
        single_safe: vec![],
    };
    for it in items {
        if let Item::Pair(i) = *it {
            let Pair {
                higher,
                lower,
                higher_safe,
                lower_safe,
            } = &data.pairs[i];
            c.pair_rows.push((rows.len() as i64, rows.len() as i64 + 1));
            c.pair_safe.push((*higher_safe, *lower_safe));
            c.spans.push(crate::losses::preference::divergence_span(
                higher,
                lower,
                higher.len() - 1,
                lower.len() - 1,
            ));
            rows.push(higher.clone());
            rows.push(lower.clone());
        }
    }
    for it in items {
        if let Item::Single(i) = *it {
            let Single { ids, is_safe } = &data.singles[i];
            c.single_rows.push(rows.len() as i64);
            c.single_safe.push(*is_safe);
            rows.push(ids.clone());
        }
    }
    c.batch = Batch::pad(&rows, pad, false, device);
    if let Some((cache, kind)) = cache {
        c.lower = Some(cache.batch(&rows, kind, device)?);
    }
    Ok(c)
}
