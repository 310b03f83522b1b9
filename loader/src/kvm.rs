//! The start of the built-in KVM micro-VMM (the micro-VMM issue): creates a VM with
//! `kvm-ioctls`, loads an image's `PT_LOAD` segments and the PVH boot structures into guest
//! memory through `vm-memory` (every write bounds-checked), enters the kernel at its PVH
//! entry, and runs the vCPU until the guest writes the ABI's exit port or dies.
//!
//! Devices: the virtio console of `virtio_console` (the guest channel). `wasmvm run --vmm
//! builtin` uses it through `builtin::run`; QEMU stays the default until block, entropy and
//! the rest land here.

use std::path::Path;
use std::time::Instant;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use wasmvm_abi::bundle::RunConfig;
use wasmvm_abi::exit::{EXIT_PORT, WAIT_PORT};
use wasmvm_abi::pvh::{self, MemmapEntry, StartInfo};

use crate::RunError;
use crate::elf::{Elf, PT_LOAD};
use crate::image::Image;
use crate::virtio_console::{Console, MMIO_BASE, MMIO_SIZE};

/// Where the boot structures go: low memory below the kernel's 1 MiB load address.
const START_INFO_ADDR: u64 = 0x6000;
const MEMMAP_ADDR: u64 = 0x7000;
const MODLIST_ADDR: u64 = 0x8000;
const CMDLINE_ADDR: u64 = 0x9000;

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

/// A 32-bit flat segment for the PVH entry state.
fn flat_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A VM ready to run: guest memory with the image and boot structures, and its vCPU.
pub struct Machine {
    pub mem: GuestMemoryMmap,
    pub vcpu: VcpuFd,
    _vm: VmFd,
}

/// Builds the VM for `image_bytes` (an image the caller has verified with
/// [`Image::parse`]): `memory_mib` of RAM, the run configuration as PVH module
/// 0, `cmdline` as the kernel command line, and the vCPU at the PVH entry.
pub fn build(
    image_bytes: &[u8],
    memory_mib: u64,
    run: &RunConfig,
    cmdline: &str,
) -> Result<Machine, RunError> {
    let elf = Elf::parse(image_bytes).map_err(|e| err(format!("image ELF: {e}")))?;
    let mem_size = memory_mib << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
        .map_err(|e| err(format!("guest memory: {e}")))?;

    // Segments, each write checked against guest memory by vm-memory.
    for ph in elf.phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
        mem.write_slice(elf.segment(ph), GuestAddress(ph.p_paddr))
            .map_err(|e| {
                err(format!(
                    "segment at {:#x} does not fit in guest memory: {e}",
                    ph.p_paddr
                ))
            })?;
    }
    let entry = elf
        .notes()
        .iter()
        .find(|(owner, kind, desc)| {
            *owner == b"Xen" && *kind == pvh::XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4
        })
        .map(|(_, _, desc)| u32::from_le_bytes(desc[..4].try_into().expect("4 bytes")) as u64)
        .ok_or_else(|| err("the image has no PVH entry note"))?;

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

    // PVH entry state: 32-bit protected mode, paging off, flat segments, %ebx = start info.
    let mut sregs = vcpu.get_sregs().map_err(|e| err(format!("sregs: {e}")))?;
    sregs.cs = flat_segment(0x08, true);
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = flat_segment(0x10, false);
    }
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| err(format!("sregs: {e}")))?;
    vcpu.set_regs(&kvm_regs {
        rip: entry,
        rbx: START_INFO_ADDR,
        rflags: 2,
        ..Default::default()
    })
    .map_err(|e| err(format!("regs: {e}")))?;
    Ok(Machine { mem, vcpu, _vm: vm })
}

impl Machine {
    /// Runs the vCPU until the exit port, a crash, or `stop` (checked whenever KVM_RUN
    /// returns, which a signal to this thread forces).
    pub fn run(&mut self, mut console: Option<&mut Console>, stop: &AtomicBool) -> ProbeEnd {
        loop {
            if stop.load(Ordering::Relaxed) {
                return ProbeEnd::Stopped;
            }
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, _)) if port == EXIT_PORT => return ProbeEnd::ExitPort,
                Ok(VcpuExit::IoOut(port, _)) if port == WAIT_PORT => {
                    if let Some(c) = console.as_deref_mut() {
                        wait_for_host(c, &self.mem);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => match console.as_deref_mut() {
                    Some(c) if (MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&addr) => {
                        c.read(addr - MMIO_BASE, data)
                    }
                    _ => data.fill(0xff),
                },
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if let Some(c) = console.as_deref_mut()
                        && (MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&addr)
                    {
                        c.write(addr - MMIO_BASE, data, &self.mem);
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
        }
    }
}

/// A wait exit: deliver host input now, or block up to a millisecond for some.
fn wait_for_host(console: &mut Console, mem: &GuestMemoryMmap) {
    use std::os::fd::AsRawFd;
    if console.process_rx(mem) {
        return;
    }
    let mut pfd = libc::pollfd {
        fd: console.host_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 1) };
    console.process_rx(mem);
}

/// Boots the image at `image_path` with `memory_mib` of RAM and no devices, and runs it
/// until it ends (a probe of the boot path).
pub fn probe(
    image_path: &Path,
    memory_mib: u64,
    run: &RunConfig,
) -> Result<(ProbeEnd, f64), RunError> {
    let started = Instant::now();
    let bytes = std::fs::read(image_path).map_err(|source| RunError::Io {
        context: "reading the image",
        source,
    })?;
    Image::parse(&bytes)?;
    let mut machine = build(&bytes, memory_mib, run, "")?;
    let end = machine.run(None, &AtomicBool::new(false));
    Ok((end, started.elapsed().as_secs_f64() * 1e3))
}
