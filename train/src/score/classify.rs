//! A cost model as a classifier of responses (cost > threshold ⇔ flagged unsafe): ROC AUC, precision and recall
//! at a threshold, the false-flag rate on safe responses, the ROC curve, and the threshold that meets a target
//! false-flag rate (what `calibrate` writes into the model's manifest).

use serde_json::{json, Value};

/// One labelled response: its cost and whether it is unsafe.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub cost: f64,
    pub unsafe_: bool,
}

/// Counts at one threshold (flagged = cost > threshold).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Confusion {
    pub true_flags: usize,
    pub false_flags: usize,
    pub missed: usize,
    pub passed: usize,
}

impl Confusion {
    pub fn at(scored: &[Scored], threshold: f64) -> Self {
        let mut c = Self::default();
        for s in scored {
            match (s.cost > threshold, s.unsafe_) {
                (true, true) => c.true_flags += 1,
                (true, false) => c.false_flags += 1,
                (false, true) => c.missed += 1,
                (false, false) => c.passed += 1,
            }
        }
        c
    }

    fn ratio(a: usize, b: usize) -> Option<f64> {
        (b > 0).then(|| a as f64 / b as f64)
    }

    /// Flagged responses that are unsafe.
    pub fn precision(&self) -> Option<f64> {
        Self::ratio(self.true_flags, self.true_flags + self.false_flags)
    }

    /// Unsafe responses flagged.
    pub fn recall(&self) -> Option<f64> {
        Self::ratio(self.true_flags, self.true_flags + self.missed)
    }

    /// Safe responses flagged.
    pub fn false_flag_rate(&self) -> Option<f64> {
        Self::ratio(self.false_flags, self.false_flags + self.passed)
    }

    pub fn accuracy(&self) -> Option<f64> {
        Self::ratio(
            self.true_flags + self.passed,
            self.true_flags + self.passed + self.false_flags + self.missed,
        )
    }
}

/// Area under the ROC curve: the probability that a random unsafe response costs more than a random safe one
/// (ties count half). `None` without both classes.
pub fn roc_auc(scored: &[Scored]) -> Option<f64> {
    let mut v: Vec<Scored> = scored.to_vec();
    v.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    let pos = v.iter().filter(|s| s.unsafe_).count();
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].cost == v[i].cost {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * v[i..=j].iter().filter(|s| s.unsafe_).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// The ROC curve as (false-flag rate, recall) points, one per distinct threshold, from (0,0) to (1,1).
pub fn roc_curve(scored: &[Scored]) -> Vec<(f64, f64, f64)> {
    let mut thresholds: Vec<f64> = scored.iter().map(|s| s.cost).collect();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let mut out = vec![(f64::INFINITY, 0.0, 0.0)];
    for t in thresholds {
        // Flagged = cost ≥ t, i.e. cost > the next value below t.
        let c = Confusion::at(scored, t - t.abs().max(1.0) * 1e-12);
        out.push((
            t,
            c.false_flag_rate().unwrap_or(0.0),
            c.recall().unwrap_or(0.0),
        ));
    }
    out
}

/// The lowest threshold whose false-flag rate on the safe responses is at most `target` (flagged = cost >
/// threshold). `None` without safe responses.
pub fn threshold_for_false_flag_rate(scored: &[Scored], target: f64) -> Option<f64> {
    let mut safe: Vec<f64> = scored
        .iter()
        .filter(|s| !s.unsafe_)
        .map(|s| s.cost)
        .collect();
    if safe.is_empty() {
        return None;
    }
    safe.sort_by(|a, b| b.total_cmp(a));
    // At most k = floor(target · n) safe responses may cost more than the threshold: the threshold is the
    // (k+1)-th highest safe cost (flagged = cost > threshold, so equal costs stay unflagged); any lower one would
    // flag k + 1.
    let k = ((target * safe.len() as f64).floor() as usize).min(safe.len() - 1);
    let t = safe[k];
    Some(t)
}

/// The highest accuracy any threshold reaches on these responses, and that threshold (flagged = cost >
/// threshold): the ceiling of the sign accuracy for this ordering of the responses, which tells how much of the
/// sign errors is the ranking and how much the model's zero point. Fitted on the responses it is reported on, so
/// optimistic. `None` without responses.
pub fn best_accuracy(scored: &[Scored]) -> Option<(f64, f64)> {
    let mut v = scored.to_vec();
    v.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    let lowest = v.first()?.cost;
    // Below every cost everything is flagged: the unsafe responses are the correct ones.
    let mut correct = v.iter().filter(|s| s.unsafe_).count();
    let mut best = (correct, lowest - 1.0);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].cost == v[i].cost {
            j += 1;
        }
        // At threshold v[i].cost, responses 0..=j pass.
        for s in &v[i..=j] {
            if s.unsafe_ {
                correct -= 1;
            } else {
                correct += 1;
            }
        }
        if correct > best.0 {
            best = (correct, v[i].cost);
        }
        i = j + 1;
    }
    Some((best.0 as f64 / v.len() as f64, best.1))
}

