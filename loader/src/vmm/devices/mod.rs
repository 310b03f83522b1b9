//! The built-in VMM's MMIO bus: the virtio console in the first window, one virtio-9p
//! device per live directory after it, then the network card if the run has one, announced
//! on the kernel command line the way QEMU microvm and Firecracker announce theirs
//! (`virtio_mmio.device=SIZE@ADDR:IRQ`), so the kernel has one discovery path for every VMM.

pub mod console;
pub mod mmio;
pub mod net;
pub mod p9;
pub mod quiet;
#[cfg(test)]
mod testing;

use vm_memory::GuestMemoryMmap;

use super::kick::KickTimer;
use super::layout::{FIRST_IRQ, MMIO_BASE};
use console::Console;
use mmio::{Mmio, MmioHandler, WINDOW};
use net::NetDevice;
use p9::P9Device;

/// Asks for a send buffer of `bytes` on `socket`. The system caps `SO_SNDBUF` at
/// `net.core.wmem_max` (208 KiB by default); with `force` and the privilege for it
/// (`CAP_NET_ADMIN`, root), `SO_SNDBUFFORCE` sets the size past that cap, else the capped
/// request stands. Failure only costs speed.
pub(crate) fn set_send_buffer(socket: &std::os::unix::net::UnixStream, bytes: i32, force: bool) {
    use std::os::fd::AsRawFd;
    let set = |option: libc::c_int| {
        // SAFETY: a valid socket and a c_int option value of the stated size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if !force || set(libc::SO_SNDBUFFORCE) != 0 {
        set(libc::SO_SNDBUF);
    }
}

#[derive(Default)]
pub struct Devices {
    pub console: Option<Mmio<Console>>,
    pub shares: Vec<Mmio<P9Device>>,
    pub net: Option<Mmio<NetDevice>>,
}

impl Devices {
    fn window(slot: usize) -> u64 {
        MMIO_BASE + slot as u64 * WINDOW
    }

    /// The command-line words announcing every device.
    pub fn cmdline(&self) -> String {
        let slots = usize::from(self.console.is_some())
            + self.shares.len()
            + usize::from(self.net.is_some());
        let words: Vec<String> = (0..slots)
            .map(|slot| {
                format!(
                    "virtio_mmio.device={WINDOW}@{:#x}:{}",
                    Self::window(slot),
                    FIRST_IRQ + slot as u64
                )
            })
            .collect();
        words.join(" ")
    }

    /// The register block at guest-physical `addr`, and the offset in its window.
    pub fn at(&mut self, addr: u64) -> Option<(&mut dyn MmioHandler, u64)> {
        let slot = usize::try_from(addr.checked_sub(MMIO_BASE)? / WINDOW).ok()?;
        let offset = (addr - MMIO_BASE) % WINDOW;
        let has_console = usize::from(self.console.is_some());
        let shares_end = has_console + self.shares.len();
        let handler: &mut dyn MmioHandler = match (&mut self.console, slot) {
            (Some(console), 0) => console,
            _ if slot < shares_end => self.shares.get_mut(slot.checked_sub(has_console)?)?,
            _ if slot == shares_end => self.net.as_mut()?,
            _ => return None,
        };
        Some((handler, offset))
    }

    /// Gives each transmit queue that can go quiet (`devices::quiet`) a timer aimed at the
    /// calling thread, which must be the vCPU's. Without one a queue simply never goes
    /// quiet: one exit per frame (the console) or per frame outside a batch (the card).
    pub fn set_quiet_timers(&mut self) {
        if let Some(console) = self.console.as_mut()
            && let Ok(timer) = KickTimer::for_this_thread()
        {
            console.device.set_tx_timer(timer);
        }
        if let Some(net) = self.net.as_mut()
            && let Ok(timer) = KickTimer::for_this_thread()
        {
            net.device.set_tx_timer(timer);
        }
    }

    /// What every exit of the vCPU does first (the exit port and a crash too): takes what
    /// the guest queued while a transmit queue asked for no notifies (`devices::quiet`).
    pub fn at_exit(&mut self, mem: &GuestMemoryMmap) {
        // The card first: its link never blocks, the console's host socket may.
        if let Some(net) = self.net.as_mut() {
            let (net, queues) = net.parts();
            net.at_exit(queues, mem);
        }
        if let Some(console) = self.console.as_mut() {
            let (console, queues) = console.parts();
            console.at_exit(queues, mem);
        }
    }

    /// Moves network frames both ways (no-op without a card): the card asks the guest not
    /// to notify, so the VMM does this at every exit (see `devices::net`).
    pub fn poll(&mut self, mem: &GuestMemoryMmap) {
        if let Some(net) = self.net.as_mut() {
            let (device, queues) = net.parts();
            device.pump(queues, mem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_announced_and_found() {
        let mut none = Devices::default();
        assert_eq!(none.cmdline(), "");
        assert!(none.at(MMIO_BASE).is_none());
        assert!(none.at(MMIO_BASE - 1).is_none());
        assert!(none.at(u64::MAX).is_none());
    }

    #[test]
    fn the_network_card_comes_after_the_shares() {
        use net::link::StreamLink;
        let (_, end) = std::os::unix::net::UnixStream::pair().unwrap();
        let link = Box::new(StreamLink::new(end).unwrap());
        let mut devices = Devices {
            net: Some(Mmio::new(NetDevice::new(link, 1500))),
            ..Devices::default()
        };
        assert_eq!(
            devices.cmdline(),
            format!("virtio_mmio.device=4096@{MMIO_BASE:#x}:5")
        );
        let mut id = [0u8; 4];
        let (net, _) = devices.at(MMIO_BASE + 8).unwrap();
        net.read(8, &mut id);
        assert_eq!(u32::from_le_bytes(id), 1);
        assert!(devices.at(MMIO_BASE + WINDOW).is_none());
    }

    #[test]
    fn a_forced_send_buffer_passes_the_systems_cap_where_privileged() {
        use std::os::fd::AsRawFd;
        let send_buffer = |socket: &std::os::unix::net::UnixStream| {
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid socket, and an int-sized out value with its length.
            let rc = unsafe {
                libc::getsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            value
        };
        let cap: i32 = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The privilege SO_SNDBUFFORCE needs: CAP_NET_ADMIN (bit 12) among the effective
        // capabilities, which root may lack (in a container).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        let privileged = effective & (1 << 12) != 0;
        let request = cap.saturating_mul(2).saturating_add(4096).min(i32::MAX / 4);
        let (capped, forced) = (
            std::os::unix::net::UnixStream::pair().unwrap().0,
            std::os::unix::net::UnixStream::pair().unwrap().0,
        );
        set_send_buffer(&capped, request, false);
        set_send_buffer(&forced, request, true);
        // The kernel doubles what it is given, for its bookkeeping.
        assert_eq!(send_buffer(&capped), 2 * request.min(cap));
        let expected = if privileged {
            2 * request
        } else {
            2 * request.min(cap)
        };
        assert_eq!(send_buffer(&forced), expected, "privileged: {privileged}");
    }
}
