//! Compaction across replicas: every replica applies the same committed clean command
//! and ends with byte-identical batches, a replica that was away during a clean catches
//! up from its leader's cleaned batches to the same bytes, and a crash in the middle of a
//! clean reopens to a valid log of old or new segments that the next apply completes.

use super::*;
use crate::log::cleaner::record_summaries;
use crate::replication::compaction::{plan_clean, CleanCommand};

const NOW_MS: i64 = 1_000_000;

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2_000,
        cleanup_policy_compact: true,
        cleanup_policy_delete: false,
        delete_retention_ms: 0,
        min_cleanable_dirty_ratio_ppm: 0,
        ..LogConfig::default()
    }
}

/// A batch of keyed records (None: a tombstone), in the codec picked by `i`.
fn keyed(i: usize, records: &[(String, Option<String>)]) -> Bytes {
    let codecs = [Compression::None, Compression::Lz4, Compression::Gzip];
    let records: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            (
                Some(Bytes::from(k.clone())),
                v.clone().map(Bytes::from),
                1_000 + i as i64,
            )
        })
        .collect();
    crate::client::encode_records(&records, codecs[i % codecs.len()]).unwrap()
}

/// Batch `i` of the workload: four keys out of six, a tombstone now and then.
fn workload_batch(i: usize) -> Bytes {
    let records: Vec<(String, Option<String>)> = (0..4)
        .map(|j| {
            let key = format!("k{}", (i + j) % 6);
            let value = (i % 7 != 3 || j != 0).then(|| format!("{key}-v{i}-{}", "x".repeat(20)));
            (key, value)
        })
        .collect();
    keyed(i, &records)
}

impl Cluster {
    fn propose_bytes(&mut self, leader: u64, bytes: Bytes) {
        self.nodes
            .get_mut(&leader)
            .unwrap()
            .raw
            .propose(vec![], bytes.to_vec())
            .unwrap();
        self.settle();
    }

    /// The leader's plan for a clean at `NOW_MS`, proposed and committed.
    fn propose_clean(&mut self, leader: u64) -> CleanCommand {
        let plan = {
            let mut replica = self.nodes[&leader].storage.lock();
            replica.set_log_config(compact_config());
            plan_clean(
                replica.log(),
                replica.committed_end_offset(),
                replica.last_clean(),
                None,
                NOW_MS,
                1 << 20,
            )
            .unwrap()
            .0
            .expect("a dirty log is cleaned")
        };
        self.propose_bytes(leader, plan.command.to_batch());
        plan.command
    }

    /// Applies node `id`'s committed clean commands, as the broker's cleaner loop does.
    fn apply_cleans(&mut self, id: u64) -> usize {
        let mut replica = self.nodes[&id].storage.lock();
        let commands = replica.take_committed_clean_commands();
        for (offset, command) in &commands {
            replica.apply_clean(*offset, command, 1 << 20).unwrap();
        }
        commands.len()
    }
}

/// Keys of the records below `end`, in offset order (None: no key).
fn keys_below(batches: &[(i64, Bytes)], end: i64) -> Vec<(i64, Option<Bytes>, bool)> {
    batches
        .iter()
        .filter(|(offset, _)| *offset < end)
        .flat_map(|(_, bytes)| record_summaries(bytes).unwrap())
        .collect()
}

