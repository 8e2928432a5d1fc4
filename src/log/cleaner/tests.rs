//! Unit tests and the model property of the cleaner.

use super::*;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use proptest::prelude::*;
use std::collections::BTreeSet;

/// One produced record: key, value (None: tombstone), timestamp.
type Rec = (Option<&'static str>, Option<String>, i64);

fn encode(records: &[Rec], compression: Compression, base_offset: i64) -> Bytes {
    let records: Vec<_> = records
        .iter()
        .map(|(k, v, t)| {
            (
                k.map(|k| Bytes::from(k.to_string())),
                v.clone().map(Bytes::from),
                *t,
            )
        })
        .collect();
    let bytes = crate::client::encode_records(&records, compression).unwrap();
    let mut patched = bytes.to_vec();
    batch::patch_header(&mut patched, base_offset, 3);
    Bytes::from(patched)
}

/// Batches laid one after the other from offset 0.
fn lay_out(batches: &[(Vec<Rec>, Compression)]) -> Vec<Bytes> {
    let mut offset = 0;
    batches
        .iter()
        .map(|(records, compression)| {
            let b = encode(records, *compression, offset);
            offset += records.len() as i64;
            b
        })
        .collect()
}

/// A clean as the leader plans it: the clean point and the keys whose history goes.
struct Command {
    clean_end: i64,
    deleted_keys: BTreeSet<u128>,
}

fn key_map(batches: &[Bytes], clean_end: i64) -> KeyMap {
    let mut keys = KeyMap::new(1 << 20);
    for b in batches
        .iter()
        .filter(|b| batch::parse_whole(b).unwrap().next_offset() <= clean_end)
    {
        assert!(keys.add_batch(b).unwrap());
    }
    keys
}

/// The leader's plan on its copy `batches`.
fn plan(batches: &[Bytes], clean_end: i64, delete_horizon_ms: i64) -> Command {
    Command {
        clean_end,
        deleted_keys: key_map(batches, clean_end)
            .expired_tombstones(delete_horizon_ms, usize::MAX)
            .into_iter()
            .collect(),
    }
}

/// A replica applying `command` to its copy `batches`, the way the log does.
fn apply(batches: &[Bytes], command: &Command) -> Vec<Bytes> {
    let keys = key_map(batches, command.clean_end);
    batches
        .iter()
        .map(|b| {
            if batch::parse_whole(b).unwrap().next_offset() > command.clean_end {
                return b.clone();
            }
            clean_batch(b, &keys, &command.deleted_keys)
                .unwrap()
                .unwrap_or_else(|| b.clone())
        })
        .collect()
}

/// Plans on `batches` and applies the plan to them (the leader's own clean).
fn clean_all(batches: &[Bytes], clean_end: i64, delete_horizon_ms: i64) -> Vec<Bytes> {
    apply(batches, &plan(batches, clean_end, delete_horizon_ms))
}

/// (offset, key, value) of every record, decoded with kafka-protocol.
fn decoded(batches: &[Bytes]) -> Vec<(i64, Option<Bytes>, Option<Bytes>)> {
    let mut out = Vec::new();
    for b in batches {
        let header = batch::parse_whole(b).unwrap();
        batch::verify_crc(b, &header).unwrap();
        let mut buf = b.clone();
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), header.records_count as usize);
        for r in set.records {
            out.push((r.offset, r.key, r.value));
        }
    }
    out
}

