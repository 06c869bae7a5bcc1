//! The guests' global allocator: talc instead of std's dlmalloc, with a
//! call's small blocks bumped out of a scratch region.
//!
//! A `/predict` call allocates about a dozen small blocks in the guest (the
//! rows the host lowers, wasi-nn's output names and data, the answer), and
//! dlmalloc spent about 3,000 of the generic guest's 6,200 instructions a
//! request on them (`scripts/count-instructions`, docs/benchmarks.md).
//! talc takes its memory from `memory.grow` as dlmalloc does, so a
//! sandbox's memory limit still refuses a runaway guest the same way.
//!
//! talc still cost about 230 instructions for each block a `predict-rows`
//! call allocates and frees (six of them, all in wasi-nn's bindings). While
//! a call holds [`Scratch::call`]'s guard, blocks of up to [`SCRATCH_BLOCK`]
//! bytes are instead bumped out of a fixed [`SCRATCH`]-byte region, and the
//! region is reused from its start once every block in it is freed (the last
//! ones by the export's post-return, after the guard is gone). A block that
//! outlives its call only keeps the region from being reused, and blocks
//! then go to talc: slower, never unsafe.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;

/// Bytes of the scratch region: a `predict-rows` call of one row takes
/// under 200 of them, and a merged batch no more (the rows stay in the
/// host's tensors).
const SCRATCH: usize = 16 * 1024;

/// Larger blocks (a body, its rows) go to the inner allocator even during a
/// call, so that one large block does not fill the region.
const SCRATCH_BLOCK: usize = 1024;

/// The most alignment a scratch block gets; rarer ones go to the inner
/// allocator.
const SCRATCH_ALIGN: usize = 16;

#[repr(C, align(16))]
struct Region(UnsafeCell<[MaybeUninit<u8>; SCRATCH]>);

/// `inner` (talc in a guest), with a call's small blocks bumped out of a
/// region of its own.
pub struct Scratch<A> {
    inner: A,
    region: Region,
    /// The region's first free byte.
    next: Cell<usize>,
    /// Blocks in the region not yet freed: at 0 the region starts over.
    live: Cell<usize>,
    /// Whether a call is running (its guard is held).
    open: Cell<bool>,
}

// SAFETY: single-threaded wasm32 (no atomics) only, so the cells are never
// touched from two threads; native unit tests use their own instance.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for Scratch<A> {}

/// While alive, small blocks come from the region (see [`Scratch::call`]);
/// dropped, it leaves the region as it found it (open for an outer call).
#[must_use = "the region closes when the guard is dropped"]
pub struct Call<'a> {
    open: &'a Cell<bool>,
    was: bool,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.open.set(self.was);
    }
}

impl<A> Scratch<A> {
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            region: Region(UnsafeCell::new([MaybeUninit::uninit(); SCRATCH])),
            next: Cell::new(0),
            live: Cell::new(0),
            open: Cell::new(false),
        }
    }

    /// Small blocks come from the region until the guard is dropped: hold it
    /// for an export's call.
    pub fn call(&self) -> Call<'_> {
        Call {
            open: &self.open,
            was: self.open.replace(true),
        }
    }

    fn base(&self) -> *mut u8 {
        self.region.0.get().cast()
    }

    /// The offset of `ptr` in the region, if it is one of its blocks.
    fn offset(&self, ptr: *mut u8) -> Option<usize> {
        let offset = (ptr as usize).wrapping_sub(self.base() as usize);
        (offset < SCRATCH).then_some(offset)
    }

    /// A block of `layout` from the region, if a call is open and it fits.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if !self.open.get() || layout.size() > SCRATCH_BLOCK || layout.align() > SCRATCH_ALIGN {
            return None;
        }
        let start = self.next.get().next_multiple_of(layout.align());
        let end = start + layout.size();
        if end > SCRATCH {
            return None;
        }
        self.next.set(end);
        self.live.set(self.live.get() + 1);
        // SAFETY: `start..end` is inside the region and no live block holds it.
        Some(unsafe { self.base().add(start) })
    }

    fn release(&self) {
        let live = self.live.get() - 1;
        self.live.set(live);
        if live == 0 {
            self.next.set(0);
        }
    }
}

