//! The PVH boot protocol structures (Xen's `hvm_start_info`), as QEMU, Firecracker, Cloud
//! Hypervisor and our VMM hand them to the kernel in `%ebx` at its 32-bit entry point.

use crate::{DecodeError, le_u32, le_u64};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note (owner "Xen") holding the 32-bit entry address.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
pub const START_INFO_LEN: usize = 56;
pub const MODLIST_ENTRY_LEN: usize = 32;
pub const MEMMAP_ENTRY_LEN: usize = 24;
/// `hvm_memmap_table_entry.type` of usable RAM (E820 type 1).
pub const MEMMAP_TYPE_RAM: u32 = 1;
/// `hvm_memmap_table_entry.type` of memory the guest must leave alone (E820 type 2).
pub const MEMMAP_TYPE_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartInfo {
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    /// Only from version 1 on; zero before.
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

impl StartInfo {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if le_u32(bytes, 0)? != START_INFO_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = le_u32(bytes, 4)?;
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            (le_u64(bytes, 40)?, le_u32(bytes, 48)?)
        } else {
            (0, 0)
        };
        Ok(StartInfo {
            version,
            flags: le_u32(bytes, 8)?,
            nr_modules: le_u32(bytes, 12)?,
            modlist_paddr: le_u64(bytes, 16)?,
            cmdline_paddr: le_u64(bytes, 24)?,
            rsdp_paddr: le_u64(bytes, 32)?,
            memmap_paddr,
            memmap_entries,
        })
    }

    pub fn encode(&self) -> [u8; START_INFO_LEN] {
        let mut b = [0u8; START_INFO_LEN];
        b[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.nr_modules.to_le_bytes());
        b[16..24].copy_from_slice(&self.modlist_paddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.cmdline_paddr.to_le_bytes());
        b[32..40].copy_from_slice(&self.rsdp_paddr.to_le_bytes());
        b[40..48].copy_from_slice(&self.memmap_paddr.to_le_bytes());
        b[48..52].copy_from_slice(&self.memmap_entries.to_le_bytes());
        b
    }
}

/// One `hvm_modlist_entry`: a module (under QEMU, the `-initrd` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
}

impl Module {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Module {
            paddr: le_u64(bytes, 0)?,
            size: le_u64(bytes, 8)?,
            cmdline_paddr: le_u64(bytes, 16)?,
        })
    }

    pub fn encode(&self) -> [u8; MODLIST_ENTRY_LEN] {
        let mut b = [0u8; MODLIST_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.paddr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.cmdline_paddr.to_le_bytes());
        b
    }
}

/// One `hvm_memmap_table_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl MemmapEntry {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(MemmapEntry {
            addr: le_u64(bytes, 0)?,
            size: le_u64(bytes, 8)?,
            kind: le_u32(bytes, 16)?,
        })
    }

    pub fn encode(&self) -> [u8; MEMMAP_ENTRY_LEN] {
        let mut b = [0u8; MEMMAP_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.kind.to_le_bytes());
        b
    }
}

/// Where the kernel puts its heap (docs/abi.md, *Memory map*): the largest stretch of RAM
/// below `limit` and at or above `floor` (the end of the app bundle) that overlaps none of
/// the `reserved` ranges (modules, the loader's boot information). Returns `[start, end)`,
/// 4 KiB aligned, or `None` if there is no RAM at all.
pub fn heap_region(
    memmap: impl Iterator<Item = MemmapEntry> + Clone,
    floor: u64,
    limit: u64,
    reserved: &[(u64, u64)],
) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    for entry in memmap.clone().filter(|e| e.kind == MEMMAP_TYPE_RAM) {
        let mut start = entry.addr.max(floor).next_multiple_of(4096);
        let end = entry.addr.saturating_add(entry.size).min(limit) & !0xfff;
        // Walk the entry's pieces between reserved ranges, lowest first.
        while start < end {
            let cut = reserved
                .iter()
                .filter(|&&(r_start, r_end)| r_end > start && r_start < end)
                .min_by_key(|r| r.0);
            let (piece_end, next) = match cut {
                Some(&(r_start, r_end)) => {
                    (r_start.max(start) & !0xfff, r_end.next_multiple_of(4096))
                }
                None => (end, end),
            };
            if piece_end > start && best.is_none_or(|(s, e)| piece_end - start > e - s) {
                best = Some((start, piece_end));
            }
            start = next.max(start + 1).next_multiple_of(4096);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(addr: u64, size: u64) -> MemmapEntry {
        MemmapEntry {
            addr,
            size,
            kind: MEMMAP_TYPE_RAM,
        }
    }

    #[test]
    fn heap_takes_the_largest_free_stretch() {
        let map = [
            ram(0, 0x9fc00),
            ram(0x10_0000, 0x3ff0_0000),
            MemmapEntry {
                addr: 0x4000_0000,
                size: 0x1000,
                kind: 2,
            },
        ];
        // Above the bundle, up to the end of RAM.
        assert_eq!(
            heap_region(map.iter().copied(), 0x30_0000, 1 << 32, &[]),
            Some((0x30_0000, 0x4000_0000))
        );
        // A module near the top: the stretch below it is larger.
        assert_eq!(
            heap_region(
                map.iter().copied(),
                0x30_0000,
                1 << 32,
                &[(0x3fff_0000, 0x3fff_0800)]
            ),
            Some((0x30_0000, 0x3fff_0000))
        );
        // Boot information just above the bundle: the stretch after it wins.
        assert_eq!(
            heap_region(
                map.iter().copied(),
                0x30_0000,
                1 << 32,
                &[(0x30_0100, 0x30_2000)]
            ),
            Some((0x30_2000, 0x4000_0000))
        );
        // RAM above the limit is not used; no RAM at all is None.
        assert_eq!(
            heap_region(map.iter().copied(), 0x30_0000, 0x20_0000, &[]),
            None
        );
        assert_eq!(heap_region([].into_iter(), 0, 1 << 32, &[]), None);
    }

    #[test]
    fn start_info_round_trip() {
        let s = StartInfo {
            version: 1,
            nr_modules: 1,
            modlist_paddr: 0x1000,
            cmdline_paddr: 0x2000,
            memmap_paddr: 0x3000,
            memmap_entries: 3,
            ..Default::default()
        };
        assert_eq!(StartInfo::decode(&s.encode()), Ok(s));
        assert_eq!(StartInfo::decode(&[0; 56]), Err(DecodeError::BadMagic));
        assert_eq!(
            StartInfo::decode(&s.encode()[..20]),
            Err(DecodeError::Truncated)
        );
        let e = MemmapEntry {
            addr: 0,
            size: 0x9fc00,
            kind: MEMMAP_TYPE_RAM,
        };
        assert_eq!(MemmapEntry::decode(&e.encode()), Ok(e));
    }
}
