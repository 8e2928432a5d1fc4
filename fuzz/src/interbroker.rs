//! The in-process cluster of the `interbroker` target (and of the seeds `make_seeds`
//! writes for it): three brokers, each a real `strand::replication::driver::Driver`
//! over `ReplicaLog`s on its own `MemoryStorage`, hosting two Raft groups. Messages
//! travel as real inter-broker frames (`encode_frame`, then `decode_frame` and
//! `Driver::step_from` on the receiving side, as the transport and the engine do).
//!
//! Unlike the rest of this crate this module *drives* the code under test; the checks
//! (`check_*`) read the replicas' logs and files back and compare them with what was
//! reported committed.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strand::log::LogConfig;
use strand::replication::driver::{Driver, DriverConfig, DriverError, GroupMessage};
use strand::replication::transport::{decode_frame, encode_frame};
use strand::replication::ReplicaLog;
use strand::storage::{read_to_vec, MemoryStorage, Storage};

pub const GROUPS: [&str; 2] = ["t-0", "t-1"];
pub const NODES: [u64; 3] = [1, 2, 3];
/// Bound on rounds of delivery in one `settle`.
const SETTLE_ROUNDS: usize = 64;

/// INTERBROKER_DEBUG set: print every frame delivered.
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("INTERBROKER_DEBUG").is_some())
}

/// A message on its way: `from` is the broker whose frame carries it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: u64,
    pub to: u64,
    pub message: GroupMessage,
}

/// What a replica reported committed: Raft index → (base offset, next offset, stored batch).
pub type CommittedLog = BTreeMap<u64, (i64, i64, Bytes)>;

pub struct Cluster {
    pub drivers: BTreeMap<u64, Driver>,
    pub disks: BTreeMap<u64, MemoryStorage>,
    /// Sent by a round, not yet delivered.
    pub mail: Vec<Mail>,
    /// Real messages delivered so far (the first 512), for replays and mutations.
    pub history: Vec<Mail>,
    /// Per (broker, group): every entry that broker reported committed.
    pub committed: BTreeMap<(u64, String), CommittedLog>,
    /// Entries committed before any fuzzed input: (group, index, base, next, batch).
    pub acked: Vec<(String, u64, i64, i64, Bytes)>,
    /// When set, every frame delivered (receiving broker, frame with its length prefix).
    pub recorded: Option<Vec<(u64, Vec<u8>)>>,
    now_ms: i64,
}

pub fn log_config() -> LogConfig {
    LogConfig {
        // Small segments, so that entries roll them.
        segment_bytes: 512,
        ..LogConfig::default()
    }
}

fn group_dir(group: &str) -> PathBuf {
    Path::new("/data").join(group)
}

fn open_driver(id: u64, disk: &MemoryStorage) -> Driver {
    let mut driver = Driver::new(id, DriverConfig::default(), 1000 + id);
    for group in GROUPS {
        let replica = ReplicaLog::open(
            Arc::new(disk.clone()),
            &group_dir(group),
            log_config(),
            0,
            &NODES,
        )
        .expect("a replica opens");
        driver
            .add_group(group.to_string(), replica)
            .expect("a group starts");
    }
    driver
}

/// A producer batch of `records` records (what a leader proposes).
pub fn batch(tag: &str, records: usize) -> Bytes {
    let values: Vec<_> = (0..records.max(1))
        .map(|i| (None, Some(Bytes::from(format!("{tag}-{i}")))))
        .collect();
    strand::client::encode_batch(&values, 1_000, kafka_protocol::records::Compression::None)
        .expect("a batch encodes")
}

