//! Where the built-in VMM's network card (`devices::net`) sends and receives Ethernet frames:
//! a [`FrameLink`]. Two implementations:
//!
//! - [`StreamLink`]: a stream socket carrying frames as QEMU's `-netdev stream` does, each
//!   preceded by its length as a 32-bit big-endian integer. Its peer is
//!   [`Passt`](super::passt::Passt), the user-mode network (the `passt` program,
//!   unprivileged, started per run on one end of a socketpair).
//! - [`TapLink`]: an existing tap device, one frame per `read`/`write`.
//!
//! Links never block: the vCPU thread drives them at its exits and waits on [`FrameLink::fd`]
//! only in the guest's wait exits. Every length the host side sends is checked; a stream
//! that goes out of frame is closed (the guest then simply has no network).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use crate::run::network::NetError;

/// The largest Ethernet frame either side may carry: the largest MTU passt or a tap device
/// allows (65535) plus the 14-byte Ethernet header.
pub const MAX_FRAME: usize = 65535 + 14;

/// A host-side network backend that carries Ethernet frames to and from the guest's card.
pub trait FrameLink: Send {
    /// The descriptor that becomes readable when frames arrive (and writable when a backlog
    /// of outgoing frames can move).
    fn fd(&self) -> BorrowedFd<'_>;
    /// The next frame from the host, reading without blocking if none is buffered.
    fn peek(&mut self) -> Option<&[u8]>;
    /// Discards the frame [`peek`](Self::peek) returned.
    fn consume(&mut self);
    /// Whether [`send`](Self::send) has room now. While false, the card leaves transmit
    /// buffers in the guest's queue: the guest slows down instead of losing frames.
    fn can_send(&self) -> bool;
    /// Takes one frame for the host (written at once or buffered until [`flush`](Self::flush)).
    fn send(&mut self, frame: &[u8]);
    /// Writes buffered frames without blocking.
    fn flush(&mut self);
    /// Frames wait for the host to read: worth waiting for the descriptor to be writable.
    fn has_backlog(&self) -> bool;
    /// The host end is gone: nothing will arrive any more (frames sent are dropped).
    fn is_closed(&self) -> bool;
}

/// Receive buffer of a [`StreamLink`]: room for several large frames per `read`.
const STREAM_RX: usize = 512 * 1024;
/// Outgoing bytes a [`StreamLink`] collects before it writes them in one call.
const STREAM_FLUSH_AT: usize = 256 * 1024;
/// Outgoing bytes a [`StreamLink`] buffers at most while its peer is not reading.
const STREAM_TX_LIMIT: usize = 1024 * 1024;

/// Frames over a stream socket, each preceded by its length (`u32`, big-endian).
pub struct StreamLink {
    sock: UnixStream,
    /// Received bytes in `rx[rx_start..rx_end]`, possibly ending in part of a frame.
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// Outgoing bytes in `tx[tx_start..]`.
    tx: Vec<u8>,
    tx_start: usize,
    closed: bool,
}

impl StreamLink {
    /// Takes over `sock` (made non-blocking).
    pub fn new(sock: UnixStream) -> std::io::Result<StreamLink> {
        sock.set_nonblocking(true)?;
        Ok(StreamLink {
            sock,
            rx: vec![0; STREAM_RX].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::new(),
            tx_start: 0,
            closed: false,
        })
    }

    /// The length of the complete frame at the front of the receive buffer, if there is one;
    /// `Err` if the stream is out of frame.
    fn front(&self) -> Result<Option<usize>, ()> {
        let have = &self.rx[self.rx_start..self.rx_end];
        let Some(prefix) = have.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return Err(());
        }
        Ok((have.len() - 4 >= len).then_some(len))
    }

    fn close(&mut self) {
        self.closed = true;
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx.clear();
        self.tx_start = 0;
    }
}

