//! Raft entries stored in partition logs: the codec, the replica log, and three replicas
//! of one partition driven in-process (messages passed by the test), checking that every
//! replica ends with byte-identical batches at identical offsets through elections,
//! crashes with power loss, and a leader isolated with uncommitted entries.

use super::entry_codec::*;
use super::replica_log::*;
use crate::client::encode_batch;
use crate::log::LogConfig;
use crate::storage::MemoryStorage;
use bytes::Bytes;
use kafka_protocol::records::Compression;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole, Storage as _};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

mod compaction;

fn batch(tag: &str, records: usize) -> Bytes {
    let values: Vec<_> = (0..records)
        .map(|i| (None, Some(Bytes::from(format!("{tag}-{i}")))))
        .collect();
    encode_batch(&values, 1_000, Compression::None).unwrap()
}

fn entry(index: u64, term: u64, data: Bytes) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data;
    e
}

#[test]
fn entries_roundtrip_through_batches() {
    let data = entry(7, 3, batch("a", 4));
    let (header, stored) = encode_entry(&data, 100).unwrap();
    assert_eq!(
        (
            header.base_offset,
            header.partition_leader_epoch,
            header.records_count
        ),
        (100, 3, 4)
    );
    let back = decode_entry(&stored, 7).unwrap();
    assert_eq!(
        (back.index, back.term, back.get_entry_type()),
        (7, 3, EntryType::EntryNormal)
    );
    assert_eq!(crate::client::decode_records(&back.data).unwrap().len(), 4);

    let noop = entry(8, 4, Bytes::new());
    let (header, stored) = encode_entry(&noop, 104).unwrap();
    assert!(header.is_control());
    assert_eq!(header.next_offset(), 105);
    let back = decode_entry(&stored, 8).unwrap();
    assert!(
        back.data.is_empty() && back.get_entry_type() == EntryType::EntryNormal && back.term == 4
    );

    let mut change = entry(9, 4, Bytes::from_static(b"\x08\x01"));
    change.set_entry_type(EntryType::EntryConfChangeV2);
    let (_, stored) = encode_entry(&change, 105).unwrap();
    let back = decode_entry(&stored, 9).unwrap();
    assert_eq!(
        (back.get_entry_type(), back.data.as_ref()),
        (EntryType::EntryConfChangeV2, &b"\x08\x01"[..])
    );

    // A corrupt batch is refused before it can be persisted.
    let mut bad = batch("x", 2).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(encode_entry(&entry(10, 4, Bytes::from(bad)), 106).is_err());
}

fn open_replica(storage: &MemoryStorage, recovery_point: i64) -> ReplicaLog {
    ReplicaLog::open(
        Arc::new(storage.clone()),
        Path::new("/data/t-0"),
        LogConfig {
            segment_bytes: 300,
            ..LogConfig::default()
        },
        recovery_point,
        &[1, 2, 3],
    )
    .unwrap()
}

/// Votes for `vote` in `term`, durably, and closes the replica.
fn persist_vote(replica: ReplicaLog, term: u64, vote: u64) {
    persist_votes(replica, &[(term, vote)]);
}

/// The (term, vote) of the replica reopened from `storage`.
fn reopened_vote(storage: &MemoryStorage) -> (u64, u64) {
    let replica = open_replica(storage, 0);
    (replica.hard_state().term, replica.hard_state().vote)
}

/// Persists each (term, vote) in turn, each record synced.
fn persist_votes(mut replica: ReplicaLog, votes: &[(u64, u64)]) {
    for &(term, vote) in votes {
        let mut hs = replica.hard_state().clone();
        hs.term = term;
        hs.vote = vote;
        replica.set_hard_state(hs);
        replica.write_state().unwrap();
        sync(&mut replica);
    }
}

fn sync(replica: &mut ReplicaLog) {
    let (handles, up_to) = replica.log_sync_handles().unwrap();
    handles.iter().for_each(|h| h.sync().unwrap());
    replica.flushed(up_to);
    replica.state_sync_handle().unwrap().sync().unwrap();
}

/// A vote must survive a torn record before it (found by a 20,000-seed simulation run:
/// records appended after a torn one were never read again, so a replica forgot its
/// vote at the next start and voted twice in one term; two leaders in one term).
#[test]
fn a_vote_written_after_a_torn_state_record_survives_a_restart() {
    let storage = MemoryStorage::new();
    let mut replica = open_replica(&storage, 0);
    let mut hs = raft::eraftpb::HardState::default();
    hs.term = 3;
    hs.vote = 2;
    replica.set_hard_state(hs);
    replica.write_state().unwrap();
    sync(&mut replica);
    drop(replica);
    // A power loss in the middle of the next record: its header and part of its body.
    let path = Path::new("/data/t-0").join(crate::replication::replica_log::STATE_FILE);
    let mut file = crate::storage::Storage::open(&storage, &path, false).unwrap();
    file.append(&[0, 0, 0, 40, 1, 2, 3, 4, 5, 6]).unwrap();
    file.sync().unwrap();
    drop(file);
    let replica = open_replica(&storage, 0);
    assert_eq!(
        (replica.hard_state().term, replica.hard_state().vote),
        (3, 2)
    );
    persist_vote(replica, 4, 1);
    assert_eq!(
        reopened_vote(&storage),
        (4, 1),
        "the vote of term 4 was forgotten"
    );
}

/// Damage in the middle of raft-state (a misdirected write, a bit flip) must not hide
/// the records after it: reading stopped at the first bad record, so a replica forgot
/// the vote it gave later, voted again in the same term and a second leader was elected
/// in that term (found by the simulator with --faults all, seed 13143).
#[test]
fn a_vote_written_after_a_damaged_state_record_survives_a_restart() {
    let storage = MemoryStorage::new();
    persist_votes(open_replica(&storage, 0), &[(2, 3), (3, 2), (4, 1)]);
    // Rot a byte inside the second record (the first is the fresh replica's own).
    let path = Path::new("/data/t-0").join(crate::replication::replica_log::STATE_FILE);
    let data = crate::storage::read_to_vec(&storage, &path).unwrap();
    let first = 8 + u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
    assert!(storage.corrupt(&path, first + 10, &[data[first + 10] ^ 0x40]));
    let replica = open_replica(&storage, 0);
    assert_eq!(
        (replica.hard_state().term, replica.hard_state().vote),
        (4, 1),
        "the vote of term 4 was forgotten"
    );
    // The file was rewritten without the damage: later records are read back too.
    persist_vote(replica, 5, 3);
    let replica = open_replica(&storage, 0);
    assert_eq!(
        (replica.hard_state().term, replica.hard_state().vote),
        (5, 3)
    );
}

/// A misdirected write puts a record at an earlier place of raft-state and leaves its own
/// place zero: the newest record (its `sequence`), not the last one by position, is the
/// replica's state, or a vote given just before a crash is forgotten and the replica can
/// vote twice in one term (found by the simulator, seed 30242).
#[test]
fn the_newest_state_record_wins_wherever_it_lies() {
    let storage = MemoryStorage::new();
    persist_votes(open_replica(&storage, 0), &[(2, 3), (3, 2), (4, 1)]);
    let path = Path::new("/data/t-0").join(crate::replication::replica_log::STATE_FILE);
    let data = crate::storage::read_to_vec(&storage, &path).unwrap();
    let mut starts = vec![0usize];
    while *starts.last().unwrap() < data.len() {
        let at = *starts.last().unwrap();
        starts.push(at + 8 + u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize);
    }
    starts.pop();
    let (second, last) = (starts[1], *starts.last().unwrap());
    let newest = data[last..].to_vec();
    // The newest record lands over the second one; its own place is zero.
    assert!(storage.corrupt(&path, second, &newest));
    assert!(storage.corrupt(&path, last, &vec![0u8; newest.len()]));
    assert_eq!(
        reopened_vote(&storage),
        (4, 1),
        "the vote of term 4 was forgotten"
    );
}

/// A vote whose record the disk writes somewhere else is never taken as written: the
/// record is read back and written again, and a disk that keeps misdirecting it fails the
/// write (the broker restarts) instead of letting the vote out.
#[test]
fn a_misdirected_vote_record_is_written_again_or_fails() {
    use crate::storage::DiskFaults;
    let storage = MemoryStorage::new();
    let replica = open_replica(&storage, 0);
    persist_vote(replica, 2, 3);
    let mut replica = open_replica(&storage, 0);
    storage.set_faults(
        DiskFaults {
            misdirect: 1.0,
            ..Default::default()
        },
        7,
    );
    let mut hs = replica.hard_state().clone();
    hs.term = 3;
    hs.vote = 2;
    replica.set_hard_state(hs);
    assert!(
        replica.write_state().is_err(),
        "a vote that never reads back was taken as written"
    );
    // Half the writes misdirected: a vote that was written (and synced) is the one read
    // at the next start.
    storage.set_faults(
        DiskFaults {
            misdirect: 0.5,
            ..Default::default()
        },
        11,
    );
    let mut written = 0;
    for (term, vote) in [(4, 1), (5, 2), (6, 3), (7, 1), (8, 2), (9, 3)] {
        let mut hs = replica.hard_state().clone();
        hs.term = term;
        hs.vote = vote;
        replica.set_hard_state(hs);
        if replica.write_state().is_err() {
            continue;
        }
        written += 1;
        sync(&mut replica);
        drop(replica);
        replica = open_replica(&storage, 0);
        assert_eq!(
            (replica.hard_state().term, replica.hard_state().vote),
            (term, vote),
            "a vote written and synced was forgotten"
        );
    }
    assert!(written > 0, "no vote got through: the test checks nothing");
    assert!(
        storage.fault_counts().misdirected > 0,
        "no write was misdirected: the test checks nothing"
    );
}

/// A vote barrier admits exactly the candidates at least as up to date as the log the
/// replica held (Raft's order: last term, then last index); with the term unknown it
/// admits nobody.
#[test]
fn a_vote_barrier_admits_candidates_that_hold_what_was_held() {
    use crate::replication::VoteBarrier;
    let held = VoteBarrier { index: 7, term: 3 };
    assert!(held.admits(7, 3));
    assert!(held.admits(9, 3));
    assert!(
        held.admits(2, 4),
        "a later last term holds everything before it"
    );
    assert!(!held.admits(6, 3));
    assert!(!held.admits(20, 2));
    assert!(!VoteBarrier { index: 7, term: 0 }.admits(100, 100));
    // The stricter of two: the later index; at one index, the known term.
    let unknown = VoteBarrier { index: 7, term: 0 };
    assert_eq!(unknown.raise(held), held);
    assert_eq!(held.raise(unknown), held);
    assert_eq!(held.raise(VoteBarrier { index: 9, term: 0 }).index, 9);
}

