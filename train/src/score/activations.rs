//! The activation cache of `train-score --cache-activations DIR`: the hidden states entering the first trained
//! layer (the output of the frozen embedding and lower layers), computed once per sequence and kept on disk in f16,
//! memory-mapped, so every later epoch (and evaluation) runs only the trained upper layers and the head.
//!
//! Layout: `DIR/<backbone>-L<layer>/` with `states.f16` (the states, appended sequence after sequence, each
//! `[len, hidden]`) and `index.bin` (fixed 32-byte entries: 16-byte key = SHA-256 prefix of the token ids, the
//! offset in `states.f16` as u64, the length in tokens as u32, 4 reserved bytes). `<backbone>` is a SHA-256 prefix
//! over the frozen parameters themselves (names, shapes, dtypes and bytes), so a different base, a different first
//! trained layer or a retrained lower stack gets a separate cache, never stale states. The states file is written
//! before its index entries, and entries past the file's end (a crash in between) are ignored on open.

use crate::model::{Batch, Model};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

type Key = [u8; 16];
const ENTRY: usize = 32;

/// What filling the cache did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FillStats {
    /// Distinct sequences asked for.
    pub sequences: usize,
    /// Of those, computed now (the rest were cached already).
    pub computed: usize,
    pub computed_tokens: usize,
    pub compute_s: f64,
    /// Size of the cache's state file.
    pub bytes: u64,
}

pub struct ActivationCache {
    dir: PathBuf,
    hidden: usize,
    index: HashMap<Key, (u64, u32)>,
    map: Option<memmap2::Mmap>,
}

fn key_of(ids: &[i64]) -> Key {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    h.finalize()[..16].try_into().expect("16 bytes")
}

