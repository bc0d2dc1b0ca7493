//! The model registry on a local directory: content-addressed versions, create-only
//! publishing, aliases with compare-and-swap and history, promote / rollback, gc, verified
//! fetches.

use safeloop_shared::registry::{
    ModelKind, ModelRef, Provenance, PublishOptions, Registry, RegistryError,
};
use std::path::Path;

fn model(dir: &Path, weights: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"llama"}"#).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
}

fn opts() -> PublishOptions {
    PublishOptions {
        kind: ModelKind::Policy,
        parent: None,
        produced_by: Provenance {
            command: Some("test".into()),
            ..Default::default()
        },
        eval: serde_json::json!({"harmful_ratio": 0.1}),
    }
}

#[test]
fn publish_is_content_addressed_and_create_only() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("reg").to_str().unwrap()).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    model(&a, b"weights-one");
    model(&b, b"weights-two");
    let pa = reg.publish("m", &a, &opts()).unwrap();
    assert!(pa.created);
    assert_eq!(pa.manifest.version.len(), 16);
    assert_eq!(pa.manifest.files.len(), 3);
    // Same bytes elsewhere ⇒ same id, nothing written.
    let copy = tmp.path().join("copy");
    model(&copy, b"weights-one");
    let again = reg.publish("m", &copy, &opts()).unwrap();
    assert!(!again.created);
    assert_eq!(again.manifest.version, pa.manifest.version);
    let pb = reg.publish("m", &b, &opts()).unwrap();
    assert_ne!(pb.manifest.version, pa.manifest.version);
    assert_eq!(reg.versions("m").unwrap().len(), 2);
    assert_eq!(reg.names().unwrap(), vec!["m".to_string()]);
    // A version without its manifest (an interrupted publish) is invisible.
    std::fs::create_dir_all(tmp.path().join("reg/m/versions/ffffffffffffffff")).unwrap();
    assert_eq!(reg.versions("m").unwrap().len(), 2);
    // GGUF files publish as one-file versions whose model path is the file.
    let g = tmp.path().join("x.gguf");
    std::fs::write(&g, b"GGUF....").unwrap();
    let pg = reg.publish("g", &g, &opts()).unwrap();
    assert_eq!(pg.manifest.gguf.as_deref(), Some("x.gguf"));
    let (dir, m) = reg.fetch("g", &pg.manifest.version, tmp.path()).unwrap();
    assert_eq!(m.model_path(&dir), dir.join("x.gguf"));
    // Not a model: a clear error.
    std::fs::write(tmp.path().join("notes.txt"), b"hi").unwrap();
    let e = reg
        .publish("m", &tmp.path().join("notes.txt"), &opts())
        .unwrap_err();
    assert!(e.to_string().contains(".gguf"), "{e}");
}

#[test]
fn aliases_promote_rollback_history_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("reg").to_str().unwrap()).unwrap();
    let mut ids = vec![];
    for i in 0..4 {
        let d = tmp.path().join(format!("v{i}"));
        model(&d, format!("weights-{i}").as_bytes());
        ids.push(reg.publish("m", &d, &opts()).unwrap().manifest.version);
    }
    assert!(matches!(
        reg.resolve("m", "champion"),
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(reg.promote("m", &ids[0]).unwrap(), None);
    assert_eq!(reg.promote("m", &ids[1]).unwrap(), Some(ids[0].clone()));
    assert_eq!(reg.alias("m", "previous").unwrap(), Some(ids[0].clone()));
    assert_eq!(reg.resolve("m", "champion").unwrap(), ids[1]);
    // Unique prefixes resolve.
    assert_eq!(reg.resolve("m", &ids[2][..10]).unwrap(), ids[2]);
    // Rollback swaps champion and previous.
    assert_eq!(reg.rollback("m").unwrap(), ids[0]);
    assert_eq!(reg.alias("m", "champion").unwrap(), Some(ids[0].clone()));
    assert_eq!(reg.alias("m", "previous").unwrap(), Some(ids[1].clone()));
    // Compare-and-swap: a stale expectation is refused.
    let e = reg
        .set_alias("m", "champion", &ids[2], "set", Some(Some(&ids[1])))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
    // Aliases may be namespaced (rejected/…); unknown versions are refused.
    reg.set_alias("m", "rejected/round-7", &ids[3], "reject", None)
        .unwrap();
    assert!(reg
        .set_alias("m", "x", "0000000000000000", "set", None)
        .is_err());
    assert!(reg.set_alias("m", "../evil", &ids[3], "set", None).is_err());
    let h = reg.history("m").unwrap();
    let reasons: Vec<&str> = h.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["promote", "promote", "promote", "rollback", "rollback", "reject"]
    );
    assert_eq!(h[3].from.as_deref(), Some(ids[1].as_str()));
    // gc keeps the newest and everything an alias points at.
    let removed = reg.gc("m", 1).unwrap();
    assert_eq!(removed, vec![ids[2].clone()]);
    assert_eq!(reg.versions("m").unwrap().len(), 3);
}

