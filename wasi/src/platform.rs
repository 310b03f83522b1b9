//! What WASI needs from the machine underneath: the kernel implements this over its devices,
//! host tests over buffers.

use alloc::vec::Vec;

/// An output stream of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    Stdout,
    Stderr,
}

/// WASI clock ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Realtime,
    Monotonic,
    ProcessCpuTime,
    ThreadCpuTime,
}

impl Clock {
    pub fn from_id(id: u32) -> Option<Clock> {
        Some(match id {
            0 => Clock::Realtime,
            1 => Clock::Monotonic,
            2 => Clock::ProcessCpuTime,
            3 => Clock::ThreadCpuTime,
            _ => return None,
        })
    }
}

pub trait Platform {
    /// Writes all of `bytes` to stdout or stderr.
    fn write(&mut self, stream: Stdio, bytes: &[u8]);
    /// Reads stdin into `buf`, waiting until at least one byte or end of file; 0 means end of
    /// file.
    fn read_stdin(&mut self, buf: &mut [u8]) -> usize;
    /// Current time of `clock` in nanoseconds (realtime: since the Unix epoch).
    fn now_ns(&mut self, clock: Clock) -> u64;
    /// Resolution of `clock` in nanoseconds.
    fn resolution_ns(&self, clock: Clock) -> u64;
    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&mut self, buf: &mut [u8]);
    /// Whether a read of stdin would return at once (data or end of file).
    fn stdin_ready(&mut self) -> bool {
        true
    }
    /// Waits until the monotonic clock reaches `deadline_ns` or stdin becomes ready (when
    /// `or_stdin`). The default polls; a platform with a way to sleep overrides it.
    fn wait_until(&mut self, deadline_ns: u64, or_stdin: bool) {
        while self.now_ns(Clock::Monotonic) < deadline_ns && !(or_stdin && self.stdin_ready()) {
            core::hint::spin_loop();
        }
    }
    /// One 9P2000.L exchange with host share `share` (the number given to
    /// `Wasi::preopen_share`): sends `request` (one whole T-message) and replaces `reply`'s
    /// contents with the whole R-message. False when there is no such share or the transport
    /// failed; the WASI call then fails with EIO.
    fn p9_transact(&mut self, share: u32, request: &[u8], reply: &mut Vec<u8>) -> bool {
        let _ = (share, request, reply);
        false
    }
    /// Waits until the monotonic clock reaches `deadline_ns` or the host delivers anything
    /// (a network frame, stdin). May return early; callers re-check their condition.
    fn wait_event(&mut self, deadline_ns: u64) {
        let _ = deadline_ns;
    }
    /// Takes the next frame the network card received into `frame` (replacing its
    /// contents); false when there is none.
    fn net_receive(&mut self, frame: &mut Vec<u8>) -> bool {
        let _ = frame;
        false
    }
    /// Whether the card can take another frame to send.
    fn net_can_send(&mut self) -> bool {
        false
    }
    /// Queues a frame of `len` bytes, which `fill` writes; false (and `fill` not called)
    /// when the card has no room.
    fn net_send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> bool {
        let _ = (len, fill);
        false
    }
    /// Sends what `net_send` queued: the stack calls this once per batch of frames.
    fn net_flush(&mut self) {}
    /// A line for the kernel log (`wasmvm run --verbose`).
    fn log(&mut self, _line: &str) {}
    /// Bytes of heap in use, when the platform knows.
    fn heap_in_use(&self) -> Option<usize> {
        None
    }
}
