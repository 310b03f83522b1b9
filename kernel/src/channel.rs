//! The framed host channel (see `wasmvm_abi::channel`) over the first virtio console, with a
//! serial-port fallback for a bare `qemu -kernel app.img` that offers no console.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;
use wasmvm_abi::channel::{
    CHANNEL_WINDOW, ExitRecord, FRAME_HEADER_LEN, FrameHeader, GUEST_FRAME_PAYLOAD,
    MAX_CHANNEL_WINDOW, STDIN_WINDOW, WIDE_GUEST_FRAME_PAYLOAD, frame_cost, to_guest, to_host,
};
use wasmvm_abi::direct::WAIT_FOREVER;

use crate::arch;
use crate::console::VirtConsole;
use crate::virtio::Pinned;

const COM1: u16 = 0x3f8;

enum Link {
    /// No device yet: early boot, or a VMM without a console. Output goes to COM1 unframed.
    Serial,
    Virtio(alloc::boxed::Box<Pinned<VirtConsole>>),
}

struct Channel {
    link: Link,
    /// Bytes taken off the device, before parsing (kept to reuse its allocation).
    received: Vec<u8>,
    /// Bytes we may still send before the host returns credit.
    credit: u32,
    /// The widest the window has been: the host may widen it (see `MAX_CHANNEL_WINDOW`).
    window: u32,
    /// Parser state of the host's frames.
    rx_header: [u8; FRAME_HEADER_LEN],
    rx_header_len: usize,
    rx_kind: u8,
    rx_remaining: u32,
    rx_credit: [u8; 4],
    /// Stdin that arrived before the app asked for it (at most `STDIN_WINDOW` bytes, by
    /// the host's count).
    stdin: VecDeque<u8>,
    stdin_eof: bool,
    /// The host counts stdin (see [`count_stdin`]).
    stdin_counted: bool,
    /// Stdin room owed to the host: bytes the app took since the last `STDIN_CREDIT`.
    stdin_taken: u32,
}

static CHANNEL: Mutex<Channel> = Mutex::new(Channel {
    link: Link::Serial,
    received: Vec::new(),
    credit: CHANNEL_WINDOW,
    window: CHANNEL_WINDOW,
    rx_header: [0; FRAME_HEADER_LEN],
    rx_header_len: 0,
    rx_kind: 0,
    rx_remaining: 0,
    rx_credit: [0; 4],
    stdin: VecDeque::new(),
    stdin_eof: false,
    stdin_counted: false,
    stdin_taken: 0,
});

/// Switches the channel to a virtio console.
pub fn attach(console: VirtConsole) {
    CHANNEL.lock().link = Link::Virtio(alloc::boxed::Box::new(Pinned(console)));
}

/// The host keeps a stdin window (its run configuration says so): grant the whole window,
/// and return stdin room as the app reads from now on (abi::channel::STDIN_WINDOW).
pub fn count_stdin() {
    let mut channel = CHANNEL.lock();
    if let Link::Virtio(_) = channel.link {
        channel.stdin_counted = true;
        channel.stdin_taken = STDIN_WINDOW;
        channel.return_stdin_room();
    }
}

/// Sends `bytes` as frames of `kind`.
pub fn send(kind: u8, bytes: &[u8]) {
    CHANNEL.lock().send(kind, bytes);
}

/// Whether the host wants log lines: not when it said it discards them
/// (`wasmvm_abi::direct::flags::LOG_DISCARDED`).
static SEND_LOG: AtomicBool = AtomicBool::new(true);

pub fn set_send_log(send: bool) {
    SEND_LOG.store(send, Ordering::Relaxed);
}

/// Sends a kernel log line (shown by `wasmvm run --verbose`); dropped without a console or
/// when the host discards them.
pub fn log(line: &str) {
    if !SEND_LOG.load(Ordering::Relaxed) {
        return;
    }
    let mut channel = CHANNEL.lock();
    if let Link::Virtio(_) = channel.link {
        channel.send(to_host::LOG, line.as_bytes());
        // At once, not with the next batch: the host stamps each line as it arrives, and
        // `--verbose` timings are read from those stamps.
        channel.flush();
    }
}

/// Sends a log line if the output window has room for it now, else drops it: for reports
/// from paths that must not wait for the host's stdout (the network stack's quiet report).
pub fn log_if_room(line: &str) {
    if !SEND_LOG.load(Ordering::Relaxed) {
        return;
    }
    let mut channel = CHANNEL.lock();
    if let Link::Virtio(_) = channel.link {
        channel.poll_rx();
        if channel.credit >= frame_cost(FRAME_HEADER_LEN + line.len()) {
            channel.send(to_host::LOG, line.as_bytes());
        }
    }
}

/// Reads stdin into `buf`, waiting (by polling: the guest cannot halt at CPL 3) until at
/// least one byte arrives or the host signals end of file (then 0).
pub fn read_stdin(buf: &mut [u8]) -> usize {
    CHANNEL.lock().read_stdin(buf)
}

