//! The wasmvm guest kernel.
//!
//! One app, no processes, no interrupts. `arch::boot` does the ring-0 setup in a few dozen
//! instructions and drops to CPL 3, where [`kernel_main`] sets up the heap, finds the host
//! channel, and runs the bundled wasm module until it exits, traps or panics; every ending
//! reaches the host as an exit record (see `wasmvm_abi::channel`). The engine is chosen at
//! build time (`app`): wasmi interprets the module, or wasmtime's runtime runs the code
//! Cranelift compiled for it when the image was packed.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod app;
mod arch;
mod channel;
mod clock;
mod console;
mod heap;
mod net;
mod p9;
mod phys;
mod platform;
mod virtio;

use alloc::format;
use alloc::string::String;

use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};
use wasmvm_abi::bundle::{BUNDLE_HEADER_LEN, BundleHeader, BundleRef, RunConfig, bundle_load_addr};
use wasmvm_abi::channel::{ExitKind, ExitRecord};
use wasmvm_abi::direct::{self, BOOT_INFO_LEN, BootInfo, console_rings};
use wasmvm_abi::{ABI_VERSION, align_up, cmdline};

/// ELF notes that let `wasmvm inspect` read the kernel's versions without booting it.
#[repr(C, align(4))]
struct Note<const N: usize> {
    namesz: u32,
    descsz: u32,
    kind: u32,
    name: [u8; 8],
    desc: [u8; N],
}

const fn padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < s.len() && i < N {
        out[i] = s[i];
        i += 1;
    }
    out
}

#[used]
#[unsafe(link_section = ".note.wasmvm")]
static ABI_NOTE: Note<4> = Note {
    namesz: 7,
    descsz: 4,
    kind: wasmvm_abi::bundle::kernel_note::TYPE_ABI_VERSION,
    name: padded(b"wasmvm\0"),
    desc: ABI_VERSION.to_le_bytes(),
};

#[used]
#[unsafe(link_section = ".note.wasmvm")]
static VERSION_NOTE: Note<16> = Note {
    namesz: 7,
    descsz: 16,
    kind: wasmvm_abi::bundle::kernel_note::TYPE_KERNEL_VERSION,
    name: padded(b"wasmvm\0"),
    desc: padded(env!("CARGO_PKG_VERSION").as_bytes()),
};

fn fail(kind: ExitKind, message: String) -> ! {
    channel::exit(&ExitRecord::failed(kind, message))
}

/// How the kernel was entered (`kernel_main`'s second argument, set by `arch::boot`).
mod path {
    pub const PVH: u64 = 0;
    pub const DIRECT: u64 = 1;
    /// GRUB on a PC with firmware: an exported disk image, no wasmvm host.
    pub const MULTIBOOT2: u64 = 2;
}

