//! Where things sit in a built-in VMM guest's physical address space. The boot structures go
//! in low memory below the kernel's 1 MiB load address; the run configuration goes on the
//! page after the image (`machine::write_pvh_structures`); the direct entry's page tables
//! sit alone above RAM; devices sit in one MMIO window each, far above that.

/// The guest page size the VMM lays things out in.
pub const PAGE_SIZE: u64 = 4096;

/// The kvmclock page (`pvclock_vcpu_time_info`), registered by the VMM for the direct entry.
pub const PVCLOCK_ADDR: u64 = 0x4000;
/// `wasmvm_abi::direct::BootInfo`, for the direct entry (`%rdi` points here).
pub const BOOT_INFO_ADDR: u64 = 0x5000;
/// PVH `hvm_start_info` (`%ebx` points here on the PVH entry).
pub const START_INFO_ADDR: u64 = 0x6000;
/// The PVH memory map: one RAM entry.
pub const MEMMAP_ADDR: u64 = 0x7000;
/// The PVH module list: the run configuration as module 0.
pub const MODLIST_ADDR: u64 = 0x8000;
/// The kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x9000;
/// The longest command line, terminator included: it must end before the GDT.
pub const CMDLINE_MAX: usize = (GDT_ADDR - CMDLINE_ADDR) as usize;
/// The direct entry's GDT.
pub const GDT_ADDR: u64 = 0xa000;
/// PML4, PDPT and four page directories identity-mapping 4 GiB (direct entry only), in a
/// memory slot of their own above RAM. A host that shadows the guest's page tables (nested
/// KVM without hardware virtualization) write-protects them, and then maps the whole 2 MiB
/// around them with 4 KiB pages: in low memory that made every page of the kernel's code a
/// fault of its own (~270 exits at tens of µs each for a hello) instead of one.
pub const PAGE_TABLES_ADDR: u64 = MAX_RAM;
/// How many page-table pages start at [`PAGE_TABLES_ADDR`].
pub const PAGE_TABLE_PAGES: u64 = 6;
/// The console's queues when the VMM sets it up for the guest (`CONSOLE_READY`).
pub const CONSOLE_RINGS_ADDR: u64 = 0x20000;

/// Where the first device's MMIO registers live; each device has one window after it.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// The interrupt line announced for the first device; the kernel polls and ignores it.
pub const FIRST_IRQ: u64 = 5;

/// The most guest RAM the built-in VMM gives (`--memory` is at most 3 GiB).
pub const MAX_RAM: u64 = 3 << 30;

// The page tables' slot and the devices sit above any guest RAM, in that order; the page
// tables start a 2 MiB page of their own.
const _: () = assert!(PAGE_TABLES_ADDR >= MAX_RAM && PAGE_TABLES_ADDR.is_multiple_of(2 << 20));
const _: () = assert!(PAGE_TABLES_ADDR + PAGE_TABLE_PAGES * PAGE_SIZE <= MMIO_BASE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memory_structures_do_not_overlap() {
        let mut regions = [
            (PVCLOCK_ADDR, PAGE_SIZE),
            (BOOT_INFO_ADDR, PAGE_SIZE),
            (START_INFO_ADDR, PAGE_SIZE),
            (MEMMAP_ADDR, PAGE_SIZE),
            (MODLIST_ADDR, PAGE_SIZE),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
            (GDT_ADDR, PAGE_SIZE),
            (
                CONSOLE_RINGS_ADDR,
                2 * wasmvm_abi::direct::console_rings::QUEUE_SPAN,
            ),
        ];
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        // All below the kernel's load address.
        let (last, len) = regions[regions.len() - 1];
        assert!(last + len <= 1 << 20);
    }
}
