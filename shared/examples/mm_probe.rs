use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use safeloop_shared::quant::QuantMatrix;
use std::time::Instant;
fn main() {
    safeloop_shared::runtime::init_cpu_threads();
    for (rows, cols, dt) in [
        (4608usize, 576usize, GgmlDType::Q4_1),
        (49152, 576, GgmlDType::Q8_0),
        (49152, 576, GgmlDType::Q4_1),
        (576, 1536, GgmlDType::Q4_1),
    ] {
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dt).unwrap();
        let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        for n in [1usize, 16] {
            let x = vec![0.5f32; n * cols];
            for _ in 0..3 {
                m.matmul(&x, n);
            }
            let t = Instant::now();
            let it = 20;
            for _ in 0..it {
                std::hint::black_box(m.matmul(&x, n));
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / it as f64;
            let bd = (rows * cols / 32 * n) as f64;
            println!(
                "{rows}x{cols} {dt:?} n={n:2}: {us:8.1} us/matmul, {:.3} ns per block-dot",
                us * 1e3 / bd
            );
        }
    }
}
