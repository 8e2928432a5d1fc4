//! The Kafka wire protocol: framing, request dispatch, one handler per API, and the
//! TCP server. Decoding and encoding of every message is the kafka-protocol crate's.

pub mod api;
pub mod dispatch;
pub mod frame;
pub mod server;
pub mod versions;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_admin_tests;
#[cfg(test)]
mod txn_offset_tests;
#[cfg(test)]
mod txn_tests;
#[cfg(test)]
mod txn_v2_tests;
