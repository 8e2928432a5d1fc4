//! KIP-890 part 1 on the partition leader: the verification guards of transactional
//! producers (Kafka's `VerificationStateEntry`/`VerificationGuard`).
//!
//! A transactional batch that would open a producer's transaction on a partition is
//! appended only once the transaction coordinator confirmed that the partition is in
//! the producer's ongoing transaction. The produce handler takes a guard here *before*
//! it asks the coordinator, and proposes the batch with it; the driver task accepts the
//! batch only if the guard is still the partition's current one for that producer.
//! A marker proposed for the producer in between (the transaction ended while the
//! coordinator's answer travelled) removes the guard, so a late batch cannot open a
//! transaction that no marker will ever close (a hanging transaction). A guard also
//! belongs to one leadership (Raft term): everything appended in that term went
//! through this leader's proposals, which is what makes removal at proposal complete.
//!
//! A guard the coordinator confirmed stays verified until a marker (or a newer epoch
//! or term) replaces it, so the producer's next batches on the partition need no
//! round trip even before its first batch is written; once the transaction is open in
//! the log or the proposals, its batches of that epoch need no guard at all.
//!
//! Leader-local, not replicated, no I/O, no clock; bounded by [`MAX_GUARDS`] (the
//! oldest guard goes first: its produce then fails verification and is retried).

use std::collections::BTreeMap;

/// Verification guards kept at most, over every partition of the broker.
pub const MAX_GUARDS: usize = 10_000;

/// How a transactional batch was cleared for append by the produce handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAppend {
    /// No KIP-890 check: not a client's transactional batch, or verification is off.
    Unchecked,
    /// Checked: `guard` is the verification the coordinator confirmed, or None when the
    /// handler saw the producer's transaction already open on the partition.
    Checked { guard: Option<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Guard {
    producer_epoch: i16,
    guard: u64,
    term: u64,
    /// The coordinator confirmed the partition is in the transaction.
    verified: bool,
}

/// Why a guard does not let a batch in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardError {
    /// No current guard matches (never verified, or a marker or a newer epoch came in
    /// between): INVALID_TXN_STATE.
    Missing,
    /// The guard was taken in another leadership: the producer retries on the leader.
    OtherTerm,
}

/// The current guard of each (partition's Raft group, producer id).
#[derive(Debug, Default)]
pub struct TxnVerifications {
    guards: BTreeMap<(String, i64), Guard>,
    next_guard: u64,
}

impl TxnVerifications {
    /// The guard to verify `producer_id`'s transaction on `group` with, as its leader in
    /// `term`, and whether the coordinator already confirmed it: the current one if it
    /// is of the same epoch and term (batches in flight share it), else a new one.
    pub fn begin(
        &mut self,
        group: &str,
        producer_id: i64,
        producer_epoch: i16,
        term: u64,
    ) -> (u64, bool) {
        assert!(producer_id >= 0 && producer_epoch >= 0);
        let key = (group.to_string(), producer_id);
        if let Some(g) = self.guards.get(&key) {
            if g.producer_epoch == producer_epoch && g.term == term {
                return (g.guard, g.verified);
            }
        }
        if self.guards.len() >= MAX_GUARDS && !self.guards.contains_key(&key) {
            let oldest = self
                .guards
                .iter()
                .min_by_key(|(_, g)| g.guard)
                .map(|(k, _)| k.clone())
                .expect("full, so not empty");
            self.guards.remove(&oldest);
        }
        self.next_guard += 1;
        let guard = self.next_guard;
        self.guards.insert(
            key,
            Guard {
                producer_epoch,
                guard,
                term,
                verified: false,
            },
        );
        assert!(self.guards.len() <= MAX_GUARDS);
        (guard, false)
    }

    /// The coordinator confirmed `guard`: later batches of its producer here skip the
    /// round trip while it stays current. A guard no longer current stays unconfirmed.
    pub fn confirm(&mut self, group: &str, producer_id: i64, guard: u64) {
        if let Some(g) = self.guards.get_mut(&(group.to_string(), producer_id)) {
            if g.guard == guard {
                g.verified = true;
            }
        }
    }

    /// Whether `guard` lets a batch of `producer_id` at `producer_epoch` open its
    /// transaction on `group`, whose leader is in `term`.
    pub fn check(
        &self,
        group: &str,
        producer_id: i64,
        producer_epoch: i16,
        guard: u64,
        term: u64,
    ) -> Result<(), GuardError> {
        match self.guards.get(&(group.to_string(), producer_id)) {
            Some(g) if g.guard == guard && g.term != term => Err(GuardError::OtherTerm),
            Some(g) if g.guard == guard && g.producer_epoch == producer_epoch => Ok(()),
            _ => Err(GuardError::Missing),
        }
    }

    /// The producer's guard on `group` is void: a marker ends its transaction.
    pub fn remove(&mut self, group: &str, producer_id: i64) {
        self.guards.remove(&(group.to_string(), producer_id));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_lets_in_its_epoch_in_its_term_until_removed() {
        let mut v = TxnVerifications::default();
        let (g, verified) = v.begin("t-0", 7, 1, 3);
        assert!(!verified);
        assert_eq!(v.check("t-0", 7, 1, g, 3), Ok(()));
        // Shared by a second batch in flight; confirmed once, confirmed for both.
        assert_eq!(v.begin("t-0", 7, 1, 3), (g, false));
        v.confirm("t-0", 7, g + 1);
        assert_eq!(v.begin("t-0", 7, 1, 3), (g, false));
        v.confirm("t-0", 7, g);
        assert_eq!(v.begin("t-0", 7, 1, 3), (g, true));
        assert_eq!(v.check("t-0", 7, 0, g, 3), Err(GuardError::Missing));
        assert_eq!(v.check("t-0", 7, 1, g, 4), Err(GuardError::OtherTerm));
        assert_eq!(v.check("t-1", 7, 1, g, 3), Err(GuardError::Missing));
        assert_eq!(v.check("t-0", 8, 1, g, 3), Err(GuardError::Missing));
        // A marker in between voids it.
        v.remove("t-0", 7);
        assert_eq!(v.check("t-0", 7, 1, g, 3), Err(GuardError::Missing));
        assert!(v.is_empty());
    }

    #[test]
    fn a_new_epoch_or_term_replaces_the_guard() {
        let mut v = TxnVerifications::default();
        let (old, _) = v.begin("t-0", 7, 1, 3);
        v.confirm("t-0", 7, old);
        let (newer, verified) = v.begin("t-0", 7, 2, 3);
        assert_ne!(old, newer);
        assert!(!verified);
        assert_eq!(v.check("t-0", 7, 1, old, 3), Err(GuardError::Missing));
        assert_eq!(v.check("t-0", 7, 2, newer, 3), Ok(()));
        let (next_term, _) = v.begin("t-0", 7, 2, 4);
        assert_ne!(next_term, newer);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn guards_are_bounded_and_the_oldest_goes_first() {
        let mut v = TxnVerifications::default();
        let (first, _) = v.begin("t-0", 0, 0, 1);
        for producer_id in 1..=MAX_GUARDS as i64 {
            v.begin("t-0", producer_id, 0, 1);
        }
        assert_eq!(v.len(), MAX_GUARDS);
        assert_eq!(v.check("t-0", 0, 0, first, 1), Err(GuardError::Missing));
    }
}
