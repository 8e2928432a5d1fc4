//! Replication with raft-rs: a Raft group per partition whose log is the partition's
//! own segment log.
//!
//! - [`entry_codec`]: how a Raft entry is stored as a RecordBatch (offsets follow the log);
//! - [`compaction`]: the replicated clean command of compacted partitions;
//! - [`replica_log`]: the raft-rs `Storage` over a partition log plus its hard state;
//! - [`slog_bridge`]: raft-rs logging into `tracing`;
//! - [`driver`]: the multi-Raft driver (one per broker, one fsync pass per round);
//! - [`transport`]: Raft messages between brokers over TCP.
//!
//! `crate::cluster` puts them together into a cluster member.

// rust-protobuf messages (raft-rs's eraftpb) carry private bookkeeping fields, so they are
// built with `default()` and then assigned, as raft-rs itself does.
#![allow(clippy::field_reassign_with_default)]

pub mod compaction;
pub mod driver;
pub mod entry_codec;
pub mod replica_log;
pub mod slog_bridge;
pub mod transport;

pub use replica_log::{ReplicaLog, ReplicaStorage, VoteBarrier};

#[cfg(test)]
mod tests;
