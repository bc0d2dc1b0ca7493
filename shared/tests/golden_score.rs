//! The safe-rlhf score model (backbone + score_head) against transformers.

mod common;
use common::*;
use safeloop_shared::chat_template::SAFE_RLHF_TEMPLATE;
use safeloop_shared::{load_score_model, ChatMessage, LoadOptions};

const TOL: f32 = 1e-4;

fn golden_rows(g: &serde_json::Value) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let ids = g["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let mask = g["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| u32s(r).iter().map(|&x| x == 1).collect())
        .collect();
    (ids, mask)
}

#[test]
fn padded_scores_and_end_scores_match_golden() {
    for opts in both_paths() {
        let g = golden_json("llama-gqa-score");
        let m = load_score_model(&golden_dir("llama-gqa-score"), &opts).unwrap();
        assert_eq!(m.model.score_dim(), 1);
        let (ids, mask) = golden_rows(&g);
        let out = m.model.score_padded(&ids, &mask).unwrap();
        for (b, o) in out.iter().enumerate() {
            let valid = mask[b].iter().filter(|&&x| x).count();
            assert_eq!(valid - 1, g["end_index"][b].as_u64().unwrap() as usize);
            let got: Vec<f32> = o.per_token[..valid].iter().map(|s| s[0]).collect();
            let want = &f32s(&g["scores"][b])[..valid];
            assert_close(&format!("row {b} per-token"), &got, want, TOL);
            assert_close(
                &format!("row {b} end"),
                &o.end,
                &[g["end_scores"][b].as_f64().unwrap() as f32],
                TOL,
            );
        }
    }
}

#[test]
fn packed_unpadded_scores_match_golden() {
    for opts in both_paths() {
        let g = golden_json("llama-gqa-score");
        let m = load_score_model(&golden_dir("llama-gqa-score"), &opts).unwrap();
        let (ids, mask) = golden_rows(&g);
        let seqs: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, &k)| k)
                    .map(|(&t, _)| t)
                    .collect()
            })
            .collect();
        let out = m.model.score(&seqs).unwrap();
        for (b, o) in out.iter().enumerate() {
            let got: Vec<f32> = o.per_token.iter().map(|s| s[0]).collect();
            let want: Vec<f32> = f32s(&g["scores_unpadded"][b]);
            assert_close(&format!("row {b} unpadded"), &got, &want[..got.len()], TOL);
            assert_close(
                &format!("row {b} end"),
                &o.end,
                &[g["end_scores"][b].as_f64().unwrap() as f32],
                TOL,
            );
        }
    }
}

#[test]
fn safe_rlhf_conversation_text_tokenizes_to_the_golden_ids() {
    let g = golden_json("llama-gqa-score");
    let mut m = load_score_model(&golden_dir("llama-gqa-score"), &LoadOptions::default()).unwrap();
    m.tokenizer.set_chat_template(SAFE_RLHF_TEMPLATE).unwrap();
    let (ids, mask) = golden_rows(&g);
    for (b, text) in g["texts"].as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        let (prompt, response) = text
            .strip_prefix("BEGINNING OF CONVERSATION: USER: ")
            .unwrap()
            .split_once(" ASSISTANT:")
            .unwrap();
        let rendered = m
            .tokenizer
            .apply_chat_template(
                &[
                    ChatMessage::new("user", prompt),
                    ChatMessage::new("assistant", response),
                ],
                false,
            )
            .unwrap();
        assert_eq!(rendered.trim_end(), text);
        let mut got = m.tokenizer.encode(text, false).unwrap();
        got.push(
            m.tokenizer
                .token_to_id(m.tokenizer.eos_token().unwrap())
                .unwrap(),
        );
        let want: Vec<u32> = ids[b]
            .iter()
            .zip(&mask[b])
            .filter(|(_, &k)| k)
            .map(|(&t, _)| t)
            .collect();
        assert_eq!(got, want, "row {b}");
    }
}

#[test]
fn a_causal_lm_directory_is_not_a_score_model() {
    let err = load_score_model(&golden_dir("llama-gqa"), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("architectures"), "{err}");
}

#[test]
fn scorer_reproduces_golden_end_scores_from_prompt_and_response_text() {
    use safeloop_shared::scoring::{ScoreFormat, Scorer};
    let g = golden_json("llama-gqa-score");
    let scorer = Scorer::load(
        &golden_dir("llama-gqa-score"),
        &LoadOptions::default(),
        ScoreFormat::SafeRlhf,
    )
    .unwrap();
    let items: Vec<(Vec<ChatMessage>, Option<String>)> = g["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let (prompt, response) = t
                .as_str()
                .unwrap()
                .strip_prefix("BEGINNING OF CONVERSATION: USER: ")
                .unwrap()
                .split_once(" ASSISTANT:")
                .unwrap();
            (
                vec![ChatMessage::new("user", prompt)],
                Some(response.to_string()),
            )
        })
        .collect();
    let (ids, mask) = golden_rows(&g);
    for (b, (m, r)) in items.iter().enumerate() {
        let want: Vec<u32> = ids[b]
            .iter()
            .zip(&mask[b])
            .filter(|(_, &k)| k)
            .map(|(&t, _)| t)
            .collect();
        assert_eq!(scorer.encode(m, r.as_deref()).unwrap(), want, "row {b}");
    }
    let scores = scorer.score(&items).unwrap();
    for (b, s) in scores.iter().enumerate() {
        assert_close(
            &format!("row {b}"),
            s,
            &[g["end_scores"][b].as_f64().unwrap() as f32],
            TOL,
        );
    }
    // Multi-turn follows safe-rlhf: each earlier assistant turn ends with eos.
    let text = safeloop_shared::scoring::safe_rlhf_text(
        &[
            ChatMessage::new("user", "a"),
            ChatMessage::new("assistant", "b"),
            ChatMessage::new("user", "c"),
        ],
        Some("d"),
        "</s>",
    );
    assert_eq!(
        text,
        "BEGINNING OF CONVERSATION: USER: a ASSISTANT:b</s>USER: c ASSISTANT:d"
    );
}
