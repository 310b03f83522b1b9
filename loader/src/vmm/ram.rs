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

use std::mem::ManuallyDrop;
use std::sync::Arc;

use vm_memory::mmap::{FromRangesError, MmapRegion, MmapRegionBuilder, MmapRegionError};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// A huge page, and the alignment of guest RAM in the host's address space.
pub const HUGE_PAGE: usize = 2 << 20;

/// The mapping guest RAM was carved from, unmapped when this is dropped, but only if no
/// one else still holds RAM's region. Drop the memory first (a `Machine` does): a
/// [`GuestMemoryMmap`] (or a clone of it, it is `Clone`) still alive then keeps the mapping
/// for good (leaked), never a dangling view of it.
pub struct RamBacking {
    ram: Option<Arc<MmapRegion<()>>>,
    mapping: ManuallyDrop<MmapRegion<()>>,
}

impl Drop for RamBacking {
    fn drop(&mut self) {
        if self.ram.take().and_then(Arc::into_inner).is_some() {
            // SAFETY: RAM's region, the only view into the mapping besides this one, is
            // gone (its last reference was dropped just now), and `mapping` is not used
            // again.
            unsafe { ManuallyDrop::drop(&mut self.mapping) };
        }
    }
}

/// Guest memory: `ram` bytes of anonymous RAM at guest address 0, aligned to [`HUGE_PAGE`]
/// in the host's address space, then an anonymous region for each of `extra` (address,
/// length), in address order.
pub fn guest_memory(
    ram: usize,
    extra: &[(GuestAddress, usize)],
) -> Result<(GuestMemoryMmap, RamBacking), FromRangesError> {
    if ram == 0 {
        // What mmap says of an empty mapping.
        let empty = std::io::Error::from_raw_os_error(libc::EINVAL);
        return Err(MmapRegionError::Mmap(empty).into());
    }
    let mapping = MmapRegion::<()>::new(ram + HUGE_PAGE)?;
    let skip = (HUGE_PAGE - mapping.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
    let start = mapping.as_ptr().wrapping_add(skip);
    // SAFETY: `skip < HUGE_PAGE`, so `[start, start + ram)` lies inside `mapping`, an
    // anonymous mapping that `RamBacking` unmaps only once this region is gone.
    let builder = unsafe { MmapRegionBuilder::new(ram).with_raw_mmap_pointer(start) };
    let region = Arc::new(
        builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()?,
    );
    let backing = RamBacking {
        ram: Some(Arc::clone(&region)),
        mapping: ManuallyDrop::new(mapping),
    };
    let mut regions = vec![
        GuestRegionMmap::with_arc(region, GuestAddress(0))
            .ok_or(FromRangesError::InvalidGuestRegion)?,
    ];
    for &(at, len) in extra {
        regions.push(GuestRegionMmap::from_range(at, len, None)?);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(FromRangesError::from)?;
    Ok((mem, backing))
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
            drop(mem);
            drop(_backing);
        }
    }

    /// Whether the page at `at` is mapped in this process (`mincore` fails with ENOMEM on
    /// an address that is not).
    fn mapped(at: *mut u8) -> bool {
        let mut vec = [0u8];
        // SAFETY: mincore only writes one byte to `vec` and reads no memory at `at`.
        unsafe { libc::mincore(at.cast(), 4096, vec.as_mut_ptr()) == 0 }
    }

    #[test]
    fn ram_is_unmapped_once_the_memory_and_then_the_backing_are_gone() {
        let (mem, backing) = guest_memory(4 << 20, &[]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        assert!(mapped(host));
        drop(mem);
        assert!(mapped(host), "RAM went with the memory, before its backing");
        drop(backing);
        assert!(!mapped(host), "RAM outlived both");
    }

    #[test]
    fn a_clone_of_the_memory_outliving_the_backing_keeps_ram_mapped() {
        let (mem, backing) = guest_memory(4 << 20, &[]).unwrap();
        let kept = mem.clone();
        drop(mem);
        drop(backing);
        kept.write_slice(&[9; 4096], GuestAddress(0x1000)).unwrap();
        let mut page = [0u8; 4096];
        kept.read_slice(&mut page, GuestAddress(0x1000)).unwrap();
        assert_eq!(page, [9; 4096]);
    }

    #[test]
    fn no_ram_is_an_error_not_a_panic() {
        assert!(guest_memory(0, &[]).is_err());
    }
}
