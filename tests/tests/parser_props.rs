//! Property tests of everything that parses outside input: chat-template rendering with
//! adversarial message text, the tokenizer on arbitrary bytes and ids, the safetensors and GGUF
//! loaders and the registry manifest on truncated or corrupt files. Each returns a clear error
//! or a correct result and never panics. Bounded cases in CI; the seed is printed.

use proptest::prelude::*;
use safeloop_shared::registry::{ModelKind, Provenance, PublishOptions, Registry};
use safeloop_shared::{load_causal_lm, ChatMessage, LoadOptions, Tokenizer};
use safeloop_tests::{copy_golden, fresh_tmp, golden_dir, proptest_config};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A fresh directory per test (cases run one after another and each starts from empty).
fn tmp(name: &str) -> PathBuf {
    fresh_tmp(&format!("parser-props-{name}"))
}

/// The default policy's tokenizer (byte-level BPE, from the GGUF) and the golden one.
fn tokenizers() -> &'static [Tokenizer; 2] {
    static T: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let gguf = safeloop_shared::assets::default_model_path();
        let smol = load_causal_lm(&gguf, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", gguf.display()))
            .tokenizer;
        let golden = load_causal_lm(&golden_dir("llama-gqa"), &LoadOptions::default())
            .unwrap()
            .tokenizer;
        [smol, golden]
    })
}

/// Text mixing template syntax, special-token look-alikes and arbitrary characters.
fn hostile_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("{{ 7 * 7 }}".to_string()),
        Just("{% for m in messages %}X{% endfor %}".to_string()),
        Just("{{ raise_exception('boom') }}".to_string()),
        Just("{# comment #}".to_string()),
        Just("{%- if true -%}".to_string()),
        Just("<|im_start|>system\n".to_string()),
        Just("<|im_end|>".to_string()),
        Just("' + message['role'] + '".to_string()),
        "\\PC{0,12}",
        any::<String>(),
    ];
    prop::collection::vec(pieces, 0..6).prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(f64),
    Flip(Vec<(f64, u8)>),
    /// Overwrite 8 bytes at this fraction of the header region with this little-endian value
    /// (a length or count field gone wild).
    Word(f64, u64),
    Garbage(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Truncate),
        prop::collection::vec((0.0..1.0f64, 0u8..8), 1..6).prop_map(Damage::Flip),
        (
            0.0..1.0f64,
            prop_oneof![any::<u64>(), Just(u64::MAX), Just(1 << 40), Just(0)]
        )
            .prop_map(|(at, v)| Damage::Word(at, v)),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Garbage),
    ]
}

/// Damages `bytes`; flips and words land in the first `header` bytes (where the parsers
/// read lengths and offsets), truncation anywhere.
fn corrupt(bytes: &mut Vec<u8>, d: &Damage, header: usize) {
    let region = header.min(bytes.len()).max(1);
    let at =
        |f: f64, width: usize| ((f * region as f64) as usize).min(region.saturating_sub(width));
    match d {
        Damage::Truncate(f) => bytes.truncate((f * bytes.len() as f64) as usize),
        Damage::Flip(flips) => {
            for &(f, bit) in flips {
                let p = at(f, 1);
                if p < bytes.len() {
                    bytes[p] ^= 1 << bit;
                }
            }
        }
        Damage::Word(f, v) => {
            let p = at(*f, 8);
            if p + 8 <= bytes.len() {
                bytes[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        Damage::Garbage(g) => {
            let p = at(0.5, g.len()).min(bytes.len());
            bytes.splice(p..p, g.iter().copied());
        }
    }
}

/// Loads under `catch_unwind`: a panic fails the property, an error must name what failed.
fn load_never_panics(path: &Path) -> Result<(), TestCaseError> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        load_causal_lm(path, &LoadOptions::default()).map(|_| ())
    }));
    match r {
        Err(_) => Err(TestCaseError::fail(format!(
            "loading {} panicked",
            path.display()
        ))),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let msg = e.to_string();
            prop_assert!(!msg.trim().is_empty(), "an empty error");
            Ok(())
        }
    }
}

/// The first 4 MiB of the default GGUF: its header, metadata (tokenizer included) and
/// tensor directory, and the start of the data.
fn gguf_head() -> &'static [u8] {
    static H: OnceLock<Vec<u8>> = OnceLock::new();
    H.get_or_init(|| {
        use std::io::Read;
        let mut v = Vec::new();
        std::fs::File::open(safeloop_shared::assets::default_model_path())
            .expect("the default GGUF (run scripts/setup.sh)")
            .take(4 << 20)
            .read_to_end(&mut v)
            .unwrap();
        v
    })
}

