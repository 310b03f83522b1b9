//! The kernel heap: one `linked_list_allocator` over the largest free stretch of RAM.
//!
//! RAM the loader did not fill is zero at entry (`docs/abi.md`), so `alloc_zeroed` skips
//! memory above the heap's high-water mark: a fresh 1 MiB wasm linear memory then costs no
//! page touches until the app uses it. On this host every first touch of a guest page is a
//! costly exit, and a Rust hello's memory is mostly its untouched stack.
//!
//! The app's linear memory ([`static_buffer`]) gets the same treatment through `memset`:
//! the engines zero every range of it they expose (its initial size, then each growth), and
//! the part of the buffer nobody has written yet ([`Untouched`]) is zero already, so those
//! fills store nothing there ([`zero_fill_len`]). An app whose module asks for 64 MiB at start
//! then touches only the pages it uses, as under a host runtime's lazily mapped memory.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use linked_list_allocator::LockedHeap;

/// Bytes above the high-water mark the allocator itself may have written: the header of the
/// free hole that starts there (two words) and any front padding it splits off.
const HOLE_HEADER_SLACK: usize = 64;

struct Heap {
    inner: LockedHeap,
    /// End of the highest block ever handed out; everything above it, except the free hole's
    /// header, is still as the loader left it: zero.
    high_water: AtomicUsize,
}

#[global_allocator]
static HEAP: Heap = Heap {
    inner: LockedHeap::empty(),
    high_water: AtomicUsize::new(0),
};

/// Whether the loader handed the heap over zeroed (see [`init`]).
static ZEROED: AtomicBool = AtomicBool::new(false);

/// The untouched tail of the linear-memory buffer: `[from, end)` has not been written since
/// the loader zeroed RAM, so it is still zero. Only the buffer's owner (the engine) writes
/// there, and only after a zero fill exposed the range, which moves `from` past it. Empty
/// (`from == end`) until [`static_buffer`] arms it, and for good on dirty RAM. One CPU and
/// no interrupts: the two words never change under a reader.
struct Untouched {
    from: AtomicUsize,
    end: AtomicUsize,
}

static UNTOUCHED: Untouched = Untouched {
    from: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};

/// How many bytes from `dest` a write of `n` bytes must really store, the write being
/// zeros if `zero`; called by `memset` for every fill. A zero fill stores only its part
/// below the untouched tail (the rest is zero already); any write that reaches into the
/// tail moves the tail's start past it, since the owner writes those bytes from now on.
pub fn zero_fill_len(dest: usize, n: usize, zero: bool) -> usize {
    let (from, end) = (
        UNTOUCHED.from.load(Ordering::Relaxed),
        UNTOUCHED.end.load(Ordering::Relaxed),
    );
    let stop = dest.saturating_add(n);
    if n == 0 || stop <= from || dest >= end {
        return n;
    }
    if stop > end {
        // Reaches past the buffer: not an engine exposing memory. Drop the tail rather
        // than reason about it.
        UNTOUCHED.from.store(end, Ordering::Relaxed);
        return n;
    }
    UNTOUCHED.from.store(stop, Ordering::Relaxed);
    if zero {
        from.saturating_sub(dest).min(n)
    } else {
        n
    }
}

/// Where the linear-memory buffer's untouched tail starts: the engine checks, after it
/// created the memory, that its zero fill went through `memset` and moved it.
pub fn untouched_from() -> usize {
    UNTOUCHED.from.load(Ordering::Relaxed)
}

/// Forgets the untouched tail, so every later fill writes: for an engine whose fills did
/// not move it as they should.
pub fn forget_untouched() {
    UNTOUCHED
        .from
        .store(UNTOUCHED.end.load(Ordering::Relaxed), Ordering::Relaxed);
}

