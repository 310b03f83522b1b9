//! The kernel heap: one `linked_list_allocator` over the largest free stretch of RAM.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, end)` to the allocator. Called once, before the first allocation.
///
/// # Safety
/// The range must be RAM, identity mapped, and used by nothing else for the rest of the run.
pub unsafe fn init(start: u64, end: u64) {
    // SAFETY: the caller guarantees the range is otherwise unused RAM.
    unsafe { HEAP.lock().init(start as *mut u8, (end - start) as usize) }
}

/// Bytes of heap in use and free, for `--verbose`.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}
