//! The network card: the first virtio-net device on the command line, driven by
//! `virtio-drivers`' non-blocking `VirtIONetRaw` and polled (no interrupts at CPL 3). The
//! WASI layer's TCP/IP stack reaches it through the platform's `net_*` calls.
//!
//! Batching: the built-in VMM asks for no notifications (`VRING_USED_F_NO_NOTIFY`) and
//! works the queues at every exit. With `NET_TX_WINDOWS` it asks so on the transmit queue
//! only for a quiet window after each notify, and makes an exit before the window ends:
//! `virtio-drivers` then notifies for the first frame after a window and not for the rest,
//! and the stack's [`flush`] does nothing; a full transmit queue is kicked at once
//! ([`can_send`]). So a server answering a burst of requests exits only to wait. With
//! `NET_BATCHED` alone (an older VMM) the flag stays set and [`flush`] kicks the transmit
//! queue once per poll: one exit for a batch of frames. Under other VMMs `virtio-drivers`
//! notifies as usual and neither kick is needed.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use spin::Mutex;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::SomeTransport;

use crate::virtio::{KernelHal, Pinned};

/// Descriptors per queue: a burst of this many full-size frames is taken in one exit.
const QUEUE_SIZE: usize = 32;
/// The `virtio_net_hdr_v1` in front of every frame.
const HEADER: usize = 12;
/// Ethernet header bytes on top of the MTU.
const ETHERNET: usize = 14;
/// The transmit queue's index.
const TRANSMIT_QUEUE: u32 = 1;

pub struct Card {
    raw: VirtIONetRaw<KernelHal, SomeTransport<'static>, QUEUE_SIZE>,
    /// Receive buffers the device holds, by token.
    rx: Vec<Option<Box<[u8]>>>,
    /// Frames the device has not finished sending, by token.
    tx: Vec<Option<Box<[u8]>>>,
    /// Where to kick the transmit queue, when the VMM suppresses notifications.
    kick_at: Option<u64>,
    /// The VMM opens quiet windows (`NET_TX_WINDOWS`): no kick per batch, one when full.
    windows: bool,
    /// A full transmit queue was kicked and nothing was freed since: the device could not
    /// take the frames (its link is backed up), and kicking again would only spin.
    full_kicked: bool,
    pub mtu: u16,
    pub mac: [u8; 6],
}

static CARD: Mutex<Option<Pinned<Card>>> = Mutex::new(None);

/// Takes a network card (the first one wins). `kick_at`: the virtio-mmio registers, when the
/// VMM suppresses notifications; `windows`: only in quiet windows (`NET_TX_WINDOWS`).
pub fn attach(transport: SomeTransport<'static>, kick_at: Option<u64>, windows: bool, mtu: u16) {
    let mut slot = CARD.lock();
    if slot.is_some() {
        return;
    }
    let Ok(raw) = VirtIONetRaw::<KernelHal, _, QUEUE_SIZE>::new(transport) else {
        return;
    };
    let mut card = Card {
        mac: raw.mac_address(),
        raw,
        rx: (0..QUEUE_SIZE).map(|_| None).collect(),
        tx: (0..QUEUE_SIZE).map(|_| None).collect(),
        kick_at,
        windows,
        full_kicked: false,
        mtu,
    };
    let len = HEADER + ETHERNET + usize::from(mtu);
    for _ in 0..QUEUE_SIZE {
        let mut buf = vec![0u8; len].into_boxed_slice();
        // SAFETY: the buffer is kept in `rx` under its token until the device returns it
        // (`receive`), and not touched meanwhile.
        match unsafe { card.raw.receive_begin(&mut buf) } {
            Ok(token) => card.rx[usize::from(token)] = Some(buf),
            Err(_) => break,
        }
    }
    *slot = Some(Pinned(card));
}

/// Whether a card is attached, and its MAC address and MTU.
pub fn info() -> Option<([u8; 6], u16)> {
    CARD.lock().as_ref().map(|c| (c.0.mac, c.0.mtu))
}

