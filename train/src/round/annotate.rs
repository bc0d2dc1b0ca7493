//! Step 2 (decoupled annotation): exports pairs of this round's logged responses to the same prompt into
//! `ANNOTATIONS/pending/<round>.jsonl` (PKU-SafeRLHF schema, labels empty) for annotators, and imports the
//! labelled files they put in `ANNOTATIONS/labelled/` that no round consumed yet. When new labels exist, the
//! registry's reward and cost models continue training from their champions on them; each new version is
//! published, and becomes the champion only if its held-out accuracy did not fall.

use super::models::{ResolvedScore, ScoreSource};
use crate::data::logged::{pair_rows, Response};
use crate::data::preference::ScoreKind;
use anyhow::{Context, Result};
use clap::Parser;
use safeloop_shared::registry::{ModelKind, Provenance, PublishOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct AnnotateArgs {
    /// The annotation folder: pairs to label are written to DIR/pending/, labelled files are read from
    /// DIR/labelled/ (PKU-SafeRLHF rows with the labels filled in).
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Pairs per prompt exported at most.
    #[arg(long, default_value_t = 16)]
    pub max_pairs_per_prompt: usize,
    /// Held-out preference files a retrained score model must not lose accuracy on (required to retrain).
    #[arg(long = "score-eval", num_args = 1..)]
    pub score_eval: Vec<PathBuf>,
    /// Extra `train-score` flags for the continued training (e.g. "--epochs 2 --freeze-layers 20").
    #[arg(long, default_value = "--epochs 1", allow_hyphen_values = true)]
    pub score_train_args: String,
}

/// A labelled file not consumed before.
struct NewFile {
    path: PathBuf,
    sha256: String,
}

#[derive(Parser)]
struct TrainScoreCli {
    #[command(flatten)]
    args: crate::score::train::TrainScoreArgs,
}

/// Runs the step; returns its result and the files it consumed (sha256 → path), committed with the round.
pub fn run(
    args: &AnnotateArgs,
    round_id: &str,
    responses: &[Response],
    consumed: &BTreeMap<String, String>,
    scores: &[(ScoreKind, &ScoreSource)],
    dir: &Path,
    cache: &Path,
) -> Result<(Value, BTreeMap<String, String>)> {
    let Some(root) = &args.annotations else {
        return Ok((
            json!({"skipped": "no --annotations folder configured"}),
            BTreeMap::new(),
        ));
    };
    // Export.
    let (prompts, rows) = pair_rows(responses, args.max_pairs_per_prompt);
    let pending = root.join("pending");
    std::fs::create_dir_all(&pending).with_context(|| format!("creating {}", pending.display()))?;
    let export = pending.join(format!("{round_id}.jsonl"));
    if !rows.is_empty() {
        let tmp = export.with_extension("partial");
        std::fs::write(
            &tmp,
            rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
        )
        .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &export)?;
    }
    // Import.
    let mut new = Vec::new();
    let labelled = root.join("labelled");
    if labelled.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&labelled)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        for path in files {
            let sha256 = safeloop_shared::assets::sha256_file(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            if !consumed.contains_key(&sha256) {
                new.push(NewFile { path, sha256 });
            }
        }
    }
    let mut imported = Vec::new();
    for f in &new {
        // A file that does not parse stops the round with its name (nothing is consumed).
        let rows = crate::data::pku::read(&f.path)?;
        let labelled_rows = rows
            .iter()
            .filter(|r| r.safer_response_id.is_some() || r.better_response_id.is_some())
            .count();
        imported.push(json!({"file": f.path.display().to_string(), "sha256": f.sha256, "rows": rows.len(), "labelled_rows": labelled_rows}));
    }
    let mut retrained = serde_json::Map::new();
    let files: Vec<PathBuf> = new.iter().map(|f| f.path.clone()).collect();
    if !files.is_empty() {
        for (kind, source) in scores {
            let r = retrain(args, round_id, *kind, source, &files, dir, cache)?;
            retrained.insert(kind.name().to_string(), r);
        }
    }
    // Files are consumed only when a model trained on them; otherwise (no registry score model, no --score-eval)
    // they stay pending for a later round that can use them.
    let used = retrained.values().any(|r| r.get("skipped").is_none());
    let consumed_now = if used {
        new.iter()
            .map(|f| (f.sha256.clone(), f.path.display().to_string()))
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok((
        json!({
            "exported": {"file": (!rows.is_empty()).then(|| export.display().to_string()), "pairs": rows.len(), "prompts": prompts},
            "imported": imported,
            "retrained": retrained,
        }),
        consumed_now,
    ))
}

fn held_out_accuracy(model: &Path, kind: ScoreKind, files: &[PathBuf]) -> Result<Option<f64>> {
    let lines = crate::score::eval_score(&crate::score::EvalScoreArgs {
        model: model.to_path_buf(),
        data: files.to_vec(),
        kind: Some(kind),
        batch_size: 16,
        max_length: 512,
        score_format: "safe-rlhf".into(),
        device: "cpu".into(),
        eval_tokens: 8192,
        threshold: None,
    })?;
    // Ranking accuracy over every pair (cost models: and the sign accuracy), averaged over the figures present.
    let v: Vec<f64> = lines
        .iter()
        .flat_map(|l| {
            let mut x = vec![l["ranking_accuracy"].as_f64()];
            if kind == ScoreKind::Cost {
                x.push(l["sign_accuracy"].as_f64());
            }
            x
        })
        .flatten()
        .collect();
    Ok((!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64))
}

