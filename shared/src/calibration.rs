//! A cost model's calibrated gate threshold, kept in its `config.json` under `safeloop_calibration` (HF loaders
//! ignore unknown keys), so it travels with the model through `merge`, the registry (it is part of the version's
//! bytes) and hot swaps. `safeloop-train calibrate` writes it; the server gates at it unless `--gate-threshold`
//! is given.

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const KEY: &str = "safeloop_calibration";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Flagged = cost > threshold.
    pub threshold: f32,
    /// The false-flag rate (safe responses flagged) the threshold was chosen for.
    pub target_false_flag_rate: f64,
    /// What the threshold gave on the calibration data.
    pub false_flag_rate: f64,
    pub recall: f64,
    pub precision: Option<f64>,
    pub roc_auc: Option<f64>,
    /// Labelled responses (and of those unsafe) it was calibrated on.
    pub responses: usize,
    pub unsafe_responses: usize,
    /// The calibration files.
    pub data: Vec<String>,
}

impl Calibration {
    /// The calibration in `dir/config.json`, if any. A malformed entry is an error naming the file.
    pub fn read(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        match v.get(KEY) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(c) => serde_json::from_value(c.clone())
                .map(Some)
                .map_err(|e| format!("{}: `{KEY}`: {e}", path.display())),
        }
    }

    /// Writes (or replaces) the calibration in `dir/config.json`, keeping every other key; atomic (temp file +
    /// rename), so a crash leaves the old file.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| format!("{}: not a JSON object", path.display()))?;
        obj.insert(
            KEY.into(),
            serde_json::to_value(self).map_err(|e| e.to_string())?,
        );
        let tmp = dir.join(".config.json.tmp");
        let body = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, body + "\n").map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("replacing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_config_json_keeping_other_keys() {
        let dir = std::env::temp_dir().join(format!("safeloop-calib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"hidden_size": 8, "score_type": "cost"}"#,
        )
        .unwrap();
        assert_eq!(Calibration::read(&dir).unwrap(), None);
        let c = Calibration {
            threshold: 0.75,
            target_false_flag_rate: 0.05,
            false_flag_rate: 0.049,
            recall: 0.8,
            precision: Some(0.9),
            roc_auc: Some(0.88),
            responses: 100,
            unsafe_responses: 40,
            data: vec!["dev.jsonl".into()],
        };
        c.write(&dir).unwrap();
        assert_eq!(Calibration::read(&dir).unwrap(), Some(c));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(v["hidden_size"], 8);
        std::fs::write(
            dir.join("config.json"),
            r#"{"safeloop_calibration": {"threshold": "high"}}"#,
        )
        .unwrap();
        let e = Calibration::read(&dir).unwrap_err();
        assert!(e.contains("safeloop_calibration"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
