//! The aborted transaction index (`.txnindex` beside each segment, Kafka's
//! `TransactionIndex`): one entry per ABORT marker in the segment, saying which offsets
//! of which producer a `read_committed` consumer must skip. A fetch returns the entries
//! that overlap what it reads as `aborted_transactions`, so consumers need not hold
//! every marker to know what to drop.
//!
//! Kafka's file format, big-endian, 34 bytes per entry: version (int16, 0), producer id
//! (int64), first offset (int64), last offset (int64: the marker's offset), last stable
//! offset (int64: as of the marker). Entries are in marker (last offset) order. Pure
//! encode/decode here; the file lives with its segment (`segment.rs`).

/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 34;
/// The only entry version.
pub const ENTRY_VERSION: i16 = 0;

/// One aborted transaction of one producer in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// The transaction's first offset in the partition.
    pub first_offset: i64,
    /// The ABORT marker's offset.
    pub last_offset: i64,
    /// The partition's last stable offset once the marker was applied.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        debug_assert!(self.first_offset <= self.last_offset);
        let mut out = [0u8; ENTRY_BYTES];
        out[0..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        out[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        out
    }

    /// One entry; `None` for a wrong version or impossible offsets.
    pub fn decode(bytes: &[u8; ENTRY_BYTES]) -> Option<AbortedTxn> {
        let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        if i16::from_be_bytes([bytes[0], bytes[1]]) != ENTRY_VERSION {
            return None;
        }
        let txn = AbortedTxn {
            producer_id: i64_at(2),
            first_offset: i64_at(10),
            last_offset: i64_at(18),
            last_stable_offset: i64_at(26),
        };
        let sound =
            txn.producer_id >= 0 && txn.first_offset >= 0 && txn.first_offset <= txn.last_offset;
        sound.then_some(txn)
    }

    /// Whether a read of `[start_offset, end_offset)` returns any of this transaction.
    pub fn overlaps(&self, start_offset: i64, end_offset: i64) -> bool {
        self.last_offset >= start_offset && self.first_offset < end_offset
    }
}

/// Encodes entries back to back.
pub fn encode_all(entries: &[AbortedTxn]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.encode()).collect()
}

/// Decodes a whole `.txnindex` file whose markers lie in `[base_offset, next_offset)`
/// (the segment's offsets). `None` when it is torn (a partial entry), holds a malformed
/// entry, an entry outside the segment or entries out of marker order: the caller
/// rebuilds it from the log.
pub fn decode_all(bytes: &[u8], base_offset: i64, next_offset: i64) -> Option<Vec<AbortedTxn>> {
    if !bytes.len().is_multiple_of(ENTRY_BYTES) {
        return None;
    }
    let mut out: Vec<AbortedTxn> = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    for chunk in bytes.chunks_exact(ENTRY_BYTES) {
        let txn = AbortedTxn::decode(chunk.try_into().unwrap())?;
        let in_segment = txn.last_offset >= base_offset && txn.last_offset < next_offset;
        let in_order = out.last().is_none_or(|p| p.last_offset < txn.last_offset);
        if !(in_segment && in_order) {
            return None;
        }
        out.push(txn);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txn(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
            last_stable_offset: last_offset + 1,
        }
    }

    #[test]
    fn an_entry_is_kafkas_34_bytes() {
        let bytes = txn(0x0102, 5, 9).encode();
        assert_eq!(&bytes[0..2], &[0, 0]);
        assert_eq!(&bytes[2..10], &0x0102i64.to_be_bytes());
        assert_eq!(&bytes[10..18], &5i64.to_be_bytes());
        assert_eq!(&bytes[18..26], &9i64.to_be_bytes());
        assert_eq!(&bytes[26..34], &10i64.to_be_bytes());
    }

    #[test]
    fn torn_misordered_or_foreign_files_are_refused() {
        let entries = vec![txn(1, 0, 10), txn(2, 3, 12)];
        let bytes = encode_all(&entries);
        assert_eq!(decode_all(&bytes, 0, 20), Some(entries.clone()));
        assert_eq!(decode_all(&bytes[..bytes.len() - 1], 0, 20), None);
        assert_eq!(
            decode_all(&bytes, 11, 20),
            None,
            "a marker before the segment"
        );
        assert_eq!(decode_all(&bytes, 0, 12), None, "a marker past the segment");
        let swapped = encode_all(&[entries[1], entries[0]]);
        assert_eq!(decode_all(&swapped, 0, 20), None);
        let mut bad_version = bytes.clone();
        bad_version[1] = 1;
        assert_eq!(decode_all(&bad_version, 0, 20), None);
        assert_eq!(decode_all(&[], 0, 0), Some(vec![]));
    }

    #[test]
    fn overlap_is_inclusive_of_the_marker_and_exclusive_of_the_end() {
        let t = txn(1, 10, 20);
        assert!(t.overlaps(20, 21));
        assert!(!t.overlaps(21, 30));
        assert!(t.overlaps(0, 11));
        assert!(!t.overlaps(0, 10));
    }

    proptest! {
        #[test]
        fn entries_round_trip(pid in 0i64..i64::MAX, first in 0i64..1 << 40, len in 0i64..1 << 20, lso in any::<i64>()) {
            let t = AbortedTxn { producer_id: pid, first_offset: first, last_offset: first + len, last_stable_offset: lso };
            prop_assert_eq!(AbortedTxn::decode(&t.encode()), Some(t));
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_all(&bytes, 0, i64::MAX);
        }
    }
}
