//! Building a VM: guest memory through `vm-memory` (every write bounds-checked), the image's
//! `PT_LOAD` segments in it, the boot structures ([`super::layout`]), and a KVM VM with one
//! vCPU in the entry state of [`super::boot`]. Running it is [`super::vcpu`]'s job.

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use wasmvm_abi::align_up;
use wasmvm_abi::bundle::RunConfig;
use wasmvm_abi::direct::{self, BootInfo};
use wasmvm_abi::pvh::{self, MemmapEntry, StartInfo};

use super::boot::{self, BootError, BootPath, Entry, kvm_step};
use super::layout::*;
use super::ram::{self, RamBacking};
use super::trim::{FileSpan, IdleTrim, ImagePages};
use crate::image::elf::{Elf, PT_LOAD, ProgramHeader};
use crate::image::mapped::MappedImage;

/// `MSR_KVM_SYSTEM_TIME_NEW`: registering the kvmclock page.
const MSR_KVM_SYSTEM_TIME: u32 = 0x4b56_4d01;

/// What a VM is built with, besides the image.
#[derive(Debug, Clone, Copy)]
pub struct MachineConfig<'a> {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The run configuration, handed over as PVH module 0.
    pub run_config: &'a RunConfig,
    /// The kernel command line (the devices' announcements).
    pub cmdline: &'a str,
    pub boot: BootPath,
    /// The console's MMIO address when the VMM has set it up for the guest
    /// (`CONSOLE_READY`); `None` when the guest negotiates it itself, or has none.
    pub ready_console: Option<u64>,
    /// Map the image's segments copy-on-write from the file where their layout allows; a
    /// writable live directory could hold the image itself, so callers pass false then (a
    /// guest writing it would change the code of every VM mapping it). With `huge_pages`
    /// the segments are copied anyway: the file's page-cache pages are 4 KiB, so KVM maps
    /// them one fault at a time (~270 exits for a hello's kernel code on a nested host),
    /// where a copy in huge-page RAM costs two. The copies are private to each VM until
    /// it first idles: then the idle trim maps what the guest left unchanged from the file
    /// (`vmm::trim`), on the same terms as this flag.
    pub map_file: bool,
    /// Tell a guest entering directly that its network card suppresses notifications
    /// (`devices::net`); a PVH guest is not told, and its card notifies as usual.
    pub net_batched: bool,
    /// Back guest RAM with transparent huge pages where the host can (see
    /// [`advise_huge_pages`]).
    pub huge_pages: bool,
    /// Whether the host shows the kernel's log lines; a guest entering directly is told
    /// when it does not (`LOG_DISCARDED`), and then sends none.
    pub kernel_log: bool,
}

/// Asks the host to back guest RAM with transparent huge pages (`MADV_HUGEPAGE`; it
/// matters when THP is in `madvise` mode, as on Debian). KVM then maps 2 MiB per fault
/// where it mapped 4 KiB: a first touch of guest memory costs an exit on a nested host
/// (tens of µs), so booting and instantiating a module take ~10 ms less; on hardware KVM it
/// also means fewer EPT faults and TLB misses. The cost is resident memory: each 2 MiB the
/// guest touches at all is resident whole (~4-5 MiB more for a hello). Advice only: a host
/// without THP, or without free huge pages, maps 4 KiB pages as before.
fn advise_huge_pages(mem: &GuestMemoryMmap, size: u64) {
    if let Ok(addr) = mem.get_host_address(GuestAddress(0)) {
        // SAFETY: advice on the VM's own anonymous mapping of `size` bytes, which no one
        // else uses yet; madvise changes no contents and fails harmlessly.
        unsafe { libc::madvise(addr.cast(), size as usize, libc::MADV_HUGEPAGE) };
    }
}