#[test]
fn replicas_clean_identically_and_a_late_replica_catches_up() {
    let mut cluster = Cluster::new();
    let leader = cluster.tick_until_leader(&[1, 2, 3]);
    for i in 0..20 {
        cluster.propose_bytes(leader, workload_batch(i));
    }
    // One follower is away for the rest of the writes and both cleans.
    let away = (1..=3).find(|id| *id != leader).unwrap();
    cluster.isolated.insert(away);
    for i in 20..45 {
        cluster.propose_bytes(leader, workload_batch(i));
    }
    let before = cluster.committed(leader);
    let first = cluster.propose_clean(leader);
    let present: Vec<u64> = (1..=3).filter(|id| *id != away).collect();
    for id in &present {
        assert_eq!(cluster.apply_cleans(*id), 1);
    }
    for i in 45..60 {
        cluster.propose_bytes(leader, workload_batch(i));
    }
    let before_second = cluster.committed(leader);
    let second = cluster.propose_clean(leader);
    assert!(second.clean_end_offset > first.clean_end_offset);
    for id in &present {
        assert_eq!(cluster.apply_cleans(*id), 1);
    }
    let reference = cluster.committed(leader);
    for id in &present {
        assert_eq!(cluster.committed(*id), reference, "replica {id} differs");
    }
    // The away replica catches up from the leader's cleaned batches, then applies both
    // commands to its own older part.
    cluster.isolated.clear();
    for _ in 0..30 {
        cluster.nodes.values_mut().for_each(|n| {
            n.raw.tick();
        });
        cluster.settle();
    }
    assert_eq!(cluster.apply_cleans(away), 2);
    assert_eq!(
        cluster.committed(away),
        reference,
        "the late replica differs"
    );

    // Nothing moved: the same batches at the same offsets, fewer records in them.
    assert_eq!(before.len() + 15 + 2, reference.len());
    for ((offset_before, bytes_before), (offset, bytes)) in before.iter().zip(&reference) {
        assert_eq!(offset_before, offset);
        let (b, a) = (
            crate::log::batch::parse_whole(bytes_before).unwrap(),
            crate::log::batch::parse_whole(bytes).unwrap(),
        );
        assert_eq!(
            (b.last_offset_delta, b.partition_leader_epoch),
            (a.last_offset_delta, a.partition_leader_epoch)
        );
        assert!(a.records_count <= b.records_count);
    }
    // The model (from the log before the second clean; cleaning composes): below the
    // clean point, each key once, at its latest offset; tombstones (past a horizon of
    // "now") gone; nothing at or above it touched.
    let end = second.clean_end_offset;
    let records = keys_below(&before_second, i64::MAX);
    let expected: Vec<_> = records
        .iter()
        .filter(|(o, k, tombstone)| {
            *o >= end
                || (!tombstone
                    && records
                        .iter()
                        .all(|(o2, k2, _)| k2 != k || o2 <= o || *o2 >= end))
        })
        .cloned()
        .collect();
    assert_eq!(keys_below(&reference, i64::MAX), expected);
    assert!(
        keys_below(&reference, end).len() <= 6,
        "at most one record per key below the clean point"
    );
}

/// A replica log with the workload's entries and a committed clean command, all durable.
fn prepared_replica(storage: &MemoryStorage) -> (ReplicaLog, CleanCommand) {
    let mut replica = ReplicaLog::open(
        Arc::new(storage.clone()),
        Path::new("/data/t-0"),
        LogConfig {
            segment_bytes: 600,
            ..compact_config()
        },
        0,
        &[1],
    )
    .unwrap();
    let mut entries: Vec<Entry> = (0..30)
        .map(|i| entry(i as u64 + 1, 1, workload_batch(i)))
        .collect();
    replica.append(&entries, 0).unwrap();
    let end = replica.log().log_end_offset();
    let mut keys = crate::log::cleaner::KeyMap::new(1 << 20);
    replica
        .log()
        .visit_batches(0, end, |_, bytes| Ok(keys.add_batch(bytes).unwrap()))
        .unwrap();
    let command = CleanCommand {
        clean_start_offset: 0,
        clean_end_offset: end,
        delete_horizon_ms: NOW_MS,
        key_count: 6,
        deleted_key_hashes: keys.expired_tombstones(NOW_MS, usize::MAX),
    };
    entries = vec![entry(31, 1, command.to_batch())];
    replica.append(&entries, 0).unwrap();
    let mut hs = replica.hard_state().clone();
    hs.term = 1;
    hs.commit = 31;
    replica.set_hard_state(hs);
    replica.write_state().unwrap();
    sync(&mut replica);
    (replica, command)
}

fn all_batches(replica: &ReplicaLog) -> Vec<Bytes> {
    (replica.first_index()..=replica.last_index())
        .map(|i| {
            let p = replica.position(i).unwrap();
            replica.log().read_batch(p.base_offset).unwrap()
        })
        .collect()
}

