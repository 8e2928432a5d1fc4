//! Replication with raft-rs: a Raft group per partition whose log is the partition's
//! own segment log.
//!
//! - [`entry_codec`]: how a Raft entry is stored as a RecordBatch (offsets follow the log);
//! - [`replica_log`]: the raft-rs `Storage` over a partition log plus its hard state;
//! - [`slog_bridge`]: raft-rs logging into `tracing`.
//!
//! The multi-Raft driver, the transport and the metadata group build on these.

pub mod driver;
pub mod entry_codec;
pub mod replica_log;
pub mod slog_bridge;
pub mod transport;

pub use replica_log::{ReplicaLog, ReplicaStorage};

#[cfg(test)]
mod tests;