#[test]
fn keeps_latest_per_key_and_offsets() {
    let v = |s: &str| Some(s.to_string());
    let batches = lay_out(&[
        (
            vec![(Some("a"), v("a1"), 10), (Some("b"), v("b1"), 11)],
            Compression::None,
        ),
        (
            vec![(Some("a"), v("a2"), 12), (None, v("nokey"), 12)],
            Compression::Gzip,
        ),
        (
            vec![(Some("b"), None, 13), (Some("c"), v("c1"), 14)],
            Compression::Lz4,
        ),
        (vec![(Some("a"), v("a3"), 15)], Compression::None),
    ]);
    // Clean point after the third batch; the horizon keeps the tombstone.
    let cleaned = clean_all(&batches, 6, 0);
    let records = decoded(&cleaned);
    let got: Vec<(i64, Option<&[u8]>)> =
        records.iter().map(|(o, k, _)| (*o, k.as_deref())).collect();
    assert_eq!(
        got,
        vec![
            (2, Some(&b"a"[..])),
            (3, None),
            (4, Some(&b"b"[..])),
            (5, Some(&b"c"[..])),
            (6, Some(&b"a"[..]))
        ]
    );
    // The first batch is empty now, with its offsets and epoch kept.
    let first = batch::parse_whole(&cleaned[0]).unwrap();
    assert_eq!(
        (
            first.base_offset,
            first.last_offset_delta,
            first.records_count
        ),
        (0, 1, 0)
    );
    assert_eq!(first.partition_leader_epoch, 3);
    // The compressed batch keeps its codec.
    assert_eq!(
        batch::parse_whole(&cleaned[1]).unwrap().compression_codec(),
        1
    );
    // Past the horizon the tombstone goes.
    let cleaned = clean_all(&batches, 6, 14);
    assert!(decoded(&cleaned).iter().all(|(o, _, _)| *o != 4));
    // Cleaning is idempotent.
    assert_eq!(clean_all(&cleaned, 6, 14), cleaned);
}

#[test]
fn duplicate_header_keys_survive_a_rewrite() {
    // A record with two headers named "h": written by hand (kafka-protocol's Record
    // would collapse them), followed by a later record of the same key in another batch.
    fn record(offset_delta: u8, key: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8, 0, offset_delta * 2, (key.len() * 2) as u8];
        body.extend_from_slice(key);
        body.extend_from_slice(&[2, b'v', (headers.len() * 2) as u8]);
        for (k, v) in headers {
            body.push((k.len() * 2) as u8);
            body.extend_from_slice(k);
            body.push((v.len() * 2) as u8);
            body.extend_from_slice(v);
        }
        let mut out = vec![(body.len() * 2) as u8];
        out.extend(body);
        out
    }
    let template = encode(
        &[
            (Some("x"), Some("v".into()), 0),
            (Some("y"), Some("v".into()), 0),
        ],
        Compression::None,
        0,
    );
    let mut raw = record(0, b"x", &[]);
    raw.extend(record(1, b"y", &[(b"h", b"1"), (b"h", b"2")]));
    let header = batch::parse_whole(&template).unwrap();
    let mut bytes = template[..BATCH_HEADER_SIZE].to_vec();
    bytes.extend(&raw);
    let len = (bytes.len() - batch::LOG_OVERHEAD) as i32;
    bytes[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(header.records_count, 2);
    let first = Bytes::from(bytes);
    let second = encode(&[(Some("x"), Some("new".into()), 0)], Compression::None, 2);
    let cleaned = clean_all(&[first, second], 3, 0);
    // Record y, with both of its headers, is kept byte for byte.
    assert_eq!(
        &cleaned[0][BATCH_HEADER_SIZE..],
        &record(1, b"y", &[(b"h", b"1"), (b"h", b"2")])[..]
    );
}

/// A transactional batch of producer `producer_id` laid at `base_offset`.
fn txn_batch(records: &[Rec], producer_id: i64, base_offset: i64) -> Bytes {
    let plain = encode(records, Compression::None, base_offset);
    let producer = crate::client::ProducerFields {
        producer_id,
        producer_epoch: 0,
        base_sequence: 0,
        transactional: true,
    };
    crate::client::with_producer_fields(&plain, producer)
}

/// The COMMIT or ABORT marker of `producer_id`'s transaction at `offset`.
fn marker(producer_id: i64, commit: bool, offset: i64) -> Bytes {
    let marker = crate::log::txn_marker::TxnMarker {
        commit,
        coordinator_epoch: 0,
    };
    let built = crate::log::txn_marker::build_marker_batch(producer_id, 0, marker, 0);
    let mut patched = built.to_vec();
    batch::patch_header(&mut patched, offset, 3);
    Bytes::from(patched)
}

