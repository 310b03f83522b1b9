//! Reads of physical memory handed over by the loader (start info, memory map, command line,
//! modules, the app bundle). Memory is identity mapped, so a physical address is a pointer;
//! this module is the one place that turns such addresses into slices, and it refuses ranges
//! outside the mapped 4 GiB or outside RAM the loader described.

use wasmvm_abi::multiboot2;
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

/// What the loader handed over, from either boot protocol: PVH's `hvm_start_info` (our VMM,
/// QEMU, Firecracker, Cloud Hypervisor) or Multiboot2's information (GRUB in disk images).
/// Built before the heap exists, so it holds fixed-size copies.
pub struct Handover {
    pub cmdline: &'static [u8],
    memmap: [Option<MemmapEntry>; 64],
    modules: [Option<pvh::Module>; 4],
    /// The ACPI root pointer (a copy the loader made, or the firmware's), if any.
    pub rsdp: Option<&'static [u8]>,
    /// Loader structures the heap must not overwrite: `[start, end)`.
    reserved: [(u64, u64); 8],
}

impl Handover {
    fn empty(cmdline: &'static [u8]) -> Self {
        Handover {
            cmdline,
            memmap: [None; 64],
            modules: [None; 4],
            rsdp: None,
            reserved: [(0, 0); 8],
        }
    }

    /// From the `hvm_start_info` at `paddr`.
    pub fn pvh(paddr: u64) -> Option<Self> {
        let (start, cmdline) = start_info(paddr)?;
        let mut out = Handover::empty(cmdline);
        for (slot, entry) in out.memmap.iter_mut().zip(memmap::<64>(&start)) {
            *slot = entry;
        }
        for (i, slot) in out.modules.iter_mut().enumerate() {
            *slot = module_entry(&start, i as u32);
        }
        if start.rsdp_paddr != 0 {
            out.rsdp = loader_bytes(start.rsdp_paddr, 36);
        }
        out.reserved[0] = (paddr, paddr + pvh::START_INFO_LEN as u64);
        out.reserved[1] = (start.cmdline_paddr, start.cmdline_paddr + 4096);
        let table = start.memmap_entries as u64 * pvh::MEMMAP_ENTRY_LEN as u64;
        out.reserved[2] = (start.memmap_paddr, start.memmap_paddr + table);
        out.reserve_modules();
        Some(out)
    }

    /// From the Multiboot2 information at `paddr`.
    pub fn multiboot2(paddr: u64) -> Option<Self> {
        let len = multiboot2::info_len(loader_bytes(paddr, 8)?).ok()?;
        let bytes = loader_bytes(paddr, len as u64)?;
        let info = multiboot2::Info::new_checked(bytes).ok()?;
        let mut out = Handover::empty(info.cmdline().unwrap_or(&[]));
        for (slot, entry) in out.memmap.iter_mut().zip(info.memory_map()) {
            *slot = Some(entry);
        }
        for (slot, module) in out.modules.iter_mut().zip(info.modules()) {
            *slot = Some(module);
        }
        out.rsdp = info.rsdp();
        out.reserved[0] = (paddr, paddr + len as u64);
        out.reserve_modules();
        Some(out)
    }

    fn reserve_modules(&mut self) {
        for (slot, m) in self.reserved[4..]
            .iter_mut()
            .zip(self.modules.iter().flatten())
        {
            *slot = (m.paddr, m.paddr.saturating_add(m.size));
        }
    }

    pub fn memmap(&self) -> impl Iterator<Item = MemmapEntry> + Clone + '_ {
        self.memmap.iter().flatten().copied()
    }

    /// The `i`-th module's contents (under QEMU the `-initrd` file, under GRUB `module2`).
    pub fn module(&self, i: usize) -> Option<&'static [u8]> {
        let m = (*self.modules.get(i)?)?;
        loader_bytes(m.paddr, m.size)
    }

    /// Where the heap goes: the largest free RAM at or above `floor` in the mapped 4 GiB
    /// (`wasmvm_abi::pvh::heap_region`).
    pub fn heap_region(&self, floor: u64) -> Option<(u64, u64)> {
        pvh::heap_region(self.memmap(), floor, MAPPED_LIMIT, &self.reserved)
    }
}
