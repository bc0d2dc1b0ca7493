//! Prompts for rollouts and evaluation, from any of: PKU-SafeRLHF rows (`prompt`), Alpaca/red-team rows
//! (`instruction` + `input`), chat rows (`messages`, the last user turn is the prompt), or `prompt` strings.
//! Duplicates are removed (first kept), as safe-rlhf's prompt-only dataset does.

use super::read_jsonl_values;
use anyhow::{bail, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    /// The row's `eval_set` / `tag` when present (red-team sets), for per-set reports.
    pub set: Option<String>,
}

/// Alpaca's `instruction + " " + input` (input omitted when empty).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction} {input}")
    }
}

fn prompt_of(v: &Value) -> Option<String> {
    if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        return Some(p.to_string());
    }
    if let Some(i) = v.get("instruction").and_then(Value::as_str) {
        return Some(alpaca_prompt(
            i,
            v.get("input").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    v.get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?["content"]
        .as_str()
        .map(str::to_string)
}

/// Reads prompts; `sets` (if non-empty) keeps, of the rows that name an `eval_set`, only those listed (rows
/// without one, e.g. PKU-SafeRLHF prompts, are kept).
pub fn read(path: &Path, sets: &[String]) -> Result<Vec<Prompt>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, v) in read_jsonl_values(path)?.iter().enumerate() {
        let Some(text) = prompt_of(v) else {
            bail!("{}:{}: no prompt (expected `prompt`, `instruction`, or `messages` with a user turn)", path.display(), i + 1);
        };
        let set = v
            .get("eval_set")
            .and_then(Value::as_str)
            .map(str::to_string);
        if !sets.is_empty() && set.as_ref().is_some_and(|s| !sets.contains(s)) {
            continue;
        }
        if seen.insert(text.clone()) {
            out.push(Prompt { text, set });
        }
    }
    Ok(out)
}

/// The user text of the last user turn in a rendered ChatML-style prompt, else the whole decoded prompt.
pub fn from_rendered(decoded: &str) -> String {
    if let Some(start) = decoded.rfind("<|im_start|>user\n") {
        let rest = &decoded[start + "<|im_start|>user\n".len()..];
        return rest
            .split("<|im_end|>")
            .next()
            .unwrap_or(rest)
            .trim()
            .to_string();
    }
    if let Some(start) = decoded.rfind("USER: ") {
        let rest = &decoded[start + 6..];
        return rest
            .split(" ASSISTANT:")
            .next()
            .unwrap_or(rest)
            .trim()
            .to_string();
    }
    decoded.trim().to_string()
}
