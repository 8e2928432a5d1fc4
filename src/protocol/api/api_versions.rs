//! ApiVersions: the versions of every API Strand handles. A request in a version
//! Strand does not know gets UNSUPPORTED_VERSION with a v0 body listing the ranges,
//! so the client can retry with one it shares.
//!
//! From v3 on, the features (KIP-584): only `transaction.version`, supported 0-2 and
//! finalized at the broker's `transaction-version` (2 by default, as a new Kafka 4
//! cluster). A Kafka 4 client uses transaction version 2 (KIP-890 part 2) only when the
//! finalized level is 2 or more and Produce v12 and TxnOffsetCommit v5 are served.

use crate::config::TRANSACTION_VERSION_MAX;
use crate::protocol::dispatch::{PendingResponse, Reply};
use crate::protocol::versions::SUPPORTED;
use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseKind};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

/// The feature clients read to choose the transaction protocol (KIP-890, KIP-1022).
pub const TRANSACTION_VERSION_FEATURE: &str = "transaction.version";
/// The finalized features' epoch: the level only changes with the broker's
/// configuration, so one epoch serves (a client takes the features of the highest).
const FINALIZED_FEATURES_EPOCH: i64 = 1;

fn response(error: Option<ResponseError>, transaction_version: i16) -> ApiVersionsResponse {
    let keys: Vec<ApiVersion> = SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect();
    let name = super::str_bytes(TRANSACTION_VERSION_FEATURE);
    let supported = SupportedFeatureKey::default()
        .with_name(name.clone())
        .with_min_version(0)
        .with_max_version(TRANSACTION_VERSION_MAX);
    let finalized = FinalizedFeatureKey::default()
        .with_name(name)
        .with_min_version_level(transaction_version)
        .with_max_version_level(transaction_version);
    ApiVersionsResponse::default()
        .with_error_code(super::code(error))
        .with_api_keys(keys)
        .with_supported_features(vec![supported])
        .with_finalized_features_epoch(FINALIZED_FEATURES_EPOCH)
        .with_finalized_features(vec![finalized])
}

fn pending(correlation_id: i32, version: i16, response: ApiVersionsResponse) -> PendingResponse {
    PendingResponse {
        correlation_id,
        api_key: ApiKey::ApiVersions,
        version,
        reply: Reply::Now(ResponseKind::ApiVersions(response)),
    }
}

/// A supported version: the body must decode (v3 carries the client's software name).
/// `transaction_version`: the finalized `transaction.version` level.
pub fn handle(
    version: i16,
    mut body: Bytes,
    correlation_id: i32,
    transaction_version: i16,
) -> PendingResponse {
    let error = ApiVersionsRequest::decode(&mut body, version)
        .err()
        .map(|_| ResponseError::InvalidRequest);
    let response = response(error, transaction_version);
    pending(correlation_id, version, response)
}

/// A version Strand does not know: error 35 in a v0 body (which has no features).
pub fn unsupported(correlation_id: i32) -> PendingResponse {
    let response = response(Some(ResponseError::UnsupportedVersion), 0);
    pending(correlation_id, 0, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalized_transaction_version_is_the_configured_one() {
        for level in [1, 2] {
            let r = response(None, level);
            assert_eq!(r.finalized_features.len(), 1);
            let finalized = &r.finalized_features[0];
            assert_eq!(finalized.name.as_str(), TRANSACTION_VERSION_FEATURE);
            assert_eq!(finalized.max_version_level, level);
            assert_eq!(finalized.min_version_level, level);
            assert!(r.finalized_features_epoch >= 0);
            let supported = &r.supported_features[0];
            assert_eq!(supported.name.as_str(), TRANSACTION_VERSION_FEATURE);
            assert_eq!(supported.max_version, TRANSACTION_VERSION_MAX);
        }
    }
}
