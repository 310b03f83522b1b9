//! Where things sit in a built-in VMM guest's physical address space. The kernel is linked
//! at 2 MiB, so nothing of the first 2 MiB is touched (with huge pages, an untouched 2 MiB is
//! never zeroed nor made resident); the boot structures ([`BootArea`]) and then the run
//! configuration go on the pages right after the image (`machine::write_pvh_structures`);
//! the direct entry's page tables sit alone above RAM; devices sit in one MMIO window each,
//! far above that.

use wasmvm_abi::direct::console_rings;
use wasmvm_abi::pvh::{MEMMAP_ENTRY_LEN, MODLIST_ENTRY_LEN, START_INFO_LEN};
use wasmvm_abi::{align_up, direct::BOOT_INFO_LEN};

/// The guest page size the VMM lays things out in.
pub const PAGE_SIZE: u64 = 4096;

/// The structures the VMM hands a guest at entry, on the pages right after the image (the
/// kernel with its stack, then the app bundle). They share the 2 MiB page that the stack's
/// top, the bundle and the heap's first blocks touch anyway: in low memory they cost a huge
/// page of their own, zeroed by the host and faulted in by the guest. The guest learns each
/// address from the boot info (`%rdi`) or the PVH start info (`%ebx`), never from a
/// constant, and the PVH memory map marks the area reserved so that the heap stays clear of
/// it ([`BootArea::memmap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootArea {
    base: u64,
}

impl BootArea {
    // The small structures share the area's first page.
    /// The kvmclock page (`pvclock_vcpu_time_info`, 32 bytes), for the direct entry.
    const PVCLOCK: u64 = 0x000;
    /// `wasmvm_abi::direct::BootInfo`, for the direct entry.
    const BOOT_INFO: u64 = 0x040;
    /// PVH `hvm_start_info`.
    const START_INFO: u64 = 0x080;
    /// The PVH memory map.
    const MEMMAP: u64 = 0x100;
    /// The PVH module list: the run configuration as module 0.
    const MODLIST: u64 = 0x200;
    /// The direct entry's GDT.
    const GDT: u64 = 0x300;
    /// The kernel command line, NUL-terminated, on a page of its own (the kernel reads and
    /// reserves a page from its start).
    const CMDLINE: u64 = PAGE_SIZE;
    /// The console's queues when the VMM sets it up for the guest (`CONSOLE_READY`).
    const CONSOLE_RINGS: u64 = 2 * PAGE_SIZE;
    /// Bytes the area spans, a whole number of pages.
    pub const LEN: u64 = Self::CONSOLE_RINGS + console_rings::LEN;
    /// Entries of the PVH memory map: RAM below the area, the area itself (reserved), RAM
    /// above it.
    pub const MEMMAP_ENTRIES: usize = 3;
    /// The longest command line, terminator included.
    pub const CMDLINE_MAX: usize = PAGE_SIZE as usize;
    /// The longest GDT, in descriptors.
    pub const GDT_MAX: usize = ((Self::CMDLINE - Self::GDT) / 8) as usize;

    /// The area on the page after `image_end` (where the image's last segment ends).
    pub fn after(image_end: u64) -> Self {
        BootArea {
            base: align_up(image_end, PAGE_SIZE),
        }
    }

    pub fn start(&self) -> u64 {
        self.base
    }
    /// The first byte after the area: where the run configuration goes.
    pub fn end(&self) -> u64 {
        self.base + Self::LEN
    }
    pub fn pvclock(&self) -> u64 {
        self.base + Self::PVCLOCK
    }
    pub fn boot_info(&self) -> u64 {
        self.base + Self::BOOT_INFO
    }
    pub fn start_info(&self) -> u64 {
        self.base + Self::START_INFO
    }
    pub fn memmap(&self) -> u64 {
        self.base + Self::MEMMAP
    }
    pub fn modlist(&self) -> u64 {
        self.base + Self::MODLIST
    }
    pub fn gdt(&self) -> u64 {
        self.base + Self::GDT
    }
    pub fn cmdline(&self) -> u64 {
        self.base + Self::CMDLINE
    }
    pub fn console_rings(&self) -> u64 {
        self.base + Self::CONSOLE_RINGS
    }
}

/// PML4, PDPT and four page directories identity-mapping 4 GiB (direct entry only), in a
/// memory slot of their own above RAM. A host that shadows the guest's page tables (nested
/// KVM without hardware virtualization) write-protects them, and then maps the whole 2 MiB
/// around them with 4 KiB pages: in low memory that made every page of the kernel's code a
/// fault of its own (~270 exits at tens of µs each for a hello) instead of one.
pub const PAGE_TABLES_ADDR: u64 = MAX_RAM;
/// How many page-table pages start at [`PAGE_TABLES_ADDR`].
pub const PAGE_TABLE_PAGES: u64 = 6;

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

// Each structure fits before the next, and the small ones in the area's first page.
const _: () = assert!(BootArea::PVCLOCK + 32 <= BootArea::BOOT_INFO);
const _: () = assert!(BootArea::BOOT_INFO + BOOT_INFO_LEN as u64 <= BootArea::START_INFO);
const _: () = assert!(BootArea::START_INFO + START_INFO_LEN as u64 <= BootArea::MEMMAP);
const _: () = assert!(
    BootArea::MEMMAP + (BootArea::MEMMAP_ENTRIES * MEMMAP_ENTRY_LEN) as u64 <= BootArea::MODLIST
);
const _: () = assert!(BootArea::MODLIST + MODLIST_ENTRY_LEN as u64 <= BootArea::GDT);
const _: () = assert!(BootArea::GDT + (BootArea::GDT_MAX * 8) as u64 <= BootArea::CMDLINE);
const _: () = assert!(BootArea::CMDLINE + BootArea::CMDLINE_MAX as u64 <= BootArea::CONSOLE_RINGS);
const _: () = assert!(BootArea::CONSOLE_RINGS.is_multiple_of(PAGE_SIZE));
const _: () = assert!(BootArea::LEN.is_multiple_of(PAGE_SIZE));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_area_starts_on_the_page_after_the_image_and_holds_its_structures_in_order() {
        let area = BootArea::after(0x4f_a070);
        assert_eq!(area.start(), 0x4f_b000);
        let starts = [
            area.pvclock(),
            area.boot_info(),
            area.start_info(),
            area.memmap(),
            area.modlist(),
            area.gdt(),
            area.cmdline(),
            area.console_rings(),
            area.end(),
        ];
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:x?}");
        assert_eq!(area.console_rings() % PAGE_SIZE, 0);
        assert_eq!(area.end() - area.start(), BootArea::LEN);
        // An image that ends on a page boundary gets the very next page.
        assert_eq!(BootArea::after(0x40_0000).start(), 0x40_0000);
    }
}
