//! The virtio console that carries the host channel: a minimal split-virtqueue driver of our
//! own, because every MMIO access is an exit (tens of microseconds on nested KVM) and the
//! generic driver spends about 45 of them before the first byte.
//!
//! Two ways up, one driver: a VMM that says so in the boot info
//! (`wasmvm_abi::direct::flags::CONSOLE_READY`) has already negotiated and laid out the
//! queues, so the kernel only posts receive buffers (no exits); otherwise (QEMU, PVH) the
//! kernel negotiates with the fewest accesses the virtio-mmio spec allows (about 20).
//! Frames go out as two chained descriptors (header, payload) with no copy, and the kernel
//! waits until the device has taken them; receive buffers are 4 KiB each, handed back after
//! their bytes are taken.
//!
//! A device that asks for no transmit notifies (`VRING_USED_F_NO_NOTIFY` in the transmit
//! queue's used ring: the built-in VMM, for a few milliseconds after each notify) promises
//! to take what is queued at its next exit anyway. Frames sent meanwhile are copied into a
//! staging buffer and queued without an exit, so an app that writes a burst of lines pays
//! one exit for the burst rather than one per line. The staging buffer is reused once the
//! device has taken everything in it; when it is full, the kernel notifies and waits.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use wasmvm_abi::direct::console_rings::{AVAIL_OFFSET, LEN, QUEUE_SIZE, QUEUE_SPAN, USED_OFFSET};

const RX: u16 = 0;
const TX: u16 = 1;
/// Receive buffers posted at a time, and their size.
const RX_BUFFERS: u16 = 8;
const RX_BUFFER_LEN: usize = 4096;
/// The two transmit descriptors (header, payload) of a frame sent without a copy: the last
/// two; the ones before are for staged frames, one descriptor each.
const TX_HEAD: u16 = QUEUE_SIZE - 2;
/// Descriptors for staged frames.
const STAGED_SLOTS: u16 = TX_HEAD;
/// Bytes of frames (headers included) staged at most before the kernel waits for the
/// device: two of the widest frames (`WIDE_GUEST_FRAME_PAYLOAD`). Mostly untouched by an
/// app that prints little, but the allocator writes a header right after it: at 1 MiB that
/// header alone touched a 2 MiB page of its own in a hello (with huge pages, 2 MiB more
/// resident memory per VM), at half that it lands in the page the kernel already uses.
const STAGING_LEN: usize = 512 << 10;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;

/// Why a console could not be brought up.
#[derive(Debug)]
pub enum ConsoleError {
    NotVirtioMmioV2,
    QueueTooSmall,
    FeaturesRejected,
}

/// One split virtqueue in identity-mapped guest RAM.
struct Queue {
    base: u64,
    index: u16,
    next_avail: u16,
    last_used: u16,
}

impl Queue {
    fn at(rings: u64, index: u16) -> Self {
        Queue {
            base: rings + u64::from(index) * QUEUE_SPAN,
            index,
            next_avail: 0,
            last_used: 0,
        }
    }

    fn desc_addr(&self) -> u64 {
        self.base
    }

    fn avail_addr(&self) -> u64 {
        self.base + AVAIL_OFFSET
    }

    fn used_addr(&self) -> u64 {
        self.base + USED_OFFSET
    }

    fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = (self.desc_addr() + u64::from(i) * 16) as *mut u8;
        // SAFETY: `i` < QUEUE_SIZE, so the 16-byte descriptor lies in this queue's table, in
        // RAM the kernel reserved for the rings (identity mapped); volatile, as the device
        // reads it.
        unsafe {
            at.cast::<u64>().write_volatile(addr);
            at.add(8).cast::<u32>().write_volatile(len);
            at.add(12).cast::<u16>().write_volatile(flags);
            at.add(14).cast::<u16>().write_volatile(next);
        }
    }

    /// Makes descriptor chain `head` available to the device.
    fn push(&mut self, head: u16) {
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        let ring = (self.avail_addr() + 4 + slot * 2) as *mut u16;
        let idx = (self.avail_addr() + 2) as *mut u16;
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: both addresses lie in this queue's available ring (slot < QUEUE_SIZE).
        // The descriptor writes must be visible before the index that publishes them.
        unsafe {
            ring.write_volatile(head);
            fence(Ordering::Release);
            idx.write_volatile(self.next_avail);
        }
    }

    /// Whether the device wants to hear of newly posted buffers: not when its used ring
    /// carries `VRING_USED_F_NO_NOTIFY` (the built-in VMM's receive queue: it looks at the
    /// queue in every exit that can bring input).
    fn device_wants_notify(&self) -> bool {
        let flags = self.used_addr() as *const u16;
        // SAFETY: the used ring's flags, in this queue's memory; volatile, as the device
        // writes them.
        let flags = unsafe { flags.read_volatile() };
        flags & VRING_USED_F_NO_NOTIFY == 0
    }

    /// The next chain the device has used: (head, bytes written).
    fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx = (self.used_addr() + 2) as *const u16;
        // SAFETY: the used ring's index, in this queue's memory.
        let device_idx = unsafe { idx.read_volatile() };
        if device_idx == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % QUEUE_SIZE);
        let elem = (self.used_addr() + 4 + slot * 8) as *const u32;
        // SAFETY: slot < QUEUE_SIZE, so the 8-byte element lies in the used ring.
        let (id, len) = unsafe { (elem.read_volatile(), elem.add(1).read_volatile()) };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }
}

pub struct VirtConsole {
    regs: u64,
    rx: Queue,
    tx: Queue,
    /// Ring memory the kernel allocated when it negotiated itself (kept for the whole run).
    _rings: Option<Box<[u8]>>,
    rx_buffers: Vec<Box<[u8; RX_BUFFER_LEN]>>,
    staging: Staging,
}

/// Frames copied and queued without an exit (see the module's notes).
#[derive(Default)]
struct Staging {
    /// The frames, back to back (allocated at the first one; its capacity never changes, as
    /// the device holds addresses into it).
    buffer: Vec<u8>,
    /// Frames queued since the buffer was last emptied, and how many of them the device has
    /// handed back.
    queued: u16,
    returned: u16,
    /// The heap had no room for the buffer: frames go in place from then on.
    refused: bool,
}

impl Staging {
    fn all_returned(&self) -> bool {
        self.returned == self.queued
    }

    /// Counts staged frame `id` as handed back; false if it was not outstanding.
    fn take_back(&mut self, id: u16) -> bool {
        if id >= self.queued || self.all_returned() {
            return false;
        }
        self.returned += 1;
        true
    }
}

impl VirtConsole {
    /// Takes over the console the VMM set up at `regs` with queues at `rings`.
    ///
    /// # Safety
    /// `regs` must be the register window of a virtio-mmio console the VMM prepared as
    /// `CONSOLE_READY` describes, and `rings` the `LEN` bytes of RAM it reserved for the
    /// queues, used by nothing else.
    pub unsafe fn ready(regs: u64, rings: u64) -> Self {
        let mut console = VirtConsole {
            regs,
            rx: Queue::at(rings, RX),
            tx: Queue::at(rings, TX),
            _rings: None,
            rx_buffers: Vec::new(),
            staging: Staging::default(),
        };
        console.post_rx_buffers();
        console
    }

