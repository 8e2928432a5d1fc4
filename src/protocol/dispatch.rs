//! Turns one request frame into a reply: decode the header, check the API and version
//! against what Strand advertises, decode the body, call the API's handler, encode the
//! response. Anything that cannot be answered in the Kafka protocol (unknown API key,
//! unsupported version, undecodable bytes) is a [`DispatchError`]: the connection closes.

use super::api;
use super::versions;
use crate::broker::Broker;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a handler produced.
pub enum Reply {
    /// The response is ready.
    Now(ResponseKind),
    /// The response needs to wait (an fsync, a long-poll); side effects already happened.
    Later(Pin<Box<dyn Future<Output = ResponseKind> + Send>>),
    /// No response at all (Produce with acks=0).
    Nothing,
}

/// A reply with what is needed to frame it.
pub struct PendingResponse {
    pub correlation_id: i32,
    pub api_key: ApiKey,
    pub version: i16,
    pub reply: Reply,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("malformed request header: {0}")]
    BadHeader(String),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("unsupported version {version} of {api_key:?}")]
    UnsupportedVersion { api_key: ApiKey, version: i16 },
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    BadBody {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Decodes and handles one request frame (from an unnamed peer).
pub async fn dispatch(
    broker: &Arc<Broker>,
    frame: Bytes,
) -> Result<PendingResponse, DispatchError> {
    dispatch_from(broker, frame, None).await
}

/// Decodes and handles one request frame from `peer` (shown as a group member's host).
pub async fn dispatch_from(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: Option<std::net::SocketAddr>,
) -> Result<PendingResponse, DispatchError> {
    if frame.len() < 8 {
        return Err(DispatchError::BadHeader(format!("{} bytes", frame.len())));
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key =
        ApiKey::try_from(api_key_raw).map_err(|_| DispatchError::UnknownApi(api_key_raw))?;
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if api_key == ApiKey::ApiVersions && !versions::is_handled(api_key, version) {
        // A newer client probing: its header layout may be one Strand does not know, but
        // the correlation id is always at bytes 4..8. Answer with the v0 error body.
        return Ok(api::api_versions::unsupported(correlation_id));
    }
    let mut body = frame.clone();
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut body, header_version)
        .map_err(|e| DispatchError::BadHeader(e.to_string()))?;
    let pending = |version, reply| PendingResponse {
        correlation_id,
        api_key,
        version,
        reply,
    };
    if api_key == ApiKey::ApiVersions {
        let transaction_version = broker.config.txns.transaction_version;
        return Ok(api::api_versions::handle(
            version,
            body,
            correlation_id,
            transaction_version,
        ));
    }
    if !versions::is_handled(api_key, version) {
        return Err(DispatchError::UnsupportedVersion { api_key, version });
    }
    let request =
        RequestKind::decode(api_key, &mut body, version).map_err(|e| DispatchError::BadBody {
            api_key,
            version,
            reason: e.to_string(),
        })?;
    let reply = match request {
        RequestKind::Produce(r) => api::produce::handle(broker, version, r).await,
        RequestKind::Fetch(r) => api::fetch::handle(broker, version, r),
        RequestKind::ListOffsets(r) => api::list_offsets::handle(broker, version, r),
        RequestKind::Metadata(r) => api::metadata::handle(broker, version, r).await,
        RequestKind::FindCoordinator(r) => api::find_coordinator::handle(broker, version, r).await,
        RequestKind::InitProducerId(r) => api::init_producer_id::handle(broker, version, r).await,
        RequestKind::AddPartitionsToTxn(r) => {
            api::add_partitions_to_txn::handle(broker, version, r).await
        }
        RequestKind::AddOffsetsToTxn(r) => {
            api::add_offsets_to_txn::handle(broker, version, r).await
        }
        RequestKind::EndTxn(r) => api::end_txn::handle(broker, version, r).await,
        RequestKind::TxnOffsetCommit(r) => api::txn_offset_commit::handle(broker, version, r),
        RequestKind::WriteTxnMarkers(r) => api::write_txn_markers::handle(broker, version, r).await,
        RequestKind::ListTransactions(r) => api::list_transactions::handle(broker, version, r),
        RequestKind::DescribeTransactions(r) => {
            api::describe_transactions::handle(broker, version, r)
        }
        RequestKind::DescribeProducers(r) => api::describe_producers::handle(broker, version, r),
        RequestKind::JoinGroup(r) => {
            let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
            // Kafka shows a member's host as "/address".
            let client_host = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
            api::join_group::handle(broker, version, r, client_id, client_host)
        }
        RequestKind::SyncGroup(r) => api::sync_group::handle(broker, version, r),
        RequestKind::Heartbeat(r) => api::heartbeat::handle(broker, version, r),
        RequestKind::LeaveGroup(r) => api::leave_group::handle(broker, version, r),
        RequestKind::OffsetCommit(r) => api::offset_commit::handle(broker, version, r),
        RequestKind::OffsetFetch(r) => api::offset_fetch::handle(broker, version, r),
        RequestKind::ListGroups(r) => api::list_groups::handle(broker, version, r),
        RequestKind::DescribeGroups(r) => api::describe_groups::handle(broker, version, r),
        RequestKind::DeleteGroups(r) => api::delete_groups::handle(broker, version, r),
        RequestKind::OffsetDelete(r) => api::offset_delete::handle(broker, version, r),
        RequestKind::CreateTopics(r) => api::create_topics::handle(broker, version, r).await,
        RequestKind::DeleteTopics(r) => api::delete_topics::handle(broker, version, r).await,
        RequestKind::CreatePartitions(r) => {
            api::create_partitions::handle(broker, version, r).await
        }
        RequestKind::DescribeConfigs(r) => api::describe_configs::handle(broker, version, r),
        RequestKind::AlterConfigs(r) => api::alter_configs::handle(broker, version, r).await,
        RequestKind::IncrementalAlterConfigs(r) => {
            api::incremental_alter_configs::handle(broker, version, r).await
        }
        RequestKind::DescribeCluster(r) => api::describe_cluster::handle(broker, version, r),
        RequestKind::OffsetForLeaderEpoch(r) => {
            api::offset_for_leader_epoch::handle(broker, version, r)
        }
        _ => return Err(DispatchError::UnsupportedVersion { api_key, version }),
    };
    Ok(pending(version, reply))
}

/// Encodes a response frame body (header + message), without the size prefix.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api_key.response_header_version(version))?;
    response.encode(&mut buf, version)?;
    Ok(buf.freeze())
}
