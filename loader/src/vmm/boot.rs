//! The vCPU's state at the kernel's first instruction, as data: the entry points an image
//! offers, the direct entry's page tables, GDT, segments and control registers, and the PVH
//! entry's 32-bit state. Nothing here talks to KVM, so all of it is unit-tested.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use thiserror::Error;
use wasmvm_abi::bundle::kernel_note;
use wasmvm_abi::pvh;

use super::layout::{BootArea, PAGE_TABLE_PAGES, PAGE_TABLES_ADDR};
use crate::image::elf::{Elf, ElfError};

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootPath {
    /// The direct 64-bit CPL-3 entry of `wasmvm_abi::direct` when the kernel has one, else
    /// PVH.
    #[default]
    Best,
    /// The 32-bit PVH entry, as QEMU boots the image (for tests of that path).
    Pvh,
}

/// Why the built-in VMM could not build a VM for an image.
#[derive(Debug, Error)]
pub enum BootError {
    #[error("the image is not a loadable ELF kernel: {0}")]
    Elf(ElfError),
    #[error("the image has neither a direct nor a PVH entry note")]
    NoEntry,
    #[error(
        "the image's kernel entry point {entry:#x} lies outside the code it loads: a damaged or crafted image, refused"
    )]
    EntryOutsideImage { entry: u64 },
    #[error(
        "the image's segment at {addr:#x} ({len} bytes) does not fit in guest memory of {memory_mib} MiB: give the VM at least --memory {needed_mib}M"
    )]
    SegmentDoesNotFit {
        addr: u64,
        len: u64,
        memory_mib: u64,
        needed_mib: u64,
    },
    #[error("{memory_mib} MiB of guest memory is more than the built-in VMM gives (3072 MiB)")]
    TooMuchMemory { memory_mib: u64 },
    #[error(
        "the run configuration ({len} bytes: arguments, environment, shares) does not fit in guest memory of {memory_mib} MiB after the image: give the VM at least --memory {needed_mib}M"
    )]
    ConfigDoesNotFit {
        len: usize,
        memory_mib: u64,
        needed_mib: u64,
    },
    #[error("cannot reserve {memory_mib} MiB of guest memory: {cause}")]
    GuestMemory {
        memory_mib: u64,
        cause: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot map the image into guest memory: {cause}")]
    MapImage { cause: std::io::Error },
    #[error("cannot write {what} at guest address {addr:#x}: {cause}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        cause: vm_memory::GuestMemoryError,
    },
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    /// A KVM call failed while the VM was being created (`step` names it).
    #[error("KVM could not {step}: {cause}")]
    Kvm {
        step: &'static str,
        cause: kvm_ioctls::Error,
    },
}

/// A map_err adapter for a KVM call made while `step`.
pub(crate) fn kvm_step(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |cause| BootError::Kvm { step, cause }
}

/// Control-register and EFER bits the entries set (Intel SDM vol. 3, 2.5 and 2.2.1).
pub mod bits {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    /// RFLAGS bit 1 is reserved and always set.
    pub const RFLAGS_RESERVED: u64 = 1 << 1;
    /// RFLAGS.IOPL = 3: port I/O (the exit and wait ports) allowed at CPL 3.
    pub const RFLAGS_IOPL3: u64 = 3 << 12;
    /// Page-table entry bits.
    pub const PTE_PRESENT: u64 = 1 << 0;
    pub const PTE_WRITABLE: u64 = 1 << 1;
    pub const PTE_USER: u64 = 1 << 2;
    /// In a page-directory entry: a 2 MiB page.
    pub const PDE_HUGE: u64 = 1 << 7;
}
use bits::*;

/// The GDT of the direct entry: null, kernel code and data, user data (0x18) and user code
/// (0x20), as the kernel's own PVH path builds it.
pub const GDT: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
];
const _: () = assert!(GDT.len() <= BootArea::GDT_MAX);
/// Selectors of the direct entry: user data and user code at RPL 3.
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
/// The TSS selector (past the GDT's end: never loaded, see [`direct_sregs`]).
const TSS_SELECTOR: u16 = 0x28;
/// Selectors of the PVH entry: flat 32-bit ring-0 code and data.
const PVH_CS: u16 = 0x08;
const PVH_DS: u16 = 0x10;

/// The entry address in the kernel's direct-entry note, if it has one.
pub fn direct_entry(elf: &Elf) -> Option<u64> {
    elf.notes()
        .iter()
        .find(|(owner, kind, desc)| {
            *owner == kernel_note::NAME
                && *kind == kernel_note::TYPE_DIRECT_ENTRY
                && desc.len() == 8
        })
        .map(|(_, _, desc)| u64::from_le_bytes(desc[..8].try_into().expect("8 bytes")))
}