#[test]
fn a_crash_during_a_clean_reopens_old_or_new_and_the_clean_completes() {
    let reference_disk = MemoryStorage::new();
    let (mut reference, command) = prepared_replica(&reference_disk);
    let original = all_batches(&reference);
    let commands = reference.take_committed_clean_commands();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].1, command);
    let command_offset = commands[0].0;
    let report = reference
        .apply_clean(command_offset, &command, 1 << 20)
        .unwrap();
    assert!(report.segments_rewritten > 0);
    let cleaned = all_batches(&reference);
    assert_ne!(cleaned, original);
    // A replica with a smaller key map still cleans as far: the command says how many
    // keys the leader's map held.
    let small_disk = MemoryStorage::new();
    let (mut small, _) = prepared_replica(&small_disk);
    small.take_committed_clean_commands();
    let report = small.apply_clean(command_offset, &command, 1).unwrap();
    assert_eq!(report.cleaned_end_offset, command.clean_end_offset);
    assert_eq!(all_batches(&small), cleaned);
    let mut interrupted = 0;
    for seed in 0..60u64 {
        let disk = MemoryStorage::new();
        let (mut replica, _) = prepared_replica(&disk);
        assert_eq!(replica.take_committed_clean_commands().len(), 1);
        disk.set_faults(
            crate::storage::DiskFaults {
                write_error: 0.02,
                sync_error: 0.05,
                ..Default::default()
            },
            seed,
        );
        let result = replica.apply_clean(command_offset, &command, 1 << 20);
        interrupted += result.is_err() as usize;
        drop(replica);
        disk.set_faults(Default::default(), 0);
        if seed % 2 == 0 {
            disk.crash();
        } else {
            disk.crash_torn(seed);
        }
        let mut reopened = open_compact(&disk);
        let leftovers: Vec<_> = disk
            .file_paths()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".cleaned"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "seed {seed}: {leftovers:?} left after open"
        );
        // Every batch is whole and CRC-valid, at its offset, either before or after.
        let now = all_batches(&reopened);
        assert_eq!(now.len(), original.len(), "seed {seed}: entries lost");
        for (i, bytes) in now.iter().enumerate() {
            assert!(
                bytes == &original[i] || bytes == &cleaned[i],
                "seed {seed}: batch {i} is neither old nor cleaned"
            );
        }
        // A clean command not written down as applied is applied again at open, and
        // completes the clean.
        let again = reopened.take_committed_clean_commands();
        if result.is_ok() && again.is_empty() {
            assert_eq!(all_batches(&reopened), cleaned, "seed {seed}");
            continue;
        }
        assert_eq!(again.len(), 1, "seed {seed}");
        reopened
            .apply_clean(again[0].0, &again[0].1, 1 << 20)
            .unwrap();
        assert_eq!(all_batches(&reopened), cleaned, "seed {seed}");
    }
    assert!(
        interrupted > 5,
        "faults interrupted only {interrupted} cleans"
    );
}

fn open_compact(disk: &MemoryStorage) -> ReplicaLog {
    ReplicaLog::open(
        Arc::new(disk.clone()),
        Path::new("/data/t-0"),
        LogConfig {
            segment_bytes: 600,
            ..compact_config()
        },
        0,
        &[1],
    )
    .unwrap()
}

#[test]
fn the_leaders_plan_follows_the_compaction_configs() {
    let disk = MemoryStorage::new();
    let (mut replica, _) = prepared_replica(&disk);
    let committed = replica.committed_end_offset();
    let plan = |replica: &ReplicaLog, last: Option<CleanCommand>| {
        plan_clean(
            replica.log(),
            committed,
            last.as_ref(),
            None,
            NOW_MS,
            1 << 20,
        )
        .unwrap()
        .0
    };
    // Tombstones are kept here (a retention far in the future); see the cleaner's own
    // tests for their deletion.
    let set = |replica: &mut ReplicaLog, change: &dyn Fn(&mut LogConfig)| {
        let mut config = compact_config();
        config.segment_bytes = 600;
        config.delete_retention_ms = 10 * NOW_MS;
        change(&mut config);
        replica.set_log_config(config);
    };
    set(&mut replica, &|_| {});
    let active_base = *replica.log().segment_base_offsets().last().unwrap();
    // Everything dirty, ratio 0: clean up to the active segment.
    let first = plan(&replica, None).expect("dirty").command;
    assert_eq!(first.clean_start_offset, 0);
    assert!(first.clean_end_offset <= active_base && first.clean_end_offset > 0);
    assert_eq!(first.delete_horizon_ms, NOW_MS - 10 * NOW_MS);
    assert_eq!(first.key_count, 6, "k0..k5");
    assert!(first.deleted_key_hashes.is_empty());
    // Nothing new since the last clean: nothing to do.
    assert_eq!(plan(&replica, Some(first.clone())), None);
    // Half of it cleaned already: a ratio of 1 waits, unless a dirty record is overdue.
    let half = CleanCommand {
        clean_end_offset: first.clean_end_offset / 2,
        ..first.clone()
    };
    set(&mut replica, &|c| {
        c.min_cleanable_dirty_ratio_ppm = 1_000_000
    });
    assert_eq!(plan(&replica, Some(half.clone())), None);
    set(&mut replica, &|c| {
        c.min_cleanable_dirty_ratio_ppm = 1_000_000;
        c.max_compaction_lag_ms = NOW_MS - 1_100;
    });
    assert!(
        plan(&replica, Some(half)).is_some(),
        "an overdue record forces a clean"
    );
    // min.compaction.lag.ms: batches stamped after now - lag (record times 1000 + i) stay.
    set(&mut replica, &|c| c.min_compaction_lag_ms = NOW_MS - 1_010);
    let lagged = plan(&replica, None).expect("old enough records").command;
    assert!(lagged.clean_end_offset < first.clean_end_offset);
    let young = replica
        .log()
        .batch_headers()
        .unwrap()
        .into_iter()
        .filter(|h| h.base_offset < lagged.clean_end_offset && !h.is_control())
        .any(|h| h.max_timestamp > 1_010);
    assert!(!young, "a record younger than the lag is in the clean");
    // The horizon never goes back, whatever this leader's clock says.
    set(&mut replica, &|_| {});
    let ahead = CleanCommand {
        clean_end_offset: 1,
        delete_horizon_ms: NOW_MS + 5_000,
        ..first.clone()
    };
    assert_eq!(
        plan(&replica, Some(ahead))
            .unwrap()
            .command
            .delete_horizon_ms,
        NOW_MS + 5_000
    );
    // The leader's look that found nothing is not repeated while nothing changed.
    let (none, quiet) = plan_clean(
        replica.log(),
        committed,
        Some(&first),
        None,
        NOW_MS,
        1 << 20,
    )
    .unwrap();
    assert_eq!(none, None);
    let quiet = quiet.expect("a look that found nothing leaves a mark");
    let (again, kept) = plan_clean(
        replica.log(),
        committed,
        Some(&first),
        Some(quiet),
        NOW_MS,
        1 << 20,
    )
    .unwrap();
    assert_eq!((again, kept), (None, Some(quiet)));
    // A topic that is not compacted is never planned.
    set(&mut replica, &|c| c.cleanup_policy_compact = false);
    assert_eq!(plan(&replica, None), None);
}