#[test]
fn concurrent_alias_moves_lose_no_update() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let reg = Registry::open(root.to_str().unwrap()).unwrap();
    let mut ids = vec![];
    for i in 0..4 {
        let d = tmp.path().join(format!("v{i}"));
        model(&d, format!("w{i}").as_bytes());
        ids.push(reg.publish("m", &d, &opts()).unwrap().manifest.version);
    }
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (root, ids) = (root.clone(), ids.clone());
            std::thread::spawn(move || {
                let reg = Registry::open(root.to_str().unwrap()).unwrap();
                for i in 0..10 {
                    reg.set_alias("m", "champion", &ids[(t + i) % 4], "set", None)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every move is in the history; with compare-and-swap only the first starts from nothing.
    let h = reg.history("m").unwrap();
    assert_eq!(h.len(), 80);
    let froms = h.iter().filter(|e| e.from.is_none()).count();
    assert_eq!(froms, 1, "only the first move starts from nothing");
}

#[test]
fn fetch_verifies_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let reg = Registry::open(root.to_str().unwrap()).unwrap();
    let d = tmp.path().join("v");
    model(&d, b"some weights of the model");
    let v = reg.publish("m", &d, &opts()).unwrap().manifest.version;
    reg.fetch("m", &v, tmp.path()).unwrap();
    let stored = root.join(format!("m/versions/{v}/model.safetensors"));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&stored, &bytes).unwrap();
    let e = reg.fetch("m", &v, tmp.path()).unwrap_err();
    assert!(matches!(e, RegistryError::Corrupt(_)));
    assert!(e.to_string().contains("sha256"), "{e}");
    bytes.pop();
    std::fs::write(&stored, &bytes).unwrap();
    let e = reg.fetch("m", &v, tmp.path()).unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
}

#[test]
fn model_refs_parse() {
    let r = ModelRef::parse("registry:/srv/reg/smollm2@champion").unwrap();
    assert_eq!(
        (r.root.as_str(), r.name.as_str(), r.selector.as_str()),
        ("/srv/reg", "smollm2", "champion")
    );
    let r = ModelRef::parse("runs/reg/cost").unwrap();
    assert_eq!(
        (r.root.as_str(), r.selector.as_str()),
        ("runs/reg", "champion")
    );
    let r = ModelRef::parse("reg/m@rejected/round-3").unwrap();
    assert_eq!(r.selector, "rejected/round-3");
    let r = ModelRef::parse("s3://bucket/prefix/m@0123abcd").unwrap();
    assert_eq!(
        (r.root.as_str(), r.name.as_str()),
        ("s3://bucket/prefix", "m")
    );
    for bad in ["registry:justname", "reg/bad name@x", "/m"] {
        assert!(ModelRef::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn concurrent_publishers_of_one_version_never_corrupt_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let d = tmp.path().join("v");
    model(&d, &vec![7u8; 1 << 20]);
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (root, d) = (root.clone(), d.clone());
            std::thread::spawn(move || {
                let reg = Registry::open(root.to_str().unwrap()).unwrap();
                reg.publish("m", &d, &opts()).unwrap()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ids: std::collections::BTreeSet<_> =
        results.iter().map(|p| p.manifest.version.clone()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(results.iter().filter(|p| p.created).count(), 1);
    let reg = Registry::open(root.to_str().unwrap()).unwrap();
    let v = ids.into_iter().next().unwrap();
    reg.fetch("m", &v, tmp.path()).unwrap();
    assert_eq!(reg.versions("m").unwrap().len(), 1);
}

#[test]
fn the_round_lock_is_exclusive_and_taken_over_only_when_stale() {
    use safeloop_shared::registry::{LockError, LockInfo};
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().to_str().unwrap()).unwrap();
    let (mut held, replaced) = reg
        .lock("smollm2", "round", LockInfo::here("round-0001"), 60_000)
        .unwrap();
    assert!(replaced.is_none());
    // A live holder (this process, fresh heartbeat) keeps it.
    match reg.lock("smollm2", "round", LockInfo::here("round-0002"), 60_000) {
        Err(LockError::Held(h)) => assert_eq!(h.purpose, "round-0001"),
        _ => panic!("a second lock must fail while the first is alive"),
    }
    assert!(reg.heartbeat(&mut held).unwrap());
    // Another lock (another model) is independent.
    let (other, _) = reg
        .lock("cost", "round", LockInfo::here("x"), 60_000)
        .unwrap();
    reg.unlock(other).unwrap();
    // A holder on another host that stopped sending heartbeats is stale after the stale age.
    reg.unlock(held).unwrap();
    let mut remote = LockInfo::here("round-0003");
    remote.host = "elsewhere".into();
    remote.heartbeat_ms -= 5_000;
    let (mut gone, _) = reg.lock("smollm2", "round", remote, 60_000).unwrap();
    assert!(matches!(
        reg.lock("smollm2", "round", LockInfo::here("round-0004"), 60_000),
        Err(LockError::Held(_))
    ));
    let (mine, replaced) = reg
        .lock("smollm2", "round", LockInfo::here("round-0004"), 1_000)
        .unwrap();
    assert_eq!(replaced.unwrap().purpose, "round-0003");
    // The old holder learns it lost the lock, and its unlock does not release the new holder's.
    assert!(!reg.heartbeat(&mut gone).unwrap());
    reg.unlock(gone).unwrap();
    assert_eq!(
        reg.lock_holder("smollm2", "round")
            .unwrap()
            .unwrap()
            .purpose,
        "round-0004"
    );
    reg.unlock(mine).unwrap();
    assert!(reg.lock_holder("smollm2", "round").unwrap().is_none());
    // A holder on this host whose process is gone is stale at once.
    let mut dead = LockInfo::here("round-0005");
    dead.pid = u32::MAX - 1;
    let (_dead, _) = reg.lock("smollm2", "round", dead, 600_000).unwrap();
    let (_, replaced) = reg
        .lock("smollm2", "round", LockInfo::here("round-0006"), 600_000)
        .unwrap();
    assert_eq!(replaced.unwrap().purpose, "round-0005");
}
