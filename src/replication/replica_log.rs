//! A partition replica's Raft log, kept in the partition's own segment log.
//!
//! Raft entry `first_index + k` is the k-th batch of the partition log (see
//! `entry_codec` for how entries become batches), so data is written once. Beside the
//! segments the replica keeps `raft-state`: an append-only file of CRC-framed records
//! holding the hard state (term, vote, commit), the configuration and where the log
//! starts; the last whole record wins, so a torn tail only loses what was never synced.
//!
//! [`ReplicaStorage`] shares one `ReplicaLog` between raft-rs (which reads through the
//! `raft::Storage` trait) and the driver (which persists each `Ready`).

use super::compaction::CleanCommand;
use super::entry_codec::{decode_entry, encode_entry, stored_clean_command, stored_leader_change};
use crate::log::{LogConfig, PartitionLog, ReadError};
use crate::storage::{read_exact_at, write_atomic, Storage, StorageFile, SyncHandle};
use prost::Message;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub const STATE_FILE: &str = "raft-state";
/// Beside the segments: the offset of the last clean command applied to the end.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";

/// The offset in `CLEANER_CHECKPOINT_FILE`; None when missing or unreadable (every clean
/// command in the log is then applied again: cleaning is idempotent).
fn read_cleaner_checkpoint(storage: &dyn Storage, dir: &Path) -> Option<i64> {
    let path = dir.join(CLEANER_CHECKPOINT_FILE);
    if !storage.exists(&path) {
        return None;
    }
    let bytes = crate::storage::read_to_vec(storage, &path).ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}
/// The state file is rewritten with only its last record once it grows past this.
const STATE_FILE_COMPACT_BYTES: u64 = 64 * 1024;
/// Largest state record accepted when reading the file back.
const STATE_RECORD_MAX_BYTES: usize = 64 * 1024;

/// How many times a state record that does not read back is written again before the
/// write counts as a storage failure.
const STATE_WRITE_ATTEMPTS: usize = 3;

#[derive(Clone, PartialEq, prost::Message)]
struct PersistedState {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
    #[prost(uint64, tag = "4")]
    first_index: u64,
    #[prost(uint64, tag = "5")]
    snapshot_term: u64,
    #[prost(uint64, repeated, tag = "6")]
    voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "7")]
    learners: Vec<u64>,
    /// Base offset of the entry at `first_index`: batches below it are already dropped
    /// from the Raft log (their segments may outlive a crash during retention).
    #[prost(int64, tag = "8")]
    first_offset: i64,
    /// The vote barrier (0: none): the log index this replica must hold again before it
    /// votes or campaigns (it lost entries it had acknowledged). Kept across restarts so
    /// a replica that crashes while catching up still knows.
    #[prost(uint64, tag = "9")]
    vote_barrier: u64,
    /// The term of the entry at `vote_barrier` when this replica held it (0: unknown).
    #[prost(uint64, tag = "10")]
    vote_barrier_term: u64,
    /// Where the log ended at the last fsync pass completed before this record was
    /// written, and that entry's term (0: an older record that does not say). Those
    /// entries were durable before the record existed: a log that reopens ending below
    /// them lost entries it had acknowledged. A replication round writes its record after
    /// its entries' fsync and before its acknowledgements go out, so this covers every
    /// entry acknowledged before the record.
    #[prost(uint64, tag = "11")]
    log_end_index: u64,
    #[prost(uint64, tag = "12")]
    log_end_term: u64,
    /// Set while the replica has started empty and no leader has told it what it must
    /// hold yet (see `ReplicaLog::unproven`). Durable, so a replica whose first start on a
    /// wiped disk failed after writing its state is still known as such at the next.
    #[prost(bool, tag = "13")]
    unproven: bool,
    /// Counts the records this replica wrote (0: an older record that does not say). The
    /// record with the highest count wins, wherever it lies in the file: a misdirected
    /// write can put the newest record (a vote) before older ones, and the last record
    /// by position would then bring back a term without it.
    #[prost(uint64, tag = "14")]
    sequence: u64,
    /// Where the log ended when the record was written, entries not yet fsynced included
    /// (0: an older record that does not say). A record written between a round's writes
    /// and its fsync (older builds did that in every round) did not name that round's
    /// entries as durable, yet they may have been acknowledged: a log that lost durable
    /// entries (damage) may have lost those too.
    #[prost(uint64, tag = "15")]
    written_end_index: u64,
    #[prost(uint64, tag = "16")]
    written_end_term: u64,
}

/// Where a replica's log ended before it lost entries it had acknowledged: until its log
/// reaches `index` again it does not campaign, and it votes only for a candidate whose
/// log is at least as up to date as (`index`, `term`) was, in Raft's order (last term,
/// then last index), as if it still held them. With `term` unknown (0: the loss was found
/// from a commit index whose entries are gone) it does not vote at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteBarrier {
    pub index: u64,
    pub term: u64,
}