// SAFETY: every method forwards to `LockedHeap`, a correct allocator; `alloc_zeroed` only
// skips zeroing bytes that are zero already (see `Heap::high_water`).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.inner.alloc(layout) };
        self.high_water
            .fetch_max(ptr as usize + layout.size(), Ordering::Relaxed);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.inner.alloc(layout) };
        if ptr.is_null() {
            return ptr;
        }
        let start = ptr as usize;
        let end = start + layout.size();
        let mark = self.high_water.fetch_max(end, Ordering::Relaxed);
        // Below the mark memory may hold old data; just above it lies the hole header.
        let dirty_end = end.min((mark + HOLE_HEADER_SLACK).max(start));
        // SAFETY: [start, dirty_end) lies within the block just allocated.
        unsafe { core::ptr::write_bytes(ptr, 0, dirty_end - start) };
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        self.high_water
            .fetch_max(new as usize + new_size, Ordering::Relaxed);
        new
    }
}

/// Hands `[start, end)` to the allocator. Called once, before the first allocation.
/// `zeroed`: the loader zeroed the range (our VMMs, QEMU's PVH loader), so `alloc_zeroed`
/// may skip fresh memory; firmware (disk images) leaves RAM dirty.
///
/// # Safety
/// The range must be RAM, identity mapped, zero if `zeroed`, and used by nothing else for
/// the rest of the run.
pub unsafe fn init(start: u64, end: u64, zeroed: bool) {
    // SAFETY: the caller guarantees the range is otherwise unused RAM.
    unsafe {
        HEAP.inner
            .lock()
            .init(start as *mut u8, (end - start) as usize)
    };
    let clean_from = if zeroed { start } else { end };
    HEAP.high_water
        .store(clean_from as usize, Ordering::Relaxed);
    ZEROED.store(zeroed, Ordering::Relaxed);
}

/// Bytes of heap in use and free, for `--verbose`.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.inner.lock();
    (heap.used(), heap.free())
}

/// The front of the heap's big free stretch, the one that runs to the heap's end. First fit
/// hands a `probe` the lowest hole that fits, which may be a crumb freed below the big
/// stretch; the probe is at the front of the big stretch exactly when the rest of the heap
/// after it is one free hole, which an allocation of all of it tells (without writing a
/// header: it takes the hole whole). Probes that land in crumbs stay held until the front is
/// found, so that the next one skips them. Every header written lands in memory the kernel
/// used before, or one probe's length past the front, next to what it uses now; a guess
/// that overshot would instead write one at a random address, touching a huge page.
fn big_stretch_front(probe: Layout) -> Option<*mut u8> {
    const MAX_CRUMBS: usize = 32;
    let mut crumbs = [core::ptr::null_mut::<u8>(); MAX_CRUMBS];
    let mut front = None;
    for crumb in crumbs.iter_mut() {
        // SAFETY: the layout has a non-zero size.
        let at = unsafe { HEAP.alloc(probe) };
        if at.is_null() {
            break;
        }
        let after = at as usize + probe.size();
        let top = HEAP.inner.lock().top() as usize;
        let rest = Layout::from_size_align(top.saturating_sub(after), probe.align()).ok();
        // SAFETY: the layout has a non-zero size.
        let taken = rest
            .filter(|r| r.size() > 0)
            .map_or(core::ptr::null_mut(), |r| unsafe { HEAP.alloc(r) });
        if let (Some(rest), false) = (rest, taken.is_null()) {
            // SAFETY: `taken` came from `alloc` with this layout just above.
            unsafe { HEAP.dealloc(taken, rest) };
        }
        if taken as usize == after {
            // SAFETY: `at` came from `alloc` with this layout just above.
            unsafe { HEAP.dealloc(at, probe) };
            front = Some(at);
            break;
        }
        *crumb = at;
    }
    for &crumb in crumbs.iter().filter(|c| !c.is_null()) {
        // SAFETY: each crumb came from `alloc` with `probe` above and is freed once.
        unsafe { HEAP.dealloc(crumb, probe) };
    }
    front
}

