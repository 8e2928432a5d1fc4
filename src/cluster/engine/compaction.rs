//! The cleaner of a cluster member: applies the committed clean commands of the
//! compacted partitions it hosts, and, where it leads one, proposes the next clean when
//! the partition needs one (`replication::compaction`). Run by the broker's cleaner loop
//! every `log.cleaner.backoff.ms`; time comes in as `now_ms`.

use super::{ClusterNode, Replica, Wait};
use crate::log::cleaner::KEY_MAP_ENTRY_BYTES;
use crate::log::partition_log::CleanFailure;
use crate::replication::compaction::plan_clean;
use std::sync::Arc;

impl ClusterNode {
    /// One cleaner pass: every hosted partition's committed clean commands are applied,
    /// and the compacted ones this broker leads are planned.
    pub async fn run_cleaner(&self, now_ms: i64, dedupe_buffer_bytes: usize) {
        let max_keys = (dedupe_buffer_bytes / KEY_MAP_ENTRY_BYTES).max(1);
        let replicas: Vec<Arc<Replica>> = self.replicas.read().unwrap().values().cloned().collect();
        for replica in replicas {
            // Committed commands are applied whatever the topic's config says now: a
            // config change reaches replicas at different times, and every replica must
            // apply the same commands.
            if !self.apply_clean_commands(&replica, max_keys) {
                return;
            }
            if !replica.storage.lock().log().config().cleanup_policy_compact {
                continue;
            }
            self.propose_clean(&replica, now_ms, max_keys).await;
            // The driver task takes the log's lock too: let it run between partitions.
            tokio::task::yield_now().await;
        }
    }

    /// Applies the replica's committed clean commands; false when the storage failed
    /// (the node then stops, as for any storage failure).
    fn apply_clean_commands(&self, replica: &Replica, max_keys: usize) -> bool {
        let mut commands = replica
            .storage
            .lock()
            .take_committed_clean_commands()
            .into_iter();
        while let Some((offset, command)) = commands.next() {
            let result = replica
                .storage
                .lock()
                .apply_clean(offset, &command, max_keys);
            match result {
                Ok(report) => {
                    tracing::info!(topic = %replica.topic, partition = replica.partition, command_offset = offset,
                        clean_end_offset = command.clean_end_offset, reached = report.cleaned_end_offset,
                        segments_rewritten = report.segments_rewritten, bytes_before = report.bytes_before,
                        bytes_after = report.bytes_after, "log cleaned");
                }
                Err(CleanFailure::Corrupt { offset: corrupt }) => {
                    // Repaired from a peer like any corrupt batch. This command and those
                    // after it wait for the repair and are applied then: a later command
                    // cleans only its own range, so none would cover this one's, and the
                    // replica would keep records every other replica dropped (found by the
                    // simulator, seed 19 of 6d0bc5f's build).
                    tracing::warn!(topic = %replica.topic, partition = replica.partition, corrupt,
                        command_offset = offset, "cleaning stopped at a corrupt batch; retried after the repair");
                    let mut storage = replica.storage.lock();
                    storage.mark_corrupt_from_offset(corrupt);
                    let waiting = std::iter::once((offset, command)).chain(commands).collect();
                    storage.requeue_clean_commands(waiting);
                    return true;
                }
                Err(CleanFailure::Refused(why)) => {
                    tracing::warn!(topic = %replica.topic, partition = replica.partition, why = %why,
                        "cleaning refused; the log is left as it was");
                }
                Err(CleanFailure::Io(e)) => {
                    self.fail(format!(
                        "cleaning {}-{}: {e}",
                        replica.topic, replica.partition
                    ));
                    return false;
                }
            }
        }
        true
    }

    /// On the partition's leader: proposes a clean command when the log needs one.
    async fn propose_clean(&self, replica: &Replica, now_ms: i64, max_keys: usize) {
        if replica.leader().0 != self.config.node_id {
            return;
        }
        let plan = {
            let mut log = replica.storage.lock();
            if log.has_pending_clean() {
                return;
            }
            let planned = plan_clean(
                log.log(),
                log.committed_end_offset(),
                log.last_clean(),
                log.quiet_mark(),
                now_ms,
                max_keys,
            );
            if let Ok((_, mark)) = &planned {
                log.set_quiet_mark(*mark);
            }
            planned.map(|(plan, _)| plan)
        };
        let plan = match plan {
            Ok(Some(plan)) => plan,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(topic = %replica.topic, partition = replica.partition, error = %e,
                    "no clean planned");
                return;
            }
        };
        tracing::debug!(topic = %replica.topic, partition = replica.partition, ?plan, "proposing a clean");
        let batch = plan.command.to_batch();
        // Not awaited: the command is applied when it commits, by every replica alike.
        let _ = self
            .submit(&replica.topic, replica.partition, vec![batch], Wait::Commit)
            .await;
    }
}
