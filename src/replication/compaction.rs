//! The replicated clean command: how every replica of a compacted partition cleans the
//! same records at the same point of its log.
//!
//! The partition's leader decides (`cluster` cleaner loop): it proposes a CLEAN control
//! batch (see `entry_codec`) naming the range to clean, how many keys it holds, and the
//! keys whose history goes (latest record a tombstone older than the horizon the leader
//! computed from its clock and `delete.retention.ms`). The batch is an ordinary Raft
//! entry that takes one offset, like a leader's no-op. Once it is committed, every
//! replica applies it to its own log (`PartitionLog::clean`), with only what the command
//! says: no replica reads its clock or its own config for it.
//!
//! A follower that receives entries the leader already cleaned (catching up, or repaired)
//! gets the cleaned bytes, next to its own older ones; applying the same commands in
//! order then ends with the same bytes as the others (see `log::cleaner`: records are
//! dropped only when a later record of the key is still there, which cleaning never
//! removes, or when the command lists the key). A crash during a clean leaves each
//! segment old or new; the commands after the last one applied to the end
//! (`cleaner-checkpoint`) are applied again when the replica opens (`ReplicaLog::open`).
//! A clean that meets a corrupt batch changes nothing; it and the commands after it are
//! put back and applied once the repair from a peer has replaced the damage
//! (`ReplicaLog::requeue_clean_commands`): each command cleans only its own range, so no
//! later one would make up for it.

use super::entry_codec::{control_batch, CONTROL_TYPE_CLEAN};
use crate::log::cleaner::KeyMap;
use crate::log::partition_log::CleanFailure;
use crate::log::PartitionLog;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Version byte of the command's encoding.
const CLEAN_COMMAND_VERSION: u8 = 0;
/// Version, four i64 fields, the count of deleted keys.
const CLEAN_COMMAND_FIXED_LEN: usize = 1 + 8 * 4 + 4;
/// Most keys one command deletes (tombstones past the horizon); more wait for the next.
pub const MAX_DELETED_KEYS_PER_COMMAND: usize = 4096;
/// Most keys a replica's key map takes for a command, whatever the command says.
pub const MAX_COMMAND_KEYS: usize = 1 << 24;

/// "Clean `[clean_start_offset, clean_end_offset)`, and drop every record of the keys in
/// `deleted_key_hashes` there" (keys whose latest record the leader found to be a
/// tombstone older than `delete_horizon_ms`; the horizon itself is only kept so that the
/// next leader never moves it back). `key_count` is how many distinct keys the leader found in
/// the range: every replica's key map takes at least that many (its records there are
/// the leader's or fewer), so no replica stops short of the clean point because its own
/// `log-cleaner-dedupe-buffer-size` is smaller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanCommand {
    pub clean_start_offset: i64,
    pub clean_end_offset: i64,
    pub delete_horizon_ms: i64,
    pub key_count: i64,
    /// Hashes (`log::cleaner::key_hash`) in increasing order, at most
    /// [`MAX_DELETED_KEYS_PER_COMMAND`].
    pub deleted_key_hashes: Vec<u128>,
}

impl CleanCommand {
    /// The key map bound a replica uses for this command.
    pub fn max_keys(&self, own_max_keys: usize) -> usize {
        let asked = usize::try_from(self.key_count).unwrap_or(0);
        own_max_keys
            .max(asked)
            .min(MAX_COMMAND_KEYS.max(own_max_keys))
    }
}

impl CleanCommand {
    fn encode_value(&self) -> Bytes {
        let mut value =
            BytesMut::with_capacity(CLEAN_COMMAND_FIXED_LEN + 16 * self.deleted_key_hashes.len());
        value.put_u8(CLEAN_COMMAND_VERSION);
        value.put_i64(self.clean_start_offset);
        value.put_i64(self.clean_end_offset);
        value.put_i64(self.delete_horizon_ms);
        value.put_i64(self.key_count);
        value.put_u32(self.deleted_key_hashes.len() as u32);
        for hash in &self.deleted_key_hashes {
            value.put_u128(*hash);
        }
        value.freeze()
    }

    /// The command as the batch to propose (its base offset and epoch are set when it is
    /// appended, like any entry's).
    pub fn to_batch(&self) -> Bytes {
        assert!(0 <= self.clean_start_offset && self.clean_start_offset < self.clean_end_offset);
        assert!(self.deleted_key_hashes.len() <= MAX_DELETED_KEYS_PER_COMMAND);
        control_batch(CONTROL_TYPE_CLEAN, &self.encode_value())
    }

    /// The command in a CLEAN control record's value; None when it is not one.
    pub fn decode_value(value: &[u8]) -> Option<CleanCommand> {
        if value.len() < CLEAN_COMMAND_FIXED_LEN || value[0] != CLEAN_COMMAND_VERSION {
            return None;
        }
        let mut buf = &value[1..];
        let (clean_start_offset, clean_end_offset) = (buf.get_i64(), buf.get_i64());
        let (delete_horizon_ms, key_count) = (buf.get_i64(), buf.get_i64());
        let deleted = buf.get_u32() as usize;
        if deleted > MAX_DELETED_KEYS_PER_COMMAND || buf.len() != 16 * deleted {
            return None;
        }
        let deleted_key_hashes: Vec<u128> = (0..deleted).map(|_| buf.get_u128()).collect();
        let sorted = deleted_key_hashes.windows(2).all(|w| w[0] < w[1]);
        (0 <= clean_start_offset && clean_start_offset < clean_end_offset && sorted).then_some(
            CleanCommand {
                clean_start_offset,
                clean_end_offset,
                delete_horizon_ms,
                key_count,
                deleted_key_hashes,
            },
        )
    }
}

