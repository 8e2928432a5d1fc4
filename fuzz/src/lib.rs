//! Helpers shared by Strand's fuzz targets.
//!
//! Everything here is an *independent* reading of the formats Strand parses (the
//! RecordBatch v2 header, CRC32C framing), written from the Kafka spec rather than
//! from Strand's code, so that a target can check Strand's answers instead of only
//! watching for panics. Nothing here calls into the code under test except where noted
//! (the `interbroker` module runs a cluster of the real code for that target).

pub mod interbroker;

/// Size of the fixed RecordBatch v2 header (baseOffset .. recordsCount).
pub const HEADER: usize = 61;
/// baseOffset + batchLength: the bytes `batchLength` does not count.
pub const OVERHEAD: usize = 12;
/// The CRC covers everything from `attributes` (byte 21) to the end of the batch.
pub const CRC_START: usize = 21;

/// The fields of a v2 batch header, read by hand (big-endian, fixed offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().unwrap()
}

impl RawHeader {
    /// Reads the 61 header bytes; no validation at all.
    pub fn read(b: &[u8]) -> Option<RawHeader> {
        if b.len() < HEADER {
            return None;
        }
        Some(RawHeader {
            base_offset: i64::from_be_bytes(be(b, 0)),
            batch_length: i32::from_be_bytes(be(b, 8)),
            partition_leader_epoch: i32::from_be_bytes(be(b, 12)),
            magic: b[16] as i8,
            crc: u32::from_be_bytes(be(b, 17)),
            attributes: i16::from_be_bytes(be(b, 21)),
            last_offset_delta: i32::from_be_bytes(be(b, 23)),
            base_timestamp: i64::from_be_bytes(be(b, 27)),
            max_timestamp: i64::from_be_bytes(be(b, 35)),
            producer_id: i64::from_be_bytes(be(b, 43)),
            producer_epoch: i16::from_be_bytes(be(b, 51)),
            base_sequence: i32::from_be_bytes(be(b, 53)),
            records_count: i32::from_be_bytes(be(b, 57)),
        })
    }

    /// Whole batch size on the wire, if `batchLength` can describe a v2 batch at all.
    pub fn size(&self) -> Option<usize> {
        if self.batch_length < (HEADER - OVERHEAD) as i32 {
            return None;
        }
        Some(OVERHEAD + self.batch_length as usize)
    }
}

/// Why [`walk`] stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Fewer than 61 bytes left.
    TornHeader,
    BadMagic,
    BadLength,
    /// The header announces more bytes than are left.
    TornBatch,
    BadCrc,
}

/// One whole, CRC-valid batch found by [`walk`].
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub position: usize,
    pub header: RawHeader,
}

impl Found {
    pub fn end(&self) -> usize {
        self.position + self.header.size().unwrap()
    }
}

/// Walks `bytes` batch by batch from position 0: each must have magic 2, a sane
/// `batchLength`, fit entirely, and carry a correct CRC32C. Returns the valid prefix
/// and why the walk stopped (None: it reached the end exactly).
pub fn walk(bytes: &[u8]) -> (Vec<Found>, Option<Stop>) {
    let mut found = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let rest = &bytes[position..];
        let Some(header) = RawHeader::read(rest) else {
            return (found, Some(Stop::TornHeader));
        };
        if header.magic != 2 {
            return (found, Some(Stop::BadMagic));
        }
        let Some(size) = header.size() else {
            return (found, Some(Stop::BadLength));
        };
        if size > rest.len() {
            return (found, Some(Stop::TornBatch));
        }
        if crc32c::crc32c(&rest[CRC_START..size]) != header.crc {
            return (found, Some(Stop::BadCrc));
        }
        found.push(Found { position, header });
        position += size;
    }
    (found, None)
}

/// Rewrites the CRC of every whole batch (walking by the stored lengths) so that random
/// mutations get past the checksum and reach the code behind it. Stops where the
/// framing stops making sense. This only prepares an input; the checks never use it.
pub fn fix_crcs(bytes: &mut [u8]) {
    let mut position = 0;
    while let Some(header) = RawHeader::read(&bytes[position..]) {
        let Some(size) = header.size() else { return };
        if header.magic != 2 || size > bytes.len() - position {
            return;
        }
        let batch = &mut bytes[position..position + size];
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        position += size;
    }
}

/// Makes all of `bytes` one batch: `batchLength` covers everything, magic is 2, CRC right.
pub fn make_one_batch(bytes: &mut Vec<u8>) {
    if bytes.len() < HEADER {
        bytes.resize(HEADER, 0);
    }
    let len = (bytes.len() - OVERHEAD) as i32;
    bytes[8..12].copy_from_slice(&len.to_be_bytes());
    bytes[16] = 2;
    let crc = crc32c::crc32c(&bytes[CRC_START..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A small cursor over fuzz input with explicit, documented layouts (so seed files can
/// be written by hand), instead of `arbitrary`'s internal encoding.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A global allocator for the targets that decode Kafka wire messages (`request`,
/// `roundtrip`): kafka-protocol 0.18 pre-allocates `Vec::with_capacity(n)` for every
/// wire array, with `n` taken from the input before checking that `n` elements could
/// possibly follow. A 20-byte request can ask for ~100 GB: under the sanitizer's
/// allocator that is an instant "out of memory", so those targets would stop at that
/// one known issue (see docs/fuzzing.md, "known issues") and find nothing else.
///
/// Requests of [`LAZY_THRESHOLD`] bytes or more are served by an anonymous mapping that
/// costs nothing until touched (what Linux overcommit does for such a request), and
/// everything else by the system allocator (so libFuzzer's -malloc_limit_mb still sees
/// every ordinary allocation). Memory that is actually used still counts against
/// -rss_limit_mb: a decompression bomb that fills its buffer is still a crash.
pub struct LazyHugeAlloc;

/// Allocations at least this large are lazy mappings.
pub const LAZY_THRESHOLD: usize = 1 << 30;

use std::alloc::{GlobalAlloc, Layout, System};

unsafe impl GlobalAlloc for LazyHugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LAZY_THRESHOLD && layout.align() <= 4096 {
            let p = libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p as *mut u8
            }
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LAZY_THRESHOLD && layout.align() <= 4096 {
            self.alloc(layout) // fresh anonymous mappings are zeroed
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LAZY_THRESHOLD && layout.align() <= 4096 {
            libc::munmap(ptr as *mut libc::c_void, layout.size());
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < LAZY_THRESHOLD && new_size < LAZY_THRESHOLD {
            return System.realloc(ptr, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}
