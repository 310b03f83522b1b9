//! The Multiboot2 boot protocol, as GRUB (BIOS and UEFI) hands it to the kernel of an
//! exported disk image (`wasmvm image export`): the header the kernel carries and the boot
//! information structure the loader passes in `%ebx`, with `%eax` = [`BOOTLOADER_MAGIC`].
//!
//! [`Info::new_checked`] validates the structure's framing once; the accessors then walk its
//! tags. Only what the kernel uses is decoded: command line, modules, memory map and the
//! ACPI root pointer.

use crate::pvh::{MEMMAP_TYPE_RAM, MemmapEntry, Module};
use crate::{DecodeError, le_u32, le_u64};

/// First word of the header, which must lie 8-byte aligned in the kernel file's first
/// [`HEADER_SEARCH_LEN`] bytes.
pub const HEADER_MAGIC: u32 = 0xe852_50d6;
/// The header's architecture: 32-bit protected mode i386.
pub const ARCH_I386: u32 = 0;
/// How far into the file a loader looks for the header.
pub const HEADER_SEARCH_LEN: usize = 32 * 1024;
/// `%eax` at the kernel's entry when a Multiboot2 loader started it.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

/// Header checksum: the four header words sum to zero (mod 2^32).
pub const fn header_checksum(header_len: u32) -> u32 {
    0u32.wrapping_sub(
        HEADER_MAGIC
            .wrapping_add(ARCH_I386)
            .wrapping_add(header_len),
    )
}

/// Boot information tag types.
pub mod tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const MODULE: u32 = 3;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD_RSDP: u32 = 14;
    pub const ACPI_NEW_RSDP: u32 = 15;
}

/// Memory map entry type of usable RAM (as E820).
pub const MEMORY_AVAILABLE: u32 = 1;

/// The fixed part of the boot information: `total_size`, reserved.
pub const INFO_HEADER_LEN: usize = 8;
/// No loader passes more than this; anything larger is treated as corrupt.
pub const MAX_INFO_LEN: usize = 1 << 20;

/// Reads `total_size` from the first bytes of the boot information, so the caller can borrow
/// exactly that much memory.
pub fn info_len(header: &[u8]) -> Result<usize, DecodeError> {
    let len = le_u32(header, 0)? as usize;
    if !(INFO_HEADER_LEN..=MAX_INFO_LEN).contains(&len) {
        return Err(DecodeError::Malformed("multiboot2 info size"));
    }
    Ok(len)
}

/// One tag: its type and its body (after the 8-byte tag header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag<'a> {
    pub kind: u32,
    pub body: &'a [u8],
}

/// A validated Multiboot2 boot information structure.
#[derive(Debug, Clone, Copy)]
pub struct Info<'a> {
    bytes: &'a [u8],
}

