//! SFT rows (spec §1.5): `prompt`/`response`, chat `messages`, or Alpaca `instruction`/`input`/`output`. Each
//! becomes a conversation whose assistant turns are the targets; everything else is masked from the loss.

use super::prompts::alpaca_prompt;
use super::read_jsonl_values;
use anyhow::{bail, Result};
use safeloop_shared::ChatMessage;
use std::path::Path;

pub fn read(path: &Path) -> Result<Vec<Vec<ChatMessage>>> {
    let mut out = Vec::new();
    for (i, v) in read_jsonl_values(path)?.iter().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let conv = if let Some(msgs) = v.get("messages") {
            let Some(arr) = msgs.as_array() else {
                bail!("{}: field `messages`: expected an array", at())
            };
            let mut conv = Vec::new();
            for (k, m) in arr.iter().enumerate() {
                let (Some(role), Some(content)) = (m["role"].as_str(), m["content"].as_str())
                else {
                    bail!(
                        "{}: field `messages[{k}]`: expected {{\"role\": …, \"content\": …}}",
                        at()
                    );
                };
                conv.push(ChatMessage::new(role, content));
            }
            conv
        } else if let (Some(p), Some(r)) = (v["prompt"].as_str(), v["response"].as_str()) {
            vec![
                ChatMessage::new("user", p),
                ChatMessage::new("assistant", r),
            ]
        } else if let (Some(ins), Some(o)) = (v["instruction"].as_str(), v["output"].as_str()) {
            let p = alpaca_prompt(ins, v["input"].as_str().unwrap_or(""));
            vec![
                ChatMessage::new("user", &p),
                ChatMessage::new("assistant", o),
            ]
        } else {
            bail!(
                "{}: expected `messages`, `prompt` + `response`, or `instruction` + `output`",
                at()
            );
        };
        if !conv.iter().any(|m| m.role == "assistant") {
            bail!("{}: no assistant turn to learn from", at());
        }
        out.push(conv);
    }
    Ok(out)
}