/// A replica that lost synced entries remembers where its log ended before (index and
/// term, from the last state record), so it can still vote for a candidate that holds
/// them all; entries of a round whose fsync never completed are not counted as lost.
#[test]
fn a_log_that_lost_synced_entries_knows_where_it_ended() {
    let storage = MemoryStorage::new();
    two_term_log(&storage); // entries 1..=8, terms 1 and 2, synced
    {
        // One more state record, after that sync: it names entry 8 (term 2) as durable.
        let mut replica = open_replica(&storage, i64::MAX);
        replica.write_state().unwrap();
        sync(&mut replica);
        // An append whose round never completes its fsync pass: the crash keeps the
        // state record written with it (its file happened to reach the disk) and loses
        // the entry, which the record must not claim.
        replica
            .append(&[entry(9, 2, batch("unsynced", 1))], 0)
            .unwrap();
        replica.write_state().unwrap();
    }
    let state = Path::new("/data/t-0").join(crate::replication::replica_log::STATE_FILE);
    crate::storage::Storage::open(&storage, &state, false)
        .unwrap()
        .sync()
        .unwrap();
    storage.crash();
    assert_eq!(
        open_replica(&storage, i64::MAX).lost_barrier(),
        None,
        "only an unsynced append was lost"
    );
    // Damage cuts the log at entry 6 (a flipped epoch): entries 6..=8 were synced. With
    // damage certain, the last record's own round counts too (entry 9: it may have been
    // fsynced and acknowledged with no record naming it), so the barrier over-reaches
    // by an entry the leader that sent it holds.
    flip_epoch(&storage, 6, 1 << 24);
    let replica = open_replica(&storage, i64::MAX);
    assert_eq!(replica.last_index(), 5);
    assert_eq!(
        replica.lost_barrier(),
        Some(crate::replication::VoteBarrier { index: 9, term: 2 })
    );
    // The barrier is durable at once: a vote written before the replica catches up
    // (its record names the short log as durable) must not make the next start forget
    // the loss (found by the simulator, seed 33779: a stale leader was elected with
    // such a replica's vote, losing committed entries).
    persist_vote(replica, 3, 2);
    assert_eq!(
        open_replica(&storage, i64::MAX).vote_barrier(),
        Some(crate::replication::VoteBarrier { index: 9, term: 2 })
    );
}

/// Entries written, fsynced and acknowledged in one round are named by no state record
/// as durable (the record of their round is written before the fsync), yet damage that
/// cuts the log below what is named durable may have taken them too: the barrier covers
/// where the log ended when that record was written (found by the simulator, seed
/// 44414: a barrier three entries short let the replica elect a leader that lacked a
/// committed batch). A log cut only within its last round is a crash before that
/// round's fsync as far as the replica can tell: no barrier (seed 60566).
#[test]
fn a_damaged_log_covers_the_entries_of_its_last_round() {
    let storage = MemoryStorage::new();
    two_term_log(&storage); // entries 1..=8 and their record, fsynced
    {
        // A record naming 1..=8 as durable, then a round with 9 and 10, fsynced.
        let mut replica = open_replica(&storage, i64::MAX);
        replica.write_state().unwrap();
        sync(&mut replica);
        replica
            .append(
                &[entry(9, 2, batch("e9", 1)), entry(10, 2, batch("e10", 1))],
                0,
            )
            .unwrap();
        replica.write_state().unwrap();
        sync(&mut replica);
    }
    flip_epoch(&storage, 6, 1 << 24);
    let replica = open_replica(&storage, i64::MAX);
    assert_eq!(replica.last_index(), 5);
    assert_eq!(
        replica.lost_barrier(),
        Some(crate::replication::VoteBarrier { index: 10, term: 2 })
    );
    drop(replica);
    // A log whose only record is its first round's, cut within that round: no barrier.
    let fresh = MemoryStorage::new();
    two_term_log(&fresh);
    flip_epoch(&fresh, 6, 1 << 24);
    let replica = open_replica(&fresh, i64::MAX);
    assert_eq!(replica.last_index(), 5);
    assert_eq!(replica.lost_barrier(), None);
}

/// A replica that started with no Raft state stays "unproven" (it votes only for empty
/// logs) across restarts until a leader's append gives it a barrier: a wiped broker
/// whose first start failed after writing its state voted a stale leader in at the next
/// start (found by the simulator, seed 1245).
#[test]
fn an_unproven_replica_stays_unproven_across_restarts() {
    let storage = MemoryStorage::new();
    assert!(open_replica(&storage, 0).unproven());
    storage.crash();
    let mut replica = open_replica(&storage, 0);
    assert!(
        replica.unproven(),
        "a restart forgot that the replica started empty"
    );
    replica
        .persist_vote_barrier(crate::replication::VoteBarrier { index: 3, term: 1 })
        .unwrap();
    drop(replica);
    assert!(!open_replica(&storage, 0).unproven());
}

/// A replica that lost acknowledged entries keeps its vote barrier across a restart: a
/// wiped replica that crashes again while catching up must still not vote.
#[test]
fn the_vote_barrier_survives_a_restart() {
    let storage = MemoryStorage::new();
    let mut replica = open_replica(&storage, 0);
    assert_eq!(replica.vote_barrier(), None);
    let barrier = crate::replication::VoteBarrier { index: 7, term: 3 };
    replica.persist_vote_barrier(barrier).unwrap();
    storage.crash();
    let mut replica = open_replica(&storage, 0);
    assert_eq!(
        replica.vote_barrier(),
        Some(barrier),
        "the barrier was lost by a crash"
    );
    replica.clear_vote_barrier();
    replica.write_state().unwrap();
    sync(&mut replica);
    drop(replica);
    assert_eq!(open_replica(&storage, 0).vote_barrier(), None);
}

/// A log whose first segment is gone while a later one survived (found by the simulator
/// with bit flips and misdirected writes on a broker's metadata log) must not have its
/// surviving batches renumbered from the log start: the replica kept entries 22.. as
/// entries 1.., with terms the leader's entries 1.. never had, called them committed, and
/// refused every append from then on. The gap cuts the log; the commit marks the loss.
#[test]
fn a_log_that_lost_its_first_segment_is_cut_not_renumbered() {
    let storage = MemoryStorage::new();
    let mut replica = open_replica(&storage, 0);
    let entries: Vec<Entry> = (1..=8)
        .map(|i| entry(i, 1, batch(&format!("e{i}"), 3)))
        .collect();
    replica.append(&entries, 0).unwrap();
    let mut hs = replica.hard_state().clone();
    hs.term = 1;
    hs.commit = 8;
    replica.set_hard_state(hs);
    replica.write_state().unwrap();
    sync(&mut replica);
    assert!(replica.log().segment_count() > 1);
    let dir = Path::new("/data/t-0");
    drop(replica);
    crate::storage::Storage::remove_file(&storage, &dir.join("00000000000000000000.log")).unwrap();
    crate::storage::Storage::remove_file(&storage, &dir.join("00000000000000000000.index"))
        .unwrap();
    crate::storage::Storage::remove_file(&storage, &dir.join("00000000000000000000.timeindex"))
        .unwrap();
    crate::storage::Storage::sync_dir(&storage, dir).unwrap();

    let replica = open_replica(&storage, 0);
    assert_eq!(
        replica.last_index(),
        0,
        "batches past the gap were kept as entries"
    );
    assert_eq!(replica.lost_commit(), Some(8));
    assert_eq!(replica.log().log_end_offset(), 0);
    drop(replica);
    // The cut is durable: a second start sees the same empty log.
    assert_eq!(open_replica(&storage, 0).last_index(), 0);
}

/// Flips bits of the leader epoch (outside the CRC) of the batch holding `index`.
/// Where entry `index`'s batch lies on disk: (segment file, byte position).
fn batch_location(storage: &MemoryStorage, index: u64) -> (std::path::PathBuf, usize) {
    let replica = open_replica(storage, i64::MAX);
    let p = replica.position(index).unwrap();
    let stored = replica.log().read_batch(p.base_offset).unwrap();
    let dir = Path::new("/data/t-0");
    storage
        .file_paths()
        .into_iter()
        .filter(|f| f.starts_with(dir) && f.extension().is_some_and(|e| e == "log"))
        .find_map(|f| {
            let data = crate::storage::read_to_vec(storage, &f).unwrap();
            let at = data.windows(stored.len()).position(|w| w == &stored[..])?;
            Some((f, at))
        })
        .unwrap()
}

fn flip_epoch(storage: &MemoryStorage, index: u64, flip: i32) {
    let term = open_replica(storage, i64::MAX)
        .position(index)
        .unwrap()
        .term as i32;
    let (path, at) = batch_location(storage, index);
    assert!(storage.corrupt(&path, at + 12, &(term ^ flip).to_be_bytes()));
}

