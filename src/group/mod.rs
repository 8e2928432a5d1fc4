//! Consumer groups: the classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets.
//!
//! `coordinator.rs` is the group coordinator as a deterministic state machine: requests
//! and the clock come in as calls, answers (some of them delayed until a rebalance
//! completes) come out as [`coordinator::Effect`]s. It does no I/O and reads no clock,
//! so the simulator drives it exactly. Persisting its state in `__consumer_offsets` and
//! wiring it to the Kafka APIs are the next steps (issue 7).

pub mod coordinator;
pub mod records;

#[cfg(test)]
mod tests;
