//! The direct entry: how a VMM that knows wasmvm starts the kernel already in 64-bit mode at
//! CPL 3, so the guest runs no privileged code at all (on nested KVM without hardware
//! virtualization, CPL-0 code is emulated instruction by instruction).
//!
//! **Finding it.** The kernel ELF carries a note (owner [`NAME`](crate::bundle::kernel_note::NAME), type
//! [`TYPE_DIRECT_ENTRY`](crate::bundle::kernel_note::TYPE_DIRECT_ENTRY)) whose 8-byte
//! descriptor is the entry's address. An image without the note boots only through PVH.
//!
//! **Machine state at the entry**, prepared by the VMM:
//! - long mode (`EFER.LME|LMA`), `CR0 = PE|MP|ET|NE|WP|PG`, `CR4 = PAE|OSFXSR|OSXMMEXCPT`;
//! - page tables identity mapping the low 4 GiB with user-accessible, writable pages;
//! - `CS` a 64-bit code segment with DPL 3, `SS`/`DS`/`ES`/`FS`/`GS` flat data segments with
//!   DPL 3 (selectors are irrelevant: the kernel never reloads them), an empty IDT;
//! - `RFLAGS` = IOPL 3, interrupts off; `RIP` = the entry; `RSP` undefined (the kernel
//!   switches to its own stack first);
//! - `RDI` = guest-physical address of a [`BootInfo`].
//!
//! RAM that no loaded segment, boot structure or module covers is zero (the kernel's heap
//! relies on it), as it is under every PVH loader.

use crate::{DecodeError, le_u32, le_u64};

/// First bytes of a [`BootInfo`].
pub const BOOT_INFO_MAGIC: [u8; 8] = *b"WASMVMBI";
/// Encoded size of a [`BootInfo`].
pub const BOOT_INFO_LEN: usize = 56;

/// Capabilities of the VMM, in [`BootInfo::flags`].
pub mod flags {
    /// A 4-byte `out` to [`WAIT_PORT`](crate::exit::WAIT_PORT) blocks the vCPU until host
    /// input is pending or the number of microseconds in `EAX` has passed (`u32::MAX`: no
    /// deadline). Without it the guest must assume the wait returns at once.
    pub const WAIT_BLOCKS: u32 = 1 << 0;
    /// The host channel is the first virtio console announced on the command line.
    pub const CONSOLE_VIRTIO: u32 = 1 << 1;
    /// [`BootInfo::pvclock_paddr`](super::BootInfo::pvclock_paddr) is a kvmclock page the VMM
    /// registered (`MSR_KVM_SYSTEM_TIME_NEW`) before entry.
    pub const PVCLOCK: u32 = 1 << 2;
    /// The console at [`BootInfo::console_mmio`](super::BootInfo::console_mmio) is already
    /// set up: `VIRTIO_F_VERSION_1` negotiated, status DRIVER_OK, its receive (0) and transmit
    /// (1) queues live at [`BootInfo::console_rings`](super::BootInfo::console_rings) in the
    /// [`console_rings`](super::console_rings) layout, with empty rings. The guest skips
    /// discovery and negotiation (dozens of exits) and starts posting buffers.
    pub const CONSOLE_READY: u32 = 1 << 3;
    /// The network card works its queues at every exit and suppresses notifications
    /// (`VRING_USED_F_NO_NOTIFY`); the guest writes the transmit queue's QueueNotify once
    /// per batch of frames instead, so a burst costs one exit.
    pub const NET_BATCHED: u32 = 1 << 4;
    /// The host discards the kernel's log lines (`wasmvm run` without `--verbose`): the
    /// kernel need not send them, and sends none (each would cost it a notify exit).
    pub const LOG_DISCARDED: u32 = 1 << 5;
    /// With [`NET_BATCHED`]: the transmit queue's used ring carries
    /// `VRING_USED_F_NO_NOTIFY` only during quiet windows after a notify (renewed while
    /// frames flow), during which the VMM takes transmit buffers at every exit and makes an
    /// exit before each window ends, a few milliseconds at most. The guest then notifies as
    /// virtio says (after posting, when the flag is clear) instead of once per batch, and
    /// also when its transmit queue is full, to have the device take the frames at once.
    pub const NET_TX_WINDOWS: u32 = 1 << 6;
}

