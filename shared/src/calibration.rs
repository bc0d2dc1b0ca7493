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
        Self::read_key(&dir.join("config.json"), KEY)
    }

    /// Writes (or replaces) the calibration in `dir/config.json`, keeping every other key.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        self.write_key(&dir.join("config.json"), KEY)
    }

    /// The calibration under `key` of the JSON object in `path` (e.g. an adapter's `adapter.json`), if any.
    pub fn read_key(path: &Path, key: &str) -> Result<Option<Self>, String> {
        match read_object(path)?.remove(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(c) => serde_json::from_value(c)
                .map(Some)
                .map_err(|e| format!("{}: `{key}`: {e}", path.display())),
        }
    }

    /// Writes (or replaces) the calibration under `key` of the JSON object in `path`, keeping every other key;
    /// atomic (temp file + rename), so a crash leaves the old file.
    pub fn write_key(&self, path: &Path, key: &str) -> Result<(), String> {
        let mut obj = read_object(path)?;
        obj.insert(
            key.into(),
            serde_json::to_value(self).map_err(|e| e.to_string())?,
        );
        let name = path
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy());
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let body = serde_json::to_string_pretty(&obj).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, body + "\n").map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))
    }
}

fn read_object(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(o)) => Ok(o),
        Ok(_) => Err(format!("{}: not a JSON object", path.display())),
        Err(e) => Err(format!("{}: not JSON: {e}", path.display())),
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
