//! [`Storage`] in memory, with a crash and disk-fault model, for tests and the simulator.
//!
//! Every file keeps two images: `volatile` (what reads see) and `durable` (what a
//! `sync` last made safe). Directory entries are modelled the same way: creating,
//! renaming or removing a file changes the visible namespace at once and the durable one
//! only when the parent directory is synced (`sync_dir`). Directories themselves are
//! durable at once.
//!
//! Crashes: [`MemoryStorage::crash`] throws every unsynced write away (a power loss with
//! nothing of the page cache written back); [`MemoryStorage::crash_torn`] keeps a random
//! part of the unsynced tail of each file, page by page and in any order (pages kept,
//! dropped, or torn in the middle), the way a power loss during writeback leaves a disk.
//!
//! Faults ([`DiskFaults`], off by default, drawn from a seeded generator so a simulation
//! replays them exactly): EIO on reads, writes and syncs, ENOSPC on appends, misdirected
//! appends (the data lands at another position of the file; where it should have gone
//! stays zero), and fsyncgate: a failed sync drops the dirty pages, so they never reach
//! the disk even if a later sync of the same file succeeds. [`MemoryStorage::corrupt`]
//! flips bits of data already on the medium; [`MemoryStorage::wipe`] is a new disk.

use super::{Storage, StorageFile, SyncHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes per page of the torn-write model.
const PAGE_BYTES: usize = 4096;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

struct FileImage {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges whose writeback failed (fsyncgate): they reach the disk as zeros,
    /// whatever later syncs of the file report.
    lost: Vec<(usize, usize)>,
    /// Below this position the two images agree (usize::MAX: they agree entirely): a
    /// sync copies only from here, not the whole file.
    dirty_from: usize,
}

impl Default for FileImage {
    fn default() -> Self {
        FileImage {
            volatile: Vec::new(),
            durable: Vec::new(),
            lost: Vec::new(),
            dirty_from: usize::MAX,
        }
    }
}

impl FileImage {
    /// What the disk holds after a sync: the volatile image without the lost ranges.
    fn written_back(&self) -> Vec<u8> {
        let mut bytes = self.volatile.clone();
        for &(start, end) in &self.lost {
            let end = end.min(bytes.len());
            if start < end {
                bytes[start..end].fill(0);
            }
        }
        bytes
    }

    /// Where the volatile image may start to differ from the durable one.
    fn dirty_from(&self) -> usize {
        self.dirty_from
            .min(self.volatile.len())
            .min(self.durable.len())
    }

    fn touched(&mut self, position: usize) {
        self.dirty_from = self.dirty_from.min(position);
    }

    /// A successful sync: the durable image becomes the volatile one, lost ranges zeroed.
    fn write_back(&mut self) {
        let from = self.dirty_from();
        let FileImage {
            volatile,
            durable,
            lost,
            ..
        } = self;
        durable.truncate(from);
        durable.extend_from_slice(&volatile[from..]);
        for &(start, end) in lost.iter() {
            let (start, end) = (start.max(from), end.min(durable.len()));
            if start < end {
                durable[start..end].fill(0);
            }
        }
        self.dirty_from = usize::MAX;
    }
}

type SharedImage = Arc<Mutex<FileImage>>;

/// A path as the tree's key: its bytes, normalized (no empty or `.` components, no
/// trailing slash), compared bytewise. A `PathBuf` key compares component by component,
/// which cost about a tenth of the simulator's time. Everything below a directory shares
/// the prefix `dir/`, so it still lies in one range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key(OsString);

impl Key {
    fn of(path: &Path) -> Key {
        let bytes = path.as_os_str().as_bytes();
        let plain = !bytes.windows(2).any(|w| w == b"//")
            && !bytes.windows(3).any(|w| w == b"/./")
            && !bytes.starts_with(b"./")
            && (bytes.len() <= 1 || !bytes.ends_with(b"/"));
        if plain {
            Key(path.as_os_str().to_owned())
        } else {
            Key(path.components().collect::<PathBuf>().into_os_string())
        }
    }

    fn path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The prefix every key below this one (as a directory) starts with.
    fn below(&self) -> Vec<u8> {
        let mut prefix = self.0.as_bytes().to_vec();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        prefix
    }
}

#[derive(Default)]
struct Tree {
    /// The namespace as it is seen now.
    files: BTreeMap<Key, SharedImage>,
    /// The namespace a crash falls back to: updated per directory by `sync_dir`.
    durable_files: BTreeMap<Key, SharedImage>,
    /// Entry changes not yet made durable, by directory: the file path and what it now
    /// names (None: removed).
    pending: BTreeMap<Key, BTreeMap<Key, Option<SharedImage>>>,
    dirs: BTreeSet<Key>,
}

impl Tree {
    fn entry_changed(&mut self, path: &Path, image: Option<SharedImage>) {
        let parent = Key::of(path.parent().unwrap_or(Path::new("")));
        self.pending
            .entry(parent)
            .or_default()
            .insert(Key::of(path), image);
    }
}

/// Rates of injected disk faults, each the probability of one call failing that way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskFaults {
    /// A read fails with EIO.
    pub read_error: f64,
    /// An append or truncate fails with EIO (nothing written).
    pub write_error: f64,
    /// A sync fails with EIO and drops the dirty pages (fsyncgate).
    pub sync_error: f64,
    /// An append fails with ENOSPC (nothing written).
    pub no_space: f64,
    /// An append lands at a random earlier position of the file instead of its end.
    pub misdirect: f64,
}

