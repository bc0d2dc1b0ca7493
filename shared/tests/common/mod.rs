#![allow(dead_code)]
//! Helpers for tests against `../shared/golden` (the reference outputs of HF transformers).

use serde_json::Value;
use std::path::PathBuf;

pub fn golden_root() -> PathBuf {
    match std::env::var_os("SAFELOOP_GOLDEN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    }
}

pub fn golden_dir(name: &str) -> PathBuf {
    golden_root().join(name)
}

pub fn golden_json(name: &str) -> Value {
    let p = golden_dir(name).join("golden.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

pub fn default_model() -> PathBuf {
    let p = safeloop_shared::assets::default_model_path();
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (the test command does)",
        p.display()
    );
    p
}

/// log_softmax(logits)[id]
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|x| (x - m).exp()).sum::<f32>().ln() + m;
    logits[id as usize] - lse
}

/// Both compute paths: safeloop's CPU kernels, and candle ops only (the GPU path). With
/// `SAFELOOP_TEST_DEVICE=cuda` (a `--features cuda` build on a GPU; `scripts/gpu_check.sh`),
/// the candle-ops path on the GPU instead, f32, against the same golden outputs.
pub fn both_paths() -> Vec<safeloop_shared::LoadOptions> {
    match std::env::var("SAFELOOP_TEST_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => vec![
            safeloop_shared::LoadOptions::default(),
            safeloop_shared::LoadOptions {
                host_kernels: false,
                ..Default::default()
            },
        ],
        Ok("cuda") => vec![safeloop_shared::LoadOptions {
            device: candle_core::Device::new_cuda(0)
                .expect("SAFELOOP_TEST_DEVICE=cuda: no CUDA device (built with --features cuda?)"),
            host_kernels: false,
            ..Default::default()
        }],
        Ok(other) => panic!("SAFELOOP_TEST_DEVICE: `{other}` is not cpu or cuda"),
    }
}
