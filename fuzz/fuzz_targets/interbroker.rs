//! `interbroker`: arbitrary inter-broker frames (the prost `PeerFrame`s of
//! `replication::transport`, carrying raft-rs messages) into a running three-broker
//! cluster (`strand_fuzz::interbroker::Cluster`: real `Driver`s, `ReplicaLog`s on
//! `MemoryStorage`, two Raft groups, a few batches committed before the input starts).
//!
//! Input: a sequence of operations (at most 64), each a tag byte (`tag % 12`):
//!
//! | tag | operation | layout after the tag |
//! | --- | --- | --- |
//! | 0 | raw frame body into a broker (decoded with `decode_frame`, stepped with `Driver::step_from` as from the frame's sender) | `to: u8`, `len: u16` big-endian, `len` bytes (fewer if the input ends) |
//! | 1 | a forged message (structure from `arbitrary`, values relative to the receiver's state), framed with `encode_frame` and delivered as above | `to: u8`, `sender: u8`, `Forged` |
//! | 2 | a real message delivered before, with up to 3 fields changed, delivered again | `which: u16` BE, `Vec<Edit>` |
//! | 3 | a real message delivered before, delivered again unchanged (a duplicate) | `which: u16` BE |
//! | 4 | deliver all queued mail | — |
//! | 5 | deliver one queued message (reordering) | `which: u16` BE |
//! | 6 | drop one queued message (loss) | `which: u16` BE |
//! | 7 | a round on every broker | — |
//! | 8 | a tick on every broker | — |
//! | 9 | the leader of a group (if any) proposes a batch | `group: u8`, `records: u8` |
//! | 10 | a broker campaigns | `node: u8`, `group: u8` |
//! | 11 | a broker restarts from its disk | `node: u8`, `power_loss: u8` (odd: power loss) |
//!
//! Brokers are `1 + to % 3`; a forged sender is `1 + sender % 4` (4 is no member).
//! With `INTERBROKER_DUMP=FILE` the run also writes FILE: the same run with every frame
//! delivered by operations 0–3 as a raw frame (operation 0), for regression tests.
//!
//! Asserted:
//! - nothing panics: `decode_frame` refuses bad bytes with an error; stepping any decoded
//!   message returns `Ok` or a `DriverError`; no round fails (in the broker a failed
//!   round stops it);
//! - after every operation and at the end, every entry a broker reported committed is
//!   still in its log at the same offsets with the same bytes, unless a snapshot moved
//!   the log start past it, and then the log never restarts below it (offsets are never
//!   reused);
//! - after the fuzzed operations, 40 ticks of normal delivery; then power loss on every
//!   broker: every replica reopens, its segments are whole CRC-valid batches (walked
//!   independently) and every entry it reported committed survived;
//! - when every message that raft-rs took was a real one (duplicates, reordering, loss,
//!   crashes, campaigns — faults Raft must tolerate), also: any two brokers' committed
//!   prefixes agree byte for byte at the same offsets, every entry committed before the
//!   input started is still on a quorum, and a batch proposed after recovery commits on
//!   every broker. A forged message that raft-rs took may be a lie about a peer's log,
//!   which Raft does not defend against; then only the checks above apply.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use strand::replication::driver::GroupMessage;
use strand::replication::transport::encode_frame;
use strand_fuzz::interbroker::{batch, Cluster, Local, GROUPS, NODES};

const MAX_OPS: usize = 64;
const RECOVERY_TICKS: usize = 40;

/// A number relative to the receiver's state, or any number.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Rel {
    Local(i8),
    Any(u64),
}

