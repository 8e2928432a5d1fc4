//! The records of the metadata log, as prost messages.
//!
//! The metadata log is a replicated sequence of these records; every broker applies the
//! same sequence to its [`super::MetadataImage`] and so sees the same cluster. The tags
//! are part of the on-disk format: never reuse or renumber one.

use std::collections::BTreeMap;

/// One entry of the metadata log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRecord {
    #[prost(oneof = "Record", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub record: Option<Record>,
    /// For an admin change: the offset of the image it was checked against (none: an
    /// unconditional record). The change applies only if what it depends on has not
    /// changed since (see `MetadataImage::changed_since`): it may commit late, or twice
    /// (a broker proposes it again while it waits, and a proposal thought lost with a
    /// leader change can still commit).
    #[prost(int64, optional, tag = "16")]
    pub based_on_offset: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Record {
    #[prost(message, tag = "1")]
    RegisterBroker(RegisterBroker),
    #[prost(message, tag = "2")]
    FenceBroker(BrokerRef),
    #[prost(message, tag = "3")]
    UnfenceBroker(BrokerRef),
    #[prost(message, tag = "4")]
    CreateTopic(TopicRecord),
    #[prost(message, tag = "5")]
    DeleteTopic(TopicRef),
    #[prost(message, tag = "6")]
    AddPartitions(AddPartitions),
    #[prost(message, tag = "7")]
    SetTopicConfigs(SetTopicConfigs),
    #[prost(message, tag = "8")]
    PartitionChange(PartitionChange),
    #[prost(message, tag = "9")]
    ClusterIdentity(ClusterIdentity),
    #[prost(message, tag = "10")]
    AllocateProducerIds(AllocateProducerIds),
}

/// A block of producer ids `[first_producer_id, first_producer_id + count)` handed to one
/// broker incarnation. Applied only if the block starts where the last one ended, so a
/// block is granted once, to one broker, and ids are never reused (a record that commits
/// late or twice changes nothing).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AllocateProducerIds {
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    #[prost(uint64, tag = "2")]
    pub incarnation_id: u64,
    #[prost(int64, tag = "3")]
    pub first_producer_id: i64,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

/// The cluster's id (Metadata, DescribeCluster). Every broker proposes one until the
/// image has it; the first to commit wins and later ones change nothing.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClusterIdentity {
    #[prost(string, tag = "1")]
    pub cluster_id: String,
}

/// A broker joining (or rejoining after a restart) the cluster.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegisterBroker {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(int32, tag = "3")]
    pub port: i32,
    #[prost(string, optional, tag = "4")]
    pub rack: Option<String>,
    /// Differs on every process start, so a restart is told apart from a duplicate.
    #[prost(uint64, tag = "5")]
    pub incarnation_id: u64,
    /// Names the broker's disk (its data directory), chosen when the directory was first
    /// used: a wiped or replaced disk registers with a new one (0: not known).
    #[prost(uint64, tag = "6")]
    pub directory_id: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BrokerRef {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TopicRef {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// Where one partition lives and who leads it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PartitionRecord {
    /// Replica broker ids; the first is the preferred leader.
    #[prost(int32, repeated, tag = "1")]
    pub replicas: Vec<i32>,
    /// The replicas caught up with the leader.
    #[prost(int32, repeated, tag = "2")]
    pub isr: Vec<i32>,
    /// -1 while no leader is known.
    #[prost(int32, tag = "3")]
    pub leader: i32,
    #[prost(int32, tag = "4")]
    pub leader_epoch: i32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TopicRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    /// 16 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub topic_id: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub partitions: Vec<PartitionRecord>,
    #[prost(btree_map = "string, string", tag = "4")]
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AddPartitions {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(message, repeated, tag = "2")]
    pub partitions: Vec<PartitionRecord>,
}

/// Replaces a topic's config overrides.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetTopicConfigs {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub configs: BTreeMap<String, String>,
}

/// A new leader (and epoch) or in-sync set for one partition.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PartitionChange {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int32, tag = "3")]
    pub leader: i32,
    #[prost(int32, tag = "4")]
    pub leader_epoch: i32,
    #[prost(int32, repeated, tag = "5")]
    pub isr: Vec<i32>,
}

impl MetadataRecord {
    pub fn new(record: Record) -> MetadataRecord {
        MetadataRecord {
            record: Some(record),
            based_on_offset: None,
        }
    }

    /// The record as an admin change checked against the image at `offset`.
    pub fn based_on(self, offset: i64) -> MetadataRecord {
        MetadataRecord {
            based_on_offset: Some(offset),
            ..self
        }
    }
}