impl FrameLink for StreamLink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn peek(&mut self) -> Option<&[u8]> {
        loop {
            match self.front() {
                Ok(Some(0)) => {
                    self.rx_start += 4;
                    continue;
                }
                Ok(Some(len)) => {
                    let at = self.rx_start + 4;
                    return Some(&self.rx[at..at + len]);
                }
                Ok(None) => {}
                Err(()) => {
                    // A length no frame has: the stream cannot be resynchronised.
                    self.close();
                    return None;
                }
            }
            if self.closed {
                return None;
            }
            // Keep the partial frame, at the front, so the largest one fits behind it.
            if self.rx_start > 0 && self.rx.len() - self.rx_end < 4 + MAX_FRAME {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            match self.sock.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => self.closed = true,
                Ok(n) => self.rx_end += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.close(),
            }
        }
    }

    fn consume(&mut self) {
        if let Ok(Some(len)) = self.front() {
            self.rx_start += 4 + len;
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            }
        }
    }

    fn can_send(&self) -> bool {
        self.tx.len() - self.tx_start < STREAM_TX_LIMIT
    }

    fn send(&mut self, frame: &[u8]) {
        if self.closed || frame.len() > MAX_FRAME {
            return;
        }
        self.tx
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.tx.extend_from_slice(frame);
        if self.tx.len() - self.tx_start >= STREAM_FLUSH_AT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        while self.tx_start < self.tx.len() {
            let pending = &self.tx[self.tx_start..];
            // SAFETY: `pending` is a live, initialised buffer of `pending.len()` bytes; send
            // only reads it. MSG_NOSIGNAL: a peer that went away is an error, not SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    pending.as_ptr().cast(),
                    pending.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::Interrupted => continue,
                    ErrorKind::WouldBlock => break,
                    _ => return self.close(),
                }
            }
            self.tx_start += n as usize;
        }
        if self.tx_start == self.tx.len() {
            self.tx.clear();
            self.tx_start = 0;
        } else if self.tx_start >= STREAM_FLUSH_AT {
            self.tx.drain(..self.tx_start);
            self.tx_start = 0;
        }
    }

    fn has_backlog(&self) -> bool {
        self.tx_start < self.tx.len()
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

/// An existing tap device (`IFF_TAP | IFF_NO_PI`): one frame per read and write.
pub struct TapLink {
    file: File,
    frame: Box<[u8]>,
    /// Length of the frame in `frame`, 0 for none.
    held: usize,
    closed: bool,
}

impl TapLink {
    /// Attaches to the tap device `name` (creating it, if the caller may). A persistent tap
    /// the user owns needs no privileges.
    pub fn open(name: &str) -> Result<TapLink, NetError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |cause: std::io::Error| NetError::Tap {
            name: name.to_string(),
            cause,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(fail)?;
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.is_empty() || name.len() >= req.ifr_name.len() {
            return Err(fail(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may update) the ifreq we own for the duration of the
        // call, on a /dev/net/tun descriptor we own.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        Ok(TapLink {
            file,
            frame: vec![0; MAX_FRAME].into_boxed_slice(),
            held: 0,
            closed: false,
        })
    }
}

impl FrameLink for TapLink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn peek(&mut self) -> Option<&[u8]> {
        while self.held == 0 && !self.closed {
            match self.file.read(&mut self.frame) {
                Ok(0) => self.closed = true,
                Ok(n) => self.held = n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        (self.held > 0).then(|| &self.frame[..self.held])
    }

    fn consume(&mut self) {
        self.held = 0;
    }

    fn can_send(&self) -> bool {
        true
    }

    fn send(&mut self, frame: &[u8]) {
        // A full or downed interface drops the frame, as a busy wire would.
        let _ = self.file.write(frame);
    }

    fn flush(&mut self) {}

    fn has_backlog(&self) -> bool {
        false
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn next(link: &mut StreamLink) -> Option<Vec<u8>> {
        let frame = link.peek()?.to_vec();
        link.consume();
        Some(frame)
    }

    #[test]
    fn frames_are_reassembled_across_reads() {
        let (mut host, vmm) = UnixStream::pair().unwrap();
        let mut link = StreamLink::new(vmm).unwrap();
        assert_eq!(next(&mut link), None);
        let big = vec![7u8; MAX_FRAME];
        let bytes = framed(&[b"first", b"", b"second", &big, b"last"]);
        // A byte at a time at first (a split length prefix, a split frame), then the rest.
        for b in &bytes[..7] {
            host.write_all(&[*b]).unwrap();
            assert_eq!(next(&mut link), None);
        }
        host.write_all(&bytes[7..12]).unwrap();
        assert_eq!(next(&mut link).as_deref(), Some(&b"first"[..]));
        assert_eq!(next(&mut link), None);
        let mut writer = host.try_clone().unwrap();
        let rest = bytes[12..].to_vec();
        let t = std::thread::spawn(move || writer.write_all(&rest).unwrap());
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while got.len() < 3 {
            match next(&mut link) {
                Some(f) => got.push(f),
                None => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{} of the 3 frames within 30 s",
                        got.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        t.join().unwrap();
        assert_eq!(got[0], b"second");
        assert_eq!(got[1], big);
        assert_eq!(got[2], b"last");
        assert!(!link.is_closed());
        drop(host);
        // The end of the stream shows once no process holds the other end: a test on
        // another thread may fork (to start a program) with it open, and its child holds
        // it until its exec closes it. So a bounded wait, not one read.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !link.is_closed() {
            assert_eq!(next(&mut link), None);
            assert!(
                std::time::Instant::now() < deadline,
                "no end of stream in 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_oversized_length_closes_the_link() {
        let (mut host, vmm) = UnixStream::pair().unwrap();
        let mut link = StreamLink::new(vmm).unwrap();
        let mut bytes = framed(&[b"ok"]);
        bytes.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        bytes.extend_from_slice(&framed(&[b"never"]));
        host.write_all(&bytes).unwrap();
        assert_eq!(next(&mut link).as_deref(), Some(&b"ok"[..]));
        assert_eq!(next(&mut link), None);
        assert!(link.is_closed());
        link.send(b"dropped");
        assert!(!link.has_backlog());
    }

    #[test]
    fn sent_frames_are_length_prefixed_and_batched() {
        let (mut host, vmm) = UnixStream::pair().unwrap();
        let mut link = StreamLink::new(vmm).unwrap();
        link.send(b"one");
        link.send(b"two!");
        // Small frames wait for the flush.
        host.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(host.read(&mut buf).is_err());
        link.flush();
        host.set_nonblocking(false).unwrap();
        let n = host.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], &framed(&[b"one", b"two!"])[..]);
    }

    #[test]
    fn a_peer_that_does_not_read_backs_the_link_up() {
        let (host, vmm) = UnixStream::pair().unwrap();
        let mut link = StreamLink::new(vmm).unwrap();
        let frame = vec![1u8; 60000];
        let mut sent = 0;
        while link.can_send() {
            link.send(&frame);
            sent += 1;
            assert!(sent < 1000, "the link never filled up");
        }
        link.flush();
        assert!(link.has_backlog());
        // The host reads everything: the backlog drains, frames intact and in order. (Each
        // wait with a deadline: a link that stops sending fails the test.)
        host.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = std::thread::spawn(move || {
            let mut host = host;
            let mut all = Vec::new();
            host.read_to_end(&mut all).map(|_| all)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while link.has_backlog() {
            assert!(
                std::time::Instant::now() < deadline,
                "the backlog did not drain within 30 s"
            );
            link.flush();
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(link);
        let all = reader
            .join()
            .unwrap()
            .expect("everything, then the end of the stream, with no 30 s gap");
        assert_eq!(all.len(), sent * (4 + frame.len()));
        assert!(
            all.chunks(4 + frame.len())
                .all(|c| c[..4] == 60000u32.to_be_bytes())
        );
    }

    #[test]
    fn a_missing_tap_device_is_explained() {
        // Names too long for an interface never reach the kernel.
        let e = TapLink::open("0123456789abcdefg").err().unwrap();
        assert!(e.to_string().contains("tap:0123456789abcdefg"), "{e}");
    }
}