/// How many faults a [`MemoryStorage`] injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaultCounts {
    pub read_errors: u64,
    pub write_errors: u64,
    pub sync_errors: u64,
    pub no_space: u64,
    pub misdirected: u64,
    pub torn_pages: u64,
    pub bit_flips: u64,
}

impl DiskFaultCounts {
    pub fn total(&self) -> u64 {
        self.read_errors
            + self.write_errors
            + self.sync_errors
            + self.no_space
            + self.misdirected
            + self.torn_pages
            + self.bit_flips
    }
}

#[derive(Default)]
struct FaultState {
    rates: DiskFaults,
    rng: u64,
    counts: DiskFaultCounts,
    /// How long an fsync pass takes (a slow disk), drawn uniformly from this range.
    sync_latency_ms: (u64, u64),
}

impl FaultState {
    fn next_u64(&mut self) -> u64 {
        // splitmix64: small, seedable, the same everywhere.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn happens(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }
}

type SharedFaults = Arc<Mutex<FaultState>>;

fn os_error(code: i32, what: &str) -> io::Error {
    let base = io::Error::from_raw_os_error(code);
    io::Error::new(base.kind(), format!("{what}: {base} (injected)"))
}

/// An in-memory filesystem whose unsynced writes can be lost on purpose.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    tree: Arc<Mutex<Tree>>,
    faults: SharedFaults,
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

    /// Turns injected faults on (or off, with `DiskFaults::default()`); `seed` seeds the
    /// generator that decides which calls fail.
    pub fn set_faults(&self, rates: DiskFaults, seed: u64) {
        let mut faults = self.faults.lock().unwrap();
        faults.rates = rates;
        faults.rng = seed;
    }

    /// Makes the disk slow (or fast again, with `(0, 0)`): each fsync pass of the
    /// replication round takes between `min_ms` and `max_ms` of (simulated) time, drawn
    /// from the fault generator, so a crash can land between a round's writes and its
    /// fsync.
    pub fn set_sync_latency_ms(&self, min_ms: u64, max_ms: u64) {
        assert!(min_ms <= max_ms);
        self.faults.lock().unwrap().sync_latency_ms = (min_ms, max_ms);
    }

    /// The faults injected so far.
    pub fn fault_counts(&self) -> DiskFaultCounts {
        self.faults.lock().unwrap().counts
    }

    /// Simulates a power loss: every file falls back to its last synced contents, the
    /// namespace to its last synced directory entries.
    pub fn crash(&self) {
        self.crash_with(|_, image| image.durable.clone());
    }