/// A replica log's positions come from batch headers; a segment opened below the
/// recovery point is CRC-checked only from its last index entry on. A flipped offset
/// delta in an earlier batch breaks the run right after it, and that batch is then the
/// last one kept, its end far past the log: it is CRC-checked and cut too (found by the
/// simulator, seeds 43067 and 46947: such an end became the replica's high watermark).
#[test]
fn a_corrupt_batch_left_last_by_a_cut_is_cut_too() {
    let storage = MemoryStorage::new();
    let config = LogConfig {
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    let open = |storage: &MemoryStorage| {
        ReplicaLog::open(
            Arc::new(storage.clone()),
            Path::new("/data/t-0"),
            config.clone(),
            i64::MAX,
            &[1, 2, 3],
        )
        .unwrap()
    };
    {
        let mut replica = open(&storage);
        let entries: Vec<Entry> = (1..=8)
            .map(|i| entry(i, 1, batch(&format!("e{i}"), 3)))
            .collect();
        replica.append(&entries, 0).unwrap();
        let mut hs = replica.hard_state().clone();
        hs.term = 1;
        hs.commit = 8;
        replica.set_hard_state(hs);
        replica.write_state().unwrap();
        sync(&mut replica);
    }
    let (end_of_6, start_of_7) = {
        let replica = open(&storage);
        let p7 = replica.position(7).unwrap();
        (replica.position(6).unwrap().next_offset, p7.base_offset)
    };
    // Entry 7's batch on disk: flip the high bit of its lastOffsetDelta (bytes 23..27).
    let path = Path::new("/data/t-0").join("00000000000000000000.log");
    let stored = open(&storage).log().read_batch(start_of_7).unwrap();
    let data = crate::storage::read_to_vec(&storage, &path).unwrap();
    let at = data
        .windows(stored.len())
        .position(|w| w == &stored[..])
        .unwrap();
    assert!(storage.corrupt(&path, at + 23, &[data[at + 23] ^ 0x08]));
    let replica = open(&storage);
    assert_eq!(replica.last_index(), 6);
    assert_eq!(replica.log().log_end_offset(), end_of_6);
}

/// A crash can keep a round's entries and lose its state record (the files are fsynced
/// one by one): a replica must not reopen with a term below its log's last term (raft-rs
/// answered a pre-vote with term 0 and panicked; found by the simulator, seed 67646).
#[test]
fn a_lost_term_comes_back_from_the_log() {
    let storage = MemoryStorage::new();
    {
        let mut replica = open_replica(&storage, 0);
        replica.append(&[entry(1, 3, Bytes::new())], 0).unwrap();
        let (handles, _) = replica.log_sync_handles().unwrap();
        // Only the log's files reach the disk: the state record of term 3 is lost.
        for h in &handles {
            h.sync().unwrap();
        }
    }
    storage.crash();
    let replica = open_replica(&storage, 0);
    assert_eq!(replica.last_index(), 1);
    assert_eq!(
        (replica.hard_state().term, replica.hard_state().vote),
        (3, 0)
    );
}

/// A partition log may go on past a hole (a segment whose files were lost; compaction
/// leaves such holes on purpose), but a replica log must end where its last entry does:
/// the next entry would otherwise land past the hole, at offsets no other replica gives
/// it (found by the simulator, seeds 30992, 31095 and 45046). It is cut there, durably.
#[test]
fn a_replica_log_is_cut_where_its_entries_end() {
    let storage = MemoryStorage::new();
    two_term_log(&storage); // segments of 300 bytes: several of them
    let (ends, bases) = {
        let replica = open_replica(&storage, i64::MAX);
        let ends: Vec<i64> = (1..=8)
            .map(|i| replica.position(i).unwrap().next_offset)
            .collect();
        (ends, replica.log().segment_base_offsets())
    };
    assert!(bases.len() >= 3, "the test needs three segments: {bases:?}");
    // The second segment's files are lost.
    let dir = Path::new("/data/t-0");
    let middle = format!("{:020}", bases[1]);
    for suffix in ["log", "index", "timeindex"] {
        let path = dir.join(format!("{middle}.{suffix}"));
        if crate::storage::Storage::exists(&storage, &path) {
            crate::storage::Storage::remove_file(&storage, &path).unwrap();
        }
    }
    // And the last segment lost its batches (its file is empty): no entry after the
    // hole shows it, the segment's base alone puts the log's end past it.
    let last_segment = dir.join(format!("{:020}.log", bases[bases.len() - 1]));
    let mut file = crate::storage::Storage::open(&storage, &last_segment, false).unwrap();
    file.truncate(0).unwrap();
    file.sync().unwrap();
    crate::storage::Storage::sync_dir(&storage, dir).unwrap();
    let kept_end = bases[1];
    let replica = open_replica(&storage, i64::MAX);
    assert_eq!(replica.log().log_end_offset(), kept_end);
    let last = replica.last_index();
    assert_eq!(replica.position(last).unwrap().next_offset, kept_end);
    assert!(ends.contains(&kept_end));
    drop(replica);
    // And after a power loss.
    storage.crash();
    assert_eq!(
        open_replica(&storage, i64::MAX).log().log_end_offset(),
        kept_end
    );
}

/// A log of terms 1 (entries 1..=4) and 2 (5..=8), each term starting with its no-op,
/// all committed and synced.
fn two_term_log(storage: &MemoryStorage) {
    let mut replica = open_replica(storage, 0);
    let entries: Vec<Entry> = (1..=8)
        .map(|i| {
            let data = if i == 1 || i == 5 {
                Bytes::new()
            } else {
                batch(&format!("e{i}"), 2)
            };
            entry(i, if i < 5 { 1 } else { 2 }, data)
        })
        .collect();
    replica.append(&entries, 0).unwrap();
    let mut hs = replica.hard_state().clone();
    hs.term = 2;
    hs.commit = 8;
    replica.set_hard_state(hs);
    replica.write_state().unwrap();
    sync(&mut replica);
}

/// A batch's leader epoch is not covered by its CRC. A bit flipped there while the
/// broker was down changed the entry's term when the log was opened, and the replica
/// then disagreed with the others about entries it called committed (found by the
/// simulator with --faults all: replicas diverged on the epoch of a batch). Opening the
/// log checks the terms against the no-ops that start every term (which name their term
/// inside the CRC) and cuts the log at the first one that does not fit; the lost commit
/// has the rest replicated again.
#[test]
fn a_flipped_leader_epoch_is_cut_off_when_the_log_opens() {
    // Untouched, the log opens whole.
    let storage = MemoryStorage::new();
    two_term_log(&storage);
    let replica = open_replica(&storage, i64::MAX);
    assert_eq!((replica.last_index(), replica.lost_commit()), (8, None));
    drop(replica);

    // Flips in ordinary entries (up, down, high bits) and in a no-op (to the previous
    // term, so the terms still look ordered).
    for (index, flip, keep) in [
        (3, 0b10, 2),    // term 1 -> 3 mid-term
        (7, 0b11, 6),    // term 2 -> 1 (goes down)
        (6, 1 << 24, 5), // far above any term
        (8, 1 << 31, 7), // negative
        (5, 0b11, 4),    // the no-op of term 2 -> 1 (its value still says 2)
        (2, 0b1, 1),     // term 1 -> 0
    ] {
        let storage = MemoryStorage::new();
        two_term_log(&storage);
        flip_epoch(&storage, index, flip);
        let replica = open_replica(&storage, i64::MAX);
        assert_eq!(
            replica.last_index(),
            keep,
            "flip {flip:#x} in entry {index}: the log should end before it"
        );
        assert_eq!(replica.lost_commit(), Some(8));
        let end = replica.log().log_end_offset();
        drop(replica);
        // Durably cut.
        assert_eq!(open_replica(&storage, i64::MAX).log().log_end_offset(), end);
    }
}

#[test]
fn replica_log_appends_truncates_and_recovers() {
    let storage = MemoryStorage::new();
    let mut replica = open_replica(&storage, 0);
    assert_eq!((replica.first_index(), replica.last_index()), (1, 0));
    // Terms 1, 1, 1, 2, 2, 2: each term starts with its leader's no-op (an empty entry),
    // as in every Raft log (the replica checks this when it opens the log).
    let first: Vec<Entry> = (1..=6)
        .map(|i| {
            entry(
                i,
                1 + i / 4,
                if i == 1 || i == 4 {
                    Bytes::new()
                } else {
                    batch(&format!("e{i}"), 3)
                },
            )
        })
        .collect();
    replica.append(&first, 0).unwrap();
    assert_eq!(replica.last_index(), 6);
    assert_eq!(
        replica.position(1).unwrap(),
        EntryPosition {
            base_offset: 0,
            next_offset: 1,
            term: 1
        }
    );
    assert_eq!(replica.position(2).unwrap().base_offset, 1);
    assert_eq!(replica.log().log_end_offset(), 2 + 4 * 3);
    assert!(
        replica.log().segment_count() > 1,
        "small segments roll under the entries"
    );
    let read = replica.entries(1, 7, None).unwrap();
    assert_eq!(
        read.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
        first.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()
    );
    assert!(read[0].data.is_empty());
    // A conflicting suffix from a new leader replaces entries 4.. and their offsets.
    let replacement = vec![entry(4, 3, Bytes::new()), entry(5, 3, batch("r5", 2))];
    replica.append(&replacement, 0).unwrap();
    assert_eq!(replica.last_index(), 5);
    assert_eq!(
        replica.position(5).unwrap(),
        EntryPosition {
            base_offset: 8,
            next_offset: 10,
            term: 3
        }
    );
    let mut hs = replica.hard_state().clone();
    hs.term = 3;
    hs.vote = 2;
    hs.commit = 5;
    replica.set_hard_state(hs.clone());
    replica.write_state().unwrap();
    sync(&mut replica);
    // Unsynced appends vanish with a power loss; the synced ones and the state stay.
    replica.append(&[entry(6, 3, batch("lost", 1))], 0).unwrap();
    drop(replica);
    storage.crash();
    let replica = open_replica(&storage, 0);
    assert_eq!(replica.last_index(), 5);
    assert_eq!(replica.hard_state(), &hs);
    assert_eq!(replica.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(replica.term(5), Ok(3));
    assert_eq!(replica.term(0), Ok(0));
    assert!(replica.term(9).is_err());
    let values =
        crate::client::decode_records(&replica.entries(5, 6, None).unwrap()[0].data).unwrap();
    assert_eq!(
        values.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![8, 9]
    );
}

/// One replica of the test partition.
struct Node {
    disk: MemoryStorage,
    raw: RawNode<ReplicaStorage>,
    storage: ReplicaStorage,
}

fn raft_config(id: u64, applied: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        pre_vote: true,
        check_quorum: true,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 64,
        ..Config::default()
    }
}

impl Node {
    fn start(id: u64, disk: MemoryStorage) -> Node {
        let replica = ReplicaLog::open(
            Arc::new(disk.clone()),
            Path::new("/data/t-0"),
            LogConfig {
                segment_bytes: 2_000,
                ..LogConfig::default()
            },
            0,
            &[1, 2, 3],
        )
        .unwrap();
        let applied = replica.hard_state().commit;
        let storage = ReplicaStorage::new(replica);
        let raw = RawNode::new(
            &raft_config(id, applied),
            storage.clone(),
            &super::slog_bridge::logger(&format!("t-0/{id}")),
        )
        .unwrap();
        Node { disk, raw, storage }
    }

    /// Handles one Ready the way the broker's driver will: persist entries and hard
    /// state, fsync, then release messages that needed the persist.
    fn handle_ready(&mut self, outbox: &mut Vec<Message>) {
        if !self.raw.has_ready() {
            return;
        }
        let mut ready = self.raw.ready();
        outbox.extend(ready.take_messages());
        assert!(
            ready.snapshot().get_metadata().index == 0,
            "no snapshots in this test"
        );
        {
            let mut replica = self.storage.lock();
            replica.append(ready.entries(), 0).unwrap();
            if let Some(hs) = ready.hs() {
                replica.set_hard_state(hs.clone());
            }
            replica.write_state().unwrap();
            sync(&mut replica);
        }
        outbox.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut replica = self.storage.lock();
            let mut hs = replica.hard_state().clone();
            hs.commit = commit;
            replica.set_hard_state(hs);
        }
        outbox.extend(light.take_messages());
        self.raw.advance_apply();
    }
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
    /// Nodes whose messages are dropped (both directions).
    isolated: BTreeSet<u64>,
}

impl Cluster {
    fn new() -> Cluster {
        let nodes = (1..=3)
            .map(|id| (id, Node::start(id, MemoryStorage::new())))
            .collect();
        Cluster {
            nodes,
            isolated: BTreeSet::new(),
        }
    }

    /// Runs Ready handling and message delivery until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..1_000 {
            let mut outbox = Vec::new();
            for node in self.nodes.values_mut() {
                node.handle_ready(&mut outbox);
            }
            if outbox.is_empty() && self.nodes.values().all(|n| !n.raw.has_ready()) {
                return;
            }
            for message in outbox {
                if self.isolated.contains(&message.from) || self.isolated.contains(&message.to) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&message.to) {
                    node.raw.step(message).unwrap();
                }
            }
        }
        panic!("the cluster did not settle");
    }

    fn tick_until_leader(&mut self, among: &[u64]) -> u64 {
        for _ in 0..500 {
            for (id, node) in self.nodes.iter_mut() {
                if !self.isolated.contains(id) || among.contains(id) {
                    node.raw.tick();
                }
            }
            self.settle();
            let leaders: Vec<u64> = among
                .iter()
                .copied()
                .filter(|id| self.nodes[id].raw.raft.state == StateRole::Leader)
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
        }
        panic!("no leader among {among:?}");
    }

    fn propose(&mut self, leader: u64, tag: &str) {
        self.nodes
            .get_mut(&leader)
            .unwrap()
            .raw
            .propose(vec![], batch(tag, 2).to_vec())
            .unwrap();
        self.settle();
    }

    /// Every node's committed batches, as stored bytes by offset.
    fn committed(&self, id: u64) -> Vec<(i64, Bytes)> {
        let replica = self.nodes[&id].storage.lock();
        let commit = replica.hard_state().commit;
        (replica.first_index()..=commit)
            .map(|index| {
                let position = replica.position(index).unwrap();
                (
                    position.base_offset,
                    replica.log().read_batch(position.base_offset).unwrap(),
                )
            })
            .collect()
    }

    fn data_values(&self, id: u64) -> Vec<String> {
        self.committed(id)
            .iter()
            .filter(|(_, bytes)| !crate::log::batch::parse_whole(bytes).unwrap().is_control())
            .flat_map(|(_, bytes)| crate::client::decode_records(bytes).unwrap())
            .filter_map(|r| r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
            .collect()
    }
}

