//! The start of the built-in KVM micro-VMM (the micro-VMM issue): creates a VM with
//! `kvm-ioctls`, loads an image's `PT_LOAD` segments and the PVH boot structures into guest
//! memory through `vm-memory` (every write bounds-checked), enters the kernel at its PVH
//! entry, and runs the vCPU until the guest writes the ABI's exit port or dies.
//!
//! Devices (`devices`): the virtio console of `virtio_console` (the guest channel), the
//! virtio-9p shares and the network card. `wasmvm run` uses it through `builtin::run`.

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use wasmvm_abi::align_up;
use wasmvm_abi::bundle::{RunConfig, kernel_note};
use wasmvm_abi::direct::{self, BootInfo, WAIT_FOREVER};
use wasmvm_abi::exit::{EXIT_PORT, WAIT_PORT};
use wasmvm_abi::pvh::{self, MemmapEntry, StartInfo};

use crate::RunError;
use crate::devices::Devices;
use crate::elf::{Elf, PT_LOAD, ProgramHeader};
use crate::image::Image;
use crate::mapped::MappedImage;
use crate::virtio_console::Rx;

/// Where the boot structures go: low memory below the kernel's 1 MiB load address.
const PVCLOCK_ADDR: u64 = 0x4000;
const BOOT_INFO_ADDR: u64 = 0x5000;
const START_INFO_ADDR: u64 = 0x6000;
const MEMMAP_ADDR: u64 = 0x7000;
const MODLIST_ADDR: u64 = 0x8000;
const CMDLINE_ADDR: u64 = 0x9000;
const GDT_ADDR: u64 = 0xa000;
/// PML4, PDPT and four page directories identity-mapping 4 GiB (direct entry only).
const PAGE_TABLES_ADDR: u64 = 0x10000;
/// The console's queues when the VMM sets it up for the guest (`CONSOLE_READY`).
pub const CONSOLE_RINGS_ADDR: u64 = 0x20000;
/// `MSR_KVM_SYSTEM_TIME_NEW`: registering the kvmclock page.
const MSR_KVM_SYSTEM_TIME: u32 = 0x4b56_4d01;

/// The GDT of the direct entry: null, kernel code and data, user data (0x18) and user code
/// (0x20), as the kernel's own PVH path builds it.
const GDT: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
];
const USER_DS: u16 = 0x18 | 3;
const USER_CS: u16 = 0x20 | 3;

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

/// How a probe run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEnd {
    /// The guest wrote the exit port.
    ExitPort,
    /// The VM shut down (triple fault) or stopped without writing it.
    Crashed(String),
    /// Stopped from outside (timeout or signal).
    Stopped,
}

fn err(what: impl std::fmt::Display) -> RunError {
    RunError::KvmUnavailable(what.to_string())
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

/// A VM ready to run: guest memory with the image and boot structures, and its vCPU.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub vcpu: VcpuFd,
    /// Whether the guest was told that wait exits block (the direct entry's
    /// `WAIT_BLOCKS`); with PVH it spins on them, so each returns at once.
    pub waits_block: bool,
    _vm: VmFd,
}

/// The address in the kernel's direct-entry note, if it has one.
fn direct_entry(elf: &Elf) -> Option<u64> {
    elf.notes()
        .iter()
        .find(|(owner, kind, desc)| {
            *owner == kernel_note::NAME
                && *kind == kernel_note::TYPE_DIRECT_ENTRY
                && desc.len() == 8
        })
        .map(|(_, _, desc)| u64::from_le_bytes(desc[..8].try_into().expect("8 bytes")))
}

/// The address in the kernel's PVH note.
fn pvh_entry(elf: &Elf) -> Option<u64> {
    elf.notes()
        .iter()
        .find(|(owner, kind, desc)| {
            *owner == b"Xen" && *kind == pvh::XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4
        })
        .map(|(_, _, desc)| u32::from_le_bytes(desc[..4].try_into().expect("4 bytes")) as u64)
}

