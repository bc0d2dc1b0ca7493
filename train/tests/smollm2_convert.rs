//! `convert` on the default SmolLM2 GGUF: the HF directory it writes gives the logits of the GGUF model run with
//! exact (dequantized) arithmetic, in the tch model and in candle.

use safeloop_shared::model::{OutputRows, SeqInput};
use safeloop_shared::{load_causal_lm, LoadOptions};
use safeloop_train::model::{Batch, Model};
use tch::{Device, Kind, Tensor};

#[test]
fn converted_smollm2_matches_the_gguf() {
    let gguf = safeloop_shared::assets::default_model_path();
    assert!(
        gguf.is_file(),
        "{} missing: run scripts/setup.sh",
        gguf.display()
    );
    let out = std::env::temp_dir().join(format!("safeloop-convert-{}", std::process::id()));
    let cfg = safeloop_train::convert::gguf_to_hf(&gguf, &out, Kind::Float).unwrap();
    assert!(cfg.tie_word_embeddings);

    let reference = load_causal_lm(
        &gguf,
        &LoadOptions {
            dequantize: true,
            host_kernels: false,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = reference
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    let mut inp = [SeqInput::causal(&ids, None, OutputRows::Last)];
    let want: Vec<f32> = reference
        .model
        .forward(&mut inp)
        .unwrap()
        .remove(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = Tensor::from_slice(&want);

    let served = load_causal_lm(&out, &LoadOptions::default()).unwrap();
    assert_eq!(
        served
            .tokenizer
            .encode("The capital of France is", true)
            .unwrap(),
        ids,
        "tokenizer.json round trip"
    );
    let mut inp = [SeqInput::causal(&ids, None, OutputRows::Last)];
    let candle: Vec<f32> = served
        .model
        .forward(&mut inp)
        .unwrap()
        .remove(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = (Tensor::from_slice(&candle) - &want)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        d < 1e-3,
        "candle on the converted dir differs from the dequantized GGUF by {d}"
    );

    let model = Model::load(&out, None, Device::Cpu).unwrap();
    let rows = vec![ids.iter().map(|&t| t as i64).collect::<Vec<_>>()];
    let batch = Batch::pad(&rows, 0, false, Device::Cpu);
    let logits = tch::no_grad(|| model.forward(&batch))
        .get(0)
        .get(ids.len() as i64 - 1);
    let d = (logits - &want).abs().max().double_value(&[]);
    assert!(
        d < 1e-3,
        "tch on the converted dir differs from the dequantized GGUF by {d}"
    );
    std::fs::remove_dir_all(&out).ok();
}