/// What the leader's look at a partition found (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPlan {
    pub command: CleanCommand,
    pub dirty_bytes: u64,
    pub cleanable_bytes: u64,
}

/// The leader's decision for one compacted partition: the clean to propose, if any.
///
/// The cleanable range runs from the log start to the first of: the committed end, the
/// active segment's base (the active segment is never cleaned), the first batch with a
/// record younger than `min.compaction.lag.ms`, and the batch whose keys would overflow
/// the key map (`max_keys`: a larger log is cleaned in passes). Its dirty part starts
/// where the last applied clean ended. A clean is proposed when the dirty part is at least
/// `min.cleanable.dirty.ratio` of the range, when it holds a record older than
/// `max.compaction.lag.ms`, or when some key's latest record is a tombstone older than
/// the delete horizon (`now_ms - delete.retention.ms`, never below the last clean's: the
/// horizon only moves forward, whatever the leader's clock). `quiet` is what the last
/// look that proposed nothing returned: while nothing new is cleanable and the horizon
/// moved less than `max(delete.retention.ms, 1 s)` since, the log is not read again.
/// Returns the plan and, when it proposes nothing, the `quiet` mark to pass next time.
pub fn plan_clean(
    log: &PartitionLog,
    committed_end_offset: i64,
    last_clean: Option<&CleanCommand>,
    quiet: Option<QuietMark>,
    now_ms: i64,
    max_keys: usize,
) -> Result<(Option<CleanPlan>, Option<QuietMark>), CleanFailure> {
    let config = log.config();
    if !config.cleanup_policy_compact {
        return Ok((None, None));
    }
    let start = log.log_start_offset();
    let active_base = *log
        .segment_base_offsets()
        .last()
        .expect("a log always has an active segment");
    let upper = committed_end_offset.min(active_base);
    let first_dirty = last_clean.map_or(start, |c| c.clean_end_offset).max(start);
    let horizon = now_ms.saturating_sub(config.delete_retention_ms);
    let horizon = last_clean.map_or(horizon, |c| horizon.max(c.delete_horizon_ms));
    if upper <= start {
        return Ok((None, None));
    }
    if let Some(q) = quiet {
        let horizon_step = config.delete_retention_ms.max(1_000);
        if q.upper_offset == upper && horizon < q.delete_horizon_ms.saturating_add(horizon_step) {
            return Ok((None, Some(q)));
        }
    }
    let youngest_allowed_ms = now_ms.saturating_sub(config.min_compaction_lag_ms);
    let mut keys = KeyMap::new(max_keys);
    let (mut end, mut dirty_bytes, mut cleanable_bytes) = (start, 0u64, 0u64);
    let mut oldest_dirty_ms = i64::MAX;
    log.visit_batches(start, upper, |header, bytes| {
        // Only with a lag configured: a record stamped in the future by its producer's
        // clock would otherwise hold back every record after it.
        if config.min_compaction_lag_ms > 0 && header.record_max_timestamp() > youngest_allowed_ms {
            return Ok(false);
        }
        let fits = keys
            .add_batch(bytes)
            .map_err(|e| CleanFailure::Refused(e.to_string()))?;
        if !fits {
            return Ok(false);
        }
        end = header.next_offset();
        cleanable_bytes += header.size_bytes() as u64;
        if header.base_offset >= first_dirty {
            dirty_bytes += header.size_bytes() as u64;
            if !header.is_control() {
                oldest_dirty_ms = oldest_dirty_ms.min(header.base_timestamp);
            }
        }
        Ok(true)
    })?;
    let deleted_key_hashes = keys.expired_tombstones(horizon, MAX_DELETED_KEYS_PER_COMMAND);
    let ratio_met = dirty_bytes > 0
        && dirty_bytes.saturating_mul(1_000_000)
            >= cleanable_bytes.saturating_mul(config.min_cleanable_dirty_ratio_ppm as u64);
    let overdue = oldest_dirty_ms != i64::MAX
        && now_ms.saturating_sub(oldest_dirty_ms) >= config.max_compaction_lag_ms;
    if end <= start || !(ratio_met || overdue || !deleted_key_hashes.is_empty()) {
        let mark = QuietMark {
            upper_offset: upper,
            delete_horizon_ms: horizon,
        };
        return Ok((None, Some(mark)));
    }
    let command = CleanCommand {
        clean_start_offset: start,
        clean_end_offset: end,
        delete_horizon_ms: horizon,
        key_count: keys.len() as i64,
        deleted_key_hashes,
    };
    Ok((
        Some(CleanPlan {
            command,
            dirty_bytes,
            cleanable_bytes,
        }),
        None,
    ))
}

/// Where the leader last looked at a log and found nothing to clean (see [`plan_clean`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietMark {
    pub upper_offset: i64,
    pub delete_horizon_ms: i64,
}
