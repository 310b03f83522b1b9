//! The contract between the `wasmvm` host (packer, VMM backends) and the guest kernel.
//!
//! Every byte layout that crosses the host/guest boundary is defined here once and used by
//! both sides: the image bundle ([`bundle`]) and its signature trailer
//! ([`signature_trailer`]), the run-time configuration the host hands to a booting guest
//! ([`bundle::RunConfig`]), the PVH boot structures ([`pvh`]), the Multiboot2 structures of
//! exported disk images ([`multiboot2`]), the direct 64-bit entry ([`direct`]), the framed
//! console channel ([`channel`]), the host's exit statuses ([`exit`]) and the WASI functions
//! a module may import ([`wasi_imports`]), which `pack` checks and the kernel links.
//!
//! All integers are little-endian. Decoders never panic on untrusted bytes: they return
//! [`DecodeError`]. `docs/abi.md` is the prose version of this crate.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod bundle;
pub mod channel;
pub mod cmdline;
pub mod direct;
pub mod exit;
pub mod multiboot2;
pub mod net;
#[cfg(feature = "alloc")]
pub mod p9;
pub mod pvh;
mod records;
pub mod signature_trailer;
pub mod wasi_imports;

pub use records::{Record, Records};

/// Version of this contract. The kernel refuses a bundle whose version differs, and the host
/// refuses a kernel that reports another one.
pub const ABI_VERSION: u32 = 2;

/// Why some bytes from the other side could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    Truncated,
    /// The magic number is not the expected one.
    BadMagic,
    /// The structure declares another [`ABI_VERSION`].
    VersionMismatch { found: u32 },
    /// A length or offset points outside the buffer, or a field holds an impossible value.
    Malformed(&'static str),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated"),
            DecodeError::BadMagic => f.write_str("bad magic number"),
            DecodeError::VersionMismatch { found } => write!(
                f,
                "ABI version {found}, but this side speaks version {ABI_VERSION}"
            ),
            DecodeError::Malformed(what) => write!(f, "malformed: {what}"),
        }
    }
}

/// Reads a little-endian `u32` at `off`, or [`DecodeError::Truncated`].
pub(crate) fn le_u32(bytes: &[u8], off: usize) -> Result<u32, DecodeError> {
    let b = bytes.get(off..off + 4).ok_or(DecodeError::Truncated)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian `u64` at `off`, or [`DecodeError::Truncated`].
pub(crate) fn le_u64(bytes: &[u8], off: usize) -> Result<u64, DecodeError> {
    let b = bytes.get(off..off + 8).ok_or(DecodeError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub const fn align_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}
