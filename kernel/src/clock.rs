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

/// Records the boot instant and the host's wall-clock time at launch. `pc`: a standard PC
/// (a disk image), whose PIT and CMOS RTC may be used; other machines (microvm,
/// Firecracker) have neither, and reading absent ports only costs exits.
pub fn init(realtime_at_launch_ns: Option<u64>, pc: bool) {
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
        if per_us == 0 && pc {
            per_us = pit_calibrated_tsc_per_us().unwrap_or(0);
        }
        if per_us != 0 {
            TSC_PER_US.store(per_us, Ordering::Relaxed);
        }
    }
    BOOT_NS.store(raw_ns(), Ordering::Relaxed);
    // No host clock at launch (a disk image): the PC's real-time clock, to the second.
    let realtime = realtime_at_launch_ns
        .or_else(|| pc.then(rtc_unix_ns).flatten())
        .unwrap_or(0);
    REALTIME_AT_BOOT.store(realtime, Ordering::Relaxed);
}

/// Measures the TSC against 10 ms of PIT channel 2 (1.193182 MHz; ports below 0x100, so
/// this works at CPL 3). `None` without a PIT.
fn pit_calibrated_tsc_per_us() -> Option<u64> {
    const TICKS: u16 = 11_932; // 10 ms
    let gate = arch::in8::<0x61>();
    // Gate on, speaker off; channel 2, lobyte/hibyte, mode 0 (one shot), binary.
    arch::out8_low(0x61, (gate & !0x02) | 0x01);
    arch::out8_low(0x43, 0xb0);
    arch::out8_low(0x42, TICKS as u8);
    arch::out8_low(0x42, (TICKS >> 8) as u8);
    // Mode 0 drives the output low until the count runs out: a port that already reads
    // high (0xff: nothing there) cannot be timed.
    if arch::in8::<0x61>() & 0x20 != 0 {
        arch::out8_low(0x61, gate);
        return None;
    }
    let start = arch::rdtsc();
    let mut done = false;
    for _ in 0..50_000_000u32 {
        if arch::in8::<0x61>() & 0x20 != 0 {
            done = true;
            break;
        }
    }
    let elapsed = arch::rdtsc().wrapping_sub(start);
    arch::out8_low(0x61, gate);
    // 100 MHz to 10 GHz: anything else is a measurement gone wrong.
    let per_us = elapsed / 10_000;
    (done && (100..=10_000).contains(&per_us)).then_some(per_us)
}

/// Reads CMOS register `reg` (ports 0x70/0x71).
fn cmos(reg: u8) -> u8 {
    // Bit 7 of the index keeps NMIs disabled, as firmware leaves them.
    arch::out8_low(0x70, 0x80 | reg);
    arch::in8::<0x71>()
}

/// The RTC's date and time as nanoseconds since the Unix epoch (assumed UTC, as clouds
/// and libvirt's default set it). `None` without a plausible RTC.
fn rtc_unix_ns() -> Option<u64> {
    let read = || {
        // Wait while an update is in progress (at most ~2 ms on a real RTC; bounded, as a
        // missing RTC reads 0xff).
        for _ in 0..2_000 {
            if cmos(0x0a) & 0x80 == 0 {
                break;
            }
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(cmos)
    };
    // Two equal readings in a row: not torn by an update.
    let mut values = read();
    for _ in 0..5 {
        let again = read();
        if again == values {
            break;
        }
        values = again;
    }
    let status_b = cmos(0x0b);
    let bcd = status_b & 0x04 == 0;
    let decode = |v: u8| if bcd { (v >> 4) * 10 + (v & 0x0f) } else { v };
    let [sec, min, hour_raw, day, month, year, century] = values;
    let pm = hour_raw & 0x80 != 0;
    let mut hour = decode(hour_raw & 0x7f);
    if status_b & 0x02 == 0 {
        // 12-hour clock.
        hour = (hour % 12) + if pm { 12 } else { 0 };
    }
    let century = match decode(century) {
        19..=21 => u64::from(decode(century)),
        _ => 20,
    };
    let year = century * 100 + u64::from(decode(year));
    let (month, day) = (u64::from(decode(month)), u64::from(decode(day)));
    let (hour, min, sec) = (
        u64::from(hour),
        u64::from(decode(min)),
        u64::from(decode(sec)),
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(
        (days_from_civil(year, month, day)? * 86_400 + hour * 3600 + min * 60 + sec)
            * 1_000_000_000,
    )
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
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
