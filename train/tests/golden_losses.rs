//! Every loss case of `../shared/golden/losses.json` (computed by PyTorch in float64), reproduced within 1e-6 by
//! the functions the trainer runs, in f64.

use safeloop_train::losses::{gae, lagrange, masked_mean, ppo, preference, shaping};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-6;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/golden/losses.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read losses.json"))
        .expect("parse losses.json")
}

fn t1(v: &Value) -> Tensor {
    let xs: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Tensor::from_slice(&xs)
}

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Tensor> = v.as_array().unwrap().iter().map(t1).collect();
    Tensor::stack(&rows, 0)
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn close_scalar(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL,
        "{name}: got {got}, want {want} (|Δ| = {:e})",
        (got - want).abs()
    );
}

fn close(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{name}: shape");
    assert_eq!(got.kind(), Kind::Double, "{name}: computed in f64");
    let diff = (got - want).abs().max().double_value(&[]);
    assert!(diff <= TOL, "{name}: max |Δ| = {diff:e}");
}

#[test]
fn reward_bradley_terry() {
    let g = &golden()["reward_bt"];
    let (r_w, r_l) = (t1(&g["inputs"]["r_w"]), t1(&g["inputs"]["r_l"]));
    let parts = preference::reward_bt(&r_w, &r_l, f(&g["inputs"]["regularization"]));
    let o = &g["outputs"];
    close_scalar("loss", preference::scalar(&parts.loss), f(&o["loss"]));
    close_scalar("l2_term", preference::scalar(&parts.l2), f(&o["l2_term"]));
    close_scalar("total", preference::scalar(&parts.total), f(&o["total"]));
    close_scalar(
        "accuracy",
        preference::ranking_accuracy(&r_w, &r_l),
        f(&o["accuracy"]),
    );
}

#[test]
fn cost_model_loss_and_signs() {
    let g = &golden()["cost_model"];
    let i = &g["inputs"];
    let (c_h, c_l) = (t1(&i["c_h"]), t1(&i["c_l"]));
    // The trainer derives κ from the safety labels; check that against the stored signs first.
    let k_h = preference::cost_sign(&bools(&i["is_safe_h"]), &c_h);
    let k_l = preference::cost_sign(&bools(&i["is_safe_l"]), &c_l);
    close("k_h", &k_h, &t1(&i["k_h"]));
    close("k_l", &k_l, &t1(&i["k_l"]));
    let parts = preference::cost_bt(&c_h, &c_l, &k_h, &k_l, f(&i["regularization"]));
    let o = &g["outputs"];
    close_scalar("loss", preference::scalar(&parts.loss), f(&o["loss"]));
    close_scalar("l2_term", preference::scalar(&parts.l2), f(&o["l2_term"]));
    close_scalar("total", preference::scalar(&parts.total), f(&o["total"]));
    close_scalar(
        "accuracy",
        preference::ranking_accuracy(&c_h, &c_l),
        f(&o["accuracy"]),
    );
    // Token-wise with one-token spans reduces to the sequence-wise loss.
    let spans = vec![(0usize, 0usize); 8];
    let tw = preference::cost_bt_tokenwise(
        &c_h.unsqueeze(1),
        &c_l.unsqueeze(1),
        &k_h,
        &k_l,
        &spans,
        0.001,
    );
    close_scalar(
        "token-wise (1 token)",
        preference::scalar(&tw.total),
        f(&o["total"]),
    );
}

#[test]
fn generalised_advantage_estimation() {
    let g = &golden()["gae"];
    let i = &g["inputs"];
    let (adv, ret) = gae::advantages_and_returns(
        &t2(&i["values"]),
        &t2(&i["rewards"]),
        &t2(&i["mask"]),
        i["start"].as_u64().unwrap() as usize,
        f(&i["gamma"]),
        f(&i["lambda"]),
    );
    close("advantages", &adv, &t2(&g["outputs"]["advantages"]));
    close("returns", &ret, &t2(&g["outputs"]["returns"]));
}

