//! Batched quantized matmul for CPU: ggml Q4_0 / Q4_1 / Q8_0 weights (kept in their GGUF block
//! layout, never dequantized) times activations quantized to 8 bits per 32-value block.
//!
//! candle's CPU path has no SIMD Q4_1 dot product and reads every weight block once per
//! activation row. Here each weight block is loaded and unpacked once per step and applied
//! to a tile of activation rows that stays in L1, so a batch of 16 sequences costs far less
//! than 16 single-row passes. Work is split over output rows on candle's own thread pool.

mod act;
pub mod kernels;
mod repack;

pub use act::{ActPrecision, ActQ8};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use half::f16;

/// Weight formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightFormat {
    pub fn from_ggml(d: GgmlDType) -> Option<Self> {
        match d {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

pub const BLOCK: usize = 32;

/// A `[rows, cols]` weight matrix in ggml block layout (row-major, blocks along `cols`).
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    /// ggml block layout (kept for the reference path and row dequantization).
    data: Vec<u8>,
    /// Row-interleaved copy for the VNNI kernel, when this build has it.
    repacked: Option<repack::Repacked>,
    precision: ActPrecision,
}

impl QuantMatrix {
    /// Takes the blocks of a CPU `QTensor` as they are; `None` for unsupported formats.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        Self::from_qtensor_with(q, repack::AVAILABLE)
    }

    /// As `from_qtensor`, choosing the layout: `repack = false` keeps ggml blocks and the
    /// per-row AVX2 kernel (the path for CPUs without VNNI; benchmarks compare the two).
    pub fn from_qtensor_with(q: &QTensor, repack: bool) -> Result<Option<Self>> {
        let Some(format) = WeightFormat::from_ggml(q.dtype()) else {
            return Ok(None);
        };
        if !q.device().is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        if cols % BLOCK != 0 {
            return Ok(None);
        }
        let data = q.data()?.into_owned();
        debug_assert_eq!(data.len(), rows * cols / BLOCK * format.block_bytes());
        let repacked =
            (repack && repack::AVAILABLE).then(|| repack::Repacked::new(format, &data, rows, cols));
        Ok(Some(Self::from_parts(format, rows, cols, data, repacked)))
    }

    fn from_parts(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
        repacked: Option<repack::Repacked>,
    ) -> Self {
        Self {
            format,
            rows,
            cols,
            // The repacked copy is all the kernel reads; keep the ggml blocks only without it.
            data: if repacked.is_some() { Vec::new() } else { data },
            repacked,
            precision: ActPrecision::Int8x2,
        }
    }

    /// Whether matmuls use the row-interleaved VNNI kernel.
    pub fn is_repacked(&self) -> bool {
        self.repacked.is_some()
    }

    /// Stacks matrices with the same format and width along rows (fused q/k/v, gate/up).
    /// Repacked parts stack when their rows fill whole 8-row groups.
    pub fn concat_rows(parts: &[&QuantMatrix]) -> Option<Self> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.format != first.format || p.cols != first.cols)
        {
            return None;
        }
        let repacked = match &first.repacked {
            None => None,
            Some(r0) => {
                if parts
                    .iter()
                    .any(|p| p.repacked.is_none() || p.rows % repack::ROWS != 0)
                {
                    return None;
                }
                Some(repack::Repacked {
                    bits8: r0.bits8,
                    nb: r0.nb,
                    groups: parts.iter().map(|p| p.rows / repack::ROWS).sum(),
                    data: parts
                        .iter()
                        .flat_map(|p| p.repacked.as_ref().expect("checked").data.iter().copied())
                        .collect(),
                })
            }
        };
        Some(Self {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
            repacked,
            precision: first.precision,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Activation precision used by `matmul` (default: `Int8x2`).
    pub fn precision(&self) -> ActPrecision {
        self.precision
    }

    pub fn set_precision(&mut self, p: ActPrecision) {
        self.precision = p;
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn size_in_bytes(&self) -> usize {
        self.data.len() + self.repacked.as_ref().map_or(0, |r| r.data.len())
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// `x` `[n, cols]` (f32) → `[n, rows]`.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        let act = ActQ8::quantize_with(x, n, self.cols, self.precision);
        self.matmul_q8(&act)
    }

    /// Runs against already quantized activations (so fused callers quantize once).
    pub fn matmul_q8(&self, act: &ActQ8) -> Vec<f32> {
        let n = act.rows();
        let rows = self.rows;
        let nb = self.cols / BLOCK;
        let small = rows * n * nb < 4096;
        if let Some(rp) = &self.repacked {
            let mut out = vec![0f32; n * rows];
            let out_ptr = SendPtr(out.as_mut_ptr());
            let work = |range: std::ops::Range<usize>| {
                let out_ptr = &out_ptr;
                for g in range {
                    // SAFETY: each group writes its own output columns of every row.
                    unsafe { rp.group(g, act, rows, out_ptr.0) };
                }
            };
            if small {
                work(0..rp.groups);
            } else {
                candle_core::utils::barrier_pool().execute_chunked(rp.groups, work);
            }
            return out;
        }
        // ggml layout: computed transposed ([rows, n]) so threads own disjoint slices.
        let mut out_t = vec![0f32; rows * n];
        let row_bytes = self.row_bytes();
        let out_ptr = SendPtr(out_t.as_mut_ptr());
        let tile = 8usize;
        let n_tiles = rows.div_ceil(tile);
        let work = |range: std::ops::Range<usize>| {
            let out_ptr = &out_ptr;
            for t in range {
                let r0 = t * tile;
                let r1 = (r0 + tile).min(rows);
                for r in r0..r1 {
                    let w = &self.data[r * row_bytes..(r + 1) * row_bytes];
                    // SAFETY: rows are disjoint between work items; out_t outlives the pool call.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(r * n), n) };
                    kernels::row_times_acts(self.format, w, nb, act, dst);
                }
            }
        };
        if small {
            work(0..n_tiles);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(n_tiles, work);
        }
        let mut out = vec![0f32; n * rows];
        for (r, chunk) in out_t.chunks_exact(n).enumerate() {
            for (b, &v) in chunk.iter().enumerate() {
                out[b * rows + r] = v;
            }
        }
        out
    }

    /// Block `k` of row `r` as unsigned quants (element order), scale and offset: the
    /// weights are `q·d + m`, whichever layout holds them.
    fn block(&self, r: usize, k: usize) -> ([u8; 32], f32, f32) {
        let mut q = [0u8; 32];
        if let Some(rp) = &self.repacked {
            let gbb = repack::Repacked::group_block_bytes(rp.bits8);
            let (g, lane) = (r / repack::ROWS, r % repack::ROWS);
            let blk = &rp.data[(g * rp.nb + k) * gbb..(g * rp.nb + k + 1) * gbb];
            let rows = repack::ROWS;
            let d = f16::from_le_bytes([blk[2 * lane], blk[2 * lane + 1]]).to_f32();
            let m = f16::from_le_bytes([blk[2 * rows + 2 * lane], blk[2 * rows + 2 * lane + 1]])
                .to_f32();
            let qd = &blk[4 * rows..];
            for v in 0..if rp.bits8 { 8 } else { 4 } {
                for j in 0..4 {
                    let byte = qd[v * 4 * rows + lane * 4 + j];
                    if rp.bits8 {
                        q[4 * v + j] = byte;
                    } else {
                        q[8 * v + j] = byte & 0x0F;
                        q[8 * v + 4 + j] = byte >> 4;
                    }
                }
            }
            return (q, d, m);
        }
        let bb = self.format.block_bytes();
        let blk = &self.data[r * self.row_bytes() + k * bb..r * self.row_bytes() + (k + 1) * bb];
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        match self.format {
            WeightFormat::Q4_1 | WeightFormat::Q4_0 => {
                let (m, qs) = if self.format == WeightFormat::Q4_1 {
                    (f16::from_le_bytes([blk[2], blk[3]]).to_f32(), &blk[4..20])
                } else {
                    (-8.0 * d, &blk[2..18])
                };
                for j in 0..16 {
                    q[j] = qs[j] & 0x0F;
                    q[j + 16] = qs[j] >> 4;
                }
                (q, d, m)
            }
            WeightFormat::Q8_0 => {
                for j in 0..32 {
                    q[j] = (blk[2 + j] as i8 as i16 + 128) as u8;
                }
                (q, d, -128.0 * d)
            }
        }
    }

    /// The portable reference: per block `d_w·Σ_levels d_a·Σ q·a + m·Σx` in plain Rust.
    pub fn matmul_scalar(&self, x: &[f32], n: usize) -> Vec<f32> {
        let act = ActQ8::quantize_with(x, n, self.cols, self.precision);
        let nb = self.cols / BLOCK;
        let mut out = vec![0f32; n * self.rows];
        for r in 0..self.rows {
            for b in 0..n {
                let mut acc = 0f32;
                for k in 0..nb {
                    let (q, d, m) = self.block(r, k);
                    let blk = (b * nb + k) * BLOCK..(b * nb + k + 1) * BLOCK;
                    let dot = |a: &[i8]| -> f32 {
                        q.iter()
                            .zip(a)
                            .map(|(&w, &x)| w as i32 * x as i32)
                            .sum::<i32>() as f32
                    };
                    let mut s = act.d[b * nb + k] * dot(&act.qs[blk.clone()]);
                    if let Some(qs2) = &act.qs2 {
                        s += act.d2[b * nb + k] * dot(&qs2[blk]);
                    }
                    acc += d * s + m * act.sd[b * nb + k];
                }
                out[b * self.rows + r] = acc;
            }
        }
        out
    }

    /// Dequantizes one row.
    pub fn dequantize_row(&self, r: usize) -> Vec<f32> {
        let nb = self.cols / BLOCK;
        let mut out = Vec::with_capacity(self.cols);
        for k in 0..nb {
            let (q, d, m) = self.block(r, k);
            out.extend(q.iter().map(|&x| x as f32 * d + m));
        }
        out
    }
}

struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output rows to pool workers.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Lets a `QuantMatrix` run as a candle op on CPU tensors: `[n, cols]` → `[n, rows]`.
pub struct QuantMatmulOp<'a>(pub &'a QuantMatrix);

impl CustomOp1 for QuantMatmulOp<'_> {
    fn name(&self) -> &'static str {
        "safeloop-quant-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        if k != self.0.cols {
            candle_core::bail!(
                "quant matmul: input has {k} columns, weight has {}",
                self.0.cols
            );
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("quant matmul: f32 input required");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quant matmul: contiguous input required");
        };
        let out = self.0.matmul(&data[start..end], n);
        Ok((CpuStorage::F32(out), Shape::from((n, self.0.rows))))
    }
}

impl QuantMatrix {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        x.apply_op1_no_bwd(&QuantMatmulOp(self))
    }
}
