//! The storage seam: the only place in Strand that touches files.
//!
//! Everything durable (segments, indexes, checkpoints, topic metadata) goes through the
//! [`Storage`] trait. [`RealStorage`] maps it onto `std::fs` for the broker binary;
//! [`MemoryStorage`] keeps files in memory with an explicit model of what has been
//! fsynced, so tests and the simulator can "crash" it and lose unsynced writes.
//!
//! Promises every implementation keeps:
//! - `append` and `truncate` change only the volatile view until `sync` is called;
//!   after `sync` returns `Ok`, everything written before the call survives a crash.
//! - a failed `sync` promises nothing about the data written since the last good sync.
//! - `rename` is atomic; it (and file creation/removal) is durable after `sync_dir` of
//!   the parent directory.
//! - reads see every write made so far through any handle (no read-your-writes gap).

mod memory;
mod real;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use memory::{DiskFaultCounts, DiskFaults, MemoryStorage};
pub use real::RealStorage;

/// A filesystem: directories of files, addressed by path.
pub trait Storage: Send + Sync + 'static {
    /// Creates a directory and its parents; succeeds if it exists.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, sorted (files and directories alike).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and appending, creating it when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes one file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// How long the next fsync pass is modelled to take. Real disks take their own time
    /// inside `sync` (zero here); a simulated slow disk returns its latency, which the
    /// replication round waits out between its writes and its fsync pass.
    fn sync_latency(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// One open file. Reads take `&self`; changes take `&mut self`.
pub trait StorageFile: Send + Sync {
    /// Current length in bytes, including unsynced appends.
    fn len(&self) -> u64;
    /// Appends `data` at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `position`; returns how many were read (0 at end).
    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Shortens the file to `len_bytes`.
    fn truncate(&mut self, len_bytes: u64) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// A handle that can sync this file without holding `&mut` on it, so a group-commit
    /// flusher can fsync outside the partition lock while appends go on.
    fn sync_handle(&self) -> io::Result<Arc<dyn SyncHandle>>;
}

/// Something that can make a file durable from another task.
pub trait SyncHandle: Send + Sync {
    /// Makes everything written to the file before this call durable.
    fn sync(&self) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes at `position`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn StorageFile, position: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(position + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        done += n;
    }
    Ok(())
}

/// Reads a whole (small) file.
pub fn read_to_vec(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let file = storage.open(path, false)?;
    let mut buf = vec![0u8; file.len() as usize];
    read_exact_at(file.as_ref(), 0, &mut buf)?;
    Ok(buf)
}

/// Replaces the file at `path` with `contents` atomically and durably:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(storage: &dyn Storage, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    if storage.exists(&tmp) {
        storage.remove_file(&tmp)?;
    }
    let mut file = storage.open(&tmp, true)?;
    file.truncate(0)?;
    file.append(contents)?;
    file.sync()?;
    drop(file);
    storage.rename(&tmp, path)?;
    // Planted bug: the rename is left to chance.
    if crate::planted::on("skip-dir-fsync") {
        return Ok(());
    }
    storage.sync_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(storage: &dyn Storage, root: &Path) {
        let dir = root.join("a/b");
        storage.create_dir_all(&dir).unwrap();
        let path = dir.join("f.log");
        let mut f = storage.open(&path, true).unwrap();
        f.append(b"hello ").unwrap();
        f.append(b"world").unwrap();
        assert_eq!(f.len(), 11);
        let mut buf = [0u8; 5];
        read_exact_at(f.as_ref(), 6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        f.truncate(5).unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f.read_at(5, &mut buf).unwrap(), 0);
        f.sync().unwrap();
        f.sync_handle().unwrap().sync().unwrap();
        drop(f);
        write_atomic(storage, &dir.join("meta"), b"v1").unwrap();
        write_atomic(storage, &dir.join("meta"), b"v2").unwrap();
        assert_eq!(read_to_vec(storage, &dir.join("meta")).unwrap(), b"v2");
        assert_eq!(
            storage.list_dir(&dir).unwrap(),
            vec!["f.log".to_string(), "meta".to_string()]
        );
        storage.rename(&path, &dir.join("g.log")).unwrap();
        assert!(!storage.exists(&path));
        assert!(storage.exists(&dir.join("g.log")));
        storage.remove_file(&dir.join("g.log")).unwrap();
        assert!(storage.open(&dir.join("g.log"), false).is_err());
        storage.remove_dir_all(&root.join("a")).unwrap();
        assert!(!storage.exists(&dir));
    }

    #[test]
    fn real_storage_behaves() {
        let tmp = tempfile::tempdir().unwrap();
        exercise(&RealStorage::new(), tmp.path());
    }

    #[test]
    fn memory_storage_behaves() {
        exercise(&MemoryStorage::new(), Path::new("/data"));
    }
}
