//! The built-in VMM's virtio network card (behind `devices::mmio`, device ID 1): Ethernet
//! frames between the guest's queues and a host [`FrameLink`] (passt or a tap device).
//!
//! Queue 0 receives (host → guest), queue 1 transmits. Every frame is preceded by the
//! 12-byte `virtio_net_hdr_v1`: the guest's transmit headers are skipped (no offloads are
//! offered, so they carry nothing), and each received frame gets a zeroed one with
//! `num_buffers = 1`. A header may share a descriptor with its frame or not.
//!
//! **Few notifications.** Every exit costs tens of microseconds on the hosts we run on, so
//! for a guest told so (`wasmvm_abi::direct::flags::NET_BATCHED` and `NET_TX_WINDOWS`,
//! direct entry) the card asks it not to notify: the receive queue's used ring carries
//! `VRING_USED_F_NO_NOTIFY` for good (set as soon as the queue is ready), and the transmit
//! queue's for a quiet window after each notify (`devices::quiet`), renewed while frames
//! keep coming or wait for a backed-up link. The VMM moves frames at every exit of the vCPU
//! — any MMIO access, port write or wait exit — and at a notify; the window's timer makes
//! an exit when it ends, so a frame the guest queued quietly waits at most [`QUIET_TX`] for
//! the VMM (longer only if the link itself cannot take it), and during a wait exit the
//! timer pauses (the guest queues nothing then). So a server answering a burst of requests
//! pays the wait exits it makes anyway, not an exit per answer. Receive buffers are filled
//! at the same points, without blocking; the guest's wait exit blocks on the link until a
//! frame arrives (see `vmm::vcpu`).
//!
//! The guest is untrusted: chains are read and written only through `vm-memory` within
//! validated descriptors, a transmit chain longer than a header plus the largest frame is
//! dropped, and a frame larger than the receive buffer the guest offers is dropped (the
//! buffer stays for the next frame). Nothing here panics on guest input.

pub mod link;
pub mod passt;

use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use wasmvm_abi::net::GUEST_MAC;

use crate::vmm::devices::mmio::{VirtioDevice, read_chain, usable, writable, write_parts};
use crate::vmm::devices::quiet::QuietWindow;
use crate::vmm::kick::KickTimer;
use link::{FrameLink, MAX_FRAME};