/// The entry address in the kernel's PVH note.
pub fn pvh_entry(elf: &Elf) -> Option<u64> {
    elf.notes()
        .iter()
        .find(|(owner, kind, desc)| {
            *owner == b"Xen" && *kind == pvh::XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4
        })
        .map(|(_, _, desc)| u32::from_le_bytes(desc[..4].try_into().expect("4 bytes")) as u64)
}

/// Which entry the vCPU takes into the kernel of `elf`, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit, CPL 3, paging on (`wasmvm_abi::direct`).
    Direct(u64),
    /// 32-bit protected mode, ring 0, paging off (the PVH boot ABI).
    Pvh(u64),
}

impl Entry {
    /// The entry `path` asks for, from the notes of `elf`.
    pub fn find(elf: &Elf, path: BootPath) -> Result<Entry, BootError> {
        let direct = match path {
            BootPath::Best => direct_entry(elf),
            BootPath::Pvh => None,
        };
        let entry = match (direct, pvh_entry(elf)) {
            (Some(at), _) => Entry::Direct(at),
            (None, Some(at)) => Entry::Pvh(at),
            (None, None) => return Err(BootError::NoEntry),
        };
        // An entry outside the bytes the image loads would start the vCPU on zeroed memory
        // and end as a triple fault: say what is wrong instead.
        let at = match entry {
            Entry::Direct(at) | Entry::Pvh(at) => at,
        };
        let loaded = elf.phdrs.iter().any(|ph| {
            ph.p_type == crate::image::elf::PT_LOAD
                && ph.p_paddr <= at
                && at - ph.p_paddr < ph.p_filesz
        });
        match loaded {
            true => Ok(entry),
            false => Err(BootError::EntryOutsideImage { entry: at }),
        }
    }
}

/// A flat segment: 32-bit for the PVH entry, or with `long` a 64-bit code segment.
fn flat_segment(selector: u16, code: bool, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Loads `code` into CS and `data` into every data segment register.
fn set_flat_segments(sregs: &mut kvm_sregs, code: kvm_segment, data: kvm_segment) {
    sregs.cs = code;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = data;
    }
}

/// Page tables at `at` identity-mapping the low 4 GiB with 2 MiB user pages: the PML4, one
/// PDPT, then four page directories.
pub fn identity_page_tables(at: u64) -> Vec<u8> {
    let mut tables = vec![0u8; (PAGE_TABLE_PAGES * 4096) as usize];
    let mut put = |index: usize, value: u64| {
        tables[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes())
    };
    const USER_RW_PRESENT: u64 = PTE_USER | PTE_WRITABLE | PTE_PRESENT;
    put(0, (at + 0x1000) | USER_RW_PRESENT);
    for gib in 0..4u64 {
        put(
            512 + gib as usize,
            (at + 0x2000 + gib * 0x1000) | USER_RW_PRESENT,
        );
    }
    for page in 0..2048u64 {
        put(
            1024 + page as usize,
            (page << 21) | PDE_HUGE | USER_RW_PRESENT,
        );
    }
    tables
}