impl Cluster {
    /// Three brokers; broker 1 leads `t-0`, broker 2 leads `t-1`; three batches
    /// committed in each group and the commit known to every broker. Deterministic.
    pub fn start(record: bool) -> Cluster {
        let disks: BTreeMap<u64, MemoryStorage> =
            NODES.iter().map(|id| (*id, MemoryStorage::new())).collect();
        let drivers = disks
            .iter()
            .map(|(id, disk)| (*id, open_driver(*id, disk)))
            .collect();
        let mut cluster = Cluster {
            drivers,
            disks,
            mail: Vec::new(),
            history: Vec::new(),
            committed: BTreeMap::new(),
            acked: Vec::new(),
            recorded: record.then(Vec::new),
            now_ms: 1_000,
        };
        for (leader, group) in [(1, GROUPS[0]), (2, GROUPS[1])] {
            cluster
                .drivers
                .get_mut(&leader)
                .unwrap()
                .campaign(group)
                .unwrap();
        }
        cluster.settle();
        for i in 0..3 {
            for (leader, group) in [(1, GROUPS[0]), (2, GROUPS[1])] {
                cluster
                    .drivers
                    .get_mut(&leader)
                    .unwrap()
                    .propose(group, batch(&format!("{group}/{i}"), 1 + i).to_vec())
                    .expect("the leader takes a proposal");
            }
            cluster.settle();
        }
        // Heartbeats carry the commit to the followers.
        for _ in 0..DriverConfig::default().heartbeat_tick + 1 {
            cluster.tick();
            cluster.settle();
        }
        for (leader, group) in [(1u64, GROUPS[0]), (2, GROUPS[1])] {
            let log = &cluster.committed[&(leader, group.to_string())];
            assert!(log.len() >= 4, "setup: {group} committed {}", log.len());
            for (index, (base, next, bytes)) in log {
                cluster
                    .acked
                    .push((group.to_string(), *index, *base, *next, bytes.clone()));
            }
            for id in NODES {
                let commit = cluster.drivers[&id]
                    .storage(group)
                    .unwrap()
                    .lock()
                    .hard_state()
                    .commit;
                assert!(
                    commit >= *log.keys().last().unwrap(),
                    "setup: broker {id} does not know the commit of {group}"
                );
            }
        }
        cluster
    }

    /// The hard state term and last index of `group` on broker `id`, if hosted.
    pub fn local(&self, id: u64, group: &str) -> Option<Local> {
        let storage = self.drivers.get(&id)?.storage(group)?.lock();
        let commit = storage.hard_state().commit;
        let commit_next = storage
            .position(commit)
            .map(|p| p.next_offset)
            .unwrap_or_else(|| storage.log().log_start_offset());
        Some(Local {
            term: storage.hard_state().term,
            last_index: storage.last_index(),
            commit,
            log_end_offset: storage.log().log_end_offset(),
            commit_next_offset: commit_next,
        })
    }

    /// One round on every broker; committed entries recorded, messages queued.
    /// Returns whether anything moved.
    pub fn round(&mut self) -> bool {
        self.now_ms += 10;
        let mut moved = false;
        for (id, driver) in self.drivers.iter_mut() {
            let out = driver.round(self.now_ms).unwrap_or_else(|e| {
                panic!("round failed on broker {id} (the broker would stop): {e}")
            });
            moved |= out.groups_synced > 0 || !out.outgoing.is_empty();
            for c in out.committed {
                let bytes = driver
                    .storage(&c.group)
                    .unwrap()
                    .lock()
                    .log()
                    .read_batch(c.base_offset)
                    .unwrap_or_else(|e| {
                        panic!(
                            "broker {id}: committed {}/{} unreadable: {e}",
                            c.group, c.index
                        )
                    });
                let log = self.committed.entry((*id, c.group.clone())).or_default();
                let now = (c.base_offset, c.next_offset, bytes);
                if let Some(before) = log.get(&c.index) {
                    assert_eq!(
                        before, &now,
                        "broker {id} reported {}/{} committed twice, differently",
                        c.group, c.index
                    );
                }
                log.insert(c.index, now);
            }
            for (to, batch) in out.outgoing {
                for message in batch {
                    self.mail.push(Mail {
                        from: *id,
                        to,
                        message,
                    });
                }
            }
        }
        moved
    }

