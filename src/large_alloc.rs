//! The broker binary's global allocator: large allocations become lazily committed
//! anonymous mappings, so a hostile length prefix cannot abort the process.
//!
//! kafka-protocol 0.18 sizes a decoded array by the element count claimed on the wire
//! (`Vec::with_capacity(n)`) before reading a single element. A request of a few bytes
//! can claim billions of elements; with the system allocator that reservation fails and
//! Rust aborts the process (an allocation failure is not a catchable panic). Here every
//! allocation of at least [`LARGE_ALLOCATION_BYTES`] is an `mmap` with `MAP_NORESERVE`:
//! the reservation costs only address space, pages are committed as they are written,
//! and what is written is bounded by the frame actually received (itself bounded by
//! `socket.request.max.bytes`). The decode then fails on the short input, the mapping is
//! unmapped and the connection closes, as for any malformed request.
//! Until the crate bounds its pre-allocation, this keeps the broker up.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are served by `mmap`.
pub const LARGE_ALLOCATION_BYTES: usize = 64 * 1024 * 1024;
/// `mmap` returns page-aligned memory; larger alignments go to the system allocator.
const PAGE_BYTES: usize = 4096;

pub struct LazyLargeAllocator;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE_ALLOCATION_BYTES && layout.align() <= PAGE_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping of `size` bytes; no file, no fixed address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

// SAFETY: small layouts go to `System` unchanged; large ones are whole mappings, returned
// page-aligned (enough for every alignment `is_large` accepts) and zero-filled, and are
// released by `munmap` with the same size they were mapped with.
unsafe impl GlobalAlloc for LazyLargeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // Anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_large(&layout) && !is_large(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if is_large(&layout) && is_large(&new_layout) {
            // Move the mapping's pages instead of copying them (most are never committed).
            let moved =
                unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
            return if moved == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                moved.cast()
            };
        }
        // One side is small (under LARGE_ALLOCATION_BYTES): copying it is cheap.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_untouched_reservations_cost_only_address_space() {
        let allocator = LazyLargeAllocator;
        // Far more than this machine's memory: fine as long as it is not written.
        let layout = Layout::from_size_align(1 << 40, 8).unwrap();
        let ptr = unsafe { allocator.alloc(layout) };
        assert!(!ptr.is_null());
        unsafe {
            ptr.write(7);
            assert_eq!(ptr.read(), 7);
            let grown = allocator.realloc(ptr, layout, (1 << 40) + 4096);
            assert_eq!(grown.read(), 7);
            allocator.dealloc(grown, Layout::from_size_align((1 << 40) + 4096, 8).unwrap());
        }
        let small = Layout::from_size_align(64, 8).unwrap();
        let p = unsafe { allocator.alloc_zeroed(small) };
        assert_eq!(unsafe { p.read() }, 0);
        unsafe { allocator.dealloc(p, small) };
    }
}
