//! The built-in VMM's virtio console (behind `devices::mmio`): port 0 carries the framed guest
//! channel (`wasmvm_abi::channel`). Transmit buffers are consumed in the notify exit that
//! announces them; receive buffers are filled in the console's notify exits and in the
//! kernel's wait exits (it waits there for input or credit). So the receive queue asks the
//! driver not to notify (`VRING_USED_F_NO_NOTIFY`): a buffer the kernel hands back is
//! found at the next of those exits, and re-posting buffers costs it no exit of its own
//! (it was one exit in two while the guest streamed output, returning the host's credit).
//!
//! The transmit queue does the same for a while after each notify, when the vCPU thread
//! gave the console a [`KickTimer`]: for [`QUIET_TX`] (a [`QuietWindow`]) the used ring
//! carries `VRING_USED_F_NO_NOTIFY`, the kernel queues frames without an exit, and the VMM
//! takes them at every exit (`Console::at_exit`: so also before it blocks in a wait, and at
//! the exit port), and the timer kicks the vCPU out of the guest when the window ends. So a
//! burst of output costs an exit per window or per staging buffer instead of one per
//! frame, and output still reaches the host within [`QUIET_TX`] of being written, however
//! long the app then computes.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::vmm::devices::mmio::{VirtioDevice, usable, writable, write_descriptors};
use crate::vmm::devices::quiet::QuietWindow;
use crate::vmm::kick::KickTimer;

const RX: usize = 0;
const TX: usize = 1;
const DEVICE_ID_CONSOLE: u32 = 3;
/// How long the transmit queue asks for no notifies after one: the longest output the guest
/// queued may wait for the VMM to take it.
pub const QUIET_TX: Duration = Duration::from_millis(5);
/// The send buffer asked for on the guest-to-host socket.
const TO_HOST_BUFFER: libc::c_int = 2 << 20;
/// Configuration space: cols and rows 0 (no size), `max_nr_ports` 1, `emerg_wr`.
const CONFIG: [u8; 12] = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
/// The most one transmit chain may carry: a whole channel frame of the largest size.
const MAX_TX_CHAIN: usize =
    wasmvm_abi::channel::MAX_FRAME_PAYLOAD as usize + wasmvm_abi::channel::FRAME_HEADER_LEN;

pub struct Console {
    /// Guest → host bytes (frames) go here.
    to_host: UnixStream,
    /// Host → guest bytes (stdin, credit) come from here; non-blocking.
    from_host: UnixStream,
    /// Host bytes read but not yet placed in a guest buffer.
    pending: Vec<u8>,
    host_closed: bool,
    /// Whether the receive queue's used ring carries `VRING_USED_F_NO_NOTIFY` (set as soon
    /// as the queue works, again after a reset).
    rx_quiet: bool,
    /// The transmit queue's quiet window (never open without a timer).
    tx_quiet: QuietWindow,
    /// [`Console::process_tx`]'s ranges and chain heads, kept between exits: allocating
    /// them at every exit cost an `mmap` and a `munmap` each with musl's allocator.
    tx_slots: Vec<IoSlot>,
    tx_heads: Vec<u16>,
}

impl VirtioDevice for Console {
    fn device_id(&self) -> u32 {
        DEVICE_ID_CONSOLE
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn config(&self) -> &[u8] {
        &CONFIG
    }

    fn notify(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        // Take what the guest queued, and fill what it offered.
        self.process_tx(queues, mem);
        self.process_rx(queues, mem);
        // The receive queue notifies no more, so this was the transmit queue: more output
        // may follow at once.
        self.quiet_tx(queues, mem);
    }

    fn reset(&mut self) {
        self.rx_quiet = false;
        self.tx_quiet.close();
    }
}

/// What [`Console::process_rx`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// Nothing from the host is waiting.
    Idle,
    /// Bytes went into the guest's buffers: it has something to look at.
    Delivered,
    /// Host bytes wait, but the guest offers no receive buffer (it is not reading now).
    Backlog,
}

/// Buffers [`Console::process_tx`] gathers before it sends them: one `sendmsg`'s worth
/// (`IOV_MAX`).
const SEND_ROUND: usize = 1024;

/// One guest range to send: the layout of `libc::iovec` (an address, then a length), in a
/// type that may move between threads with the [`Console`] that reuses it.
#[repr(C)]
struct IoSlot {
    base: usize,
    len: usize,
}