/// Identifies what produces the cached states: the frozen parameters and the first trained layer.
fn backbone_fingerprint(model: &Model) -> String {
    let layer = model.frozen_layers();
    let mut vars: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("model.embed_tokens.")
                || crate::model::layer_index(name).is_some_and(|i| i < layer)
        })
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update((layer as u64).to_le_bytes());
    for (name, t) in vars {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.size(), t.kind()).as_bytes());
        let t = t.to_device(Device::Cpu).contiguous();
        let mut buf = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut buf, t.numel());
        h.update(&buf);
    }
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl ActivationCache {
    /// Opens (or creates) the cache for `model`'s frozen lower stack under `root`.
    pub fn open(root: &Path, model: &Model) -> Result<Self> {
        if model.frozen_layers() == 0 {
            bail!(
                "--cache-activations needs frozen lower layers (--lora-rank with --lora-from-layer N > 0, \
                 --freeze-layers N or --head-only): with everything trained there is nothing to cache"
            );
        }
        let dir = root.join(format!(
            "{}-L{}",
            backbone_fingerprint(model),
            model.frozen_layers()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the activation cache {}", dir.display()))?;
        let mut cache = Self {
            dir,
            hidden: model.cfg.hidden_size,
            index: HashMap::new(),
            map: None,
        };
        cache.load()?;
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn states_path(&self) -> PathBuf {
        self.dir.join("states.f16")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.bin")
    }

    /// Reads the index and maps the states.
    fn load(&mut self) -> Result<()> {
        self.map = None;
        let states = self.states_path();
        let len = std::fs::metadata(&states).map(|m| m.len()).unwrap_or(0);
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(self.index_path()) {
            f.read_to_end(&mut raw)
                .with_context(|| format!("reading {}", self.index_path().display()))?;
        }
        self.index.clear();
        let row = (self.hidden * 2) as u64;
        for e in raw.chunks_exact(ENTRY) {
            let key: Key = e[..16].try_into().expect("16 bytes");
            let off = u64::from_le_bytes(e[16..24].try_into().expect("8 bytes"));
            let n = u32::from_le_bytes(e[24..28].try_into().expect("4 bytes"));
            // Entries whose states did not reach the disk (a crash between the two writes) are skipped.
            if off + n as u64 * row <= len {
                self.index.insert(key, (off, n));
            }
        }
        if len > 0 {
            let f = File::open(&states).with_context(|| format!("opening {}", states.display()))?;
            // SAFETY: the states file is only ever appended to, and entries point below its length at map time.
            self.map = Some(
                unsafe { memmap2::Mmap::map(&f) }
                    .with_context(|| format!("memory-mapping {}", states.display()))?,
            );
        }
        Ok(())
    }

    pub fn contains(&self, ids: &[i64]) -> bool {
        self.index.contains_key(&key_of(ids))
    }

    /// Computes and stores the states of every sequence not cached yet, in length-sorted batches of at most
    /// `max_tokens` padded tokens.
    pub fn fill<'a>(
        &mut self,
        model: &Model,
        seqs: impl IntoIterator<Item = &'a [i64]>,
        pad: i64,
        max_tokens: usize,
    ) -> Result<FillStats> {
        let mut stats = FillStats::default();
        let mut todo: Vec<&[i64]> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in seqs {
            let k = key_of(s);
            if seen.insert(k) {
                stats.sequences += 1;
                if !self.index.contains_key(&k) {
                    todo.push(s);
                }
            }
        }
        todo.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let t = std::time::Instant::now();
        if !todo.is_empty() {
            let mut states = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.states_path())
                .with_context(|| format!("opening {}", self.states_path().display()))?;
            let mut index = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.index_path())
                .with_context(|| format!("opening {}", self.index_path().display()))?;
            let mut offset = states.metadata()?.len();
            let pb = crate::metrics::progress(todo.len() as u64, "caching activations");
            let _g = tch::no_grad_guard();
            let mut i = 0;
            while i < todo.len() {
                // Longest first: the first row sets the padded length of the batch.
                let longest = todo[i].len().max(1);
                let n = (max_tokens / longest).max(1).min(todo.len() - i);
                let rows: Vec<Vec<i64>> = todo[i..i + n].iter().map(|s| s.to_vec()).collect();
                let batch = Batch::pad(&rows, pad, false, model.device());
                let h = model
                    .lower_hidden(&batch)
                    .to_kind(Kind::Half)
                    .to_device(Device::Cpu);
                let mut entries = Vec::with_capacity(n * ENTRY);
                let mut bytes = Vec::new();
                for (r, ids) in rows.iter().enumerate() {
                    let part = h.get(r as i64).narrow(0, 0, ids.len() as i64).contiguous();
                    let start = bytes.len();
                    bytes.resize(start + part.numel() * 2, 0);
                    part.copy_data_u8(&mut bytes[start..], part.numel());
                    entries.extend_from_slice(&key_of(ids));
                    entries.extend_from_slice(&(offset + start as u64).to_le_bytes());
                    entries.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                    entries.extend_from_slice(&[0u8; 4]);
                    stats.computed_tokens += ids.len();
                }
                // States first, then the entries that point at them.
                states.write_all(&bytes)?;
                states.flush()?;
                index.write_all(&entries)?;
                offset += bytes.len() as u64;
                stats.computed += n;
                i += n;
                pb.inc(n as u64);
            }
            pb.finish_and_clear();
            states.sync_all()?;
            index.sync_all()?;
            self.load()?;
        }
        stats.compute_s = t.elapsed().as_secs_f64();
        stats.bytes = std::fs::metadata(self.states_path())
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(stats)
    }

    /// The cached states of `rows`, right-padded with zeros into `[B, L, H]` of `kind` on `device`.
    pub fn batch(&self, rows: &[Vec<i64>], kind: Kind, device: Device) -> Result<Tensor> {
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let row = self.hidden * 2;
        let mut buf = vec![0u8; rows.len() * longest * row];
        for (r, ids) in rows.iter().enumerate() {
            let &(off, n) = self.index.get(&key_of(ids)).with_context(|| {
                format!(
                    "a sequence of {} tokens is not in the activation cache {}",
                    ids.len(),
                    self.dir.display()
                )
            })?;
            let map = self.map.as_ref().context("the activation cache is empty")?;
            let (off, len) = (off as usize, n as usize * row);
            let dst = r * longest * row;
            buf[dst..dst + len].copy_from_slice(&map[off..off + len]);
        }
        let t = Tensor::from_data_size(
            &buf,
            &[rows.len() as i64, longest as i64, self.hidden as i64],
            Kind::Half,
        );
        Ok(t.to_kind(kind).to_device(device))
    }
}
