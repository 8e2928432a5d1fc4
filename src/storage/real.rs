//! [`Storage`] on the real filesystem (`std::fs`), used by the broker binary.

use super::{Storage, StorageFile, SyncHandle};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The real filesystem.
#[derive(Debug, Default, Clone)]
pub struct RealStorage;

impl RealStorage {
    pub fn new() -> Self {
        RealStorage
    }
}

impl Storage for RealStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        let len_bytes = file.metadata()?.len();
        Ok(Box::new(RealFile {
            file: Arc::new(file),
            len_bytes,
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

struct RealFile {
    file: Arc<File>,
    /// Tracked here so appends are positioned writes (`pwrite`) at a known end.
    len_bytes: u64,
}

impl StorageFile for RealFile {
    fn len(&self) -> u64 {
        self.len_bytes
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.len_bytes)?;
        self.len_bytes += data.len() as u64;
        Ok(())
    }

    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        if position >= self.len_bytes {
            return Ok(0);
        }
        let available = (self.len_bytes - position).min(buf.len() as u64) as usize;
        self.file.read_at(&mut buf[..available], position)
    }

    fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)?;
        self.len_bytes = len_bytes;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn SyncHandle>> {
        Ok(Arc::new(RealSyncHandle(self.file.clone())))
    }
}

struct RealSyncHandle(Arc<File>);

impl SyncHandle for RealSyncHandle {
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}
