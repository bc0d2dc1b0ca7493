//! `safeloop-train round`: the scheduled Safe RLHF round. From what the server logged since the last round, it
//! builds a prompt pool (`harvest`), exchanges pairs with annotators and retrains the score models on new labels
//! (`annotate`), runs PPO-Lag from the champion policy (`optimise`), compares challenger and champion on a fixed
//! prompt set (`evaluate`), applies the promotion gate (`gate`) and publishes the challenger — as the new champion
//! (the server swaps) or under `rejected/<round>` (`publish`). Exit status: 0 promoted (or nothing to do), 3
//! rejected by the gate, 1 error.
//!
//! One round runs at a time per model (a lock in the registry store, so it holds on an object store too); each
//! step's result is recorded in the round's folder before the next starts, so a killed round continues with
//! `--resume` (or is dropped with `--abandon`); the log cursor advances only when a round commits.

pub mod annotate;
pub mod evaluate;
pub mod gate;
pub mod harvest;
pub mod lock;
pub mod models;
pub mod report;
pub mod state;
pub mod status;

use crate::data::preference::ScoreKind;
use crate::ppo::{scorers, Objective, PpoArgs, PpoSettings};
use anyhow::{bail, Context, Result};
use models::ScoreSource;
use safeloop_shared::registry::{ModelKind, ModelRef, Provenance, PublishOptions, Registry};
use serde_json::{json, Value};
use state::{Round, StateDir, Status};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct RoundArgs {
    /// The policy in the registry, ROOT/NAME: its `champion` is trained from and challenged.
    #[arg(long, value_name = "ROOT/NAME")]
    pub policy: String,
    /// Reward model: a rule (`token-fraction:…`), a directory or `registry:ROOT/NAME[@ALIAS]`.
    #[arg(long)]
    pub reward_model: String,
    /// Cost model (trains and gates): a rule, a directory or `registry:ROOT/NAME[@ALIAS]`.
    #[arg(long)]
    pub cost_model: String,
    /// An independent judge: a cost model never used for training or gating the server (same forms).
    #[arg(long)]
    pub judge: Option<String>,
    /// The rounds' state: committed cursor, consumed annotations, one folder per round.
    #[arg(long, default_value = "runs/rounds")]
    pub state_dir: PathBuf,
    /// Where registry versions are fetched to [default: STATE/cache].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Continue the unfinished round (finished steps are kept).
    #[arg(long)]
    pub resume: bool,
    /// Drop the unfinished round (the cursor stays where the last committed round left it).
    #[arg(long, conflicts_with = "resume")]
    pub abandon: bool,
    /// Check the configuration (flags, registry, score models, prompt files) and exit: 0 when a round could run.
    #[arg(long)]
    pub check: bool,
    /// A round lock whose holder sent no heartbeat for this long is stale and can be taken over.
    #[arg(long, default_value_t = 600)]
    pub lock_stale_secs: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub harvest: harvest::HarvestArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub annotate: annotate::AnnotateArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub evaluate: evaluate::EvaluateArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub gate: gate::GateArgs,
    /// Every `ppo-lag` setting.
    #[command(flatten)]
    #[serde(flatten)]
    pub ppo: PpoSettings,
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    Rejected,
    /// Too few new records: nothing done, the cursor stays.
    Skipped,
    Abandoned,
}

impl Outcome {
    /// The process exit status: 3 when the gate rejected the challenger, else 0.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Rejected => 3,
            _ => 0,
        }
    }
}

/// What the steps share.
struct Ctx<'a> {
    args: &'a RoundArgs,
    reg: Registry,
    name: String,
    state: StateDir,
    cache: PathBuf,
    reward: ScoreSource,
    cost: ScoreSource,
    judge: Option<ScoreSource>,
}