    /// Delivers a frame body from `sender`'s connection to broker `to`: decoded as the
    /// transport does, stepped as the engine does. Returns how many messages raft-rs
    /// took (`Ok` from `step_from`), or None when the frame does not decode.
    pub fn deliver_frame(&mut self, to: u64, body: &[u8]) -> Option<usize> {
        if let Some(recorded) = self.recorded.as_mut() {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            recorded.push((to, frame));
        }
        let (sender, messages) = decode_frame(body).ok()?;
        if debug() {
            eprintln!("frame to {to} from {sender}: {messages:?}");
        }
        let driver = self.drivers.get_mut(&to)?;
        let mut taken = 0;
        for message in messages {
            match driver.step_from(sender, message) {
                Ok(()) => taken += 1,
                Err(
                    DriverError::UnknownGroup(_)
                    | DriverError::Refused { .. }
                    | DriverError::Raft(_)
                    | DriverError::NotLeader { .. },
                ) => {}
                Err(e @ DriverError::Io(_)) => panic!("step failed on storage: {e}"),
            }
        }
        Some(taken)
    }

    /// Delivers `mail` in one frame (the way the transport batches them).
    pub fn deliver(&mut self, mail: Vec<Mail>) {
        let mut by_link: BTreeMap<(u64, u64), Vec<GroupMessage>> = BTreeMap::new();
        for m in mail {
            if self.history.len() < 512 {
                self.history.push(m.clone());
            }
            by_link.entry((m.from, m.to)).or_default().push(m.message);
        }
        for ((from, to), batch) in by_link {
            let frame = encode_frame(from, &batch).expect("a real batch frames");
            self.deliver_frame(to, &frame[4..]);
        }
    }

    pub fn deliver_all(&mut self) {
        let mail = std::mem::take(&mut self.mail);
        self.deliver(mail);
    }

    /// Rounds and deliveries until nothing moves (bounded). Returns whether it went quiet.
    pub fn settle(&mut self) -> bool {
        for _ in 0..SETTLE_ROUNDS {
            let moved = self.round();
            if !moved && self.mail.is_empty() {
                return true;
            }
            self.deliver_all();
        }
        false
    }

    pub fn tick(&mut self) {
        for driver in self.drivers.values_mut() {
            driver.tick().expect("a tick on storage without faults");
        }
    }

    /// Stops broker `id` and starts it again from its disk (after a power loss: only what
    /// was synced survives).
    pub fn restart(&mut self, id: u64, power_loss: bool) {
        self.drivers.remove(&id);
        if power_loss {
            self.disks[&id].crash();
        }
        let driver = open_driver(id, &self.disks[&id]);
        self.drivers.insert(id, driver);
    }

    /// Every entry a broker reported committed is still in its log at the same offset
    /// with the same bytes, unless its log now starts after it (a snapshot installed);
    /// the commit is within the log.
    pub fn check_committed_kept(&self) {
        for ((id, group), log) in &self.committed {
            let storage = self.drivers[id].storage(group).unwrap().lock();
            assert!(storage.hard_state().commit <= storage.last_index());
            let first_index = storage.first_index();
            let first_offset = storage
                .position(first_index)
                .map(|p| p.base_offset)
                .unwrap_or_else(|| storage.log().log_end_offset());
            for (index, (base, next, bytes)) in log {
                if *index < first_index {
                    assert!(
                        first_offset >= *next,
                        "broker {id}: {group} restarted at offset {first_offset}, \
                         below committed entry {index} at {base}..{next}: offsets reused"
                    );
                    continue;
                }
                let position = storage.position(*index).unwrap_or_else(|| {
                    panic!("broker {id}: committed {group}/{index} left the log")
                });
                assert_eq!(
                    (position.base_offset, position.next_offset),
                    (*base, *next),
                    "broker {id}: committed {group}/{index} moved"
                );
                let now = storage.log().read_batch(*base).unwrap_or_else(|e| {
                    panic!("broker {id}: committed {group}/{index} unreadable: {e}")
                });
                assert_eq!(
                    &now, bytes,
                    "broker {id}: committed {group}/{index} rewritten"
                );
            }
        }
    }