#[test]
fn aborted_transactions_shadow_nothing_and_their_records_go() {
    let v = |s: &str| Some(s.to_string());
    let batches = vec![
        encode(&[(Some("a"), v("a0"), 0)], Compression::None, 0),
        encode(&[(Some("c"), v("c0"), 0)], Compression::None, 1),
        // Producer 7's transaction, aborted at 5: a later record of "a" and one without
        // a key.
        txn_batch(
            &[(Some("a"), v("a-aborted"), 0), (None, v("x-aborted"), 0)],
            7,
            2,
        ),
        // Producer 8's transaction, committed at 6: it supersedes "c".
        txn_batch(&[(Some("c"), v("c-committed"), 0)], 8, 4),
        marker(7, false, 5),
        marker(8, true, 6),
        // Producer 9's transaction, still open at the clean point: it shadows nothing.
        txn_batch(&[(Some("a"), v("a-open"), 0)], 9, 7),
    ];
    let cleaned = clean_all(&batches, 8, 0);
    let data: Vec<(i64, Option<Bytes>)> = cleaned
        .iter()
        .filter(|b| !batch::parse_whole(b).unwrap().is_control())
        .flat_map(|b| decoded(std::slice::from_ref(b)))
        .map(|(offset, _, value)| (offset, value))
        .collect();
    let value = |s: &str| Some(Bytes::from(s.to_string()));
    assert_eq!(
        data,
        vec![
            (0, value("a0")),
            (4, value("c-committed")),
            (7, value("a-open"))
        ]
    );
    // The aborted batch stays as an empty batch (its producer fields and offsets), the
    // markers stay, nothing moves.
    let aborted = batch::parse_whole(&cleaned[2]).unwrap();
    assert_eq!(
        (
            aborted.base_offset,
            aborted.next_offset(),
            aborted.records_count
        ),
        (2, 4, 0)
    );
    assert!(aborted.is_transactional() && aborted.producer_id == 7);
    assert_eq!(cleaned[4], batches[4]);
    assert_eq!(cleaned[5], batches[5]);
    // Cleaning again changes nothing.
    assert_eq!(clean_all(&cleaned, 8, 0), cleaned);
    // Once producer 9's transaction aborts too, the next clean drops its record.
    let mut later = cleaned.clone();
    later.push(marker(9, false, 8));
    let again = clean_all(&later, 9, 0);
    assert_eq!(batch::parse_whole(&again[6]).unwrap().records_count, 0);
    assert_eq!(decoded(&again[..1]), decoded(&cleaned[..1]));
}

#[test]
fn an_abort_that_does_not_fit_the_key_map_ends_the_walk_before_it() {
    let v = |s: &str| Some(s.to_string());
    let batches = vec![
        txn_batch(&[(Some("a"), v("1"), 0)], 7, 0),
        marker(7, false, 1),
    ];
    let mut keys = KeyMap::new(1);
    assert!(keys.add_batch(&batches[0]).unwrap());
    assert!(!keys.add_batch(&batches[1]).unwrap());
    assert!(!keys.is_aborted(&batch::parse_whole(&batches[0]).unwrap()));
}

#[test]
fn key_map_refuses_past_its_bound() {
    let v = |s: &str| Some(s.to_string());
    let batches = lay_out(&[
        (
            vec![(Some("a"), v("1"), 0), (Some("b"), v("1"), 0)],
            Compression::None,
        ),
        (
            vec![(Some("a"), v("2"), 0), (Some("c"), v("1"), 0)],
            Compression::None,
        ),
    ]);
    let mut keys = KeyMap::new(2);
    assert!(keys.add_batch(&batches[0]).unwrap());
    assert!(!keys.add_batch(&batches[1]).unwrap());
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.latest_offset(b"a"), Some(0));
}

#[test]
fn damaged_batches_are_refused_not_cleaned() {
    let batch = encode(&[(Some("a"), Some("1".into()), 0)], Compression::None, 0);
    let mut bad = batch.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let keys = KeyMap::new(4);
    assert!(clean_batch(&bad, &keys, &BTreeSet::new()).is_err());
    assert!(KeyMap::new(4).add_batch(&bad).is_err());
    assert!(clean_batch(&batch[..20], &keys, &BTreeSet::new()).is_err());
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Snappy),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
    ]
}

