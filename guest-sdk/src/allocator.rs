//! The wasm32 global allocator: a bump allocator over linear memory.
//!
//! Why a bump allocator: the host gives every call a fresh instance (`ABI.md`, "The call
//! sequence"), so nothing allocated outlives a call and there is nothing to reclaim
//! between calls. A bump allocator is then the fastest possible choice: no
//! initialisation (it matters, the host's budget for one counter call is ~10 µs
//! including instantiation), a few instructions per allocation and under 1 KiB of code,
//! against ~10 KiB and free-list upkeep for `dlmalloc`.
//!
//! The price: memory freed inside a call is reused only when it is the most recent
//! allocation (freeing it rolls the bump pointer back, and growing it extends it in
//! place, so a lone growing `Vec` costs no more than its final size). A call that
//! streams a lot of data through many interleaved allocations uses, at most, the sum of
//! its allocations; past the module's memory cap the call ends as *memory limit*. A
//! module that needs reuse within a call turns off the `allocator` feature and installs
//! its own `#[global_allocator]` (for example `dlmalloc` with its `global` feature).

#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

const PAGE_BYTES: usize = 65_536;

unsafe extern "C" {
    /// The first byte after the data segments and the stack, set by the linker.
    static __heap_base: u8;
}

/// Set when `memory.grow` was refused: a panic that follows is then a memory limit, and
/// the panic handler traps instead of reporting a guest error (`ABI.md`, "Outcomes").
static GROW_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether this call's memory could not grow.
pub(crate) fn grow_refused() -> bool {
    GROW_REFUSED.load(Relaxed)
}

/// A bump allocator: `next` is the first free byte, `end` the end of linear memory.
/// Both start at 0, meaning "not yet initialised" (a fresh instance starts so).
///
/// Atomics only because a `static` needs `Sync`; wasm32 without the threads feature
/// compiles them to plain loads and stores.
#[derive(Debug)]
pub struct BumpAllocator {
    next: AtomicUsize,
    end: AtomicUsize,
}

impl BumpAllocator {
    /// An allocator that starts at the linker's heap base on first use.
    pub const fn new() -> Self {
        BumpAllocator {
            next: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
        }
    }

    /// The first free byte, initialising on first use.
    fn next(&self) -> usize {
        let next = self.next.load(Relaxed);
        if next != 0 {
            return next;
        }
        let heap_base = &raw const __heap_base as usize;
        self.end.store(wasm32::memory_size(0) * PAGE_BYTES, Relaxed);
        heap_base
    }

    /// Makes sure memory reaches `new_next`, growing it if needed.
    fn ensure(&self, new_next: usize) -> bool {
        let end = self.end.load(Relaxed);
        if new_next <= end {
            return true;
        }
        let pages = (new_next - end).div_ceil(PAGE_BYTES);
        if wasm32::memory_grow(0, pages) == usize::MAX {
            GROW_REFUSED.store(true, Relaxed);
            return false;
        }
        self.end.store(end + pages * PAGE_BYTES, Relaxed);
        true
    }
}

impl Default for BumpAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `alloc` returns blocks that are aligned (rounded up to `layout.align()`), lie
// within linear memory (`ensure` grew it past their end) and never overlap a live block
// (each starts at or after the previous block's end; `dealloc` and `realloc` move the
// bump pointer back only over the most recent block, which is no longer live).
unsafe impl GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let next = self.next();
        // `align` is a power of two, so this rounds up; overflow means no memory.
        let Some(start) = next.checked_add(layout.align() - 1) else {
            return core::ptr::null_mut();
        };
        let start = start & !(layout.align() - 1);
        let Some(new_next) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if !self.ensure(new_next) {
            return core::ptr::null_mut();
        }
        self.next.store(new_next, Relaxed);
        core::ptr::with_exposed_provenance_mut(start)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        let start = pointer.expose_provenance();
        if start + layout.size() == self.next.load(Relaxed) {
            self.next.store(start, Relaxed);
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = pointer.expose_provenance();
        if start + layout.size() == self.next.load(Relaxed) {
            // The most recent block: grow or shrink it in place.
            let Some(new_next) = start.checked_add(new_size) else {
                return core::ptr::null_mut();
            };
            if !self.ensure(new_next) {
                return core::ptr::null_mut();
            }
            self.next.store(new_next, Relaxed);
            return pointer;
        }
        if new_size <= layout.size() {
            return pointer;
        }
        // SAFETY: the caller guarantees `layout.align()` is valid and `new_size`, rounded
        // to it, does not overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (it is larger than the old one).
        let new_pointer = unsafe { self.alloc(new_layout) };
        if !new_pointer.is_null() {
            // SAFETY: both blocks are valid for `layout.size()` bytes and distinct: the
            // new one was allocated after the old one's end.
            unsafe { core::ptr::copy_nonoverlapping(pointer, new_pointer, layout.size()) };
        }
        new_pointer
    }
}