    /// Only for runs where every peer told the truth (network faults, crashes): any two
    /// brokers hold the same batches at the same offsets up to both their commits, and
    /// every entry acknowledged before the run is still on a quorum.
    pub fn check_agreement(&self) {
        for group in GROUPS {
            let views: Vec<(u64, u64, u64)> = NODES
                .iter()
                .map(|id| {
                    let s = self.drivers[id].storage(group).unwrap().lock();
                    (*id, s.first_index(), s.hard_state().commit)
                })
                .collect();
            for a in &views {
                for b in &views {
                    if a.0 >= b.0 {
                        continue;
                    }
                    let sa = self.drivers[&a.0].storage(group).unwrap().lock();
                    let sb = self.drivers[&b.0].storage(group).unwrap().lock();
                    for index in a.1.max(b.1)..=a.2.min(b.2) {
                        let (pa, pb) = (sa.position(index).unwrap(), sb.position(index).unwrap());
                        assert_eq!(
                            (pa.base_offset, pa.next_offset),
                            (pb.base_offset, pb.next_offset),
                            "{group}/{index}: brokers {} and {} disagree on offsets",
                            a.0,
                            b.0
                        );
                        assert_eq!(
                            sa.log().read_batch(pa.base_offset).unwrap(),
                            sb.log().read_batch(pb.base_offset).unwrap(),
                            "{group}/{index}: brokers {} and {} disagree on the batch",
                            a.0,
                            b.0
                        );
                    }
                }
            }
        }
        for (group, index, base, next, bytes) in &self.acked {
            let holders = NODES
                .iter()
                .filter(|id| {
                    let s = self.drivers[id].storage(group).unwrap().lock();
                    s.position(*index)
                        .filter(|p| (p.base_offset, p.next_offset) == (*base, *next))
                        .and_then(|p| s.log().read_batch(p.base_offset).ok())
                        .is_some_and(|b| &b == bytes)
                })
                .count();
            assert!(
                holders >= 2,
                "acknowledged {group}/{index} is on {holders} broker(s) only"
            );
        }
    }

    /// Power loss on every broker, then each replica reopens: every segment is whole
    /// CRC-valid batches (an independent walk), every entry reads back, and everything a
    /// broker reported committed is still there (it was synced before being reported).
    pub fn check_crash_reopen(&mut self) {
        self.drivers.clear();
        for (id, disk) in &self.disks {
            disk.crash();
            for group in GROUPS {
                let dir = group_dir(group);
                let replica =
                    ReplicaLog::open(Arc::new(disk.clone()), &dir, log_config(), 0, &NODES)
                        .unwrap_or_else(|e| {
                            panic!("broker {id}: {group} does not reopen after a crash: {e}")
                        });
                for name in disk.list_dir(&dir).unwrap() {
                    if !name.ends_with(".log") {
                        continue;
                    }
                    let bytes = read_to_vec(disk, &dir.join(&name)).unwrap();
                    let (_, stop) = crate::walk(&bytes);
                    assert_eq!(stop, None, "broker {id}: {group}/{name} after recovery");
                }
                let (first, last) = (replica.first_index(), replica.last_index());
                let entries = replica.entries(first, last + 1, None).unwrap_or_else(|e| {
                    panic!("broker {id}: {group} entries {first}..={last} unreadable: {e}")
                });
                assert_eq!(entries.len() as u64, last + 1 - first);
                if let Some(log) = self.committed.get(&(*id, group.to_string())) {
                    for (index, (base, _, bytes)) in log.range(first..) {
                        let p = replica.position(*index).unwrap_or_else(|| {
                            panic!("broker {id}: committed {group}/{index} lost in a crash")
                        });
                        assert_eq!(p.base_offset, *base);
                        assert_eq!(&replica.log().read_batch(*base).unwrap(), bytes);
                    }
                }
            }
        }
    }
}

/// A broker's view of one group, for building messages relative to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local {
    pub term: u64,
    pub last_index: u64,
    pub commit: u64,
    pub log_end_offset: i64,
    pub commit_next_offset: i64,
}
