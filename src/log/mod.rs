//! The partition log: segments of RecordBatches with sparse indexes, recovery,
//! roll and retention. Plain Rust over the storage trait; no tasks, no clock.

pub mod batch;
pub mod cleaner;
pub mod config;
pub mod index;
pub mod partition_log;
pub mod producer_state;
pub mod segment;
pub mod txn_index;
pub mod txn_marker;

pub use config::LogConfig;
pub use partition_log::{AppendInfo, FlushTicket, PartitionLog, ReadError, RecoveryReport};