/// A VM ready to run: guest memory with the image and boot structures, and its vCPU.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub vcpu: VcpuFd,
    /// Whether the guest was told that wait exits block (the direct entry's
    /// `WAIT_BLOCKS`); with PVH it spins on them, so each returns at once.
    pub waits_block: bool,
    /// Where the boot structures are (the console's queues among them).
    pub boot_area: BootArea,
    /// Gives back zero pages while the guest idles: only for RAM that is anonymous
    /// throughout, with huge pages (see [`super::trim`]).
    pub trim: Option<IdleTrim>,
    /// Whether pages of the image file were mapped into guest RAM at boot (with
    /// `--no-huge-pages`); the trim may map more later. A truncated file then fails the
    /// guest's next touch of them.
    pub maps_image: bool,
    _vm: VmFd,
    /// The mapping RAM lies in: dropped last, after `mem` and the VM.
    _ram: RamBacking,
}

/// Puts one `PT_LOAD` segment into guest memory: with `map_file`, mapped from the file when
/// offset and address are page aligned (the pages past the file bytes zeroed, as `.bss` must
/// be), else copied. Every range is checked against guest memory first. A private mapping
/// still shows later writes to the file in pages the guest has not written, so callers copy
/// whenever a guest could reach the file (a writable live directory). Returns where the
/// segment ends in guest memory (`.bss` included).
fn load_segment(
    mem: &GuestMemoryMmap,
    memory_mib: u64,
    image: &MappedImage,
    elf: &Elf,
    ph: &ProgramHeader,
    map_file: bool,
) -> Result<u64, BootError> {
    let mem_size = memory_mib << 20;
    let file_span = align_up(ph.p_filesz, PAGE_SIZE);
    let fits = |len: u64| {
        ph.p_paddr
            .checked_add(len)
            .is_some_and(|end| end <= mem_size)
    };
    let len = ph.p_memsz.max(ph.p_filesz);
    if !fits(len) {
        return Err(BootError::SegmentDoesNotFit {
            addr: ph.p_paddr,
            len,
            memory_mib,
            needed_mib: needed_mib(ph.p_paddr.saturating_add(len), len),
        });
    }
    let end = ph.p_paddr + len;
    let write_err = |cause| BootError::GuestWrite {
        what: "an image segment",
        addr: ph.p_paddr,
        cause,
    };
    if map_file && fits(file_span) && ph.p_paddr.is_multiple_of(PAGE_SIZE) && ph.p_filesz > 0 {
        let host = mem
            .get_host_address(GuestAddress(ph.p_paddr))
            .map_err(write_err)?;
        // SAFETY: `[host, host + file_span)` lies inside guest memory (checked above), a
        // private mapping this function's caller owns and no vCPU runs in yet; vm-memory
        // holds no references into it.
        let mapped = unsafe { image.map_into(host, ph.p_offset, file_span as usize) }
            .map_err(|cause| BootError::MapImage { cause })?;
        if mapped {
            let tail = (file_span - ph.p_filesz) as usize;
            mem.write_slice(&vec![0u8; tail], GuestAddress(ph.p_paddr + ph.p_filesz))
                .map_err(write_err)?;
            return Ok(end);
        }
    }
    mem.write_slice(elf.segment(ph), GuestAddress(ph.p_paddr))
        .map_err(write_err)?;
    Ok(end)
}

/// RAM the kernel needs above everything the VMM loads, besides its own copies of what it
/// was handed: its heap (below ~1 MiB it cannot even report) and a small app's linear
/// memory. Errors that name the `--memory` a run needs add it, so that the size they name
/// works.
const HEAP_HEADROOM_MIB: u64 = 8;

/// The `--memory` to name for a VM whose loaded bytes end at `end`, the last piece `len`
/// bytes long: the kernel decodes that piece (the run configuration, the app bundle) into
/// its heap and keeps what WASI hands out from it, and the app copies its arguments and
/// environment into its own memory once more: room for three more copies.
fn needed_mib(end: u64, len: u64) -> u64 {
    end.saturating_add(len.saturating_mul(3)).div_ceil(1 << 20) + HEAP_HEADROOM_MIB
}