const DEVICE_ID_NET: u32 = 1;
const RX: usize = 0;
const TX: usize = 1;
/// `VIRTIO_NET_F_MTU`: the configuration space holds the link MTU.
const F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: the configuration space holds the card's MAC address.
const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS`: the configuration space holds the link status (always up).
const F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const HDR_LEN: usize = 12;
/// The header of every received frame: nothing to offload, one buffer.
const RX_HDR: [u8; HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
/// The shortest frame worth sending: an Ethernet header.
const MIN_FRAME: usize = 14;
/// Chains moved per pass and direction, so a guest that keeps its queues full cannot keep
/// the vCPU thread in the device forever.
const BATCH: usize = 1024;
/// How long the transmit queue stays quiet after a notify: the longest a frame the guest
/// queued may wait for the VMM while the guest computes (it waits less whenever the guest
/// exits sooner, which a server does as soon as it has answered).
pub const QUIET_TX: Duration = Duration::from_millis(1);

pub struct NetDevice {
    link: Box<dyn FrameLink>,
    /// mac[6], status, max_virtqueue_pairs, mtu (little-endian `u16`s).
    config: [u8; 12],
    /// Whether to suppress notifications: the guest was told (`NET_BATCHED`,
    /// `NET_TX_WINDOWS`). Otherwise it notifies as it would under any VMM.
    batched: bool,
    /// Whether the receive queue's used ring carries `VRING_USED_F_NO_NOTIFY` (set once the
    /// queue works).
    rx_quiet: bool,
    /// The transmit queue's quiet window (never open without a timer).
    tx_quiet: QuietWindow,
    /// Frames taken since the window opened or was renewed: a window that took some is
    /// renewed when its time is up, as more are likely to follow.
    tx_taken: usize,
    /// The transmit chain being read.
    scratch: Vec<u8>,
}

impl NetDevice {
    /// A card with MAC `wasmvm_abi::net::GUEST_MAC` and link MTU `mtu` on `link`.
    pub fn new(link: Box<dyn FrameLink>, mtu: u16) -> Self {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&GUEST_MAC);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        NetDevice {
            link,
            config,
            batched: false,
            rx_quiet: false,
            tx_quiet: QuietWindow::new(QUIET_TX),
            tx_taken: 0,
            scratch: Vec::new(),
        }
    }

    /// Suppress notifications (for a guest told so through `NET_BATCHED`).
    pub fn set_batched(&mut self, batched: bool) {
        self.batched = batched;
    }

    /// Lets the transmit queue go quiet after notifies, bounded by `timer` (made by the
    /// vCPU thread, which it kicks).
    pub fn set_tx_timer(&mut self, timer: KickTimer) {
        self.tx_quiet.set_timer(timer);
    }

    /// The link, e.g. to wait for its backend before the guest runs.
    pub fn link_mut(&mut self) -> &mut dyn FrameLink {
        &mut *self.link
    }

    /// Moves frames both ways as far as the guest's queues and the link allow, without
    /// blocking; true if frames went into the guest's receive buffers.
    pub fn pump(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        if self.batched && !self.rx_quiet {
            self.rx_quiet =
                usable(queues, RX, mem).is_some_and(|q| q.disable_notification(mem).is_ok());
        }
        self.tx_taken += self.transmit(queues, mem);
        self.receive(queues, mem)
    }

    /// At every exit of the vCPU, first: while the transmit queue is quiet, takes what the
    /// guest queued (the exit port and a crash must not strand its last frames), and once
    /// the window's time is up renews it or ends it.
    pub fn at_exit(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        if !self.tx_quiet.is_open() {
            return;
        }
        self.tx_taken += self.transmit(queues, mem);
        if self.tx_quiet.is_over() {
            self.renew_or_end_quiet(queues, mem);
        }
    }

    /// Before the vCPU blocks in a wait exit: the window's timer pauses.
    pub fn before_wait(&mut self) {
        if self.tx_quiet.is_open() {
            self.tx_quiet.pause();
        }
    }

    /// After the block, before the guest runs again: the window's timer resumes, or the
    /// window is renewed or ended if its time ran out meanwhile.
    pub fn after_wait(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        if self.tx_quiet.is_open() && !self.tx_quiet.resume() {
            self.renew_or_end_quiet(queues, mem);
        }
    }

    /// A window whose time is up: renewed if it took frames (more are likely to follow) or
    /// if frames still wait (the link is backed up: queued in the ring, which the guest will
    /// not notify for, or in the link's own backlog, written only at exits), else ended,
    /// with notifies wanted again and whatever the guest queued before it saw that taken now.
    fn renew_or_end_quiet(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        let waiting =
            self.link.has_backlog() || usable(queues, TX, mem).is_some_and(|q| has_avail(q, mem));
        if std::mem::take(&mut self.tx_taken) > 0 || waiting {
            self.tx_quiet.open();
        } else if self.tx_quiet.end(usable(queues, TX, mem), mem) {
            self.transmit(queues, mem);
        }
    }

    /// After a notify (the transmit queue's: the receive queue asks for none): more frames
    /// may follow at once, so the transmit queue goes quiet.
    fn quiet_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        if self.batched && self.tx_quiet.can_open() {
            self.tx_taken = 0;
            self.tx_quiet.begin(usable(queues, TX, mem), mem);
        }
    }

    /// What to wait for in a wait exit: readable while the guest offers receive buffers
    /// (and the link is open), writable while sent frames back up.
    pub fn wait_events(&self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> libc::c_short {
        let mut events = 0;
        if !self.link.is_closed() && usable(queues, RX, mem).is_some_and(|q| has_avail(q, mem)) {
            events |= libc::POLLIN;
        }
        if self.link.has_backlog() {
            events |= libc::POLLOUT;
        }
        events
    }

    /// The descriptor [`wait_events`](Self::wait_events) refers to.
    pub fn host_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.link.fd()
    }

    /// Sends the frames the guest queued, copying each chain (header skipped) to the link;
    /// returns how many chains it took.
    fn transmit(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> usize {
        self.link.flush();
        let Some(q) = usable(queues, TX, mem) else {
            return 0;
        };
        let mut moved = 0;
        while moved < BATCH && self.link.can_send() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            self.scratch.clear();
            // A chain that is too long or reaches outside guest memory is dropped.
            if read_chain(&chain, mem, HDR_LEN + MAX_FRAME, &mut self.scratch)
                && self.scratch.len() >= HDR_LEN + MIN_FRAME
            {
                self.link.send(&self.scratch[HDR_LEN..]);
            }
            let _ = q.add_used(mem, chain.head_index(), 0);
            moved += 1;
        }
        self.link.flush();
        moved
    }

    /// Puts host frames into the guest's receive buffers; true if any went in.
    fn receive(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = usable(queues, RX, mem) else {
            return false;
        };
        let mut delivered = false;
        let mut moved = 0;
        // Read from the host only while the guest has somewhere to put a frame.
        while moved < BATCH && has_avail(q, mem) {
            let Some(frame) = self.link.peek() else {
                break;
            };
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            moved += 1;
            let descs = writable(&chain);
            let room: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
            if room < (HDR_LEN + MIN_FRAME) as u64 {
                // Not a receive buffer at all: hand it back empty.
                let _ = q.add_used(mem, chain.head_index(), 0);
                continue;
            }
            if room < (HDR_LEN + frame.len()) as u64 {
                // The frame does not fit: drop it and keep the buffer for the next one.
                q.go_to_previous_position();
                self.link.consume();
                continue;
            }
            let written = write_parts(&descs, mem, &[&RX_HDR, frame]);
            self.link.consume();
            let _ = q.add_used(mem, chain.head_index(), written as u32);
            delivered = true;
        }
        delivered
    }
}

/// Whether the driver has offered buffers the device has not taken yet.
fn has_avail(q: &Queue, mem: &GuestMemoryMmap) -> bool {
    q.avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != q.next_avail())
}

impl VirtioDevice for NetDevice {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        F_MAC | F_MTU | F_STATUS
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn notify(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        self.pump(queues, mem);
        self.quiet_tx(queues, mem);
    }

    fn reset(&mut self) {
        // A re-initialised driver starts with fresh rings: ask again.
        self.rx_quiet = false;
        self.tx_quiet.close();
        self.tx_taken = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::mmio::MmioHandler;
    use std::collections::VecDeque;
    use std::os::fd::AsFd;
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    /// A link whose frames the test supplies and collects.
    #[derive(Clone)]
    struct Loop {
        to_guest: Arc<Mutex<VecDeque<Vec<u8>>>>,
        from_guest: Arc<Mutex<Vec<Vec<u8>>>>,
        /// The frame `peek` handed out.
        current: Option<Vec<u8>>,
        fd: Arc<std::fs::File>,
        /// A peer that reads nothing: the link takes no frames.
        blocked: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Default for Loop {
        fn default() -> Loop {
            Loop {
                to_guest: Arc::default(),
                from_guest: Arc::default(),
                current: None,
                fd: Arc::new(std::fs::File::open("/dev/null").unwrap()),
                blocked: Arc::default(),
            }
        }
    }

    impl FrameLink for Loop {
        fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.fd.as_fd()
        }
        fn peek(&mut self) -> Option<&[u8]> {
            if self.current.is_none() {
                self.current = self.to_guest.lock().unwrap().pop_front();
            }
            self.current.as_deref()
        }
        fn consume(&mut self) {
            self.current = None;
        }
        fn can_send(&self) -> bool {
            !self.blocked.load(Ordering::Relaxed)
        }
        fn send(&mut self, frame: &[u8]) {
            self.from_guest.lock().unwrap().push(frame.to_vec());
        }
        fn flush(&mut self) {}
        fn has_backlog(&self) -> bool {
            false
        }
        fn is_closed(&self) -> bool {
            false
        }
    }

    use crate::vmm::devices::testing::{self, BUFFERS, RINGS};

    /// The guest's side of the card: the shared test driver (every feature accepted, both
    /// queues ready), with the card told to suppress notifications as the direct entry does.
    type Driver = testing::Driver<NetDevice>;

    fn driver(link: Loop, mtu: u16) -> Driver {
        let mut device = NetDevice::new(Box::new(link), mtu);
        device.set_batched(true);
        testing::Driver::new(device, 4 << 20)
    }

    fn read_u16(d: &Driver, at: u64) -> u16 {
        d.mem.read_obj::<u16>(GuestAddress(at)).unwrap()
    }

    /// Moves frames both ways, as the VMM does at every exit.
    fn pump(d: &mut Driver) -> bool {
        let (dev, queues) = d.dev.parts();
        dev.pump(queues, &d.mem)
    }

    fn frame(n: usize, fill: u8) -> Vec<u8> {
        vec![fill; n]
    }

    #[test]
    fn identity_features_and_configuration() {
        let mut d = driver(Loop::default(), 65520);
        let mut word = [0u8; 4];
        d.dev.read(0x008, &mut word);
        assert_eq!(u32::from_le_bytes(word), 1);
        // The low word of the offered features.
        d.w(0x014, 0);
        d.dev.read(0x010, &mut word);
        assert_eq!(u32::from_le_bytes(word), (F_MAC | F_MTU | F_STATUS) as u32);
        let mut config = [0u8; 12];
        d.dev.read(0x100, &mut config);
        assert_eq!(&config[..6], &GUEST_MAC);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), LINK_UP);
        assert_eq!(u16::from_le_bytes([config[10], config[11]]), 65520);
        // The receive queue asks the driver not to notify once it works; the transmit
        // queue only in a quiet window after a notify.
        assert!(!pump(&mut d));
        assert_eq!(read_u16(&d, RINGS + 0x800), 1);
        assert_eq!(read_u16(&d, RINGS + 0x1000 + 0x800), 0);
    }

    #[test]
    fn transmitted_frames_lose_their_header_however_it_is_split() {
        let link = Loop::default();
        let mut d = driver(link.clone(), 1500);
        // virtio-drivers' layout: header and frame in one buffer.
        let one = [vec![0u8; HDR_LEN], frame(60, 0xaa)].concat();
        d.mem.write_slice(&one, GuestAddress(BUFFERS)).unwrap();
        d.post(TX, &[(BUFFERS, one.len() as u32, false)]);
        // Header and frame split, with the frame itself split too.
        d.mem
            .write_slice(&[0u8; HDR_LEN], GuestAddress(BUFFERS + 0x1000))
            .unwrap();
        d.mem
            .write_slice(&frame(30, 0xbb), GuestAddress(BUFFERS + 0x2000))
            .unwrap();
        d.mem
            .write_slice(&frame(34, 0xcc), GuestAddress(BUFFERS + 0x3000))
            .unwrap();
        d.post(
            TX,
            &[
                (BUFFERS + 0x1000, HDR_LEN as u32, false),
                (BUFFERS + 0x2000, 30, false),
                (BUFFERS + 0x3000, 34, false),
            ],
        );
        // Malformed: shorter than a header and an Ethernet header; outside guest memory;
        // longer than any frame.
        d.post(TX, &[(BUFFERS, 20, false)]);
        d.post(TX, &[(u64::MAX - 10, 100, false)]);
        d.post(TX, &[(BUFFERS, (HDR_LEN + MAX_FRAME + 1) as u32, false)]);
        pump(&mut d);
        let sent = link.from_guest.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], frame(60, 0xaa));
        assert_eq!(sent[1], [frame(30, 0xbb), frame(34, 0xcc)].concat());
        // Every chain came back, the dropped ones too.
        assert_eq!(d.used(TX).len(), 5);
    }

    #[test]
    fn received_frames_get_a_header_and_oversized_ones_are_dropped() {
        let link = Loop::default();
        let mut d = driver(link.clone(), 1500);
        // Nothing offered yet: frames wait in the link.
        link.to_guest.lock().unwrap().extend([
            frame(100, 1),
            frame(2000, 2), // too large for the buffers below
            frame(60, 3),
        ]);
        assert!(!pump(&mut d));
        assert_eq!(link.to_guest.lock().unwrap().len(), 3);
        d.post(RX, &[(BUFFERS, 1526, true)]);
        // A buffer split in two, header and frame crossing the boundary.
        d.post(
            RX,
            &[(BUFFERS + 0x1000, 8, true), (BUFFERS + 0x2000, 1518, true)],
        );
        assert!(pump(&mut d));
        assert!(link.to_guest.lock().unwrap().is_empty());
        let used = d.used(RX);
        assert_eq!(
            used,
            [(0, (HDR_LEN + 100) as u32), (1, (HDR_LEN + 60) as u32)]
        );
        let mut got = vec![0u8; HDR_LEN + 100];
        d.mem.read_slice(&mut got, GuestAddress(BUFFERS)).unwrap();
        assert_eq!(&got[..HDR_LEN], &RX_HDR);
        assert_eq!(&got[HDR_LEN..], &frame(100, 1)[..]);
        let mut head = [0u8; 8];
        d.mem
            .read_slice(&mut head, GuestAddress(BUFFERS + 0x1000))
            .unwrap();
        assert_eq!(head, RX_HDR[..8]);
        let mut tail = vec![0u8; 4 + 60];
        d.mem
            .read_slice(&mut tail, GuestAddress(BUFFERS + 0x2000))
            .unwrap();
        assert_eq!(&tail[..4], &RX_HDR[8..]);
        assert_eq!(&tail[4..], &frame(60, 3)[..]);
        // A "receive buffer" the device cannot write is handed back empty, and the frame
        // waits for a real one.
        d.post(RX, &[(BUFFERS, 1526, false)]);
        link.to_guest.lock().unwrap().push_back(frame(60, 4));
        assert!(!pump(&mut d));
        assert_eq!(d.used(RX), [(3, 0)]);
        d.post(RX, &[(BUFFERS, 1526, true)]);
        assert!(pump(&mut d));
        assert_eq!(d.used(RX), [(4, (HDR_LEN + 60) as u32)]);
    }

    #[test]
    fn a_guest_that_was_not_told_keeps_notifying() {
        let mut d = driver(Loop::default(), 1500);
        d.dev.parts().0.set_batched(false);
        pump(&mut d);
        for q in 0..2u64 {
            assert_eq!(read_u16(&d, RINGS + q * 0x1000 + 0x800), 0, "queue {q}");
        }
    }

    #[test]
    fn a_reset_asks_for_quiet_again() {
        let mut d = timed_driver(Loop::default());
        pump(&mut d);
        assert!(d.dev.parts().0.rx_quiet);
        d.notify(TX as u32);
        assert!(d.dev.parts().0.tx_quiet.is_open());
        d.dev.write(0x070, &0u32.to_le_bytes(), &d.mem);
        assert!(!d.dev.parts().0.rx_quiet);
        assert!(!d.dev.parts().0.tx_quiet.is_open());
    }

    /// The transmit queue's used-ring flags.
    fn tx_flags(d: &Driver) -> u16 {
        read_u16(d, RINGS + 0x1000 + 0x800)
    }

    /// A card whose transmit queue goes quiet after notifies (its timer kicks this thread,
    /// harmlessly).
    fn timed_driver(link: Loop) -> Driver {
        let mut d = driver(link, 1500);
        d.dev
            .device
            .set_tx_timer(crate::vmm::kick::KickTimer::for_this_thread().unwrap());
        // Windows end when a test says so (`expire`), however loaded the machine.
        d.dev.device.tx_quiet.set_period(Duration::from_secs(60));
        d
    }

    /// Posts a minimal transmit frame whose bytes are all `fill`.
    fn post_frame(d: &mut Driver, fill: u8) {
        let at = BUFFERS + u64::from(fill) * 0x100;
        let bytes = [vec![0u8; HDR_LEN], frame(60, fill)].concat();
        d.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        d.post(TX, &[(at, bytes.len() as u32, false)]);
    }

    fn at_exit(d: &mut Driver) {
        let (dev, queues) = d.dev.parts();
        dev.at_exit(queues, &d.mem);
    }

    fn fills(link: &Loop) -> Vec<u8> {
        link.from_guest
            .lock()
            .unwrap()
            .iter()
            .map(|f| f[0])
            .collect()
    }

    #[test]
    fn without_a_timer_the_transmit_queue_always_wants_notifies() {
        let link = Loop::default();
        let mut d = driver(link.clone(), 1500);
        post_frame(&mut d, 1);
        d.notify(TX as u32);
        assert_eq!(fills(&link), [1]);
        assert_eq!(tx_flags(&d), 0);
    }

    #[test]
    fn after_a_notify_frames_queued_quietly_go_at_every_exit_and_at_the_window_end() {
        let link = Loop::default();
        let mut d = timed_driver(link.clone());
        post_frame(&mut d, 1);
        d.notify(TX as u32);
        assert_eq!(fills(&link), [1]);
        assert_eq!(tx_flags(&d), 1, "quiet after a notify");
        // Queued without a notify: the next exit of any kind takes it (the exit port too,
        // which handles nothing after `at_exit`).
        post_frame(&mut d, 2);
        post_frame(&mut d, 3);
        at_exit(&mut d);
        assert_eq!(fills(&link), [1, 2, 3]);
        // Its time up, a window that took frames is renewed: the flag stays.
        d.dev.device.tx_quiet.expire();
        at_exit(&mut d);
        assert!(d.dev.device.tx_quiet.is_open() && !d.dev.device.tx_quiet.is_over());
        assert_eq!(tx_flags(&d), 1);
        // The exit that finds it over takes what came meanwhile, and renews it for that.
        d.dev.device.tx_quiet.expire();
        post_frame(&mut d, 4);
        at_exit(&mut d);
        assert_eq!(fills(&link), [1, 2, 3, 4]);
        assert!(d.dev.device.tx_quiet.is_open());
        // One that took none ends: notifies wanted again.
        d.dev.device.tx_quiet.expire();
        at_exit(&mut d);
        assert!(!d.dev.device.tx_quiet.is_open());
        assert_eq!(tx_flags(&d), 0);
        assert_eq!(d.used(TX).len(), 4);
    }

    #[test]
    fn a_wait_pauses_the_window_and_its_end_is_handled_after_the_wait() {
        let link = Loop::default();
        let mut d = timed_driver(link.clone());
        post_frame(&mut d, 1);
        d.notify(TX as u32);
        // A wait within the window: its timer stops while the vCPU blocks (the kick would
        // only cut the wait short), and runs again after; the window stays open.
        d.dev.device.before_wait();
        assert_eq!(d.dev.device.tx_quiet.timer_left(), Duration::ZERO);
        let (dev, queues) = d.dev.parts();
        dev.after_wait(queues, &d.mem);
        assert!(d.dev.device.tx_quiet.is_open());
        assert!(d.dev.device.tx_quiet.timer_left() > Duration::ZERO);
        // It ran out during a wait after taking frames: renewed, as more are likely.
        post_frame(&mut d, 2);
        at_exit(&mut d);
        d.dev.device.before_wait();
        d.dev.device.tx_quiet.expire();
        let (dev, queues) = d.dev.parts();
        dev.after_wait(queues, &d.mem);
        assert!(d.dev.device.tx_quiet.is_open() && !d.dev.device.tx_quiet.is_over());
        assert_eq!(tx_flags(&d), 1);
        // It ran out during the wait, having taken nothing: it ends before the guest runs
        // again.
        d.dev.device.before_wait();
        d.dev.device.tx_quiet.expire();
        let (dev, queues) = d.dev.parts();
        dev.after_wait(queues, &d.mem);
        assert!(!d.dev.device.tx_quiet.is_open());
        assert_eq!(tx_flags(&d), 0);
        // The next notify opens a new one.
        post_frame(&mut d, 3);
        d.notify(TX as u32);
        assert!(d.dev.device.tx_quiet.is_open());
        assert_eq!(fills(&link), [1, 2, 3]);
    }

    #[test]
    fn a_window_stays_while_a_backed_up_link_keeps_frames_waiting() {
        let link = Loop::default();
        let mut d = timed_driver(link.clone());
        post_frame(&mut d, 1);
        d.notify(TX as u32);
        // The peer stops reading: frames queued quietly stay in the ring. The guest will
        // not notify for them, so the window must not end while they wait.
        link.blocked.store(true, Ordering::Relaxed);
        post_frame(&mut d, 2);
        for _ in 0..3 {
            d.dev.device.tx_quiet.expire();
            at_exit(&mut d);
            assert!(d.dev.device.tx_quiet.is_open() && !d.dev.device.tx_quiet.is_over());
            assert_eq!(tx_flags(&d), 1);
        }
        // The peer reads again: the next exit takes the frame, and a window that then
        // takes nothing more ends.
        link.blocked.store(false, Ordering::Relaxed);
        at_exit(&mut d);
        assert_eq!(fills(&link), [1, 2]);
        d.dev.device.tx_quiet.expire();
        at_exit(&mut d);
        d.dev.device.tx_quiet.expire();
        at_exit(&mut d);
        assert!(!d.dev.device.tx_quiet.is_open());
        assert_eq!(tx_flags(&d), 0);
    }

    #[test]
    fn a_guest_without_batching_gets_no_window() {
        let link = Loop::default();
        let mut d = timed_driver(link.clone());
        d.dev.device.set_batched(false);
        post_frame(&mut d, 1);
        d.notify(TX as u32);
        assert_eq!(fills(&link), [1]);
        assert!(!d.dev.device.tx_quiet.is_open());
        assert_eq!(tx_flags(&d), 0);
    }
}