    /// Simulates a power loss during writeback: of each file's unsynced appended tail a
    /// random prefix reaches the disk, in which each page is kept, dropped (zeros) or
    /// torn (a prefix kept); written with `seed`'s generator. Files changed other than by
    /// appending fall back to their synced contents.
    pub fn crash_torn(&self, seed: u64) {
        let mut rng = FaultState {
            rng: seed,
            ..FaultState::default()
        };
        let mut torn = 0;
        self.crash_with(|_, image| {
            let written = image.written_back();
            let synced = image.durable.len();
            if written.len() <= synced || written[..synced] != image.durable[..] {
                return image.durable.clone();
            }
            let tail = written.len() - synced;
            // Half the time the file keeps its full written length (its size reached the
            // disk) while pages of it did not; otherwise a random prefix of it survives.
            let keep = if rng.below(2) == 0 {
                tail
            } else {
                rng.below(tail + 1)
            };
            let mut disk = written[..synced + keep].to_vec();
            let mut page = synced;
            while page < disk.len() {
                let end = (page + PAGE_BYTES).min(disk.len());
                match rng.below(3) {
                    0 => {}
                    1 => {
                        disk[page..end].fill(0);
                        torn += 1;
                    }
                    _ => {
                        let cut = page + rng.below(end - page);
                        disk[cut..end].fill(0);
                        torn += 1;
                    }
                }
                page = end;
            }
            disk
        });
        self.faults.lock().unwrap().counts.torn_pages += torn;
    }

    fn crash_with(&self, mut on_disk: impl FnMut(&Path, &FileImage) -> Vec<u8>) {
        let mut tree = self.tree.lock().unwrap();
        // Handles still open on files the crash removes see their synced contents too.
        let mut images: BTreeMap<&Key, &SharedImage> = BTreeMap::new();
        for (path, image) in tree.durable_files.iter().chain(&tree.files) {
            images.entry(path).or_insert(image);
        }
        let mut done = BTreeSet::new();
        for (path, image) in images {
            // Membership only: the addresses never decide an order.
            if !done.insert(Arc::as_ptr(image) as usize) {
                continue;
            }
            let mut image = image.lock().unwrap();
            let disk = on_disk(path.path(), &image);
            image.volatile = disk.clone();
            image.durable = disk;
            image.lost.clear();
            image.dirty_from = usize::MAX;
        }
        tree.files = tree.durable_files.clone();
        tree.pending.clear();
    }

    /// A new, empty disk in place of this one (files, directories, everything).
    pub fn wipe(&self) {
        let mut tree = self.tree.lock().unwrap();
        *tree = Tree::default();
    }

    /// Overwrites bytes of a file in place, in both images (a bit rot on the medium).
    /// Returns false when the file does not exist or is too short.
    pub fn corrupt(&self, path: &Path, position: usize, bytes: &[u8]) -> bool {
        let tree = self.tree.lock().unwrap();
        let Some(image) = tree.files.get(&Key::of(path)) else {
            return false;
        };
        let mut image = image.lock().unwrap();
        let end = position + bytes.len();
        if image.volatile.len() < end || image.durable.len() < end {
            return false;
        }
        image.volatile[position..end].copy_from_slice(bytes);
        image.durable[position..end].copy_from_slice(bytes);
        drop(image);
        drop(tree);
        self.faults.lock().unwrap().counts.bit_flips += 1;
        true
    }

    /// Flips one bit of a file's synced contents (volatile and durable), chosen by `pick`
    /// below the synced length. Returns the byte position flipped, or None when the file
    /// has no synced byte.
    pub fn flip_bit(&self, path: &Path, pick: u64) -> Option<usize> {
        let tree = self.tree.lock().unwrap();
        let image = tree.files.get(&Key::of(path))?;
        let mut image = image.lock().unwrap();
        let synced = image.durable.len().min(image.volatile.len());
        if synced == 0 {
            return None;
        }
        let position = (pick / 8 % synced as u64) as usize;
        let mask = 1u8 << (pick % 8);
        image.volatile[position] ^= mask;
        image.durable[position] ^= mask;
        drop(image);
        drop(tree);
        self.faults.lock().unwrap().counts.bit_flips += 1;
        Some(position)
    }

    /// Every file path, sorted.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        let tree = self.tree.lock().unwrap();
        tree.files.keys().map(|k| k.path().to_path_buf()).collect()
    }

    fn has_dir(tree: &Tree, path: &Path) -> bool {
        path.as_os_str().is_empty() || path == Path::new("/") || tree.dirs.contains(&Key::of(path))
    }
}