proptest! {
    #![proptest_config(proptest_config(40))]

    #[test]
    fn message_text_is_data_never_template_code(
        contents in prop::collection::vec(hostile_text(), 1..4),
        generation_prompt in any::<bool>(),
    ) {
        for tok in tokenizers() {
            let messages: Vec<ChatMessage> = contents
                .iter()
                .enumerate()
                .map(|(i, c)| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, c))
                .collect();
            let rendered = tok.apply_chat_template(&messages, generation_prompt).unwrap();
            // Every message appears verbatim, in order: nothing in it was evaluated.
            let mut from = 0;
            for c in &contents {
                let at = rendered[from..].find(c.as_str());
                prop_assert!(at.is_some(), "{c:?} not verbatim in {rendered:?}");
                from += at.unwrap() + c.len();
            }
            prop_assert!(tok.encode_chat(&messages, generation_prompt).is_ok());
        }
    }

    #[test]
    fn the_tokenizer_takes_arbitrary_bytes_and_ids(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        ids in prop::collection::vec(any::<u32>(), 0..40),
    ) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for (i, tok) in tokenizers().iter().enumerate() {
            let enc = tok.encode(&text, false).unwrap();
            prop_assert!(enc.iter().all(|&t| (t as usize) < tok.vocab_size()));
            // SmolLM2's byte-level BPE is lossless on text whose bytes its vocabulary has
            // (all but a few control characters and the lead bytes of U+40000..U+BFFFF; the
            // golden tokenizer's tiny vocabulary lacks many more).
            if i == 0 {
                let printable: String = text
                    .chars()
                    .filter(|c| (!c.is_control() || "\n\t\r".contains(*c)) && (*c as u32) < 0x40000)
                    .collect();
                let enc = tok.encode(&printable, false).unwrap();
                prop_assert_eq!(tok.decode(&enc, false).unwrap(), printable);
            }
            // Out-of-range ids: an error or text, never a panic.
            let r = catch_unwind(AssertUnwindSafe(|| tok.decode(&ids, true).map(|_| ())));
            prop_assert!(r.is_ok(), "decoding {ids:?} panicked");
        }
    }

    #[test]
    fn the_safetensors_loader_errors_on_damaged_files(d in damage()) {
        let dir = tmp("st");
        let model = dir.join("m");
        copy_golden("llama-gqa", &model);
        let file = model.join("model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        corrupt(&mut bytes, &d, header);
        std::fs::write(&file, &bytes).unwrap();
        load_never_panics(&model)?;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_gguf_loader_errors_on_damaged_files(d in damage()) {
        let dir = tmp("gguf");
        let file = dir.join("m.gguf");
        let mut bytes = gguf_head().to_vec();
        corrupt(&mut bytes, &d, usize::MAX);
        std::fs::write(&file, &bytes).unwrap();
        // Cut to 4 MiB, the file never has all its tensors: loading must fail cleanly.
        load_never_panics(&file)?;
        prop_assert!(load_causal_lm(&file, &LoadOptions::default()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_or_hostile_manifest_is_refused(
        d in damage(),
        path in prop_oneof![
            Just("../../escape".to_string()),
            Just("/etc/passwd".to_string()),
            Just("a/./b".to_string()),
            Just("".to_string()),
            "[a-z./\\\\]{1,12}",
        ],
        use_path in any::<bool>(),
    ) {
        let root = tmp("registry");
        let reg = Registry::open(root.join("reg").to_str().unwrap()).unwrap();
        let published = reg
            .publish("m", &golden_dir("llama-gqa"), &PublishOptions {
                kind: ModelKind::Policy,
                parent: None,
                produced_by: Provenance::default(),
                eval: serde_json::Value::Null,
            })
            .unwrap();
        let version = published.manifest.version.clone();
        let mpath = root.join("reg/m/versions").join(&version).join("manifest.json");
        let mut bytes = std::fs::read(&mpath).unwrap();
        if use_path {
            let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            m["files"][0]["path"] = serde_json::Value::String(path.clone());
            bytes = serde_json::to_vec(&m).unwrap();
        } else {
            corrupt(&mut bytes, &d, usize::MAX);
        }
        std::fs::write(&mpath, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| reg.fetch("m", &version, &root.join("cache"))));
        prop_assert!(r.is_ok(), "fetch panicked");
        match r.unwrap() {
            // Damage that left the manifest equivalent (e.g. whitespace) still verifies.
            Ok((_, m)) => prop_assert_eq!(m, published.manifest),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        prop_assert!(!root.join("escape").exists() && !root.parent().unwrap().join("escape").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// A GGUF header whose `general.alignment` is 0 (the tensor data offset divides by it).
#[test]
fn a_gguf_with_zero_alignment_is_an_error_not_a_panic() {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.alignment";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&4u32.to_le_bytes()); // UINT32
    b.extend_from_slice(&0u32.to_le_bytes());
    let dir = tmp("align");
    let file = dir.join("zero.gguf");
    std::fs::write(&file, &b).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        load_causal_lm(&file, &LoadOptions::default()).map(|_| ())
    }));
    let err = r.expect("no panic").expect_err("not a model");
    assert!(err.to_string().contains("zero.gguf"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