/// Writes the PVH boot structures into the [`BootArea`] on the page after `image_end` (the
/// end of the image's last segment): start info, the memory map (RAM, with the area
/// reserved), the command line, and the run configuration as module 0 right after the area.
/// There the guest's stack, the app bundle and its heap's first blocks already share a
/// 2 MiB page: at the top of RAM or in low memory they would cost a (huge) page of their
/// own, zeroed by the host and faulted in by the guest. A configuration that does not fit
/// there does not fit anywhere (it would overlap the image).
fn write_pvh_structures(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    image_end: u64,
    run: &RunConfig,
    cmdline: &str,
) -> Result<BootArea, BootError> {
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    if line.len() > BootArea::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: line.len(),
            max: BootArea::CMDLINE_MAX,
        });
    }
    let area = BootArea::after(image_end);
    let config = run.encode();
    let config_addr = area.end();
    let config_end = config_addr.saturating_add(config.len() as u64);
    if config_end > mem_size {
        return Err(BootError::ConfigDoesNotFit {
            len: config.len(),
            memory_mib: mem_size >> 20,
            needed_mib: needed_mib(config_end, config.len() as u64),
        });
    }
    let modlist = pvh::Module {
        paddr: config_addr,
        size: config.len() as u64,
        cmdline_paddr: 0,
    };
    let memmap: [MemmapEntry; BootArea::MEMMAP_ENTRIES] = [
        (0, area.start(), pvh::MEMMAP_TYPE_RAM),
        (area.start(), BootArea::LEN, pvh::MEMMAP_TYPE_RESERVED),
        (area.end(), mem_size - area.end(), pvh::MEMMAP_TYPE_RAM),
    ]
    .map(|(addr, size, kind)| MemmapEntry { addr, size, kind });
    let memmap: Vec<u8> = memmap.iter().flat_map(|e| e.encode()).collect();
    let start_info = StartInfo {
        version: 1,
        nr_modules: 1,
        modlist_paddr: area.modlist(),
        cmdline_paddr: area.cmdline(),
        memmap_paddr: area.memmap(),
        memmap_entries: BootArea::MEMMAP_ENTRIES as u32,
        ..StartInfo::default()
    };
    write(mem, "the run configuration", &config, config_addr)?;
    write(
        mem,
        "the PVH module list",
        &modlist.encode(),
        area.modlist(),
    )?;
    write(mem, "the PVH memory map", &memmap, area.memmap())?;
    write(mem, "the kernel command line", &line, area.cmdline())?;
    write(
        mem,
        "the PVH start info",
        &start_info.encode(),
        area.start_info(),
    )?;
    Ok(area)
}

fn write(mem: &GuestMemoryMmap, what: &'static str, data: &[u8], at: u64) -> Result<(), BootError> {
    mem.write_slice(data, GuestAddress(at))
        .map_err(|cause| BootError::GuestWrite {
            what,
            addr: at,
            cause,
        })
}

/// Guest memory for `config`: RAM with the image's segments and the PVH structures in it,
/// then the direct entry's page tables in a slot of their own (see [`PAGE_TABLES_ADDR`]);
/// and where the boot structures went.
fn fill_memory(
    image: &MappedImage,
    elf: &Elf,
    config: &MachineConfig,
) -> Result<FilledMemory, BootError> {
    let memory_mib = config.memory_mib;
    let mem_size = memory_mib << 20;
    let (mem, backing) = ram::guest_memory(
        mem_size as usize,
        &[(
            GuestAddress(PAGE_TABLES_ADDR),
            (PAGE_TABLE_PAGES * PAGE_SIZE) as usize,
        )],
    )
    .map_err(|cause| BootError::GuestMemory { memory_mib, cause })?;
    if config.huge_pages {
        advise_huge_pages(&mem, mem_size);
    }
    let map_file = config.map_file && !config.huge_pages;
    let mut image_end = 0;
    for ph in elf.phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
        image_end = image_end.max(load_segment(&mem, memory_mib, image, elf, ph, map_file)?);
    }
    let area = write_pvh_structures(&mem, mem_size, image_end, config.run_config, config.cmdline)?;
    // Copies the idle trim may map from the file once the guest idles, on the same terms
    // as mapping them at boot (`MachineConfig::map_file`).
    let copies = match config.map_file && config.huge_pages {
        true => image.file().try_clone().ok().map(|file| {
            let spans = elf.phdrs.iter().filter(|p| p.p_type == PT_LOAD);
            ImagePages::new(
                file,
                spans.map(|ph| FileSpan {
                    guest: ph.p_paddr,
                    offset: ph.p_offset,
                    len: ph.p_filesz,
                }),
            )
        }),
        false => None,
    };
    Ok(FilledMemory {
        mem,
        backing,
        area,
        file_mapped: map_file,
        copies,
    })
}

