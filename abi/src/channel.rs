//! The framed byte stream between guest and host over the first virtio console.
//!
//! Both directions carry frames: an 8-byte [`FrameHeader`] (kind `u8`, three zero bytes,
//! payload length `u32`) followed by the payload. One stream thereby carries stdout, stderr,
//! kernel log lines and the final [`ExitRecord`] to the host, and stdin with its end of file
//! to the guest, on any VMM that offers a single-port virtio console.

#[cfg(feature = "alloc")]
use alloc::{string::String, vec::Vec};

use crate::{DecodeError, le_u32};

pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a sender may put in one frame; receivers reject larger ones.
pub const MAX_FRAME_PAYLOAD: u32 = 1 << 20;

/// Frame kinds sent by the guest.
pub mod to_host {
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// The payload is an encoded [`ExitRecord`](super::ExitRecord); the last frame of a run.
    pub const EXIT: u8 = 3;
    /// A kernel log line (UTF-8), shown by `wasmvm run --verbose`.
    pub const LOG: u8 = 4;
    /// Stdin flow control: the payload (`u32`) is a number of stdin bytes the host may send
    /// again (see [`STDIN_WINDOW`](super::STDIN_WINDOW)). Sent only when the run
    /// configuration says the host counts (`bundle::tag::STDIN_WINDOW`); the first one, at
    /// boot, grants the whole window.
    pub const STDIN_CREDIT: u8 = 5;
}

/// Frame kinds sent by the host.
pub mod to_guest {
    pub const STDIN: u8 = 1;
    /// Standard input has ended; the payload is empty.
    pub const STDIN_EOF: u8 = 2;
    /// Flow control: the payload (`u32`) is a number of bytes the guest may send again.
    pub const CREDIT: u8 = 3;
}

/// Flow control of stdin: the host may have at most this many stdin payload bytes sent but
/// not yet taken by the app, counted from the guest's first [`to_host::STDIN_CREDIT`]; the
/// guest returns them as the app reads. So stdin that arrives while the app does not read it
/// costs the guest at most this much memory. A host that never hears a `STDIN_CREDIT`
/// (a kernel older than this frame) sends stdin without a window, as before; a kernel whose
/// run configuration lacks `bundle::tag::STDIN_WINDOW` (an older host) sends none.
pub const STDIN_WINDOW: u32 = 1 << 20;

/// Flow control of guest output. The guest may have at most this many bytes (frame headers
/// included) sent but not yet returned by the host in [`to_guest::CREDIT`] frames; the host
/// returns the bytes of each frame once it has taken it off the wire. This keeps a VMM that
/// drops console output it cannot deliver at once (QEMU's `virtconsole` does) from ever
/// having more in flight than a socket buffer holds.
pub const CHANNEL_WINDOW: u32 = 96 * 1024;
/// A host whose transport never loses data (the built-in VMM: a full socket just blocks the
/// vCPU) may widen the window by granting extra credit in a [`to_guest::CREDIT`] frame before
/// any output; the guest accepts credit up to this much in flight.
pub const MAX_CHANNEL_WINDOW: u32 = 4 << 20;
/// The least a frame costs of the window, however small: a socket buffer holds bytes and a
/// bookkeeping overhead per write, so thousands of tiny frames overflow it long before
/// their bytes do (QEMU then drops console output). Both sides count
/// [`frame_cost`]: the guest when it sends, the host when it returns credit.
pub const MIN_FRAME_COST: u32 = 2048;

/// What a frame of `len` bytes (header included) costs of the window.
pub const fn frame_cost(len: usize) -> u32 {
    let len = if len > u32::MAX as usize {
        u32::MAX
    } else {
        len as u32
    };
    if len < MIN_FRAME_COST {
        MIN_FRAME_COST
    } else {
        len
    }
}
/// Largest frame payload the guest sends within the initial window, so that a frame always
/// fits it.
pub const GUEST_FRAME_PAYLOAD: usize = 16 * 1024;
/// Largest frame payload the guest sends once its window is wider than [`CHANNEL_WINDOW`]:
/// fewer, larger frames, each one exit.
pub const WIDE_GUEST_FRAME_PAYLOAD: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub len: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0] = self.kind;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<Self, DecodeError> {
        if bytes[1..4] != [0, 0, 0] {
            return Err(DecodeError::Malformed("frame header padding"));
        }
        let len = le_u32(bytes, 4)?;
        if len > MAX_FRAME_PAYLOAD {
            return Err(DecodeError::Malformed(
                "frame longer than MAX_FRAME_PAYLOAD",
            ));
        }
        Ok(FrameHeader {
            kind: bytes[0],
            len,
        })
    }
}

/// How the guest ended, as it tells the host in its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// The app returned from `_start` (status 0) or called `proc_exit`.
    Exited = 1,
    /// The app trapped; `trap` says why.
    Trapped = 2,
    /// The kernel panicked; `message` says why.
    KernelPanic = 3,
    /// The kernel could not start the app (bad bundle, instantiation failed, ...).
    BootFailed = 4,
    /// A wasm exception escaped the entry point; `message` names it. Ends the run with
    /// status 1, as `wasmtime run` does.
    UncaughtException = 5,
}

impl ExitKind {
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => ExitKind::Exited,
            2 => ExitKind::Trapped,
            3 => ExitKind::KernelPanic,
            4 => ExitKind::BootFailed,
            5 => ExitKind::UncaughtException,
            _ => return None,
        })
    }
}

/// Record tags inside an exit record.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
mod exit_tag {
    pub const KIND: u32 = 1;
    pub const STATUS: u32 = 2;
    pub const TRAP_CODE: u32 = 3;
    pub const MESSAGE: u32 = 4;
    pub const FRAME: u32 = 5;
}

