//! Our quantized matmul against candle's (scalar/reference) result and the exact f32 product.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use safeloop_shared::quant::{ActPrecision, QuantMatrix};

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn simd_matches_scalar_reference_and_candle_for_every_format_and_batch() {
    let dev = Device::Cpu;
    let (rows, cols) = (70, 576);
    let w = Tensor::from_vec(pseudo_random(rows * cols, 1), (rows, cols), &dev).unwrap();
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let q = std::sync::Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let deq = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
        let candle = QMatMul::from_arc(q.clone()).unwrap();
        // Both layouts (repacked where the build has VNNI, and ggml blocks), both precisions.
        for repack in [true, false] {
            for precision in [ActPrecision::Int8x2, ActPrecision::Int8] {
                let mut ours = QuantMatrix::from_qtensor_with(&q, repack)
                    .unwrap()
                    .expect("supported format");
                ours.set_precision(precision);
                for r in [0, 33, rows - 1] {
                    assert_eq!(ours.dequantize_row(r), deq[r], "{dtype:?} row {r}");
                }
                for n in [1usize, 2, 3, 4, 5, 16, 17] {
                    let x = pseudo_random(n * cols, 100 + n as u64);
                    let fast = ours.matmul(&x, n);
                    let scalar = ours.matmul_scalar(&x, n);
                    let xt = Tensor::from_vec(x.clone(), (n, cols), &dev).unwrap();
                    let reference = candle
                        .forward(&xt)
                        .unwrap()
                        .to_vec2::<f32>()
                        .unwrap()
                        .concat();
                    let exact = xt
                        .matmul(&Tensor::new(deq.clone(), &dev).unwrap().t().unwrap())
                        .unwrap()
                        .to_vec2::<f32>()
                        .unwrap()
                        .concat();
                    let what = format!("{dtype:?} repack={repack} {precision:?} n={n}");
                    for i in 0..fast.len() {
                        // Same arithmetic as the scalar reference, up to summation order.
                        assert!(
                            (fast[i] - scalar[i]).abs() < 1e-3,
                            "{what} i={i}: simd {} scalar {}",
                            fast[i],
                            scalar[i]
                        );
                        match precision {
                            // The residual level brings the product within float noise of exact.
                            ActPrecision::Int8x2 => assert!(
                                (fast[i] - exact[i]).abs() < 2e-3,
                                "{what} i={i}: ours {} exact {}",
                                fast[i],
                                exact[i]
                            ),
                            // One int8 level carries activation noise (std ~0.03 here), as
                            // candle's path does (it also rounds its scales to f16).
                            ActPrecision::Int8 => {
                                assert!(
                                    (fast[i] - exact[i]).abs() < 0.2,
                                    "{what} i={i}: ours {} exact {}",
                                    fast[i],
                                    exact[i]
                                );
                                assert!(
                                    (fast[i] - reference[i]).abs() < 0.1,
                                    "{what} i={i}: ours {} candle {}",
                                    fast[i],
                                    reference[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fused_rows_equal_separate_matmuls() {
    let dev = Device::Cpu;
    let cols = 64;
    let q = |rows, seed| {
        let t = Tensor::from_vec(pseudo_random(rows * cols, seed), (rows, cols), &dev).unwrap();
        QTensor::quantize(&t, GgmlDType::Q4_1).unwrap()
    };
    let (qa, qb, qc) = (q(16, 5), q(32, 6), q(3, 7));
    for repack in [true, false] {
        let m = |t: &QTensor| QuantMatrix::from_qtensor_with(t, repack).unwrap().unwrap();
        let (a, b, c) = (m(&qa), m(&qb), m(&qc));
        let ab = QuantMatrix::concat_rows(&[&a, &b]).unwrap();
        let x = pseudo_random(2 * cols, 9);
        let (ya, yb, yab) = (a.matmul(&x, 2), b.matmul(&x, 2), ab.matmul(&x, 2));
        for r in 0..2 {
            assert_eq!(&yab[r * 48..r * 48 + 16], &ya[r * 16..r * 16 + 16]);
            assert_eq!(&yab[r * 48 + 16..r * 48 + 48], &yb[r * 32..r * 32 + 32]);
        }
        // Parts that do not fill whole row groups stay apart in the repacked layout.
        assert_eq!(
            QuantMatrix::concat_rows(&[&a, &c]).is_some(),
            !a.is_repacked()
        );
    }
}