/// Puts one `PT_LOAD` segment into guest memory: with `map_file`, mapped from the file when
/// offset and address are page aligned (the pages past the file bytes zeroed, as `.bss` must
/// be), else copied. Every range is checked against guest memory first. A private mapping
/// still shows later writes to the file in pages the guest has not written, so callers copy
/// whenever a guest could reach the file (a writable live directory).
fn load_segment(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    image: &MappedImage,
    elf: &Elf,
    ph: &ProgramHeader,
    map_file: bool,
) -> Result<(), RunError> {
    let page = 4096;
    let file_span = align_up(ph.p_filesz, page);
    let fits = |len: u64| {
        ph.p_paddr
            .checked_add(len)
            .is_some_and(|end| end <= mem_size)
    };
    if !fits(ph.p_memsz.max(ph.p_filesz)) {
        return Err(err(format!(
            "segment at {:#x} ({} bytes) does not fit in guest memory ({} MiB)",
            ph.p_paddr,
            ph.p_memsz,
            mem_size >> 20
        )));
    }
    if map_file && fits(file_span) && ph.p_paddr.is_multiple_of(page) && ph.p_filesz > 0 {
        let host = mem
            .get_host_address(GuestAddress(ph.p_paddr))
            .map_err(|e| err(format!("guest memory: {e}")))?;
        // SAFETY: `[host, host + file_span)` lies inside guest memory (checked above), a
        // private mapping this function's caller owns and no vCPU runs in yet; vm-memory
        // holds no references into it.
        let mapped = unsafe { image.map_into(host, ph.p_offset, file_span as usize) }
            .map_err(|e| err(format!("mapping the image: {e}")))?;
        if mapped {
            let tail = (file_span - ph.p_filesz) as usize;
            return mem
                .write_slice(&vec![0u8; tail], GuestAddress(ph.p_paddr + ph.p_filesz))
                .map_err(|e| err(format!("segment at {:#x}: {e}", ph.p_paddr)));
        }
    }
    mem.write_slice(elf.segment(ph), GuestAddress(ph.p_paddr))
        .map_err(|e| err(format!("segment at {:#x}: {e}", ph.p_paddr)))
}

/// Page tables identity-mapping the low 4 GiB with 2 MiB user pages, for `at`.
fn identity_page_tables(at: u64) -> Vec<u8> {
    let mut tables = vec![0u8; 6 * 4096];
    let mut put = |index: usize, value: u64| {
        tables[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes())
    };
    const USER_RW_PRESENT: u64 = 0x7;
    put(0, (at + 0x1000) | USER_RW_PRESENT);
    for gib in 0..4u64 {
        put(
            512 + gib as usize,
            (at + 0x2000 + gib * 0x1000) | USER_RW_PRESENT,
        );
    }
    for page in 0..2048u64 {
        put(1024 + page as usize, (page << 21) | 0x80 | USER_RW_PRESENT);
    }
    tables
}

