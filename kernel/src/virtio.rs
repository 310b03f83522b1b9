//! virtio plumbing: the DMA [`Hal`] for `virtio-drivers` and virtio-mmio device discovery.
//!
//! Memory is identity mapped and the device sees guest-physical addresses, so DMA buffers
//! are ordinary heap allocations whose virtual address is their physical address.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};
use wasmvm_abi::cmdline::MmioDevice;

pub struct KernelHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

// SAFETY: allocations are page aligned, zeroed, exclusively owned until `dma_dealloc`, and
// their physical address equals their virtual address (identity map), as `Hal` requires.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (virtio-drivers never asks for 0 pages).
        let ptr = unsafe { alloc_zeroed(dma_layout(pages)) };
        let ptr = NonNull::new(ptr).expect("out of memory for virtio DMA");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Opens the transport of the virtio-mmio device the command line announced at `region`.
pub fn open(region: MmioDevice) -> Option<MmioTransport<'static>> {
    // Every MMIO region lies below the mapped 4 GiB; anything else is a bogus command line.
    if region.addr == 0 || region.addr.checked_add(region.size)? > 1 << 32 {
        return None;
    }
    let header = NonNull::new(region.addr as *mut VirtIOHeader)?;
    // SAFETY: the VMM announced a virtio-mmio register block of `size` bytes at `addr`; it is
    // identity mapped, device memory that nothing else in the kernel touches, and lives for
    // the whole run.
    unsafe { MmioTransport::new(header, region.size as usize) }.ok()
}

/// Wrapper that lets a driver live in a `static` lock.
pub struct Pinned<T>(pub T);

// SAFETY: the kernel runs on one CPU with interrupts off and no threads; a driver is only ever
// touched from that one flow of control, through a lock.
unsafe impl<T> Send for Pinned<T> {}

/// Writes `queue` to the QueueNotify register of the virtio-mmio device at `regs`.
pub fn notify(regs: u64, queue: u32) {
    const QUEUE_NOTIFY: u64 = 0x50;
    // SAFETY: `regs` is the register block of a virtio-mmio device the command line
    // announced and `open` accepted (below 4 GiB, identity mapped); a write to QueueNotify
    // has no effect on memory, only on the device.
    unsafe { core::ptr::write_volatile((regs + QUEUE_NOTIFY) as *mut u32, queue) };
}
