//! Reward- and cost-model examples from any mix of files (spec §1.3):
//! - reward: PKU-SafeRLHF rows with `better_response_id` (better > worse) and HH-RLHF pairs (chosen > rejected);
//! - cost: PKU-SafeRLHF rows with `safer_response_id` and both safety labels (unsafer > safer in cost, each side
//!   with its safety sign; rows whose labels contradict the preference are dropped), plus single labelled
//!   responses, which feed only the sign term.
//!
//! Texts are tokenised exactly as the server scores them (`safeloop_shared::scoring::encode_for_score`).

use super::{detect_format, hh, labelled, pku, read_jsonl_values, Format};
use anyhow::{bail, Result};
use safeloop_shared::scoring::{encode_for_score, ScoreFormat};
use safeloop_shared::{ChatMessage, Tokenizer};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    Reward,
    Cost,
}

impl ScoreKind {
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Reward => "reward",
            ScoreKind::Cost => "cost",
        }
    }
}

/// A ranked pair: `higher` should score higher (reward: the better response; cost: the less safe one).
#[derive(Debug, Clone)]
pub struct Pair {
    pub higher: Vec<i64>,
    pub lower: Vec<i64>,
    /// Safety labels (cost pairs only).
    pub higher_safe: Option<bool>,
    pub lower_safe: Option<bool>,
}

/// One response with a safety label (cost sign term only).
#[derive(Debug, Clone)]
pub struct Single {
    pub ids: Vec<i64>,
    pub is_safe: bool,
}

/// What a set of files gave, with what was left out and why.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScoreData {
    #[serde(skip)]
    pub pairs: Vec<Pair>,
    #[serde(skip)]
    pub singles: Vec<Single>,
    pub n_pairs: usize,
    pub n_singles: usize,
    pub dropped_conflicting_labels: usize,
    pub dropped_no_preference: usize,
    pub dropped_identical: usize,
}

impl ScoreData {
    /// Every token sequence: both responses of each pair, then the single responses.
    pub fn sequences(&self) -> impl Iterator<Item = &[i64]> {
        self.pairs
            .iter()
            .flat_map(|p| [p.higher.as_slice(), p.lower.as_slice()])
            .chain(self.singles.iter().map(|s| s.ids.as_slice()))
    }
}

/// Tokenisation settings.
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub format: ScoreFormat,
    pub max_len: usize,
}

impl Encoder<'_> {
    pub fn encode(&self, messages: &[ChatMessage], response: &str) -> Result<Vec<i64>> {
        let ids = encode_for_score(
            self.tokenizer,
            self.format,
            self.max_len,
            messages,
            Some(response),
        )?;
        Ok(ids.into_iter().map(i64::from).collect())
    }
}

fn user(prompt: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", prompt)]
}

impl ScoreData {
    fn push_pair(&mut self, p: Pair) {
        if p.higher == p.lower {
            self.dropped_identical += 1;
        } else {
            self.pairs.push(p);
        }
    }

    fn finish(mut self) -> Self {
        self.n_pairs = self.pairs.len();
        self.n_singles = self.singles.len();
        self
    }
}

