//! [`Storage`] in memory, with a crash model, for tests and the simulator.
//!
//! Every file keeps two images: `volatile` (what reads see) and `durable` (what a
//! `sync` last made safe). [`MemoryStorage::crash`] throws the volatile images away, the
//! way a power loss drops unsynced page-cache writes. Directory entries (create, rename,
//! remove) are modelled as durable at once; the simulation issue refines that together
//! with torn writes, corruption and I/O errors.

use super::{Storage, StorageFile, SyncHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct FileImage {
    volatile: Vec<u8>,
    durable: Vec<u8>,
}

type SharedImage = Arc<Mutex<FileImage>>;

#[derive(Default)]
struct Tree {
    files: BTreeMap<PathBuf, SharedImage>,
    dirs: BTreeSet<PathBuf>,
}

/// An in-memory filesystem whose unsynced writes can be lost on purpose.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    tree: Arc<Mutex<Tree>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: every file falls back to its last synced contents.
    pub fn crash(&self) {
        let tree = self.tree.lock().unwrap();
        for image in tree.files.values() {
            let mut image = image.lock().unwrap();
            image.volatile = image.durable.clone();
        }
    }

    /// Overwrites bytes of a file in place, in both images (a bit rot on the medium).
    /// Returns false when the file does not exist or is too short.
    pub fn corrupt(&self, path: &Path, position: usize, bytes: &[u8]) -> bool {
        let tree = self.tree.lock().unwrap();
        let Some(image) = tree.files.get(path) else {
            return false;
        };
        let mut image = image.lock().unwrap();
        let end = position + bytes.len();
        if image.volatile.len() < end || image.durable.len() < end {
            return false;
        }
        image.volatile[position..end].copy_from_slice(bytes);
        image.durable[position..end].copy_from_slice(bytes);
        true
    }

    /// Every file path, sorted.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.tree.lock().unwrap().files.keys().cloned().collect()
    }

    fn has_dir(tree: &Tree, path: &Path) -> bool {
        path.as_os_str().is_empty() || path == Path::new("/") || tree.dirs.contains(path)
    }
}

impl Storage for MemoryStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        for ancestor in path.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                tree.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let tree = self.tree.lock().unwrap();
        if !Self::has_dir(&tree, path) {
            return Err(not_found(path));
        }
        let mut names = BTreeSet::new();
        // Paths order component-wise: everything below `path` follows it contiguously.
        let below = (std::ops::Bound::Excluded(path), std::ops::Bound::Unbounded);
        let files = tree.files.range::<Path, _>(below).map(|(p, _)| p);
        let dirs = tree.dirs.range::<Path, _>(below);
        let children = files
            .take_while(|p| p.starts_with(path))
            .chain(dirs.take_while(|p| p.starts_with(path)));
        for child in children {
            if child.parent() == Some(path) {
                if let Some(name) = child.file_name() {
                    names.insert(name.to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut tree = self.tree.lock().unwrap();
        let image = match tree.files.get(path) {
            Some(image) => image.clone(),
            None if create => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !Self::has_dir(&tree, parent) {
                    return Err(not_found(parent));
                }
                let image = SharedImage::default();
                tree.files.insert(path.to_path_buf(), image.clone());
                image
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(MemoryFile { image }))
    }

    fn exists(&self, path: &Path) -> bool {
        let tree = self.tree.lock().unwrap();
        tree.files.contains_key(path) || tree.dirs.contains(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        let image = tree.files.remove(from).ok_or_else(|| not_found(from))?;
        tree.files.insert(to.to_path_buf(), image);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        tree.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        if !tree.dirs.contains(path) {
            return Err(not_found(path));
        }
        tree.files.retain(|p, _| !p.starts_with(path));
        tree.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let tree = self.tree.lock().unwrap();
        if Self::has_dir(&tree, path) {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }
}

struct MemoryFile {
    image: SharedImage,
}

impl StorageFile for MemoryFile {
    fn len(&self) -> u64 {
        self.image.lock().unwrap().volatile.len() as u64
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.image.lock().unwrap().volatile.extend_from_slice(data);
        Ok(())
    }

    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let image = self.image.lock().unwrap();
        let len = image.volatile.len() as u64;
        if position >= len {
            return Ok(0);
        }
        let start = position as usize;
        let n = buf.len().min(image.volatile.len() - start);
        buf[..n].copy_from_slice(&image.volatile[start..start + n]);
        Ok(n)
    }

    fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        self.image
            .lock()
            .unwrap()
            .volatile
            .resize(len_bytes as usize, 0);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        sync_image(&self.image);
        Ok(())
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn SyncHandle>> {
        Ok(Arc::new(MemorySyncHandle(self.image.clone())))
    }
}

fn sync_image(image: &SharedImage) {
    let mut image = image.lock().unwrap();
    let FileImage { volatile, durable } = &mut *image;
    durable.clear();
    durable.extend_from_slice(volatile);
}

struct MemorySyncHandle(SharedImage);

impl SyncHandle for MemorySyncHandle {
    fn sync(&self) -> io::Result<()> {
        sync_image(&self.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_drops_unsynced_writes_only() {
        let storage = MemoryStorage::new();
        storage.create_dir_all(Path::new("/d")).unwrap();
        let mut f = storage.open(Path::new("/d/f"), true).unwrap();
        f.append(b"synced").unwrap();
        f.sync().unwrap();
        f.append(b"-lost").unwrap();
        storage.crash();
        assert_eq!(f.len(), 6);
        let handle = f.sync_handle().unwrap();
        f.append(b"+kept").unwrap();
        handle.sync().unwrap();
        storage.crash();
        assert_eq!(f.len(), 11);
    }
}
