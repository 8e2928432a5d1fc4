//! Durable broker-level files in the data directory, all written atomically
//! (temporary file, fsync, rename, fsync directory) through the storage trait:
//!
//! - `meta.toml`: the node id this data directory belongs to;
//! - `recovery-point-offset-checkpoint`: per replica, the offset below which the log is
//!   known to be fsynced (recovery scans only what lies after it);
//! - `.clean-shutdown`: present only after a clean shutdown; recovery then skips the scan.

use crate::storage::{read_to_vec, write_atomic, Storage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

pub const META_FILE: &str = "meta.toml";
pub const CHECKPOINT_FILE: &str = "recovery-point-offset-checkpoint";
pub const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirMeta {
    pub node_id: i32,
}

/// Reads and writes the broker-level files of one data directory.
pub struct MetadataStore<'a> {
    pub storage: &'a dyn Storage,
    pub data_dir: &'a Path,
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

impl<'a> MetadataStore<'a> {
    fn path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }

    fn read_toml<T: for<'de> Deserialize<'de>>(&self, name: &str) -> io::Result<Option<T>> {
        let path = self.path(name);
        if !self.storage.exists(&path) {
            return Ok(None);
        }
        let bytes = read_to_vec(self.storage, &path)?;
        let text = String::from_utf8(bytes).map_err(|e| invalid(&path, e))?;
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| invalid(&path, e))
    }

    fn write_toml<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        let text = toml::to_string(value).map_err(|e| invalid(&self.path(name), e))?;
        write_atomic(self.storage, &self.path(name), text.as_bytes())
    }

    pub fn read_dir_meta(&self) -> io::Result<Option<DirMeta>> {
        self.read_toml(META_FILE)
    }

    pub fn write_dir_meta(&self, meta: &DirMeta) -> io::Result<()> {
        self.write_toml(META_FILE, meta)
    }

    pub fn read_checkpoint(&self) -> BTreeMap<String, i64> {
        let path = self.path(CHECKPOINT_FILE);
        let Ok(bytes) = read_to_vec(self.storage, &path) else {
            return BTreeMap::new();
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return BTreeMap::new();
        };
        let mut points = BTreeMap::new();
        for line in text.lines() {
            let Some((dir, offset)) = line.rsplit_once(' ') else {
                return BTreeMap::new();
            };
            let Ok(offset) = offset.parse::<i64>() else {
                return BTreeMap::new();
            };
            points.insert(dir.to_string(), offset);
        }
        points
    }

    pub fn write_checkpoint(&self, points: &BTreeMap<String, i64>) -> io::Result<()> {
        let mut text = String::new();
        for (dir, offset) in points {
            text.push_str(&format!("{dir} {offset}\n"));
        }
        write_atomic(self.storage, &self.path(CHECKPOINT_FILE), text.as_bytes())
    }

    pub fn clean_shutdown_marker_exists(&self) -> bool {
        self.storage.exists(&self.path(CLEAN_SHUTDOWN_FILE))
    }

    pub fn write_clean_shutdown_marker(&self) -> io::Result<()> {
        write_atomic(self.storage, &self.path(CLEAN_SHUTDOWN_FILE), b"clean\n")
    }

    pub fn remove_clean_shutdown_marker(&self) -> io::Result<()> {
        let path = self.path(CLEAN_SHUTDOWN_FILE);
        if self.storage.exists(&path) {
            self.storage.remove_file(&path)?;
            self.storage.sync_dir(self.data_dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn files_roundtrip() {
        let storage = MemoryStorage::new();
        let dir = Path::new("/data");
        storage.create_dir_all(dir).unwrap();
        let store = MetadataStore {
            storage: &storage,
            data_dir: dir,
        };
        assert_eq!(store.read_dir_meta().unwrap(), None);
        store.write_dir_meta(&DirMeta { node_id: 3 }).unwrap();
        assert_eq!(store.read_dir_meta().unwrap(), Some(DirMeta { node_id: 3 }));
        let mut points = BTreeMap::new();
        points.insert("a.b-c-0".to_string(), 42);
        store.write_checkpoint(&points).unwrap();
        assert_eq!(store.read_checkpoint(), points);
        assert!(!store.clean_shutdown_marker_exists());
        store.write_clean_shutdown_marker().unwrap();
        assert!(store.clean_shutdown_marker_exists());
        store.remove_clean_shutdown_marker().unwrap();
        assert!(!store.clean_shutdown_marker_exists());
    }
}