fn retrain(
    args: &AnnotateArgs,
    round_id: &str,
    kind: ScoreKind,
    source: &ScoreSource,
    files: &[PathBuf],
    dir: &Path,
    cache: &Path,
) -> Result<Value> {
    let ScoreSource::Registry(r) = source else {
        return Ok(json!({"skipped": format!("{} is not a registry model", source.describe())}));
    };
    if args.score_eval.is_empty() {
        return Ok(json!({"skipped": "no --score-eval files to check the new model against"}));
    }
    let champion: ResolvedScore = source.resolve(cache)?;
    let champion_dir = champion
        .dir
        .clone()
        .expect("registry models have a directory");
    let out = dir.join(kind.name());
    let mut argv: Vec<String> = vec![
        "train-score".into(),
        "--model".into(),
        champion_dir.display().to_string(),
        "--kind".into(),
        kind.name().into(),
        "--out".into(),
        out.display().to_string(),
        "--resume".into(),
        "--data".into(),
    ];
    argv.extend(files.iter().map(|f| f.display().to_string()));
    argv.extend(args.score_train_args.split_whitespace().map(String::from));
    let cli = TrainScoreCli::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("--score-train-args `{}`: {e}", args.score_train_args))?;
    let summary = match crate::score::train::run(&cli.args) {
        Ok(s) => s,
        // Files with labels of the other kind only (e.g. no safety labels) leave this model as it is.
        Err(e) if e.to_string().starts_with("no usable") => {
            return Ok(json!({"skipped": format!("{e}")}))
        }
        Err(e) => return Err(e),
    };
    let new_dir = out.join("model");
    let calibration = recalibrate(kind, &champion_dir, &new_dir, &args.score_eval)?;
    let before = held_out_accuracy(&champion_dir, kind, &args.score_eval)?;
    let after = held_out_accuracy(&new_dir, kind, &args.score_eval)?;
    let reg = r.open()?;
    let model_kind = match kind {
        ScoreKind::Cost => ModelKind::Cost,
        ScoreKind::Reward => ModelKind::Reward,
    };
    let accepted = matches!((before, after), (Some(b), Some(a)) if a >= b);
    let published = reg.publish(
        &r.name,
        &new_dir,
        &PublishOptions {
            kind: model_kind,
            parent: champion.version.clone(),
            produced_by: Provenance {
                command: Some("safeloop-train round (annotate)".into()),
                round: Some(round_id.to_string()),
                data: json!({"files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()}),
            },
            eval: json!({"held_out": args.score_eval, "accuracy_before": before, "accuracy_after": after, "train": summary}),
        },
    )?;
    let version = published.manifest.version.clone();
    let alias = if accepted {
        reg.set_alias(
            &r.name,
            "champion",
            &version,
            &format!("{round_id}: retrained on new labels"),
            Some(champion.version.as_deref()),
        )?;
        if let Some(old) = champion.version.as_deref().filter(|o| *o != version) {
            reg.set_alias(&r.name, "previous", old, "round annotate", None)?;
        }
        "champion".to_string()
    } else {
        let a = format!("rejected/{round_id}");
        reg.set_alias(&r.name, &a, &version, "held-out accuracy fell", None)?;
        a
    };
    Ok(json!({
        "from": champion.version, "version": version, "alias": alias, "promoted": accepted,
        "held_out_accuracy_before": before, "held_out_accuracy_after": after,
        "calibration": calibration,
    }))
}

/// A cost model whose champion carried a calibrated gate threshold gets its own, on the held-out files at the
/// champion's target false-flag rate, written into its config.json before it is published (a retrained model's
/// score scale moves, so the champion's threshold would not fit it).
fn recalibrate(
    kind: ScoreKind,
    champion_dir: &Path,
    new_dir: &Path,
    held_out: &[PathBuf],
) -> Result<Value> {
    if kind != ScoreKind::Cost {
        return Ok(Value::Null);
    }
    let Some(old) = safeloop_shared::calibration::Calibration::read(champion_dir)
        .map_err(anyhow::Error::msg)?
    else {
        return Ok(Value::Null);
    };
    let out = crate::score::calibrate::run(&crate::score::calibrate::CalibrateArgs {
        model: new_dir.to_path_buf(),
        data: held_out.to_vec(),
        target_false_flag_rate: old.target_false_flag_rate,
        adapter: None,
        plot: None,
        dry_run: false,
        batch_size: 16,
        max_length: 512,
        score_format: "safe-rlhf".into(),
        device: "cpu".into(),
        eval_tokens: 8192,
    })
    .context("calibrating the retrained cost model on the held-out files")?;
    Ok(out["calibration"].clone())
}
