//! The API versions Strand implements: exactly what ApiVersions advertises.
//!
//! Produce is advertised from v0 because librdkafka only enables compression codecs when
//! the Produce range starts at v0; v0-v2 (old message formats) are refused by closing the
//! connection, as Kafka 4 does. Fetch stops at v12 and Metadata at v12 so that topic names,
//! not topic ids, address partitions.

use kafka_protocol::messages::ApiKey;

#[derive(Debug, Clone, Copy)]
pub struct Supported {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

pub const SUPPORTED: &[Supported] = &[
    // v10 adds KIP-951's leader hints (optional, not sent), v11 TRANSACTION_ABORTABLE,
    // v12 transaction version 2 (KIP-890 part 2). v13 addresses topics by id.
    Supported {
        key: ApiKey::Produce,
        min: 0,
        max: 12,
    },
    Supported {
        key: ApiKey::Fetch,
        min: 4,
        max: 12,
    },
    Supported {
        key: ApiKey::ListOffsets,
        min: 1,
        max: 7,
    },
    Supported {
        key: ApiKey::Metadata,
        min: 0,
        max: 12,
    },
    Supported {
        key: ApiKey::OffsetForLeaderEpoch,
        min: 2,
        max: 4,
    },
    Supported {
        key: ApiKey::FindCoordinator,
        min: 0,
        max: 4,
    },
    Supported {
        key: ApiKey::InitProducerId,
        min: 0,
        max: 5,
    },
    // v0 was removed in Kafka 4 (KIP-896); brokers send v1.
    Supported {
        key: ApiKey::WriteTxnMarkers,
        min: 1,
        max: 1,
    },
    Supported {
        key: ApiKey::AddPartitionsToTxn,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::AddOffsetsToTxn,
        min: 0,
        max: 4,
    },
    Supported {
        key: ApiKey::EndTxn,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::TxnOffsetCommit,
        min: 0,
        max: 5,
    },
    // KIP-664: the admin side of transactions (ListTransactions v2: KIP-1152's pattern).
    Supported {
        key: ApiKey::ListTransactions,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::DescribeTransactions,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::DescribeProducers,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::ApiVersions,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::CreateTopics,
        min: 2,
        max: 7,
    },
    Supported {
        key: ApiKey::DeleteTopics,
        min: 1,
        max: 6,
    },
    Supported {
        key: ApiKey::DescribeConfigs,
        min: 1,
        max: 4,
    },
    Supported {
        key: ApiKey::AlterConfigs,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::CreatePartitions,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::IncrementalAlterConfigs,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::DescribeCluster,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::JoinGroup,
        min: 0,
        max: 9,
    },
    Supported {
        key: ApiKey::SyncGroup,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::Heartbeat,
        min: 0,
        max: 4,
    },
    Supported {
        key: ApiKey::LeaveGroup,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::OffsetCommit,
        min: 2,
        max: 9,
    },
    Supported {
        key: ApiKey::OffsetFetch,
        min: 1,
        max: 9,
    },
    Supported {
        key: ApiKey::ListGroups,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::DescribeGroups,
        min: 0,
        max: 6,
    },
    Supported {
        key: ApiKey::DeleteGroups,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::OffsetDelete,
        min: 0,
        max: 0,
    },
];

/// Produce versions below this carry old message formats and are refused.
pub const PRODUCE_MIN_HANDLED_VERSION: i16 = 3;

pub fn supported(key: ApiKey) -> Option<Supported> {
    SUPPORTED.iter().copied().find(|s| s.key == key)
}

/// Whether a request of this key and version is handled (ApiVersions is special-cased).
pub fn is_handled(key: ApiKey, version: i16) -> bool {
    let min = if key == ApiKey::Produce {
        PRODUCE_MIN_HANDLED_VERSION
    } else {
        i16::MIN
    };
    supported(key)
        .map(|s| version >= s.min.max(min) && version <= s.max)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    /// Every advertised version must be one the kafka-protocol crate can decode.
    #[test]
    fn advertised_versions_are_decodable() {
        use kafka_protocol::messages::*;
        fn range<T: Message>() -> (i16, i16) {
            (T::VERSIONS.min, T::VERSIONS.max)
        }
        for s in SUPPORTED {
            let (min, max) = match s.key {
                ApiKey::Produce => range::<ProduceRequest>(),
                ApiKey::Fetch => range::<FetchRequest>(),
                ApiKey::ListOffsets => range::<ListOffsetsRequest>(),
                ApiKey::Metadata => range::<MetadataRequest>(),
                ApiKey::FindCoordinator => range::<FindCoordinatorRequest>(),
                ApiKey::ApiVersions => range::<ApiVersionsRequest>(),
                ApiKey::CreateTopics => range::<CreateTopicsRequest>(),
                ApiKey::DeleteTopics => range::<DeleteTopicsRequest>(),
                ApiKey::DescribeConfigs => range::<DescribeConfigsRequest>(),
                ApiKey::AlterConfigs => range::<AlterConfigsRequest>(),
                ApiKey::CreatePartitions => range::<CreatePartitionsRequest>(),
                ApiKey::IncrementalAlterConfigs => range::<IncrementalAlterConfigsRequest>(),
                ApiKey::DescribeCluster => range::<DescribeClusterRequest>(),
                ApiKey::OffsetForLeaderEpoch => range::<OffsetForLeaderEpochRequest>(),
                ApiKey::JoinGroup => range::<JoinGroupRequest>(),
                ApiKey::SyncGroup => range::<SyncGroupRequest>(),
                ApiKey::Heartbeat => range::<HeartbeatRequest>(),
                ApiKey::LeaveGroup => range::<LeaveGroupRequest>(),
                ApiKey::OffsetCommit => range::<OffsetCommitRequest>(),
                ApiKey::OffsetFetch => range::<OffsetFetchRequest>(),
                ApiKey::ListGroups => range::<ListGroupsRequest>(),
                ApiKey::DescribeGroups => range::<DescribeGroupsRequest>(),
                ApiKey::DeleteGroups => range::<DeleteGroupsRequest>(),
                ApiKey::OffsetDelete => range::<OffsetDeleteRequest>(),
                ApiKey::InitProducerId => range::<InitProducerIdRequest>(),
                ApiKey::AddPartitionsToTxn => range::<AddPartitionsToTxnRequest>(),
                ApiKey::AddOffsetsToTxn => range::<AddOffsetsToTxnRequest>(),
                ApiKey::EndTxn => range::<EndTxnRequest>(),
                ApiKey::TxnOffsetCommit => range::<TxnOffsetCommitRequest>(),
                ApiKey::WriteTxnMarkers => range::<WriteTxnMarkersRequest>(),
                ApiKey::ListTransactions => range::<ListTransactionsRequest>(),
                ApiKey::DescribeTransactions => range::<DescribeTransactionsRequest>(),
                ApiKey::DescribeProducers => range::<DescribeProducersRequest>(),
                other => panic!("no decoder check for {other:?}"),
            };
            let handled_min = if s.key == ApiKey::Produce {
                PRODUCE_MIN_HANDLED_VERSION
            } else {
                s.min
            };
            assert!(
                handled_min >= min && s.max <= max,
                "{:?} {}..{} not decodable",
                s.key,
                s.min,
                s.max
            );
        }
    }
}
