//! The default policy: SmolLM2-135M-Instruct Q4_1 GGUF (fetched by scripts/setup.sh).

mod common;
use common::*;
use safeloop_shared::model::{OutputRows, SeqInput};
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions};

#[test]
fn greedy_answer_names_paris_and_stops_at_im_end() {
    for host_kernels in [true, false] {
        let opts = LoadOptions {
            sha256: Some(safeloop_shared::assets::DEFAULT_MODEL_SHA256.into()),
            host_kernels,
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
        let ids = m.tokenizer.encode(&prompt, false).unwrap();
        let mut cache = m.model.new_cache();
        let mut next = ids.clone();
        let mut out = vec![];
        for _ in 0..40 {
            let mut inp = [SeqInput::causal(&next, Some(&mut cache), OutputRows::Last)];
            let logits = m
                .model
                .forward(&mut inp)
                .unwrap()
                .remove(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .remove(0);
            let tok = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            if m.tokenizer.eos_token_ids().contains(&tok) {
                assert_eq!(tok, im_end);
                break;
            }
            out.push(tok);
            next = vec![tok];
        }
        let text = m.tokenizer.decode(&out, true).unwrap();
        assert!(text.contains("Paris"), "{text}");
        assert!(out.len() < 40, "did not stop: {text}");
    }
}
