//! Property test of the request validator through the real server: arbitrary JSON bodies —
//! known fields with wild values, unknown fields, nesting, non-objects — never get a 5xx, and
//! every rejection of a JSON object names the field at fault (`param`). Bounded cases in CI;
//! the seed is printed.

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use reqwest::blocking::Client;
use safeloop_tests::{golden_dir, proptest_config, Server};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const MODEL: &str = "llama-gqa";

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(2),
            Just(-1),
            Just(5),
            Just(300),
            Just(1 << 40)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(2.5), Just(-0.1), Just(1e-300), Just(3.0)]
            .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        Just(Value::from(MODEL)),
        Just(Value::from("user")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
    "stop_token_ids",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "best_of",
    "stream",
    "stream_options",
    "tools",
    "response_format",
    "safety",
    "user",
    "ignore_eos",
];

/// A message list that is sometimes right and sometimes subtly wrong.
fn messages() -> impl Strategy<Value = Value> {
    let message = (
        prop_oneof![
            Just(json!("user")),
            Just(json!("assistant")),
            Just(json!("tool")),
            leaf()
        ],
        prop_oneof![
            Just(json!("Hi")),
            leaf(),
            Just(json!([{"type": "text", "text": "x"}])),
            Just(json!([{"type": "image_url"}]))
        ],
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    prop_oneof![
        prop::collection::vec(message, 0..3).prop_map(Value::Array),
        value(),
    ]
}

/// A request object: mostly-valid core fields plus arbitrary known and unknown fields.
fn body() -> impl Strategy<Value = (bool, Value)> {
    let extra = prop::collection::vec((prop::sample::select(FIELDS), value()), 0..5);
    let unknown = prop::collection::vec(("[a-z]{1,6}", value()), 0..2);
    (
        any::<bool>(),
        prop::option::of(messages()),
        prop::option::of(value()),
        extra,
        unknown,
        any::<u8>(),
    )
        .prop_map(|(chat, msgs, prompt, extra, unknown, shape)| {
            let mut m = Map::new();
            m.insert("model".into(), json!(MODEL));
            m.insert("max_tokens".into(), json!(4));
            if chat {
                m.insert(
                    "messages".into(),
                    msgs.unwrap_or(json!([{"role": "user", "content": "Hi"}])),
                );
            } else {
                m.insert("prompt".into(), prompt.unwrap_or(json!("Hello")));
            }
            for (k, v) in extra {
                m.insert(k.to_string(), v);
            }
            for (k, v) in unknown {
                m.insert(k, v);
            }
            // Now and then a body that is not an object at all.
            let body = match shape % 16 {
                0 => Value::Array(m.into_values().collect()),
                1 => json!("a string"),
                _ => Value::Object(m),
            };
            (chat, body)
        })
}

fn check(
    client: &Client,
    s: &Server,
    chat: bool,
    body: &Value,
    accepted: &AtomicUsize,
) -> Result<(), TestCaseError> {
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let r = client
        .post(s.url(path))
        .json(body)
        .send()
        .map_err(|e| TestCaseError::fail(format!("no response to {body}: {e}")))?;
    let status = r.status().as_u16();
    let text = r
        .text()
        .map_err(|e| TestCaseError::fail(format!("body of {body}: {e}")))?;
    prop_assert!(status < 500, "{status} for {body}: {text}");
    if status < 400 {
        accepted.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|_| TestCaseError::fail(format!("{status} without JSON for {body}: {text}")))?;
    let err = &v["error"];
    prop_assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    let Some(obj) = body.as_object() else {
        prop_assert!(
            err["message"].as_str().unwrap().contains("JSON object"),
            "{text}"
        );
        return Ok(());
    };
    // The rejection names its field: one the body has, or a required one it lacks.
    let param = err["param"].as_str().unwrap_or("");
    let field = param.split(['.', '[']).next().unwrap_or("");
    prop_assert!(
        !field.is_empty()
            && (obj.contains_key(field) || ["model", "messages", "prompt"].contains(&field)),
        "{status} for {body} names no field of it: {text}"
    );
    Ok(())
}

#[test]
fn arbitrary_json_never_5xx_and_every_rejection_names_its_field() {
    let dir = golden_dir(MODEL);
    let s = Server::start(&["--model", dir.to_str().unwrap(), "--max-n", "4"]);
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut runner = TestRunner::new(proptest_config(150));
    let accepted = AtomicUsize::new(0);
    let result = runner.run(&body(), |(chat, b)| check(&client, &s, chat, &b, &accepted));
    if let Err(e) = result {
        panic!("{e}");
    }
    // Some bodies were valid and generated (the strategy reaches past validation).
    let accepted = accepted.into_inner();
    eprintln!("{accepted} bodies accepted");
    assert!(accepted > 0, "no generated body was ever valid");
    // The server is still healthy.
    assert_eq!(
        client
            .get(s.url("/health"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}
