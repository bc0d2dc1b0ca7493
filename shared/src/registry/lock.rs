//! A lock held in the registry store (local directory or object store), so that one `safeloop-train round` runs
//! at a time per model wherever the jobs are scheduled. Taking it is a create-only write; the holder refreshes a
//! heartbeat with compare-and-swap; a lock whose holder is gone (same host, process dead) or whose heartbeat is
//! older than the stale age can be taken over, again by compare-and-swap, so two takers cannot both win.

use super::{now_ms, Registry, RegistryError, Result};
use serde::{Deserialize, Serialize};

/// What a lock object says about its holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// What holds it (e.g. the round id).
    pub purpose: String,
    pub host: String,
    pub pid: u32,
    pub acquired_ms: u64,
    pub heartbeat_ms: u64,
}

impl LockInfo {
    /// A lock for this process.
    pub fn here(purpose: &str) -> Self {
        let now = now_ms();
        Self {
            purpose: purpose.to_string(),
            host: hostname(),
            pid: std::process::id(),
            acquired_ms: now,
            heartbeat_ms: now,
        }
    }

    /// Whether the holder is certainly gone (same host, no such process) or silent for `stale_ms`.
    pub fn is_stale(&self, stale_ms: u64) -> bool {
        let dead_here = self.host == hostname()
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        dead_here || now_ms().saturating_sub(self.heartbeat_ms) > stale_ms
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (pid {} on {}, heartbeat {} s ago)",
            self.purpose,
            self.pid,
            self.host,
            now_ms().saturating_sub(self.heartbeat_ms) / 1000
        )
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Someone holds it and is alive.
    Held(LockInfo),
    Registry(RegistryError),
}

impl From<RegistryError> for LockError {
    fn from(e: RegistryError) -> Self {
        LockError::Registry(e)
    }
}

/// A held lock. Dropping it does not release it (a crashed holder must look crashed); call `release`.
pub struct Lock {
    key: String,
    info: LockInfo,
    tag: String,
}

impl Registry {
    fn lock_key(name: &str, lock: &str) -> String {
        format!("{name}/locks/{lock}.json")
    }

    /// The current holder of `NAME/locks/LOCK`, if any.
    pub fn lock_holder(&self, name: &str, lock: &str) -> Result<Option<LockInfo>> {
        Ok(self.read_lock(&Self::lock_key(name, lock))?.map(|(i, _)| i))
    }

    fn read_lock(&self, key: &str) -> Result<Option<(LockInfo, String)>> {
        match self.store.get(key)? {
            None => Ok(None),
            Some(t) => {
                let info = serde_json::from_slice(&t.data).map_err(|e| {
                    RegistryError::Corrupt(format!("{key} in {}: {e}", self.describe()))
                })?;
                Ok(Some((info, t.tag)))
            }
        }
    }

    /// Takes `NAME/locks/LOCK` for `info`, taking over a stale one (holder dead, or no heartbeat for
    /// `stale_ms`). Returns the lock and the stale holder it replaced, if any.
    pub fn lock(
        &self,
        name: &str,
        lock: &str,
        info: LockInfo,
        stale_ms: u64,
    ) -> std::result::Result<(Lock, Option<LockInfo>), LockError> {
        let key = Self::lock_key(name, lock);
        for _ in 0..8 {
            let data = serde_json::to_vec_pretty(&info).expect("lock serializes");
            match self.read_lock(&key)? {
                None => {
                    if self.store.put_if(&key, &data, None)? {
                        let tag = self.read_lock(&key)?.map(|(_, t)| t).unwrap_or_default();
                        return Ok((Lock { key, info, tag }, None));
                    }
                }
                Some((held, tag)) => {
                    if !held.is_stale(stale_ms) {
                        return Err(LockError::Held(held));
                    }
                    if self.store.put_if(&key, &data, Some(&tag))? {
                        let tag = self.read_lock(&key)?.map(|(_, t)| t).unwrap_or_default();
                        return Ok((Lock { key, info, tag }, Some(held)));
                    }
                }
            }
        }
        Err(LockError::Registry(RegistryError::Conflict(format!(
            "{key}: other processes kept racing for the lock"
        ))))
    }

    /// Refreshes the heartbeat; `false` when the lock was taken over (the holder must stop).
    pub fn heartbeat(&self, lock: &mut Lock) -> Result<bool> {
        let mut info = lock.info.clone();
        info.heartbeat_ms = now_ms();
        let data = serde_json::to_vec_pretty(&info).expect("lock serializes");
        if !self.store.put_if(&lock.key, &data, Some(&lock.tag))? {
            return Ok(false);
        }
        lock.info = info;
        lock.tag = self
            .read_lock(&lock.key)?
            .map(|(_, t)| t)
            .unwrap_or_default();
        Ok(true)
    }

    /// Releases the lock if it is still ours.
    pub fn unlock(&self, lock: Lock) -> Result<()> {
        if let Some((held, _)) = self.read_lock(&lock.key)? {
            if held.pid == lock.info.pid
                && held.host == lock.info.host
                && held.acquired_ms == lock.info.acquired_ms
            {
                self.store.delete_prefix(&lock.key)?;
            }
        }
        Ok(())
    }
}

impl Lock {
    pub fn info(&self) -> &LockInfo {
        &self.info
    }
}