/// Decides whether a call fails with the fault `rate` picks, counting it if so.
fn strikes(
    faults: &SharedFaults,
    rate: impl Fn(&DiskFaults) -> f64,
    count: impl Fn(&mut DiskFaultCounts),
) -> bool {
    let mut faults = faults.lock().unwrap();
    let p = rate(&faults.rates);
    let struck = faults.happens(p);
    if struck {
        count(&mut faults.counts);
    }
    struck
}

impl Storage for MemoryStorage {
    fn sync_latency(&self) -> std::time::Duration {
        let mut faults = self.faults.lock().unwrap();
        let (min_ms, max_ms) = faults.sync_latency_ms;
        if max_ms == 0 {
            return std::time::Duration::ZERO;
        }
        let ms = min_ms + faults.below((max_ms - min_ms + 1) as usize) as u64;
        std::time::Duration::from_millis(ms)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        for ancestor in path.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                tree.dirs.insert(Key::of(ancestor));
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
        // Everything below `path` shares its prefix `path/`, so it lies in one range.
        let dir = Key::of(path);
        let prefix = if dir.0.is_empty() {
            Vec::new()
        } else {
            dir.below()
        };
        let start = Key(std::ffi::OsStr::from_bytes(&prefix).to_owned());
        let below = |k: &&Key| k.0.as_bytes().starts_with(&prefix);
        let files = tree.files.range(start.clone()..).map(|(k, _)| k);
        let dirs = tree.dirs.range(start..);
        for child in files.take_while(below).chain(dirs.take_while(below)) {
            let child = child.path();
            if child.parent() == Some(dir.path()) {
                if let Some(name) = child.file_name() {
                    names.insert(name.to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut tree = self.tree.lock().unwrap();
        let key = Key::of(path);
        let image = match tree.files.get(&key) {
            Some(image) => image.clone(),
            None if create => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !Self::has_dir(&tree, parent) {
                    return Err(not_found(parent));
                }
                let image = SharedImage::default();
                tree.files.insert(key, image.clone());
                tree.entry_changed(path, Some(image.clone()));
                image
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(MemoryFile {
            image,
            faults: self.faults.clone(),
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        let tree = self.tree.lock().unwrap();
        let key = Key::of(path);
        tree.files.contains_key(&key) || tree.dirs.contains(&key)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        let image = tree
            .files
            .remove(&Key::of(from))
            .ok_or_else(|| not_found(from))?;
        tree.files.insert(Key::of(to), image.clone());
        tree.entry_changed(from, None);
        tree.entry_changed(to, Some(image));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        tree.files
            .remove(&Key::of(path))
            .ok_or_else(|| not_found(path))?;
        tree.entry_changed(path, None);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().unwrap();
        if !tree.dirs.contains(&Key::of(path)) {
            return Err(not_found(path));
        }
        tree.files.retain(|p, _| !p.path().starts_with(path));
        tree.durable_files
            .retain(|p, _| !p.path().starts_with(path));
        tree.pending.retain(|p, _| !p.path().starts_with(path));
        tree.dirs.retain(|p| !p.path().starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if strikes(&self.faults, |r| r.sync_error, |c| c.sync_errors += 1) {
            return Err(os_error(EIO, "sync_dir"));
        }
        let mut tree = self.tree.lock().unwrap();
        if !Self::has_dir(&tree, path) {
            return Err(not_found(path));
        }
        if let Some(changes) = tree.pending.remove(&Key::of(path)) {
            for (file, image) in changes {
                match image {
                    Some(image) => tree.durable_files.insert(file, image),
                    None => tree.durable_files.remove(&file),
                };
            }
        }
        Ok(())
    }
}

struct MemoryFile {
    image: SharedImage,
    faults: SharedFaults,
}

impl MemoryFile {
    /// Decides whether this call fails, counting it.
    fn fails(
        &self,
        rate: impl Fn(&DiskFaults) -> f64,
        count: impl Fn(&mut DiskFaultCounts),
    ) -> bool {
        strikes(&self.faults, rate, count)
    }
}

impl StorageFile for MemoryFile {
    fn len(&self) -> u64 {
        self.image.lock().unwrap().volatile.len() as u64
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.fails(|r| r.no_space, |c| c.no_space += 1) {
            return Err(os_error(ENOSPC, "append"));
        }
        if self.fails(|r| r.write_error, |c| c.write_errors += 1) {
            return Err(os_error(EIO, "append"));
        }
        let misdirect_to = self
            .fails(|r| r.misdirect, |c| c.misdirected += 1)
            .then(|| self.faults.lock().unwrap().next_u64());
        let mut image = self.image.lock().unwrap();
        let end = image.volatile.len();
        image.touched(end);
        match misdirect_to {
            Some(pick) if end > 0 => {
                // The data goes to an earlier position; its own place stays zero.
                image.volatile.resize(end + data.len(), 0);
                let at = (pick % end as u64) as usize;
                image.touched(at);
                let n = data.len().min(end - at);
                image.volatile[at..at + n].copy_from_slice(&data[..n]);
            }
            _ => image.volatile.extend_from_slice(data),
        }
        Ok(())
    }

    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        if self.fails(|r| r.read_error, |c| c.read_errors += 1) {
            return Err(os_error(EIO, "read"));
        }
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
        if self.fails(|r| r.write_error, |c| c.write_errors += 1) {
            return Err(os_error(EIO, "truncate"));
        }
        let mut image = self.image.lock().unwrap();
        let len = len_bytes as usize;
        let old_len = image.volatile.len();
        image.touched(len.min(old_len));
        image.volatile.resize(len, 0);
        image.lost.retain_mut(|(start, end)| {
            *end = (*end).min(len);
            start < end
        });
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        sync_image(&self.image, &self.faults)
    }

    fn sync_handle(&self) -> io::Result<Arc<dyn SyncHandle>> {
        Ok(Arc::new(MemorySyncHandle {
            image: self.image.clone(),
            faults: self.faults.clone(),
        }))
    }
}

fn sync_image(image: &SharedImage, faults: &SharedFaults) -> io::Result<()> {
    let failed = strikes(faults, |r| r.sync_error, |c| c.sync_errors += 1);
    let mut image = image.lock().unwrap();
    if failed {
        // fsyncgate: the dirty pages are marked clean without reaching the disk.
        let (from, to) = (image.dirty_from(), image.volatile.len());
        if from < to {
            image.lost.push((from, to));
        }
        return Err(os_error(EIO, "fsync"));
    }
    image.write_back();
    Ok(())
}

struct MemorySyncHandle {
    image: SharedImage,
    faults: SharedFaults,
}

impl SyncHandle for MemorySyncHandle {
    fn sync(&self) -> io::Result<()> {
        sync_image(&self.image, &self.faults)
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

    fn write_synced(storage: &MemoryStorage, path: &str, data: &[u8]) -> Box<dyn StorageFile> {
        let path = Path::new(path);
        storage.create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = storage.open(path, true).unwrap();
        f.append(data).unwrap();
        f.sync().unwrap();
        storage.sync_dir(path.parent().unwrap()).unwrap();
        f
    }

    #[test]
    fn directory_entries_are_durable_after_sync_dir_only() {
        let storage = MemoryStorage::new();
        write_synced(&storage, "/d/kept", b"k");
        let mut f = storage.open(Path::new("/d/new"), true).unwrap();
        f.append(b"synced data, unsynced entry").unwrap();
        f.sync().unwrap();
        storage
            .rename(Path::new("/d/kept"), Path::new("/d/renamed"))
            .unwrap();
        storage.crash();
        assert_eq!(storage.file_paths(), vec![PathBuf::from("/d/kept")]);
        storage
            .rename(Path::new("/d/kept"), Path::new("/d/renamed"))
            .unwrap();
        storage.remove_file(Path::new("/d/renamed")).unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        storage.crash();
        assert!(storage.file_paths().is_empty());
    }

    #[test]
    fn torn_crash_keeps_a_damaged_prefix_of_the_unsynced_tail_only() {
        for seed in 0..200 {
            let storage = MemoryStorage::new();
            let mut f = write_synced(&storage, "/d/f", &[7u8; 5000]);
            f.append(&[9u8; 3 * PAGE_BYTES]).unwrap();
            storage.crash_torn(seed);
            let len = f.len() as usize;
            assert!((5000..=5000 + 3 * PAGE_BYTES).contains(&len));
            let mut buf = vec![0u8; len];
            read_exact_at_test(f.as_ref(), &mut buf);
            assert!(buf[..5000].iter().all(|b| *b == 7), "synced bytes survive");
            assert!(buf[5000..].iter().all(|b| *b == 9 || *b == 0));
        }
    }

    fn read_exact_at_test(f: &dyn StorageFile, buf: &mut [u8]) {
        crate::storage::read_exact_at(f, 0, buf).unwrap();
    }

    #[test]
    fn a_failed_fsync_loses_the_dirty_pages_even_after_a_later_good_one() {
        let storage = MemoryStorage::new();
        let mut f = write_synced(&storage, "/d/f", b"old");
        f.append(b"new").unwrap();
        storage.set_faults(
            DiskFaults {
                sync_error: 1.0,
                ..DiskFaults::default()
            },
            1,
        );
        assert!(f.sync().is_err());
        storage.set_faults(DiskFaults::default(), 1);
        // Reads still see the data (the page cache), and a retried fsync "succeeds"...
        f.append(b"+").unwrap();
        f.sync().unwrap();
        let mut buf = vec![0u8; 7];
        read_exact_at_test(f.as_ref(), &mut buf);
        assert_eq!(&buf, b"oldnew+");
        // ...but the disk never got the pages that failed.
        storage.crash();
        read_exact_at_test(f.as_ref(), &mut buf);
        assert_eq!(&buf, b"old\0\0\0+");
        assert_eq!(storage.fault_counts().sync_errors, 1);
    }

    #[test]
    fn injected_errors_and_misdirected_writes() {
        let storage = MemoryStorage::new();
        let mut f = write_synced(&storage, "/d/f", b"0123456789");
        storage.set_faults(
            DiskFaults {
                no_space: 1.0,
                ..DiskFaults::default()
            },
            3,
        );
        let e = f.append(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("injected"));
        assert_eq!(f.len(), 10);
        storage.set_faults(
            DiskFaults {
                misdirect: 1.0,
                ..DiskFaults::default()
            },
            3,
        );
        f.append(b"ab").unwrap();
        assert_eq!(f.len(), 12);
        let mut buf = vec![0u8; 12];
        read_exact_at_test(f.as_ref(), &mut buf);
        assert_eq!(&buf[10..], b"\0\0", "the intended place stays zero");
        assert_ne!(
            &buf[..10],
            b"0123456789",
            "an earlier place was overwritten"
        );
        storage.set_faults(
            DiskFaults {
                read_error: 1.0,
                ..DiskFaults::default()
            },
            3,
        );
        assert!(f.read_at(0, &mut buf).is_err());
        let counts = storage.fault_counts();
        assert_eq!(
            (counts.no_space, counts.misdirected, counts.read_errors),
            (1, 1, 1)
        );
    }
    /// Keys compare bytewise: a directory's listing must not take in siblings whose
    /// names extend its own (`t-0-1`, `t-0.tmp` sort between `t-0` and `t-0/...`), and a
    /// path written another way names the same file.
    #[test]
    fn listings_and_lookups_follow_paths_not_bytes() {
        let storage = MemoryStorage::new();
        for dir in ["/d/t-0", "/d/t-0-1", "/d/t-0/sub"] {
            storage.create_dir_all(Path::new(dir)).unwrap();
        }
        for file in [
            "/d/t-0/a.log",
            "/d/t-0.tmp",
            "/d/t-0-1/b.log",
            "/d/t-0/sub/c",
        ] {
            storage.open(Path::new(file), true).unwrap();
        }
        assert_eq!(
            storage.list_dir(Path::new("/d/t-0")).unwrap(),
            vec!["a.log".to_string(), "sub".to_string()]
        );
        assert_eq!(
            storage.list_dir(Path::new("/d/")).unwrap(),
            vec![
                "t-0".to_string(),
                "t-0-1".to_string(),
                "t-0.tmp".to_string()
            ]
        );
        assert!(storage.exists(Path::new("/d//t-0/./a.log")));
        storage.remove_dir_all(Path::new("/d/t-0")).unwrap();
        assert!(storage.exists(Path::new("/d/t-0-1/b.log")));
        assert!(storage.exists(Path::new("/d/t-0.tmp")));
        assert!(!storage.exists(Path::new("/d/t-0/a.log")));
    }
}