impl VoteBarrier {
    /// The stricter of two barriers: the later index (at one index, the known term).
    pub fn raise(self, other: VoteBarrier) -> VoteBarrier {
        match self.index.cmp(&other.index) {
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Equal if self.term == 0 => other,
            std::cmp::Ordering::Equal => self,
        }
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`) holds everything
    /// this replica had acknowledged.
    pub fn admits(&self, last_index: u64, last_term: u64) -> bool {
        self.term > 0
            && (last_term > self.term || (last_term == self.term && last_index >= self.index))
    }
}

/// What a snapshot carries: where the log continues, and the producer state as of there.
/// The partition's data before it is gone by retention, so a replica that installs the
/// snapshot starts empty there.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotData {
    #[prost(int64, tag = "1")]
    next_offset: i64,
    /// `ProducerStateMap::encode` at `next_offset` (absent: the leader had none).
    #[prost(bytes = "vec", optional, tag = "2")]
    producer_state: Option<Vec<u8>>,
}

/// Where one entry sits in the partition log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPosition {
    pub base_offset: i64,
    /// The offset after the entry's batch.
    pub next_offset: i64,
    pub term: u64,
}

impl EntryPosition {
    /// Whether a batch header read from the log is this entry's: same offsets and term
    /// (the base offset and leader epoch lie outside the batch's CRC).
    fn describes(&self, header: &crate::log::batch::BatchHeader) -> bool {
        header.base_offset == self.base_offset
            && header.next_offset() == self.next_offset
            && u64::try_from(header.partition_leader_epoch) == Ok(self.term)
    }
}

pub struct ReplicaLog {
    log: PartitionLog,
    storage: Arc<dyn Storage>,
    state_path: PathBuf,
    state_file: Box<dyn StorageFile>,
    /// Raft index of `entries[0]`.
    first_index: u64,
    /// Term of the entry at `first_index - 1` (compacted away or never present).
    snapshot_term: u64,
    entries: VecDeque<EntryPosition>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Set once a corrupt batch was logged (reads keep refusing it; the log says it once).
    corruption_logged: std::sync::atomic::AtomicBool,
    /// Lowest Raft index found corrupt by a read (0: none), shared with the
    /// [`ReplicaStorage`] so the driver sees it without taking the lock.
    corrupt_index: Arc<std::sync::atomic::AtomicU64>,
    /// The last I/O error a read for raft-rs hit (raft-rs panics on it; the driver
    /// catches that and turns it into a storage failure of the broker).
    read_error: Arc<Mutex<Option<String>>>,
    /// The persisted commit index when the log was opened ending below it.
    lost_commit: Option<u64>,
    /// Where the log ended before it lost acknowledged entries (see `open`), if it did.
    lost_barrier: Option<VoteBarrier>,
    /// See [`ReplicaLog::unproven`].
    unproven: bool,
    /// See [`VoteBarrier`]; written with the next state record.
    vote_barrier: Option<VoteBarrier>,
    /// See [`ReplicaLog::written_vote`].
    written_vote: (u64, u64),
    /// The `sequence` of the last state record written or read.
    state_sequence: u64,
    /// (term, vote, vote barrier, unproven) of the last state record read back.
    written_promise: (u64, u64, u64, bool),
    /// (index, term) of the last entry made durable by a completed fsync pass (see
    /// `PersistedState::log_end_index`), and of the last one the pass in progress covers.
    synced_end: (u64, u64),
    pending_synced: (u64, u64),
    /// Clean commands in the log not yet applied, by base offset (see
    /// `replication::compaction`): each one appended, and the log's last one at open.
    clean_commands: BTreeMap<i64, CleanCommand>,
    /// The last clean command applied (in memory: the log's last one is applied again
    /// after a restart).
    last_clean: Option<CleanCommand>,
    /// See [`ReplicaLog::quiet_mark`].
    quiet_mark: Option<super::compaction::QuietMark>,
}

fn frame(record: &PersistedState) -> Vec<u8> {
    let body = record.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The record framed at `position` of a `raft-state` file, if a whole, CRC-valid one
/// starts there, with its framed size.
fn read_state_record(
    file: &dyn StorageFile,
    position: u64,
) -> io::Result<Option<(PersistedState, u64)>> {
    let len = file.len();
    if position + 8 > len {
        return Ok(None);
    }
    let mut head = [0u8; 8];
    read_exact_at(file, position, &mut head)?;
    let size = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let crc = u32::from_be_bytes(head[4..].try_into().unwrap());
    // Zeroed bytes (a torn or lost page) frame an empty record whose CRC32C is 0: a
    // record is never empty, so that is no record.
    if size == 0 || size > STATE_RECORD_MAX_BYTES || position + 8 + size as u64 > len {
        return Ok(None);
    }
    let mut body = vec![0u8; size];
    read_exact_at(file, position + 8, &mut body)?;
    if crc32c::crc32c(&body) != crc {
        return Ok(None);
    }
    Ok(match PersistedState::decode(body.as_slice()) {
        Ok(state) if state.first_index >= 1 => Some((state, 8 + size as u64)),
        _ => None,
    })
}

/// What a `raft-state` file holds: its last valid record, where the valid records end,
/// and whether damage was found before a later valid record.
struct StateFileScan {
    last: Option<PersistedState>,
    valid_len: u64,
    damaged: bool,
}

/// Reads a `raft-state` file. Records follow each other; the valid one with the highest
/// `sequence` wins (the last one by position among equals: older records all say 0). A bad
/// record at the end is a torn write (never synced). A bad record with valid ones after it
/// is damage to synced data (a misdirected write, a bit flip): reading on from the next
/// valid frame keeps the later records, whose vote would otherwise be forgotten (a
/// replica that forgets its vote can vote twice in one term; found by the simulator).
fn read_last_state(file: &dyn StorageFile) -> io::Result<StateFileScan> {
    let len = file.len();
    let mut scan = StateFileScan {
        last: None,
        valid_len: 0,
        damaged: false,
    };
    let mut position = 0u64;
    while position + 8 <= len {
        if let Some((state, size)) = read_state_record(file, position)? {
            if scan
                .last
                .as_ref()
                .is_none_or(|last| state.sequence >= last.sequence)
            {
                scan.last = Some(state);
            }
            position += size;
            scan.valid_len = position;
            continue;
        }
        // Resynchronise: the next position where a valid record starts, if any.
        let mut next = position + 1;
        let mut found = false;
        while next + 8 <= len {
            if read_state_record(file, next)?.is_some() {
                found = true;
                break;
            }
            next += 1;
        }
        if !found {
            break;
        }
        scan.damaged = true;
        position = next;
    }
    Ok(scan)
}

/// Keeps the first `keep` entries of a log being opened and cuts the partition log
/// after them, durably.
fn cut_entries(
    log: &mut PartitionLog,
    entries: &mut VecDeque<EntryPosition>,
    keep: usize,
    first_offset: i64,
) -> io::Result<()> {
    if keep == 0 {
        let producer_state = log.producer_snapshot_at(first_offset);
        log.reset_to(first_offset, producer_state)?;
    } else {
        log.truncate_to(entries[keep - 1].next_offset)?;
    }
    entries.truncate(keep);
    Ok(())
}

/// How many entries from the log start have terms that can be trusted, if not all.
///
/// In a Raft log the first entry of every term is the no-op its leader appended (logs
/// agree on prefixes), stored as a LEADER_CHANGE control batch whose value names the term
/// inside the CRC. So terms never go down, a term only starts at such a batch, and the
/// batch names the same term as its header. Only the entries before the log's first
/// no-op (its start may cut a term) are not anchored; a damaged one still breaks the
/// rules at the next entry, and the whole run up to it is then dropped.
fn first_untrusted_term(
    log: &PartitionLog,
    entries: &VecDeque<EntryPosition>,
    controls: &[bool],
) -> io::Result<Option<usize>> {
    let mut anchored = false;
    for (i, entry) in entries.iter().enumerate() {
        let leader_change = if controls[i] {
            let stored = match log.read_batch(entry.base_offset) {
                Ok(stored) => stored,
                Err(ReadError::Io(e)) => return Err(e),
                Err(_) => return Ok(Some(i)),
            };
            match stored_leader_change(&stored) {
                Ok(kind) => kind,
                Err(_) => return Ok(Some(i)),
            }
        } else {
            None
        };
        if let Some(Some(named)) = leader_change {
            if named != entry.term {
                return Ok(Some(i));
            }
        }
        if let Some(previous) = i.checked_sub(1).map(|p| entries[p].term) {
            if entry.term < previous || (entry.term > previous && leader_change.is_none()) {
                // Before the first no-op the damaged entry may be the one before.
                return Ok(Some(if anchored { i } else { 0 }));
            }
        }
        anchored |= leader_change.is_some();
    }
    Ok(None)
}

impl ReplicaLog {
    /// Opens (or creates) the replica in `dir`. A new replica starts with `initial_voters`
    /// as its configuration; an existing one recovers its log, then rebuilds the Raft index
    /// from the batches and its hard state from `raft-state`.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        recovery_point: i64,
        initial_voters: &[u64],
    ) -> io::Result<ReplicaLog> {
        let (log, _report) = PartitionLog::open(storage.clone(), dir, config, recovery_point)?;
        let state_path = dir.join(STATE_FILE);
        let mut state_file = storage.open(&state_path, true)?;
        let StateFileScan {
            last: persisted,
            valid_len,
            damaged,
        } = read_last_state(state_file.as_ref())?;
        if damaged {
            // Rewrite the file with only its winning record, before anything is
            // appended: the damaged bytes would otherwise stay in the middle of it.
            tracing::warn!(dir = %dir.display(),
                "raft-state was damaged before its last records: rewriting it with the newest valid one");
            if let Some(last) = &persisted {
                write_atomic(storage.as_ref(), &state_path, &frame(last))?;
                state_file = storage.open(&state_path, false)?;
            }
        } else if state_file.len() > valid_len {
            // A torn record at the end (a crash during its write). Records appended after
            // it would never be read again (reading stops at the torn one): a vote given
            // later would be forgotten at the next start, and the replica could vote twice
            // in one term (found by a 20,000-seed simulation run). Cut it off, durably,
            // before anything is appended.
            tracing::warn!(dir = %dir.display(), valid_len, len = state_file.len(),
                "cutting a torn record off the end of raft-state");
            state_file.truncate(valid_len)?;
            state_file.sync()?;
        }
        let fresh = persisted.is_none();
        let persisted = persisted.unwrap_or_else(|| PersistedState {
            first_index: 1,
            voters: initial_voters.to_vec(),
            ..Default::default()
        });
        let mut entries = VecDeque::new();
        let mut controls: Vec<bool> = Vec::new();
        for header in log
            .batch_headers()?
            .into_iter()
            .filter(|h| h.base_offset >= persisted.first_offset)
        {
            // A negative epoch (a flipped sign bit) is damage like any other bad term:
            // the check below cuts the log there.
            let term = u64::try_from(header.partition_leader_epoch).unwrap_or(u64::MAX);
            entries.push_back(EntryPosition {
                base_offset: header.base_offset,
                next_offset: header.next_offset(),
                term,
            });
            controls.push(header.is_control());
        }
        // Entry i is the i-th batch from the log start, so the batches must follow each
        // other from `first_offset` on. A log whose beginning is gone (damage cut its first
        // segment, a later one survived) would otherwise shift every index: keep only the
        // contiguous run from `first_offset`, durably, and let the lost commit below
        // have the rest replicated again.
        let mut log = log;
        let mut expected = persisted.first_offset;
        let contiguous = entries
            .iter()
            .take_while(|entry| {
                // A batch takes at least one offset: a damaged lastOffsetDelta (headers
                // are read here without their CRC) can make its end negative, and the
                // cut below would then truncate to it (seed 1788: `offset >= 0` failed).
                let next = entry.base_offset == expected && entry.next_offset > entry.base_offset;
                expected = entry.next_offset;
                next
            })
            .count();
        if contiguous < entries.len() {
            tracing::warn!(dir = %dir.display(), first_offset = persisted.first_offset,
                found = entries[contiguous].base_offset,
                "the log has a gap where batches were lost: cutting it there");
            cut_entries(&mut log, &mut entries, contiguous, persisted.first_offset)?;
        }
        // The terms come from the batches' leader epochs, which no CRC covers: a flipped
        // bit there would change an entry's term and make this replica disagree with the
        // others about entries it calls committed. Cut the log where they stop making sense.
        if let Some(keep) = first_untrusted_term(&log, &entries, &controls)? {
            tracing::warn!(dir = %dir.display(), index = persisted.first_index + keep as u64,
                "a batch's leader epoch does not fit the log's terms (damage outside the CRC): cutting the log there");
            cut_entries(&mut log, &mut entries, keep, persisted.first_offset)?;
        }
        // Positions come from batch headers, read without their CRC (a segment below the
        // recovery point is trusted up to its last index entry). The last entry kept is
        // the one no later batch confirms, so its CRC is checked, and it is cut while it
        // fails (found by the simulator, seeds 43067 and 46947: such an entry's end, far
        // past the log, became the replica's high watermark).
        let mut keep = entries.len();
        while keep > 0 {
            let entry = &entries[keep - 1];
            let intact = match log.read_batch(entry.base_offset) {
                Ok(stored) => crate::log::batch::parse_whole(&stored).is_ok_and(|h| {
                    h.base_offset == entry.base_offset && h.next_offset() == entry.next_offset
                }),
                Err(ReadError::Io(e)) => return Err(e),
                Err(_) => false,
            };
            if intact {
                break;
            }
            keep -= 1;
        }
        if keep < entries.len() {
            tracing::warn!(dir = %dir.display(), index = persisted.first_index + keep as u64,
                "the log's last batch is corrupt: cutting the log there");
            cut_entries(&mut log, &mut entries, keep, persisted.first_offset)?;
        }
        // The log must end where its last entry does: a segment whose batches were lost
        // (an empty one after a gap) would otherwise make the next entry land past a
        // hole, at offsets no other replica gives it (found by the simulator, seed 45046:
        // the replica's offsets ran 61 ahead of its leader's).
        let entries_end = entries
            .back()
            .map_or(persisted.first_offset, |e| e.next_offset);
        if log.log_end_offset() != entries_end {
            tracing::warn!(dir = %dir.display(), entries_end, log_end = log.log_end_offset(),
                "the log goes on past its last batch: cutting it there");
            let keep = entries.len();
            cut_entries(&mut log, &mut entries, keep, persisted.first_offset)?;
        }
        let mut hard_state = HardState::default();
        hard_state.term = persisted.term;
        hard_state.vote = persisted.vote;
        let last_index = persisted.first_index + entries.len() as u64 - 1;
        // The commit index is persisted with the entries it covers: a log that ends below
        // it lost fsynced entries (damage cut it), so its votes no longer stand for what
        // it acknowledged until it holds them again.
        let lost_commit = (persisted.commit > last_index).then_some(persisted.commit);
        // Votes must stand for everything it acknowledged: the entries durable before the
        // last state record was written (with the last one's term, so that it can still
        // vote for a candidate that holds them all), and, once damage is certain (the log
        // ends below those), the entries written but not yet fsynced when the record was
        // written too: a record written before its round's fsync (every round's record,
        // in older builds) does not name them, yet they may have been acknowledged (found
        // by the simulator, seed 44414: a barrier three entries short let the replica
        // elect a leader without a committed batch). A record from before either was
        // known gives its commit index, term unknown.
        let durable = (persisted.log_end_term > 0).then_some(VoteBarrier {
            index: persisted.log_end_index,
            term: persisted.log_end_term,
        });
        let written = (persisted.written_end_term > 0).then_some(VoteBarrier {
            index: persisted.written_end_index,
            term: persisted.written_end_term,
        });
        // Only a log that ends below its durable end is certainly damaged: an older
        // build wrote the commit index in the same round as the entries it covers, before
        // their fsync, and a crash may keep that record and lose them (found by the
        // simulator, seed 60566: a replica took such a crash for damage and its barrier
        // asked for entries that no replica held any more).
        let damaged = persisted.log_end_index > last_index;
        let lost_barrier = match (durable, written) {
            (None, None) => lost_commit.map(|index| VoteBarrier { index, term: 0 }),
            _ if !damaged => None,
            (Some(d), Some(w)) => Some(d.raise(w)),
            (Some(b), None) | (None, Some(b)) => Some(b),
        };
        if let Some(barrier) = lost_barrier {
            tracing::warn!(dir = %dir.display(), commit = persisted.commit, last_index,
                held_index = barrier.index, held_term = barrier.term,
                "the log lost entries it had acknowledged: votes only for candidates that hold them, until it is caught up again");
        }
        hard_state.commit = persisted.commit.min(last_index);
        // A replica's term is never below its log's last term. The state record of the
        // round that brought an entry of a new term (a follower's term change, no vote:
        // a vote is synced before it is sent) can be lost to a crash that kept the entry
        // (the round's files are fsynced one by one); raft-rs then answers a pre-vote
        // from term 0 and panics (found by the simulator, seed 67646). The term comes
        // back from the log, with no vote.
        let log_term = entries.back().map_or(persisted.snapshot_term, |e| e.term);
        if hard_state.term < log_term {
            tracing::warn!(dir = %dir.display(), term = hard_state.term, log_term,
                "raft-state is behind the log's last term (its record was lost): taking the log's term");
            hard_state.term = log_term;
            hard_state.vote = 0;
        }
        let mut conf_state = ConfState::default();
        conf_state.voters = persisted.voters.clone();
        conf_state.learners = persisted.learners.clone();
        let mut replica = ReplicaLog {
            log,
            storage,
            state_path,
            state_file,
            first_index: persisted.first_index,
            snapshot_term: persisted.snapshot_term,
            entries,
            hard_state,
            conf_state,
            corruption_logged: Default::default(),
            corrupt_index: Default::default(),
            read_error: Default::default(),
            lost_commit,
            lost_barrier,
            unproven: fresh || persisted.unproven,
            vote_barrier: (persisted.vote_barrier > 0).then_some(VoteBarrier {
                index: persisted.vote_barrier,
                term: persisted.vote_barrier_term,
            }),
            written_vote: (persisted.term, persisted.vote),
            state_sequence: persisted.sequence,
            written_promise: (
                persisted.term,
                persisted.vote,
                persisted.vote_barrier,
                persisted.unproven,
            ),
            // What a log reads back after a restart is what its disk holds.
            synced_end: (0, 0),
            pending_synced: (0, 0),
            clean_commands: BTreeMap::new(),
            last_clean: None,
            quiet_mark: None,
        };
        replica.synced_end = (replica.last_index(), replica.last_term());
        if fresh {
            // Durable before anything else happens: the file and its directory entry.
            replica.write_state()?;
            replica.state_file.sync()?;
            replica.storage.sync_dir(dir)?;
        }
        if let Some(lost) = replica.lost_barrier {
            let barrier = replica.vote_barrier.map_or(lost, |b| b.raise(lost));
            replica.persist_vote_barrier(barrier)?;
        }
        // A crash between persisting a new log start and deleting the segments below it.
        replica.log.delete_segments_below(persisted.first_offset)?;
        // Clean commands after the last one applied to the end (`CLEANER_CHECKPOINT_FILE`)
        // are applied again once committed: a crash may have stopped one halfway, or
        // come before a committed one was applied at all.
        let applied = read_cleaner_checkpoint(replica.storage.as_ref(), dir);
        controls.truncate(replica.entries.len());
        for (i, _) in controls.iter().enumerate().filter(|(_, c)| **c) {
            let base_offset = replica.entries[i].base_offset;
            if applied.is_some_and(|a| base_offset <= a) {
                continue;
            }
            let Ok(stored) = replica.log.read_batch(base_offset) else {
                continue;
            };
            if let Some(command) = stored_clean_command(&stored) {
                replica.clean_commands.insert(base_offset, command);
            }
        }
        replica.check_invariants();
        Ok(replica)
    }

    fn check_invariants(&self) {
        assert!(self.first_index >= 1);
        assert!(self.hard_state.commit <= self.last_index());
        debug_assert!(self
            .entries
            .iter()
            .zip(self.entries.iter().skip(1))
            .all(|(a, b)| a.next_offset == b.base_offset && a.term <= b.term));
    }

    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// Forgets ended transactions whose markers are committed (below `high_watermark`).
    pub fn prune_replicated_txns(&mut self, high_watermark: i64) {
        self.log.prune_replicated_txns(high_watermark);
    }

    /// Records that the entry at `index` failed its CRC check (the driver repairs it).
    pub fn mark_corrupt(&self, index: u64) {
        use std::sync::atomic::Ordering;
        let _ = self
            .corrupt_index
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current == 0 || index < current).then_some(index)
            });
    }

    /// Records that a read at `offset` (a consumer's fetch) met a corrupt batch at or
    /// after it: the entry holding `offset` is where a repair starts (a few healthy
    /// entries before the corrupt one may go too; they are replicated again).
    pub fn mark_corrupt_from_offset(&self, offset: i64) {
        let k = self
            .entries
            .partition_point(|e| e.next_offset <= offset)
            .min(self.entries.len().saturating_sub(1));
        if !self.entries.is_empty() {
            self.mark_corrupt(self.first_index + k as u64);
        }
    }

    /// Repair of a corrupt entry: drops it and every entry after it (fsynced), lowering
    /// the commit index below it. The replica then holds less than it acknowledged,
    /// as after a lost disk; its group rejoins as a follower and the leader sends the
    /// dropped entries again (`driver::survive_lost_log`). Raft's "committed entries
    /// never change" holds for the group: a quorum of other replicas still holds them.
    pub fn truncate_for_repair(&mut self, from_index: u64, barrier: VoteBarrier) -> io::Result<()> {
        // Durable before the entries go: a crash in between must not forget the loss.
        self.persist_vote_barrier(self.vote_barrier.map_or(barrier, |b| b.raise(barrier)))?;
        use std::sync::atomic::Ordering;
        assert!(
            from_index >= self.first_index && from_index <= self.last_index(),
            "repair inside the log"
        );
        let offset = self.entries[(from_index - self.first_index) as usize].base_offset;
        self.log.truncate_to(offset)?;
        // Damage found on the way (before the entry that was marked) cuts the log there.
        let end = self.log.log_end_offset();
        let keep = self
            .entries
            .iter()
            .take_while(|e| e.next_offset <= end)
            .count();
        self.entries.truncate(keep);
        self.clean_commands.split_off(&end);
        self.clamp_synced_end();
        self.hard_state.commit = self.hard_state.commit.min(self.last_index());
        self.write_state()?;
        self.state_file.sync()?;
        self.corrupt_index.store(0, Ordering::Release);
        self.corruption_logged.store(false, Ordering::Relaxed);
        self.check_invariants();
        Ok(())
    }

    /// Drops a committed entry found corrupt while the replica starts (and everything
    /// after it), to be replicated again from a peer. Where the log ended is remembered,
    /// durably, as the vote barrier: until it holds that again the replica votes only for
    /// candidates that hold it all.
    pub fn cut_at_damage(&mut self, index: u64) -> io::Result<()> {
        let commit = self.hard_state.commit;
        let held = VoteBarrier {
            index: self.last_index(),
            term: self.last_term(),
        };
        let barrier = self.lost_barrier.map_or(held, |b| b.raise(held));
        // Persists the barrier (raised with any earlier one) before the entries go.
        self.truncate_for_repair(index, barrier)?;
        self.lost_commit = Some(self.lost_commit.unwrap_or(0).max(commit));
        self.lost_barrier = Some(barrier);
        Ok(())
    }

    /// The term of the last entry (the snapshot's with no entries).
    fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// Where the log ended before it lost acknowledged entries, if it did (see `open`).
    pub fn lost_barrier(&self) -> Option<VoteBarrier> {
        self.lost_barrier
    }

    /// Applies a topic config change (segment size, retention, ...) to the log.
    pub fn set_log_config(&mut self, config: crate::log::LogConfig) {
        self.log.set_config(config);
    }

    /// Clean shutdown: fsyncs the log and its indexes.
    pub fn close(&mut self) -> io::Result<()> {
        self.log.close()
    }

    pub fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Where entry `index` sits in the partition log.
    pub fn position(&self, index: u64) -> Option<EntryPosition> {
        index
            .checked_sub(self.first_index)
            .and_then(|k| self.entries.get(k as usize))
            .copied()
    }

    /// The Raft index and term of the entry whose batch starts at `base_offset`.
    pub fn index_of_offset(&self, base_offset: i64) -> Option<(u64, u64)> {
        let k = self
            .entries
            .binary_search_by_key(&base_offset, |e| e.base_offset)
            .ok()?;
        Some((self.first_index + k as u64, self.entries[k].term))
    }

    /// Term of entry `index`, including the one just before the first.
    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index + 1 == self.first_index {
            return Ok(self.snapshot_term);
        }
        if index < self.first_index {
            return Err(StorageError::Compacted);
        }
        self.position(index)
            .map(|p| p.term)
            .ok_or(StorageError::Unavailable)
    }

    /// Persists entries from a `Ready` (not yet synced): entries from an index already in
    /// the log replace it and everything after it.
    pub fn append(&mut self, entries: &[Entry], now_ms: i64) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // Entries come from a leader (this replica, elected, or the one whose append
        // already cleared it): written with this round's state record.
        self.unproven = false;
        assert!(
            first.index >= self.first_index,
            "entry {} is before the log start {}",
            first.index,
            self.first_index
        );
        assert!(
            first.index <= self.last_index() + 1,
            "entry {} leaves a gap after {}",
            first.index,
            self.last_index()
        );
        if first.index <= self.last_index() {
            let keep = (first.index - self.first_index) as usize;
            let cut = self.entries[keep].base_offset;
            self.log.truncate_to(cut)?;
            self.clean_commands.split_off(&cut);
            if self.log.log_end_offset() != cut {
                // Damage below the cut: the log now ends earlier than raft-rs believes.
                // Restarting rebuilds everything from what is on disk.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a damaged batch below offset {cut} cut the log at {}",
                        self.log.log_end_offset()
                    ),
                ));
            }
            self.entries.truncate(keep);
            self.clamp_synced_end();
            // The truncation is durable (`truncate_to` syncs): so is a state record that
            // no longer claims the dropped entries, or a crash before the next one would
            // read their loss as damage.
            self.write_state()?;
            self.state_file.sync()?;
        }
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1);
            let base_offset = self.log.log_end_offset();
            let (header, bytes) = encode_entry(entry, base_offset)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let info =
                self.log
                    .append(&[(header, bytes)], header.partition_leader_epoch, now_ms)?;
            assert_eq!(info.base_offset, base_offset);
            if header.is_control() && entry.get_entry_type() == EntryType::EntryNormal {
                if let Some(command) = stored_clean_command(&entry.data) {
                    self.clean_commands.insert(base_offset, command);
                }
            }
            self.entries.push_back(EntryPosition {
                base_offset,
                next_offset: info.last_offset + 1,
                term: entry.term,
            });
        }
        self.check_invariants();
        Ok(())
    }

    /// Records a new hard state (persisted by the next [`ReplicaLog::write_state`]).
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        assert!(
            hard_state.term >= self.hard_state.term,
            "terms never go back"
        );
        self.hard_state = hard_state;
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// The (term, vote) of the last state record written (durable once the round's
    /// fsync pass is done).
    pub fn written_vote(&self) -> (u64, u64) {
        self.written_vote
    }

    /// Appends the current state to `raft-state` (synced with the next flush).
    pub fn write_state(&mut self) -> io::Result<()> {
        self.written_vote = (self.hard_state.term, self.hard_state.vote);
        let record = PersistedState {
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            commit: self.hard_state.commit,
            first_index: self.first_index,
            snapshot_term: self.snapshot_term,
            voters: self.conf_state.voters.clone(),
            learners: self.conf_state.learners.clone(),
            first_offset: self
                .entries
                .front()
                .map(|e| e.base_offset)
                .unwrap_or_else(|| self.log.log_end_offset()),
            vote_barrier: self.vote_barrier.map_or(0, |b| b.index),
            vote_barrier_term: self.vote_barrier.map_or(0, |b| b.term),
            log_end_index: self.synced_end.0,
            log_end_term: self.synced_end.1,
            unproven: self.unproven,
            sequence: self.state_sequence + 1,
            written_end_index: self.last_index(),
            written_end_term: self.last_term(),
        };
        self.state_sequence = record.sequence;
        let bytes = frame(&record);
        if self.state_file.len() + bytes.len() as u64 > STATE_FILE_COMPACT_BYTES {
            write_atomic(self.storage.as_ref(), &self.state_path, &bytes)?;
            self.state_file = self.storage.open(&self.state_path, false)?;
            return Ok(());
        }
        let promise = (
            record.term,
            record.vote,
            record.vote_barrier,
            record.unproven,
        );
        if promise == self.written_promise {
            return self.state_file.append(&bytes);
        }
        // A record that changes what this replica promised (a vote, a term, a barrier)
        // is read back: a write the disk put somewhere else (a misdirected write) would
        // lose it without a trace, and the replica could vote twice in one term (found by
        // the simulator, seed 30242). Written again at the end until it reads back.
        for _ in 0..STATE_WRITE_ATTEMPTS {
            let at = self.state_file.len();
            self.state_file.append(&bytes)?;
            let mut back = vec![0u8; bytes.len()];
            read_exact_at(self.state_file.as_ref(), at, &mut back)?;
            if back == bytes {
                self.written_promise = promise;
                return Ok(());
            }
            tracing::warn!(path = %self.state_path.display(), position = at,
                "a raft-state record did not read back where it was written: writing it again");
        }
        Err(io::Error::other(format!(
            "{}: a raft-state record did not read back after {STATE_WRITE_ATTEMPTS} writes",
            self.state_path.display()
        )))
    }

    /// OffsetForLeaderEpoch: the largest leader epoch (Raft term) at or below `epoch` that
    /// this log holds, and the offset where the epoch after it starts (the log end for the
    /// current epoch). A client that fetched up to that epoch truncates to the returned
    /// offset. `None` when the log holds no epoch that old (it was deleted by retention).
    pub fn end_offset_for_epoch(&self, epoch: u64) -> Option<(u64, i64)> {
        // Entries are in term order: the first entry of a later term ends `epoch`.
        let later = self.entries.partition_point(|e| e.term <= epoch);
        if later == 0 {
            return None;
        }
        let found_epoch = self.entries[later - 1].term;
        let end = self
            .entries
            .get(later)
            .map(|e| e.base_offset)
            .unwrap_or_else(|| self.log.log_end_offset());
        Some((found_epoch, end))
    }

    /// The snapshot raft-rs sends a follower that needs entries before `first_index`.
    pub fn snapshot(&self) -> Snapshot {
        let next_offset = self
            .entries
            .front()
            .map(|e| e.base_offset)
            .unwrap_or_else(|| self.log.log_end_offset());
        let mut metadata = SnapshotMetadata::default();
        metadata.index = self.first_index - 1;
        metadata.term = self.snapshot_term;
        metadata.set_conf_state(self.conf_state.clone());
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        let producer_state = if next_offset == self.log.log_end_offset() {
            Some(self.log.producer_state().clone())
        } else {
            self.log.producer_snapshot_at(next_offset)
        };
        let data = SnapshotData {
            next_offset,
            producer_state: producer_state.map(|s| s.encode()),
        };
        snapshot.data = data.encode_to_vec().into();
        snapshot
    }

    /// The offset where the log continues after `snapshot`, if its data is what
    /// [`ReplicaLog::snapshot`] writes.
    pub fn snapshot_next_offset(snapshot: &Snapshot) -> Option<i64> {
        SnapshotData::decode(snapshot.data.as_ref())
            .ok()
            .map(|d| d.next_offset)
    }

    /// Installs a leader's snapshot: the log restarts empty at the snapshot's offset and
    /// the Raft log after the snapshot's index. Durable on return.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let metadata = snapshot.get_metadata();
        let data = SnapshotData::decode(snapshot.data.as_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        assert!(
            metadata.index + 1 >= self.first_index,
            "a snapshot never moves the log back"
        );
        let producer_state = data
            .producer_state
            .as_deref()
            .and_then(crate::log::producer_state::ProducerStateMap::decode);
        self.log.reset_to(data.next_offset, producer_state)?;
        self.entries.clear();
        self.clean_commands.clear();
        self.first_index = metadata.index + 1;
        self.snapshot_term = metadata.term;
        self.synced_end = (metadata.index, metadata.term);
        self.pending_synced = self.synced_end;
        self.unproven = false;
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.write_state()?;
        self.state_file.sync()?;
        self.check_invariants();
        Ok(())
    }

    /// Retention for a replicated log: deletes whole segments below the commit point by
    /// `retention.ms`/`retention.bytes`, and moves the start of the Raft log with them.
    /// The new start is made durable before any segment goes, so a crash in between
    /// never shifts Raft indexes. Returns how many entries were dropped.
    pub fn apply_retention(&mut self, now_ms: i64) -> io::Result<usize> {
        let commit_offset = self
            .position(self.hard_state.commit)
            .map(|p| p.next_offset)
            .unwrap_or_else(|| self.log.log_start_offset());
        let new_start = self.log.retention_start_offset(now_ms, commit_offset)?;
        let dropped = self
            .entries
            .iter()
            .take_while(|e| e.base_offset < new_start)
            .count();
        if dropped == 0 {
            return Ok(0);
        }
        assert!(
            self.first_index + dropped as u64 <= self.hard_state.commit + 1,
            "only committed entries are dropped"
        );
        self.snapshot_term = self.entries[dropped - 1].term;
        self.entries.drain(..dropped);
        self.first_index += dropped as u64;
        self.write_state()?;
        self.state_file.sync()?;
        self.log.delete_segments_below(new_start)?;
        self.check_invariants();
        Ok(dropped)
    }

    /// See [`PartitionLog::expire_producers`].
    pub fn expire_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.log.expire_producers(now_ms, expiration_ms)
    }

    /// Offset after the last committed entry.
    pub fn committed_end_offset(&self) -> i64 {
        self.position(self.hard_state.commit)
            .map(|p| p.next_offset)
            .unwrap_or_else(|| self.log.log_start_offset())
    }

    /// The clean commands that are committed and not yet taken, oldest first.
    pub fn take_committed_clean_commands(&mut self) -> Vec<(i64, CleanCommand)> {
        let committed_end = self.committed_end_offset();
        let later = self.clean_commands.split_off(&committed_end);
        let taken = std::mem::replace(&mut self.clean_commands, later);
        taken.into_iter().collect()
    }

    /// Puts taken clean commands back (a clean that stopped at a corrupt batch): they
    /// are taken again by the next pass, once the repair has replaced the damage.
    /// Commands whose entries a repair cut meanwhile come back with those entries.
    pub fn requeue_clean_commands(&mut self, commands: Vec<(i64, CleanCommand)>) {
        let end = self.log.log_end_offset();
        for (offset, command) in commands {
            if offset < end {
                self.clean_commands.insert(offset, command);
            }
        }
    }

    /// Applies the committed clean command stored at `command_offset` to the log (see
    /// `replication::compaction`); once done, the command's offset is written down
    /// (`CLEANER_CHECKPOINT_FILE`) so that a restart applies only later ones again.
    pub fn apply_clean(
        &mut self,
        command_offset: i64,
        command: &CleanCommand,
        max_keys: usize,
    ) -> Result<crate::log::partition_log::CleanReport, crate::log::partition_log::CleanFailure>
    {
        // Only committed entries are cleaned. A command always names a point before its
        // own batch, so this refuses only a command no leader of this code proposes.
        if command.clean_end_offset > self.committed_end_offset() {
            return Err(crate::log::partition_log::CleanFailure::Refused(format!(
                "clean point {} is past the committed end {}",
                command.clean_end_offset,
                self.committed_end_offset()
            )));
        }
        let deleted_keys = command.deleted_key_hashes.iter().copied().collect();
        let report = self.log.clean(
            command.clean_start_offset,
            command.clean_end_offset,
            &deleted_keys,
            command.max_keys(max_keys),
        )?;
        self.last_clean = Some(command.clone());
        write_atomic(
            self.storage.as_ref(),
            &self.log.dir().join(CLEANER_CHECKPOINT_FILE),
            command_offset.to_string().as_bytes(),
        )?;
        Ok(report)
    }

    /// The last clean command applied since the log was opened.
    pub fn last_clean(&self) -> Option<&CleanCommand> {
        self.last_clean.as_ref()
    }

    /// See `replication::compaction::plan_clean`: where the leader last found nothing
    /// to clean.
    pub fn quiet_mark(&self) -> Option<super::compaction::QuietMark> {
        self.quiet_mark
    }

    pub fn set_quiet_mark(&mut self, mark: Option<super::compaction::QuietMark>) {
        self.quiet_mark = mark;
    }

    /// Whether a clean command is in the log, not yet applied.
    pub fn has_pending_clean(&self) -> bool {
        !self.clean_commands.is_empty()
    }

    /// What must be fsynced to make every append so far durable, and the offset it makes
    /// durable (for [`ReplicaLog::flushed`]). State records have their own handle.
    pub fn log_sync_handles(&mut self) -> io::Result<(Vec<Arc<dyn SyncHandle>>, i64)> {
        let ticket = self.log.begin_flush()?;
        self.pending_synced = (self.last_index(), self.last_term());
        Ok((ticket.handles, ticket.up_to_offset))
    }

    /// What must be fsynced to make every state record so far durable.
    pub fn state_sync_handle(&self) -> io::Result<Arc<dyn SyncHandle>> {
        self.state_file.sync_handle()
    }

    /// Records that everything below `up_to_offset` is durable.
    pub fn flushed(&mut self, up_to_offset: i64) {
        self.log.flushed(up_to_offset);
        self.synced_end = self.pending_synced;
        self.clamp_synced_end();
    }

    /// After a truncation: what is durable ends at the log end at most.
    fn clamp_synced_end(&mut self) {
        if self.synced_end.0 > self.last_index() {
            self.synced_end = (self.last_index(), self.last_term());
        }
        if self.pending_synced.0 > self.last_index() {
            self.pending_synced = (self.last_index(), self.last_term());
        }
    }

    /// The batch of an entry, CRC-checked, and checked against what the log knows of the
    /// entry: its offsets and its term. A batch's base offset and leader epoch (the term)
    /// lie outside its CRC, and a flipped bit there would silently change the entry.
    fn read_entry_batch(&self, position: &EntryPosition) -> Result<bytes::Bytes, ReadError> {
        let bytes = self.log.read_batch(position.base_offset)?;
        let matches = crate::log::batch::parse_whole(&bytes).is_ok_and(|h| position.describes(&h));
        if !matches {
            return Err(ReadError::Corrupt {
                segment_base_offset: position.base_offset,
                position: 0,
            });
        }
        Ok(bytes)
    }

    /// Whether the replica started with no Raft state (a new replica, or a disk that
    /// was wiped or replaced) and has not heard from a leader since: its votes cannot
    /// stand for anything it may once have acknowledged. Durable until cleared by the
    /// barrier a leader's append gives it (or a snapshot).
    pub fn unproven(&self) -> bool {
        self.unproven
    }

    /// The vote barrier persisted with the Raft state, if any.
    pub fn vote_barrier(&self) -> Option<VoteBarrier> {
        self.vote_barrier
    }

    /// Sets the vote barrier and makes it durable at once (a replica that crashes right
    /// after learning it must still honour it).
    pub fn persist_vote_barrier(&mut self, barrier: VoteBarrier) -> io::Result<()> {
        self.unproven = false;
        self.vote_barrier = Some(barrier);
        self.write_state()?;
        self.state_file.sync()
    }

    /// Drops the vote barrier; written with the next state record (a barrier left on
    /// disk a little longer only delays votes).
    pub fn clear_vote_barrier(&mut self) {
        self.vote_barrier = None;
    }

    /// The commit index the log held before it lost entries (see `open`), if it did.
    pub fn lost_commit(&self) -> Option<u64> {
        self.lost_commit
    }

    /// The scrubber's read: re-reads the batches of entries `from_index..=up_to` (about
    /// `budget_bytes` of them), CRC-checked and checked against the offsets and term the
    /// log knows for each. Returns the next index to verify and the bytes read; a bad
    /// batch is marked for repair and reported with its index.
    pub fn verify_entries(
        &self,
        from_index: u64,
        up_to: u64,
        budget_bytes: u64,
    ) -> Result<(u64, u64), VerifyError> {
        let mut index = from_index;
        let mut read = 0u64;
        let corrupt = |index| {
            self.mark_corrupt(index);
            VerifyError::Corrupt(index)
        };
        while index <= up_to.min(self.last_index()) && read < budget_bytes {
            let Some(first) = self.position(index) else {
                break;
            };
            let end = self
                .position(up_to.min(self.last_index()))
                .map(|p| p.next_offset)
                .unwrap_or(first.next_offset);
            let want = (budget_bytes - read).min(usize::MAX as u64) as usize;
            let bytes = match self.log.read(first.base_offset, want, end, true) {
                Ok(bytes) if bytes.is_empty() => return Err(corrupt(index)),
                Ok(bytes) => bytes,
                Err(ReadError::Corrupt { .. }) => return Err(corrupt(index)),
                // Gone meanwhile (retention): nothing left to verify here.
                Err(ReadError::OffsetOutOfRange { .. }) => break,
                Err(ReadError::Io(e)) => return Err(VerifyError::Io(e)),
            };
            let mut at = 0usize;
            while at < bytes.len() {
                let Some(position) = self.position(index) else {
                    break;
                };
                let size = match crate::log::batch::parse_whole(&bytes[at..]) {
                    Ok(h) if position.describes(&h) => h.size_bytes(),
                    _ => return Err(corrupt(index)),
                };
                at += size;
                read += size as u64;
                index += 1;
            }
        }
        Ok((index, read))
    }

    /// Reads entries `[low, high)`, at least one, at most about `max_size_bytes`.
    pub fn entries(
        &self,
        low: u64,
        high: u64,
        max_size_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first_index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let position = self.position(index).ok_or(StorageError::Unavailable)?;
            let stored = match self.read_entry_batch(&position) {
                Ok(bytes) => bytes,
                // raft-rs treats Unavailable as fatal when it reads entries to send; a
                // batch that rotted on disk must not stop the broker. "Temporarily
                // unavailable" makes raft-rs skip sending it (the follower waits; see
                // ARCHITECTURE.md for the repair still to come).
                Err(ReadError::Corrupt {
                    segment_base_offset,
                    position,
                }) => {
                    use std::sync::atomic::Ordering;
                    if !self.corruption_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(index, segment_base_offset, position,
                            "corrupt batch in a replica log (CRC32C mismatch): not sent; the replica repairs from a peer");
                    }
                    self.mark_corrupt(index);
                    return Err(StorageError::LogTemporarilyUnavailable);
                }
                Err(ReadError::OffsetOutOfRange { .. }) => return Err(StorageError::Unavailable),
                Err(ReadError::Io(e)) => {
                    // raft-rs panics on any other error while it reads entries to send;
                    // "temporarily unavailable" makes it skip the send, and the driver's
                    // next round fails on the recorded error (the broker restarts).
                    *self.read_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("reading entry {index}: {e}"));
                    return Err(StorageError::LogTemporarilyUnavailable);
                }
            };
            size += stored.len() as u64;
            if !out.is_empty() && max_size_bytes.map(|m| size > m).unwrap_or(false) {
                break;
            }
            // The batch was CRC-checked when read; decoding checks it again. A batch that
            // fails here is damage all the same: marked for repair, never a panic.
            match decode_entry(&stored, index) {
                Ok(entry) => out.push(entry),
                Err(e) => {
                    use std::sync::atomic::Ordering;
                    if !self.corruption_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(index, error = %e,
                            "a replica log batch does not decode as its entry: not sent; the replica repairs from a peer");
                    }
                    self.mark_corrupt(index);
                    return Err(StorageError::LogTemporarilyUnavailable);
                }
            }
        }
        Ok(out)
    }
}

/// Why [`ReplicaLog::verify_entry`] failed.
#[derive(Debug)]
pub enum VerifyError {
    /// The entry whose batch is bad (marked for repair).
    Corrupt(u64),
    Io(io::Error),
}

/// The replica log shared between raft-rs and the driver.
#[derive(Clone)]
pub struct ReplicaStorage {
    inner: Arc<Mutex<ReplicaLog>>,
    corrupt_index: Arc<std::sync::atomic::AtomicU64>,
    read_error: Arc<Mutex<Option<String>>>,
}

impl ReplicaStorage {
    pub fn new(log: ReplicaLog) -> ReplicaStorage {
        ReplicaStorage {
            corrupt_index: log.corrupt_index.clone(),
            read_error: log.read_error.clone(),
            inner: Arc::new(Mutex::new(log)),
        }
    }

    /// The lowest Raft index a read found corrupt since the last repair.
    pub fn corrupt_index(&self) -> Option<u64> {
        match self
            .corrupt_index
            .load(std::sync::atomic::Ordering::Acquire)
        {
            0 => None,
            index => Some(index),
        }
    }

    /// Takes the I/O error a read for raft-rs last hit, if any.
    pub fn take_read_error(&self) -> Option<String> {
        self.read_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Locks the replica log. Never hold this across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, ReplicaLog> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl raft::Storage for ReplicaStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = self.lock();
        Ok(RaftState::new(
            log.hard_state.clone(),
            log.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.lock()
            .entries(low, high, max_size.into())
            .map_err(raft::Error::Store)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.lock().term(idx).map_err(raft::Error::Store)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().last_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.lock().snapshot())
    }
}
