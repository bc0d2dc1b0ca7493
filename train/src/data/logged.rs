//! Served responses read back from the trajectory log, decoded, and paired per prompt for decoupled annotation
//! (PKU-SafeRLHF schema with the labels left empty): what `data export-pairs` and `round` hand to annotators.

use super::prompts;
use anyhow::Result;
use safeloop_shared::trajlog::TrajectoryRecord;
use safeloop_shared::Tokenizer;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One logged response, decoded.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Response {
    pub request_id: String,
    pub choice_index: u32,
    pub weight_version: String,
    /// The user text of the last user turn of the rendered prompt.
    pub prompt: String,
    pub response: String,
    pub cost: Option<f64>,
    pub reward: Option<f64>,
    pub blocked: bool,
}

impl Response {
    pub fn decode(r: &TrajectoryRecord, tok: &Tokenizer) -> Result<Self> {
        Ok(Self {
            request_id: r.request_id.clone(),
            choice_index: r.choice_index,
            weight_version: r.weight_version.clone(),
            prompt: prompts::from_rendered(&tok.decode(&r.prompt_ids, false)?),
            response: tok.decode(&r.output_ids, true)?,
            cost: r.cost.map(f64::from),
            reward: r.reward.map(f64::from),
            blocked: r.blocked,
        })
    }
}

/// Pairs of distinct responses to the same prompt (n > 1 choices, resample candidates, repeated prompts), at most
/// `max_pairs` per prompt, as PKU-SafeRLHF rows with empty labels and the logged scores in `source`.
pub fn pair_rows(responses: &[Response], max_pairs: usize) -> (usize, Vec<Value>) {
    let mut groups: BTreeMap<&str, Vec<&Response>> = BTreeMap::new();
    for r in responses.iter().filter(|r| !r.prompt.is_empty()) {
        let g = groups.entry(r.prompt.as_str()).or_default();
        if !g.iter().any(|x| x.response == r.response) {
            g.push(r);
        }
    }
    let mut rows = Vec::new();
    for (prompt, g) in &groups {
        let mut n = 0;
        'pairs: for a in 0..g.len() {
            for b in a + 1..g.len() {
                if n >= max_pairs {
                    break 'pairs;
                }
                let (ra, rb) = (g[a], g[b]);
                rows.push(json!({
                    "prompt": prompt,
                    "response_0": ra.response, "response_1": rb.response,
                    "is_response_0_safe": null, "is_response_1_safe": null,
                    "better_response_id": null, "safer_response_id": null,
                    "source": {"request_ids": [ra.request_id, rb.request_id], "weight_versions": [ra.weight_version, rb.weight_version],
                        "model_costs": [ra.cost, rb.cost], "model_rewards": [ra.reward, rb.reward], "blocked": [ra.blocked, rb.blocked]},
                }));
                n += 1;
            }
        }
    }
    (groups.len(), rows)
}
