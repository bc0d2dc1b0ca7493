//! Incremental detokenization and stop strings. Text is released only when it is final:
//! never half a UTF-8 character, never a tail that could still become a stop string.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

pub struct Detokenizer {
    /// Start of the window re-decoded each step (a few tokens of left context).
    prefix_offset: usize,
    /// End of the tokens already turned into text.
    read_offset: usize,
    /// All decoded text so far.
    text: String,
    /// Bytes of `text` already released to the caller.
    released: usize,
    skip_special: bool,
    stop: Vec<String>,
    max_stop_len: usize,
}

/// What a step produced.
#[derive(Debug, Default, PartialEq)]
pub struct TextDelta {
    /// Newly releasable text.
    pub text: String,
    /// A stop string matched; the text was cut before it.
    pub stopped: bool,
}

impl Detokenizer {
    pub fn new(stop: &[String], skip_special: bool) -> Self {
        Self {
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            released: 0,
            skip_special,
            max_stop_len: stop.iter().map(String::len).max().unwrap_or(0),
            stop: stop.to_vec(),
        }
    }

    /// The whole text so far (cut at a stop string once one matched).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Consumes `ids` (all output tokens so far, the newest last).
    pub fn step(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<TextDelta> {
        let prefix = tok.decode(
            &ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                let search_from = self.text.len().saturating_sub(self.max_stop_len);
                self.text.push_str(new);
                self.prefix_offset = self.read_offset;
                self.read_offset = ids.len();
                if let Some(cut) = self.find_stop(search_from) {
                    self.text.truncate(cut);
                    return Ok(TextDelta {
                        text: self.release(self.text.len()),
                        stopped: true,
                    });
                }
            }
        }
        let safe = self.text.len() - self.partial_stop_len();
        Ok(TextDelta {
            text: self.release(safe),
            stopped: false,
        })
    }

    /// At the end of generation: decodes what was held back (an incomplete UTF-8 tail
    /// becomes U+FFFD, as HF's decode shows it) and releases everything.
    pub fn flush(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<String> {
        if self.read_offset < ids.len() {
            let prefix = tok.decode(
                &ids[self.prefix_offset..self.read_offset],
                self.skip_special,
            )?;
            let full = tok.decode(&ids[self.prefix_offset..], self.skip_special)?;
            if let Some(new) = full.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.read_offset = ids.len();
        }
        Ok(self.release(self.text.len()))
    }

    fn release(&mut self, upto: usize) -> String {
        if upto <= self.released {
            return String::new();
        }
        let s = self.text[self.released..upto].to_string();
        self.released = upto;
        s
    }

    fn find_stop(&self, from: usize) -> Option<usize> {
        let mut from = from;
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest text suffix that is a proper prefix of a stop string.
    fn partial_stop_len(&self) -> usize {
        let mut best = 0;
        for s in &self.stop {
            for k in (1..s.len()).rev() {
                if k <= best {
                    break;
                }
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}
