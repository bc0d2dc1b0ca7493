//! The default policy: SmolLM2-135M-Instruct Q4_1 GGUF (fetched by scripts/setup.sh).

mod common;
use common::*;
use safeloop_shared::engine::{Engine, EngineConfig, FinishReason, SamplingParams};
use safeloop_shared::model::{OutputRows, SeqInput};
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions};

#[test]
fn greedy_answer_names_paris_and_stops_at_im_end() {
    let opts = LoadOptions {
        sha256: Some(safeloop_shared::assets::DEFAULT_MODEL_SHA256.into()),
        ..Default::default()
    };
    let m = load_causal_lm(&default_model(), &opts).unwrap();
    let im_end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(m.tokenizer.eos_token_ids().contains(&im_end));
    let prompt = m
        .tokenizer
        .apply_chat_template(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    // The GGUF's template supplies SmolLM's default system prompt.
    assert!(
        prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{prompt}"
    );
    let tok = std::sync::Arc::new(m.tokenizer);
    let mut engine = Engine::new(m.model, tok.clone(), EngineConfig::default());
    let ids = tok.encode(&prompt, false).unwrap();
    let params = SamplingParams {
        max_tokens: Some(40),
        ..SamplingParams::greedy()
    };
    let c = engine.generate(vec![(ids, params)]).unwrap().remove(0);
    assert!(c.text.contains("Paris"), "{}", c.text);
    assert_eq!(c.finish_reason, FinishReason::Stop, "{}", c.text);
    assert_eq!(*c.token_ids().last().unwrap(), im_end);
}

/// The quantized kernels against exact f32 arithmetic on the same (dequantized) weights:
/// two-level activations keep the next-token log-probs within a few 1e-3.
#[test]
fn quantized_kernels_track_exact_arithmetic_on_the_same_weights() {
    let prompt_ids = |t: &safeloop_shared::Tokenizer| {
        t.encode_chat(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap()
    };
    let last_logprobs = |opts: LoadOptions| -> Vec<f32> {
        let m = load_causal_lm(&default_model(), &opts).unwrap();
        let ids = prompt_ids(&m.tokenizer);
        let mut inp = [SeqInput::causal(&ids, None, OutputRows::Last)];
        let l = m
            .model
            .forward(&mut inp)
            .unwrap()
            .remove(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0);
        let lse = safeloop_shared::math::log_sum_exp(&l);
        l.iter().map(|x| x - lse).collect()
    };
    let exact = last_logprobs(LoadOptions {
        dequantize: true,
        ..Default::default()
    });
    let ours = last_logprobs(LoadOptions::default());
    let top: Vec<usize> = {
        let mut idx: Vec<usize> = (0..exact.len()).collect();
        idx.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]));
        idx.truncate(20);
        idx
    };
    let worst = top
        .iter()
        .map(|&i| (ours[i] - exact[i]).abs())
        .fold(0f32, f32::max);
    assert!(worst < 5e-3, "top-20 log-prob error {worst}");
    assert_eq!(
        safeloop_shared::engine::sample::argmax(&ours),
        safeloop_shared::engine::sample::argmax(&exact)
    );
}

#[test]
fn gguf_tokenizer_matches_the_original_pre_tokenizer() {
    let m = load_causal_lm(&default_model(), &LoadOptions::default()).unwrap();
    let t = &m.tokenizer;
    let pieces = |text: &str| -> Vec<String> {
        t.encode(text, false)
            .unwrap()
            .iter()
            .map(|&i| t.id_to_token(i).unwrap())
            .collect()
    };
    // No prefix space at the start of a text segment ("The", not "ĠThe") ...
    assert_eq!(pieces("The capital")[0], "The");
    assert_eq!(pieces("Hello world"), vec!["Hello", "Ġworld"]);
    // ... also right after a special token in a chat prompt.
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(t.id_to_token(ids[0]).unwrap(), "<|im_start|>");
    assert_eq!(t.id_to_token(ids[1]).unwrap(), "user");
    // SmolLM2 splits digits one by one.
    assert_eq!(pieces("2024"), vec!["2", "0", "2", "4"]);
    // Decoding round-trips.
    let text = "Café naïve — “quotes” 😊 2024";
    assert_eq!(
        t.decode(&t.encode(text, false).unwrap(), false).unwrap(),
        text
    );
}