#[test]
fn three_replicas_agree_on_every_byte_and_offset() {
    let mut cluster = Cluster::new();
    let leader = cluster.tick_until_leader(&[1, 2, 3]);
    for i in 0..10 {
        cluster.propose(leader, &format!("a{i}"));
    }
    let reference = cluster.committed(leader);
    assert!(reference.len() >= 11, "no-op plus ten batches committed");
    for id in 1..=3 {
        assert_eq!(cluster.committed(id), reference, "replica {id} differs");
    }
    // Offsets run without gaps over data and control batches alike.
    let mut expected_offset = reference[0].0;
    for (offset, bytes) in &reference {
        assert_eq!(*offset, expected_offset);
        expected_offset = crate::log::batch::parse_whole(bytes).unwrap().next_offset();
    }

    // The leader crashes, losing nothing it acknowledged; the others elect a new one.
    cluster.isolated.insert(leader);
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let second = cluster.tick_until_leader(&others);
    for i in 0..5 {
        cluster.propose(second, &format!("b{i}"));
    }
    let disk = cluster.nodes[&leader].disk.clone();
    disk.crash();
    cluster.nodes.insert(leader, Node::start(leader, disk));
    cluster.isolated.clear();
    for _ in 0..30 {
        cluster.nodes.values_mut().for_each(|n| {
            n.raw.tick();
        });
        cluster.settle();
    }
    cluster.propose(second, "c0");
    let reference = cluster.committed(second);
    for id in 1..=3 {
        assert_eq!(
            cluster.committed(id),
            reference,
            "replica {id} differs after the restart"
        );
    }
    let values = cluster.data_values(second);
    let expected: Vec<String> = (0..10)
        .map(|i| format!("a{i}"))
        .chain((0..5).map(|i| format!("b{i}")))
        .chain(["c0".to_string()])
        .flat_map(|t| [format!("{t}-0"), format!("{t}-1")])
        .collect();
    assert_eq!(values, expected);
}

#[test]
fn an_isolated_leaders_uncommitted_entries_are_replaced() {
    let mut cluster = Cluster::new();
    let old = cluster.tick_until_leader(&[1, 2, 3]);
    cluster.propose(old, "kept");
    // Cut the leader off; what it accepts now can never commit.
    cluster.isolated.insert(old);
    for i in 0..3 {
        cluster
            .nodes
            .get_mut(&old)
            .unwrap()
            .raw
            .propose(vec![], batch(&format!("doomed{i}"), 1).to_vec())
            .unwrap();
    }
    cluster.settle();
    let doomed_last = cluster.nodes[&old].storage.lock().last_index();
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = cluster.tick_until_leader(&others);
    for i in 0..4 {
        cluster.propose(new, &format!("won{i}"));
    }
    cluster.isolated.clear();
    for _ in 0..40 {
        cluster.nodes.values_mut().for_each(|n| {
            n.raw.tick();
        });
        cluster.settle();
    }
    cluster.propose(new, "after");
    let reference = cluster.committed(new);
    assert!(cluster.nodes[&old].storage.lock().hard_state().commit >= doomed_last);
    for id in 1..=3 {
        assert_eq!(cluster.committed(id), reference, "replica {id} differs");
    }
    let values = cluster.data_values(old);
    assert!(
        values.iter().all(|v| !v.starts_with("doomed")),
        "uncommitted entries survived: {values:?}"
    );
    assert!(values.contains(&"won3-1".to_string()) && values.contains(&"after-0".to_string()));
}

#[test]
fn configuration_changes_are_stored_as_control_batches() {
    let mut cluster = Cluster::new();
    let leader = cluster.tick_until_leader(&[1, 2, 3]);
    let mut change = ConfChangeV2::default();
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(raft::eraftpb::ConfChangeType::AddLearnerNode);
    single.node_id = 4;
    change.changes.push(single);
    cluster
        .nodes
        .get_mut(&leader)
        .unwrap()
        .raw
        .propose_conf_change(vec![], change)
        .unwrap();
    cluster.settle();
    let replica = cluster.nodes[&leader].storage.lock();
    let commit = replica.hard_state().commit;
    let entries = replica
        .entries(replica.first_index(), commit + 1, None)
        .unwrap();
    assert!(entries
        .iter()
        .any(|e| e.get_entry_type() == EntryType::EntryConfChangeV2));
    let stored = replica
        .log()
        .read_batch(replica.position(commit).unwrap().base_offset)
        .unwrap();
    assert!(crate::log::batch::parse_whole(&stored)
        .unwrap()
        .is_control());
    drop(replica);
    assert!(cluster.nodes[&leader].storage.initial_state().is_ok());
}

mod driver {
    //! Three brokers' drivers, each hosting a replica of four partitions, with the test
    //! passing their batched messages around.

    use super::batch;
    use crate::log::LogConfig;
    use crate::replication::driver::*;
    use crate::replication::ReplicaLog;
    use crate::storage::{read_to_vec, MemoryStorage};
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::sync::Arc;

    const GROUPS: [&str; 4] = ["t-0", "t-1", "t-2", "t-3"];

    struct Net {
        drivers: BTreeMap<u64, Driver>,
        disks: BTreeMap<u64, MemoryStorage>,
        down: BTreeSet<u64>,
        committed: BTreeMap<u64, Vec<Committed>>,
        leader_log: Vec<(u64, LeaderChange)>,
        max_groups_per_sync: usize,
    }

    fn driver(id: u64, disk: &MemoryStorage, seed: u64) -> Driver {
        driver_with(id, disk, seed, LogConfig::default())
    }

    fn driver_with(id: u64, disk: &MemoryStorage, seed: u64, config: LogConfig) -> Driver {
        let mut d = Driver::new(id, DriverConfig::default(), seed * 31 + id);
        for group in GROUPS {
            let dir = Path::new("/data").join(group);
            let replica =
                ReplicaLog::open(Arc::new(disk.clone()), &dir, config.clone(), 0, &[1, 2, 3])
                    .unwrap();
            d.add_group(group.to_string(), replica).unwrap();
        }
        d
    }

    impl Net {
        fn new(seed: u64) -> Net {
            Net::with_config(seed, LogConfig::default())
        }

        fn with_config(seed: u64, config: LogConfig) -> Net {
            let disks: BTreeMap<u64, MemoryStorage> =
                (1..=3).map(|id| (id, MemoryStorage::new())).collect();
            let drivers = disks
                .iter()
                .map(|(id, disk)| (*id, driver_with(*id, disk, seed, config.clone())))
                .collect();
            Net {
                drivers,
                disks,
                down: BTreeSet::new(),
                committed: BTreeMap::new(),
                leader_log: Vec::new(),
                max_groups_per_sync: 0,
            }
        }

