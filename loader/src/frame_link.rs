//! Where the built-in VMM's network card (`virtio_net`) sends and receives Ethernet frames:
//! a [`FrameLink`]. Two implementations:
//!
//! - [`StreamLink`]: a stream socket carrying frames as QEMU's `-netdev stream` does, each
//!   preceded by its length as a 32-bit big-endian integer. Its peer is [`Passt`], the
//!   user-mode network (the `passt` program, unprivileged, started per run on one end of a
//!   socketpair).
//! - [`TapLink`]: an existing tap device, one frame per `read`/`write`.
//!
//! Links never block: the vCPU thread drives them at its exits and waits on [`FrameLink::fd`]
//! only in the guest's wait exits. Every length the host side sends is checked; a stream
//! that goes out of frame is closed (the guest then simply has no network).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmvm_abi::net::{DNS, GATEWAY, GUEST_ADDR, GUEST_MAC, PREFIX_LEN};

use crate::net::{NetError, Proto, Publish};

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
        let fail = |source: std::io::Error| NetError::Tap {
            name: name.to_string(),
            source,
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

/// The descriptor number passt finds its end of the socketpair at.
const PASST_FD: i32 = 3;
/// passt's own MAC address: QEMU's user-mode network uses the same for its gateway.
const PASST_MAC: &str = "52:55:0a:00:02:02";
/// How long passt may take to answer the first ARP request.
const PASST_READY: Duration = Duration::from_secs(10);

/// A running passt serving one VM's user-mode network; killed and reaped when dropped.
pub struct Passt {
    child: Child,
    /// passt's stderr (an unlinked temporary file), for error messages.
    log: File,
}

fn quad(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// passt's command line (without the program): the guest at 10.0.2.15/24 behind gateway
/// 10.0.2.2 (which also stands for the host's loopback: passt's default `--map-gw`), DNS
/// queries to 10.0.2.3 forwarded to the host's resolver, IPv4 only, and one `-t`/`-u` per
/// published port (`none` without any, which also stops passt mirroring TCP ports to UDP).
pub fn passt_args(publish: &[Publish], mtu: u16, default_route: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--foreground",
        "--quiet",
        "--fd",
        &PASST_FD.to_string(),
        "--ipv4-only",
        "--address",
        &quad(GUEST_ADDR),
        "--netmask",
        &PREFIX_LEN.to_string(),
        "--gateway",
        &quad(GATEWAY),
        "--mac-addr",
        PASST_MAC,
        "--dns-forward",
        &quad(DNS),
        "--mtu",
        &mtu.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !default_route {
        // passt derives its settings from the interface of the host's default route and
        // refuses to start without one (this version); everything is given above, so the
        // loopback interface serves as that template. Outbound connections are unaffected.
        args.extend(["--interface".to_string(), "lo".to_string()]);
    }
    for (proto, flag) in [(Proto::Tcp, "--tcp-ports"), (Proto::Udp, "--udp-ports")] {
        let mut any = false;
        for p in publish.iter().filter(|p| p.proto == proto) {
            args.push(flag.to_string());
            args.push(format!("{}/{}:{}", p.host_addr, p.host_port, p.guest_port));
            any = true;
        }
        if !any {
            args.push(flag.to_string());
            args.push("none".to_string());
        }
    }
    args
}

/// Whether the host has a default IPv4 route (/proc/net/route: destination and mask 0).
fn has_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000"
        })
    })
}

/// An ARP request for the gateway from the guest's addresses: passt learns the guest's MAC
/// from it (this version sends to 00:00:00:00:00:00 until it has seen a guest frame, which
/// a guest would drop), and its reply shows that passt is up, its ports bound.
fn arp_request() -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&GUEST_MAC);
    f[28..32].copy_from_slice(&GUEST_ADDR);
    f[38..42].copy_from_slice(&GATEWAY);
    f
}

fn is_arp_reply_from_gateway(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == GATEWAY
}

