//! One module per Kafka API: decode is done by `dispatch`, each handler applies the
//! request to the broker and builds the response.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_producers;
pub mod describe_transactions;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Config (name, value) pairs as a request carries them; entries without a value are
/// left out.
pub(crate) fn config_map<'a>(
    entries: impl IntoIterator<Item = (&'a StrBytes, Option<&'a StrBytes>)>,
) -> std::collections::BTreeMap<String, String> {
    entries
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name.to_string(), v.to_string())))
        .collect()
}

/// Refuses a change that would break an internal topic: deleting `__consumer_offsets`
/// loses every group, and more partitions move groups to partitions that do not hold
/// their state.
pub(crate) fn refuse_internal(name: &str, change: &str) -> Result<(), crate::error::ApiError> {
    if is_internal(name) {
        return Err(crate::error::ApiError::new(
            kafka_protocol::ResponseError::InvalidRequest,
            format!("{name} is an internal topic: {change} it is not allowed"),
        ));
    }
    Ok(())
}

/// Whether `name` is a coordinator's internal topic (only the coordinator writes it).
pub(crate) fn is_internal(name: &str) -> bool {
    name == crate::group::host::OFFSETS_TOPIC || name == crate::txn::host::TRANSACTION_STATE_TOPIC
}

/// The wire error code of an optional error (0 for none).
pub(crate) fn code(error: Option<ResponseError>) -> i16 {
    error.map(|e| e.code()).unwrap_or(0)
}

/// Kafka's config resource types.
pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;
