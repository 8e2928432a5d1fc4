//! The leader's check of batches from idempotent producers, made when a produce is
//! proposed: against the partition's producer state (every batch written to the log)
//! and the entries proposed since the last round (not written yet), so two retries in
//! one round are seen too. A retry is answered with its original's offsets once the
//! original meets the producer's acks; nothing is proposed for it.
//!
//! Transaction markers (WriteTxnMarkers) are checked here too, against the same state:
//! a marker of a producer epoch older than the producer's is refused
//! (INVALID_PRODUCER_EPOCH), and so is one from a coordinator epoch older than the one
//! that wrote the producer's last marker (TRANSACTION_COORDINATOR_FENCED).
//!
//! KIP-890 part 1 (`txn_verification`): a client's transactional batch that would open
//! its producer's transaction here (no open transaction of its epoch in the log or the
//! proposals) is proposed only with the partition's current verification guard for
//! it; a marker proposed for the producer voids its guard.
//!
//! A coordinator's own transactional batch (a TxnOffsetCommit in `__consumer_offsets`,
//! [`AppendOrigin::Coordinator`]) has no sequence: as Kafka does for that origin, only
//! its producer epoch is checked (an older one is INVALID_PRODUCER_EPOCH).

use super::txn_verification::{GuardError, TxnAppend, TxnVerifications};
use super::{AppendOrigin, ProduceError};
use crate::log::batch::BatchHeader;
use crate::log::producer_state::{ProducerEntry, SequenceError, Verdict};
use crate::log::txn_marker::{self, TxnMarker};
use crate::replication::driver::Driver;
use bytes::Bytes;
use std::sync::Mutex;

/// What a proposal brings for the KIP-890 check, and the leader's guards.
pub(super) struct TxnCheck<'a> {
    pub append: TxnAppend,
    pub verifications: &'a Mutex<TxnVerifications>,
}

impl TxnCheck<'_> {
    fn verifications(&self) -> std::sync::MutexGuard<'_, TxnVerifications> {
        self.verifications.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the check decided for a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProducerCheck {
    /// No idempotent producer's batch in it, or a new one: propose it.
    Propose,
    /// A retry of a batch written at `base_offset..=last_offset`, Raft entry `index` of
    /// `term` (None: below the Raft log's start, hence committed).
    DuplicateWritten {
        base_offset: i64,
        last_offset: i64,
        entry: Option<(u64, u64)>,
    },
    /// A retry of a batch proposed but not yet written: Raft entry `index` of `term`.
    DuplicateUnwritten { index: u64, term: u64 },
}

/// An unwritten entry's batch has no offsets yet: it stands in the state under a
/// negative offset that names its Raft index.
fn unwritten_offset(index: u64) -> i64 {
    -(index as i64) - 1
}

fn unwritten_index(offset: i64) -> u64 {
    debug_assert!(offset < 0);
    (-(offset + 1)) as u64
}

/// Checks a proposal's batches for `group` on its leader.
pub(super) fn check_producer_batches(
    driver: &Driver,
    group: &str,
    batches: &[Bytes],
    origin: AppendOrigin,
    txn: &TxnCheck<'_>,
) -> Result<ProducerCheck, ProduceError> {
    let headers: Vec<BatchHeader> = batches
        .iter()
        .filter_map(|b| BatchHeader::parse(b).ok())
        .collect();
    if let Some(position) = headers
        .iter()
        .position(|h| h.producer_id >= 0 && h.is_control())
    {
        let checked = check_marker(
            driver,
            group,
            batches,
            &headers[position],
            &batches[position],
        )?;
        txn.verifications()
            .remove(group, headers[position].producer_id);
        return Ok(checked);
    }
    let Some(header) = headers
        .iter()
        .find(|h| h.producer_id >= 0 && !h.is_control())
    else {
        return Ok(ProducerCheck::Propose);
    };
    if batches.len() != 1 {
        return Err(ProduceError::InvalidRecord(
            "an idempotent producer sends one batch per partition".into(),
        ));
    }
    let storage = driver
        .storage(group)
        .ok_or(ProduceError::UnknownPartition)?;
    let log = storage.lock();
    // Planted bug: a new leader forgets what its log says about producers (as if the
    // state lived only in the memory of the leader that accepted the batches).
    let forget = crate::planted::on("forget-sequence-window-on-leader-change")
        && log
            .log()
            .producer_state()
            .entry(header.producer_id)
            .and_then(|e| e.batches.back())
            .and_then(|b| log.index_of_offset(b.base_offset))
            .is_some_and(|(_, term)| term < log.hard_state().term);
    let mut entry = if forget {
        None
    } else {
        log.log()
            .producer_state()
            .entry(header.producer_id)
            .cloned()
    };
    let mut unwritten_terms = Vec::new();
    for e in driver.unwritten_entries(group, log.last_index()) {
        let Ok(mut h) = BatchHeader::parse(&e.data) else {
            continue;
        };
        if h.producer_id != header.producer_id {
            continue;
        }
        h.base_offset = unwritten_offset(e.index);
        let unwritten = entry.get_or_insert_with(|| ProducerEntry::empty(h.producer_epoch));
        if h.is_control() {
            let coordinator_epoch =
                txn_marker::parse_marker(&e.data, &h).map_or(-1, |m| m.coordinator_epoch);
            unwritten.apply_marker(&h, coordinator_epoch);
            continue;
        }
        unwritten.apply_data(&h);
        unwritten_terms.push((e.index, e.term));
    }
    if origin == AppendOrigin::Coordinator && header.base_sequence < 0 {
        let checked = check_coordinator_epoch(entry.as_ref(), header)?;
        // A TxnOffsetCommit's batch carries the guard its verification took.
        let term = driver.leader(group).map_or(0, |(_, term)| term);
        check_txn_verification(group, entry.as_ref(), header, term, txn)?;
        return Ok(checked);
    }
    let verdict = ProducerEntry::check(entry.as_ref(), header).map_err(ProduceError::Sequence)?;
    if verdict == Verdict::Append {
        let term = driver.leader(group).map_or(0, |(_, term)| term);
        check_txn_verification(group, entry.as_ref(), header, term, txn)?;
    }
    match verdict {
        Verdict::Append => Ok(ProducerCheck::Propose),
        Verdict::Duplicate(original) if original.base_offset < 0 => {
            let index = unwritten_index(original.base_offset);
            let term = unwritten_terms
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, t)| *t)
                .expect("an unwritten duplicate names an unwritten entry");
            Ok(ProducerCheck::DuplicateUnwritten { index, term })
        }
        Verdict::Duplicate(original) => Ok(ProducerCheck::DuplicateWritten {
            base_offset: original.base_offset,
            last_offset: original.last_offset,
            entry: log.index_of_offset(original.base_offset),
        }),
    }
}