/// Trap codes, numbered as wasmi numbers its `TrapCode` (so `u8::from(code)` converts); the
/// host turns them into wasmtime's messages.
pub mod trap {
    pub const UNREACHABLE: u32 = 1;
    pub const MEMORY_OUT_OF_BOUNDS: u32 = 2;
    pub const TABLE_OUT_OF_BOUNDS: u32 = 3;
    pub const INDIRECT_CALL_TO_NULL: u32 = 4;
    pub const INTEGER_DIVISION_BY_ZERO: u32 = 5;
    pub const INTEGER_OVERFLOW: u32 = 6;
    pub const BAD_CONVERSION_TO_INTEGER: u32 = 7;
    pub const STACK_OVERFLOW: u32 = 8;
    pub const BAD_SIGNATURE: u32 = 9;
    pub const OUT_OF_FUEL: u32 = 10;
    pub const GROWTH_OPERATION_LIMITED: u32 = 11;
    pub const OUT_OF_SYSTEM_MEMORY: u32 = 12;
    /// A host function failed in a way that is not an errno (e.g. `proc_exit` out of range).
    pub const HOST_ERROR: u32 = 255;

    /// The message wasmtime prints for a trap code.
    pub fn message(code: u32) -> &'static str {
        match code {
            UNREACHABLE => "wasm `unreachable` instruction executed",
            MEMORY_OUT_OF_BOUNDS => "out of bounds memory access",
            TABLE_OUT_OF_BOUNDS => "undefined element: out of bounds table access",
            INDIRECT_CALL_TO_NULL => "uninitialized element",
            INTEGER_DIVISION_BY_ZERO => "integer divide by zero",
            INTEGER_OVERFLOW => "integer overflow",
            BAD_CONVERSION_TO_INTEGER => "invalid conversion to integer",
            STACK_OVERFLOW => "call stack exhausted",
            BAD_SIGNATURE => "indirect call type mismatch",
            OUT_OF_FUEL => "all fuel consumed by WebAssembly",
            GROWTH_OPERATION_LIMITED => "growth operation limited",
            OUT_OF_SYSTEM_MEMORY => "out of system memory",
            HOST_ERROR => "host function error",
            _ => "unknown trap",
        }
    }
}

/// The final report of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg(feature = "alloc")]
pub struct ExitRecord {
    pub kind: ExitKind,
    /// The app's exit status, for [`ExitKind::Exited`].
    pub status: i32,
    /// A [`trap`] code, for [`ExitKind::Trapped`].
    pub trap_code: Option<u32>,
    pub message: String,
    /// Wasm call stack, innermost first, where known.
    pub backtrace: Vec<String>,
}

#[cfg(feature = "alloc")]
impl ExitRecord {
    pub fn exited(status: i32) -> Self {
        ExitRecord {
            kind: ExitKind::Exited,
            status,
            trap_code: None,
            message: String::new(),
            backtrace: Vec::new(),
        }
    }

    pub fn failed(kind: ExitKind, message: String) -> Self {
        ExitRecord {
            kind,
            status: 0,
            trap_code: None,
            message,
            backtrace: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        use crate::records::push_record;
        let mut out = Vec::new();
        push_record(&mut out, exit_tag::KIND, &(self.kind as u32).to_le_bytes());
        push_record(&mut out, exit_tag::STATUS, &self.status.to_le_bytes());
        if let Some(code) = self.trap_code {
            push_record(&mut out, exit_tag::TRAP_CODE, &code.to_le_bytes());
        }
        push_record(&mut out, exit_tag::MESSAGE, self.message.as_bytes());
        for frame in &self.backtrace {
            push_record(&mut out, exit_tag::FRAME, frame.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut kind = None;
        let mut r = ExitRecord::exited(0);
        for record in crate::Records::new(bytes) {
            let record = record?;
            let text = || String::from_utf8_lossy(record.value).into_owned();
            match record.tag {
                exit_tag::KIND => {
                    kind = Some(
                        ExitKind::from_u32(le_u32(record.value, 0)?)
                            .ok_or(DecodeError::Malformed("exit kind"))?,
                    )
                }
                exit_tag::STATUS => r.status = le_u32(record.value, 0)? as i32,
                exit_tag::TRAP_CODE => r.trap_code = Some(le_u32(record.value, 0)?),
                exit_tag::MESSAGE => r.message = text(),
                exit_tag::FRAME => r.backtrace.push(text()),
                _ => {}
            }
        }
        r.kind = kind.ok_or(DecodeError::Malformed("exit record without kind"))?;
        Ok(r)
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::{string::ToString, vec};

    #[test]
    fn frame_header_round_trip_and_limits() {
        let h = FrameHeader {
            kind: to_host::STDERR,
            len: 17,
        };
        assert_eq!(FrameHeader::decode(&h.encode()), Ok(h));
        let mut big = h.encode();
        big[4..8].copy_from_slice(&(MAX_FRAME_PAYLOAD + 1).to_le_bytes());
        assert!(FrameHeader::decode(&big).is_err());
        let mut pad = h.encode();
        pad[2] = 1;
        assert!(FrameHeader::decode(&pad).is_err());
    }

    #[test]
    fn exit_record_round_trip() {
        let r = ExitRecord {
            kind: ExitKind::Trapped,
            status: 0,
            trap_code: Some(trap::UNREACHABLE),
            message: "boom".to_string(),
            backtrace: vec!["main".to_string(), "_start".to_string()],
        };
        assert_eq!(ExitRecord::decode(&r.encode()), Ok(r));
        assert!(ExitRecord::decode(b"").is_err());
    }
}