/// A buffer about `below` bytes above the heap's lowest free stretch, of `len` bytes or
/// else up to the heap's very end, that lives for the rest of the run (the interpreter's
/// linear memory); `None` if the heap has no such stretch. The kernel's own later
/// allocations go to the stretch below it, next to what it already uses; and as the buffer
/// ends where the heap does, no free block (whose header the allocator would write) lies
/// beyond it: with huge pages either would touch a 2 MiB page of its own.
///
/// The buffer starts on a 2 MiB boundary, so the app's first pages (its stack and data)
/// share one huge page rather than straddle two; the
/// kernel keeps between `below - 2 MiB` and `below` bytes for itself.
///
/// Not zeroed here: the engine zeroes every range it exposes (the initial pages, then each
/// growth), which on zeroed RAM writes nothing (the buffer becomes the [`Untouched`] tail),
/// so pages stay untouched until the app uses them; and on a firmware boot (dirty RAM)
/// nothing zeroes all of guest RAM up front.
pub fn static_buffer(below: usize, len: Option<usize>) -> Option<&'static mut [u8]> {
    const ALIGN: usize = 16;
    const HUGE_PAGE: usize = 2 << 20;
    // Everything the kernel has written lies below this (and the free hole's header just
    // above it); the probes below hand out blocks but write nothing into them.
    let written_below = HEAP.high_water.load(Ordering::Relaxed) + HOLE_HEADER_SLACK;
    let layout = |size: usize| Layout::from_size_align(size.max(ALIGN), ALIGN).ok();
    // The spacer must end exactly at the 2 MiB boundary where the buffer starts: a gap would
    // be a free block whose header the allocator writes, touching a huge page for nothing.
    // So first find the front of the heap's big free stretch.
    let mut front = big_stretch_front(layout(64 << 10)?)?;
    let kept = below.saturating_sub(HUGE_PAGE);
    let mut placed = None;
    for _ in 0..2 {
        let start = (front as usize + kept).next_multiple_of(HUGE_PAGE);
        let spacer = layout(start - front as usize)?;
        // SAFETY: the layout has a non-zero size.
        let held = unsafe { HEAP.alloc(spacer) };
        if held.is_null() {
            return None;
        }
        if held == front {
            placed = Some((held, spacer, start));
            break;
        }
        // A crumb below the big stretch was as large as the spacer: start again from
        // where the spacer went.
        // SAFETY: `held` came from `alloc` with this layout just above.
        unsafe { HEAP.dealloc(held, spacer) };
        front = held;
    }
    let (held, spacer, start) = placed?;
    let top = HEAP.inner.lock().top() as usize;
    let len = len.unwrap_or(top.saturating_sub(start));
    let ptr = match Layout::from_size_align(len, ALIGN) {
        // SAFETY: the layout has a non-zero size.
        Ok(layout) if len > 0 => unsafe { HEAP.alloc(layout) },
        _ => core::ptr::null_mut(),
    };
    // SAFETY: `held` came from `alloc` with this layout just above.
    unsafe { HEAP.dealloc(held, spacer) };
    if ptr.is_null() {
        return None;
    }
    if ZEROED.load(Ordering::Relaxed) && UNTOUCHED.end.load(Ordering::Relaxed) == 0 {
        // The buffer's first bytes hold the free hole's header (the spacer split the hole
        // there): the engine's zero fill must store over them.
        let end = ptr as usize + len;
        let from = (ptr as usize + HOLE_HEADER_SLACK).max(written_below);
        UNTOUCHED.from.store(from.min(end), Ordering::Relaxed);
        UNTOUCHED.end.store(end, Ordering::Relaxed);
    }
    // SAFETY: `ptr` is a fresh allocation of `len` bytes that is never freed, so handing
    // out the only reference to it for 'static is sound; u8 has no invalid values, and
    // the engine writes zeros over every byte before the app can read it.
    Some(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}
