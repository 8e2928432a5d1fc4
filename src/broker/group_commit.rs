//! Group commit: one fsync round makes every partition written since the last round
//! durable, and wakes every acks=all producer waiting on it.
//!
//! Producers call [`GroupCommit::request`] after appending and wait for the returned
//! ticket with [`GroupCommit::wait`]. The flusher task takes all dirty partitions at once,
//! syncs them outside the partition locks, then publishes the highest ticket it covered.
//! Data written with acks=0/1 is marked dirty too and flushed by the same task on its
//! interval. A failed fsync is never retried as if it had worked: the broker stops
//! acknowledging acks=all writes and reports KAFKA_STORAGE_ERROR (fsyncgate).

use super::partition::Partition;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushState {
    /// Every ticket up to this one is durable.
    pub synced_ticket: u64,
    /// Set forever after an fsync failed.
    pub failed: bool,
}

#[derive(Default)]
struct Pending {
    last_ticket: u64,
    dirty: BTreeMap<(String, i32), Arc<Partition>>,
}

pub struct GroupCommit {
    pending: Mutex<Pending>,
    wake: Notify,
    state: watch::Sender<FlushState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    #[error("an fsync failed; the log directory is offline")]
    StorageFailed,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            pending: Mutex::default(),
            wake: Notify::new(),
            state: watch::channel(FlushState {
                synced_ticket: 0,
                failed: false,
            })
            .0,
        }
    }
}

impl GroupCommit {
    /// Marks `partition` as holding unsynced data (flushed on the next round or interval).
    pub fn mark_dirty(&self, partition: &Arc<Partition>) {
        let mut pending = self.pending.lock().unwrap();
        pending
            .dirty
            .entry(partition.key())
            .or_insert_with(|| partition.clone());
    }

    /// Asks for `partition` to be synced soon; returns the ticket to wait for.
    pub fn request(&self, partition: &Arc<Partition>) -> u64 {
        let ticket = {
            let mut pending = self.pending.lock().unwrap();
            pending.last_ticket += 1;
            pending
                .dirty
                .entry(partition.key())
                .or_insert_with(|| partition.clone());
            pending.last_ticket
        };
        self.wake.notify_one();
        ticket
    }

    /// Waits until `ticket` is durable.
    pub async fn wait(&self, ticket: u64) -> Result<(), FlushError> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| s.failed || s.synced_ticket >= ticket)
            .await
            .map_err(|_| FlushError::StorageFailed)?;
        if state.synced_ticket >= ticket {
            Ok(())
        } else {
            Err(FlushError::StorageFailed)
        }
    }

    pub fn state(&self) -> FlushState {
        *self.state.borrow()
    }

    /// One flush round: syncs every dirty partition. Returns how many were synced.
    pub async fn flush_round(&self) -> Result<usize, FlushError> {
        if self.state().failed {
            return Err(FlushError::StorageFailed);
        }
        let (ticket, dirty) = {
            let mut pending = self.pending.lock().unwrap();
            (pending.last_ticket, std::mem::take(&mut pending.dirty))
        };
        let count = dirty.len();
        let mut tickets = Vec::with_capacity(count);
        for partition in dirty.values() {
            match partition.begin_flush() {
                Ok(t) => tickets.push((partition.clone(), t)),
                Err(e) => return Err(self.fail(&e.to_string())),
            }
        }
        let handles: Vec<_> = tickets
            .iter()
            .flat_map(|(_, t)| t.handles.iter().cloned())
            .collect();
        if let Err(e) = sync_all(handles).await {
            return Err(self.fail(&e));
        }
        for (partition, t) in &tickets {
            partition.flushed(t.up_to_offset);
        }
        self.state
            .send_modify(|s| s.synced_ticket = s.synced_ticket.max(ticket));
        Ok(count)
    }

    fn fail(&self, why: &str) -> FlushError {
        tracing::error!(
            why,
            "fsync failed: refusing further acks=all writes (log directory offline)"
        );
        self.state.send_modify(|s| s.failed = true);
        FlushError::StorageFailed
    }

    /// The flusher: runs a round whenever a producer asks, and at least every
    /// `interval_ms` for data written with acks=0/1.
    pub async fn run(self: Arc<Self>, interval_ms: u64) {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(interval_ms), self.wake.notified())
                .await;
            if self.flush_round().await.is_err() {
                return;
            }
        }
    }
}

/// Fsyncs every handle; a real fsync blocks, so it runs on the blocking pool.
#[cfg(not(madsim))]
async fn sync_all(handles: Vec<Arc<dyn crate::storage::SyncHandle>>) -> Result<(), String> {
    match tokio::task::spawn_blocking(move || handles.iter().try_for_each(|h| h.sync())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Under the simulator the storage is in memory: sync in place, deterministically.
#[cfg(madsim)]
async fn sync_all(handles: Vec<Arc<dyn crate::storage::SyncHandle>>) -> Result<(), String> {
    handles
        .iter()
        .try_for_each(|h| h.sync())
        .map_err(|e| e.to_string())
}
