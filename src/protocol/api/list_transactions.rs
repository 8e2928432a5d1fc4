//! ListTransactions (KIP-664; v1 adds the duration filter of KIP-994, v2 the
//! transactional id pattern of KIP-1152): the transactions of every transaction
//! coordinator this broker hosts (the `__transaction_state` partitions it leads),
//! filtered by state names, producer ids, how long they have been running and a regular
//! expression the whole transactional id matches (empty or null: none); state filters
//! that name no state are reported back. COORDINATOR_LOAD_IN_PROGRESS while a partition
//! led here loads; INVALID_REGULAR_EXPRESSION for a pattern that does not compile.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use crate::txn::coordinator::{ListFilter, TxnIdPattern};
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, ResponseKind, TransactionalId,
};

pub fn handle(broker: &Broker, version: i16, request: ListTransactionsRequest) -> Reply {
    let pattern = match request.transactional_id_pattern.as_deref() {
        Some(source) if version >= 2 && !source.is_empty() => match TxnIdPattern::new(source) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                let refused = ListTransactionsResponse::default().with_error_code(code(Some(e)));
                return Reply::Now(ResponseKind::ListTransactions(refused));
            }
        },
        _ => None,
    };
    let filter = ListFilter {
        states: request
            .state_filters
            .iter()
            .map(|s| s.to_string())
            .collect(),
        producer_ids: request.producer_id_filters.iter().map(|p| p.0).collect(),
        // v0 has no duration filter: the field's default (-1) is "none".
        duration_filter_ms: if version >= 1 {
            request.duration_filter
        } else {
            -1
        },
        transactional_id_pattern: pattern,
    };
    let response = match broker.txns.list(&filter) {
        Err(e) => ListTransactionsResponse::default().with_error_code(code(Some(e))),
        Ok((listed, unknown)) => ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown.iter().map(|s| str_bytes(s)).collect())
            .with_transaction_states(
                listed
                    .iter()
                    .map(|t| {
                        TransactionState::default()
                            .with_transactional_id(TransactionalId(str_bytes(&t.transactional_id)))
                            .with_producer_id(ProducerId(t.producer_id))
                            .with_transaction_state(str_bytes(t.state.kafka_name()))
                    })
                    .collect(),
            ),
    };
    Reply::Now(ResponseKind::ListTransactions(response))
}