        /// Rounds and deliveries until quiet (bounded).
        fn settle(&mut self) {
            for _ in 0..1_000 {
                let mut moved = false;
                let mut mail = Vec::new();
                for (id, d) in self.drivers.iter_mut() {
                    if self.down.contains(id) {
                        continue;
                    }
                    let out = d.round(0).unwrap();
                    self.max_groups_per_sync = self.max_groups_per_sync.max(out.groups_synced);
                    moved |= out.groups_synced > 0 || !out.outgoing.is_empty();
                    self.committed.entry(*id).or_default().extend(out.committed);
                    self.leader_log
                        .extend(out.leader_changes.into_iter().map(|c| (*id, c)));
                    for (to, batch) in out.outgoing {
                        mail.push((to, batch));
                    }
                }
                for (to, batch) in mail {
                    if self.down.contains(&to) {
                        continue;
                    }
                    let d = self.drivers.get_mut(&to).unwrap();
                    for message in batch {
                        let _ = d.step(message);
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("did not settle");
        }

        fn tick(&mut self, n: usize) {
            for _ in 0..n {
                for (id, d) in self.drivers.iter_mut() {
                    if !self.down.contains(id) {
                        d.tick().unwrap();
                    }
                }
                self.settle();
            }
        }

        /// Proposes `n` batches of two records ("{tag}{i}") to `t-0` on `leader`, one at a
        /// time, settling after each.
        fn propose_each(&mut self, leader: u64, tag: &str, n: usize) {
            for i in 0..n {
                self.drivers
                    .get_mut(&leader)
                    .unwrap()
                    .propose("t-0", batch(&format!("{tag}{i}"), 2).to_vec())
                    .unwrap();
                self.settle();
            }
        }

        /// One more write through `leader` (it shows the leader every follower's log; a
        /// heartbeat does not), then: `committed` survived, and every replica of `t-0`
        /// holds the same committed log.
        fn write_and_check_converged(&mut self, leader: u64, committed: &[(i64, bytes::Bytes)]) {
            self.propose_each(leader, "after", 1);
            self.tick(10);
            let log = committed_log(self, leader);
            assert!(log.starts_with(committed), "committed entries were lost");
            for id in 1..=3 {
                assert_eq!(committed_log(self, id), log);
            }
        }

        fn leader_of(&self, group: &str) -> Option<u64> {
            let leaders: BTreeSet<u64> = self
                .drivers
                .iter()
                .filter(|(id, _)| !self.down.contains(id))
                .filter_map(|(id, d)| d.leader(group).filter(|(l, _)| l == id).map(|_| *id))
                .collect();
            assert!(leaders.len() <= 1, "two leaders of {group}: {leaders:?}");
            leaders.into_iter().next()
        }
    }

    #[test]
    fn groups_elect_commit_and_share_fsync_rounds() {
        let mut net = Net::new(1);
        net.tick(40);
        let mut proposed = BTreeMap::new();
        for round in 0..5 {
            for group in GROUPS {
                let leader = net.leader_of(group).expect("every group has a leader");
                let index = net
                    .drivers
                    .get_mut(&leader)
                    .unwrap()
                    .propose(group, batch(&format!("{group}/{round}"), 3).to_vec())
                    .unwrap();
                proposed.insert((group.to_string(), index), leader);
                // A follower refuses and names the leader.
                let follower = (1..=3).find(|id| *id != leader).unwrap();
                match net
                    .drivers
                    .get_mut(&follower)
                    .unwrap()
                    .propose(group, vec![])
                {
                    Err(DriverError::NotLeader { leader: named, .. }) => assert_eq!(named, leader),
                    other => panic!("follower accepted a proposal: {other:?}"),
                }
            }
            net.settle();
        }
        assert!(
            net.max_groups_per_sync > 1,
            "one fsync pass should cover several groups"
        );
        // Every proposal committed on every broker, at the same offsets everywhere.
        for id in 1..=3 {
            let committed: BTreeMap<(String, u64), (i64, i64)> = net.committed[&id]
                .iter()
                .map(|c| ((c.group.clone(), c.index), (c.base_offset, c.next_offset)))
                .collect();
            for key in proposed.keys() {
                assert!(
                    committed.contains_key(key),
                    "broker {id} did not commit {key:?}"
                );
            }
            assert_eq!(
                committed,
                net.committed[&1]
                    .iter()
                    .map(|c| ((c.group.clone(), c.index), (c.base_offset, c.next_offset)))
                    .collect()
            );
        }
        // Leaders were reported, with at most one leader per group and term.
        let mut by_term = BTreeMap::new();
        for (_, change) in &net.leader_log {
            if change.leader != 0 {
                let previous = by_term.insert((change.group.clone(), change.term), change.leader);
                assert!(previous.is_none() || previous == Some(change.leader));
            }
        }
    }

    #[test]
    fn a_broker_crash_moves_leadership_and_its_restart_catches_up() {
        let mut net = Net::new(2);
        net.tick(40);
        let victim = net.leader_of("t-0").unwrap();
        for i in 0..3 {
            let idx = net
                .drivers
                .get_mut(&victim)
                .unwrap()
                .propose("t-0", batch(&format!("x{i}"), 1).to_vec())
                .unwrap();
            assert!(idx > 0);
        }
        net.settle();
        net.down.insert(victim);
        net.tick(60);
        let successor = net.leader_of("t-0").expect("a new leader");
        assert_ne!(successor, victim);
        net.drivers
            .get_mut(&successor)
            .unwrap()
            .propose("t-0", batch("y", 1).to_vec())
            .unwrap();
        net.settle();
        // Power loss on the victim, then a restart from its disk.
        let disk = net.disks[&victim].clone();
        disk.crash();
        net.drivers.insert(victim, driver(victim, &disk, 2));
        net.down.clear();
        net.tick(30);
        let logs: Vec<_> = (1..=3).map(|id| committed_log(&net, id)).collect();
        assert!(logs[0].len() >= 5);
        assert_eq!(logs[0], logs[1]);
        assert_eq!(logs[1], logs[2]);
    }

    /// Committed data of the partition group as (offset, batch) on replica `id`.
    fn committed_log(net: &Net, id: u64) -> Vec<(i64, bytes::Bytes)> {
        let storage = net.drivers[&id].storage("t-0").unwrap().lock();
        (storage.first_index()..=storage.hard_state().commit)
            .map(|i| {
                let p = storage.position(i).unwrap();
                (
                    p.base_offset,
                    storage.log().read_batch(p.base_offset).unwrap(),
                )
            })
            .collect()
    }

    /// A follower whose disk was wiped while it was away (it lost what it had
    /// acknowledged): raft-rs would panic on the leader's heartbeat ("to_commit .. is out
    /// of range") and its leader would ignore its rejections as stale; it catches up.
    #[test]
    fn a_follower_with_a_wiped_disk_catches_up() {
        let mut net = Net::new(4);
        net.tick(40);
        let leader = net.leader_of("t-0").unwrap();
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        net.propose_each(leader, "before", 3);
        assert_eq!(committed_log(&net, victim), committed_log(&net, leader));
        net.down.insert(victim);
        net.drivers
            .get_mut(&leader)
            .unwrap()
            .propose("t-0", batch("while-away", 1).to_vec())
            .unwrap();
        net.settle();
        let wiped = MemoryStorage::new();
        net.disks.insert(victim, wiped.clone());
        net.drivers.insert(victim, driver(victim, &wiped, 4));
        net.down.clear();
        net.tick(30);
        assert_eq!(
            net.leader_of("t-0"),
            Some(leader),
            "the wiped replica disrupted the leader"
        );
        let expected = committed_log(&net, leader);
        assert!(expected.len() >= 5);
        assert_eq!(committed_log(&net, victim), expected);
    }

    /// A follower acknowledges an entry and stops before writing anything else; damage
    /// then takes that entry from its disk. It must know it held the entry (a state
    /// record written once the entry was durable, before the acknowledgement went out),
    /// or it would vote for a candidate without it (found by the simulator, seed 49127:
    /// the replica could not tell the damage from a crash before the entry's fsync).
    #[test]
    fn an_acknowledged_entry_lost_to_damage_is_known_to_be_lost() {
        let mut net = Net::new(9);
        net.tick(40);
        let leader = net.leader_of("t-0").unwrap();
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        net.propose_each(leader, "before", 2);
        let index = net
            .drivers
            .get_mut(&leader)
            .unwrap()
            .propose("t-0", batch("acked", 1).to_vec())
            .unwrap();
        let appends = net.drivers.get_mut(&leader).unwrap().round(0).unwrap();
        for message in appends.outgoing.get(&follower).cloned().unwrap_or_default() {
            net.drivers
                .get_mut(&follower)
                .unwrap()
                .step(message)
                .unwrap();
        }
        let answer = net.drivers.get_mut(&follower).unwrap().round(0).unwrap();
        let acknowledged = answer.outgoing.get(&leader).is_some_and(|batch| {
            batch.iter().any(|m| {
                m.group == "t-0"
                    && m.message.get_msg_type() == raft::eraftpb::MessageType::MsgAppendResponse
                    && !m.message.reject
                    && m.message.index >= index
            })
        });
        assert!(acknowledged, "the follower did not acknowledge the entry");
        let term = net.drivers[&follower]
            .storage("t-0")
            .unwrap()
            .lock()
            .position(index)
            .unwrap()
            .term;
        // The follower stops here (nothing else reaches its disk); damage then hits the
        // acknowledged entry's records.
        let disk = net.disks[&follower].clone();
        net.drivers.remove(&follower);
        disk.crash();
        let (path, at) = super::batch_location(&disk, index);
        assert!(disk.corrupt(&path, at + 61, &[0xff; 4]));
        let restarted = driver(follower, &disk, 9);
        let replica = restarted.storage("t-0").unwrap().lock();
        assert_eq!(replica.last_index(), index - 1, "the damaged entry is cut");
        assert_eq!(
            replica.vote_barrier(),
            Some(crate::replication::VoteBarrier { index, term }),
            "the replica forgot it acknowledged the entry"
        );
    }

    /// A wiped disk must not vote away what it once acknowledged (found by the
    /// simulator): with the leader gone, the wiped replica and a stale one would be a
    /// majority electing the stale one, losing committed entries. An empty log votes only
    /// for an empty one, and after a leader's append not before it holds the commit
    /// index it was told.
    #[test]
    fn a_wiped_replica_never_elects_a_stale_one() {
        let mut net = Net::new(5);
        net.tick(40);
        let leader = net.leader_of("t-0").unwrap();
        let mut others = (1..=3).filter(|id| *id != leader);
        let (stale, wiped_id) = (others.next().unwrap(), others.next().unwrap());
        net.propose_each(leader, "both", 2);
        net.down.insert(stale);
        net.propose_each(leader, "missed-by-stale", 3);
        let committed = committed_log(&net, leader);
        assert_eq!(committed_log(&net, wiped_id), committed);
        // The leader dies; the other follower comes back with an empty disk.
        net.down = BTreeSet::from([leader]);
        let wiped = MemoryStorage::new();
        net.disks.insert(wiped_id, wiped.clone());
        net.drivers.insert(wiped_id, driver(wiped_id, &wiped, 5));
        net.tick(60);
        assert_eq!(
            net.leader_of("t-0"),
            None,
            "a stale replica was elected with the wiped one's vote"
        );
        // The old leader returns: the committed entries survive everywhere.
        net.down.clear();
        net.tick(60);
        let now = net
            .leader_of("t-0")
            .expect("a leader once the old one is back");
        // The next write shows the leader the wiped replica's log (a heartbeat does not).
        net.write_and_check_converged(now, &committed);
    }

    /// Restarts `wiped` on an empty disk, as its broker does for a replica placed on it
    /// before its current disk joined (`set_replaced_disk(true)`).
    fn replace_disk(net: &mut Net, wiped: u64, seed: u64) {
        let disk = MemoryStorage::new();
        net.disks.insert(wiped, disk.clone());
        let mut d = driver(wiped, &disk, seed);
        for group in GROUPS {
            d.set_replaced_disk(group, true).unwrap();
        }
        net.drivers.insert(wiped, d);
    }

    /// A replica on a replaced disk votes for nobody, not even for a candidate whose log
    /// is as empty as its own (found by the simulator, seed 30076): a replica that never
    /// received an entry would otherwise be elected with the wiped one's vote, over the
    /// replica holding every committed entry.
    #[test]
    fn a_replaced_disk_never_elects_an_empty_replica() {
        let mut net = Net::new(8);
        // One replica is away from the start: its log stays empty. It is on the disk it
        // was placed on (its broker says so), so it votes by Raft's rules.
        let empty = 3;
        net.down.insert(empty);
        for group in GROUPS {
            let d = net.drivers.get_mut(&empty).unwrap();
            d.set_replaced_disk(group, false).unwrap();
        }
        net.tick(60);
        let leader = net.leader_of("t-0").expect("a leader of the other two");
        let wiped = if leader == 1 { 2 } else { 1 };
        net.propose_each(leader, "committed", 3);
        let committed = committed_log(&net, leader);
        assert_eq!(committed_log(&net, wiped), committed);
        // The leader dies; the other holder's disk is replaced; the empty one returns.
        net.down = BTreeSet::from([leader]);
        replace_disk(&mut net, wiped, 9);
        net.tick(80);
        assert_eq!(
            net.leader_of("t-0"),
            None,
            "a replica with an empty log was elected with the replaced disk's vote"
        );
        net.down.clear();
        net.tick(80);
        let now = net
            .leader_of("t-0")
            .expect("a leader once the holder is back");
        net.write_and_check_converged(now, &committed);
    }

    /// A replica placed on its disk after the disk joined never acknowledged anything: it
    /// votes by Raft's rules, so the one replica holding the committed entries can be
    /// elected while the other holder's disk is replaced (found by the simulator: two
    /// empty replicas refusing every candidate with a log left partitions leaderless).
    #[test]
    fn an_empty_replica_on_its_own_disk_elects_the_holder() {
        let mut net = Net::new(10);
        let empty = 3;
        net.down.insert(empty);
        net.tick(60);
        let holder = net.leader_of("t-0").expect("a leader of the other two");
        let wiped = if holder == 1 { 2 } else { 1 };
        net.propose_each(holder, "committed", 3);
        let committed = committed_log(&net, holder);
        // The holder restarts (it must win an election again), the other holder's disk
        // is replaced, and the empty replica, known to be on its own disk, returns.
        let disk = net.disks[&holder].clone();
        disk.crash();
        net.drivers.insert(holder, driver(holder, &disk, 11));
        replace_disk(&mut net, wiped, 12);
        for group in GROUPS {
            net.drivers
                .get_mut(&empty)
                .unwrap()
                .set_replaced_disk(group, false)
                .unwrap();
        }
        net.down.clear();
        net.tick(80);
        assert_eq!(
            net.leader_of("t-0"),
            Some(holder),
            "the replica holding the committed entries was not elected"
        );
        net.write_and_check_converged(holder, &committed);
    }

    /// A vote answer meant for another request (an earlier incarnation of the candidate,
    /// in the same term) must not count: a wiped replica was elected with an empty log
    /// that way (found by the simulator, seed 24378). Answers carry the candidate's log
    /// position from the request; a grant that does not match is dropped.
    #[test]
    fn a_vote_granted_to_another_request_is_not_counted() {
        let disk = MemoryStorage::new();
        let mut d = driver(1, &disk, 7);
        d.campaign("t-0").unwrap();
        d.round(0).unwrap();
        // Pre-candidate in term 0, asking for term 1 with an empty log.
        assert_eq!(d.leader("t-0").map(|(_, term)| term), Some(0));
        let grant = |index: u64, log_term: u64| {
            let mut m = raft::eraftpb::Message::default();
            m.set_msg_type(raft::eraftpb::MessageType::MsgRequestPreVoteResponse);
            m.from = 2;
            m.to = 1;
            m.term = 1;
            m.index = index;
            m.log_term = log_term;
            GroupMessage {
                group: "t-0".into(),
                message: m,
            }
        };
        // Granted to a candidate whose log ended at index 9, term 1: not this one.
        d.step(grant(9, 1)).unwrap();
        d.round(0).unwrap();
        assert_eq!(
            d.leader("t-0").map(|(_, term)| term),
            Some(0),
            "a grant for another request was counted"
        );
        // The grant for this request moves it on to the election (term 1).
        d.step(grant(0, 0)).unwrap();
        d.round(0).unwrap();
        assert_eq!(d.leader("t-0").map(|(_, term)| term), Some(1));
    }

    /// A replica that started empty (a wiped disk's, maybe) answers no leader until it
    /// has seen it commit in its own term and go on leading, unanswered, for two election
    /// timeouts (check-quorum makes a leader without a quorum step down within one). A
    /// stale leader would otherwise commit with its acknowledgements over entries the
    /// others committed (found by the simulator, seed 40868: a paused leader of term 1,
    /// which had committed in term 1, resumed and took a wiped replica's answers while
    /// the others were in term 2). Now and then it answers a heartbeat, so that the leader
    /// sends it an append to be seen.
    #[test]
    fn an_empty_replica_answers_only_a_current_leader() {
        use raft::eraftpb::MessageType;
        let disk = MemoryStorage::new();
        let mut d = driver(1, &disk, 13);
        let message = |kind: MessageType, term: u64, commit: u64, commit_term: u64| {
            let mut m = raft::eraftpb::Message::default();
            m.set_msg_type(kind);
            m.from = 2;
            m.to = 1;
            m.term = term;
            if kind == MessageType::MsgAppend {
                m.index = 8;
                m.log_term = term;
                m.commit_term = commit_term;
            }
            m.commit = commit;
            GroupMessage {
                group: "t-0".into(),
                message: m,
            }
        };
        let answers = |d: &mut Driver| -> Vec<MessageType> {
            let out = d.round(0).unwrap();
            out.outgoing
                .get(&2)
                .into_iter()
                .flatten()
                .filter(|m| m.group == "t-0")
                .map(|m| m.message.get_msg_type())
                // Its own campaigns (it hears from no leader) are not answers.
                .filter(|kind| {
                    !matches!(
                        kind,
                        MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
                    )
                })
                .collect()
        };
        let election_tick = DriverConfig::default().election_tick;
        let ticks = |d: &mut Driver, n: usize| (0..n).for_each(|_| d.tick().unwrap());
        // A heartbeat from a leader it has not seen: answered once, to get an append.
        d.step(message(MessageType::MsgHeartbeat, 3, 0, 0)).unwrap();
        assert_eq!(answers(&mut d), vec![MessageType::MsgHeartbeatResponse]);
        d.step(message(MessageType::MsgHeartbeat, 3, 0, 0)).unwrap();
        assert!(answers(&mut d).is_empty(), "asked again at once");
        // Its commit index holds an entry of an older term: not proven, however long.
        d.step(message(MessageType::MsgAppend, 3, 5, 1)).unwrap();
        ticks(&mut d, 3 * election_tick);
        d.step(message(MessageType::MsgAppend, 3, 5, 1)).unwrap();
        assert!(
            answers(&mut d).is_empty(),
            "an unproven leader's append was answered"
        );
        // Committed in its own term: seen now, followed only two election timeouts on.
        d.step(message(MessageType::MsgAppend, 3, 5, 3)).unwrap();
        ticks(&mut d, election_tick);
        d.step(message(MessageType::MsgHeartbeat, 3, 0, 0)).unwrap();
        assert!(
            answers(&mut d).is_empty(),
            "followed after one election timeout"
        );
        assert!(d.storage("t-0").unwrap().lock().unproven());
        ticks(&mut d, election_tick);
        d.step(message(MessageType::MsgHeartbeat, 3, 0, 0)).unwrap();
        assert_eq!(answers(&mut d), vec![MessageType::MsgHeartbeatResponse]);
        // It must hold what the leader sent (up to index 8) before it votes.
        let log = d.storage("t-0").unwrap().lock();
        assert!(!log.unproven());
        assert_eq!(
            log.vote_barrier(),
            Some(crate::replication::VoteBarrier { index: 8, term: 3 })
        );
    }

    /// An append after an entry the leader itself lacks (announced with term 0) is
    /// refused, and answered with a rejection naming where this log ends: without the
    /// answer the leader sent the same append forever and the follower never caught up
    /// (found by the simulator, seed 48014).
    #[test]
    fn an_append_after_an_entry_of_term_0_is_answered_with_a_rejection() {
        let disk = MemoryStorage::new();
        let mut d = driver(1, &disk, 15);
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        m.from = 2;
        m.to = 1;
        m.term = 4;
        m.index = 71;
        m.log_term = 0;
        m.commit = 70;
        let refused = d.step(GroupMessage {
            group: "t-0".into(),
            message: m,
        });
        assert!(matches!(refused, Err(DriverError::Refused { .. })));
        let out = d.round(0).unwrap();
        let replies: Vec<_> = out
            .outgoing
            .get(&2)
            .into_iter()
            .flatten()
            .filter(|g| g.group == "t-0")
            .map(|g| &g.message)
            .collect();
        assert_eq!(replies.len(), 1, "no answer to the leader");
        let reply = replies[0];
        assert_eq!(
            reply.get_msg_type(),
            raft::eraftpb::MessageType::MsgAppendResponse
        );
        assert!(reply.reject);
        assert_eq!((reply.index, reply.reject_hint, reply.term), (71, 0, 4));
    }

    /// A batch that rots on the leader's disk after it committed: sending it to a
    /// follower that needs it must not kill the driver (raft-rs treats an entry the
    /// storage calls unavailable as fatal). The leader repairs: it drops the corrupt
    /// entry and what follows, rejoins as a follower, and the healthy follower, now
    /// leading, replicates everything to both; every replica ends byte-identical.
    #[test]
    fn a_corrupt_batch_on_the_leader_does_not_stop_its_groups() {
        let mut net = Net::new(5);
        net.tick(40);
        let leader = net.leader_of("t-0").unwrap();
        let lagging = (1..=3).find(|id| *id != leader).unwrap();
        net.down.insert(lagging);
        net.propose_each(leader, "rots", 3);
        // Flip a byte inside the last committed batch's records (covered by its CRC).
        let (segment, position, size) = {
            let storage = net.drivers[&leader].storage("t-0").unwrap().lock();
            let p = storage.position(storage.hard_state().commit).unwrap();
            let bytes = storage.log().read_batch(p.base_offset).unwrap();
            let path = net.disks[&leader]
                .file_paths()
                .into_iter()
                .find(|f| f.starts_with("/data/t-0") && f.extension().is_some_and(|e| e == "log"))
                .unwrap();
            let data = read_to_vec(&net.disks[&leader], &path).unwrap();
            let at = data
                .windows(bytes.len())
                .position(|w| w == &bytes[..])
                .unwrap();
            (path, at, bytes.len())
        };
        assert!(net.disks[&leader].corrupt(&segment, position + size - 3, &[0xff]));
        net.down.clear();
        net.tick(60);
        let healthy = (1..=3).find(|id| *id != leader && *id != lagging).unwrap();
        let now_leader = net.leader_of("t-0").expect("a leader after the repair");
        assert_eq!(
            now_leader, healthy,
            "only the healthy follower can lead (leader was {leader}, lagging {lagging})"
        );
        net.drivers
            .get_mut(&healthy)
            .unwrap()
            .propose("t-0", batch("after", 1).to_vec())
            .unwrap();
        net.settle();
        net.tick(5);
        let expected = committed_log(&net, healthy);
        assert!(expected.len() >= 5);
        for id in 1..=3 {
            assert_eq!(
                committed_log(&net, id),
                expected,
                "replica {id} after the repair"
            );
        }
    }

    #[test]
    fn a_follower_behind_the_log_start_installs_a_snapshot() {
        let config = LogConfig {
            segment_bytes: 300,
            retention_bytes: 600,
            ..LogConfig::default()
        };
        let mut net = Net::with_config(3, config);
        net.tick(40);
        let leader = net.leader_of("t-0").unwrap();
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        net.down.insert(victim);
        net.propose_each(leader, "s", 40);
        for id in (1..=3).filter(|id| *id != victim) {
            let dropped = net.drivers[&id]
                .storage("t-0")
                .unwrap()
                .lock()
                .apply_retention(0)
                .unwrap();
            assert!(dropped > 0, "broker {id} kept every entry");
        }
        let leader_first = net.drivers[&leader]
            .storage("t-0")
            .unwrap()
            .lock()
            .first_index();
        assert!(
            leader_first > 2,
            "the leader no longer has what the victim needs"
        );
        net.down.clear();
        net.tick(40);
        net.drivers
            .get_mut(&leader)
            .unwrap()
            .propose("t-0", batch("after", 2).to_vec())
            .unwrap();
        net.settle();
        let view = |id: u64| {
            let s = net.drivers[&id].storage("t-0").unwrap().lock();
            let commit = s.hard_state().commit;
            let tail: Vec<(i64, bytes::Bytes)> = (leader_first.max(s.first_index())..=commit)
                .map(|i| {
                    let p = s.position(i).unwrap();
                    (p.base_offset, s.log().read_batch(p.base_offset).unwrap())
                })
                .collect();
            (s.first_index(), commit, tail)
        };
        let (_, leader_commit, leader_tail) = view(leader);
        let (victim_first, victim_commit, victim_tail) = view(victim);
        assert!(
            victim_first >= leader_first,
            "the victim restarted from the snapshot"
        );
        assert_eq!(victim_commit, leader_commit);
        assert!(leader_tail.ends_with(&victim_tail) && !victim_tail.is_empty());
        let start = net.drivers[&victim]
            .storage("t-0")
            .unwrap()
            .lock()
            .log()
            .log_start_offset();
        assert_eq!(
            start, victim_tail[0].0,
            "the victim's log starts where the snapshot said"
        );
    }

    #[test]
    fn the_same_seed_elects_the_same_leaders() {
        let run = |seed| {
            let mut net = Net::new(seed);
            net.tick(50);
            GROUPS.iter().map(|g| net.leader_of(g)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let spread: BTreeSet<Vec<Option<u64>>> = (1..8).map(run).collect();
        assert!(
            spread.len() > 1,
            "different seeds should not all elect the same leaders"
        );
    }

    /// A group `t-0` with a leader, a follower and a few committed batches; the message
    /// the leader would send the follower as a heartbeat, which the follower takes.
    fn peer_check_setup() -> (Net, u64, u64, raft::eraftpb::Message) {
        let mut net = Net::new(5);
        net.tick(40);
        let leader = net.leader_of("t-0").unwrap();
        net.propose_each(leader, "p", 3);
        net.tick(3);
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let (_, term) = net.drivers[&follower].leader("t-0").unwrap();
        let commit = net.drivers[&follower]
            .storage("t-0")
            .unwrap()
            .lock()
            .hard_state()
            .commit;
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m.from = leader;
        m.to = follower;
        m.term = term;
        m.commit = commit;
        (net, leader, follower, m)
    }

    fn refusal(net: &mut Net, to: u64, message: raft::eraftpb::Message) -> &'static str {
        let from = message.from;
        let result = net.drivers.get_mut(&to).unwrap().step_from(
            from,
            GroupMessage {
                group: "t-0".into(),
                message,
            },
        );
        match result {
            Err(DriverError::Refused { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// Snapshot data as `ReplicaLog::snapshot` writes it (prost field 1, int64).
    fn snapshot_data(next_offset: i64) -> bytes::Bytes {
        let mut out = vec![0x08];
        let mut v = next_offset as u64;
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out.into()
    }

    /// Every shape `check_peer_message` refuses (raft-rs panics on most of them, or the
    /// next round fails), each refused without touching the replica, which then goes on
    /// replicating. The shapes the `interbroker` fuzz target found are marked (fuzz).
    #[test]
    fn peer_messages_raft_rs_cannot_take_are_refused() {
        use raft::eraftpb::{ConfState, Entry, EntryType, MessageType::*, Snapshot};
        let (mut net, leader, follower, heartbeat) = peer_check_setup();
        let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
        let before = {
            let s = net.drivers[&follower].storage("t-0").unwrap().lock();
            (
                s.hard_state().clone(),
                s.last_index(),
                s.log().log_end_offset(),
            )
        };
        let (term, commit, last_index, log_end) =
            (heartbeat.term, heartbeat.commit, before.1, before.2);
        let last_term = net.drivers[&follower]
            .storage("t-0")
            .unwrap()
            .lock()
            .term(last_index)
            .unwrap();
        let with = |f: &dyn Fn(&mut raft::eraftpb::Message)| {
            let mut m = heartbeat.clone();
            f(&mut m);
            m
        };
        let append = |entries: Vec<Entry>| {
            with(&|m| {
                m.set_msg_type(MsgAppend);
                m.index = last_index;
                m.log_term = last_term;
                m.entries = entries.clone().into();
            })
        };
        let entry = |index: u64, term: u64, data: bytes::Bytes| {
            let mut e = Entry::default();
            e.index = index;
            e.term = term;
            e.data = data;
            e
        };
        let snapshot = |index: u64, snap_term: u64, voters: Vec<u64>, data: bytes::Bytes| {
            with(&|m| {
                m.set_msg_type(MsgSnapshot);
                let mut snapshot = Snapshot::default();
                let meta = snapshot.mut_metadata();
                meta.index = index;
                meta.term = snap_term;
                let mut cs = ConfState::default();
                cs.voters = voters.clone();
                meta.set_conf_state(cs);
                snapshot.data = data.clone();
                m.set_snapshot(snapshot);
            })
        };
        let good_snapshot_offset = log_end + 10;
        let cases: Vec<(&str, u64, raft::eraftpb::Message)> = vec![
            (
                "a local message type",
                follower,
                with(&|m| m.set_msg_type(MsgHup)),
            ),
            (
                "addressed to another broker",
                follower,
                with(&|m| m.to = other),
            ),
            ("not another member", follower, with(&|m| m.from = 9)),
            // (fuzz) a follower forwards a MsgTransferLeader with the term set: panic.
            (
                "does not lead",
                follower,
                with(&|m| m.set_msg_type(MsgTransferLeader)),
            ),
            (
                "does not lead",
                follower,
                with(&|m| {
                    m.set_msg_type(MsgPropose);
                    m.term = 0;
                    m.entries = vec![entry(0, 0, batch("f", 1))].into();
                }),
            ),
            (
                "proposal or read index with a term",
                leader,
                with(&|m| {
                    m.set_msg_type(MsgPropose);
                    m.from = follower;
                    m.to = leader;
                    m.entries = vec![entry(0, 0, batch("f", 1))].into();
                }),
            ),
            // (fuzz) raft-rs: "stepped empty MsgProp".
            (
                "proposal without entries",
                leader,
                with(&|m| {
                    m.set_msg_type(MsgPropose);
                    m.from = follower;
                    m.to = leader;
                    m.term = 0;
                }),
            ),
            (
                "not a normal entry",
                leader,
                with(&|m| {
                    m.set_msg_type(MsgPropose);
                    m.from = follower;
                    m.to = leader;
                    m.term = 0;
                    let mut e = entry(0, 0, bytes::Bytes::new());
                    e.set_entry_type(EntryType::EntryConfChangeV2);
                    m.entries = vec![e].into();
                }),
            ),
            (
                "cannot store",
                leader,
                with(&|m| {
                    m.set_msg_type(MsgPropose);
                    m.from = follower;
                    m.to = leader;
                    m.term = 0;
                    m.entries = vec![entry(0, 0, bytes::Bytes::from_static(b"junk"))].into();
                }),
            ),
            // (fuzz) raft-rs: "term should be set when sending MsgRequestPreVoteResponse".
            (
                "term 0",
                follower,
                with(&|m| {
                    m.set_msg_type(MsgRequestPreVote);
                    m.term = 0;
                }),
            ),
            (
                "beyond MAX_PEER_TERM",
                follower,
                with(&|m| m.term = MAX_PEER_TERM + 1),
            ),
            // (fuzz) raft-rs: "to_commit 5 is out of range [last_index 4]".
            (
                "after an entry of term 0",
                follower,
                with(&|m| {
                    m.set_msg_type(MsgAppend);
                    m.index = last_index + 1;
                    m.log_term = 0;
                    m.commit = last_index + 1;
                }),
            ),
            (
                "one by one",
                follower,
                append(vec![entry(last_index + 2, term, batch("a", 1))]),
            ),
            (
                "term is 0",
                follower,
                append(vec![entry(last_index + 1, 0, batch("a", 1))]),
            ),
            (
                "out of order",
                follower,
                append(vec![entry(last_index + 1, term + 1, batch("a", 1))]),
            ),
            (
                "cannot store",
                follower,
                append(vec![entry(
                    last_index + 1,
                    term,
                    bytes::Bytes::from_static(b"not a batch"),
                )]),
            ),
            (
                "carries none",
                follower,
                with(&|m| m.entries = vec![entry(last_index + 1, term, batch("a", 1))].into()),
            ),
            // (fuzz) raft-rs: "need non-empty snapshot" (the leader answers with its
            // storage's snapshot, empty while retention never moved the log start).
            (
                "request for a snapshot",
                leader,
                with(&|m| {
                    m.set_msg_type(MsgAppendResponse);
                    m.from = follower;
                    m.to = leader;
                    m.reject = true;
                    m.index = last_index;
                    m.reject_hint = last_index;
                    m.request_snapshot = 1;
                }),
            ),
            (
                "snapshot in a message that carries none",
                follower,
                with(&|m| m.set_snapshot(Snapshot::default())),
            ),
            (
                "index 0 or of term 0",
                follower,
                snapshot(
                    commit + 5,
                    0,
                    vec![1, 2, 3],
                    snapshot_data(good_snapshot_offset),
                ),
            ),
            (
                "later term",
                follower,
                snapshot(
                    commit + 5,
                    term + 1,
                    vec![1, 2, 3],
                    snapshot_data(good_snapshot_offset),
                ),
            ),
            // raft-rs: "unable to restore config".
            (
                "plain set",
                follower,
                snapshot(
                    commit + 5,
                    term,
                    vec![],
                    snapshot_data(good_snapshot_offset),
                ),
            ),
            (
                "plain set",
                follower,
                snapshot(
                    commit + 5,
                    term,
                    vec![1, 2, 2, 3],
                    snapshot_data(good_snapshot_offset),
                ),
            ),
            // `ReplicaLog::apply_snapshot` fails: the round fails, the broker stops.
            (
                "undecodable snapshot data",
                follower,
                snapshot(
                    commit + 5,
                    term,
                    vec![1, 2, 3],
                    bytes::Bytes::from_static(b"\xff"),
                ),
            ),
            // The log would restart below its committed batches.
            (
                "reuse offsets",
                follower,
                snapshot(commit + 5, term, vec![1, 2, 3], snapshot_data(0)),
            ),
            (
                "reuse offsets",
                follower,
                snapshot(commit + 5, term, vec![1, 2, 3], snapshot_data(log_end + 1)),
            ),
            (
                "beyond MAX_SNAPSHOT_OFFSET",
                follower,
                snapshot(commit + 5, term, vec![1, 2, 3], snapshot_data(i64::MAX)),
            ),
        ];
        for (expected, to, message) in cases {
            let shown = format!("{message:?}");
            let reason = refusal(&mut net, to, message);
            assert!(
                reason.contains(expected),
                "{shown}: refused for {reason:?}, expected {expected:?}"
            );
        }
        // The frame's sender must be the message's.
        let result = net.drivers.get_mut(&follower).unwrap().step_from(
            other,
            GroupMessage {
                group: "t-0".into(),
                message: heartbeat.clone(),
            },
        );
        assert!(matches!(result, Err(DriverError::Refused { .. })));
        let after = {
            let s = net.drivers[&follower].storage("t-0").unwrap().lock();
            (
                s.hard_state().clone(),
                s.last_index(),
                s.log().log_end_offset(),
            )
        };
        assert_eq!(before, after, "a refused message changed the replica");
        // A heartbeat committing past this replica's log (raft-rs: "to_commit .. is out
        // of range") is what a follower that lost its disk receives: taken, committing
        // nothing.
        net.drivers
            .get_mut(&follower)
            .unwrap()
            .step_from(
                leader,
                GroupMessage {
                    group: "t-0".into(),
                    message: with(&|m| m.commit = last_index + 5),
                },
            )
            .unwrap();
        let commit_after = net.drivers[&follower]
            .storage("t-0")
            .unwrap()
            .lock()
            .hard_state()
            .commit;
        assert_eq!(
            commit_after, before.0.commit,
            "a heartbeat past the log committed"
        );
        // The real heartbeat is taken, and the group goes on committing.
        net.drivers
            .get_mut(&follower)
            .unwrap()
            .step_from(
                leader,
                GroupMessage {
                    group: "t-0".into(),
                    message: heartbeat,
                },
            )
            .unwrap();
        let index = net
            .drivers
            .get_mut(&leader)
            .unwrap()
            .propose("t-0", batch("after", 1).to_vec())
            .unwrap();
        net.settle();
        net.tick(3);
        assert!(net.committed[&follower]
            .iter()
            .any(|c| c.group == "t-0" && c.index == index));
    }
}

mod transport {
    //! Raft batches between two brokers over loopback TCP.

    use crate::replication::driver::GroupMessage;
    use crate::replication::transport::*;
    use raft::eraftpb::{Message, MessageType};
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    fn message(to: u64, term: u64) -> GroupMessage {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = to;
        m.from = 1;
        m.term = term;
        GroupMessage {
            group: format!("t-{term}"),
            message: m,
        }
    }

    #[test]
    fn frames_roundtrip() {
        let batch = vec![message(2, 1), message(2, 2)];
        let frame = encode_frame(1, &batch).unwrap();
        let (from, back) = decode_frame(&frame[4..]).unwrap();
        assert_eq!((from, back), (1, batch));
        assert!(decode_frame(b"\xff\xff\xff").is_err());
    }

    #[tokio::test]
    async fn batches_reach_the_peer_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (inbox_tx, mut inbox) = mpsc::channel(16);
        tokio::spawn(serve_peers(listener, inbox_tx));
        let transport = Transport::start(
            1,
            &BTreeMap::from([(1, "127.0.0.1:1".parse().unwrap()), (2, addr)]),
        );
        for term in 1..=20 {
            transport.send(2, vec![message(2, term)]);
        }
        transport.send(9, vec![message(9, 1)]);
        assert_eq!(
            transport.dropped_batches(),
            1,
            "a batch for an unknown peer is dropped"
        );
        for term in 1..=20 {
            let (from, batch) = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((from, batch), (1, vec![message(2, term)]));
        }
    }

    #[tokio::test]
    async fn bad_frames_close_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (inbox_tx, mut inbox) = mpsc::channel(16);
        tokio::spawn(serve_peers(listener, inbox_tx));
        for frame in [
            vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
            vec![0xff, 0xff, 0xff, 0xff],
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&frame).await.unwrap();
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .unwrap();
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "the broker must close the connection"
            );
        }
        assert!(
            inbox.try_recv().is_err(),
            "nothing from a bad frame reaches the driver"
        );
    }
}

mod metadata_group {
    //! The metadata log replicated by three drivers: proposals from any broker commit
    //! once, and every broker's image ends the same.

    use crate::log::LogConfig;
    use crate::metadata::log_codec::{decode_batch, encode_batch};
    use crate::metadata::records::*;
    use crate::metadata::*;
    use crate::replication::driver::*;
    use crate::replication::ReplicaLog;
    use crate::storage::MemoryStorage;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    const GROUP: &str = "__cluster_metadata-0";

    struct Broker {
        driver: Driver,
        image: MetadataImage,
    }

    fn settle(brokers: &mut BTreeMap<u64, Broker>) {
        for _ in 0..1_000 {
            let mut mail = Vec::new();
            let mut moved = false;
            for broker in brokers.values_mut() {
                let out = broker.driver.round(0).unwrap();
                moved |= out.groups_synced > 0 || !out.outgoing.is_empty();
                let storage = broker.driver.storage(GROUP).unwrap().clone();
                for c in out.committed {
                    let stored = storage.lock().log().read_batch(c.base_offset).unwrap();
                    for (i, record) in decode_batch(&stored).unwrap().iter().enumerate() {
                        // A record's position is its offset in the metadata log; one that does
                        // not fit is refused the same way everywhere.
                        let _ = broker.image.apply(c.base_offset + i as i64, record);
                    }
                }
                mail.extend(out.outgoing);
            }
            for (to, batch) in mail {
                let d = &mut brokers.get_mut(&to).unwrap().driver;
                for m in batch {
                    let _ = d.step(m);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    }

    #[test]
    fn proposals_from_any_broker_reach_every_image() {
        let mut brokers: BTreeMap<u64, Broker> = (1..=3)
            .map(|id| {
                let disk = MemoryStorage::new();
                let replica = ReplicaLog::open(
                    Arc::new(disk),
                    &Path::new("/data").join(GROUP),
                    LogConfig {
                        retention_ms: -1,
                        ..LogConfig::default()
                    },
                    0,
                    &[1, 2, 3],
                )
                .unwrap();
                let mut driver = Driver::new(id, DriverConfig::default(), id);
                driver.add_group(GROUP.to_string(), replica).unwrap();
                (
                    id,
                    Broker {
                        driver,
                        image: MetadataImage::new(),
                    },
                )
            })
            .collect();
        for _ in 0..40 {
            brokers.values_mut().for_each(|b| b.driver.tick().unwrap());
            settle(&mut brokers);
        }
        // Every broker registers itself through whatever replica it has.
        for id in 1..=3u64 {
            let registration = RegisterBroker {
                node_id: id as i32,
                host: "127.0.0.1".into(),
                port: 9090 + id as i32,
                rack: None,
                incarnation_id: id,
                directory_id: 0,
            };
            let batch = encode_batch(
                &[MetadataRecord::new(Record::RegisterBroker(registration))],
                0,
            );
            brokers
                .get_mut(&id)
                .unwrap()
                .driver
                .propose_anywhere(GROUP, batch.to_vec())
                .unwrap();
        }
        settle(&mut brokers);
        // A follower creates a topic with the controller's validation against its image.
        let follower = (1..=3)
            .find(|id| {
                brokers[id]
                    .driver
                    .leader(GROUP)
                    .map(|(l, _)| l != *id)
                    .unwrap_or(false)
            })
            .unwrap();
        let config = ControllerConfig {
            session_timeout_ms: 10_000,
            default_partitions: 1,
            default_replication_factor: 3,
        };
        let unfence: Vec<MetadataRecord> = (1..=3)
            .map(|id| MetadataRecord::new(Record::UnfenceBroker(BrokerRef { node_id: id })))
            .collect();
        brokers
            .get_mut(&follower)
            .unwrap()
            .driver
            .propose_anywhere(GROUP, encode_batch(&unfence, 0).to_vec())
            .unwrap();
        settle(&mut brokers);
        let image = brokers[&follower].image.clone();
        let controller = Controller::new(config, &image, 0);
        let request = CreateTopic {
            name: "orders".into(),
            partitions: Some(3),
            replication_factor: Some(3),
            ..Default::default()
        };
        let record = controller
            .create_topic(
                &image,
                &request,
                uuid::Uuid::from_u128(9),
                PlacementSeed::default(),
            )
            .unwrap();
        brokers
            .get_mut(&follower)
            .unwrap()
            .driver
            .propose_anywhere(GROUP, encode_batch(&[record], 0).to_vec())
            .unwrap();
        settle(&mut brokers);
        let reference = &brokers[&1].image;
        assert_eq!(reference.live_brokers(), vec![1, 2, 3]);
        assert_eq!(reference.topics["orders"].partitions.len(), 3);
        for id in 2..=3 {
            assert_eq!(brokers[&id].image.brokers, reference.brokers, "broker {id}");
            assert_eq!(brokers[&id].image.topics, reference.topics, "broker {id}");
        }
    }
}

#[test]
fn retention_moves_the_start_of_the_raft_log_with_the_segments() {
    let storage = MemoryStorage::new();
    let config = LogConfig {
        segment_bytes: 300,
        retention_bytes: 400,
        ..LogConfig::default()
    };
    let open = |storage: &MemoryStorage| {
        ReplicaLog::open(
            Arc::new(storage.clone()),
            Path::new("/data/t-0"),
            config.clone(),
            0,
            &[1],
        )
        .unwrap()
    };
    let mut replica = open(&storage);
    // Terms 1 (1..=9), 2 (10..=19), 3 (20); entries 10 and 20 are their terms' no-ops.
    let entries: Vec<Entry> = (1..=20)
        .map(|i| {
            let data = if i % 10 == 0 {
                Bytes::new()
            } else {
                batch(&format!("e{i}"), 2)
            };
            entry(i, 1 + i / 10, data)
        })
        .collect();
    replica.append(&entries, 0).unwrap();
    // Nothing above the commit point may go: commit only up to 12.
    let mut hs = replica.hard_state().clone();
    hs.term = 3;
    hs.commit = 12;
    replica.set_hard_state(hs);
    replica.write_state().unwrap();
    sync(&mut replica);
    let dropped = replica.apply_retention(0).unwrap();
    assert!(
        dropped > 0,
        "small segments over retention.bytes are deleted"
    );
    let first = replica.first_index();
    assert_eq!(first, 1 + dropped as u64);
    assert!(first <= 13, "uncommitted entries are never dropped");
    assert_eq!(
        replica.position(first).unwrap().base_offset,
        replica.log().log_start_offset()
    );
    assert_eq!(
        replica.term(first - 1),
        Ok(entries[first as usize - 2].term)
    );
    assert_eq!(
        replica.entries(first - 1, first, None),
        Err(raft::StorageError::Compacted)
    );
    assert_eq!(
        replica.entries(first, 21, None).unwrap().len(),
        21 - first as usize
    );
    // After a restart the Raft indexes still line up with the batches.
    sync(&mut replica);
    drop(replica);
    let replica = open(&storage);
    assert_eq!((replica.first_index(), replica.last_index()), (first, 20));
    let e = &replica.entries(15, 16, None).unwrap()[0];
    let values = crate::client::decode_records(&e.data).unwrap();
    assert_eq!(values[0].value.as_deref(), Some(&b"e15-0"[..]));
}

#[test]
fn end_offsets_for_leader_epochs() {
    let storage = MemoryStorage::new();
    let mut replica = open_replica(&storage, 0);
    // Terms 1, 1, 3, 3, 3, 4 with two-record batches: offsets 0, 2, 4, 6, 8, 10 (end 12).
    let terms = [1, 1, 3, 3, 3, 4];
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, t)| entry(i as u64 + 1, *t, batch(&format!("e{i}"), 2)))
        .collect();
    replica.append(&entries, 0).unwrap();
    assert_eq!(replica.end_offset_for_epoch(0), None);
    assert_eq!(replica.end_offset_for_epoch(1), Some((1, 4)));
    assert_eq!(
        replica.end_offset_for_epoch(2),
        Some((1, 4)),
        "an epoch with no entries maps to the one before"
    );
    assert_eq!(replica.end_offset_for_epoch(3), Some((3, 10)));
    assert_eq!(replica.end_offset_for_epoch(4), Some((4, 12)));
    assert_eq!(replica.end_offset_for_epoch(9), Some((4, 12)));
}