impl Passt {
    /// Starts `binary` as the user-mode network of one VM, on `peer` (the other end of the
    /// VMM's socketpair, inherited as descriptor 3), forwarding the `publish`ed host ports.
    pub fn spawn(
        binary: &Path,
        publish: &[Publish],
        mtu: u16,
        peer: &UnixStream,
    ) -> Result<Passt, NetError> {
        let spawn_err = |source: std::io::Error| match source.kind() {
            ErrorKind::NotFound => NetError::PasstMissing(binary.display().to_string()),
            _ => NetError::PasstSpawn {
                path: binary.display().to_string(),
                source,
            },
        };
        let log = tempfile::tempfile().map_err(spawn_err)?;
        let fd = peer.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.args(passt_args(publish, mtu, has_default_route()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().map_err(spawn_err)?);
        // The parent-death signal ends passt with this thread (passt also exits when its
        // socket closes, which covers the case where it cleared the signal by changing user,
        // as it does when started as root); dup2 puts the peer at PASST_FD for passt.
        // SAFETY: only async-signal-safe calls (prctl, fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = match fd == PASST_FD {
                    true => libc::fcntl(fd, libc::F_SETFD, 0),
                    false => libc::dup2(fd, PASST_FD),
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        Ok(Passt { child, log })
    }

    /// Announces the guest to passt over `link` and waits until passt answers: the
    /// user-mode network is up. A passt that exits or stays silent is an error with its
    /// messages. Frames before the answer are dropped (the guest is not running yet).
    pub fn wait_ready(&mut self, link: &mut dyn FrameLink) -> Result<(), NetError> {
        link.send(&arp_request());
        link.flush();
        let deadline = Instant::now() + PASST_READY;
        loop {
            while let Some(frame) = link.peek() {
                let answered = is_arp_reply_from_gateway(frame);
                link.consume();
                if answered {
                    return Ok(());
                }
            }
            if link.is_closed() {
                return Err(self.failure());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(NetError::PasstTimeout {
                    secs: PASST_READY.as_secs(),
                    stderr: self.messages(),
                });
            }
            let mut pfd = libc::pollfd {
                fd: link.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        }
    }

    /// The error for a passt that closed its socket: its exit status and messages.
    fn failure(&mut self) -> NetError {
        // It closed the socket because it is exiting; give it a moment to finish.
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break "closed its socket".to_string(),
            }
        };
        NetError::PasstFailed {
            status,
            stderr: self.messages(),
        }
    }

    /// What passt wrote to stderr, without its routine notices, at most a few KiB.
    pub fn messages(&mut self) -> String {
        let mut text = String::new();
        if self.log.rewind().is_ok() {
            let _ = (&mut self.log).take(16 * 1024).read_to_string(&mut text);
        }
        text.lines()
            .filter(|l| {
                !l.starts_with("Failed to send") // no syslog socket here
                    && !l.starts_with("Don't run as root") // it drops to nobody by itself
                    && !l.trim().is_empty()
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// passt's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// If passt has failed (exited unsuccessfully) already, how and why.
    pub fn failed(&mut self) -> Option<String> {
        match self.exit_status() {
            Some(status) if !status.success() => {
                Some(format!("passt exited ({status}): {}", self.messages()))
            }
            _ => None,
        }
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        while got.len() < 3 {
            match next(&mut link) {
                Some(f) => got.push(f),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        t.join().unwrap();
        assert_eq!(got[0], b"second");
        assert_eq!(got[1], big);
        assert_eq!(got[2], b"last");
        assert!(!link.is_closed());
        drop(host);
        assert_eq!(next(&mut link), None);
        assert!(link.is_closed());
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
        // The host reads everything: the backlog drains, frames intact and in order.
        let reader = std::thread::spawn(move || {
            let mut host = host;
            let mut all = Vec::new();
            host.read_to_end(&mut all).unwrap();
            all
        });
        while link.has_backlog() {
            link.flush();
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(link);
        let all = reader.join().unwrap();
        assert_eq!(all.len(), sent * (4 + frame.len()));
        assert!(
            all.chunks(4 + frame.len())
                .all(|c| c[..4] == 60000u32.to_be_bytes())
        );
    }

    #[test]
    fn passt_arguments() {
        let publish = [
            Publish::parse("127.0.0.1:8080:80").unwrap(),
            Publish::parse("9000:9000/udp").unwrap(),
        ];
        let args = passt_args(&publish, 65520, true).join(" ");
        assert!(
            args.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2"),
            "{args}"
        );
        assert!(args.contains("--dns-forward 10.0.2.3"), "{args}");
        assert!(args.contains("--tcp-ports 127.0.0.1/8080:80"), "{args}");
        assert!(args.contains("--udp-ports 0.0.0.0/9000:9000"), "{args}");
        assert!(!args.contains("--interface"), "{args}");
        let args = passt_args(&[], 1500, false).join(" ");
        assert!(
            args.ends_with("--interface lo --tcp-ports none --udp-ports none"),
            "{args}"
        );
    }

    #[test]
    fn a_missing_tap_device_or_passt_is_explained() {
        let e = Passt::spawn(
            Path::new("/nonexistent/passt"),
            &[],
            1500,
            &UnixStream::pair().unwrap().0,
        )
        .err()
        .unwrap();
        assert!(e.to_string().starts_with("passt is not installed"), "{e}");
        // Names too long for an interface never reach the kernel.
        let e = TapLink::open("0123456789abcdefg").err().unwrap();
        assert!(e.to_string().contains("tap:0123456789abcdefg"), "{e}");
    }
}