// `write_slots` hands a slice of slots to `sendmsg` as iovecs: the layouts must agree.
const _: () = assert!(
    std::mem::size_of::<IoSlot>() == std::mem::size_of::<libc::iovec>()
        && std::mem::align_of::<IoSlot>() == std::mem::align_of::<libc::iovec>()
        && std::mem::offset_of!(libc::iovec, iov_base) == std::mem::offset_of!(IoSlot, base)
        && std::mem::offset_of!(libc::iovec, iov_len) == std::mem::offset_of!(IoSlot, len)
);

/// Writes all of `slots` to `out`, in order, with as few `sendmsg` calls as it takes.
fn write_slots(out: &UnixStream, slots: &mut [IoSlot]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut first = 0;
    while first < slots.len() {
        // SAFETY: a zeroed msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // `IoSlot` is `repr(C)` with the fields of `iovec`, in its order and of its sizes.
        msg.msg_iov = slots[first..].as_mut_ptr().cast::<libc::iovec>();
        // `as`: size_t with glibc, int with musl; SEND_ROUND fits both.
        msg.msg_iovlen = (slots.len() - first).min(SEND_ROUND) as _;
        // SAFETY: every slot describes a range vm-memory validated inside guest memory,
        // which stays mapped while the vCPU runs; sendmsg only reads it. MSG_NOSIGNAL: a
        // closed host end is an EPIPE error, not a SIGPIPE an embedder may not ignore.
        let n = unsafe { libc::sendmsg(out.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Skip what was written: whole entries, then part of the next.
        let mut n = n as usize;
        while first < slots.len() && n >= slots[first].len {
            n -= slots[first].len;
            first += 1;
        }
        if n > 0 {
            // `n` is less than this entry's length, so the address stays inside it.
            slots[first].base += n;
            slots[first].len -= n;
        }
    }
    Ok(())
}

impl Console {
    pub fn new(to_host: UnixStream, from_host: UnixStream) -> std::io::Result<Self> {
        from_host.set_nonblocking(true)?;
        // Room for a quiet period's output, so taking it rarely blocks the vCPU on the
        // output thread (the system caps it at `wmem_max`).
        super::set_send_buffer(&to_host, TO_HOST_BUFFER, false);
        Ok(Console {
            to_host,
            from_host,
            pending: Vec::new(),
            host_closed: false,
            rx_quiet: false,
            tx_quiet: QuietWindow::new(QUIET_TX),
            tx_slots: Vec::new(),
            tx_heads: Vec::new(),
        })
    }

    /// Sends every queued transmit buffer to the host, straight from guest memory to the
    /// socket (vm-memory validates each range; no copy in between), with one `sendmsg` per
    /// [`SEND_ROUND`] buffers where the socket takes them: a chatty app queues a frame per
    /// line, up to a ring's worth per exit, and a call per frame made the host's side of
    /// each line cost more than the guest's. The buffers go back to the guest only once
    /// sent. A chain larger
    /// than a whole frame, or reaching outside guest memory, is dropped: the host's frame
    /// parser then reports the guest's stream as garbled, which is all a misbehaving guest
    /// can achieve.
    fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        let Some(q) = usable(queues, TX, mem) else {
            return;
        };
        let (slots, heads) = (&mut self.tx_slots, &mut self.tx_heads);
        slots.clear();
        heads.clear();
        loop {
            let chain = q.pop_descriptor_chain(mem);
            // Sent in rounds of about a sendmsg's worth of buffers: a guest can make a chain
            // of thousands of tiny descriptors (an indirect table) and queue it many times
            // over, and holding them all for one call would grow the host's memory with it.
            if chain.is_none() || slots.len() >= SEND_ROUND {
                // The host end is gone when the run is over; the guest is about to stop.
                let _ = write_slots(&self.to_host, slots);
                for head in heads.drain(..) {
                    let _ = q.add_used(mem, head, 0);
                }
                slots.clear();
            }
            let Some(chain) = chain else {
                break;
            };
            let first = slots.len();
            let mut total = 0usize;
            for desc in chain.clone().readable() {
                total += desc.len() as usize;
                match mem.get_slice(desc.addr(), desc.len() as usize) {
                    Ok(slice) if total <= MAX_TX_CHAIN => slots.push(IoSlot {
                        // The guard only matters for memory mapped per access (Xen); this
                        // guest memory is mapped for the VM's life.
                        base: slice.ptr_guard().as_ptr() as usize,
                        len: slice.len(),
                    }),
                    _ => {
                        slots.truncate(first);
                        break;
                    }
                }
            }
            heads.push(chain.head_index());
        }
    }

    /// Lets the transmit queue go quiet after notifies, bounded by `timer` (made by the
    /// vCPU thread, which it kicks).
    pub fn set_tx_timer(&mut self, timer: KickTimer) {
        self.tx_quiet.set_timer(timer);
    }

    /// Asks for no transmit notifies for [`QUIET_TX`], unless already quiet or without a
    /// timer to end the window.
    fn quiet_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        self.tx_quiet.begin(usable(queues, TX, mem), mem);
    }

    /// Ends a quiet window: notifies wanted again, and whatever the guest queued before it
    /// saw that taken now.
    fn end_quiet_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        if self.tx_quiet.end(usable(queues, TX, mem), mem) {
            self.process_tx(queues, mem);
        }
    }

    /// At every exit of the vCPU: while the transmit queue is quiet, takes what the guest
    /// queued, and ends the window once it is over.
    pub fn at_exit(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        if !self.tx_quiet.is_open() {
            return;
        }
        self.process_tx(queues, mem);
        if self.tx_quiet.is_over() {
            self.end_quiet_tx(queues, mem);
        }
    }

    /// Before the vCPU blocks in a wait exit (whose [`at_exit`](Self::at_exit) took the
    /// guest's output): the quiet window ends, as the guest writes nothing while it waits
    /// and the timer would only cut the wait short.
    pub fn before_wait(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        self.end_quiet_tx(queues, mem);
    }

    /// Moves host bytes into the guest's receive buffers, as far as both allow.
    pub fn process_rx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Rx {
        if !self.rx_quiet {
            self.rx_quiet =
                usable(queues, RX, mem).is_some_and(|q| q.disable_notification(mem).is_ok());
        }
        let mut chunk = [0u8; 16 * 1024];
        while !self.host_closed && self.pending.len() < 64 * 1024 {
            match self.from_host.read(&mut chunk) {
                Ok(0) => self.host_closed = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.host_closed = true,
            }
        }
        if self.pending.is_empty() {
            return Rx::Idle;
        }
        let Some(q) = usable(queues, RX, mem) else {
            return Rx::Backlog;
        };
        let before = self.pending.len();
        while !self.pending.is_empty() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let written = write_descriptors(&writable(&chain), mem, &self.pending);
            self.pending.drain(..written);
            let _ = q.add_used(mem, chain.head_index(), written as u32);
        }
        if self.pending.len() != before {
            Rx::Delivered
        } else {
            Rx::Backlog
        }
    }

    /// The fd to wait on for host input.
    pub fn host_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.from_host.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::mmio::reg;
    use crate::vmm::devices::testing::{BUFFERS, Driver, QSIZE};
    use std::io::Write;
    use std::time::Instant;
    use vm_memory::{Bytes, GuestAddress};

    /// The console in 4 MiB of guest memory (room for a chain past the largest frame), and
    /// the host's ends of its two sockets (as `vmm::run` sets them up): what the guest
    /// sends comes out of the first, what is written to the second goes to the guest.
    fn console() -> (Driver<Console>, UnixStream, UnixStream) {
        let (from_guest, out_vmm) = UnixStream::pair().unwrap();
        let (to_guest, in_vmm) = UnixStream::pair().unwrap();
        // A device that would block on a host that does not read fails instead of hanging.
        out_vmm
            .set_write_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let console = Console::new(out_vmm, in_vmm).unwrap();
        from_guest.set_nonblocking(true).unwrap();
        (Driver::new(console, 4 << 20), from_guest, to_guest)
    }

    /// Everything the guest sent that the host has not read yet.
    fn received(host: &mut UnixStream) -> Vec<u8> {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match host.read(&mut chunk) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return all,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn process_rx(d: &mut Driver<Console>) -> Rx {
        let (console, queues) = d.dev.parts();
        console.process_rx(queues, &d.mem)
    }

    #[test]
    fn identity_queues_and_configuration() {
        let (mut d, _, _) = console();
        assert_eq!(d.r(reg::DEVICE_ID), 3);
        // No size (cols and rows 0), one port (`max_nr_ports`), nothing past `emerg_wr`.
        let config = d.config(16);
        assert_eq!(config[..4], [0; 4]);
        assert_eq!(u32::from_le_bytes(config[4..8].try_into().unwrap()), 1);
        assert_eq!(config[8..], [0; 8]);
        // Exactly two queues.
        for (q, present) in [(0, true), (1, true), (2, false)] {
            d.w(reg::QUEUE_SEL, q);
            assert_eq!(d.r(reg::QUEUE_NUM_MAX) != 0, present, "queue {q}");
        }
    }

    #[test]
    fn a_transmit_chain_reaches_the_host_socket_in_order() {
        let (mut d, mut host, _) = console();
        d.put(BUFFERS, b"frame ");
        d.put(BUFFERS + 0x1000, b"split in ");
        d.put(BUFFERS + 0x2000, b"three");
        let head = d.post(
            TX,
            &[
                (BUFFERS, 6, false),
                (BUFFERS + 0x1000, 9, false),
                (BUFFERS + 0x2000, 5, false),
            ],
        );
        // A device-writable buffer in a transmit chain carries nothing to the host.
        d.put(BUFFERS + 0x3000, b"!");
        d.put(BUFFERS + 0x4000, b"ignored");
        let second = d.post(
            TX,
            &[(BUFFERS + 0x3000, 1, false), (BUFFERS + 0x4000, 7, true)],
        );
        assert!(received(&mut host).is_empty(), "nothing before the notify");
        d.notify(TX as u32);
        assert_eq!(received(&mut host), b"frame split in three!");
        assert_eq!(d.used(TX), [(u32::from(head), 0), (u32::from(second), 0)]);
    }

    #[test]
    fn host_bytes_fill_the_guest_receive_buffers() {
        let (mut d, _, mut host) = console();
        assert_eq!(process_rx(&mut d), Rx::Idle);
        host.write_all(b"abcdefgh").unwrap();
        // Two buffers: the first full, the second takes the rest.
        let first = d.post(RX, &[(BUFFERS, 5, true)]);
        let second = d.post(
            RX,
            &[(BUFFERS + 0x1000, 2, true), (BUFFERS + 0x2000, 100, true)],
        );
        assert_eq!(process_rx(&mut d), Rx::Delivered);
        assert_eq!(d.used(RX), [(u32::from(first), 5), (u32::from(second), 3)]);
        assert_eq!(d.get(BUFFERS, 5), b"abcde");
        assert_eq!(d.get(BUFFERS + 0x1000, 2), b"fg");
        assert_eq!(d.get(BUFFERS + 0x2000, 1), b"h");
        // All delivered: nothing waits.
        assert_eq!(process_rx(&mut d), Rx::Idle);
        // A notify delivers too (the guest posts a buffer and kicks the queue).
        host.write_all(b"more").unwrap();
        let third = d.post(RX, &[(BUFFERS + 0x3000, 64, true)]);
        d.notify(RX as u32);
        assert_eq!(d.used(RX), [(u32::from(third), 4)]);
        assert_eq!(d.get(BUFFERS + 0x3000, 4), b"more");
    }

    #[test]
    fn the_receive_queue_asks_for_no_notifies_and_a_reset_clears_that() {
        use crate::vmm::devices::testing::RINGS;
        const NO_NOTIFY: [u8; 2] = [1, 0];
        let rx_used_flags = RINGS + RX as u64 * 0x1000 + 0x800;
        let (mut d, _, mut host) = console();
        assert_eq!(d.get(rx_used_flags, 2), [0, 0]);
        // The first exit that looks at the queue sets the flag, input or not.
        assert_eq!(process_rx(&mut d), Rx::Idle);
        assert_eq!(d.get(rx_used_flags, 2), NO_NOTIFY);
        // Buffers posted without a notify are still filled at the next exit.
        let head = d.post(RX, &[(BUFFERS, 16, true)]);
        host.write_all(b"credit").unwrap();
        assert_eq!(process_rx(&mut d), Rx::Delivered);
        assert_eq!(d.used(RX), [(u32::from(head), 6)]);
        // After a reset the driver may lay the rings out afresh: the device forgets it
        // asked, and asks again once the queue works.
        d.w(reg::STATUS, 0);
        assert!(!d.dev.device.rx_quiet);
        assert_eq!(process_rx(&mut d), Rx::Idle);
        assert!(
            !d.dev.device.rx_quiet,
            "a reset queue cannot carry the flag"
        );
    }

    /// The transmit queue's used-ring flags.
    fn tx_used_flags(d: &Driver<Console>) -> Vec<u8> {
        use crate::vmm::devices::testing::RINGS;
        d.get(RINGS + TX as u64 * 0x1000 + 0x800, 2)
    }

    /// A console whose transmit queue goes quiet after notifies (its timer kicks this
    /// thread, harmlessly).
    fn timed_console() -> (Driver<Console>, UnixStream) {
        let (mut d, host, _) = console();
        d.dev
            .device
            .set_tx_timer(crate::vmm::kick::KickTimer::for_this_thread().unwrap());
        // Windows end when a test says so (`expire`), however loaded the machine.
        d.dev.device.tx_quiet.set_period(Duration::from_secs(60));
        (d, host)
    }

    #[test]
    fn without_a_timer_the_transmit_queue_always_wants_notifies() {
        let (mut d, mut host, _) = console();
        d.put(BUFFERS, b"one");
        d.post(TX, &[(BUFFERS, 3, false)]);
        d.notify(TX as u32);
        assert_eq!(received(&mut host), b"one");
        assert_eq!(tx_used_flags(&d), [0, 0]);
    }

    #[test]
    fn after_a_notify_output_queued_quietly_is_taken_at_the_next_exit() {
        let (mut d, mut host) = timed_console();
        d.put(BUFFERS, b"first ");
        d.post(TX, &[(BUFFERS, 6, false)]);
        d.notify(TX as u32);
        assert_eq!(received(&mut host), b"first ");
        // Quiet: the driver is asked not to notify, for a bounded time.
        assert_eq!(tx_used_flags(&d), [1, 0]);
        assert!(d.dev.device.tx_quiet.is_open());
        // Queued without a notify: any exit takes it, in order.
        d.put(BUFFERS + 0x1000, b"second ");
        d.put(BUFFERS + 0x2000, b"third");
        d.post(TX, &[(BUFFERS + 0x1000, 7, false)]);
        d.post(TX, &[(BUFFERS + 0x2000, 5, false)]);
        assert!(received(&mut host).is_empty());
        let (console, queues) = d.dev.parts();
        console.at_exit(queues, &d.mem);
        assert_eq!(received(&mut host), b"second third");
        assert_eq!(d.used(TX).len(), 3);
        // The first exit after the period (the timer's) ends it, taking what came last.
        d.put(BUFFERS, b"last");
        d.post(TX, &[(BUFFERS, 4, false)]);
        d.dev.device.tx_quiet.expire();
        let (console, queues) = d.dev.parts();
        console.at_exit(queues, &d.mem);
        assert_eq!(received(&mut host), b"last");
        assert_eq!(tx_used_flags(&d), [0, 0]);
        assert!(!d.dev.device.tx_quiet.is_open());
    }

    #[test]
    fn a_wait_ends_the_quiet_period_and_takes_what_came_meanwhile() {
        let (mut d, mut host) = timed_console();
        d.put(BUFFERS, b"prompt> ");
        d.post(TX, &[(BUFFERS, 8, false)]);
        d.notify(TX as u32);
        // Queued after the last exit's look (as if between that look and the wait): the
        // driver saw no flag, so nothing else would take it.
        d.post(TX, &[(BUFFERS, 6, false)]);
        let (console, queues) = d.dev.parts();
        console.before_wait(queues, &d.mem);
        assert_eq!(received(&mut host), b"prompt> prompt");
        assert_eq!(tx_used_flags(&d), [0, 0]);
        assert!(!d.dev.device.tx_quiet.is_open());
        // A reset ends a period too.
        d.notify(TX as u32);
        assert!(d.dev.device.tx_quiet.is_open());
        d.w(reg::STATUS, 0);
        assert!(!d.dev.device.tx_quiet.is_open());
    }

    #[test]
    fn the_timer_kicks_the_thread_that_made_it() {
        // The kick interrupts a blocking call on this thread, as it interrupts KVM_RUN.
        let timer = crate::vmm::kick::KickTimer::for_this_thread().unwrap();
        let (mut a, _b) = UnixStream::pair().unwrap();
        // A timer that never fires fails the test (WouldBlock) instead of hanging it.
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        timer.arm(Duration::from_millis(20));
        let mut byte = [0u8; 1];
        let e = a.read(&mut byte).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Interrupted);
        assert!(started.elapsed() >= Duration::from_millis(20));
        // Disarmed, it stays quiet.
        timer.arm(Duration::from_millis(20));
        timer.disarm();
        a.set_read_timeout(Some(Duration::from_millis(60))).unwrap();
        let e = a.read(&mut byte).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
    }

    #[test]
    fn host_bytes_wait_while_the_guest_offers_no_receive_buffer() {
        let (mut d, _, mut host) = console();
        host.write_all(b"queued").unwrap();
        assert_eq!(process_rx(&mut d), Rx::Backlog);
        // Still waiting, and not lost or duplicated by asking again.
        assert_eq!(process_rx(&mut d), Rx::Backlog);
        // A buffer the device cannot write is handed back empty; the bytes keep waiting.
        let readonly = d.post(RX, &[(BUFFERS, 64, false)]);
        assert_eq!(process_rx(&mut d), Rx::Backlog);
        assert_eq!(d.used(RX), [(u32::from(readonly), 0)]);
        // So is one outside guest memory.
        let outside = d.post(RX, &[(u64::MAX - 8, 64, true)]);
        assert_eq!(process_rx(&mut d), Rx::Backlog);
        assert_eq!(d.used(RX), [(u32::from(outside), 0)]);
        // A small buffer takes what fits; the rest waits for the next one.
        let small = d.post(RX, &[(BUFFERS, 4, true)]);
        assert_eq!(process_rx(&mut d), Rx::Delivered);
        assert_eq!(d.used(RX), [(u32::from(small), 4)]);
        assert_eq!(d.get(BUFFERS, 4), b"queu");
        assert_eq!(process_rx(&mut d), Rx::Backlog);
        let big = d.post(RX, &[(BUFFERS + 0x1000, 64, true)]);
        assert_eq!(process_rx(&mut d), Rx::Delivered);
        assert_eq!(d.used(RX), [(u32::from(big), 2)]);
        assert_eq!(d.get(BUFFERS + 0x1000, 2), b"ed");
        assert_eq!(process_rx(&mut d), Rx::Idle);
    }

    #[test]
    fn a_receive_queue_that_is_not_ready_is_a_backlog() {
        let (mut d, _, mut host) = console();
        d.w(reg::QUEUE_SEL, RX as u32);
        d.w(reg::QUEUE_READY, 0);
        host.write_all(b"x").unwrap();
        assert_eq!(process_rx(&mut d), Rx::Backlog);
    }

    #[test]
    fn bytes_sent_before_the_host_closes_are_still_delivered() {
        let (mut d, from_guest, mut host) = console();
        host.write_all(b"bye").unwrap();
        drop(host);
        let head = d.post(RX, &[(BUFFERS, 16, true)]);
        assert_eq!(process_rx(&mut d), Rx::Delivered);
        assert_eq!(d.used(RX), [(u32::from(head), 3)]);
        assert_eq!(d.get(BUFFERS, 3), b"bye");
        assert_eq!(process_rx(&mut d), Rx::Idle);
        // A transmit after the host left is dropped, not a panic.
        drop(from_guest);
        d.put(BUFFERS, b"late");
        let late = d.post(TX, &[(BUFFERS, 4, false)]);
        d.notify(TX as u32);
        assert_eq!(d.used(TX), [(u32::from(late), 0)]);
    }

    #[test]
    fn transmit_chains_outside_memory_or_past_a_frame_are_dropped() {
        let (mut d, mut host, _) = console();
        let mem_end = 4u64 << 20;
        d.put(BUFFERS, b"good");
        let bad = [
            // Past the end of guest memory, and at the end of the address space.
            vec![(mem_end - 2, 5, false)],
            vec![(u64::MAX - 10, 100, false)],
            // A sound first buffer does not carry a bad second one.
            vec![(BUFFERS, 4, false), (mem_end - 1, 2, false)],
            // One byte more than a whole frame, in one buffer or in two.
            vec![(BUFFERS, MAX_TX_CHAIN as u32 + 1, false)],
            vec![
                (BUFFERS, MAX_TX_CHAIN as u32 / 2, false),
                (BUFFERS, MAX_TX_CHAIN as u32 / 2 + 1, false),
            ],
        ];
        // Sound chains before and after the bad ones: a bad chain takes none of its
        // neighbours' bytes with it.
        let mut heads = vec![u32::from(d.post(TX, &[(BUFFERS, 4, false)]))];
        heads.extend(bad.iter().map(|c| u32::from(d.post(TX, c))));
        heads.push(u32::from(d.post(TX, &[(BUFFERS, 4, false)])));
        assert!(heads.len() <= usize::from(QSIZE));
        d.notify(TX as u32);
        // Only the sound chains got through; every chain came back.
        let got = received(&mut host);
        assert!(got == b"goodgood", "the host got {} bytes", got.len());
        let used: Vec<_> = d.used(TX).into_iter().map(|(head, _)| head).collect();
        assert_eq!(used, heads);
    }

    #[test]
    fn chains_of_many_buffers_go_out_in_rounds_in_order() {
        use crate::vmm::devices::testing::RINGS;
        let (mut d, mut host, _) = console();
        host.set_nonblocking(false).unwrap();
        // Bytes the device never sends fail the test instead of hanging it.
        host.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        // Three chains, each one indirect descriptor naming a table of 600 one-byte
        // buffers: more buffers than one round (SEND_ROUND) holds.
        const PER_CHAIN: u64 = 600;
        let data = BUFFERS + 0x10_0000;
        let mut expected = Vec::new();
        let mut heads = Vec::new();
        for chain in 0..3u64 {
            let table = BUFFERS + chain * 0x4000;
            for i in 0..PER_CHAIN {
                let byte = (chain * PER_CHAIN + i) as u8;
                let at = data + chain * PER_CHAIN + i;
                d.put(at, &[byte]);
                expected.push(byte);
                let desc = table + i * 16;
                d.mem.write_obj(at, GuestAddress(desc)).unwrap();
                d.mem.write_obj(1u32, GuestAddress(desc + 8)).unwrap();
                let flags: u16 = if i + 1 < PER_CHAIN { 1 } else { 0 }; // NEXT
                d.mem.write_obj(flags, GuestAddress(desc + 12)).unwrap();
                d.mem
                    .write_obj((i + 1) as u16, GuestAddress(desc + 14))
                    .unwrap();
            }
            let head = d.post(TX, &[(table, (PER_CHAIN * 16) as u32, false)]);
            // VIRTQ_DESC_F_INDIRECT on the head descriptor.
            let flags_at = RINGS + TX as u64 * 0x1000 + u64::from(head) * 16 + 12;
            d.mem.write_obj(4u16, GuestAddress(flags_at)).unwrap();
            heads.push(u32::from(head));
        }
        assert!(3 * PER_CHAIN as usize > SEND_ROUND);
        d.notify(TX as u32);
        let mut got = vec![0u8; expected.len()];
        host.read_exact(&mut got).unwrap();
        assert_eq!(got, expected);
        let used: Vec<_> = d.used(TX).into_iter().map(|(head, _)| head).collect();
        assert_eq!(used, heads);
    }

    #[test]
    fn a_whole_frame_of_the_largest_size_goes_through() {
        let (mut d, mut host, _) = console();
        host.set_nonblocking(false).unwrap();
        // A device that dropped the frame fails the test instead of hanging it.
        host.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let frame: Vec<u8> = (0..MAX_TX_CHAIN).map(|i| i as u8).collect();
        d.put(BUFFERS, &frame);
        // Larger than the socket's buffer: the host reads while the device writes.
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; MAX_TX_CHAIN];
            host.read_exact(&mut got).unwrap();
            got
        });
        let half = MAX_TX_CHAIN as u32 / 2;
        let head = d.post(
            TX,
            &[
                (BUFFERS, half, false),
                (BUFFERS + u64::from(half), MAX_TX_CHAIN as u32 - half, false),
            ],
        );
        d.notify(TX as u32);
        assert_eq!(d.used(TX), [(u32::from(head), 0)]);
        assert!(reader.join().unwrap() == frame);
    }
}