    /// Negotiates with the virtio-mmio console at `regs` and sets up its queues.
    ///
    /// # Safety
    /// `regs` must be the register window of a virtio-mmio console device, identity mapped,
    /// which nothing else drives.
    pub unsafe fn negotiate(regs: u64) -> Result<Self, ConsoleError> {
        // Page-aligned ring memory: allocated as whole pages, then aligned within.
        let mut memory = alloc::vec![0u8; (LEN + 4096) as usize].into_boxed_slice();
        let rings = (memory.as_mut_ptr() as u64 + 4095) & !4095;
        let mut console = VirtConsole {
            regs,
            rx: Queue::at(rings, RX),
            tx: Queue::at(rings, TX),
            _rings: Some(memory),
            rx_buffers: Vec::new(),
            staging: Staging::default(),
        };
        if console.read(0x000) != 0x7472_6976 || console.read(0x004) != 2 {
            return Err(ConsoleError::NotVirtioMmioV2);
        }
        console.write(0x070, 0);
        console.write(0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // VIRTIO_F_VERSION_1 (bit 32) is the only feature we take.
        console.write(0x024, 1);
        console.write(0x020, 1);
        console.write(
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if console.read(0x070) & STATUS_FEATURES_OK == 0 {
            return Err(ConsoleError::FeaturesRejected);
        }
        for queue in [&console.rx, &console.tx] {
            console.write(0x030, u32::from(queue.index));
            if console.read(0x034) < u32::from(QUEUE_SIZE) {
                return Err(ConsoleError::QueueTooSmall);
            }
            console.write(0x038, u32::from(QUEUE_SIZE));
            // Ring addresses lie below 4 GiB: the high halves stay at their reset value 0.
            console.write(0x080, queue.desc_addr() as u32);
            console.write(0x090, queue.avail_addr() as u32);
            console.write(0x0a0, queue.used_addr() as u32);
            console.write(0x044, 1);
        }
        console.write(
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        console.post_rx_buffers();
        console.notify(RX);
        Ok(console)
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: an aligned register of the device window the constructor's caller vouched
        // for; MMIO must be volatile.
        unsafe { ((self.regs + offset) as *const u32).read_volatile() }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { ((self.regs + offset) as *mut u32).write_volatile(value) }
    }

    fn notify(&self, queue: u16) {
        self.write(0x050, u32::from(queue));
    }

    fn post_rx_buffers(&mut self) {
        for i in 0..RX_BUFFERS {
            let buffer = Box::new([0u8; RX_BUFFER_LEN]);
            let addr = buffer.as_ptr() as u64;
            self.rx_buffers.push(buffer);
            self.rx
                .set_desc(i, addr, RX_BUFFER_LEN as u32, DESC_WRITE, 0);
            self.rx.push(i);
        }
    }

    /// Sends `header` and `payload` as one frame: staged if the device asked for no
    /// notifies (see the module's notes), else without a copy, waiting until the device has
    /// taken it. Both must be in identity-mapped RAM (any kernel memory is). False if the
    /// device answered with a bad descriptor id (it is gone or broken).
    pub fn send(&mut self, header: &[u8], payload: &[u8]) -> bool {
        if !self.reap_tx() {
            return false;
        }
        let len = header.len() + payload.len();
        if !self.tx.device_wants_notify() && len <= STAGING_LEN {
            return self.stage(header, payload);
        }
        self.send_in_place(header, payload)
    }

    /// Queues a copy of the frame without an exit; waits for the device first if the
    /// staging buffer or its descriptors are used up.
    fn stage(&mut self, header: &[u8], payload: &[u8]) -> bool {
        let len = header.len() + payload.len();
        // Allocated at the first staged frame; a heap too full for it (the app took the
        // rest) just means frames go in place.
        let staging = &mut self.staging;
        if staging.buffer.capacity() == 0 {
            staging.refused |= staging.buffer.try_reserve_exact(STAGING_LEN).is_err();
        }
        if staging.refused {
            return self.send_in_place(header, payload);
        }
        let full = staging.buffer.len() + len > staging.buffer.capacity()
            || staging.queued == STAGED_SLOTS;
        if full && !self.flush() {
            return false;
        }
        let staging = &mut self.staging;
        let at = staging.buffer.len();
        // Within the capacity checked above: the buffer never moves.
        staging.buffer.extend_from_slice(header);
        staging.buffer.extend_from_slice(payload);
        let addr = staging.buffer[at..].as_ptr() as u64;
        let slot = staging.queued;
        staging.queued += 1;
        self.tx.set_desc(slot, addr, len as u32, 0, 0);
        self.tx.push(slot);
        // The flag read before the push may be stale: an exit in between (the VMM's timer
        // can make one at any instruction) may have ended the quiet period. Read after the
        // push, as virtio drivers must, a device that wants a notify gets one.
        fence(Ordering::SeqCst);
        if self.tx.device_wants_notify() {
            self.notify(TX);
        }
        true
    }

    /// Sends a frame straight from where it lies and waits until the device has taken it
    /// (and, as it takes the queue in order, every staged frame before it).
    fn send_in_place(&mut self, header: &[u8], payload: &[u8]) -> bool {
        let head = TX_HEAD;
        if payload.is_empty() {
            self.tx
                .set_desc(head, header.as_ptr() as u64, header.len() as u32, 0, 0);
        } else {
            self.tx.set_desc(
                head,
                header.as_ptr() as u64,
                header.len() as u32,
                DESC_NEXT,
                head + 1,
            );
            self.tx.set_desc(
                head + 1,
                payload.as_ptr() as u64,
                payload.len() as u32,
                0,
                0,
            );
        }
        self.tx.push(head);
        self.notify(TX);
        self.wait_for_tx(Some(head))
    }

    /// Has the device take every staged frame now: one notify, then a wait for them.
    pub fn flush(&mut self) -> bool {
        if self.staging.all_returned() {
            return self.reap_tx();
        }
        self.notify(TX);
        self.wait_for_tx(None)
    }

    /// Spins until the device has handed back `head` (a frame sent in place) or, without
    /// one, every staged frame, counting staged frames as they come back. False on a
    /// descriptor id that was not outstanding.
    fn wait_for_tx(&mut self, head: Option<u16>) -> bool {
        loop {
            if head.is_none() && self.staging.all_returned() {
                return self.reap_tx();
            }
            match self.tx.pop_used() {
                Some((id, _)) if Some(id) == head => return self.reap_tx(),
                Some((id, _)) => {
                    if !self.staging.take_back(id) {
                        return false;
                    }
                }
                None => core::hint::spin_loop(),
            }
        }
    }

    /// Counts the staged frames the device handed back, and empties the staging buffer
    /// once it has them all. False on a descriptor id that was not outstanding.
    fn reap_tx(&mut self) -> bool {
        while let Some((id, _)) = self.tx.pop_used() {
            if !self.staging.take_back(id) {
                return false;
            }
        }
        if self.staging.all_returned() {
            self.staging.buffer.clear();
            self.staging.queued = 0;
            self.staging.returned = 0;
        }
        true
    }

    /// Hands every byte the host has delivered to `take`, then gives the buffers back (one
    /// notify for all of them, unless the device asked for none). Returns whether anything
    /// arrived.
    ///
    /// A VMM may deliver more during that notify's exit, so the used ring is read again
    /// after each notify: returning with bytes already delivered but unseen would leave the
    /// caller waiting for input that came. A device that asks for no notifies delivers in
    /// the exits the kernel makes anyway (its wait exit, the next send's notify).
    pub fn receive(&mut self, mut take: impl FnMut(&[u8])) -> bool {
        let mut any = false;
        loop {
            let mut got = false;
            while let Some((id, len)) = self.rx.pop_used() {
                let Some(buffer) = self.rx_buffers.get(usize::from(id)) else {
                    continue;
                };
                take(&buffer[..(len as usize).min(RX_BUFFER_LEN)]);
                self.rx.push(id);
                got = true;
            }
            if !got {
                return any;
            }
            any = true;
            if !self.rx.device_wants_notify() {
                return any;
            }
            self.notify(RX);
        }
    }
}