/// `--check`: every problem a round would stop on, without running one (nothing is written).
pub fn check(args: &RoundArgs) -> Value {
    let mut problems: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    match ModelRef::parse(&args.policy).and_then(|r| Ok((r.open()?, r))) {
        Ok((reg, r)) => {
            if let Err(e) = reg.resolve(&r.name, "champion") {
                problems.push(format!("--policy {}: no champion: {e}", args.policy));
            }
        }
        Err(e) => problems.push(format!("--policy {}: {e}", args.policy)),
    }
    let sources = [
        ("--reward-model", Some(&args.reward_model)),
        ("--cost-model", Some(&args.cost_model)),
        ("--judge", args.judge.as_ref()),
    ];
    for (flag, spec) in sources {
        let Some(spec) = spec else { continue };
        let ok = match ScoreSource::parse(spec) {
            Ok(ScoreSource::Rule(r)) => scorers::RuleSum::parse(&r).map(|_| ()),
            Ok(ScoreSource::Dir(d)) if d.join("config.json").is_file() => Ok(()),
            Ok(ScoreSource::Dir(d)) => Err(anyhow::anyhow!(
                "{} is not a score-model directory",
                d.display()
            )),
            Ok(ScoreSource::Registry(r)) => r
                .open()
                .and_then(|reg| reg.resolve(&r.name, &r.selector))
                .map(|_| ())
                .map_err(Into::into),
            Err(e) => Err(e),
        };
        if let Err(e) = ok {
            problems.push(format!("{flag} {spec}: {e:#}"));
        }
    }
    if let Err(e) = evaluate::load_prompts(&args.evaluate) {
        problems.push(format!("{e:#}"));
    }
    for f in &args.harvest.base_prompts {
        if let Err(e) = crate::data::prompts::read(f, &[]) {
            problems.push(format!("--base-prompts: {e:#}"));
        }
    }
    if !args.harvest.log_dir.is_dir() {
        notes.push(format!(
            "no trajectory log at {} yet (the server creates it; rounds are skipped until it has records)",
            args.harvest.log_dir.display()
        ));
    }
    if let Err(e) = args.ppo.sampling.params(1.0) {
        problems.push(format!("sampling flags: {e}"));
    }
    if args.ppo.prompt_batch_size == 0 || args.ppo.update_iters == 0 {
        problems.push("--prompt-batch-size and --update-iters must be at least 1".into());
    }
    if let Err(e) = crate::score::train::parse_score_format(&args.ppo.score_format) {
        problems.push(format!("{e}"));
    }
    json!({"ok": problems.is_empty(), "problems": problems, "notes": notes})
}

/// Runs (or resumes, or abandons) a round; returns how it ended and its summary.
pub fn run(args: &RoundArgs) -> Result<(Outcome, Value)> {
    let pref =
        ModelRef::parse(&args.policy).with_context(|| format!("--policy `{}`", args.policy))?;
    if ModelRef::is_registry_spec(&args.policy) || args.policy.contains('@') {
        bail!(
            "--policy `{}`: give ROOT/NAME (the round always starts from the champion)",
            args.policy
        );
    }
    let state = StateDir::open(&args.state_dir)?;
    let ctx = Ctx {
        reg: pref.open()?,
        name: pref.name.clone(),
        cache: args
            .cache
            .clone()
            .unwrap_or_else(|| state.root.join("cache")),
        state,
        reward: ScoreSource::parse(&args.reward_model).context("--reward-model")?,
        cost: ScoreSource::parse(&args.cost_model).context("--cost-model")?,
        judge: args
            .judge
            .as_deref()
            .map(ScoreSource::parse)
            .transpose()
            .context("--judge")?,
        args,
    };
    let unfinished = ctx.state.unfinished()?;
    let purpose = unfinished
        .as_ref()
        .map_or("a new round".to_string(), |r| r.id().to_string());
    let guard = lock::LockGuard::acquire(&pref, &purpose, args.lock_stale_secs)?;
    let mut status = status::StatusPush::new(&args.ppo.run.push, &ctx.state);
    let result = drive(&ctx, unfinished, &guard, &mut status);
    if result.is_err() {
        status.failed();
    }
    guard.release()?;
    result
}

