//! Reads of physical memory handed over by the loader (start info, memory map, command line,
//! modules, the app bundle). Memory is identity mapped, so a physical address is a pointer;
//! this module is the one place that turns such addresses into slices, and it refuses ranges
//! outside the mapped 4 GiB or outside RAM the loader described.

use wasmvm_abi::pvh::{self, MemmapEntry, StartInfo};

/// The boot page tables map the low 4 GiB.
const MAPPED_LIMIT: u64 = 1 << 32;

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical address range of the kernel image (text, data, bss and stack).
pub fn kernel_range() -> (u64, u64) {
    // Only the addresses of the linker-defined symbols are taken, never their contents.
    (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    )
}

/// Borrows `len` bytes at physical address `paddr` for the rest of the run.
///
/// Only for memory the loader filled before entry and nobody writes afterwards (the caller
/// vouches for that); the range must lie in the identity-mapped 4 GiB.
pub fn loader_bytes(paddr: u64, len: u64) -> Option<&'static [u8]> {
    let end = paddr.checked_add(len)?;
    if paddr == 0 || end > MAPPED_LIMIT {
        return None;
    }
    // SAFETY: the range is mapped (identity map of the low 4 GiB, checked above), non-null,
    // and by the caller's promise initialised by the loader and never written again.
    Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len as usize) })
}

/// Parses the `hvm_start_info` at `paddr` without allocating (the heap does not exist yet),
/// except for the module list, which is read later by [`modules`].
pub fn start_info(paddr: u64) -> Option<(StartInfo, &'static [u8])> {
    let start = StartInfo::decode(loader_bytes(paddr, pvh::START_INFO_LEN as u64)?).ok()?;
    let cmdline = if start.cmdline_paddr != 0 {
        // The command line is NUL terminated; QEMU limits it to a page or two.
        let max = loader_bytes(start.cmdline_paddr, 4096).unwrap_or(&[]);
        let len = max.iter().position(|&b| b == 0).unwrap_or(max.len());
        &max[..len]
    } else {
        &[]
    };
    Some((start, cmdline))
}

/// The memory map entries, up to `N` of them.
pub fn memmap<const N: usize>(start: &StartInfo) -> [Option<MemmapEntry>; N] {
    let mut out = [None; N];
    let count = (start.memmap_entries as usize).min(N);
    let table = loader_bytes(start.memmap_paddr, (count * pvh::MEMMAP_ENTRY_LEN) as u64);
    if let Some(table) = table {
        for (slot, raw) in out
            .iter_mut()
            .zip(table.chunks_exact(pvh::MEMMAP_ENTRY_LEN))
        {
            *slot = MemmapEntry::decode(raw).ok();
        }
    }
    out
}

/// The descriptor of the `i`-th PVH module (under QEMU, the `-initrd` file).
pub fn module_entry(start: &StartInfo, i: u32) -> Option<pvh::Module> {
    if i >= start.nr_modules {
        return None;
    }
    let at = start
        .modlist_paddr
        .checked_add(i as u64 * pvh::MODLIST_ENTRY_LEN as u64)?;
    pvh::Module::decode(loader_bytes(at, pvh::MODLIST_ENTRY_LEN as u64)?).ok()
}

/// The `i`-th PVH module's contents.
pub fn module(start: &StartInfo, i: u32) -> Option<&'static [u8]> {
    let m = module_entry(start, i)?;
    loader_bytes(m.paddr, m.size)
}