/// Builds the VM for `image` (an image the caller has verified with [`Image::parse`]):
/// `memory_mib` of RAM, the run configuration as PVH module 0, `cmdline` as the kernel
/// command line, and the vCPU at the kernel's entry. `net_batched`: tell a guest entering
/// directly that its network card suppresses notifications (`virtio_net`); a PVH guest is
/// not told, and its card notifies as usual.
///
/// Guest RAM is an anonymous mapping the host fills only as the guest touches it; the
/// image's segments are mapped copy-on-write from the file where their layout allows.
#[allow(clippy::too_many_arguments)]
pub fn build(
    image: &MappedImage,
    memory_mib: u64,
    run: &RunConfig,
    cmdline: &str,
    path: BootPath,
    ready_console: Option<u64>,
    map_file: bool,
    net_batched: bool,
) -> Result<Machine, RunError> {
    let elf = Elf::parse(image.bytes()).map_err(|e| err(format!("image ELF: {e}")))?;
    let mem_size = memory_mib << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
        .map_err(|e| err(format!("guest memory: {e}")))?;
    for ph in elf.phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
        load_segment(&mem, mem_size, image, &elf, ph, map_file)?;
    }
    let direct = match path {
        BootPath::Best => direct_entry(&elf),
        BootPath::Pvh => None,
    };
    let pvh = pvh_entry(&elf);
    if direct.is_none() && pvh.is_none() {
        return Err(err("the image has neither a direct nor a PVH entry note"));
    }

    // Boot structures: start info, one RAM entry, the run configuration as module 0.
    let config = run.encode();
    let config_addr = (mem_size - config.len() as u64) & !0xfff;
    let write = |data: &[u8], at: u64| {
        mem.write_slice(data, GuestAddress(at))
            .map_err(|e| err(format!("boot structure at {at:#x}: {e}")))
    };
    write(&config, config_addr)?;
    write(
        &pvh::Module {
            paddr: config_addr,
            size: config.len() as u64,
            cmdline_paddr: 0,
        }
        .encode(),
        MODLIST_ADDR,
    )?;
    write(
        &MemmapEntry {
            addr: 0,
            size: mem_size,
            kind: pvh::MEMMAP_TYPE_RAM,
        }
        .encode(),
        MEMMAP_ADDR,
    )?;
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    if line.len() > 0x1000 {
        return Err(err("kernel command line too long"));
    }
    write(&line, CMDLINE_ADDR)?;
    write(
        &StartInfo {
            version: 1,
            nr_modules: 1,
            modlist_paddr: MODLIST_ADDR,
            cmdline_paddr: CMDLINE_ADDR,
            memmap_paddr: MEMMAP_ADDR,
            memmap_entries: 1,
            ..StartInfo::default()
        }
        .encode(),
        START_INFO_ADDR,
    )?;

    let kvm = Kvm::new().map_err(|e| err(format!("/dev/kvm: {e}")))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| err(format!("creating the VM: {e}")))?;
    let host_addr = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| err(format!("guest memory: {e}")))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: `host_addr` is the start of `mem`'s single mapping of `mem_size` bytes; the
    // mapping lives in the returned `Machine` next to the VM, so it outlives every use.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| err(format!("memory region: {e}")))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| err(format!("vCPU: {e}")))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| err(format!("CPUID: {e}")))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| err(format!("CPUID: {e}")))?;

    let mut sregs = vcpu.get_sregs().map_err(|e| err(format!("sregs: {e}")))?;
    let regs = if let Some(entry) = direct {
        // The direct entry (wasmvm_abi::direct): long mode at CPL 3, our page tables and
        // GDT, the kvmclock registered here rather than by guest code at CPL 0.
        write(&identity_page_tables(PAGE_TABLES_ADDR), PAGE_TABLES_ADDR)?;
        let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
        write(&gdt, GDT_ADDR)?;
        let clock = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_KVM_SYSTEM_TIME,
            data: PVCLOCK_ADDR | 1,
            ..Default::default()
        }])
        .map_err(|e| err(format!("MSRs: {e:?}")))?;
        let pvclock = vcpu.set_msrs(&clock).unwrap_or(0) == 1;
        let mut flags = direct::flags::WAIT_BLOCKS | direct::flags::CONSOLE_VIRTIO;
        if pvclock {
            flags |= direct::flags::PVCLOCK;
        }
        if ready_console.is_some() {
            flags |= direct::flags::CONSOLE_READY;
        }
        if net_batched {
            flags |= direct::flags::NET_BATCHED;
        }
        write(
            &BootInfo {
                flags,
                start_info_paddr: START_INFO_ADDR,
                pvclock_paddr: PVCLOCK_ADDR,
                vmm: *b"wasmvm\0\0",
                console_mmio: ready_console.unwrap_or(0),
                console_rings: ready_console.map_or(0, |_| CONSOLE_RINGS_ADDR),
            }
            .encode(),
            BOOT_INFO_ADDR,
        )?;
        set_flat_segments(
            &mut sregs,
            flat_segment(USER_CS, true, 3, true),
            flat_segment(USER_DS, false, 3, false),
        );
        // A busy 64-bit TSS and no LDT: never used (no privilege changes), but required of
        // a long-mode vCPU by hardware virtualization.
        sregs.tr = kvm_segment {
            limit: 0x67,
            selector: 0x28,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.ldt = kvm_segment {
            unusable: 1,
            ..Default::default()
        };
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 = 0x8001_0033; // PG | WP | NE | ET | MP | PE
        sregs.cr3 = PAGE_TABLES_ADDR;
        sregs.cr4 = 0x620; // OSXMMEXCPT | OSFXSR | PAE
        sregs.efer = 0x500; // LMA | LME
        kvm_regs {
            rip: entry,
            rdi: BOOT_INFO_ADDR,
            rflags: (3 << 12) | 2, // IOPL 3, interrupts off
            ..Default::default()
        }
    } else {
        // PVH entry state: 32-bit protected mode, paging off, flat segments, %ebx = start info.
        set_flat_segments(
            &mut sregs,
            flat_segment(0x08, true, 0, false),
            flat_segment(0x10, false, 0, false),
        );
        sregs.cr0 = 0x11; // PE | ET
        sregs.cr4 = 0;
        sregs.efer = 0;
        kvm_regs {
            rip: pvh.expect("checked above"),
            rbx: START_INFO_ADDR,
            rflags: 2,
            ..Default::default()
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(|e| err(format!("sregs: {e}")))?;
    vcpu.set_regs(&regs)
        .map_err(|e| err(format!("regs: {e}")))?;
    Ok(Machine {
        mem,
        vcpu,
        waits_block: direct.is_some(),
        _vm: vm,
    })
}

impl Machine {
    /// Runs the vCPU until the exit port, a crash, or `stop` (checked whenever KVM_RUN
    /// returns, which a signal to this thread forces).
    ///
    /// Network frames move at every exit (`Devices::poll`): the card asks the guest not to
    /// notify, so exits the guest makes anyway carry them.
    pub fn run(&mut self, devices: &mut Devices, stop: &AtomicBool) -> ProbeEnd {
        loop {
            if stop.load(Ordering::Relaxed) {
                return ProbeEnd::Stopped;
            }
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, _)) if port == EXIT_PORT => return ProbeEnd::ExitPort,
                Ok(VcpuExit::IoOut(port, data)) if port == WAIT_PORT => {
                    let timeout = wait_timeout(data);
                    match devices.console.is_some() {
                        true => wait_for_host(devices, &self.mem, timeout),
                        false => std::thread::sleep(timeout.unwrap_or(Duration::from_secs(1))),
                    }
                    // The wait moved the frames already.
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => match devices.at(addr) {
                    Some((device, offset)) => device.read(offset, data),
                    None => data.fill(0xff),
                },
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if let Some((device, offset)) = devices.at(addr) {
                        device.write(offset, data, &self.mem);
                    }
                }
                Ok(VcpuExit::IoOut(..)) => {}
                Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
                Ok(VcpuExit::Shutdown) => return ProbeEnd::Crashed("triple fault".into()),
                Ok(VcpuExit::Hlt) => return ProbeEnd::Crashed("the vCPU halted".into()),
                Ok(other) => return ProbeEnd::Crashed(format!("unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return ProbeEnd::Crashed(format!("KVM_RUN: {e}")),
            }
            devices.poll(&self.mem);
        }
    }
}