/// Copies the next received frame into `frame`; false when none is waiting.
pub fn receive(frame: &mut Vec<u8>) -> bool {
    let mut slot = CARD.lock();
    let Some(Pinned(card)) = slot.as_mut() else {
        return false;
    };
    let Some(token) = card.raw.poll_receive() else {
        return false;
    };
    let Some(mut buf) = card.rx.get_mut(usize::from(token)).and_then(Option::take) else {
        return false;
    };
    // SAFETY: `buf` is the buffer given to the device under this token.
    let got = unsafe { card.raw.receive_complete(token, &mut buf) };
    frame.clear();
    if let Ok((header, len)) = got
        && let Some(bytes) = buf.get(header..header + len)
    {
        frame.extend_from_slice(bytes);
    }
    // SAFETY: as in `attach`: the buffer stays in `rx` until the device returns it.
    if let Ok(token) = unsafe { card.raw.receive_begin(&mut buf) } {
        card.rx[usize::from(token)] = Some(buf);
    }
    true
}

/// Whether received frames wait in the used ring. The VMM fills it during any exit (the
/// transmit kick too), so a guest about to wait must look first or sleep on frames it has.
pub fn rx_pending() -> bool {
    CARD.lock()
        .as_ref()
        .is_some_and(|c| c.0.raw.poll_receive().is_some())
}

/// Frees the buffers of frames the device has sent.
fn reclaim(card: &mut Card) {
    while let Some(token) = card.raw.poll_transmit() {
        let Some(buf) = card.tx.get_mut(usize::from(token)).and_then(Option::take) else {
            return;
        };
        // SAFETY: `buf` is the buffer given to the device under this token.
        let _ = unsafe { card.raw.transmit_complete(token, &buf) };
        card.full_kicked = false;
    }
}

/// Frees what the device has sent; if that leaves the transmit queue full under quiet
/// windows (the device takes frames only at exits), kicks it once so it takes them now.
fn make_room(card: &mut Card) -> bool {
    reclaim(card);
    if card.raw.can_send() {
        return true;
    }
    if let Some(regs) = card.kick_at
        && card.windows
        && !card.full_kicked
    {
        card.full_kicked = true;
        crate::virtio::notify(regs, TRANSMIT_QUEUE);
        reclaim(card);
    }
    card.raw.can_send()
}

pub fn can_send() -> bool {
    let mut slot = CARD.lock();
    let Some(Pinned(card)) = slot.as_mut() else {
        return false;
    };
    make_room(card)
}

/// Queues a frame of `len` bytes written by `fill`.
pub fn send(len: usize, fill: &mut dyn FnMut(&mut [u8])) -> bool {
    let mut slot = CARD.lock();
    let Some(Pinned(card)) = slot.as_mut() else {
        return false;
    };
    if !make_room(card) || len > ETHERNET + usize::from(card.mtu) {
        return false;
    }
    let mut buf = vec![0u8; HEADER + len].into_boxed_slice();
    let Ok(header) = card.raw.fill_buffer_header(&mut buf) else {
        return false;
    };
    fill(&mut buf[header..header + len]);
    let buf = if header + len < buf.len() {
        buf[..header + len].into()
    } else {
        buf
    };
    // SAFETY: the buffer is kept in `tx` under its token until the device is done with it
    // (`reclaim`), and not touched meanwhile.
    match unsafe { card.raw.transmit_begin(&buf) } {
        Ok(token) => {
            card.tx[usize::from(token)] = Some(buf);
            true
        }
        Err(_) => false,
    }
}

/// Kicks the transmit queue once for everything queued since the last kick, when the VMM
/// wants a kick per batch (`NET_BATCHED` without `NET_TX_WINDOWS`).
pub fn flush() {
    let slot = CARD.lock();
    if let Some(Pinned(Card {
        kick_at: Some(regs),
        windows: false,
        ..
    })) = slot.as_ref()
    {
        crate::virtio::notify(*regs, TRANSMIT_QUEUE);
    }
}