impl Rel {
    fn at(self, local: u64) -> u64 {
        match self {
            Rel::Local(d) => local.saturating_add_signed(d as i64),
            Rel::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    Local(i16),
    Any(i64),
}

impl Offset {
    fn at(self, local: i64) -> i64 {
        match self {
            Offset::Local(d) => local.saturating_add(d as i64),
            Offset::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Payload {
    Noop,
    Batch(u8),
    /// A real batch with one byte flipped.
    Corrupt(u8, u8),
    Garbage(Vec<u8>),
    ConfChangeV2(Vec<u8>),
    ConfChange(Vec<u8>),
}

impl Payload {
    fn entry(&self) -> Entry {
        let mut e = Entry::default();
        match self {
            Payload::Noop => {}
            Payload::Batch(n) => e.data = batch("forged", 1 + *n as usize % 4),
            Payload::Corrupt(n, at) => {
                let mut b = batch("forged", 1 + *n as usize % 4).to_vec();
                let at = *at as usize % b.len();
                b[at] ^= 0x5a;
                e.data = Bytes::from(b);
            }
            Payload::Garbage(d) => e.data = Bytes::from(d.clone()),
            Payload::ConfChangeV2(d) => {
                e.set_entry_type(EntryType::EntryConfChangeV2);
                e.data = Bytes::from(d.clone());
            }
            Payload::ConfChange(d) => {
                e.set_entry_type(EntryType::EntryConfChange);
                e.data = Bytes::from(d.clone());
            }
        }
        e
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct ForgedEntry {
    payload: Payload,
    term: Rel,
    /// None: the next index after the previous entry (or the message's index).
    index: Option<Rel>,
}

#[derive(Arbitrary, Debug, Clone)]
struct ForgedSnapshot {
    index: Rel,
    term: Rel,
    voters: Vec<u8>,
    learners: Vec<u8>,
    voters_outgoing: Vec<u8>,
    learners_next: Vec<u8>,
    auto_leave: bool,
    next_offset: Offset,
    /// Instead of the snapshot data Strand writes.
    garbage: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    /// The frame's sender (for `from`) or the receiver (for `to`).
    Usual,
    Node(u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Forged {
    group: u8,
    msg_type: u8,
    from: Peer,
    to: Peer,
    term: Rel,
    log_term: Rel,
    index: Rel,
    commit: Rel,
    commit_term: Rel,
    reject: bool,
    reject_hint: Rel,
    request_snapshot: Rel,
    priority: i64,
    entries: Vec<ForgedEntry>,
    snapshot: Option<ForgedSnapshot>,
}

#[derive(Arbitrary, Debug, Clone)]
enum Edit {
    Term(Rel),
    LogTerm(Rel),
    Index(Rel),
    Commit(Rel),
    Type(u8),
    From(u8),
    To(u8),
    Reject(bool),
    RejectHint(Rel),
    RequestSnapshot(Rel),
    Group(u8),
    DropEntries,
    TruncateEntries(u8),
    EntryTerm(u8, Rel),
    EntryIndex(u8, Rel),
    EntryPayload(u8, Payload),
    SnapshotIndex(Rel),
    SnapshotTerm(Rel),
    SnapshotNextOffset(Offset),
}

fn msg_type(v: u8) -> MessageType {
    use MessageType::*;
    const ALL: [MessageType; 19] = [
        MsgHup,
        MsgBeat,
        MsgPropose,
        MsgAppend,
        MsgAppendResponse,
        MsgRequestVote,
        MsgRequestVoteResponse,
        MsgSnapshot,
        MsgHeartbeat,
        MsgHeartbeatResponse,
        MsgUnreachable,
        MsgSnapStatus,
        MsgCheckQuorum,
        MsgTransferLeader,
        MsgTimeoutNow,
        MsgReadIndex,
        MsgReadIndexResp,
        MsgRequestPreVote,
        MsgRequestPreVoteResponse,
    ];
    ALL[v as usize % ALL.len()]
}

fn group_name(v: u8) -> String {
    match v % 5 {
        0 | 1 => GROUPS[0].to_string(),
        2 | 3 => GROUPS[1].to_string(),
        _ => "unknown-0".to_string(),
    }
}

/// Snapshot data as `ReplicaLog` writes it (prost: field 1, int64), encoded here by hand.
fn snapshot_data(next_offset: i64) -> Bytes {
    let mut out = vec![0x08];
    let mut v = next_offset as u64;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    Bytes::from(out)
}

fn ids(v: &[u8]) -> Vec<u64> {
    v.iter().take(5).map(|b| (*b % 5) as u64).collect()
}

fn build_snapshot(s: &ForgedSnapshot, local: &Local) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let meta = snapshot.mut_metadata();
    meta.index = s.index.at(local.commit);
    meta.term = s.term.at(local.term);
    let mut cs = ConfState::default();
    cs.voters = ids(&s.voters);
    cs.learners = ids(&s.learners);
    cs.voters_outgoing = ids(&s.voters_outgoing);
    cs.learners_next = ids(&s.learners_next);
    cs.auto_leave = s.auto_leave;
    meta.set_conf_state(cs);
    snapshot.data = match &s.garbage {
        Some(g) => Bytes::from(g.clone()),
        None => snapshot_data(s.next_offset.at(local.log_end_offset)),
    };
    snapshot
}

fn build(f: &Forged, sender: u64, to: u64, local: &Local) -> GroupMessage {
    let mut m = Message::default();
    m.set_msg_type(msg_type(f.msg_type));
    m.from = match f.from {
        Peer::Usual => sender,
        Peer::Node(n) => (n % 5) as u64,
    };
    m.to = match f.to {
        Peer::Usual => to,
        Peer::Node(n) => (n % 5) as u64,
    };
    m.term = f.term.at(local.term);
    m.log_term = f.log_term.at(local.term);
    m.index = f.index.at(local.last_index);
    m.commit = f.commit.at(local.commit);
    m.commit_term = f.commit_term.at(local.term);
    m.reject = f.reject;
    m.reject_hint = f.reject_hint.at(local.last_index);
    m.request_snapshot = f.request_snapshot.at(local.last_index);
    m.priority = f.priority;
    let mut next = m.index;
    for e in f.entries.iter().take(4) {
        let mut entry = e.payload.entry();
        entry.term = e.term.at(local.term);
        next = e
            .index
            .map(|i| i.at(local.last_index))
            .unwrap_or(next.wrapping_add(1));
        entry.index = next;
        m.entries.push(entry);
    }
    if let Some(s) = &f.snapshot {
        m.set_snapshot(build_snapshot(s, local));
    }
    GroupMessage {
        group: group_name(f.group),
        message: m,
    }
}

fn apply_edit(g: &mut GroupMessage, edit: &Edit, local: &Local) {
    let m = &mut g.message;
    match edit {
        Edit::Term(r) => m.term = r.at(local.term),
        Edit::LogTerm(r) => m.log_term = r.at(local.term),
        Edit::Index(r) => m.index = r.at(local.last_index),
        Edit::Commit(r) => m.commit = r.at(local.commit),
        Edit::Type(t) => m.set_msg_type(msg_type(*t)),
        Edit::From(n) => m.from = (n % 5) as u64,
        Edit::To(n) => m.to = (n % 5) as u64,
        Edit::Reject(r) => m.reject = *r,
        Edit::RejectHint(r) => m.reject_hint = r.at(local.last_index),
        Edit::RequestSnapshot(r) => m.request_snapshot = r.at(local.last_index),
        Edit::Group(v) => g.group = group_name(*v),
        Edit::DropEntries => m.entries.clear(),
        Edit::TruncateEntries(n) => m.entries.truncate(*n as usize % 4),
        Edit::EntryTerm(k, r) => {
            let n = m.entries.len();
            if n > 0 {
                m.entries[*k as usize % n].term = r.at(local.term);
            }
        }
        Edit::EntryIndex(k, r) => {
            let n = m.entries.len();
            if n > 0 {
                m.entries[*k as usize % n].index = r.at(local.last_index);
            }
        }
        Edit::EntryPayload(k, p) => {
            let n = m.entries.len();
            if n > 0 {
                let e = &mut m.entries[*k as usize % n];
                let new = p.entry();
                e.set_entry_type(new.get_entry_type());
                e.data = new.data;
            }
        }
        Edit::SnapshotIndex(r) => m.mut_snapshot().mut_metadata().index = r.at(local.commit),
        Edit::SnapshotTerm(r) => m.mut_snapshot().mut_metadata().term = r.at(local.term),
        Edit::SnapshotNextOffset(o) => {
            m.mut_snapshot().data = snapshot_data(o.at(local.log_end_offset));
        }
    }
}

fn node(v: u8) -> u64 {
    NODES[v as usize % NODES.len()]
}

fn u16_be(u: &mut Unstructured) -> usize {
    let b = u.bytes(2).unwrap_or(&[0, 0]);
    u16::from_be_bytes([b[0], b[1]]) as usize
}

fn u8_of(u: &mut Unstructured) -> u8 {
    u8::arbitrary(u).unwrap_or(0)
}

struct Run {
    cluster: Cluster,
    /// Some message raft-rs took was not a real one.
    lied: bool,
    /// The same run as raw frames (INTERBROKER_DUMP).
    dump: Option<Vec<u8>>,
}

impl Run {
    /// Delivers a frame body as operation 0 does; counts forged messages raft-rs took.
    fn frame(&mut self, to: u64, body: &[u8], forged: bool) {
        if let Some(dump) = self.dump.as_mut() {
            dump.push(0);
            dump.push((to - 1) as u8);
            dump.extend_from_slice(&(body.len() as u16).to_be_bytes());
            dump.extend_from_slice(body);
        }
        let taken = self.cluster.deliver_frame(to, body).unwrap_or(0);
        if forged && taken > 0 {
            self.lied = true;
        }
    }

    fn simple(&mut self, bytes: &[u8]) {
        if let Some(dump) = self.dump.as_mut() {
            dump.extend_from_slice(bytes);
        }
    }
}

fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let dump_path = std::env::var_os("INTERBROKER_DUMP");
    let mut run = Run {
        cluster: Cluster::start(false),
        lied: false,
        dump: dump_path.is_some().then(Vec::new),
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let tag = u8_of(&mut u) % 12;
        match tag {
            0 => {
                let to = node(u8_of(&mut u));
                let len = u16_be(&mut u).min(u.len());
                let body = u.bytes(len).unwrap_or(&[]).to_vec();
                run.frame(to, &body, true);
            }
            1 => {
                let to = node(u8_of(&mut u));
                let sender = 1 + (u8_of(&mut u) % 4) as u64;
                let Ok(forged) = Forged::arbitrary(&mut u) else {
                    break;
                };
                let local = run
                    .cluster
                    .local(to, &group_name(forged.group))
                    .unwrap_or_default();
                let message = build(&forged, sender, to, &local);
                if let Ok(frame) = encode_frame(sender, &[message]) {
                    run.frame(to, &frame[4..], true);
                }
            }
            2 | 3 => {
                let which = u16_be(&mut u);
                let edits: Vec<Edit> = if tag == 2 {
                    match Vec::<Edit>::arbitrary(&mut u) {
                        Ok(e) => e.into_iter().take(3).collect(),
                        Err(_) => break,
                    }
                } else {
                    Vec::new()
                };
                if run.cluster.history.is_empty() {
                    continue;
                }
                let mail = run.cluster.history[which % run.cluster.history.len()].clone();
                let mut message = mail.message.clone();
                let local = run
                    .cluster
                    .local(mail.to, &message.group)
                    .unwrap_or_default();
                for edit in &edits {
                    apply_edit(&mut message, edit, &local);
                }
                let forged = message != mail.message;
                if let Ok(frame) = encode_frame(mail.from, &[message]) {
                    run.frame(mail.to, &frame[4..], forged);
                }
            }
            4 => {
                run.simple(&[4]);
                run.cluster.deliver_all();
            }
            5 | 6 => {
                let which = u16_be(&mut u);
                run.simple(&[tag, (which >> 8) as u8, which as u8]);
                if !run.cluster.mail.is_empty() {
                    let k = which % run.cluster.mail.len();
                    let mail = run.cluster.mail.remove(k);
                    if tag == 5 {
                        run.cluster.deliver(vec![mail]);
                    }
                }
            }
            7 => {
                run.simple(&[7]);
                run.cluster.round();
            }
            8 => {
                run.simple(&[8]);
                run.cluster.tick();
            }
            9 => {
                let (g, records) = (u8_of(&mut u), u8_of(&mut u));
                run.simple(&[9, g, records]);
                let group = GROUPS[g as usize % GROUPS.len()];
                for id in NODES {
                    let d = run.cluster.drivers.get_mut(&id).unwrap();
                    if d.leader(group).map(|(l, _)| l) == Some(id) {
                        let _ = d.propose(group, batch("fuzz", 1 + records as usize % 4).to_vec());
                        break;
                    }
                }
            }
            10 => {
                let (n, g) = (u8_of(&mut u), u8_of(&mut u));
                run.simple(&[10, n, g]);
                let group = GROUPS[g as usize % GROUPS.len()];
                let _ = run
                    .cluster
                    .drivers
                    .get_mut(&node(n))
                    .unwrap()
                    .campaign(group);
            }
            _ => {
                let (n, p) = (u8_of(&mut u), u8_of(&mut u));
                run.simple(&[11, n, p]);
                run.cluster.restart(node(n), p % 2 == 1);
            }
        }
        run.cluster.check_committed_kept();
    }
    if let (Some(path), Some(dump)) = (dump_path, run.dump.as_ref()) {
        std::fs::write(path, dump).unwrap();
    }
    let mut cluster = run.cluster;
    for _ in 0..RECOVERY_TICKS {
        cluster.tick();
        cluster.settle();
    }
    cluster.check_committed_kept();
    if !run.lied {
        cluster.check_agreement();
        // Still live: the leader of each group commits a new batch on every broker.
        for group in GROUPS {
            let leader = NODES
                .iter()
                .copied()
                .find(|id| cluster.drivers[id].leader(group).map(|(l, _)| l) == Some(*id))
                .unwrap_or_else(|| panic!("{group} has no leader after recovery"));
            let index = cluster
                .drivers
                .get_mut(&leader)
                .unwrap()
                .propose(group, batch("after", 2).to_vec())
                .unwrap();
            for _ in 0..4 {
                cluster.tick();
                cluster.settle();
            }
            for id in NODES {
                assert!(
                    cluster.committed[&(id, group.to_string())].contains_key(&index),
                    "{group}/{index} proposed after recovery did not commit on broker {id}"
                );
            }
        }
        cluster.check_committed_kept();
    }
    cluster.check_crash_reopen();
}

fuzz_target!(|data: &[u8]| run(data));