// SAFETY: region blocks are disjoint (bumped past each other) and reused
// only when none is live; every other block is `inner`'s, to which it goes
// back.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Scratch<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            None => unsafe { self.inner.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset(ptr) {
            Some(_) => self.release(),
            None => unsafe { self.inner.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(offset) = self.offset(ptr) else {
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        };
        let last = offset + layout.size() == self.next.get();
        // Any block shrinks where it is (wit-bindgen shrinks every list an
        // export returns, after the call); the last one also grows there,
        // within the block limit.
        if new_size <= layout.size()
            || (last && new_size <= SCRATCH_BLOCK && offset + new_size <= SCRATCH)
        {
            if last {
                self.next.set(offset + new_size);
            }
            return ptr;
        }
        // SAFETY: the caller gives a valid size for `layout`'s alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least the smaller size, and differ.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            self.release();
        }
        new
    }
}

// Guests are single-threaded wasm32-wasip2 components (no atomics), which
// is what `WasmDynamicTalc` requires; their unit tests, built natively, keep
// the system allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: Scratch<talc::wasm::WasmDynamicTalc> =
    Scratch::new(talc::wasm::new_wasm_dynamic_allocator());

/// Small blocks come from the scratch region until the guard is dropped:
/// hold it for an export's call.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[must_use = "the region closes when the guard is dropped"]
pub fn call() -> Option<Call<'static>> {
    Some(ALLOCATOR.call())
}

/// Natively (the guests' unit tests) the system allocator serves: nothing
/// to open.
#[cfg(not(all(target_family = "wasm", not(target_feature = "atomics"))))]
#[must_use]
pub fn call() -> Option<Call<'static>> {
    None
}

