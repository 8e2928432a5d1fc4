//! Transactions: the transaction coordinator (Kafka's TransactionCoordinator and
//! TransactionStateManager) for exactly-once producers.
//!
//! `coordinator.rs` is the coordinator as a deterministic state machine: requests
//! (InitProducerId with a transactional id, AddPartitionsToTxn and its KIP-890
//! verification, AddOffsetsToTxn, EndTxn) and the clock come in as calls; what the
//! caller must do comes out as ordered [`coordinator::Effect`]s: records to persist in
//! `__transaction_state`, and transaction markers to write to the partitions of a
//! transaction. It does no I/O and reads no clock; producer ids come from the caller.
//! `records.rs` holds what it persists; `host.rs` which transactional ids this broker
//! coordinates (the `__transaction_state` partitions it leads, loaded before they
//! serve). The broker is the I/O edge, wired like `broker/groups.rs` is for groups.

pub mod coordinator;
pub mod host;
pub mod records;

#[cfg(test)]
mod tests;
