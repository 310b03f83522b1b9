//! ACPI power-off for disk images: when the app ends on a PC (no wasmvm host, no exit
//! port), the VM should power off like any OS would, so clouds see it stop.
//!
//! Only what S5 needs is read: the RSDP the loader passed, the RSDT/XSDT, the FADT's PM1a
//! control port and SMI command, and `\_S5`'s sleep type from the DSDT's AML (found by its
//! name, the way small kernels do without an AML interpreter).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::{arch, phys};

/// PM1a control port (0: none found) and the S5 sleep type, packed as `port | typ << 16`.
static POWER_OFF: AtomicU32 = AtomicU32::new(0);
/// Hardware-reduced ACPI: the sleep control register's I/O port (0: none) and the S5 sleep
/// type, packed the same way.
static SLEEP_CONTROL: AtomicU32 = AtomicU32::new(0);
/// SMI command port and the value that turns ACPI mode on (`port | value << 16`).
static ACPI_ENABLE: AtomicU32 = AtomicU32::new(0);

const SDT_HEADER_LEN: u64 = 36;
/// PM1 control register bits.
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A whole system description table at `paddr`, if its length is sane and it is mapped.
fn table(paddr: u64) -> Option<&'static [u8]> {
    let header = phys::loader_bytes(paddr, SDT_HEADER_LEN)?;
    let len = u32_at(header, 4)? as u64;
    if !(SDT_HEADER_LEN..=16 << 20).contains(&len) {
        return None;
    }
    let bytes = phys::loader_bytes(paddr, len)?;
    // Tables whose bytes do not sum to zero are corrupt.
    (bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0).then_some(bytes)
}

/// Reads what power-off needs from the tables behind `rsdp`. Without ACPI (or with tables
/// this cannot read), [`power_off`] does nothing.
pub fn find_power_off(rsdp: Option<&[u8]>) {
    let Some(rsdp) = rsdp.filter(|r| r.starts_with(b"RSD PTR ")) else {
        return;
    };
    let revision = rsdp.get(15).copied().unwrap_or(0);
    let (root, entry_len) = match u64_at(rsdp, 24) {
        Some(xsdt) if revision >= 2 && xsdt != 0 => (xsdt, 8),
        _ => (u64::from(u32_at(rsdp, 16).unwrap_or(0)), 4),
    };
    let Some(root) = table(root) else { return };
    let tables = || {
        root[SDT_HEADER_LEN as usize..]
            .chunks_exact(entry_len)
            .filter_map(move |e| match entry_len {
                8 => u64_at(e, 0),
                _ => u32_at(e, 0).map(u64::from),
            })
            .filter_map(table)
    };
    let Some(fadt) = tables().find(|t| t.starts_with(b"FACP")) else {
        return;
    };
    let dsdt = match u64_at(fadt, 140) {
        Some(x) if x != 0 && fadt.len() >= 148 => x,
        _ => u64::from(u32_at(fadt, 40).unwrap_or(0)),
    };
    // \_S5 is in the DSDT on most firmware, in an SSDT on some.
    let slp_typ = table(dsdt).and_then(s5_sleep_type).or_else(|| {
        tables()
            .filter(|t| t.starts_with(b"SSDT"))
            .find_map(s5_sleep_type)
    });
    let Some(slp_typ) = slp_typ else { return };
    let pm1a_cnt = u32_at(fadt, 64).unwrap_or(0);
    if pm1a_cnt == 0 {
        // Hardware-reduced ACPI: the sleep control register, a generic address at offset
        // 244 (address space 1: system I/O).
        if fadt.get(244) == Some(&1)
            && let Some(port) = u64_at(fadt, 248).filter(|&p| p != 0 && p <= 0xffff)
        {
            SLEEP_CONTROL.store(port as u32 | u32::from(slp_typ) << 16, Ordering::Relaxed);
        }
        return;
    }
    if pm1a_cnt > 0xffff {
        return;
    }
    POWER_OFF.store(pm1a_cnt | u32::from(slp_typ) << 16, Ordering::Relaxed);
    let smi_cmd = u32_at(fadt, 48).unwrap_or(0);
    let enable = fadt.get(52).copied().unwrap_or(0);
    if smi_cmd != 0 && smi_cmd <= 0xffff && enable != 0 {
        ACPI_ENABLE.store(smi_cmd | u32::from(enable) << 16, Ordering::Relaxed);
    }
}

/// `\_S5`'s first package element (SLP_TYPa) in AML: NameOp 0x08 (then the name, perhaps
/// with a root prefix `\`), `_S5_`, PackageOp 0x12, a PkgLength (1–4 bytes), NumElements,
/// then a BytePrefix 0x0a value, or ZeroOp/OneOp.
fn s5_sleep_type(dsdt: &[u8]) -> Option<u8> {
    let name = dsdt.windows(4).enumerate().position(|(i, w)| {
        w == b"_S5_"
            && match i.checked_sub(1).map(|p| dsdt[p]) {
                Some(0x08) => true,
                Some(b'\\') => i >= 2 && dsdt[i - 2] == 0x08,
                _ => false,
            }
    })?;
    let at = name + 4;
    if *dsdt.get(at)? != 0x12 {
        return None;
    }
    let pkg_len_bytes = 1 + usize::from(dsdt.get(at + 1)? >> 6);
    let element = at + 1 + pkg_len_bytes + 1;
    match *dsdt.get(element)? {
        0x0a => dsdt.get(element + 1).copied(),
        0x00 => Some(0),
        0x01 => Some(1),
        _ => None,
    }
}

/// Enters S5 (soft off) if the tables said how; returns if they did not or it did not work.
pub fn power_off() {
    let reduced = SLEEP_CONTROL.load(Ordering::Relaxed);
    if reduced != 0 {
        // SLP_TYP in bits 2–4, SLP_EN bit 5.
        arch::out8_dx(reduced as u16, ((reduced >> 16) as u8 & 0x7) << 2 | 1 << 5);
    }
    let found = POWER_OFF.load(Ordering::Relaxed);
    if found == 0 {
        return;
    }
    let port = found as u16;
    let slp_typ = (found >> 16) as u16 & 0x7;
    let enable = ACPI_ENABLE.load(Ordering::Relaxed);
    if enable != 0 && arch::in16_dx(port) & SCI_EN == 0 {
        arch::out8_dx(enable as u16, (enable >> 16) as u8);
        for _ in 0..1_000_000 {
            if arch::in16_dx(port) & SCI_EN != 0 {
                break;
            }
        }
    }
    // Keep the register's other bits (SCI_EN among them).
    let keep = arch::in16_dx(port) & !(0x7 << 10 | SLP_EN);
    arch::out16_dx(port, keep | slp_typ << 10 | SLP_EN);
}
