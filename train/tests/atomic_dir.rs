//! `write_dir_atomically` replaces a directory so that a reader always finds either the old
//! or the new one — never neither (a server loading a checkpoint while the trainer rewrites it).

use safeloop_train::model::write_dir_atomically;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn a_rewritten_directory_never_disappears() {
    let tmp = std::env::temp_dir().join(format!("safeloop-atomic-dir-{}", std::process::id()));
    std::fs::remove_dir_all(&tmp).ok();
    std::fs::create_dir_all(&tmp).unwrap();
    let dir = tmp.join("model");
    write_dir_atomically(&dir, |d| Ok(std::fs::write(d.join("config.json"), "0")?)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (d2, s2) = (dir.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        let (mut checks, mut missing) = (0u64, 0u64);
        while !s2.load(Ordering::Relaxed) {
            checks += 1;
            if std::fs::read_to_string(d2.join("config.json")).is_err() {
                missing += 1;
            }
        }
        (checks, missing)
    });
    for i in 1..=200 {
        write_dir_atomically(&dir, |d| {
            std::fs::write(d.join("config.json"), i.to_string())?;
            std::fs::write(d.join("model.safetensors"), vec![0u8; 4096])?;
            Ok(())
        })
        .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (checks, missing) = reader.join().unwrap();
    assert!(checks > 100, "the reader ran {checks} times");
    assert_eq!(
        missing, 0,
        "config.json was missing in {missing} of {checks} reads"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.json")).unwrap(),
        "200"
    );
    // Nothing is left beside it.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir_all(&tmp).ok();
}