fn drive(
    ctx: &Ctx,
    unfinished: Option<Round>,
    guard: &lock::LockGuard,
    status_push: &mut status::StatusPush<'_>,
) -> Result<(Outcome, Value)> {
    let args = ctx.args;
    let mut round = match (unfinished, args.resume, args.abandon) {
        (Some(r), false, false) => bail!(
            "{} in {} did not finish (next step: {}); run again with --resume to continue it or --abandon to drop it",
            r.id(),
            ctx.state.root.display(),
            next_step(&r)
        ),
        (Some(mut r), _, true) => {
            let summary = json!({"round": r.id(), "status": "abandoned", "steps_done": r.record.steps.keys().collect::<Vec<_>>()});
            ctx.state
                .finish(&mut r, Status::Abandoned, None, &Default::default(), &summary)?;
            eprintln!("{}: abandoned; the log cursor stays", r.id());
            status_push.finished(&r, &summary);
            return Ok((Outcome::Abandoned, summary));
        }
        (None, true, _) | (None, _, true) => bail!(
            "no unfinished round in {} to {}",
            ctx.state.root.display(),
            if args.resume { "resume" } else { "abandon" }
        ),
        (Some(r), true, false) => {
            eprintln!("{}: resuming at {}", r.id(), next_step(&r));
            r
        }
        (None, false, false) => ctx.state.begin()?,
    };
    let started = Instant::now();
    let mut metrics = crate::metrics::MetricsLog::open(&round.dir.join("metrics.jsonl"))?;
    let pb = crate::metrics::progress(state::STEPS.len() as u64, round.id());
    for (i, step) in state::STEPS.iter().enumerate() {
        if round.step(step).is_some() {
            pb.set_position(i as u64 + 1);
            continue;
        }
        pb.set_position(i as u64);
        pb.set_message(step.to_string());
        let t = Instant::now();
        let mut result = match *step {
            "harvest" => step_harvest(ctx, &round)?,
            "annotate" => step_annotate(ctx, &round)?,
            "optimise" => step_optimise(ctx, &round)?,
            "evaluate" => step_evaluate(ctx, &round)?,
            "gate" => step_gate(ctx, &round)?,
            "publish" => step_publish(ctx, &round)?,
            other => unreachable!("unknown step {other}"),
        };
        result["seconds"] = json!(t.elapsed().as_secs_f64());
        guard.check()?;
        round.record_step(step, result.clone())?;
        metrics.write(&json!({"round": round.id(), "step": step, "result": result}))?;
        status_push.step(&round);
        eprintln!(
            "{}: {step} done in {:.1}s",
            round.id(),
            t.elapsed().as_secs_f64()
        );
        if *step == "harvest" && !result["new_records_enough"].as_bool().unwrap_or(true) {
            pb.finish_and_clear();
            let summary = report::summary(&round, Status::Skipped, started.elapsed().as_secs_f64());
            report::write(&round, &summary)?;
            ctx.state.finish(
                &mut round,
                Status::Skipped,
                None,
                &Default::default(),
                &summary,
            )?;
            eprintln!(
                "{}: skipped: {} new records of `{}` (--min-new-records {})",
                round.id(),
                result["records"],
                result["model"].as_str().unwrap_or_default(),
                args.harvest.min_new_records
            );
            status_push.finished(&round, &summary);
            return Ok((Outcome::Skipped, summary));
        }
    }
    pb.finish_and_clear();
    let promoted = round.step("gate").expect("gate ran")["promote"]
        .as_bool()
        .unwrap_or(false);
    let status = if promoted {
        Status::Promoted
    } else {
        Status::Rejected
    };
    let harvest = round.step("harvest").expect("harvest ran");
    let cursor = serde_json::from_value(harvest["cursor_to"].clone())
        .context("round.json: harvest.cursor_to")?;
    let consumed =
        serde_json::from_value(round.step("annotate").expect("annotate ran")["consumed"].clone())
            .unwrap_or_default();
    let summary = report::summary(&round, status, started.elapsed().as_secs_f64());
    report::write(&round, &summary)?;
    ctx.state
        .finish(&mut round, status, Some(cursor), &consumed, &summary)?;
    status_push.finished(&round, &summary);
    Ok((
        if promoted {
            Outcome::Promoted
        } else {
            Outcome::Rejected
        },
        summary,
    ))
}

fn next_step(r: &Round) -> &'static str {
    state::STEPS
        .iter()
        .find(|s| r.step(s).is_none())
        .copied()
        .unwrap_or("commit")
}

fn step_result<'a>(round: &'a Round, step: &str) -> &'a Value {
    round
        .step(step)
        .unwrap_or_else(|| panic!("step {step} runs before the steps that read it"))
}

fn champion_version(round: &Round) -> Result<String> {
    step_result(round, "harvest")["champion"]
        .as_str()
        .map(String::from)
        .context("round.json: harvest.champion")
}