// wasi-libc keeps its own malloc for its own buffers, while the component's
// `cabi_realloc` (which the host calls to hand over lists) now allocates with
// talc. wasi-libc frees with its own `free` the lists it is handed, such as
// the environment `getenv` reads on a panic: safe only because the host
// gives guests no environment, no arguments and no directories (an empty
// list is never allocated), which `sandbox::deployment` must keep so.

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn in_region(s: &Scratch<System>, ptr: *mut u8) -> bool {
        s.offset(ptr).is_some()
    }

    #[test]
    fn small_blocks_of_a_call_come_from_the_region_and_it_starts_over_once_all_are_freed() {
        let s = Scratch::new(System);
        unsafe {
            let before = s.alloc(layout(16, 8));
            assert!(!in_region(&s, before), "no call open: the inner allocator");
            let guard = s.call();
            let a = s.alloc(layout(3, 1));
            let b = s.alloc(layout(24, 8));
            let big = s.alloc(layout(SCRATCH_BLOCK + 1, 8));
            let odd = s.alloc(layout(64, 64));
            assert!(in_region(&s, a) && in_region(&s, b));
            assert!(!in_region(&s, big) && !in_region(&s, odd));
            assert_eq!(b as usize % 8, 0, "aligned");
            assert_eq!(b as usize - a as usize, 8, "bumped past the first block");
            b.write_bytes(0xAB, 24);
            a.write_bytes(0xCD, 3);
            assert_eq!(*b, 0xAB, "blocks do not overlap");
            drop(guard);
            let after = s.alloc(layout(8, 8));
            assert!(!in_region(&s, after), "the call is over");
            s.dealloc(a, layout(3, 1));
            let _again = s.call();
            let c = s.alloc(layout(8, 8));
            assert!(c as usize > b as usize, "b is live: no reuse yet");
            s.dealloc(b, layout(24, 8));
            s.dealloc(c, layout(8, 8));
            assert_eq!(
                s.alloc(layout(1, 1)),
                a,
                "all freed: the region starts over"
            );
            for (p, l) in [(before, 16), (big, SCRATCH_BLOCK + 1), (after, 8)] {
                s.dealloc(p, layout(l, 8));
            }
            s.dealloc(odd, layout(64, 64));
        }
    }

    #[test]
    fn a_full_region_hands_blocks_to_the_inner_allocator() {
        let s = Scratch::new(System);
        let _call = s.call();
        unsafe {
            let blocks: Vec<_> = (0..SCRATCH / SCRATCH_BLOCK)
                .map(|_| s.alloc(layout(SCRATCH_BLOCK, 16)))
                .collect();
            assert!(blocks.iter().all(|&p| in_region(&s, p)));
            let spill = s.alloc(layout(16, 16));
            assert!(!in_region(&s, spill), "the region is full");
            s.dealloc(spill, layout(16, 16));
            for p in blocks {
                s.dealloc(p, layout(SCRATCH_BLOCK, 16));
            }
            assert!(in_region(&s, s.alloc(layout(16, 16))));
        }
    }

    #[test]
    fn realloc_grows_the_last_block_in_place_and_moves_the_others_with_their_bytes() {
        let s = Scratch::new(System);
        let _call = s.call();
        unsafe {
            let a = s.alloc(layout(8, 8));
            a.copy_from_nonoverlapping([1u8, 2, 3, 4, 5, 6, 7, 8].as_ptr(), 8);
            let grown = s.realloc(a, layout(8, 8), 32);
            assert_eq!(grown, a, "the last block grows where it is");
            let b = s.alloc(layout(8, 8));
            let moved = s.realloc(a, layout(32, 8), 64);
            assert_ne!(moved, a, "not the last block: moved");
            assert_eq!(
                std::slice::from_raw_parts(moved, 8),
                [1, 2, 3, 4, 5, 6, 7, 8]
            );
            let out = s.realloc(moved, layout(64, 8), SCRATCH);
            assert!(
                !in_region(&s, out),
                "too large for the region: the inner allocator"
            );
            assert_eq!(std::slice::from_raw_parts(out, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
            s.dealloc(out, layout(SCRATCH, 8));
            s.dealloc(b, layout(8, 8));
            assert_eq!(
                s.alloc(layout(8, 8)),
                a,
                "a, moved out, and b freed: starts over"
            );
        }
    }

    #[test]
    fn a_block_shrinks_where_it_is_and_grows_there_only_within_the_block_limit() {
        let s = Scratch::new(System);
        unsafe {
            let call = s.call();
            let a = s.alloc(layout(64, 8));
            let b = s.alloc(layout(8, 8));
            drop(call);
            assert_eq!(
                s.realloc(a, layout(64, 8), 16),
                a,
                "not the last, after the call"
            );
            let grown = s.realloc(b, layout(8, 8), SCRATCH_BLOCK + 8);
            assert!(
                !in_region(&s, grown),
                "past the block limit: the inner allocator"
            );
            s.dealloc(grown, layout(SCRATCH_BLOCK + 8, 8));
            s.dealloc(a, layout(16, 8));
            let _call = s.call();
            assert_eq!(
                s.alloc(layout(8, 8)),
                a,
                "both freed once: the region starts over"
            );
        }
    }

    #[test]
    fn an_inner_guard_leaves_the_region_open_for_its_outer_call() {
        let s = Scratch::new(System);
        let outer = s.call();
        drop(s.call());
        unsafe {
            let p = s.alloc(layout(8, 8));
            assert!(in_region(&s, p), "the outer call still holds the region");
            drop(outer);
            let q = s.alloc(layout(8, 8));
            assert!(!in_region(&s, q), "closed with the outer guard");
            s.dealloc(q, layout(8, 8));
            s.dealloc(p, layout(8, 8));
        }
    }
}
