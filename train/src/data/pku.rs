//! PKU-SafeRLHF rows (spec §1.1): the seven core fields; `better_response_id` may be null (safety-only pairs).

use super::{parse_row, read_jsonl_values};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PkuRow {
    pub prompt: String,
    pub response_0: String,
    pub response_1: String,
    pub is_response_0_safe: Option<bool>,
    pub is_response_1_safe: Option<bool>,
    pub better_response_id: Option<u8>,
    pub safer_response_id: Option<u8>,
}

impl PkuRow {
    fn check(&self, path: &Path, line: usize) -> Result<()> {
        for (name, v) in [
            ("better_response_id", self.better_response_id),
            ("safer_response_id", self.safer_response_id),
        ] {
            if let Some(id) = v {
                if id > 1 {
                    bail!(
                        "{}:{}: field `{name}`: {id} is not 0 or 1",
                        path.display(),
                        line
                    );
                }
            }
        }
        Ok(())
    }

    /// The safety labels are contradictory: the safer response is labelled unsafe while the other is labelled
    /// safe (safe-rlhf drops these rows, spec §1.3).
    pub fn conflicting_safety(&self) -> bool {
        let (Some(s0), Some(s1), Some(safer)) = (
            self.is_response_0_safe,
            self.is_response_1_safe,
            self.safer_response_id,
        ) else {
            return false;
        };
        let (safer_safe, other_safe) = if safer == 0 { (s0, s1) } else { (s1, s0) };
        !safer_safe && other_safe
    }
}

pub fn read(path: &Path) -> Result<Vec<PkuRow>> {
    let mut rows = Vec::new();
    for (i, v) in read_jsonl_values(path)?.iter().enumerate() {
        let row: PkuRow = parse_row(path, i + 1, v)?;
        row.check(path, i + 1)?;
        rows.push(row);
    }
    Ok(rows)
}