fn record() -> impl Strategy<Value = Rec> {
    (
        prop_oneof![
            1 => Just(None),
            8 => prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(Some)
        ],
        prop::option::weighted(0.8, "[a-z]{0,6}"),
        0i64..100,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn cleaning_matches_the_model(
        batches in prop::collection::vec((prop::collection::vec(record(), 1..5), codec()), 1..8),
        cut in 0usize..8,
        horizon in 0i64..110,
        second_cut in 0usize..8,
        second_horizon in 0i64..110,
    ) {
        let laid = lay_out(&batches);
        let boundaries: Vec<i64> = std::iter::once(0)
            .chain(laid.iter().map(|b| batch::parse_whole(b).unwrap().next_offset()))
            .collect();
        let clean_end = boundaries[cut.min(boundaries.len() - 1)];
        let original = decoded(&laid);
        let cleaned = clean_all(&laid, clean_end, horizon);
        // Offsets, epochs and sizes of batches: every batch is still there, in place.
        prop_assert_eq!(cleaned.len(), laid.len());
        for (before, after) in laid.iter().zip(&cleaned) {
            let (b, a) = (batch::parse_whole(before).unwrap(), batch::parse_whole(after).unwrap());
            prop_assert_eq!(b.base_offset, a.base_offset);
            prop_assert_eq!(b.last_offset_delta, a.last_offset_delta);
            prop_assert_eq!(b.partition_leader_epoch, a.partition_leader_epoch);
            prop_assert_eq!(b.base_timestamp, a.base_timestamp);
            if a.records_count > 0 {
                prop_assert_eq!(b.compression_codec(), a.compression_codec());
            }
            if b.base_offset >= clean_end {
                prop_assert_eq!(before, after);
            }
        }
        // The model: below the clean point, the latest record of a key survives unless it
        // is a tombstone older than the horizon; records without a key always survive.
        let latest = |key: &Bytes| original.iter().filter(|(o, k, _)| *o < clean_end && k.as_ref() == Some(key)).map(|(o, _, _)| *o).max();
        let timestamps: Vec<i64> = batches.iter().flat_map(|(rs, _)| rs.iter().map(|r| r.2)).collect();
        let expected: Vec<_> = original.iter().filter(|(o, k, v)| {
            if *o >= clean_end { return true; }
            let Some(k) = k else { return true };
            latest(k) == Some(*o) && !(v.is_none() && timestamps[*o as usize] < horizon)
        }).cloned().collect();
        prop_assert_eq!(decoded(&cleaned), expected);
        // Idempotent, and the same bytes whether or not a later clean ran first (a
        // follower that caught up with batches its leader had already cleaned further).
        prop_assert_eq!(&clean_all(&cleaned, clean_end, horizon), &cleaned);
        let (end2, horizon2) = (boundaries[second_cut.min(boundaries.len() - 1)].max(clean_end), second_horizon.max(horizon));
        let first = plan(&laid, clean_end, horizon);
        let second = plan(&cleaned, end2, horizon2);
        let later = apply(&cleaned, &second);
        prop_assert_eq!(&apply(&apply(&later, &first), &second), &later);
        prop_assert_eq!(&clean_all(&laid, end2, horizon2), &later);
        // A follower that kept its own first batches and received the rest from a leader
        // that had cleaned them once or twice, then applies both commands, ends with the
        // leader's bytes (the simulator found a follower keeping a record whose
        // superseding tombstone the leader had already dropped).
        for split in 0..=laid.len() {
            for leader_copy in [&cleaned, &later] {
                let mixed: Vec<Bytes> =
                    laid[..split].iter().chain(&leader_copy[split..]).cloned().collect();
                let caught_up = apply(&apply(&mixed, &first), &second);
                prop_assert_eq!(&caught_up, &later, "split at batch {}", split);
            }
        }
    }
}
