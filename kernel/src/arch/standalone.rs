//! Ring-0 setup for the Multiboot2 path (an exported disk image booted by GRUB on a standard
//! PC): find the virtio PCI devices and make their registers reachable, before the drop to
//! CPL 3.
//!
//! PCI configuration space sits behind ports 0xcf8/0xcfc, which CPL 3 can reach only with
//! `in`/`out dx` — impossible on the nested KVM this kernel otherwise targets — so the
//! devices are enumerated here, and `virtio-drivers`' `PciTransport`s are built here too (they
//! read the virtio capabilities from configuration space once; afterwards they speak only
//! MMIO, which works at CPL 3). Firmware may place 64-bit BARs above 4 GiB, beyond the boot
//! identity map (OVMF does, up to the top of the physical address space); those get uncached
//! identity mappings from a few spare page tables.
//!
//! Everything here runs once, with interrupts off and a single CPU, before `kernel_main`.

use core::arch::asm;

use spin::Mutex;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, HeaderType, PciRoot,
};

use crate::virtio::{KernelHal, Pinned};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Virtio PCI device IDs: 0x1000–0x103f transitional, 0x1040–0x107f modern.
const VIRTIO_DEVICE_IDS: core::ops::RangeInclusive<u16> = 0x1000..=0x107f;
/// How many virtio functions the kernel keeps (console, network, a few more).
const MAX_DEVICES: usize = 8;
/// Spare page directories for BARs above 4 GiB: each maps one GiB.
const SPARE_DIRECTORIES: usize = 4;
/// Spare page directory pointer tables for BARs above 512 GiB: each covers 512 GiB.
const SPARE_POINTER_TABLES: usize = 2;
/// Page directory entry flags for MMIO: present, writable, user, PWT|PCD (uncached), 2 MiB.
const MMIO_PAGE: u64 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x80;
/// Flags of an entry pointing to a lower table: present, writable, user.
const TABLE: u64 = 0x7;
/// Bits 12–51 of a table entry: the next table's physical address.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// The virtio devices found, for `kernel_main` to take.
static DEVICES: Mutex<[Option<Pinned<PciTransport>>; MAX_DEVICES]> =
    Mutex::new([const { None }; MAX_DEVICES]);

#[repr(C, align(4096))]
struct Tables<const N: usize>([[u64; 512]; N]);

static mut SPARE_PDS: Tables<SPARE_DIRECTORIES> = Tables([[0; 512]; SPARE_DIRECTORIES]);
static mut SPARE_PDPTS: Tables<SPARE_POINTER_TABLES> = Tables([[0; 512]; SPARE_POINTER_TABLES]);

unsafe extern "C" {
    /// The boot PML4 (boot.rs): entry 0 points to `boot_pdpt`, the rest are empty.
    static mut boot_pml4: [u64; 512];
}

/// Configuration mechanism #1 through ports 0xcf8/0xcfc. Only for CPL 0 (see the module
/// documentation).
#[derive(Clone, Copy)]
struct PortCam;

