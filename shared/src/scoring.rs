//! Scoring conversations with a reward or cost model (safe-rlhf `LlamaModelForScore`).
//! The score model may use another tokenizer than the policy: it scores text.
//!
//! Input format (default, what the released beaver models and the golden score model expect):
//! `BEGINNING OF CONVERSATION: ` + per user turn `USER: {u} ASSISTANT:` + per assistant turn
//! `{a}{eos}`, the response appended with no separator, then the eos token. Sign convention:
//! for a cost model, score > 0 means unsafe.

use crate::chat_template::ChatMessage;
use crate::error::{Error, Result};
use crate::loader::{load_score_model, LoadOptions};
use crate::model::ScoreModel;
use crate::tokenizer::Tokenizer;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFormat {
    /// `BEGINNING OF CONVERSATION: USER: … ASSISTANT:…` + eos.
    SafeRlhf,
    /// The score model's own chat template (assistant turn included) + eos.
    ChatTemplate,
}

/// The safe-rlhf conversation text (without the final eos token).
pub fn safe_rlhf_text(messages: &[ChatMessage], response: Option<&str>, eos: &str) -> String {
    let mut s = String::from("BEGINNING OF CONVERSATION: ");
    for m in messages {
        match m.role.as_str() {
            "user" => {
                s.push_str("USER: ");
                s.push_str(&m.content);
                s.push_str(" ASSISTANT:");
            }
            "assistant" => {
                s.push_str(&m.content);
                s.push_str(eos);
            }
            // System turns have no place in the format; their text precedes the first user turn.
            _ => {
                s.push_str(&m.content);
                s.push(' ');
            }
        }
    }
    if let Some(r) = response {
        s.push_str(r);
    }
    s
}

/// The token ids a score model sees for a conversation and (optionally) a response — shared by serving and
/// training, so both score the same ids: the text in `format`, the eos token appended if missing, and over-long
/// inputs cut from the front (the end score is read at the last token).
pub fn encode_for_score(
    tokenizer: &Tokenizer,
    format: ScoreFormat,
    max_len: usize,
    messages: &[ChatMessage],
    response: Option<&str>,
) -> Result<Vec<u32>> {
    let eos = tokenizer.eos_token().unwrap_or("");
    let eos_id = tokenizer
        .eos_token()
        .and_then(|t| tokenizer.token_to_id(t))
        .or_else(|| tokenizer.eos_token_ids().first().copied());
    let mut ids = match format {
        ScoreFormat::SafeRlhf => {
            tokenizer.encode(&safe_rlhf_text(messages, response, eos), true)?
        }
        ScoreFormat::ChatTemplate => {
            let mut all = messages.to_vec();
            let with_response = response.is_some();
            if let Some(r) = response {
                all.push(ChatMessage::new("assistant", r));
            }
            let text = tokenizer.apply_chat_template(&all, !with_response)?;
            tokenizer.encode(&text, false)?
        }
    };
    if let Some(e) = eos_id {
        if ids.last() != Some(&e) {
            ids.push(e);
        }
    }
    if ids.len() > max_len {
        ids.drain(..ids.len() - max_len);
    }
    Ok(ids)
}

pub struct Scorer {
    model: ScoreModel,
    tokenizer: Tokenizer,
    format: ScoreFormat,
    max_len: usize,
}

impl Scorer {
    pub fn load(path: &Path, opts: &LoadOptions, format: ScoreFormat) -> Result<Self> {
        let m = load_score_model(path, opts)?;
        if format == ScoreFormat::ChatTemplate && m.tokenizer.chat_template().is_none() {
            return Err(Error::Template(format!(
                "{}: the score model has no chat template",
                path.display()
            )));
        }
        Ok(Self {
            max_len: m.config.max_position_embeddings,
            model: m.model,
            tokenizer: m.tokenizer,
            format,
        })
    }

    pub fn score_dim(&self) -> usize {
        self.model.score_dim()
    }

    /// Token ids the model scores for a conversation and (optionally) a response. Over-long
    /// inputs keep their end (the end score is read at the last token).
    pub fn encode(&self, messages: &[ChatMessage], response: Option<&str>) -> Result<Vec<u32>> {
        encode_for_score(
            &self.tokenizer,
            self.format,
            self.max_len,
            messages,
            response,
        )
    }

    /// End scores (all score dimensions) of a batch, in one packed pass.
    pub fn score(&self, items: &[(Vec<ChatMessage>, Option<String>)]) -> Result<Vec<Vec<f32>>> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        let seqs = items
            .iter()
            .map(|(m, r)| self.encode(m, r.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .model
            .score(&seqs)?
            .into_iter()
            .map(|o| o.end)
            .collect())
    }
}