/// Whether stdin has data or has ended, after taking what the host sent off the device.
pub fn stdin_ready() -> bool {
    let mut channel = CHANNEL.lock();
    if let Link::Serial = channel.link {
        return true;
    }
    channel.poll_rx();
    !channel.stdin.is_empty() || channel.stdin_eof
}

/// Sends the exit record and ends the VM. Never returns.
pub fn exit(record: &ExitRecord) -> ! {
    // A kernel stack that overflowed has corrupted statics: that is the reason to report.
    let overflow;
    let record = if arch::boot::stack_overflowed() {
        overflow = ExitRecord::failed(
            wasmvm_abi::channel::ExitKind::KernelPanic,
            alloc::string::String::from("the kernel's stack overflowed"),
        );
        &overflow
    } else {
        record
    };
    // A panic while the channel was locked cannot report through it; crash instead, which the
    // host reports as a guest crash.
    let mut serial = false;
    if let Some(mut channel) = CHANNEL.try_lock() {
        match channel.link {
            Link::Virtio(_) => channel.send(to_host::EXIT, &record.encode()),
            Link::Serial => serial = true,
        }
        // Frames still staged are taken before the VM ends: the built-in VMM takes them at
        // the exit port anyway, another VMM might end the VM first.
        channel.flush();
    }
    let standalone = STANDALONE.load(Ordering::Relaxed);
    // Without a console, the ending goes to the serial port. On a PC first (it has no exit
    // device). Under a VMM, after trying wasmvm's exit device: where it exists (our VMMs
    // without a console, as in the probe) the VM ends there, and the serial port, which
    // nested PVM cannot drive at CPL 3, is never touched; elsewhere (Firecracker, Cloud
    // Hypervisor, a bare QEMU) the write does nothing and the line follows.
    if serial && standalone {
        serial_exit_line(record);
    }
    arch::out8::<{ wasmvm_abi::exit::EXIT_PORT as u8 }>(0);
    if serial && !standalone {
        serial_exit_line(record);
    }
    // Without an exit device: a PC (disk image) powers off through ACPI; anything else
    // (a bare QEMU) ends by triple fault.
    crate::acpi::power_off();
    if STANDALONE.load(Ordering::Relaxed) {
        // The hypervisor acts on the power-off request a moment after the write; give it a
        // second before calling it failed.
        let asked = crate::clock::monotonic_ns();
        while crate::clock::monotonic_ns().saturating_sub(asked) < 1_000_000_000 {
            core::hint::spin_loop();
        }
        // On a PC a triple fault is a reset: the firmware would boot the app again, and
        // again. Stay ended instead (CPL 3 cannot halt).
        serial_write(b"[wasmvm] ACPI power-off did not work: the VM stays idle; stop it\n");
        loop {
            core::hint::spin_loop();
        }
    }
    arch::triple_fault()
}

impl Channel {
    /// Has the console take every frame staged so far (see `console::VirtConsole::flush`).
    fn flush(&mut self) {
        if let Link::Virtio(console) = &mut self.link {
            console.0.flush();
        }
    }

    fn send(&mut self, kind: u8, bytes: &[u8]) {
        if let Link::Serial = self.link {
            if kind == to_host::STDOUT || kind == to_host::STDERR {
                serial_write(bytes);
            }
            return;
        }
        // The exit record may exceed one data frame; it is sent whole.
        let chunk_len = if kind == to_host::EXIT {
            bytes.len().max(1)
        } else if self.window > CHANNEL_WINDOW {
            WIDE_GUEST_FRAME_PAYLOAD
        } else {
            GUEST_FRAME_PAYLOAD
        };
        let empty: &[u8] = &[];
        for chunk in bytes
            .chunks(chunk_len)
            .chain(bytes.is_empty().then_some(empty))
        {
            // Tiny frames count as MIN_FRAME_COST, as the host returns them (see there).
            let len = frame_cost(FRAME_HEADER_LEN + chunk.len());
            while self.credit < len.min(self.window) {
                self.poll_rx();
                if self.credit < len.min(self.window) {
                    wait();
                }
            }
            self.credit = self.credit.saturating_sub(len);
            let header = FrameHeader {
                kind,
                len: chunk.len() as u32,
            };
            let Link::Virtio(console) = &mut self.link else {
                return;
            };
            if !console.0.send(&header.encode(), chunk) {
                // The device refused the buffer: the host side is gone. Nothing is left to
                // report to.
                arch::triple_fault();
            }
            // Take what the host sent meanwhile (credit, mostly). Left in the device, it
            // fills the host's side of the channel until the host blocks writing credit and
            // stops reading our output, which then blocks us: many small writes used to
            // hang that way, or lose output under QEMU. Costs nothing when nothing came.
            self.poll_rx();
        }
    }

    /// Sends the stdin room owed to the host, if the output window has room for the frame
    /// now: reading stdin never waits for stdout (the room stays owed until it fits).
    fn return_stdin_room(&mut self) {
        if !self.stdin_counted || self.stdin_taken == 0 {
            return;
        }
        self.poll_rx();
        let cost = frame_cost(FRAME_HEADER_LEN + 4);
        if self.credit >= cost {
            let taken = core::mem::take(&mut self.stdin_taken);
            self.send(to_host::STDIN_CREDIT, &taken.to_le_bytes());
        }
    }