/// Reads `files` for a `kind` model.
pub fn load(kind: ScoreKind, files: &[PathBuf], enc: &Encoder) -> Result<ScoreData> {
    let mut data = ScoreData::default();
    for file in files {
        load_file(kind, file, enc, &mut data)?;
    }
    if data.pairs.is_empty() && data.singles.is_empty() {
        bail!(
            "no usable {} examples in {}",
            kind.name(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(data.finish())
}

fn load_file(kind: ScoreKind, file: &Path, enc: &Encoder, data: &mut ScoreData) -> Result<()> {
    let values = read_jsonl_values(file)?;
    let Some(first) = values.first() else {
        bail!("{}: empty file", file.display())
    };
    match (detect_format(file, first)?, kind) {
        (Format::PkuSafeRlhf, ScoreKind::Reward) => {
            for row in pku::read(file)? {
                let Some(better) = row.better_response_id else {
                    data.dropped_no_preference += 1;
                    continue;
                };
                let (b, w) = if better == 0 {
                    (&row.response_0, &row.response_1)
                } else {
                    (&row.response_1, &row.response_0)
                };
                let m = user(&row.prompt);
                data.push_pair(Pair {
                    higher: enc.encode(&m, b)?,
                    lower: enc.encode(&m, w)?,
                    higher_safe: None,
                    lower_safe: None,
                });
            }
        }
        (Format::PkuSafeRlhf, ScoreKind::Cost) => {
            for row in pku::read(file)? {
                let (Some(safer), Some(s0), Some(s1)) = (
                    row.safer_response_id,
                    row.is_response_0_safe,
                    row.is_response_1_safe,
                ) else {
                    data.dropped_no_preference += 1;
                    continue;
                };
                let m = user(&row.prompt);
                let (r0, r1) = (
                    enc.encode(&m, &row.response_0)?,
                    enc.encode(&m, &row.response_1)?,
                );
                if row.conflicting_safety() {
                    // The ranking contradicts the labels (the safer response unsafe, the other safe): the pair
                    // is dropped, each response's own safety label still trains the sign term.
                    data.dropped_conflicting_labels += 1;
                    data.singles.push(Single {
                        ids: r0,
                        is_safe: s0,
                    });
                    data.singles.push(Single {
                        ids: r1,
                        is_safe: s1,
                    });
                    continue;
                }
                let p = if safer == 0 {
                    Pair {
                        higher: r1,
                        lower: r0,
                        higher_safe: Some(s1),
                        lower_safe: Some(s0),
                    }
                } else {
                    Pair {
                        higher: r0,
                        lower: r1,
                        higher_safe: Some(s0),
                        lower_safe: Some(s1),
                    }
                };
                data.push_pair(p);
            }
        }
        (Format::HhRlhf, ScoreKind::Reward) => {
            for p in hh::read(file)? {
                data.push_pair(Pair {
                    higher: enc.encode(&p.messages, &p.chosen)?,
                    lower: enc.encode(&p.messages, &p.rejected)?,
                    higher_safe: None,
                    lower_safe: None,
                });
            }
        }
        (Format::Labelled, ScoreKind::Cost) => {
            for r in labelled::read(file)? {
                data.singles.push(Single {
                    ids: enc.encode(&user(&r.prompt), &r.response)?,
                    is_safe: r.is_safe,
                });
            }
        }
        (Format::HhRlhf, ScoreKind::Cost) => {
            bail!("{}: HH-RLHF pairs carry no safety labels; they train the reward model (--kind reward)", file.display())
        }
        (Format::Labelled, ScoreKind::Reward) => {
            bail!("{}: single labelled responses carry no helpfulness preference; they train the cost model (--kind cost)", file.display())
        }
    }
    Ok(())
}

/// A helpfulness pair as text (DPO trains on these in the policy's own format).
#[derive(Debug, Clone)]
pub struct TextPair {
    pub messages: Vec<ChatMessage>,
    pub better: String,
    pub worse: String,
}

/// Helpfulness pairs from PKU-SafeRLHF rows with `better_response_id` and HH-RLHF pairs; identical pairs skipped.
pub fn reward_text_pairs(files: &[PathBuf]) -> Result<Vec<TextPair>> {
    let mut out = Vec::new();
    for file in files {
        let values = read_jsonl_values(file)?;
        let Some(first) = values.first() else {
            bail!("{}: empty file", file.display())
        };
        match detect_format(file, first)? {
            Format::PkuSafeRlhf => {
                for row in pku::read(file)? {
                    let Some(b) = row.better_response_id else {
                        continue;
                    };
                    let (better, worse) = if b == 0 {
                        (row.response_0, row.response_1)
                    } else {
                        (row.response_1, row.response_0)
                    };
                    out.push(TextPair {
                        messages: user(&row.prompt),
                        better,
                        worse,
                    });
                }
            }
            Format::HhRlhf => {
                for p in hh::read(file)? {
                    out.push(TextPair {
                        messages: p.messages,
                        better: p.chosen,
                        worse: p.rejected,
                    });
                }
            }
            Format::Labelled => bail!(
                "{}: single labelled responses carry no helpfulness preference",
                file.display()
            ),
        }
    }
    out.retain(|p| p.better != p.worse);
    if out.is_empty() {
        bail!("no helpfulness pairs in {files:?}");
    }
    Ok(out)
}
