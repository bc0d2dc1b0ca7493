//! Turns one row of logits into a token: penalties, temperature, top-k, top-p, min-p, and
//! a per-sequence seeded RNG, so a seeded request is reproducible whatever shares its batch.
//! Log-probs are those of the model itself (log-softmax of the raw logits), as OpenAI and
//! vLLM report them and as PPO needs for the behaviour policy.

use super::params::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// Model log-prob of `id`.
    pub logprob: f32,
    /// Most likely tokens with their log-probs, best first (`top_logprobs` of them).
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    rng: ChaCha12Rng,
    /// Occurrences of each token in the generated text.
    counts: HashMap<u32, u32>,
    /// Tokens present in the prompt (repetition penalty covers prompt and output).
    prompt_tokens: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        let prompt_tokens = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Self {
            rng: ChaCha12Rng::seed_from_u64(seed),
            counts: HashMap::new(),
            prompt_tokens,
        }
    }

    /// Picks the next token. `banned` ids (eos before `min_tokens`) are never chosen.
    pub fn sample(
        &mut self,
        params: &SamplingParams,
        logits: &[f32],
        banned: &[u32],
    ) -> SampledToken {
        let lse = log_sum_exp(logits);
        let mut l = logits.to_vec();
        self.apply_penalties(params, &mut l);
        for &b in banned {
            if let Some(x) = l.get_mut(b as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        let id = if params.is_greedy() {
            argmax(&l)
        } else {
            self.draw(params, &mut l)
        };
        *self.counts.entry(id).or_insert(0) += 1;
        SampledToken {
            id,
            logprob: logits[id as usize] - lse,
            top: top_logprobs(logits, lse, params.top_logprobs),
        }
    }

    fn apply_penalties(&self, p: &SamplingParams, l: &mut [f32]) {
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt_tokens.iter().chain(self.counts.keys());
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                if !done.insert(t) {
                    continue;
                }
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / p.repetition_penalty
                    } else {
                        *x * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(x) = l.get_mut(t as usize) {
                    *x -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
    }

    fn draw(&mut self, p: &SamplingParams, l: &mut [f32]) -> u32 {
        let inv_t = 1.0 / p.temperature;
        // Candidates sorted by logit, best first; widened until top_p is covered (exact).
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = l.iter().map(|&x| ((x - max) * inv_t).exp()).sum();
        let all: Vec<u32> = (0..l.len() as u32).collect();
        let mut k = if p.top_k > 0 {
            p.top_k.min(l.len())
        } else {
            64.min(l.len())
        };
        let cands = loop {
            let mut c = all.clone();
            if k < c.len() {
                c.select_nth_unstable_by(k - 1, |&a, &b| l[b as usize].total_cmp(&l[a as usize]));
                c.truncate(k);
            }
            c.sort_unstable_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
            let mass: f32 = c
                .iter()
                .map(|&i| ((l[i as usize] - max) * inv_t).exp())
                .sum::<f32>()
                / z;
            if p.top_k > 0 || k == l.len() || mass >= p.top_p {
                break c;
            }
            k = (k * 8).min(l.len());
        };
        // Probabilities over the candidates (top-k renormalises, as HF does).
        let mut probs: Vec<f32> = cands
            .iter()
            .map(|&i| ((l[i as usize] - max) * inv_t).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (j, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = j + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let cut = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&q| q >= cut).count().max(1));
        }
        let kept = &probs[..keep];
        let total: f32 = kept.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (j, &q) in kept.iter().enumerate() {
            if u < q {
                return cands[j];
            }
            u -= q;
        }
        cands[keep - 1]
    }
}

/// First index of the largest value (transformers' argmax tie rule).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

pub use crate::math::log_sum_exp;

/// The `n` most likely tokens under the raw logits, best first.
pub fn top_logprobs(l: &[f32], lse: f32, n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return vec![];
    }
    let mut idx: Vec<u32> = (0..l.len() as u32).collect();
    let n = n.min(l.len());
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, |&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        idx.truncate(n);
    }
    idx.sort_unstable_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
    idx.into_iter().map(|i| (i, l[i as usize] - lse)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            seed: Some(7),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&params(0.0), &[]);
        let t = s.sample(&params(0.0), &[0.0, 3.0, 3.0, 1.0], &[]);
        assert_eq!(t.id, 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let p = SamplingParams {
            top_k: 1,
            ..params(1.0)
        };
        let mut s = Sampler::new(&p, &[]);
        assert_eq!(s.sample(&p, &logits, &[]).id, argmax(&logits));
        let draw = |seed| {
            let p = SamplingParams {
                seed: Some(seed),
                ..params(1.0)
            };
            let mut s = Sampler::new(&p, &[]);
            (0..20)
                .map(|_| s.sample(&p, &logits, &[]).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let p = SamplingParams {
            top_p: 0.7,
            ..params(1.0)
        };
        let mut s = Sampler::new(&p, &[]);
        for _ in 0..200 {
            assert!(s.sample(&p, &logits, &[]).id <= 1);
        }
        let p = SamplingParams {
            min_p: 0.5,
            ..params(1.0)
        };
        let mut s = Sampler::new(&p, &[]);
        for _ in 0..200 {
            assert_eq!(s.sample(&p, &logits, &[]).id, 0);
        }
    }

    #[test]
    fn penalties_and_bans_change_the_choice() {
        let logits = [2.0f32, 1.9, 0.0];
        let p = SamplingParams {
            frequency_penalty: 1.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(&p, &[]);
        assert_eq!(s.sample(&p, &logits, &[]).id, 0);
        assert_eq!(
            s.sample(&p, &logits, &[]).id,
            1,
            "token 0 penalised after one use"
        );
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(&p, &[0]);
        assert_eq!(s.sample(&p, &logits, &[]).id, 1, "prompt token 0 penalised");
        let mut s = Sampler::new(&params(0.0), &[]);
        assert_eq!(s.sample(&params(0.0), &logits, &[0]).id, 1, "banned");
    }

    #[test]
    fn logprobs_are_the_raw_model_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let p = SamplingParams {
            top_logprobs: 2,
            temperature: 0.0,
            presence_penalty: 1.5,
            ..params(0.0)
        };
        let mut s = Sampler::new(&p, &[]);
        let t = s.sample(&p, &logits, &[]);
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((t.logprob - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 1]);
    }
}
