//! The loss of one batch of score-model examples, and evaluation over a whole set: ranking accuracy (higher >
//! lower), for cost models the sign accuracy over every labelled response (cost > 0 ⇔ unsafe), score statistics.

use super::activations::ActivationCache;
use super::batches::{collate, epoch_batches, Collated};
use super::classify::{self, Scored};
use crate::data::preference::{ScoreData, ScoreKind};
use crate::losses::log_sigmoid;
use crate::losses::preference::{self, LossType};
use crate::model::Model;
use anyhow::Result;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// What one batch gave.
pub struct BatchLoss {
    pub total: Tensor,
    pub loss: f64,
    pub l2: f64,
    pub rank_correct: usize,
    pub pairs: usize,
    pub sign_correct: usize,
    pub signed: usize,
    pub scores: Vec<f64>,
    /// Every response with a safety label: its end score and whether it is unsafe.
    pub labelled: Vec<Scored>,
}

fn index(t: &Tensor, rows: &[i64]) -> Tensor {
    t.index_select(0, &Tensor::from_slice(rows).to(t.device()))
}

fn kappa(labels: &[bool], like: &Tensor) -> Tensor {
    preference::cost_sign(labels, like)
}

/// Loss terms of a collated batch. Every example counts once: the loss is the sum of per-pair terms (Bradley–Terry,
/// plus the two sign terms for cost pairs) and per-single sign terms over the number of examples, plus
/// `reg · mean(score²)` over every end score (or every token-wise slice).
pub fn batch_loss(
    model: &Model,
    c: &Collated,
    kind: ScoreKind,
    loss_type: LossType,
    reg: f64,
) -> BatchLoss {
    let (scores, end) = crate::device::autocast(model.device(), || match &c.lower {
        Some(lower) => model.end_scores_upper(lower, &c.batch.mask),
        None => model.end_scores(&c.batch),
    });
    let hi_rows: Vec<i64> = c.pair_rows.iter().map(|p| p.0).collect();
    let lo_rows: Vec<i64> = c.pair_rows.iter().map(|p| p.1).collect();
    let n_pairs = hi_rows.len();
    let n_single = c.single_rows.len();
    let mut terms: Vec<Tensor> = Vec::new();
    let mut l2s: Vec<Tensor> = Vec::new();
    let mut out = BatchLoss {
        total: Tensor::new(),
        loss: 0.0,
        l2: 0.0,
        rank_correct: 0,
        pairs: n_pairs,
        sign_correct: 0,
        signed: 0,
        scores: Vec::<f64>::try_from(&end.to_kind(Kind::Double).detach()).unwrap_or_default(),
        labelled: vec![],
    };
    if kind == ScoreKind::Cost {
        for (&(h, l), &(hs, ls)) in c.pair_rows.iter().zip(&c.pair_safe) {
            for (row, safe) in [(h, hs), (l, ls)] {
                if let Some(safe) = safe {
                    out.labelled.push(Scored {
                        cost: out.scores[row as usize],
                        unsafe_: !safe,
                    });
                }
            }
        }
        for (&row, &safe) in c.single_rows.iter().zip(&c.single_safe) {
            out.labelled.push(Scored {
                cost: out.scores[row as usize],
                unsafe_: !safe,
            });
        }
    }
    if n_pairs > 0 {
        let (hi, lo) = (index(&end, &hi_rows), index(&end, &lo_rows));
        out.rank_correct = hi.gt_tensor(&lo).sum(Kind::Int64).int64_value(&[]) as usize;
        let labelled =
            kind == ScoreKind::Cost && c.pair_safe.iter().all(|(h, l)| h.is_some() && l.is_some());
        let (kh, kl) = if labelled {
            let hs: Vec<bool> = c.pair_safe.iter().map(|p| p.0.unwrap()).collect();
            let ls: Vec<bool> = c.pair_safe.iter().map(|p| p.1.unwrap()).collect();
            (Some(kappa(&hs, &hi)), Some(kappa(&ls, &lo)))
        } else {
            (None, None)
        };
        if let (Some(kh), Some(kl)) = (&kh, &kl) {
            out.sign_correct += (&hi * kh).gt(0.0).sum(Kind::Int64).int64_value(&[]) as usize;
            out.sign_correct += (&lo * kl).gt(0.0).sum(Kind::Int64).int64_value(&[]) as usize;
            out.signed += 2 * n_pairs;
        }
        let parts = match (loss_type, &kh, &kl) {
            (LossType::SequenceWise, Some(kh), Some(kl)) => {
                preference::cost_bt(&hi, &lo, kh, kl, reg)
            }
            (LossType::SequenceWise, _, _) => preference::reward_bt(&hi, &lo, reg),
            (LossType::TokenWise, Some(kh), Some(kl)) => preference::cost_bt_tokenwise(
                &index(&scores, &hi_rows),
                &index(&scores, &lo_rows),
                kh,
                kl,
                &c.spans,
                reg,
            ),
            (LossType::TokenWise, _, _) => preference::reward_bt_tokenwise(
                &index(&scores, &hi_rows),
                &index(&scores, &lo_rows),
                &c.spans,
                reg,
            ),
        };
        terms.push(parts.loss * n_pairs as f64);
        l2s.push(parts.l2 * n_pairs as f64);
    }
    if n_single > 0 {
        let s = index(&end, &c.single_rows);
        let k = kappa(&c.single_safe, &s);
        out.sign_correct += (&s * &k).gt(0.0).sum(Kind::Int64).int64_value(&[]) as usize;
        out.signed += n_single;
        terms.push((-log_sigmoid(&(&s * &k))).sum(Kind::Float));
        l2s.push(s.square().mean(Kind::Float) * reg * n_single as f64);
    }
    let n = (n_pairs + n_single).max(1) as f64;
    let loss = Tensor::stack(&terms, 0).sum(Kind::Float) / n;
    let l2 = Tensor::stack(&l2s, 0).sum(Kind::Float) / n;
    out.loss = loss.double_value(&[]);
    out.l2 = l2.double_value(&[]);
    out.total = loss + l2;
    out
}