fn step_harvest(ctx: &Ctx, round: &Round) -> Result<Value> {
    let version = ctx.reg.resolve(&ctx.name, "champion").with_context(|| {
        format!(
            "{} has no champion in {} (publish one and `registry promote` it)",
            ctx.name,
            ctx.reg.describe()
        )
    })?;
    let champion = models::fetch_policy(&ctx.reg, &ctx.name, &version, &ctx.cache)?;
    let tok = safeloop_shared::load_causal_lm(&champion.path, &Default::default())
        .with_context(|| format!("loading {}", champion.path.display()))?
        .tokenizer;
    let served = ctx
        .args
        .harvest
        .served_model
        .clone()
        .unwrap_or_else(|| ctx.name.clone());
    let mut r = harvest::run(
        &ctx.args.harvest,
        &served,
        ctx.state.cursor()?,
        &tok,
        &round.step_dir("harvest")?,
        ctx.args.ppo.run.seed.wrapping_add(round.number()),
    )?;
    r["champion"] = json!(version);
    Ok(r)
}

fn step_annotate(ctx: &Ctx, round: &Round) -> Result<Value> {
    let responses = harvest::read_responses(&round.dir.join("harvest"))?;
    let scores = [
        (ScoreKind::Cost, &ctx.cost),
        (ScoreKind::Reward, &ctx.reward),
    ];
    let (mut r, consumed) = annotate::run(
        &ctx.args.annotate,
        round.id(),
        &responses,
        &ctx.state.consumed_annotations()?,
        &scores,
        &round.step_dir("annotate")?,
        &ctx.cache,
    )?;
    r["consumed"] = json!(consumed);
    Ok(r)
}

fn step_optimise(ctx: &Ctx, round: &Round) -> Result<Value> {
    let champion =
        models::fetch_policy(&ctx.reg, &ctx.name, &champion_version(round)?, &ctx.cache)?;
    let actor = models::trainable_dir(&champion, &round.dir.join("actor"))?;
    let reward = ctx.reward.resolve(&ctx.cache)?;
    let cost = ctx.cost.resolve(&ctx.cache)?;
    let pool = harvest::read_pool(&round.dir.join("harvest"))?;
    if pool.is_empty() {
        bail!("the prompt pool is empty: nothing new was served and no --base-prompts were given");
    }
    let mut settings = ctx.args.ppo.clone();
    if settings.save_every == 0 {
        // A killed round resumes mid-optimisation from here.
        settings.save_every = 5;
    }
    let ppo_args = PpoArgs {
        publish: Default::default(),
        actor,
        reward_model: reward.spec.clone(),
        cost_model: Some(cost.spec.clone()),
        reward_critic: None,
        cost_critic: None,
        prompts: vec![],
        out: round.step_dir("optimise")?,
        resume: true,
        settings,
    };
    let r = crate::ppo::train(&ppo_args, Objective::PpoLag, &pool)?;
    let first = r.history.iter().take(5).collect::<Vec<_>>();
    let last = r.history.iter().rev().take(5).collect::<Vec<_>>();
    let mean = |v: &[&crate::ppo::StepRecord], f: fn(&crate::ppo::StepRecord) -> Option<f64>| {
        let x: Vec<f64> = v.iter().filter_map(|r| f(r)).collect();
        (!x.is_empty()).then(|| x.iter().sum::<f64>() / x.len() as f64)
    };
    Ok(json!({
        "policy": r.policy.display().to_string(),
        "pool": pool.len(),
        "reward_model": reward.to_json(), "cost_model": cost.to_json(),
        "steps": r.summary["steps"], "final_lambda": r.summary["final_lambda"],
        "threshold": ctx.args.ppo.constraint.threshold,
        "first_steps": {"reward": mean(&first, |r| Some(r.reward)), "cost": mean(&first, |r| r.cost)},
        "last_steps": {"reward": mean(&last, |r| Some(r.reward)), "cost": mean(&last, |r| r.cost)},
        "plots": r.summary["plots"],
        "ppo": r.summary,
    }))
}

