//! Strand: a Kafka-compatible commit log broker.
//!
//! See `docs/ARCHITECTURE.md` for the map of this crate.

pub mod bench;
pub mod broker;
pub mod buggify;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod coordinator_shards;
pub mod dev_cluster;
pub mod error;
pub mod group;
pub mod groups_cli;
pub mod large_alloc;
pub mod log;
pub mod metadata;
pub mod planted;
pub mod protocol;
pub mod replication;
pub mod storage;
pub mod txn;