/// KIP-890: a transactional batch checked by its handler (a client's, or a group
/// coordinator's TxnOffsetCommit) that opens its producer's transaction here needs the
/// partition's current guard for it; one that continues an open transaction of its
/// epoch needs none.
fn check_txn_verification(
    group: &str,
    entry: Option<&ProducerEntry>,
    header: &BatchHeader,
    term: u64,
    txn: &TxnCheck<'_>,
) -> Result<(), ProduceError> {
    let TxnAppend::Checked { guard } = txn.append else {
        return Ok(());
    };
    if !header.is_transactional() {
        return Ok(());
    }
    let open = entry.is_some_and(|e| {
        e.producer_epoch == header.producer_epoch && e.current_txn_first_offset.is_some()
    });
    if open {
        return Ok(());
    }
    let verifications = txn.verifications();
    let checked = match guard {
        Some(guard) => verifications.check(
            group,
            header.producer_id,
            header.producer_epoch,
            guard,
            term,
        ),
        None => Err(GuardError::Missing),
    };
    match checked {
        Ok(()) => Ok(()),
        Err(GuardError::OtherTerm) => Err(ProduceError::NotLeader { leader: 0 }),
        Err(GuardError::Missing) => Err(ProduceError::TxnNotVerified),
    }
}

/// A coordinator's transactional batch without sequence: only a producer epoch older
/// than the one the partition knows is refused (a zombie's TxnOffsetCommit).
fn check_coordinator_epoch(
    entry: Option<&ProducerEntry>,
    header: &BatchHeader,
) -> Result<ProducerCheck, ProduceError> {
    assert!(header.producer_id >= 0 && !header.is_control());
    assert!(header.base_sequence < 0);
    match entry {
        Some(entry) if header.producer_epoch < entry.producer_epoch => {
            Err(ProduceError::Sequence(SequenceError::StaleEpoch {
                current: entry.producer_epoch,
                got: header.producer_epoch,
            }))
        }
        _ => Ok(ProducerCheck::Propose),
    }
}

/// Checks a proposed transaction marker (one batch) against the producer's state, with
/// the entries proposed for it but not written yet applied on top.
fn check_marker(
    driver: &Driver,
    group: &str,
    batches: &[Bytes],
    header: &BatchHeader,
    batch: &Bytes,
) -> Result<ProducerCheck, ProduceError> {
    let marker = txn_marker::parse_marker(batch, header)
        .filter(|_| batches.len() == 1)
        .ok_or_else(|| ProduceError::InvalidRecord("not a transaction marker".into()))?;
    let storage = driver
        .storage(group)
        .ok_or(ProduceError::UnknownPartition)?;
    let log = storage.lock();
    let mut entry = log
        .log()
        .producer_state()
        .entry(header.producer_id)
        .cloned();
    for e in driver.unwritten_entries(group, log.last_index()) {
        let Ok(h) = BatchHeader::parse(&e.data) else {
            continue;
        };
        if h.producer_id != header.producer_id {
            continue;
        }
        let unwritten = entry.get_or_insert_with(|| ProducerEntry::empty(h.producer_epoch));
        if h.is_control() {
            let coordinator_epoch = txn_marker::parse_marker(&e.data, &h)
                .map_or(-1, |m: TxnMarker| m.coordinator_epoch);
            unwritten.apply_marker(&h, coordinator_epoch);
        } else {
            unwritten.apply_data(&h);
        }
    }
    ProducerEntry::check_marker(entry.as_ref(), header, marker).map_err(ProduceError::Marker)?;
    Ok(ProducerCheck::Propose)
}