/// The classification figures at `threshold` as JSON (what `eval-score` prints).
pub fn report(scored: &[Scored], threshold: f64) -> Value {
    let c = Confusion::at(scored, threshold);
    json!({
        "responses": scored.len(),
        "unsafe": scored.iter().filter(|s| s.unsafe_).count(),
        "roc_auc": roc_auc(scored),
        "threshold": threshold,
        "precision": c.precision(),
        "recall": c.recall(),
        "false_flag_rate": c.false_flag_rate(),
        "accuracy_at_threshold": c.accuracy(),
        "best_accuracy": best_accuracy(scored).map(|(accuracy, threshold)| json!({
            "accuracy": accuracy,
            "threshold": threshold,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(cost: f64, unsafe_: bool) -> Scored {
        Scored { cost, unsafe_ }
    }

    #[test]
    fn auc_of_perfect_random_and_reversed_rankings() {
        let perfect = [s(-2.0, false), s(-1.0, false), s(1.0, true), s(2.0, true)];
        assert_eq!(roc_auc(&perfect), Some(1.0));
        let reversed = [s(2.0, false), s(1.0, false), s(-1.0, true), s(-2.0, true)];
        assert_eq!(roc_auc(&reversed), Some(0.0));
        let tied = [s(0.0, false), s(0.0, true)];
        assert_eq!(roc_auc(&tied), Some(0.5));
        // One inversion out of 2 × 2 = 4 comparisons.
        let one_off = [s(0.0, false), s(2.0, false), s(1.0, true), s(3.0, true)];
        assert_eq!(roc_auc(&one_off), Some(0.75));
        assert_eq!(roc_auc(&[s(1.0, true)]), None);
    }

    #[test]
    fn confusion_counts_and_rates() {
        let v = [s(-1.0, false), s(0.5, false), s(1.0, true), s(-0.5, true)];
        let c = Confusion::at(&v, 0.0);
        assert_eq!(
            c,
            Confusion {
                true_flags: 1,
                false_flags: 1,
                missed: 1,
                passed: 1
            }
        );
        assert_eq!(c.precision(), Some(0.5));
        assert_eq!(c.recall(), Some(0.5));
        assert_eq!(c.false_flag_rate(), Some(0.5));
    }

    #[test]
    fn threshold_meets_the_target_false_flag_rate() {
        // Ten safe responses costing 0..9, five unsafe at 10..14.
        let mut v: Vec<Scored> = (0..10).map(|i| s(i as f64, false)).collect();
        v.extend((10..15).map(|i| s(i as f64, true)));
        let t = threshold_for_false_flag_rate(&v, 0.1).unwrap();
        let c = Confusion::at(&v, t);
        assert!(c.false_flag_rate().unwrap() <= 0.1, "{t}: {c:?}");
        assert_eq!(
            c.false_flags, 1,
            "the highest threshold that keeps ≤ 10% is the 2nd-highest safe cost"
        );
        assert_eq!(c.recall(), Some(1.0));
        let t0 = threshold_for_false_flag_rate(&v, 0.0).unwrap();
        assert_eq!(Confusion::at(&v, t0).false_flags, 0);
        assert!(threshold_for_false_flag_rate(&[s(1.0, true)], 0.1).is_none());
    }

    #[test]
    fn best_accuracy_finds_the_threshold_that_separates_best() {
        // Safe at -2, -1, 1.5; unsafe at 0.5, 1, 2, 3. Flagging above -1 gets all but the safe 1.5 right (6/7);
        // above 1.0 misses the unsafe 0.5 and 1.0 and flags the safe 1.5 (4/7); above 1.5, 5/7.
        let v = [
            s(-2.0, false),
            s(-1.0, false),
            s(1.5, false),
            s(0.5, true),
            s(1.0, true),
            s(2.0, true),
            s(3.0, true),
        ];
        assert_eq!(best_accuracy(&v), Some((6.0 / 7.0, -1.0)));
        // All unsafe: flag everything, below the lowest cost.
        assert_eq!(
            best_accuracy(&[s(1.0, true), s(2.0, true)]),
            Some((1.0, 0.0))
        );
        // All safe: pass everything, at the highest cost; ties move together.
        assert_eq!(
            best_accuracy(&[s(1.0, false), s(1.0, false)]),
            Some((1.0, 1.0))
        );
        assert_eq!(best_accuracy(&[]), None);
        assert!(
            report(&v, 0.0)["best_accuracy"]["accuracy"]
                .as_f64()
                .unwrap()
                > 0.85
        );
    }

    #[test]
    fn roc_curve_runs_from_origin_to_one() {
        let v = [s(-1.0, false), s(0.5, false), s(1.0, true), s(-0.5, true)];
        let r = roc_curve(&v);
        assert_eq!((r[0].1, r[0].2), (0.0, 0.0));
        let last = r.last().unwrap();
        assert_eq!((last.1, last.2), (1.0, 1.0));
    }
}
