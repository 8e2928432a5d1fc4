//! Consumer groups: the classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets.
//!
//! `coordinator.rs` is the group coordinator as a deterministic state machine: requests
//! and the clock come in as calls, answers (some of them delayed until a rebalance
//! completes) come out as [`coordinator::Effect`]s. It does no I/O and reads no clock,
//! so the simulator drives it exactly. `records.rs` holds what it persists in
//! `__consumer_offsets`; `host.rs` which groups this broker coordinates (the
//! partitions of `__consumer_offsets` it leads, loaded before they serve). Wiring them
//! to the broker and the Kafka APIs is the next step (issue 7).

pub mod coordinator;
pub mod host;
pub mod records;

#[cfg(test)]
mod tests;
