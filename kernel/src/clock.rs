//! Time without exits: kvmclock where KVM publishes it (registered at boot), else the TSC
//! at a frequency from CPUID, else at an assumed 1 GHz (documented as coarse).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, boot::KVMCLOCK_PAGE};

static BOOT_NS: AtomicU64 = AtomicU64::new(0);
static REALTIME_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// TSC ticks per microsecond when kvmclock is absent.
static TSC_PER_US: AtomicU64 = AtomicU64::new(1000);
/// Where the kvmclock page is: 0 for our own [`KVMCLOCK_PAGE`] (registered at CPL 0 on the PVH
/// path), else the page a direct-entry VMM registered for us.
static PVCLOCK_PADDR: AtomicU64 = AtomicU64::new(0);

/// Reads the kvmclock page a direct-entry VMM registered at `paddr` from now on. Ignored
/// unless the page is mapped RAM-sized and 4-byte aligned.
pub fn use_pvclock_at(paddr: u64) {
    if paddr.is_multiple_of(4) && crate::phys::loader_bytes(paddr, 32).is_some() {
        PVCLOCK_PADDR.store(paddr, Ordering::Relaxed);
    }
}

/// Reads a consistent snapshot of the kvmclock page, if KVM filled it in.
fn kvmclock_ns() -> Option<u64> {
    let page = match PVCLOCK_PADDR.load(Ordering::Relaxed) {
        0 => (&raw const KVMCLOCK_PAGE).cast::<[u8; 32]>(),
        paddr => paddr as *const [u8; 32],
    };
    loop {
        // SAFETY: the page is one the hypervisor updates, either our static or one checked by
        // `use_pvclock_at` to be mapped and aligned; volatile reads of plain bytes are always
        // valid, and the version protocol below discards torn snapshots.
        let (version, data) = unsafe {
            let v = core::ptr::read_volatile(page.cast::<u32>());
            core::sync::atomic::fence(Ordering::Acquire);
            (v, core::ptr::read_volatile(page))
        };
        if version == 0 {
            return None;
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: as above.
        let again = unsafe { core::ptr::read_volatile(page.cast::<u32>()) };
        if version & 1 == 1 || again != version {
            continue;
        }
        let b = &data;
        let tsc_timestamp = u64::from_le_bytes(b[8..16].try_into().ok()?);
        let system_time = u64::from_le_bytes(b[16..24].try_into().ok()?);
        let mul = u32::from_le_bytes(b[24..28].try_into().ok()?) as u128;
        let shift = b[28] as i8;
        let mut delta = arch::rdtsc().wrapping_sub(tsc_timestamp) as u128;
        if shift >= 0 {
            delta <<= shift;
        } else {
            delta >>= -shift;
        }
        return Some(system_time + ((delta * mul) >> 32) as u64);
    }
}

fn raw_ns() -> u64 {
    kvmclock_ns().unwrap_or_else(|| arch::rdtsc() * 1000 / TSC_PER_US.load(Ordering::Relaxed))
}

/// Records the boot instant and the host's wall-clock time at launch.
pub fn init(realtime_at_launch_ns: Option<u64>) {
    if kvmclock_ns().is_none() {
        // CPUID 0x15 (TSC/crystal ratio) or 0x16 (base MHz), when the VMM exposes them.
        let max = arch::cpuid(0).eax;
        let mut per_us = 0;
        if max >= 0x15 {
            let l = arch::cpuid(0x15);
            if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
                per_us = (l.ecx as u64 * l.ebx as u64 / l.eax as u64) / 1_000_000;
            }
        }
        if per_us == 0 && max >= 0x16 {
            per_us = (arch::cpuid(0x16).eax & 0xffff) as u64;
        }
        if per_us != 0 {
            TSC_PER_US.store(per_us, Ordering::Relaxed);
        }
    }
    BOOT_NS.store(raw_ns(), Ordering::Relaxed);
    REALTIME_AT_BOOT.store(realtime_at_launch_ns.unwrap_or(0), Ordering::Relaxed);
}

/// The kvmclock reading: nanoseconds since the hypervisor started the VM's clock (about VM
/// creation), where KVM provides one.
pub fn vm_clock_ns() -> Option<u64> {
    kvmclock_ns()
}

/// Nanoseconds since boot; never goes backwards.
pub fn monotonic_ns() -> u64 {
    raw_ns().saturating_sub(BOOT_NS.load(Ordering::Relaxed))
}

/// Nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    REALTIME_AT_BOOT.load(Ordering::Relaxed) + monotonic_ns()
}

pub fn resolution_ns() -> u64 {
    1
}