#[test]
fn a_damaged_batch_stops_the_clean_before_any_rewrite() {
    let disk = MemoryStorage::new();
    let (mut replica, command) = prepared_replica(&disk);
    replica.take_committed_clean_commands();
    let logs = |disk: &MemoryStorage| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = disk
            .file_paths()
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
            .map(|f| {
                let data = crate::storage::read_to_vec(disk, &f).unwrap();
                (f, data)
            })
            .collect();
        files.sort();
        files
    };
    // The second batch's length, outside the CRC, now runs past its segment: a walk of
    // the segment's headers ends early there.
    let stored = replica
        .log()
        .read_batch(replica.position(2).unwrap().base_offset)
        .unwrap();
    let (path, at) = logs(&disk)
        .into_iter()
        .find_map(|(f, data)| {
            Some((
                f,
                data.windows(stored.len()).position(|w| w == &stored[..])?,
            ))
        })
        .unwrap();
    assert!(disk.corrupt(&path, at + 8, &100_000i32.to_be_bytes()));
    let before = logs(&disk);
    let result = replica.apply_clean(32, &command, 1 << 20);
    assert!(
        matches!(
            result,
            Err(crate::log::partition_log::CleanFailure::Corrupt { .. })
        ),
        "{result:?}"
    );
    assert_eq!(
        logs(&disk),
        before,
        "a segment was rewritten around the damage"
    );
}

/// A clean that met a corrupt batch is put back (`requeue_clean_commands`) and applied
/// once the replica is whole again: no later command covers its range, so without it
/// the replica would keep records the others dropped (simulator, seed 19 of 6d0bc5f).
#[test]
fn a_clean_put_back_after_meeting_damage_is_applied_later() {
    let mut cluster = Cluster::new();
    let leader = cluster.tick_until_leader(&[1, 2, 3]);
    for i in 0..30 {
        cluster.propose_bytes(leader, workload_batch(i));
    }
    let before = cluster.committed(leader);
    cluster.propose_clean(leader);
    assert_eq!(cluster.apply_cleans(leader), 1);
    assert_ne!(
        cluster.committed(leader),
        before,
        "the clean dropped records"
    );
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    {
        let mut replica = cluster.nodes[&follower].storage.lock();
        let taken = replica.take_committed_clean_commands();
        assert_eq!(taken.len(), 1);
        assert!(replica.take_committed_clean_commands().is_empty());
        replica.requeue_clean_commands(taken);
    }
    assert_eq!(cluster.apply_cleans(follower), 1);
    assert_eq!(cluster.committed(follower), cluster.committed(leader));
}
