//! Cluster metadata as a replicated state machine (KRaft-like), with no I/O.
//!
//! - [`records`]: the prost records of the metadata log;
//! - [`image`]: the state every broker derives by applying them in order;
//! - [`placement`]: where replicas go;
//! - [`controller`]: admin requests and broker liveness turned into records, on the leader.
//!
//! The metadata Raft group that orders the records is wired in by the replication work;
//! this module is the deterministic core it drives.

pub mod controller;
pub mod image;
pub mod log_codec;
pub mod placement;
pub mod records;

pub use controller::{Controller, ControllerConfig, CreateTopic, Effect, PlacementSeed};
pub use image::{ApplyError, BrokerInfo, MetadataImage, TopicInfo};
pub use records::MetadataRecord;

#[cfg(test)]
mod tests;
