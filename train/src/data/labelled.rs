//! Single responses with a safety label (`prompt, response, is_safe`): the cost model's sign term.

use super::{parse_row, read_jsonl_values};
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LabelledResponse {
    pub prompt: String,
    pub response: String,
    pub is_safe: bool,
}

pub fn read(path: &Path) -> Result<Vec<LabelledResponse>> {
    read_jsonl_values(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| parse_row(path, i + 1, v))
        .collect()
}