/// Entered at CPL 3 from `arch::boot`: with the physical address of `hvm_start_info` after
/// the PVH path, of a [`BootInfo`] after the direct entry, or of the Multiboot2 information.
#[unsafe(no_mangle)]
extern "C" fn kernel_main(boot_paddr: u64, entry: u64) -> ! {
    arch::boot::mark_stack_end();
    let boot_info = if entry == path::DIRECT {
        match phys::loader_bytes(boot_paddr, BOOT_INFO_LEN as u64).map(BootInfo::decode) {
            Some(Ok(info)) => Some(info),
            // No heap yet: see below.
            _ => fail(ExitKind::BootFailed, String::new()),
        }
    } else {
        None
    };
    if let Some(info) = &boot_info
        && info.has(direct::flags::PVCLOCK)
    {
        clock::use_pvclock_at(info.pvclock_paddr);
    }
    let entered_us = clock::vm_clock_ns().map(|ns| ns / 1000);
    channel::set_wait_blocks(boot_info.is_some_and(|i| i.has(direct::flags::WAIT_BLOCKS)));
    channel::set_send_log(!boot_info.is_some_and(|i| i.has(direct::flags::LOG_DISCARDED)));
    let standalone = entry == path::MULTIBOOT2;
    let handover = if standalone {
        phys::Handover::multiboot2(boot_paddr)
    } else {
        phys::Handover::pvh(boot_info.map_or(boot_paddr, |i| i.start_info_paddr))
    };
    let Some(handover) = handover else {
        // No heap yet, so no message can be allocated; without a channel the host sees a
        // guest crash, which is what a loader that passes no start info has made of it.
        fail(ExitKind::BootFailed, String::new())
    };
    let cmdline = handover.cmdline;
    let (_, kernel_end) = phys::kernel_range();
    let bundle_addr = bundle_load_addr(kernel_end);
    let header = phys::loader_bytes(bundle_addr, BUNDLE_HEADER_LEN as u64)
        .ok_or(wasmvm_abi::DecodeError::Truncated)
        .and_then(BundleHeader::decode);
    let bundle_end = match &header {
        Ok(h) => bundle_addr + h.total_len(),
        Err(_) => bundle_addr,
    };

    // The heap: the largest free stretch of RAM above the bundle, clear of everything the
    // loader handed over (the run configuration: on the page after the image under
    // wasmvm's VMM, at the top of RAM under QEMU).
    let Some((heap_start, heap_end)) = handover
        .heap_region(align_up(bundle_end, 4096))
        .filter(|(start, end)| end - start > 1 << 20)
    else {
        // No heap means no formatting and no virtio: nothing can be reported but a crash.
        arch::triple_fault()
    };
    // SAFETY: [heap_start, heap_end) is RAM per the memory map, above the kernel and the
    // bundle and clear of every loader structure, so nothing else uses it. Firmware leaves
    // RAM dirty; our VMMs and QEMU's PVH loader hand it over zeroed.
    unsafe { heap::init(heap_start, heap_end, !standalone) };
    if standalone {
        channel::set_standalone(true);
        acpi::find_power_off(handover.rsdp);
    }

    // Devices: the first console carries the channel; 9P devices are live directories. A
    // VMM that set the console up already says where (no discovery, no negotiation). On a
    // PC (disk image) the devices are on PCI, found at CPL 0, and the channel stays on the
    // serial port: no wasmvm host is listening.
    let ready_console = boot_info
        .filter(|i| i.has(direct::flags::CONSOLE_READY))
        .filter(|i| phys::loader_bytes(i.console_rings, console_rings::LEN).is_some())
        .map(|i| (i.console_mmio, i.console_rings));
    let mut have_console = false;
    let mut nic: Option<(SomeTransport<'static>, Option<u64>)> = None;
    if let Some((regs, rings)) = ready_console {
        // SAFETY: the VMM declared a prepared console at `regs` with its queues in the
        // `rings` RAM (checked to be mapped), which nothing else in the kernel uses.
        channel::attach(unsafe { console::VirtConsole::ready(regs, rings) });
        have_console = true;
    }
    for transport in arch::standalone::take_devices() {
        if transport.device_type() == DeviceType::Network && nic.is_none() {
            nic = Some((transport.into(), None));
        }
    }
    for region in cmdline::virtio_mmio_devices(cmdline) {
        if ready_console.is_some_and(|(regs, _)| regs == region.addr) {
            continue;
        }
        let Some(transport) = virtio::open(region) else {
            continue;
        };
        match transport.device_type() {
            DeviceType::Console if !have_console => {
                drop(transport);
                // SAFETY: the command line announced a virtio-mmio console at this address
                // (its device type was just read there); nothing else drives it.
                if let Ok(console) = unsafe { console::VirtConsole::negotiate(region.addr) } {
                    channel::attach(console);
                    have_console = true;
                }
            }
            DeviceType::_9P => {
                p9::attach(transport);
            }
            // Set up once the run configuration says the link's MTU.
            DeviceType::Network if nic.is_none() => {
                nic = Some((transport.into(), Some(region.addr)));
            }
            _ => {}
        }
    }
    let console_us = clock::vm_clock_ns().map(|ns| ns / 1000);

    let run = match handover.module(0).map(RunConfig::decode) {
        Some(Ok(run)) => Some(run),
        Some(Err(e)) => fail(ExitKind::BootFailed, format!("run configuration: {e}")),
        None => None,
    };
    clock::init(run.as_ref().and_then(|r| r.realtime_ns), standalone);
    if run.as_ref().is_some_and(|r| r.stdin_window) {
        channel::count_stdin();
    }
    if let Some((transport, regs)) = nic {
        let mtu = run
            .as_ref()
            .and_then(|r| r.net)
            .map_or(wasmvm_abi::net::DEFAULT_MTU, |c| c.mtu);
        let batched = boot_info.is_some_and(|i| i.has(direct::flags::NET_BATCHED));
        let windows = boot_info.is_some_and(|i| i.has(direct::flags::NET_TX_WINDOWS));
        net::attach(transport, regs.filter(|_| batched), windows, mtu);
    }

    let header = match header {
        Ok(h) => h,
        Err(e) => fail(
            ExitKind::BootFailed,
            format!("no valid app bundle at {bundle_addr:#x}: {e}"),
        ),
    };
    let bundle = match phys::loader_bytes(bundle_addr, header.total_len()).map(BundleRef::decode) {
        Some(Ok(b)) => b,
        Some(Err(e)) => fail(ExitKind::BootFailed, format!("app bundle: {e}")),
        None => fail(
            ExitKind::BootFailed,
            String::from("app bundle lies outside memory"),
        ),
    };
    let launch = match app::Launch::new(bundle, run) {
        Ok(l) => l,
        Err(e) => fail(ExitKind::BootFailed, e),
    };
    let (used, free) = heap::usage();
    let timeline = match (entered_us, console_us, clock::vm_clock_ns()) {
        (Some(entered), Some(console), Some(now)) => format!(
            "entered {entered} us after VM start (kvmclock), console up at {console} us, ready at {} us",
            now / 1000
        ),
        _ => String::from("(no kvmclock: time since VM start unknown)"),
    };
    let path = match entry {
        path::DIRECT => "direct entry",
        path::MULTIBOOT2 => "Multiboot2 entry",
        path::PVH => "PVH entry",
        _ => "unknown entry",
    };
    channel::log(&format!(
        "kernel: ready ({path}): {timeline}; heap {used} bytes used / {free} free"
    ));
    let record = app::run(launch);
    channel::exit(&record)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let message = format!("{}", info.message());
    // The heap could not give what an infallible allocation asked (alloc's handler panics
    // with this text): a VM too small for the app's arguments, environment or files, not a
    // kernel bug to report with a source location. Said so, with what to do.
    if message.starts_with("memory allocation of ") {
        fail(
            ExitKind::KernelPanic,
            format!(
                "out of memory ({message}): this VM's RAM is too small for the app; run with a larger --memory"
            ),
        )
    }
    fail(ExitKind::KernelPanic, format!("{info}"))
}
