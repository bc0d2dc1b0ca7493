//! Tokenizers: HF `tokenizer.json` (+ `tokenizer_config.json` for special tokens and the chat
//! template), or built from GGUF metadata (byte-level BPE vocab + merges, pre-tokenizer,
//! special tokens, chat template).

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use serde_json::Value;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

/// Turns off the BPE model's word cache. In `tokenizers` 0.23 that cache is thread-local,
/// keyed by tokenizer instance and never freed when the instance is dropped: every thread
/// that ever encoded keeps up to 10,000 words per tokenizer it has seen. A server that
/// loads a new tokenizer with each model version grew by one such cache per thread per
/// swap (~8 MiB a swap in the soak). Merging a word without the cache costs microseconds,
/// small beside the model's forward pass.
fn without_word_cache(inner: &mut tokenizers::Tokenizer) {
    if let tokenizers::models::ModelWrapper::BPE(_) = inner.get_model() {
        let mut model = inner.get_model().clone();
        model.resize_cache(0);
        inner.with_model(model);
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` as tokenizer_config.json writes special tokens.
fn special_token(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from an HF directory. `extra_eos`
    /// (from config.json / generation_config.json) are added to the stop ids.
    pub fn from_hf_dir(dir: &Path, cfg: &ModelConfig, extra_eos: &[u32]) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::io(
                &tok_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json is required"),
            ));
        }
        let mut inner = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        without_word_cache(&mut inner);
        let cfg_path = dir.join("tokenizer_config.json");
        let tc: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::config(&cfg_path, "<json>", format!("not valid JSON: {e}")))?
        } else {
            Value::Null
        };
        let template_src = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        // transformers 4.43+ may keep the template in chat_template.jinja.
        let template_src = match template_src {
            Some(s) => Some(s),
            None => {
                let p = dir.join("chat_template.jinja");
                if p.exists() {
                    Some(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?)
                } else {
                    None
                }
            }
        };
        let template = template_src.map(|s| ChatTemplate::new(&s)).transpose()?;
        let bos_token = special_token(tc.get("bos_token"));
        let eos_token = special_token(tc.get("eos_token"));
        let pad = special_token(tc.get("pad_token")).and_then(|p| inner.token_to_id(&p));
        let mut eos_ids: Vec<u32> = extra_eos.to_vec();
        eos_ids.extend(&cfg.eos_token_ids);
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        dedup(&mut eos_ids);
        Ok(Self {
            inner,
            template,
            bos_token,
            eos_token,
            eos_token_ids: eos_ids,
            pad_token_id: pad.or(cfg.pad_token_id),
        })
    }

    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        use candle_core::quantized::tokenizer::TokenizerFromGguf;
        let inner = tokenizers::Tokenizer::from_gguf(content).map_err(|e| Error::Gguf {
            path: path.to_path_buf(),
            msg: format!("cannot build the tokenizer from metadata: {e}"),
        })?;
        let md = &content.metadata;
        let mut inner = inner;
        fix_gguf_pre_tokenizer(&mut inner, md)?;
        without_word_cache(&mut inner);
        let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let tokens = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i));
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(|s| ChatTemplate::new(s))
            .transpose()?;
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        // Chat models often end turns with a token other than the file's eos.
        for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if t == "<|endoftext|>" && !eos_ids.is_empty() {
                continue;
            }
            if let Some(i) = inner.token_to_id(t) {
                if template.as_ref().is_some_and(|tm| tm.source().contains(t)) {
                    eos_ids.push(i);
                }
            }
        }
        dedup(&mut eos_ids);
        Ok(Self {
            bos_token: tokens(bos_id),
            eos_token: tokens(eos_id),
            pad_token_id: id("tokenizer.ggml.padding_token_id"),
            inner,
            template,
            eos_token_ids: eos_ids,
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Replaces the chat template (e.g. the safe-rlhf conversation format for score models).
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        self.template = Some(ChatTemplate::new(source)?);
        Ok(())
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Renders the chat template (transformers' `apply_chat_template(tokenize=False)`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self.template.as_ref().ok_or_else(|| {
            Error::Template("the model has no chat template; use a plain completion prompt".into())
        })?;
        t.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// Renders and tokenizes a conversation without adding special tokens again (the template
    /// already carries them), as transformers does.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

/// candle gives every GPT-2-style GGUF vocabulary a byte-level pre-tokenizer that adds a
/// prefix space, which llama.cpp and the HF originals do not (SmolLM2 would encode "The" as
/// "ĠThe"). Rebuild it from the metadata: `tokenizer.ggml.add_space_prefix` (default false)
/// and, for `pre = "smollm"`, single-digit splitting as in SmolLM2's tokenizer.json.
fn fix_gguf_pre_tokenizer(
    tok: &mut tokenizers::Tokenizer,
    md: &std::collections::HashMap<String, gguf_file::Value>,
) -> Result<()> {
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    if model != Some("gpt2") {
        return Ok(());
    }
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let add_space = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let byte_level = ByteLevel::new(add_space, true, true);
    let pre_tok: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "default" | "gpt-2" => byte_level.into(),
        // candle's pipelines for qwen2 / llama3 / smaug already match their originals.
        _ => return Ok(()),
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    Ok(())
}

fn dedup(ids: &mut Vec<u32>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(*i));
}