#[test]
fn per_token_reward_and_cost_shaping() {
    let g = &golden()["reward_cost_shaping"];
    let i = &g["inputs"];
    let mask = t2(&i["mask"]);
    let (r, c) = shaping::per_token(
        &t2(&i["logp_old"]),
        &t2(&i["logp_ref"]),
        &mask,
        &t1(&i["reward"]),
        Some(&t1(&i["cost"])),
        f(&i["beta"]),
        f(&i["clip_range_score"]),
    );
    close("rewards", &r, &t2(&g["outputs"]["rewards"]));
    close("costs", &c.unwrap(), &t2(&g["outputs"]["costs"]));
    let end: Vec<i64> = g["outputs"]["end_index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let got = shaping::end_one_hot(&mask, Kind::Double).argmax(1, false);
    assert_eq!(Vec::<i64>::try_from(&got).unwrap(), end);
}

#[test]
fn ppo_lagrangian_actor_loss() {
    let g = &golden()["ppo_lag_actor"];
    let i = &g["inputs"];
    let mut lag = lagrange::Lagrange::new(1.0, 0.1, 0.0, None, 128);
    lag.eta = f(&i["eta"]);
    close_scalar("lambda", lag.lambda(), f(&g["outputs"]["lambda"]));
    let adv = lagrange::combine_advantages(
        &t2(&i["reward_advantages"]),
        &t2(&i["cost_advantages"]),
        lag.lambda(),
    );
    close("advantages", &adv, &t2(&g["outputs"]["advantages"]));
    let loss = ppo::actor_loss(
        &t2(&i["logp_new"]),
        &t2(&i["logp_old"]),
        &adv,
        &t2(&i["mask"]),
        f(&i["clip_range_ratio"]),
    );
    close_scalar("loss", loss.double_value(&[]), f(&g["outputs"]["loss"]));
}

#[test]
fn critic_clipped_value_loss() {
    let g = &golden()["critic"];
    let i = &g["inputs"];
    let loss = ppo::critic_loss(
        &t2(&i["values"]),
        &t2(&i["old_values"]),
        &t2(&i["returns"]),
        &t2(&i["mask"]),
        f(&i["clip_range_value"]),
    );
    close_scalar("loss", loss.double_value(&[]), f(&g["outputs"]["loss"]));
    // masked_mean is per sequence first: a row with one valid entry weighs as much as a full row.
    let x = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 5.0, 0.0, 0.0]).view([2, 3]);
    let m = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 1.0, 0.0, 0.0]).view([2, 3]);
    close_scalar("masked_mean", masked_mean(&x, &m).double_value(&[]), 3.0);
}

#[test]
fn lagrange_multiplier_updates() {
    let g = &golden()["lagrange"];
    let i = &g["inputs"];
    let windows = i["windows"].as_array().unwrap();
    let mut lag = lagrange::Lagrange::new(
        f(&i["eta0"]).exp(),
        f(&i["lr"]),
        f(&i["threshold"]),
        Some(f(&i["lambda_max"])),
        4,
    );
    for (k, (w, want)) in windows
        .iter()
        .zip(g["outputs"]["steps"].as_array().unwrap())
        .enumerate()
    {
        let costs: Vec<f64> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        lag.record_costs(&costs);
        let step = lag.update(k as u64).expect("an update");
        close_scalar("mean_cost", step.mean_cost, f(&want["mean_cost"]));
        close_scalar(
            "lambda_before",
            step.lambda_before,
            f(&want["lambda_before"]),
        );
        close_scalar("eta_after", lag.eta, f(&want["eta_after"]));
        close_scalar("lambda_after", step.lambda_after, f(&want["lambda_after"]));
        assert_eq!(
            step.capped,
            want["capped"].as_bool().unwrap(),
            "step {k} capped"
        );
    }
    close_scalar(
        "final_lambda",
        lag.lambda(),
        f(&g["outputs"]["final_lambda"]),
    );
    // The delay holds updates back.
    lag.update_delay_steps = 10;
    assert!(lag.update(3).is_none());
}