fn config_address(df: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | (u32::from(df.bus) << 16)
        | (u32::from(df.device) << 11)
        | (u32::from(df.function) << 8)
        | u32::from(offset & 0xfc)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let value: u32;
        // SAFETY: CPL 0 (this module runs before the drop); selecting a configuration
        // register and reading it has no effect on memory.
        unsafe {
            asm!("out dx, eax", in("dx") CONFIG_ADDRESS, in("eax") config_address(df, offset), options(nomem, nostack, preserves_flags));
            asm!("in eax, dx", in("dx") CONFIG_DATA, out("eax") value, options(nomem, nostack, preserves_flags));
        }
        value
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: as for `read_word`; the callers only write command and BAR registers of
        // devices this module drives.
        unsafe {
            asm!("out dx, eax", in("dx") CONFIG_ADDRESS, in("eax") config_address(df, offset), options(nomem, nostack, preserves_flags));
            asm!("out dx, eax", in("dx") CONFIG_DATA, in("eax") data, options(nomem, nostack, preserves_flags));
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// Called from boot.rs at CPL 0 on the Multiboot2 path, before `kernel_main`.
pub extern "C" fn setup() {
    let mut root = PciRoot::new(PortCam);
    let mut devices = DEVICES.lock();
    let mut found = 0;
    let mut spare = Spare::default();
    // Buses to scan: 0, then every bridge's secondary bus (firmware numbered them).
    let mut pending = [0u8; 64];
    let mut pending_len = 1;
    let mut seen = [false; 256];
    while pending_len > 0 {
        pending_len -= 1;
        let bus = pending[pending_len];
        if core::mem::replace(&mut seen[usize::from(bus)], true) {
            continue;
        }
        for (df, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                let secondary = (PortCam.read_word(df, 0x18) >> 8) as u8;
                if secondary != 0 && pending_len < pending.len() {
                    pending[pending_len] = secondary;
                    pending_len += 1;
                }
                continue;
            }
            if info.vendor_id != VIRTIO_VENDOR
                || !VIRTIO_DEVICE_IDS.contains(&info.device_id)
                || found == MAX_DEVICES
            {
                continue;
            }
            let Ok(bars) = root.bars(df) else { continue };
            let mut reachable = true;
            for bar in bars.iter().flatten() {
                if let BarInfo::Memory { address, size, .. } = *bar
                    && size > 0
                {
                    // Address 0: firmware left it unassigned; decoding it would shadow RAM.
                    reachable &= address != 0 && map_mmio(address, size, &mut spare);
                }
            }
            if !reachable {
                continue;
            }
            if let Ok(transport) = PciTransport::new::<KernelHal, _>(&mut root, df) {
                // The transport works through memory BARs and the device DMAs into RAM.
                root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
                devices[found] = Some(Pinned(transport));
                found += 1;
            }
        }
    }
}

/// Spare tables handed out so far.
#[derive(Default)]
struct Spare {
    directories: usize,
    pointer_tables: usize,
}

/// Makes `[address, address + size)` reachable through the identity map: already so below
/// 4 GiB; above, by filling empty entries with spare page directory pointer tables and
/// directories of uncached 2 MiB pages. False if the spares run out or the range lies beyond
/// 48-bit addresses.
fn map_mmio(address: u64, size: u64, spare: &mut Spare) -> bool {
    let Some(end) = address.checked_add(size) else {
        return false;
    };
    if end <= 1 << 32 {
        return true;
    }
    if end > 1 << 48 {
        return false;
    }
    let pml4 = (&raw mut boot_pml4).cast::<u64>();
    let pointer_tables = (&raw mut SPARE_PDPTS).cast::<[u64; 512]>();
    let directories = (&raw mut SPARE_PDS).cast::<[u64; 512]>();
    for gib in (address >> 30)..=((end - 1) >> 30) {
        // SAFETY: CPL 0, one CPU, before anything else runs: nothing reads or writes the
        // page tables concurrently. Indices are < 512 (`gib` < 2^18); spare tables are
        // unused until handed out here, and each entry filled here was empty.
        unsafe {
            let pml4_entry = pml4.add((gib >> 9) as usize);
            if pml4_entry.read_volatile() == 0 {
                if spare.pointer_tables == SPARE_POINTER_TABLES {
                    return false;
                }
                let table = pointer_tables.add(spare.pointer_tables);
                spare.pointer_tables += 1;
                pml4_entry.write_volatile((table as u64) | TABLE);
            }
            let pdpt = (pml4_entry.read_volatile() & ADDRESS) as *mut u64;
            let pdpt_entry = pdpt.add((gib & 511) as usize);
            if pdpt_entry.read_volatile() != 0 {
                continue;
            }
            if spare.directories == SPARE_DIRECTORIES {
                return false;
            }
            let directory = &mut *directories.add(spare.directories);
            spare.directories += 1;
            for (i, pde) in directory.iter_mut().enumerate() {
                *pde = ((gib << 30) + ((i as u64) << 21)) | MMIO_PAGE;
            }
            pdpt_entry.write_volatile((directory.as_ptr() as u64) | TABLE);
        }
    }
    // A new mapping replaces a non-present entry, which no TLB caches; reload CR3 anyway,
    // so that paging-structure caches hold nothing stale.
    // SAFETY: CPL 0; CR3 is rewritten with its own value.
    unsafe {
        asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack, preserves_flags));
    }
    true
}

/// Takes the devices `setup` found (each at most once).
pub fn take_devices() -> impl Iterator<Item = PciTransport> {
    let mut devices = DEVICES.lock();
    let taken: [Option<Pinned<PciTransport>>; MAX_DEVICES] =
        core::array::from_fn(|i| devices[i].take());
    taken.into_iter().flatten().map(|p| p.0)
}