fn step_evaluate(ctx: &Ctx, round: &Round) -> Result<Value> {
    let prompts = evaluate::load_prompts(&ctx.args.evaluate)?;
    let fmt = crate::score::train::parse_score_format(&ctx.args.ppo.score_format)?;
    let cost = ctx.cost.resolve(&ctx.cache)?;
    let reward = ctx.reward.resolve(&ctx.cache)?;
    let judge = ctx
        .judge
        .as_ref()
        .map(|j| j.resolve(&ctx.cache))
        .transpose()?;
    let cost_s = scorers::load(&cost.spec, fmt)?;
    let reward_s = scorers::load(&reward.spec, fmt)?;
    let judge_s = judge
        .as_ref()
        .map(|j| scorers::load(&j.spec, fmt))
        .transpose()?;
    let judges = evaluate::Judges {
        cost: cost_s.as_ref(),
        reward: reward_s.as_ref(),
        judge: judge_s.as_deref(),
    };
    let champion =
        models::fetch_policy(&ctx.reg, &ctx.name, &champion_version(round)?, &ctx.cache)?;
    let challenger = PathBuf::from(
        step_result(round, "optimise")["policy"]
            .as_str()
            .context("round.json: optimise.policy")?,
    );
    let seed = ctx.args.ppo.run.seed;
    let sampling = &ctx.args.ppo.sampling;
    let a = evaluate::answer(&champion.path, &prompts, sampling, &judges, seed)?;
    let b = evaluate::answer(&challenger, &prompts, sampling, &judges, seed)?;
    let (mut r, files) = evaluate::compare(&a, &b, &prompts, &round.step_dir("evaluate")?)?;
    r["cost_model"] = cost.to_json();
    r["reward_model"] = reward.to_json();
    r["judge"] = judge.map_or(Value::Null, |j| j.to_json());
    r["plots"] = json!(files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>());
    Ok(r)
}

fn step_gate(ctx: &Ctx, round: &Round) -> Result<Value> {
    let e = step_result(round, "evaluate");
    let v = gate::judge(
        &ctx.args.gate,
        ctx.args.ppo.constraint.threshold,
        &e["champion"],
        &e["challenger"],
    );
    eprintln!(
        "{}: gate {}{}",
        round.id(),
        if v.promote { "passed" } else { "failed" },
        if v.promote {
            String::new()
        } else {
            format!(" ({})", v.failed().join(", "))
        }
    );
    let mut r = serde_json::to_value(&v)?;
    r["settings"] = serde_json::to_value(&ctx.args.gate)?;
    Ok(r)
}

fn step_publish(ctx: &Ctx, round: &Round) -> Result<Value> {
    let champion = champion_version(round)?;
    let gate = step_result(round, "gate");
    let promote = gate["promote"].as_bool().unwrap_or(false);
    let policy = PathBuf::from(
        step_result(round, "optimise")["policy"]
            .as_str()
            .context("round.json: optimise.policy")?,
    );
    let published = ctx.reg.publish(
        &ctx.name,
        &policy,
        &PublishOptions {
            kind: ModelKind::Policy,
            parent: Some(champion.clone()),
            produced_by: Provenance {
                command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
                round: Some(round.id().to_string()),
                data: json!({"harvest": step_result(round, "harvest"), "annotate": step_result(round, "annotate")}),
            },
            eval: json!({
                "verdict": if promote { "promoted" } else { "rejected" },
                "gate": gate,
                "evaluate": step_result(round, "evaluate"),
                "optimise": {"steps": step_result(round, "optimise")["steps"], "final_lambda": step_result(round, "optimise")["final_lambda"]},
            }),
        },
    )?;
    let version = published.manifest.version.clone();
    let alias = if promote {
        // Compare-and-swap from the champion the round started from: a champion moved by hand meanwhile is not
        // overwritten. A resumed round that already moved it finds it pointing here.
        let now = ctx.reg.alias(&ctx.name, "champion")?;
        if now.as_deref() != Some(version.as_str()) {
            ctx.reg
                .set_alias(
                    &ctx.name,
                    "champion",
                    &version,
                    &format!("{}: passed the promotion gate", round.id()),
                    Some(Some(&champion)),
                )
                .context(
                    "moving champion (did someone promote another version during the round?)",
                )?;
            if champion != version {
                ctx.reg
                    .set_alias(&ctx.name, "previous", &champion, round.id(), None)?;
            }
        }
        "champion".to_string()
    } else {
        let a = format!("rejected/{}", round.id());
        ctx.reg.set_alias(
            &ctx.name,
            &a,
            &version,
            &format!("{}: failed the promotion gate", round.id()),
            None,
        )?;
        a
    };
    Ok(
        json!({"version": version, "alias": alias, "champion_before": champion, "created": published.created,
        "registry": ctx.reg.describe()}),
    )
}
