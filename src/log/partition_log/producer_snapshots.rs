//! Producer state snapshot files (`<offset>.snapshot` beside the segments): the
//! partition's [`ProducerStateMap`] as of that offset. One is written at each segment
//! roll, so rebuilding the state reads one snapshot and at most the segments after it,
//! and the state of producers whose batches retention deleted survives.

use super::super::producer_state::ProducerStateMap;
use super::super::segment::file_stem;
use crate::storage::{read_to_vec, write_atomic, Storage};
use std::io;
use std::path::{Path, PathBuf};

pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{}{SNAPSHOT_SUFFIX}", file_stem(offset)))
}

/// Offsets of the snapshot files in `dir`, ascending.
pub fn list(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets: Vec<i64> = storage
        .list_dir(dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(SNAPSHOT_SUFFIX)?.parse().ok())
        .collect();
    offsets.sort_unstable();
    Ok(offsets)
}

/// Writes `state` as the snapshot at its end offset, durably.
pub fn write(storage: &dyn Storage, dir: &Path, state: &ProducerStateMap) -> io::Result<()> {
    write_atomic(storage, &path(dir, state.end_offset()), &state.encode())
}

/// The snapshot file at `offset`, if it exists and reads back sound.
pub fn read(storage: &dyn Storage, dir: &Path, offset: i64) -> Option<ProducerStateMap> {
    let bytes = read_to_vec(storage, &path(dir, offset)).ok()?;
    ProducerStateMap::decode(&bytes).filter(|s| s.end_offset() == offset)
}

/// The latest sound snapshot at or below `at_most`; unsound ones on the way are removed.
pub fn latest(
    storage: &dyn Storage,
    dir: &Path,
    at_most: i64,
) -> io::Result<Option<ProducerStateMap>> {
    for offset in list(storage, dir)?.into_iter().rev() {
        if offset > at_most {
            continue;
        }
        match read(storage, dir, offset) {
            Some(state) => return Ok(Some(state)),
            None => {
                tracing::warn!(dir = %dir.display(), offset, "removing an unreadable producer state snapshot");
                storage.remove_file(&path(dir, offset))?;
            }
        }
    }
    Ok(None)
}

/// Removes the snapshots above `offset` (a truncated tail's).
pub fn remove_above(storage: &dyn Storage, dir: &Path, offset: i64) -> io::Result<()> {
    for o in list(storage, dir)? {
        if o > offset {
            storage.remove_file(&path(dir, o))?;
        }
    }
    Ok(())
}

/// Removes the snapshots below `offset` (the log start after retention).
pub fn remove_below(storage: &dyn Storage, dir: &Path, offset: i64) -> io::Result<()> {
    for o in list(storage, dir)? {
        if o < offset {
            storage.remove_file(&path(dir, o))?;
        }
    }
    Ok(())
}