/// The GDT as bytes, for [`BootArea::gdt`].
pub fn gdt_bytes() -> Vec<u8> {
    GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// The special registers of the direct entry, over `sregs` as KVM created them: long mode
/// at CPL 3 with the page tables at [`PAGE_TABLES_ADDR`] and the GDT in `area`, no IDT (the
/// guest takes no exception it could survive anyway).
pub fn direct_sregs(sregs: &mut kvm_sregs, area: &BootArea) {
    set_flat_segments(
        sregs,
        flat_segment(USER_CS, true, 3, true),
        flat_segment(USER_DS, false, 3, false),
    );
    // A busy 64-bit TSS and no LDT: never used (no privilege changes), but required of a
    // long-mode vCPU by hardware virtualization.
    sregs.tr = kvm_segment {
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = area.gdt();
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PG | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE;
    sregs.cr3 = PAGE_TABLES_ADDR;
    sregs.cr4 = CR4_OSXMMEXCPT | CR4_OSFXSR | CR4_PAE;
    sregs.efer = EFER_LMA | EFER_LME;
}

/// The general registers of the direct entry: `%rdi` points at the boot info in `area`;
/// port I/O allowed at CPL 3; interrupts off.
pub fn direct_regs(entry: u64, area: &BootArea) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi: area.boot_info(),
        rflags: RFLAGS_IOPL3 | RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// The special registers of the PVH entry: 32-bit protected mode, paging off, flat ring-0
/// segments.
pub fn pvh_sregs(sregs: &mut kvm_sregs) {
    set_flat_segments(
        sregs,
        flat_segment(PVH_CS, true, 0, false),
        flat_segment(PVH_DS, false, 0, false),
    );
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// The general registers of the PVH entry: `%ebx` points at the start info in `area`.
pub fn pvh_regs(entry: u64, area: &BootArea) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rbx: area.start_info(),
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_at(tables: &[u8], index: usize) -> u64 {
        u64::from_le_bytes(tables[index * 8..index * 8 + 8].try_into().unwrap())
    }

    #[test]
    fn page_tables_map_the_low_4_gib_one_to_one_for_user_code() {
        let at = PAGE_TABLES_ADDR;
        let t = identity_page_tables(at);
        assert_eq!(t.len(), 6 * 4096);
        // PML4[0] -> PDPT; PDPT[0..4] -> the four directories; nothing else in either.
        assert_eq!(entry_at(&t, 0), (at + 0x1000) | 7);
        assert!((1..512).all(|i| entry_at(&t, i) == 0));
        for gib in 0..4 {
            assert_eq!(
                entry_at(&t, 512 + gib),
                (at + 0x2000 + gib as u64 * 0x1000) | 7
            );
        }
        assert!((516..1024).all(|i| entry_at(&t, i) == 0));
        // Every 2 MiB page: present, writable, user, huge, and mapping itself.
        for page in 0..2048usize {
            let e = entry_at(&t, 1024 + page);
            assert_eq!(e & 0xfff, PDE_HUGE | PTE_USER | PTE_WRITABLE | PTE_PRESENT);
            assert_eq!(e >> 21, page as u64);
        }
    }

    #[test]
    fn the_gdt_holds_64_bit_user_code_and_data_at_the_selectors() {
        let gdt = gdt_bytes();
        assert_eq!(gdt.len(), GDT.len() * 8);
        let descriptor = |selector: u16| GDT[usize::from(selector >> 3)];
        let (cs, ds) = (descriptor(USER_CS), descriptor(USER_DS));
        // DPL 3, present; code is long mode (L=1), executable; data is writable.
        let dpl = |d: u64| (d >> 45) & 3;
        assert_eq!((dpl(cs), dpl(ds)), (3, 3));
        assert_eq!((cs >> 47) & 1, 1);
        assert_eq!((cs >> 53) & 1, 1, "user code is 64-bit");
        assert_eq!((cs >> 43) & 1, 1, "user code is executable");
        assert_eq!((ds >> 43) & 1, 0, "user data is data");
        assert_eq!(USER_CS & 3, 3);
        assert_eq!(USER_DS & 3, 3);
    }

    #[test]
    fn the_direct_entry_starts_in_long_mode_at_cpl_3() {
        let area = BootArea::after(0x30_0000);
        let mut sregs = kvm_sregs::default();
        direct_sregs(&mut sregs, &area);
        assert_eq!(sregs.cr0, 0x8001_0033);
        assert_eq!(sregs.cr4, 0x620);
        assert_eq!(sregs.efer, 0x500);
        assert_eq!(sregs.cr3, PAGE_TABLES_ADDR);
        assert_eq!(
            (sregs.cs.selector, sregs.cs.dpl, sregs.cs.l),
            (USER_CS, 3, 1)
        );
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((seg.selector, seg.dpl, seg.l), (USER_DS, 3, 0));
        }
        assert_eq!(sregs.gdt.base, area.gdt());
        assert_eq!(usize::from(sregs.gdt.limit) + 1, GDT.len() * 8);
        assert_eq!(sregs.idt.limit, 0);
        let regs = direct_regs(0x1234, &area);
        assert_eq!((regs.rip, regs.rdi), (0x1234, area.boot_info()));
        assert_eq!(regs.rflags, 0x3002, "IOPL 3, interrupts off");
    }

    #[test]
    fn the_pvh_entry_starts_in_32_bit_protected_mode() {
        let mut sregs = kvm_sregs::default();
        pvh_sregs(&mut sregs);
        assert_eq!(sregs.cr0, 0x11);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.cs.dpl), (1, 0, 0));
        let area = BootArea::after(0x30_0000);
        let regs = pvh_regs(0x100_0000, &area);
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0000, area.start_info(), 2)
        );
    }
}
