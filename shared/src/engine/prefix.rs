//! Prompt prefix cache: the KV caches of recent prompts, so a new request that starts with a
//! cached prefix (a shared system prompt, an earlier turn of the conversation) skips
//! recomputing it. Entries are evicted least recently used under a token budget. Reuse is
//! exact: cached keys and values are the ones a full prefill would compute.

use crate::model::KvCache;
use std::collections::VecDeque;

/// Shorter shared prefixes are not worth a copy.
pub const MIN_PREFIX: usize = 8;

pub struct PrefixCache {
    entries: VecDeque<(Vec<u32>, KvCache)>,
    capacity_tokens: usize,
    used_tokens: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(capacity_tokens: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity_tokens,
            used_tokens: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity_tokens > 0
    }

    pub fn used_tokens(&self) -> usize {
        self.used_tokens
    }

    /// The longest cached prefix of `prompt` (leaving at least its last token to compute):
    /// a cache holding exactly those positions.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(usize, KvCache)> {
        let limit = prompt.len().saturating_sub(1);
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (i, common_prefix(t, prompt).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if len < MIN_PREFIX {
            return None;
        }
        let entry = self.entries.remove(best)?;
        let cache = entry.1.truncated_clone(len);
        self.entries.push_front(entry);
        cache.map(|c| (len, c))
    }

    /// Remembers a prompt whose prefill just finished (`cache` holds at least its positions).
    pub fn insert(&mut self, prompt: &[u32], cache: &KvCache) {
        if !self.enabled() || prompt.len() < MIN_PREFIX || prompt.len() > self.capacity_tokens {
            return;
        }
        // A cached prompt that extends this one already covers it.
        if self
            .entries
            .iter()
            .any(|(t, _)| t.len() >= prompt.len() && t[..prompt.len()] == *prompt)
        {
            return;
        }
        let Some(copy) = cache.truncated_clone(prompt.len()) else {
            return;
        };
        // Entries this prompt extends are now redundant.
        let before = self.entries.len();
        self.entries
            .retain(|(t, _)| !(t.len() < prompt.len() && prompt[..t.len()] == **t));
        if self.entries.len() != before {
            self.used_tokens = self.entries.iter().map(|(t, _)| t.len()).sum();
        }
        self.entries.push_front((prompt.to_vec(), copy));
        self.used_tokens += prompt.len();
        while self.used_tokens > self.capacity_tokens {
            match self.entries.pop_back() {
                Some((t, _)) => self.used_tokens -= t.len(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_leading_matches() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
