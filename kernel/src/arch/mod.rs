//! Everything that touches the CPU directly (`standalone` is the ring-0 device setup of
//! exported disk images). The kernel's `unsafe` lives here and in
//! `phys.rs`, `heap.rs`, `virtio.rs`, `console.rs` (its virtqueues), `clock.rs` (the
//! kvmclock page) and `app/wasmtime/embedding.rs` (loading a compiled artifact).

pub mod boot;
pub mod mem;
pub mod standalone;

use core::arch::asm;

/// Writes `value` to an I/O port below 0x100 with `out imm8, al`, the only port I/O form that
/// works at CPL 3 on every KVM (see docs/design.md).
#[inline(always)]
pub fn out8<const PORT: u8>(value: u8) {
    // SAFETY: IOPL is 3, so the instruction is allowed; port writes have no memory effects the
    // compiler must know about.
    unsafe {
        asm!("out {port}, al", port = const PORT, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes `value` to an I/O port below 0x100 with `out imm8, eax` (4 bytes; see [`out8`]).
#[inline(always)]
pub fn out32<const PORT: u8>(value: u32) {
    // SAFETY: as for `out8`.
    unsafe {
        asm!("out {port}, eax", port = const PORT, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a byte to a 16-bit port with `out dx, al`. Works at CPL 3 under TCG and hardware
/// KVM, but triple-faults under nested PVM: only for the serial fallback and disk images.
#[inline(always)]
pub fn out8_dx(port: u16, value: u8) {
    // SAFETY: IOPL is 3; no memory effects.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from a 16-bit port (serial fallback only, see [`out8_dx`]).
#[inline(always)]
pub fn in8_dx(port: u16) -> u8 {
    let v: u8;
    // SAFETY: IOPL is 3; no memory effects.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a 16-bit word to a port with `out dx, ax` (ACPI power-off on a PC; see
/// [`out8_dx`]).
#[inline(always)]
pub fn out16_dx(port: u16, value: u16) {
    // SAFETY: IOPL is 3; no memory effects.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 16-bit word from a port (see [`out16_dx`]).
#[inline(always)]
pub fn in16_dx(port: u16) -> u16 {
    let v: u16;
    // SAFETY: IOPL is 3; no memory effects.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads a byte from an I/O port below 0x100 with `in al, imm8` (works at CPL 3 on every
/// KVM, like [`out8`]).
#[inline(always)]
pub fn in8<const PORT: u8>() -> u8 {
    let v: u8;
    // SAFETY: IOPL is 3; port reads have no memory effects.
    unsafe {
        asm!("in al, {port}", port = const PORT, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a byte to an I/O port below 0x100 with `out imm8, al` chosen at run time among
/// the PIT and CMOS ports (see [`out8`]); other ports are ignored.
pub fn out8_low(port: u8, value: u8) {
    match port {
        0x42 => out8::<0x42>(value),
        0x43 => out8::<0x43>(value),
        0x61 => out8::<0x61>(value),
        0x70 => out8::<0x70>(value),
        _ => {}
    }
}

/// A hardware random number (`rdrand`), if the CPU has the instruction and it delivers.
pub fn rdrand() -> Option<u64> {
    if cpuid(1).ecx & (1 << 30) == 0 {
        return None;
    }
    for _ in 0..10 {
        let mut value = 0u64;
        // SAFETY: CPUID says the CPU implements `rdrand`, which is unprivileged.
        if unsafe { core::arch::x86_64::_rdrand64_step(&mut value) } == 1 {
            return Some(value);
        }
    }
    None
}

/// The time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the counter (CR4.TSD is clear, so it works at CPL 3).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `cpuid` (unprivileged).
pub fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid(leaf)
}

/// Ends the VM from CPL 3 when nothing else can: an invalid opcode with an empty IDT is a
/// triple fault, which QEMU with `-no-reboot` (and every VMM of ours) treats as the end.
pub fn triple_fault() -> ! {
    // SAFETY: deliberately raises #UD; there is no handler, so the CPU shuts down.
    unsafe { asm!("ud2", options(noreturn)) }
}

/// The precompiled `alloc` for this target has unwinding landing pads that name
/// `_Unwind_Resume`; with `panic = "abort"` they are unreachable, but the symbol must exist.
#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    triple_fault()
}

/// Likewise the personality routine some precompiled `compiler_builtins` objects name
/// (linked in with wasmtime's runtime); never called with `panic = "abort"`.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() -> ! {
    triple_fault()
}