/// What [`fill_memory`] made.
struct FilledMemory {
    mem: GuestMemoryMmap,
    backing: RamBacking,
    area: BootArea,
    /// Whether image segments may be mapped from the file into RAM (else RAM is anonymous
    /// throughout).
    file_mapped: bool,
    /// The segments copied from the image file, which an idle guest's trim may map from
    /// it instead.
    copies: Option<ImagePages>,
}

/// Gives the VM an in-kernel local APIC (and nothing else: no PIC, no IOAPIC), best
/// effort. The guest takes no interrupts, but a vCPU without an in-kernel APIC holds a
/// KVM-wide static key from its creation to its destruction, and flipping it patches the
/// host kernel's text on every core. With the APIC, the key KVM takes at creation is
/// released a second later, off the run's path (a run with no other VM alive still pays
/// the patch once, at creation). 0.24-0.5 ms per hello on the development host, in
/// interleaved runs. A host without `KVM_CAP_SPLIT_IRQCHIP` runs the VM as before.
fn split_irqchip(vm: &VmFd) {
    let mut cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    // IOAPIC routes reserved for userspace: none are used, but KVM wants a count.
    cap.args[0] = 24;
    let _ = vm.enable_cap(&cap);
}

/// A KVM VM and its vCPU, which reports the host's CPUID; no memory yet.
fn create_vm() -> Result<(VmFd, VcpuFd), BootError> {
    let kvm = Kvm::new().map_err(kvm_step("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_step("create the VM"))?;
    split_irqchip(&vm);
    let vcpu = vm.create_vcpu(0).map_err(kvm_step("create the vCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_step("report the supported CPUID"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(kvm_step("set the vCPU's CPUID"))?;
    Ok((vm, vcpu))
}

/// Builds the VM for `image` (an image the caller has verified with `Image::parse`) as
/// `config` says, with the vCPU at the kernel's entry.
///
/// Guest RAM is an anonymous mapping the host fills only as the guest touches it; the
/// image's segments are copied into it (with huge pages) or mapped copy-on-write from the
/// file where their layout allows (see [`MachineConfig::map_file`]).
pub fn build(image: &MappedImage, config: &MachineConfig) -> Result<Machine, BootError> {
    let elf = Elf::parse(image.bytes()).map_err(BootError::Elf)?;
    let entry = Entry::find(&elf, config.boot)?;
    let memory_mib = config.memory_mib;
    if memory_mib > MAX_RAM >> 20 {
        return Err(BootError::TooMuchMemory { memory_mib });
    }
    // KVM's VM and vCPU come up on a thread of their own while this one fills guest memory:
    // each takes about a millisecond here, mostly in the host kernel.
    let (mem, created) = std::thread::scope(|scope| {
        let creating = std::thread::Builder::new()
            .name("vmm-create".into())
            .spawn_scoped(scope, create_vm);
        let mem = fill_memory(image, &elf, config);
        let created = match creating {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to spare: the same work, one after the other.
            Err(_) => create_vm(),
        };
        (mem, created)
    });
    let (filled, (vm, vcpu)) = (mem?, created?);
    let FilledMemory {
        mem,
        backing,
        area,
        file_mapped,
        copies,
    } = filled;
    for (slot, region) in mem.iter().enumerate() {
        let at = region.start_addr();
        let host_addr = mem
            .get_host_address(at)
            .map_err(|cause| BootError::GuestWrite {
                what: "guest RAM",
                addr: at.0,
                cause,
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: at.0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: `host_addr` is the start of one of `mem`'s mappings, `memory_size` bytes
        // long; the mappings live in the returned `Machine` next to the VM, so they outlive
        // every use.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_step("register guest RAM"))?;
    }

    let mut sregs = vcpu
        .get_sregs()
        .map_err(kvm_step("read the vCPU's sregs"))?;
    let regs = match entry {
        Entry::Direct(at) => {
            // The direct entry (wasmvm_abi::direct): long mode at CPL 3, our page tables and
            // GDT, the kvmclock registered here rather than by guest code at CPL 0.
            write(
                &mem,
                "the page tables",
                &boot::identity_page_tables(PAGE_TABLES_ADDR),
                PAGE_TABLES_ADDR,
            )?;
            write(&mem, "the GDT", &boot::gdt_bytes(), area.gdt())?;
            let clock = Msrs::from_entries(&[kvm_msr_entry {
                index: MSR_KVM_SYSTEM_TIME,
                data: area.pvclock() | 1,
                ..Default::default()
            }])
            .expect("one MSR fits");
            // A host without kvmclock refuses the MSR: the guest is told and uses the TSC.
            let pvclock = vcpu.set_msrs(&clock).unwrap_or(0) == 1;
            let info = boot_info(pvclock, config, &area);
            write(&mem, "the boot info", &info.encode(), area.boot_info())?;
            boot::direct_sregs(&mut sregs, &area);
            boot::direct_regs(at, &area)
        }
        Entry::Pvh(at) => {
            boot::pvh_sregs(&mut sregs);
            boot::pvh_regs(at, &area)
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(kvm_step("set the vCPU's sregs"))?;
    vcpu.set_regs(&regs)
        .map_err(kvm_step("set the vCPU's registers"))?;
    // Only RAM that is anonymous throughout: a dropped page of a file mapping would read
    // back the file's bytes.
    let trim = match config.huge_pages && !file_mapped {
        true => IdleTrim::new(&mem).map(|t| match copies {
            Some(copies) => t.sharing(copies),
            None => t,
        }),
        false => None,
    };
    Ok(Machine {
        mem,
        vcpu,
        waits_block: matches!(entry, Entry::Direct(_)),
        boot_area: area,
        trim,
        maps_image: file_mapped,
        _vm: vm,
        _ram: backing,
    })
}

/// The direct entry's boot info: what the VMM did for the guest (`pvclock`: it registered
/// the kvmclock page), and where things are.
fn boot_info(pvclock: bool, config: &MachineConfig, area: &BootArea) -> BootInfo {
    let ready_console = config.ready_console;
    let mut flags = direct::flags::WAIT_BLOCKS | direct::flags::CONSOLE_VIRTIO;
    for (wanted, flag) in [
        (pvclock, direct::flags::PVCLOCK),
        (ready_console.is_some(), direct::flags::CONSOLE_READY),
        (config.net_batched, direct::flags::NET_BATCHED),
        (config.net_batched, direct::flags::NET_TX_WINDOWS),
        (!config.kernel_log, direct::flags::LOG_DISCARDED),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    BootInfo {
        flags,
        start_info_paddr: area.start_info(),
        pvclock_paddr: area.pvclock(),
        vmm: *b"wasmvm\0\0",
        console_mmio: ready_console.unwrap_or(0),
        console_rings: ready_console.map_or(0, |_| area.console_rings()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(mib: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (mib << 20) as usize)]).unwrap()
    }

    #[test]
    fn boot_structures_land_where_the_layout_says() {
        let mem = memory(4);
        let run = RunConfig::default();
        let area = write_pvh_structures(&mem, 4 << 20, 0x20_1234, &run, "console=x").unwrap();
        // On the page after the image, all of them; the run configuration after them.
        assert_eq!(area, BootArea::after(0x20_1234));
        assert_eq!(area.start(), 0x20_2000);
        let mut line = [0u8; 10];
        mem.read_slice(&mut line, GuestAddress(area.cmdline()))
            .unwrap();
        assert_eq!(&line, b"console=x\0");
        let mut start = vec![0u8; StartInfo::default().encode().len()];
        mem.read_slice(&mut start, GuestAddress(area.start_info()))
            .unwrap();
        assert_eq!(
            start,
            StartInfo {
                version: 1,
                nr_modules: 1,
                modlist_paddr: area.modlist(),
                cmdline_paddr: area.cmdline(),
                memmap_paddr: area.memmap(),
                memmap_entries: 3,
                ..StartInfo::default()
            }
            .encode()
        );
        let config = run.encode();
        let mut back = vec![0u8; config.len()];
        mem.read_slice(&mut back, GuestAddress(area.end())).unwrap();
        assert_eq!(back, config);
        let mut modlist = vec![0u8; 8];
        mem.read_slice(&mut modlist, GuestAddress(area.modlist()))
            .unwrap();
        assert_eq!(u64::from_le_bytes(modlist.try_into().unwrap()), area.end());
        // The memory map reserves the area, so the kernel's heap (the largest free RAM above
        // the bundle) lies above it and the run configuration.
        let mut table = vec![0u8; 3 * pvh::MEMMAP_ENTRY_LEN];
        mem.read_slice(&mut table, GuestAddress(area.memmap()))
            .unwrap();
        let entries: Vec<MemmapEntry> = table
            .chunks(pvh::MEMMAP_ENTRY_LEN)
            .map(|e| MemmapEntry::decode(e).unwrap())
            .collect();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.addr, e.size, e.kind))
                .collect::<Vec<_>>(),
            [
                (0, 0x20_2000, pvh::MEMMAP_TYPE_RAM),
                (0x20_2000, BootArea::LEN, pvh::MEMMAP_TYPE_RESERVED),
                (area.end(), (4 << 20) - area.end(), pvh::MEMMAP_TYPE_RAM),
            ]
        );
        let modules = [(area.end(), area.end() + config.len() as u64)];
        assert_eq!(
            pvh::heap_region(entries.into_iter(), 0x20_1234, 1 << 32, &modules),
            Some((align_up(modules[0].1, PAGE_SIZE), 4 << 20))
        );
    }

    #[test]
    fn a_run_configuration_that_does_not_fit_after_the_image_is_refused_by_size() {
        let run = RunConfig {
            env: vec![vec![b'x'; 8000]],
            ..RunConfig::default()
        };
        let e = write_pvh_structures(&memory(4), 4 << 20, (4 << 20) - 4096, &run, "").unwrap_err();
        assert!(matches!(
            e,
            BootError::ConfigDoesNotFit {
                memory_mib: 4,
                needed_mib: 13,
                ..
            }
        ));
        assert!(e.to_string().contains("--memory 13M"), "{e}");
    }

    #[test]
    fn a_long_command_line_is_refused_by_size() {
        let line = "x".repeat(BootArea::CMDLINE_MAX);
        let e =
            write_pvh_structures(&memory(4), 4 << 20, 0, &RunConfig::default(), &line).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the kernel command line is {} bytes; at most {} fit",
                BootArea::CMDLINE_MAX + 1,
                BootArea::CMDLINE_MAX
            )
        );
    }

    #[test]
    fn boot_info_flags_say_what_the_vmm_did() {
        let run = RunConfig::default();
        let config = MachineConfig {
            memory_mib: 64,
            run_config: &run,
            cmdline: "",
            boot: BootPath::Best,
            ready_console: None,
            map_file: true,
            net_batched: false,
            huge_pages: true,
            kernel_log: true,
        };
        let area = BootArea::after(0x30_0000);
        let plain = boot_info(false, &config, &area);
        assert_eq!(
            plain.flags,
            direct::flags::WAIT_BLOCKS | direct::flags::CONSOLE_VIRTIO
        );
        assert_eq!((plain.console_mmio, plain.console_rings), (0, 0));
        let all = boot_info(
            true,
            &MachineConfig {
                ready_console: Some(MMIO_BASE),
                net_batched: true,
                kernel_log: false,
                ..config
            },
            &area,
        );
        for flag in [
            direct::flags::PVCLOCK,
            direct::flags::CONSOLE_READY,
            direct::flags::NET_BATCHED,
            direct::flags::NET_TX_WINDOWS,
            direct::flags::LOG_DISCARDED,
        ] {
            assert_ne!(all.flags & flag, 0);
        }
        assert_eq!(
            (all.console_mmio, all.console_rings),
            (MMIO_BASE, area.console_rings())
        );
    }
}
