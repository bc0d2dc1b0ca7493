//! Anthropic HH-RLHF pairs: `chosen` / `rejected` full transcripts ("\n\nHuman: …\n\nAssistant: …"). The shared
//! prefix up to the last "\n\nAssistant:" is the conversation; what follows is each response.

use super::{parse_row, read_jsonl_values};
use anyhow::{bail, Result};
use safeloop_shared::ChatMessage;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
struct Raw {
    chosen: String,
    rejected: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HhPair {
    /// The conversation before the final assistant turn (ends with a user message).
    pub messages: Vec<ChatMessage>,
    pub chosen: String,
    pub rejected: String,
}

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

/// Splits a transcript into turns.
pub fn parse_transcript(text: &str) -> Option<Vec<ChatMessage>> {
    let mut turns = Vec::new();
    let mut rest = text;
    loop {
        let (role, marker) = if rest.starts_with(HUMAN) {
            ("user", HUMAN)
        } else if rest.starts_with(ASSISTANT) {
            ("assistant", ASSISTANT)
        } else {
            return None;
        };
        rest = &rest[marker.len()..];
        let next = [rest.find(HUMAN), rest.find(ASSISTANT)]
            .into_iter()
            .flatten()
            .min();
        let (content, tail) = match next {
            Some(n) => (&rest[..n], &rest[n..]),
            None => (rest, ""),
        };
        turns.push(ChatMessage::new(role, content.trim()));
        if tail.is_empty() {
            return Some(turns);
        }
        rest = tail;
    }
}

fn split(path: &Path, line: usize, which: &str, text: &str) -> Result<(Vec<ChatMessage>, String)> {
    let mut turns = parse_transcript(text).ok_or_else(|| {
        anyhow::anyhow!(
            "{}:{}: field `{which}`: not a \"\\n\\nHuman: … \\n\\nAssistant: …\" transcript",
            path.display(),
            line
        )
    })?;
    match turns.pop() {
        Some(last) if last.role == "assistant" && turns.last().is_some_and(|m| m.role == "user") => Ok((turns, last.content)),
        _ => bail!("{}:{}: field `{which}`: the transcript must end with an assistant turn after a human one", path.display(), line),
    }
}

pub fn read(path: &Path) -> Result<Vec<HhPair>> {
    let mut out = Vec::new();
    for (i, v) in read_jsonl_values(path)?.iter().enumerate() {
        let raw: Raw = parse_row(path, i + 1, v)?;
        let c = split(path, i + 1, "chosen", &raw.chosen);
        let r = split(path, i + 1, "rejected", &raw.rejected);
        if let (Ok((m1, chosen)), Ok((m2, rejected))) = (&c, &r) {
            if m1 == m2 {
                out.push(HhPair {
                    messages: m1.clone(),
                    chosen: chosen.clone(),
                    rejected: rejected.clone(),
                });
                continue;
            }
        }
        if parse_transcript(&raw.chosen).is_none() {
            c?;
        }
        if parse_transcript(&raw.rejected).is_none() {
            r?;
        }
        // The transcripts diverge before the final turn (a few upstream rows, some with a "Human:" inside a
        // turn): the conversation is the common prefix up to its last "\n\nAssistant:", each response all after it.
        let common = raw
            .chosen
            .bytes()
            .zip(raw.rejected.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let common = (0..=common)
            .rev()
            .find(|&k| raw.chosen.is_char_boundary(k))
            .unwrap_or(0);
        let cut = raw.chosen[..common].rfind(ASSISTANT).ok_or_else(|| {
            anyhow::anyhow!(
                "{}:{}: `chosen` and `rejected` share no conversation prefix",
                path.display(),
                i + 1
            )
        })?;
        let messages = parse_transcript(&raw.chosen[..cut]).unwrap_or_default();
        if messages.last().is_none_or(|m| m.role != "user") {
            bail!(
                "{}:{}: `chosen` and `rejected` share no conversation ending with a human turn",
                path.display(),
                i + 1
            );
        }
        let rest = |t: &str| t[cut + ASSISTANT.len()..].trim().to_string();
        out.push(HhPair {
            messages,
            chosen: rest(&raw.chosen),
            rejected: rest(&raw.rejected),
        });
    }
    Ok(out)
}
