//! The round lock, held for the whole round with a heartbeat thread. A second round gets a clear "locked" error;
//! a round whose holder died (same host) or went silent for `--lock-stale-secs` can be taken over. If the lock is
//! lost (taken over by someone else), the round stops before recording its next step.

use anyhow::{bail, Result};
use safeloop_shared::registry::{Lock, LockError, LockInfo, ModelRef};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct LockGuard {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl LockGuard {
    pub fn acquire(policy: &ModelRef, purpose: &str, stale_secs: u64) -> Result<Self> {
        let reg = policy.open()?;
        let stale_ms = stale_secs.max(1) * 1000;
        let lock: Lock = match reg.lock(&policy.name, "round", LockInfo::here(purpose), stale_ms) {
            Ok((lock, replaced)) => {
                if let Some(old) = replaced {
                    eprintln!("took over the stale round lock of {}", old.describe());
                }
                lock
            }
            Err(LockError::Held(holder)) => bail!(
                "locked: another round of `{}` is running ({}); one round runs at a time (a holder that stops \
                 sending heartbeats is taken over after --lock-stale-secs {stale_secs})",
                policy.name,
                holder.describe()
            ),
            Err(LockError::Registry(e)) => return Err(e.into()),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis((stale_ms / 4).clamp(1000, 30_000));
        let thread = {
            let (stop, lost) = (stop.clone(), lost.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut lock = lock;
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= every {
                        last = Instant::now();
                        match reg.heartbeat(&mut lock) {
                            Ok(true) => {}
                            Ok(false) => {
                                lost.store(true, Ordering::Relaxed);
                                return Ok(());
                            }
                            // A transient store error: try again next beat (the stale age is 4 beats).
                            Err(e) => eprintln!("round lock heartbeat failed: {e}"),
                        }
                    }
                }
                reg.unlock(lock)?;
                Ok(())
            })
        };
        Ok(Self {
            stop,
            lost,
            thread: Some(thread),
        })
    }

    /// Fails when another process took the lock over.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Relaxed) {
            bail!("lost the round lock to another process; stopping before recording more");
        }
        Ok(())
    }

    /// Stops the heartbeat and releases the lock (if still ours).
    pub fn release(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the lock heartbeat thread panicked"),
            None => Ok(()),
        }
    }
}