/// The ring layout of a console the VMM set up ([`flags::CONSOLE_READY`]); a guest that
/// negotiates itself may use it too. Queue `q` occupies [`QUEUE_SPAN`] bytes from
/// `rings + q * QUEUE_SPAN`: the descriptor table at offset 0, the available ring at
/// [`AVAIL_OFFSET`], the used ring at [`USED_OFFSET`].
pub mod console_rings {
    /// Entries per queue.
    pub const QUEUE_SIZE: u16 = 64;
    pub const QUEUE_SPAN: u64 = 0x1000;
    pub const AVAIL_OFFSET: u64 = 0x400;
    pub const USED_OFFSET: u64 = 0x800;
    /// Bytes both queues take.
    pub const LEN: u64 = 2 * QUEUE_SPAN;
}

/// What the VMM tells the kernel at the direct entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootInfo {
    /// Bits of [`flags`].
    pub flags: u32,
    /// A PVH `hvm_start_info` ([`crate::pvh::StartInfo`]): memory map, command line (with the
    /// device announcements), and modules (module 0 is the run configuration), exactly as a
    /// PVH loader would have passed them.
    pub start_info_paddr: u64,
    /// The kvmclock page (32 bytes, 4-byte aligned) when [`flags::PVCLOCK`] is set.
    pub pvclock_paddr: u64,
    /// The VMM's name and version for `--verbose` (e.g. `b"wasmvm 0.1\0..."`), zero padded.
    pub vmm: [u8; 8],
    /// With [`flags::CONSOLE_READY`]: the console's register window.
    pub console_mmio: u64,
    /// With [`flags::CONSOLE_READY`]: where its queues live (page aligned).
    pub console_rings: u64,
}

impl BootInfo {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    pub fn encode(&self) -> [u8; BOOT_INFO_LEN] {
        let mut b = [0u8; BOOT_INFO_LEN];
        b[0..8].copy_from_slice(&BOOT_INFO_MAGIC);
        b[8..12].copy_from_slice(&crate::ABI_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.start_info_paddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.pvclock_paddr.to_le_bytes());
        b[32..40].copy_from_slice(&self.vmm);
        b[40..48].copy_from_slice(&self.console_mmio.to_le_bytes());
        b[48..56].copy_from_slice(&self.console_rings.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.get(0..8).ok_or(DecodeError::Truncated)? != BOOT_INFO_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = le_u32(bytes, 8)?;
        if version != crate::ABI_VERSION {
            return Err(DecodeError::VersionMismatch { found: version });
        }
        let mut vmm = [0u8; 8];
        vmm.copy_from_slice(bytes.get(32..40).ok_or(DecodeError::Truncated)?);
        Ok(BootInfo {
            flags: le_u32(bytes, 12)?,
            start_info_paddr: le_u64(bytes, 16)?,
            pvclock_paddr: le_u64(bytes, 24)?,
            vmm,
            console_mmio: le_u64(bytes, 40)?,
            console_rings: le_u64(bytes, 48)?,
        })
    }
}

/// Microseconds in `EAX` of a wait exit meaning "no deadline".
pub const WAIT_FOREVER: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let info = BootInfo {
            flags: flags::WAIT_BLOCKS | flags::PVCLOCK,
            start_info_paddr: 0x6000,
            pvclock_paddr: 0x1000,
            vmm: *b"wasmvm\0\0",
            console_mmio: 0xd000_0000,
            console_rings: 0x2_0000,
        };
        let bytes = info.encode();
        assert_eq!(BootInfo::decode(&bytes), Ok(info));
        assert!(info.has(flags::PVCLOCK) && !info.has(flags::CONSOLE_VIRTIO));
        assert_eq!(BootInfo::decode(&bytes[..39]), Err(DecodeError::Truncated));
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(BootInfo::decode(&bad), Err(DecodeError::BadMagic));
        let mut old = bytes;
        old[8] = 99;
        assert_eq!(
            BootInfo::decode(&old),
            Err(DecodeError::VersionMismatch { found: 99 })
        );
    }
}