/// How long a wait exit may block: the microseconds of a 4-byte write (the direct entry's
/// `WAIT_BLOCKS` protocol; `None` for no deadline), or a millisecond for a 1-byte write from
/// a guest that spins on waits.
fn wait_timeout(data: &[u8]) -> Option<Duration> {
    match <[u8; 4]>::try_from(data) {
        Ok(word) => match u32::from_le_bytes(word) {
            WAIT_FOREVER => None,
            micros => Some(Duration::from_micros(micros.into())),
        },
        Err(_) => Some(Duration::from_millis(1)),
    }
}

/// A wait exit: deliver host input now (and return to the guest to take it), or block until
/// some arrives or `timeout` passes. Host input is console bytes and, with a network card,
/// frames. With input the guest is not taking (it sleeps without reading, or offers no
/// receive buffer), only the deadline ends the block: watching that descriptor would spin.
/// A stop request interrupts the block with the kick signal (see `builtin`).
fn wait_for_host(devices: &mut Devices, mem: &GuestMemoryMmap, timeout: Option<Duration>) {
    use std::os::fd::AsRawFd;
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 2];
    let mut watched = 0;
    // Frames the guest queued go out now whatever else happens (it relies on this exit),
    // and frames for it end the wait at once.
    if let Some(net) = devices.net.as_mut() {
        let (net, queues) = net.parts();
        if net.pump(queues, mem) {
            return;
        }
    }
    if let Some(console) = devices.console.as_mut() {
        let (console, queues) = console.parts();
        match console.process_rx(queues, mem) {
            Rx::Delivered => return,
            Rx::Idle => {
                pfds[watched] = libc::pollfd {
                    fd: console.host_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                watched += 1;
            }
            Rx::Backlog => {}
        }
    }
    if let Some(net) = devices.net.as_mut() {
        let (net, queues) = net.parts();
        if net.pump(queues, mem) {
            return;
        }
        let events = net.wait_events(queues, mem);
        if events != 0 {
            pfds[watched] = libc::pollfd {
                fd: net.host_fd().as_raw_fd(),
                events,
                revents: 0,
            };
            watched += 1;
        }
    }
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the first `watched` entries of `pfds` and `ts` are valid for the duration of
    // the call; a null timeout blocks until input or a signal (the stop kick), and a null
    // mask leaves the mask unchanged.
    unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            watched as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if let Some(console) = devices.console.as_mut() {
        let (console, queues) = console.parts();
        console.process_rx(queues, mem);
    }
    devices.poll(mem);
}

/// Boots the image at `image_path` with `memory_mib` of RAM and no devices, and runs it
/// until it ends (a probe of the boot path).
pub fn probe(
    image_path: &Path,
    memory_mib: u64,
    run: &RunConfig,
) -> Result<(ProbeEnd, f64), RunError> {
    let started = Instant::now();
    let image = MappedImage::open(image_path).map_err(|source| RunError::Io {
        context: "reading the image",
        source,
    })?;
    Image::parse(image.bytes())?;
    let mut machine = build(
        &image,
        memory_mib,
        run,
        "",
        BootPath::Best,
        None,
        true,
        false,
    )?;
    let end = machine.run(&mut Devices::default(), &AtomicBool::new(false));
    Ok((end, started.elapsed().as_secs_f64() * 1e3))
}
