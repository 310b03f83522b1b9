//! Guest RAM whose host address is aligned like its guest-physical one.
//!
//! A host huge page backs an aligned 2 MiB of the process's address space, and KVM maps a
//! 2 MiB guest page only where guest-physical and host addresses agree modulo 2 MiB. An
//! anonymous `mmap` promises only 4 KiB alignment: Linux before 6.7 places mappings with
//! no regard for huge pages, and 6.18 still returned a 65 MiB one 1 MiB off. Each 2 MiB of
//! guest memory would then straddle two host huge pages (both resident, twice the memory
//! for what the guest touches) and KVM would map it 4 KiB at a time; the idle trim
//! (`vmm::trim`), which works in aligned 2 MiB stretches, would split the neighbours of
//! the stretch it means. So RAM is carved out of a mapping 2 MiB larger, at its first
//! aligned address; the slack is address space only, never touched.

use vm_memory::mmap::{FromRangesError, MmapRegion, MmapRegionBuilder};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// A huge page, and the alignment of guest RAM in the host's address space.
pub const HUGE_PAGE: usize = 2 << 20;

/// The mapping guest RAM was carved from. Dropping it unmaps RAM, so it must outlive the
/// [`GuestMemoryMmap`] made with it and every clone of that (a `Machine` keeps both, this
/// one dropped last).
pub struct RamBacking {
    _mapping: MmapRegion<()>,
}

/// Guest memory: `ram` bytes of anonymous RAM at guest address 0, aligned to [`HUGE_PAGE`]
/// in the host's address space, then an anonymous region for each of `extra` (address,
/// length), in address order.
pub fn guest_memory(
    ram: usize,
    extra: &[(GuestAddress, usize)],
) -> Result<(GuestMemoryMmap, RamBacking), FromRangesError> {
    let backing = MmapRegion::<()>::new(ram + HUGE_PAGE)?;
    let skip = backing.as_ptr().align_offset(HUGE_PAGE);
    let start = backing.as_ptr().wrapping_add(skip);
    // SAFETY: `skip < HUGE_PAGE`, so `[start, start + ram)` lies inside `backing`'s
    // anonymous mapping, which `RamBacking` keeps mapped for as long as the caller keeps it
    // (past every use of the memory made here, see `RamBacking`).
    let builder = unsafe { MmapRegionBuilder::new(ram).with_raw_mmap_pointer(start) };
    let region = builder
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE)
        .build()?;
    let mut regions = vec![
        GuestRegionMmap::new(region, GuestAddress(0)).ok_or(FromRangesError::InvalidGuestRegion)?,
    ];
    for &(at, len) in extra {
        regions.push(GuestRegionMmap::from_range(at, len, None)?);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(FromRangesError::from)?;
    Ok((mem, RamBacking { _mapping: backing }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_starts_on_a_huge_page_boundary_whatever_its_size() {
        // Sizes whose plain mappings the host need not align (65 MiB came back 1 MiB off).
        for mib in [1usize, 3, 64, 65, 127] {
            let (mem, _backing) =
                guest_memory(mib << 20, &[(GuestAddress(1 << 40), 4096)]).unwrap();
            let host = mem.get_host_address(GuestAddress(0)).unwrap();
            assert_eq!(host as usize % HUGE_PAGE, 0, "{mib} MiB at {host:?}");
            let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
            assert_eq!(regions, vec![(0, (mib << 20) as u64), (1 << 40, 4096)]);
            // Every byte of RAM is there, and the page after it is not RAM.
            let last = GuestAddress(((mib << 20) - 1) as u64);
            mem.write_slice(&[7], last).unwrap();
            let mut byte = [0u8];
            mem.read_slice(&mut byte, last).unwrap();
            assert_eq!(byte, [7]);
            assert!(
                mem.write_slice(&[7], GuestAddress((mib << 20) as u64))
                    .is_err()
            );
        }
    }
}