    fn read_stdin(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() || matches!(self.link, Link::Serial) {
            return 0;
        }
        loop {
            if !self.stdin.is_empty() {
                let n = buf.len().min(self.stdin.len());
                for (dst, src) in buf.iter_mut().zip(self.stdin.drain(..n)) {
                    *dst = src;
                }
                // Return the room in batches of a quarter window, and whenever the app has
                // emptied the buffer (it is waiting for more).
                self.stdin_taken = self.stdin_taken.saturating_add(n as u32);
                if self.stdin_taken >= STDIN_WINDOW / 4 || self.stdin.is_empty() {
                    self.return_stdin_room();
                }
                return n;
            }
            // Room owed but not yet returned (the output window was full): the app waits
            // for more stdin, which the host sends only once it has the room back.
            self.return_stdin_room();
            if self.stdin_eof {
                return 0;
            }
            self.poll_rx();
            if self.stdin.is_empty() && !self.stdin_eof {
                wait();
            }
        }
    }

    /// Takes everything the host has sent so far off the device and parses it.
    fn poll_rx(&mut self) {
        let Link::Virtio(console) = &mut self.link else {
            return;
        };
        let mut received = core::mem::take(&mut self.received);
        console.0.receive(|bytes| received.extend_from_slice(bytes));
        for &byte in &received {
            self.rx_byte(byte);
        }
        received.clear();
        self.received = received;
    }

    fn rx_byte(&mut self, byte: u8) {
        if self.rx_remaining == 0 {
            self.rx_header[self.rx_header_len] = byte;
            self.rx_header_len += 1;
            if self.rx_header_len < FRAME_HEADER_LEN {
                return;
            }
            self.rx_header_len = 0;
            match FrameHeader::decode(&self.rx_header) {
                Ok(h) if h.kind == to_guest::STDIN_EOF => self.stdin_eof = true,
                Ok(h) => {
                    self.rx_kind = h.kind;
                    self.rx_remaining = h.len;
                }
                // A garbled stream cannot be resynchronised: treat it as end of input.
                Err(_) => self.stdin_eof = true,
            }
            return;
        }
        self.rx_remaining -= 1;
        match self.rx_kind {
            to_guest::STDIN if !self.stdin_eof => self.stdin.push_back(byte),
            to_guest::CREDIT => {
                let i = 3 - self.rx_remaining.min(3) as usize;
                self.rx_credit[i] = byte;
                if self.rx_remaining == 0 {
                    let returned = u32::from_le_bytes(self.rx_credit);
                    self.credit = self.credit.saturating_add(returned).min(MAX_CHANNEL_WINDOW);
                    self.window = self.window.max(self.credit);
                }
            }
            _ => {}
        }
    }
}

/// Whether the kernel runs on a PC with firmware (a disk image): no wasmvm host, the
/// serial port is the console.
static STANDALONE: AtomicBool = AtomicBool::new(false);

pub fn set_standalone(standalone: bool) {
    STANDALONE.store(standalone, Ordering::Relaxed);
}

/// Whether the VMM blocks in a wait exit (`wasmvm_abi::direct::flags::WAIT_BLOCKS`).
static WAIT_BLOCKS: AtomicBool = AtomicBool::new(false);

pub fn set_wait_blocks(blocks: bool) {
    WAIT_BLOCKS.store(blocks, Ordering::Relaxed);
}

/// Hands the CPU to the VMM until host input arrives (see `wasmvm_abi::exit::WAIT_PORT`).
pub fn wait() {
    wait_us(WAIT_FOREVER);
}

/// Hands the CPU to the VMM until host input arrives or `micros` pass. A VMM that does not
/// block returns at once; callers loop until their condition holds either way.
pub fn wait_us(micros: u32) {
    if WAIT_BLOCKS.load(Ordering::Relaxed) {
        arch::out32::<{ wasmvm_abi::exit::WAIT_PORT as u8 }>(micros);
    } else {
        arch::out8::<{ wasmvm_abi::exit::WAIT_PORT as u8 }>(0);
    }
}

fn serial_write(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            serial_byte(b'\r');
        }
        serial_byte(b);
    }
}

fn serial_byte(b: u8) {
    // Wait for the transmit holding register (bounded: a missing UART reads 0xff).
    for _ in 0..100_000 {
        if arch::in8_dx(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    arch::out8_dx(COM1, b);
}

/// The line that tells how the app ended, on the serial port (see [`exit`]). Always a line:
/// on a cloud's serial console, or under a VMM without wasmvm's exit device (Firecracker,
/// Cloud Hypervisor, a bare `qemu -kernel`), it is the only way the app's exit status shows
/// (docs/deploy.md).
fn serial_exit_line(record: &ExitRecord) {
    use wasmvm_abi::channel::ExitKind;
    let line = match record.kind {
        ExitKind::Exited => alloc::format!("[wasmvm] app exited with status {}\n", record.status),
        _ => alloc::format!("[wasmvm] {:?}: {}\n", record.kind, record.message),
    };
    serial_write(line.as_bytes());
}
