//! A cluster member: the metadata Raft group, the partition Raft groups this broker
//! hosts, and the task that drives them.
//!
//! Every broker runs one [`ClusterNode`]. Its driver task owns the multi-Raft
//! [`Driver`] and the [`Transport`]: it ticks the groups, steps messages from peers,
//! proposes what the API layer asks, runs a round (one fsync pass), sends the outgoing
//! batches, and then applies what committed: metadata records into the
//! [`MetadataImage`] (hosting or dropping partition replicas to match it), and partition
//! entries into high watermarks and answers to waiting producers.
//!
//! A single node is a cluster of one: the same path with one voter per group.

mod engine;
mod metadata_reads;

pub use engine::txn_verification::TxnAppend;
pub use engine::{
    check_leader_epoch, AppendOrigin, ClusterConfig, ClusterNode, ProduceError, ProduceTicket,
    RecoveryPoints, Replica, Wait, METADATA_GROUP,
};

#[cfg(test)]
use engine::{directory_id, replay_committed, DIRECTORY_ID_FILE};
#[cfg(test)]
mod tests;
