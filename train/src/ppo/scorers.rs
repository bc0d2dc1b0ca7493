//! What scores an episode: a reward or cost model run on the serving path (candle `Scorer`, the same code that
//! gates the server's output), or a rule over the response tokens (synthetic tasks and tests).

use crate::rollout::Generated;
use anyhow::{bail, Context, Result};
use safeloop_shared::scoring::{ScoreFormat, Scorer};
use safeloop_shared::{ChatMessage, LoadOptions};
use std::path::Path;

pub trait EpisodeScorer {
    /// One score per episode (end score: reward, or cost with > 0 = unsafe).
    fn score(&self, prompts: &[Vec<ChatMessage>], episodes: &[Generated]) -> Result<Vec<f64>>;
    fn describe(&self) -> String;
}

/// A safe-rlhf score model.
pub struct ModelScorer {
    scorer: Scorer,
    name: String,
}

impl ModelScorer {
    pub fn load(path: &Path, format: ScoreFormat) -> Result<Self> {
        let scorer = Scorer::load(path, &LoadOptions::default(), format)
            .with_context(|| format!("loading score model {}", path.display()))?;
        Ok(Self {
            scorer,
            name: path.display().to_string(),
        })
    }
}

impl EpisodeScorer for ModelScorer {
    fn score(&self, prompts: &[Vec<ChatMessage>], episodes: &[Generated]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(episodes.len());
        let items: Vec<(Vec<ChatMessage>, Option<String>)> = prompts
            .iter()
            .zip(episodes)
            .map(|(p, e)| (p.clone(), Some(e.text.clone())))
            .collect();
        for chunk in items.chunks(16) {
            out.extend(self.scorer.score(chunk)?.into_iter().map(|s| s[0] as f64));
        }
        Ok(out)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// `token-fraction:LO:HI[:SCALE[:OFFSET]]`: SCALE × (share of response tokens with id in [LO, HI)) + OFFSET.
/// Several joined by `+` score their sum (`RuleSum`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenFraction {
    pub lo: u32,
    pub hi: u32,
    pub scale: f64,
    pub offset: f64,
}

impl TokenFraction {
    pub fn parse(spec: &str) -> Result<Self> {
        let parts: Vec<&str> = spec.split(':').collect();
        if parts.first() != Some(&"token-fraction") || !(3..=5).contains(&parts.len()) {
            bail!("rule `{spec}`: expected token-fraction:LO:HI[:SCALE[:OFFSET]]");
        }
        let num = |i: usize, d: f64| -> Result<f64> {
            parts.get(i).map_or(Ok(d), |s| {
                s.parse()
                    .with_context(|| format!("rule `{spec}`: `{s}` is not a number"))
            })
        };
        let r = Self {
            lo: num(1, 0.0)? as u32,
            hi: num(2, 0.0)? as u32,
            scale: num(3, 1.0)?,
            offset: num(4, 0.0)?,
        };
        if r.lo >= r.hi {
            bail!("rule `{spec}`: LO must be below HI");
        }
        Ok(r)
    }
}

impl EpisodeScorer for TokenFraction {
    fn score(&self, _prompts: &[Vec<ChatMessage>], episodes: &[Generated]) -> Result<Vec<f64>> {
        Ok(episodes
            .iter()
            .map(|e| {
                let n = e
                    .ids
                    .iter()
                    .filter(|&&t| t >= self.lo && t < self.hi)
                    .count();
                self.scale * n as f64 / e.ids.len().max(1) as f64 + self.offset
            })
            .collect())
    }
    fn describe(&self) -> String {
        format!(
            "token-fraction:{}:{}:{}:{}",
            self.lo, self.hi, self.scale, self.offset
        )
    }
}

/// Rules joined by `+`: the sum of their scores (e.g. a reward that pays for two token ranges at
/// different rates).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSum(pub Vec<TokenFraction>);

impl RuleSum {
    pub fn parse(spec: &str) -> Result<Self> {
        Ok(Self(
            spec.split('+')
                .map(|p| TokenFraction::parse(p.trim()))
                .collect::<Result<_>>()?,
        ))
    }
}

impl EpisodeScorer for RuleSum {
    fn score(&self, prompts: &[Vec<ChatMessage>], episodes: &[Generated]) -> Result<Vec<f64>> {
        let mut total = vec![0.0; episodes.len()];
        for rule in &self.0 {
            for (t, s) in total.iter_mut().zip(rule.score(prompts, episodes)?) {
                *t += s;
            }
        }
        Ok(total)
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|r| r.describe()).collect();
        parts.join("+")
    }
}

/// A directory is a score model; `token-fraction:…` is a rule, and rules joined by `+` add up.
pub fn load(spec: &str, format: ScoreFormat) -> Result<Box<dyn EpisodeScorer>> {
    if spec.starts_with("token-fraction:") && spec.contains('+') {
        Ok(Box::new(RuleSum::parse(spec)?))
    } else if spec.starts_with("token-fraction:") {
        Ok(Box::new(TokenFraction::parse(spec)?))
    } else {
        Ok(Box::new(ModelScorer::load(Path::new(spec), format)?))
    }
}