impl<'a> Info<'a> {
    /// Checks that `bytes` (the whole structure, `total_size` bytes) is a well-formed chain
    /// of 8-byte aligned tags ending in an END tag, each within the buffer.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let len = info_len(bytes)?;
        let bytes = bytes.get(..len).ok_or(DecodeError::Truncated)?;
        let mut at = INFO_HEADER_LEN;
        loop {
            let kind = le_u32(bytes, at)?;
            let size = le_u32(bytes, at + 4)? as usize;
            if size < 8 || at.checked_add(size).is_none_or(|end| end > len) {
                return Err(DecodeError::Malformed("multiboot2 tag size"));
            }
            if kind == tag::END {
                return Ok(Info { bytes });
            }
            at += size.next_multiple_of(8);
        }
    }

    pub fn tags(&self) -> impl Iterator<Item = Tag<'a>> + 'a {
        let bytes = self.bytes;
        let mut at = INFO_HEADER_LEN;
        core::iter::from_fn(move || {
            let kind = le_u32(bytes, at).ok()?;
            let size = le_u32(bytes, at + 4).ok()? as usize;
            if kind == tag::END {
                return None;
            }
            let body = bytes.get(at + 8..at + size)?;
            at += size.next_multiple_of(8);
            Some(Tag { kind, body })
        })
    }

    /// The kernel command line (without its NUL), if the loader passed one.
    pub fn cmdline(&self) -> Option<&'a [u8]> {
        let body = self.tags().find(|t| t.kind == tag::CMDLINE)?.body;
        let len = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        Some(&body[..len])
    }

    /// Modules in the order the loader lists them (GRUB: the order of `module2` commands).
    pub fn modules(&self) -> impl Iterator<Item = Module> + 'a {
        self.tags()
            .filter(|t| t.kind == tag::MODULE)
            .filter_map(|t| {
                let start = le_u32(t.body, 0).ok()? as u64;
                let end = le_u32(t.body, 4).ok()? as u64;
                (end >= start).then_some(Module {
                    paddr: start,
                    size: end - start,
                    cmdline_paddr: 0,
                })
            })
    }

    /// The memory map, in the PVH entry form (RAM is [`MEMMAP_TYPE_RAM`], as in E820).
    pub fn memory_map(&self) -> impl Iterator<Item = MemmapEntry> + 'a {
        let body = self
            .tags()
            .find(|t| t.kind == tag::MEMORY_MAP)
            .map_or(&[][..], |t| t.body);
        // entry_size u32, entry_version u32, then entries of entry_size bytes.
        let entry_size = le_u32(body, 0).map_or(0, |s| s as usize);
        let entries = if entry_size >= 24 {
            body.get(8..).unwrap_or(&[])
        } else {
            &[]
        };
        entries.chunks_exact(entry_size.max(1)).filter_map(|e| {
            Some(MemmapEntry {
                addr: le_u64(e, 0).ok()?,
                size: le_u64(e, 8).ok()?,
                kind: match le_u32(e, 16).ok()? {
                    MEMORY_AVAILABLE => MEMMAP_TYPE_RAM,
                    other => other,
                },
            })
        })
    }

    /// A copy of the ACPI RSDP the loader found (the ACPI 2.0 one if there is one).
    pub fn rsdp(&self) -> Option<&'a [u8]> {
        self.tags()
            .find(|t| t.kind == tag::ACPI_NEW_RSDP)
            .or_else(|| self.tags().find(|t| t.kind == tag::ACPI_OLD_RSDP))
            .map(|t| t.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_tag(out: &mut [u8], at: &mut usize, kind: u32, body: &[u8]) {
        let size = 8 + body.len();
        out[*at..*at + 4].copy_from_slice(&kind.to_le_bytes());
        out[*at + 4..*at + 8].copy_from_slice(&(size as u32).to_le_bytes());
        out[*at + 8..*at + size].copy_from_slice(body);
        *at += size.next_multiple_of(8);
    }

    fn sample(out: &mut [u8; 256]) -> usize {
        let mut at = 8;
        push_tag(out, &mut at, tag::CMDLINE, b"console=ttyS0\0");
        let mut module = [0u8; 9];
        module[0..4].copy_from_slice(&0x20_0000u32.to_le_bytes());
        module[4..8].copy_from_slice(&0x20_1000u32.to_le_bytes());
        push_tag(out, &mut at, tag::MODULE, &module);
        let mut mmap = [0u8; 8 + 2 * 24];
        mmap[0..4].copy_from_slice(&24u32.to_le_bytes());
        for (i, (addr, len, kind)) in [(0u64, 0x9fc00u64, 1u32), (0x10_0000, 0x1f0_0000, 2)]
            .into_iter()
            .enumerate()
        {
            let e = &mut mmap[8 + i * 24..8 + (i + 1) * 24];
            e[0..8].copy_from_slice(&addr.to_le_bytes());
            e[8..16].copy_from_slice(&len.to_le_bytes());
            e[16..20].copy_from_slice(&kind.to_le_bytes());
        }
        push_tag(out, &mut at, tag::MEMORY_MAP, &mmap);
        push_tag(out, &mut at, tag::ACPI_OLD_RSDP, b"RSD PTR \x01");
        push_tag(out, &mut at, tag::END, &[]);
        out[0..4].copy_from_slice(&(at as u32).to_le_bytes());
        at
    }

    #[test]
    fn reads_what_grub_passes() {
        let mut bytes = [0u8; 256];
        let len = sample(&mut bytes);
        let info = Info::new_checked(&bytes[..len]).unwrap();
        assert_eq!(info.cmdline(), Some(&b"console=ttyS0"[..]));
        let m: [Module; 1] = [info.modules().next().unwrap()];
        assert_eq!((m[0].paddr, m[0].size), (0x20_0000, 0x1000));
        let mut map = info.memory_map();
        assert_eq!(
            map.next(),
            Some(MemmapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: MEMMAP_TYPE_RAM
            })
        );
        assert_eq!(map.next().map(|e| e.kind), Some(2));
        assert_eq!(map.next(), None);
        assert_eq!(info.rsdp(), Some(&b"RSD PTR \x01"[..]));
    }

    #[test]
    fn refuses_broken_framing() {
        let mut bytes = [0u8; 256];
        let len = sample(&mut bytes);
        // Truncated: the END tag is missing.
        assert!(Info::new_checked(&bytes[..len - 8]).is_err());
        // A tag whose size runs past the end.
        let mut bad = bytes;
        bad[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            Info::new_checked(&bad[..len]).unwrap_err(),
            DecodeError::Malformed("multiboot2 tag size")
        );
        // A tag smaller than its own header would loop forever.
        let mut bad = bytes;
        bad[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(Info::new_checked(&bad[..len]).is_err());
        assert!(info_len(&[0; 8]).is_err());
        assert!(info_len(&[0xff; 8]).is_err());
    }

    #[test]
    fn checksum_sums_to_zero() {
        let len = 24;
        let sum = HEADER_MAGIC
            .wrapping_add(ARCH_I386)
            .wrapping_add(len)
            .wrapping_add(header_checksum(len));
        assert_eq!(sum, 0);
    }
}
