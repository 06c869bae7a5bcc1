//! The instances' runtime facts, written to the state store
//! without putting a disk write on the request path.
//!
//! Requests only bump atomics in their [`Instance`]. [`StateSync::run`]
//! snapshots every instance every `interval` (default 200 ms), writes the
//! records that changed and flushes them in one go on the blocking pool. A
//! change an operator acts on (a promotion, a chaos fault) calls
//! [`StateSync::commit`] and waits for the flush before it is acknowledged.
//! On shutdown the host commits once more after the last request finished,
//! so a clean stop loses nothing and a `kill -9` loses at most one interval
//! of counters, never a promotion.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hadr_state::{InstanceRecord, StateError, StateStore};
use tokio::sync::{Mutex, Notify};

use crate::instance::Instance;
use crate::shutdown::Shutdown;

/// How often per-request counters reach the disk.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

/// Writes instance records to the state store.
pub struct StateSync {
    store: Arc<StateStore>,
    instances: Vec<Arc<Instance>>,
    /// What was last written, so unchanged records are not rewritten.
    written: Mutex<HashMap<String, InstanceRecord>>,
    nudge: Notify,
    interval: Duration,
}

impl StateSync {
    /// Keeps `instances`' records in `store`.
    pub fn new(store: Arc<StateStore>, instances: Vec<Arc<Instance>>, interval: Duration) -> Self {
        Self {
            store,
            instances,
            written: Mutex::new(HashMap::new()),
            nudge: Notify::new(),
            interval,
        }
    }

    /// Writes every changed record and flushes: when this returns `Ok`, the
    /// facts as of its call survive a `kill -9`. Commits are serialised, so
    /// an older snapshot never overwrites a newer one.
    pub async fn commit(&self) -> Result<(), StateError> {
        let mut written = self.written.lock().await;
        let changed: Vec<(String, InstanceRecord)> = self
            .instances
            .iter()
            .map(|i| (i.name().to_string(), i.state_record()))
            .filter(|(name, record)| written.get(name) != Some(record))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let records = changed.clone();
        tokio::task::spawn_blocking(move || {
            for (name, record) in &records {
                store.put_instance(name, record)?;
            }
            store.flush()
        })
        .await
        .unwrap_or_else(|e| {
            Err(StateError::Storage {
                path: self.store.path().to_owned(),
                message: format!("the writer thread failed: {e}"),
            })
        })?;
        written.extend(changed);
        Ok(())
    }

    /// Like [`StateSync::commit`], and flushes even when no record changed
    /// (so writes made directly to the store, such as events, are durable).
    pub async fn commit_all(&self) -> Result<(), StateError> {
        self.commit().await?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Storage {
                    path: self.store.path().to_owned(),
                    message: format!("the writer thread failed: {e}"),
                })
            })
    }

    /// Asks for a commit soon, without waiting for it.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Commits every `interval` (or sooner when nudged) until `shutdown`.
    /// Errors are logged, not fatal: serving goes on, and the next commit
    /// tries again.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.nudge.notified() => {}
                _ = shutdown.wait() => return,
            }
            match self.commit().await {
                Ok(()) if failing => {
                    tracing::info!("state writes work again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::error!(error = %e, "cannot write state; serving goes on, and state writes are retried");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}
