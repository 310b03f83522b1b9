//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`: the Linux target expects libc to
//! provide them, and the kernel has no libc. `rep movsb`/`stosb` are fast on every CPU since
//! Ivy Bridge (ERMSB) and, being single instructions, cannot be turned back into calls to
//! themselves by the optimiser. `memset` knows which linear memory is still zero.

use core::arch::asm;

/// # Safety
/// `dest` and `src` must be valid for `n` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; the direction flag is clear (set
    // at boot and never left set).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `dest` and `src` must be valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: a forward copy never reads a byte it already wrote.
        // SAFETY: as for `memcpy`; the ranges were checked to copy forward safely.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: copies backwards from the last byte with the direction flag set, and clears the
    // flag again before returning; the caller guarantees both ranges are valid.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// Skips the part of a zero fill that lands in the linear memory's untouched, still-zero
/// tail (`heap::zero_fill_len`): the engines zero each range of linear memory they expose,
/// and storing zeros over zero RAM would touch every page of it.
///
/// # Safety
/// `dest` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let n = crate::heap::zero_fill_len(dest as usize, n, c as u8 == 0);
    // SAFETY: the caller guarantees the range is valid, and `n` is at most its length;
    // the direction flag is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees both ranges hold `n` bytes.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}