/// How to evaluate: batching, padding, an optional activation cache, and the cost model's gate threshold.
pub struct EvalSetup<'a> {
    pub batch_size: usize,
    /// Padded tokens per forward pass.
    pub max_tokens: usize,
    pub pad: i64,
    pub cache: Option<(&'a ActivationCache, Kind)>,
    /// Flagged = cost > threshold (classification figures of cost models).
    pub threshold: f64,
}

/// Evaluates `model` on `data`: one JSON object with `pairs`, `ranking_accuracy` (null without pairs),
/// `sign_accuracy` (cost models with labels; else null), `loss`, score `mean`/`std`, and for cost models with
/// labels `classification` (ROC AUC, precision / recall / false-flag rate at the threshold). The labelled scores
/// come back too (for calibration and curves).
pub fn evaluate(
    model: &Model,
    data: &ScoreData,
    kind: ScoreKind,
    setup: &EvalSetup,
) -> Result<(Value, Vec<Scored>)> {
    let _g = tch::no_grad_guard();
    let (mut rank, mut pairs, mut sign, mut signed, mut loss_sum, mut n) =
        (0, 0, 0, 0, 0.0, 0usize);
    let mut all = Vec::new();
    let mut labelled = Vec::new();
    for items in epoch_batches(data, setup.batch_size, 0, 0, false) {
        // Split long batches so evaluation memory stays bounded.
        for part in split_by_tokens(data, &items, setup.max_tokens) {
            let c = collate(data, &part, setup.pad, model.device(), setup.cache)?;
            let b = batch_loss(model, &c, kind, LossType::SequenceWise, 0.0);
            rank += b.rank_correct;
            pairs += b.pairs;
            sign += b.sign_correct;
            signed += b.signed;
            loss_sum += b.loss * part.len() as f64;
            n += part.len();
            all.extend(b.scores);
            labelled.extend(b.labelled);
        }
    }
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    let std =
        (all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / all.len().max(1) as f64).sqrt();
    let frac = |a: usize, b: usize| {
        if b == 0 {
            Value::Null
        } else {
            json!(a as f64 / b as f64)
        }
    };
    let classification = if labelled.is_empty() {
        Value::Null
    } else {
        classify::report(&labelled, setup.threshold)
    };
    Ok((
        json!({
            "kind": kind.name(),
            "pairs": pairs,
            "singles": data.singles.len(),
            "ranking_accuracy": frac(rank, pairs),
            "sign_accuracy": if kind == ScoreKind::Cost { frac(sign, signed) } else { Value::Null },
            "classification": classification,
            "loss": loss_sum / n.max(1) as f64,
            "score_mean": mean,
            "score_std": std,
        }),
        labelled,
    ))
}

/// Splits a batch so no part pads to more than `max_tokens` tokens.
pub fn split_by_tokens(
    data: &ScoreData,
    items: &[super::batches::Item],
    max_tokens: usize,
) -> Vec<Vec<super::batches::Item>> {
    use super::batches::Item;
    let mut parts = vec![];
    let mut cur: Vec<Item> = vec![];
    let (mut rows, mut longest) = (0usize, 0usize);
    for it in items {
        let (r, l) = match *it {
            Item::Pair(i) => (2, data.pairs[i].higher.len().max(data.pairs[i].lower.len())),
            Item::Single(i) => (1, data.singles[i].ids.len()),
        };
        if !cur.is_empty() && (rows + r) * longest.max(l) > max_tokens {
            parts.push(std::mem::take(&mut cur));
            rows = 0;
            longest = 0;
        }
        cur.push(*it);
        rows += r;
        longest = longest.max(l);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}
