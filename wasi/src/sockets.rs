//! Socket calls: preview1's `sock_accept`/`sock_recv`/`sock_send`/`sock_shutdown` on
//! preopened listeners, and the WasmEdge socket extension (`sock_open`, `sock_bind`,
//! `sock_connect`, ...; layouts as the `wasmedge_wasi_socket` crate uses them, see
//! `docs/wasi.md`). The stack itself is `net.rs`; this file converts guest memory and
//! decides when a call blocks.
//!
//! A blocking call polls the stack, tries, and if it would block hands the CPU to the
//! platform until the host delivers something or the stack's next timer, then tries again.

use alloc::vec::Vec;

use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Address};
use wasmvm_abi::net::Listen;

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::net::{MAX_BACKLOG, Net, Nic, SockId, SockType, Socket};
use crate::platform::{Clock, Platform};
use crate::state::{Entry, Fd, Wasi, fdflags, rights};

/// `riflags`.
const RECV_PEEK: u32 = 1;
const RECV_WAITALL: u32 = 2;
/// `sdflags`.
const SHUT_RD: u32 = 1;
const SHUT_WR: u32 = 2;
/// WasmEdge address families and socket types.
const AF_INET4: u32 = 1;
const AF_INET6: u32 = 2;
const SOCK_DGRAM: u32 = 1;
const SOCK_STREAM: u32 = 2;
/// WasmEdge socket options (level 0, `SOL_SOCKET`).
mod opt {
    pub const REUSEADDR: u32 = 0;
    pub const TYPE: u32 = 1;
    pub const ERROR: u32 = 2;
    pub const SNDBUF: u32 = 5;
    pub const RCVBUF: u32 = 6;
    pub const KEEPALIVE: u32 = 7;
    pub const RCVTIMEO: u32 = 11;
    pub const SNDTIMEO: u32 = 12;
    pub const ACCEPTCONN: u32 = 13;
    pub const LAST: u32 = 14;
}
/// How long a blocking `sock_connect` waits for the handshake.
const CONNECT_TIMEOUT_NS: u64 = 30_000_000_000;
/// How long a name lookup waits for the DNS server.
const DNS_TIMEOUT_NS: u64 = 10_000_000_000;
/// The largest single receive or send (an iovec list is handled up to this many bytes).
const MAX_IO: u32 = 1 << 30;

impl<P: Platform> Wasi<P> {
    /// Gives the app a network card (before it starts); without one every socket call
    /// fails with ENETUNREACH or ENOTSOCK.
    pub fn attach_network(&mut self, nic: Nic) {
        self.net = Some(Net::new(nic, &mut self.platform));
    }

    /// Preopens a listening TCP socket (`--listen`); returns its descriptor.
    pub fn preopen_listener(&mut self, listen: Listen) -> WasiResult<u32> {
        let net = self.net.as_mut().ok_or(Errno::NETUNREACH)?;
        let addr = Ipv4Address::from(listen.addr);
        let endpoint = IpListenEndpoint {
            addr: (!addr.is_unspecified()).then_some(IpAddress::Ipv4(addr)),
            port: listen.port,
        };
        let id = net.listen(endpoint, 128, Default::default())?;
        Ok(self.insert(socket_fd(id, SockType::Stream, 0)))
    }

    /// Lets the app's last words reach their peers: closes every socket and keeps the stack
    /// running until what was sent is acknowledged or `linger_ns` passes (the kernel calls
    /// this when the app ends; a process's sockets outlive it the same way).
    pub fn finish_network(&mut self, linger_ns: u64) {
        for fd in 0..self.fds.len() {
            if matches!(
                self.fds[fd].as_ref().map(|d| &d.entry),
                Some(Entry::Socket { .. })
            ) {
                let _ = self.fd_close(fd as u32);
            }
        }
        let Some(net) = self.net.as_mut() else { return };
        let deadline = self
            .platform
            .now_ns(Clock::Monotonic)
            .saturating_add(linger_ns);
        loop {
            net.poll(&mut self.platform);
            let now = self.platform.now_ns(Clock::Monotonic);
            if net.settled() || now >= deadline {
                return;
            }
            let wake = net
                .poll_at_ns(&mut self.platform)
                .map_or(deadline, |t| t.min(deadline));
            self.platform.wait_event(wake);
        }
    }

    fn net(&mut self) -> WasiResult<&mut Net> {
        self.net.as_mut().ok_or(Errno::NOTSOCK)
    }

    /// The socket behind `fd`, and whether the descriptor is non-blocking.
    fn socket(&self, fd: u32) -> WasiResult<(SockId, bool)> {
        let d = self.fd(fd)?;
        match d.entry {
            Entry::Socket { id, .. } => Ok((id, d.flags & fdflags::NONBLOCK != 0)),
            _ => Err(Errno::NOTSOCK),
        }
    }

    /// Runs `op` until it stops failing with EAGAIN (unless `nonblock`), polling the stack
    /// before each try and waiting for the host in between; EAGAIN once `timeout_ns` passes.
    fn blocking<T>(
        &mut self,
        nonblock: bool,
        timeout_ns: Option<u64>,
        mut op: impl FnMut(&mut Net, &mut P) -> WasiResult<T>,
    ) -> WasiResult<T> {
        let net = self.net.as_mut().ok_or(Errno::NOTSOCK)?;
        let deadline = timeout_ns.map(|t| {
            self.platform
                .now_ns(Clock::Monotonic)
                .saturating_add(t.max(1))
        });
        loop {
            net.poll(&mut self.platform);
            match op(net, &mut self.platform) {
                Err(Errno::AGAIN) if !nonblock => {}
                result => return result,
            }
            let now = self.platform.now_ns(Clock::Monotonic);
            if deadline.is_some_and(|d| now >= d) {
                return Err(Errno::AGAIN);
            }
            let deadline = deadline.unwrap_or(u64::MAX);
            let wake = net
                .poll_at_ns(&mut self.platform)
                .map_or(deadline, |t| t.min(deadline));
            self.platform.wait_event(wake);
        }
    }

    /// Drops a socket descriptor's socket (from `fd_close` and `fd_renumber`).
    pub(crate) fn release_socket(&mut self, id: SockId) {
        if let Some(net) = self.net.as_mut() {
            net.close(id);
            net.poll(&mut self.platform);
        }
    }

    pub(crate) fn sock_accept(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        flags: u32,
        out: u32,
    ) -> WasiResult {
        if flags & !(fdflags::NONBLOCK as u32) != 0 {
            return Err(Errno::INVAL);
        }
        mem.slice(out, 4)?;
        let (id, nonblock) = self.socket(fd)?;
        if self.fd(fd)?.rights & rights::SOCK_ACCEPT == 0 {
            return Err(Errno::NOTSUP);
        }
        let timeout = self.net()?.entry(id)?.options.recv_timeout;
        let new = self.blocking(nonblock, timeout, |net, _| net.accept(id))?;
        let new_fd = self.insert(socket_fd(new, SockType::Stream, flags as u16));
        mem.write_u32(out, new_fd)
    }

    /// `fd_read` on a socket, and `sock_recv`: returns the bytes read and whether the
    /// datagram was truncated.
    pub(crate) fn socket_read(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        iovs: &[(u32, u32)],
        flags: u32,
    ) -> WasiResult<(u32, bool)> {
        if flags & !(RECV_PEEK | RECV_WAITALL) != 0 {
            return Err(Errno::INVAL);
        }
        let (id, nonblock) = self.socket(fd)?;
        let entry = self.net()?.entry(id)?;
        let timeout = entry.options.recv_timeout;
        let wanted: u64 = iovs.iter().map(|&(_, l)| l as u64).sum();
        let wanted = wanted.min(MAX_IO as u64) as u32;
        let peek = flags & RECV_PEEK != 0;
        let waitall = flags & RECV_WAITALL != 0 && !peek;
        let mut done: u32 = 0;
        let result = self.blocking(nonblock, timeout, |net, _| {
            let entry = net.entry(id)?;
            match entry.socket {
                Socket::Stream { handle, read_shut } => {
                    let s = net.tcp(handle);
                    if read_shut {
                        return Ok((done, false));
                    }
                    if !s.can_recv() {
                        return match s.state() {
                            tcp::State::SynSent | tcp::State::SynReceived => Err(Errno::AGAIN),
                            _ if !s.may_recv() => Ok((done, false)),
                            _ if done > 0 && !waitall => Ok((done, false)),
                            _ => Err(Errno::AGAIN),
                        };
                    }
                    done += read_stream(s, mem, iovs, done, peek)?;
                    if waitall && done < wanted && s.may_recv() {
                        return Err(Errno::AGAIN);
                    }
                    Ok((done, false))
                }
                Socket::Dgram { handle, .. } => {
                    let s = net.udp(handle);
                    let (n, truncated) = read_datagram(s, mem, iovs, peek)?;
                    Ok((n, truncated))
                }
                _ => Err(Errno::NOTCONN),
            }
        });
        match result {
            // A timed-out WAITALL still returns what it read.
            Err(Errno::AGAIN) if done > 0 => Ok((done, false)),
            r => {
                // Reading opened the window: tell the peer now rather than at the next wait.
                if let Some(net) = self.net.as_mut() {
                    net.poll(&mut self.platform);
                }
                r
            }
        }
    }

    /// `fd_write` on a socket, and `sock_send`: a blocking socket takes every byte before
    /// returning, a non-blocking one what fits.
    pub(crate) fn socket_write(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        iovs: &[(u32, u32)],
    ) -> WasiResult<u32> {
        let (id, nonblock) = self.socket(fd)?;
        let entry = self.net()?.entry(id)?;
        let timeout = entry.options.send_timeout;
        let wanted: u64 = iovs.iter().map(|&(_, l)| l as u64).sum();
        let wanted = wanted.min(MAX_IO as u64) as u32;
        let mut done: u32 = 0;
        let result = self.blocking(nonblock, timeout, |net, platform| {
            let entry = net.entry(id)?;
            match entry.socket {
                Socket::Stream { handle, .. } => {
                    let s = net.tcp(handle);
                    if matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived) {
                        return Err(Errno::AGAIN);
                    }
                    if !s.may_send() {
                        return if done > 0 { Ok(done) } else { Err(Errno::PIPE) };
                    }
                    done += write_stream(s, mem, iovs, done)?;
                    // Put what fits on the wire before waiting for room.
                    net.poll(platform);
                    if done < wanted {
                        return if nonblock && done > 0 {
                            Ok(done)
                        } else {
                            Err(Errno::AGAIN)
                        };
                    }
                    Ok(done)
                }
                Socket::Dgram { handle, peer } => {
                    let peer = peer.ok_or(Errno::NOTCONN)?;
                    let n = send_datagram(net, handle, mem, iovs, peer)?;
                    net.poll(platform);
                    Ok(n)
                }
                _ => Err(Errno::NOTCONN),
            }
        });
        match result {
            Err(Errno::AGAIN) if done > 0 => Ok(done),
            r => r,
        }
    }

    pub(crate) fn sock_recv(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, iovs, count, flags, out_len, out_flags) = (a(0), a(1), a(2), a(3), a(4), a(5));
        let iovs = mem.iovecs(iovs, count)?;
        mem.slice(out_len, 4)?;
        mem.slice(out_flags, 2)?;
        let (n, truncated) = self.socket_read(mem, fd, &iovs, flags)?;
        mem.write_u32(out_len, n)?;
        mem.write_u16(out_flags, u16::from(truncated))
    }

    pub(crate) fn sock_send(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, iovs, count, flags, out) = (a(0), a(1), a(2), a(3), a(4));
        if flags != 0 {
            return Err(Errno::INVAL);
        }
        let iovs = mem.iovecs(iovs, count)?;
        mem.slice(out, 4)?;
        let n = self.socket_write(mem, fd, &iovs)?;
        mem.write_u32(out, n)
    }

    pub(crate) fn sock_shutdown(&mut self, fd: u32, how: u32) -> WasiResult {
        if how == 0 || how & !(SHUT_RD | SHUT_WR) != 0 {
            return Err(Errno::INVAL);
        }
        let (id, _) = self.socket(fd)?;
        let net = self.net.as_mut().ok_or(Errno::NOTSOCK)?;
        match &mut net.entry_mut(id)?.socket {
            Socket::Stream { handle, read_shut } => {
                let handle = *handle;
                if how & SHUT_RD != 0 {
                    *read_shut = true;
                }
                if how & SHUT_WR != 0 {
                    net.tcp(handle).close();
                }
            }
            Socket::Dgram { .. } => {}
            _ => return Err(Errno::NOTCONN),
        }
        net.poll(&mut self.platform);
        Ok(())
    }

    // ---- The WasmEdge extension ----

    pub(crate) fn sock_open(
        &mut self,
        mem: &mut GuestMemory,
        family: u32,
        kind: u32,
        out: u32,
    ) -> WasiResult {
        mem.slice(out, 4)?;
        let kind = match (family, kind) {
            (AF_INET4, SOCK_STREAM) => SockType::Stream,
            (AF_INET4, SOCK_DGRAM) => SockType::Dgram,
            (AF_INET6, _) => return Err(Errno::AFNOSUPPORT),
            (AF_INET4, _) => return Err(Errno::INVAL),
            _ => return Err(Errno::AFNOSUPPORT),
        };
        let id = self.net.as_mut().ok_or(Errno::NETUNREACH)?.open(kind)?;
        let fd = self.insert(socket_fd(id, kind, 0));
        mem.write_u32(out, fd)
    }

    pub(crate) fn sock_bind(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        addr: u32,
        port: u32,
    ) -> WasiResult {
        let ip = read_address(mem, addr)?;
        let port = u16::try_from(port).map_err(|_| Errno::INVAL)?;
        let (id, _) = self.socket(fd)?;
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(ip)),
            port,
        };
        self.net()?.bind(id, endpoint)
    }

    pub(crate) fn sock_listen(&mut self, fd: u32, backlog: u32) -> WasiResult {
        let (id, _) = self.socket(fd)?;
        let backlog = (backlog as usize).clamp(1, MAX_BACKLOG);
        self.net()?.listen_fresh(id, backlog)?;
        let d = self.fd_mut(fd)?;
        d.rights |= rights::SOCK_ACCEPT;
        Ok(())
    }

    /// WasmEdge's older `sock_accept(fd, fd_out)`.
    pub(crate) fn sock_accept_v1(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        out: u32,
    ) -> WasiResult {
        self.sock_accept(mem, fd, 0, out)
    }

    pub(crate) fn sock_connect(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        addr: u32,
        port: u32,
    ) -> WasiResult {
        let ip = read_address(mem, addr)?;
        let port = u16::try_from(port).map_err(|_| Errno::INVAL)?;
        let (id, nonblock) = self.socket(fd)?;
        let peer = IpEndpoint::new(IpAddress::Ipv4(ip), port);
        let net = self.net.as_mut().ok_or(Errno::NOTSOCK)?;
        let is_stream = matches!(
            net.entry(id)?.socket,
            Socket::Fresh {
                kind: SockType::Stream,
                ..
            }
        );
        net.connect(id, peer)?;
        net.poll(&mut self.platform);
        if !is_stream {
            return Ok(());
        }
        if nonblock {
            return Err(Errno::INPROGRESS);
        }
        let result = self.blocking(false, Some(CONNECT_TIMEOUT_NS), |net, _| {
            match net.connect_state(id)? {
                true => Ok(()),
                false => Err(Errno::AGAIN),
            }
        });
        match result {
            Err(Errno::AGAIN) => Err(Errno::TIMEDOUT),
            r => r,
        }
    }

    pub(crate) fn sock_recv_from(
        &mut self,
        mem: &mut GuestMemory,
        args: &[u64],
        with_port: bool,
    ) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, iovs, count, addr, flags) = (a(0), a(1), a(2), a(3), a(4));
        let (port_out, out_len, out_flags) = if with_port {
            (Some(a(5)), a(6), a(7))
        } else {
            (None, a(5), a(6))
        };
        let iovs = mem.iovecs(iovs, count)?;
        // The address buffer: WasiAddress { buf, size } with room for the storage form.
        let (buf, size) = address_buffer(mem, addr)?;
        if size < 6 {
            return Err(Errno::INVAL);
        }
        mem.slice(buf, 6)?;
        let (id, nonblock) = self.socket(fd)?;
        if flags & !RECV_PEEK != 0 {
            return Err(Errno::INVAL);
        }
        let peek = flags & RECV_PEEK != 0;
        let timeout = self.net()?.entry(id)?.options.recv_timeout;
        let (n, truncated, from) = self.blocking(nonblock, timeout, |net, _| {
            let Socket::Dgram { handle, .. } = net.entry(id)?.socket else {
                return Err(Errno::NOTSUP);
            };
            let s = net.udp(handle);
            let from = s.peek().map_err(|_| Errno::AGAIN)?.1.endpoint;
            let (n, truncated) = read_datagram(s, mem, &iovs, peek)?;
            Ok((n, truncated, from))
        })?;
        let IpAddress::Ipv4(ip) = from.addr;
        mem.write_u16(buf, AF_INET4 as u16)?;
        mem.write_bytes(buf + 2, &ip.octets())?;
        if let Some(p) = port_out {
            mem.write_u32(p, u32::from(from.port))?;
        }
        mem.write_u32(out_len, n)?;
        mem.write_u16(out_flags, u16::from(truncated))
    }

    pub(crate) fn sock_send_to(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, iovs, count, addr, port, flags, out) = (a(0), a(1), a(2), a(3), a(4), a(5), a(6));
        if flags != 0 {
            return Err(Errno::INVAL);
        }
        let iovs = mem.iovecs(iovs, count)?;
        let ip = read_address(mem, addr)?;
        let port = u16::try_from(port).map_err(|_| Errno::INVAL)?;
        mem.slice(out, 4)?;
        let (id, nonblock) = self.socket(fd)?;
        let peer = IpEndpoint::new(IpAddress::Ipv4(ip), port);
        let net = self.net()?;
        if let Socket::Fresh {
            kind: SockType::Dgram,
            ..
        } = net.entry(id)?.socket
        {
            net.bind(
                id,
                IpListenEndpoint {
                    addr: None,
                    port: 0,
                },
            )?;
        }
        let timeout = net.entry(id)?.options.send_timeout;
        let n = self.blocking(nonblock, timeout, |net, platform| {
            let Socket::Dgram { handle, .. } = net.entry(id)?.socket else {
                return Err(Errno::NOTSUP);
            };
            let n = send_datagram(net, handle, mem, &iovs, peer)?;
            net.poll(platform);
            Ok(n)
        })?;
        mem.write_u32(out, n)
    }

    /// `sock_getlocaladdr` / `sock_getpeeraddr` (WasmEdge's four-argument form): the raw
    /// address into the buffer, its type as 4 (WasmEdge's convention), the port.
    pub(crate) fn sock_addr(
        &mut self,
        mem: &mut GuestMemory,
        args: &[u64],
        peer: bool,
    ) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, addr, type_out, port_out) = (a(0), a(1), a(2), a(3));
        let (id, _) = self.socket(fd)?;
        let (local, remote) = self.net()?.endpoints(id)?;
        let endpoint = if peer {
            remote.ok_or(Errno::NOTCONN)?
        } else {
            local.unwrap_or(IpEndpoint::new(
                IpAddress::Ipv4(Ipv4Address::UNSPECIFIED),
                0,
            ))
        };
        let (buf, size) = address_buffer(mem, addr)?;
        if size < 4 {
            return Err(Errno::NOMEM);
        }
        let IpAddress::Ipv4(ip) = endpoint.addr;
        mem.write_bytes(buf, &ip.octets())?;
        mem.write_u32(type_out, 4)?;
        mem.write_u32(port_out, u32::from(endpoint.port))
    }

    pub(crate) fn sock_setsockopt(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, level, name, value, len) = (a(0), a(1), a(2), a(3), a(4));
        if level != 0 || name > opt::LAST {
            return Err(Errno::INVAL);
        }
        let bytes = mem.copy(value, len)?;
        let int = || -> WasiResult<bool> {
            let b: [u8; 4] = bytes
                .get(..4)
                .ok_or(Errno::INVAL)?
                .try_into()
                .map_err(|_| Errno::INVAL)?;
            Ok(i32::from_le_bytes(b) != 0)
        };
        let timeval = || -> WasiResult<Option<u64>> {
            let sec = i64::from_le_bytes(
                bytes
                    .get(..8)
                    .ok_or(Errno::INVAL)?
                    .try_into()
                    .map_err(|_| Errno::INVAL)?,
            );
            let usec = i64::from_le_bytes(
                bytes
                    .get(8..16)
                    .ok_or(Errno::INVAL)?
                    .try_into()
                    .map_err(|_| Errno::INVAL)?,
            );
            if sec < 0 || !(0..1_000_000).contains(&usec) {
                return Err(Errno::INVAL);
            }
            let ns = (sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(usec as u64 * 1000);
            Ok((ns > 0).then_some(ns))
        };
        let (id, _) = self.socket(fd)?;
        let net = self.net()?;
        let entry = net.entry_mut(id)?;
        match name {
            opt::REUSEADDR => entry.options.reuse_addr = int()?,
            opt::KEEPALIVE => {
                let on = int()?;
                entry.options.keep_alive = on;
                if let Socket::Stream { handle, .. } = entry.socket {
                    let interval = on.then(|| smoltcp::time::Duration::from_secs(60));
                    net.tcp(handle).set_keep_alive(interval);
                }
            }
            opt::RCVTIMEO => entry.options.recv_timeout = timeval()?,
            opt::SNDTIMEO => entry.options.send_timeout = timeval()?,
            opt::TYPE | opt::ERROR | opt::ACCEPTCONN => return Err(Errno::NOPROTOOPT),
            // Buffer sizes, broadcast, linger, ...: accepted; the stack's choices stand.
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn sock_getsockopt(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (fd, level, name, value, len_ptr) = (a(0), a(1), a(2), a(3), a(4));
        if level != 0 || name > opt::LAST {
            return Err(Errno::INVAL);
        }
        let room = mem.read_u32(len_ptr)?;
        let (id, _) = self.socket(fd)?;
        let kind = match self.fd(fd)?.entry {
            Entry::Socket { kind, .. } => kind,
            _ => return Err(Errno::NOTSOCK),
        };
        let net = self.net()?;
        let entry = net.entry(id)?;
        let options = entry.options;
        let listening = matches!(entry.socket, Socket::Listener(_));
        let buffers = net.stream_buffers(id);
        let error = match entry.socket {
            Socket::Stream { .. } => match net.connect_state(id) {
                Err(e) => e.0 as i32,
                Ok(_) => 0,
            },
            _ => 0,
        };
        let timeval = |ns: Option<u64>| {
            let ns = ns.unwrap_or(0);
            let mut b = Vec::with_capacity(16);
            b.extend_from_slice(&((ns / 1_000_000_000) as i64).to_le_bytes());
            b.extend_from_slice(&(((ns % 1_000_000_000) / 1000) as i64).to_le_bytes());
            b
        };
        let int = |v: i32| v.to_le_bytes().to_vec();
        let bytes = match name {
            opt::REUSEADDR => int(options.reuse_addr as i32),
            opt::TYPE => int(match kind {
                SockType::Stream => SOCK_STREAM as i32,
                SockType::Dgram => SOCK_DGRAM as i32,
            }),
            opt::ERROR => int(error),
            opt::KEEPALIVE => int(options.keep_alive as i32),
            // A connection's own sizes (smaller when it was made while memory ran low).
            opt::SNDBUF => int(buffers.map_or(crate::net::TCP_TX_BUFFER, |b| b.1) as i32),
            opt::RCVBUF => int(buffers.map_or(crate::net::TCP_RX_BUFFER, |b| b.0) as i32),
            opt::RCVTIMEO => timeval(options.recv_timeout),
            opt::SNDTIMEO => timeval(options.send_timeout),
            opt::ACCEPTCONN => int(listening as i32),
            _ => int(0),
        };
        if (room as usize) < bytes.len() {
            return Err(Errno::INVAL);
        }
        mem.write_bytes(value, &bytes)?;
        mem.write_u32(len_ptr, bytes.len() as u32)
    }

    /// WasmEdge `sock_getaddrinfo`: IPv4 literals answer at once, names go to the DNS
    /// server the network configuration names. The caller pre-links `max` result nodes.
    pub(crate) fn sock_getaddrinfo(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| arg(args, i);
        let (node, node_len, service, service_len, _hints, res, max, res_len) =
            (a(0), a(1), a(2), a(3), a(4), a(5), a(6), a(7));
        let trim = |b: &[u8]| -> Vec<u8> {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            b[..end].to_vec()
        };
        let name = trim(mem.slice(node, node_len)?);
        let service = trim(mem.slice(service, service_len)?);
        mem.slice(res_len, 4)?;
        if name.is_empty() && service.is_empty() {
            return Err(Errno::AI_NONAME);
        }
        if max == 0 {
            return Err(Errno::NOMEM);
        }
        let port: u16 = match &service[..] {
            b"" => 0,
            b"http" => 80,
            b"https" => 443,
            digits => core::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Errno::AI_NONAME)?,
        };
        let addrs = self.resolve(&name)?;
        let mut node_ptr = mem.read_u32(res)?;
        let mut written = 0;
        for ip in addrs.iter().take(max as usize) {
            if node_ptr == 0 {
                break;
            }
            // addrinfo: flags u16, family u8, socktype u8, protocol u8, pad, addrlen u32,
            // addr ptr, canonname ptr, canonname len, next ptr.
            mem.write_u16(node_ptr, 0)?;
            mem.write_u8(node_ptr + 2, AF_INET4 as u8)?;
            mem.write_u8(node_ptr + 3, SOCK_STREAM as u8)?;
            mem.write_u8(node_ptr + 4, 1)?;
            mem.write_u32(node_ptr + 8, 16)?;
            // sockaddr: family u8, pad, data len u32, data ptr -> [port BE][addr][zeros].
            let sockaddr = mem.read_u32(node_ptr + 12)?;
            mem.write_u8(sockaddr, AF_INET4 as u8)?;
            let data = mem.read_u32(sockaddr + 8)?;
            let mut sa = [0u8; 14];
            sa[..2].copy_from_slice(&port.to_be_bytes());
            sa[2..6].copy_from_slice(&ip.octets());
            mem.write_bytes(data, &sa)?;
            mem.write_u32(sockaddr + 4, sa.len() as u32)?;
            mem.write_u32(node_ptr + 20, 0)?;
            written += 1;
            node_ptr = mem.read_u32(node_ptr + 24)?;
        }
        mem.write_u32(res_len, written)
    }

    /// IPv4 addresses of `name`: a literal, `localhost`, or a DNS A query.
    fn resolve(&mut self, name: &[u8]) -> WasiResult<Vec<Ipv4Address>> {
        let text = core::str::from_utf8(name).map_err(|_| Errno::AI_NONAME)?;
        if let Ok(ip) = text.parse::<core::net::Ipv4Addr>() {
            return Ok(alloc::vec![Ipv4Address::from(ip.octets())]);
        }
        if text.is_empty() || text == "localhost" {
            return Ok(alloc::vec![Ipv4Address::new(127, 0, 0, 1)]);
        }
        let net = self.net.as_mut().ok_or(Errno::AI_FAIL)?;
        net.start_query(text)?;
        let result = self.blocking(false, Some(DNS_TIMEOUT_NS), |net, _| net.query_result());
        if let Some(net) = self.net.as_mut() {
            net.end_query();
        }
        match result {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            Ok(_) => Err(Errno::AI_NONAME),
            Err(Errno::AGAIN) => Err(Errno::AI_FAIL),
            Err(e) => Err(e),
        }
    }
}

/// A socket descriptor.
fn socket_fd(id: SockId, kind: SockType, flags: u16) -> Fd {
    Fd {
        entry: Entry::Socket { id, kind },
        rights: rights::SOCKET,
        inheriting: 0,
        flags: flags & fdflags::NONBLOCK,
    }
}

/// Argument `i` of a call, as the 32-bit value every socket call passes.
fn arg(args: &[u64], i: usize) -> u32 {
    args.get(i).copied().unwrap_or(0) as u32
}

/// The `{ buf, size }` of a WasmEdge `WasiAddress` at `addr`.
fn address_buffer(mem: &GuestMemory, addr: u32) -> WasiResult<(u32, u32)> {
    let buf = mem.read_u32(addr)?;
    let size = mem.read_u32(addr.checked_add(4).ok_or(Errno::FAULT)?)?;
    Ok((buf, size))
}

/// Reads a WasmEdge `WasiAddress { buf, size }`: 4 raw bytes, or the 128-byte storage form
/// (family `u16`, then the address).
fn read_address(mem: &GuestMemory, addr: u32) -> WasiResult<Ipv4Address> {
    let (buf, size) = address_buffer(mem, addr)?;
    let octets: [u8; 4] = match size {
        4 => mem.slice(buf, 4)?.try_into().map_err(|_| Errno::FAULT)?,
        16 => return Err(Errno::AFNOSUPPORT),
        128 => {
            let b = mem.slice(buf, 6)?;
            match u16::from_le_bytes([b[0], b[1]]) as u32 {
                AF_INET4 => [b[2], b[3], b[4], b[5]],
                AF_INET6 => return Err(Errno::AFNOSUPPORT),
                _ => return Err(Errno::INVAL),
            }
        }
        _ => return Err(Errno::INVAL),
    };
    Ok(Ipv4Address::from(octets))
}

/// Copies from a TCP socket into the iovecs, skipping the first `skip` bytes of them
/// (already filled by an earlier round of a WAITALL read).
fn read_stream(
    s: &mut tcp::Socket<'static>,
    mem: &mut GuestMemory,
    iovs: &[(u32, u32)],
    mut skip: u32,
    peek: bool,
) -> WasiResult<u32> {
    let mut total: u32 = 0;
    let mut peeked: usize = 0;
    for &(ptr, len) in iovs {
        let len = len.min(MAX_IO);
        if skip >= len {
            skip -= len;
            continue;
        }
        let buf = mem.slice_mut(ptr + skip, len - skip)?;
        skip = 0;
        let n = if peek {
            let avail = s.peek(peeked + buf.len()).map_err(|_| Errno::NOTCONN)?;
            let slice = avail.get(peeked..).unwrap_or(&[]);
            let n = slice.len().min(buf.len());
            buf[..n].copy_from_slice(&slice[..n]);
            peeked += n;
            n
        } else {
            s.recv_slice(buf).map_err(|_| Errno::NOTCONN)?
        };
        total += n as u32;
        if n < buf.len() {
            break;
        }
    }
    Ok(total)
}

fn write_stream(
    s: &mut tcp::Socket<'static>,
    mem: &GuestMemory,
    iovs: &[(u32, u32)],
    mut skip: u32,
) -> WasiResult<u32> {
    let mut total: u32 = 0;
    for &(ptr, len) in iovs {
        let len = len.min(MAX_IO);
        if skip >= len {
            skip -= len;
            continue;
        }
        let bytes = mem.slice(ptr + skip, len - skip)?;
        skip = 0;
        let n = s.send_slice(bytes).map_err(|_| Errno::PIPE)?;
        total += n as u32;
        if n < bytes.len() {
            break;
        }
    }
    Ok(total)
}

/// Receives one datagram into the iovecs; returns its bytes and whether it was truncated.
fn read_datagram(
    s: &mut smoltcp::socket::udp::Socket<'static>,
    mem: &mut GuestMemory,
    iovs: &[(u32, u32)],
    peek: bool,
) -> WasiResult<(u32, bool)> {
    let payload: Vec<u8> = if peek {
        s.peek().map_err(|_| Errno::AGAIN)?.0.to_vec()
    } else {
        s.recv().map_err(|_| Errno::AGAIN)?.0.to_vec()
    };
    let mut at = 0;
    for &(ptr, len) in iovs {
        let n = (len as usize).min(payload.len() - at);
        mem.write_bytes(ptr, &payload[at..at + n])?;
        at += n;
        if at == payload.len() {
            break;
        }
    }
    Ok((at as u32, at < payload.len()))
}

fn send_datagram(
    net: &mut Net,
    handle: smoltcp::iface::SocketHandle,
    mem: &GuestMemory,
    iovs: &[(u32, u32)],
    peer: IpEndpoint,
) -> WasiResult<u32> {
    let mut payload = Vec::new();
    for &(ptr, len) in iovs {
        let bytes = mem.slice(ptr, len)?;
        payload.try_reserve(bytes.len()).map_err(|_| Errno::NOMEM)?;
        payload.extend_from_slice(bytes);
        if payload.len() > u16::MAX as usize {
            return Err(Errno::MSGSIZE);
        }
    }
    let s = net.udp(handle);
    if !s.can_send() {
        return Err(Errno::AGAIN);
    }
    match s.send_slice(&payload, peer) {
        Ok(()) => Ok(payload.len() as u32),
        Err(smoltcp::socket::udp::SendError::BufferFull) => Err(Errno::AGAIN),
        Err(smoltcp::socket::udp::SendError::Unaddressable) => Err(Errno::HOSTUNREACH),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Func;
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::RefCell;
    use std::collections::VecDeque;
    use wasmvm_abi::net::NetConfig;

    /// Two cards joined by a wire; every call to the clock moves it on a millisecond, so
    /// timers fire without real waiting.
    #[derive(Default)]
    struct Wire {
        frames: [VecDeque<Vec<u8>>; 2],
        clock: u64,
        /// Frames carrying data (longer than any bare header) the wire drops next, by the
        /// side that sends them.
        lose_data: [u32; 2],
        /// The window field of every TCP segment the guest (side 0) sent, in order.
        guest_windows: Vec<u16>,
        /// The last TCP segment the guest sent.
        last_guest_segment: Option<Vec<u8>>,
    }

    struct End {
        wire: Rc<RefCell<Wire>>,
        side: usize,
    }

    impl Platform for End {
        fn write(&mut self, _: crate::Stdio, _: &[u8]) {}
        fn read_stdin(&mut self, _: &mut [u8]) -> usize {
            0
        }
        fn now_ns(&mut self, _: Clock) -> u64 {
            let mut w = self.wire.borrow_mut();
            w.clock += 1_000_000;
            w.clock
        }
        fn resolution_ns(&self, _: Clock) -> u64 {
            1
        }
        fn random(&mut self, buf: &mut [u8]) {
            buf.fill(self.side as u8 + 1);
        }
        fn net_receive(&mut self, frame: &mut Vec<u8>) -> bool {
            match self.wire.borrow_mut().frames[self.side].pop_front() {
                Some(f) => {
                    *frame = f;
                    true
                }
                None => false,
            }
        }
        fn net_can_send(&mut self) -> bool {
            true
        }
        fn net_send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> bool {
            let mut frame = vec![0; len];
            fill(&mut frame);
            let mut wire = self.wire.borrow_mut();
            if self.side == 0
                && let Some(window) = tcp_window(&frame)
            {
                wire.guest_windows.push(window);
                wire.last_guest_segment = Some(frame.clone());
            }
            if len > 100 && wire.lose_data[self.side] > 0 {
                wire.lose_data[self.side] -= 1;
                return true;
            }
            wire.frames[1 - self.side].push_back(frame);
            true
        }
    }

    /// The window field of the TCP segment in an Ethernet frame, if it holds one.
    fn tcp_window(frame: &[u8]) -> Option<u16> {
        tcp_fields(frame).map(|f| f.window)
    }

    /// What the tests read of a TCP segment.
    struct TcpFields {
        seq: smoltcp::wire::TcpSeqNumber,
        payload_len: usize,
        window: u16,
    }

    /// The fields of the TCP segment in an Ethernet frame, if it holds one.
    fn tcp_fields(frame: &[u8]) -> Option<TcpFields> {
        use smoltcp::wire::{EthernetFrame, IpProtocol, Ipv4Packet, TcpPacket};
        let ip = Ipv4Packet::new_checked(EthernetFrame::new_checked(frame).ok()?.payload()).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        Some(TcpFields {
            seq: tcp.seq_number(),
            payload_len: tcp.payload().len(),
            window: tcp.window_len(),
        })
    }

    const GUEST: [u8; 4] = [10, 0, 2, 15];
    const HOST: [u8; 4] = [10, 0, 2, 2];

    fn world(wire: &Rc<RefCell<Wire>>, side: usize) -> Wasi<End> {
        world_with_memory(wire, side, 64 << 20)
    }

    /// A [`world`] whose sockets may take `socket_memory` bytes of buffers.
    fn world_with_memory(wire: &Rc<RefCell<Wire>>, side: usize, socket_memory: usize) -> Wasi<End> {
        let mut w = Wasi::new(
            End {
                wire: wire.clone(),
                side,
            },
            vec![b"app".to_vec()],
            vec![],
        );
        let addr = if side == 0 { GUEST } else { HOST };
        w.attach_network(Nic {
            mac: [2, 0, 0, 0, 0, side as u8 + 1],
            config: Some(NetConfig {
                addr,
                prefix_len: 24,
                gateway: HOST,
                dns: HOST,
                mtu: 1500,
            }),
            mtu: 1500,
            socket_memory,
        });
        w
    }

    fn pair() -> (Wasi<End>, Wasi<End>) {
        let wire = Rc::new(RefCell::new(Wire::default()));
        (world(&wire, 0), world(&wire, 1))
    }

    /// A [`pair`] whose guest has a preopened listener on any address at `port`: fd 3.
    fn listening_pair(port: u16) -> (Wasi<End>, Wasi<End>) {
        let (mut guest, host) = pair();
        let listener = guest
            .preopen_listener(Listen { addr: [0; 4], port })
            .unwrap();
        assert_eq!(listener, 3);
        (guest, host)
    }

    /// Runs both stacks until the wire is quiet.
    fn pump(a: &mut Wasi<End>, b: &mut Wasi<End>) {
        for _ in 0..50 {
            a.net.as_mut().unwrap().poll(&mut a.platform);
            b.net.as_mut().unwrap().poll(&mut b.platform);
        }
    }

    fn call(w: &mut Wasi<End>, mem: &mut [u8], f: Func, args: &[u64]) -> Errno {
        w.call(f, mem, args).expect("no exit")
    }

    fn nonblocking(w: &mut Wasi<End>, mem: &mut [u8], fd: u32) {
        let e = call(w, mem, Func::FdFdstatSetFlags, &[fd as u64, 4]);
        assert_eq!(e, Errno::SUCCESS);
    }

    /// WasmEdge `sock_open` + non-blocking `sock_connect` to `ip:port`.
    fn connect(w: &mut Wasi<End>, mem: &mut [u8], ip: [u8; 4], port: u16) -> u32 {
        assert_eq!(call(w, mem, Func::SockOpen, &[1, 2, 100]), Errno::SUCCESS);
        let fd = u32::from_le_bytes(mem[100..104].try_into().unwrap());
        nonblocking(w, mem, fd);
        mem[48..52].copy_from_slice(&ip);
        mem[32..36].copy_from_slice(&48u32.to_le_bytes());
        mem[36..40].copy_from_slice(&4u32.to_le_bytes());
        let e = call(w, mem, Func::SockConnect, &[fd as u64, 32, port as u64]);
        assert_eq!(e, Errno::INPROGRESS);
        fd
    }

    fn send(w: &mut Wasi<End>, mem: &mut [u8], fd: u32, data: &[u8]) -> (Errno, u32) {
        mem[1024..1024 + data.len()].copy_from_slice(data);
        mem[0..4].copy_from_slice(&1024u32.to_le_bytes());
        mem[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let e = call(w, mem, Func::SockSend, &[fd as u64, 0, 1, 0, 16]);
        (e, u32::from_le_bytes(mem[16..20].try_into().unwrap()))
    }

    fn recv(w: &mut Wasi<End>, mem: &mut [u8], fd: u32, max: u32) -> (Errno, Vec<u8>) {
        mem[0..4].copy_from_slice(&1024u32.to_le_bytes());
        mem[4..8].copy_from_slice(&max.to_le_bytes());
        let e = call(w, mem, Func::SockRecv, &[fd as u64, 0, 1, 0, 16, 20]);
        let n = u32::from_le_bytes(mem[16..20].try_into().unwrap()) as usize;
        (e, mem[1024..1024 + n].to_vec())
    }

    fn accept(w: &mut Wasi<End>, mem: &mut [u8], fd: u32) -> (Errno, u32) {
        let e = call(w, mem, Func::SockAccept, &[fd as u64, 4, 100]);
        (e, u32::from_le_bytes(mem[100..104].try_into().unwrap()))
    }

    /// The host connects to the guest's nonblocking `listener` on `port` and the guest
    /// accepts: (the host's descriptor, the guest's).
    fn connect_and_accept(
        (guest, gm): (&mut Wasi<End>, &mut [u8]),
        (host, hm): (&mut Wasi<End>, &mut [u8]),
        listener: u32,
        port: u16,
    ) -> (u32, u32) {
        let client = connect(host, hm, GUEST, port);
        pump(guest, host);
        let (e, conn) = accept(guest, gm, listener);
        assert_eq!(e, Errno::SUCCESS, "accepting on port {port}");
        (client, conn)
    }

    /// Two stacks with one connection to the guest's listener on `port`: the guest, the
    /// host, their memories, the host's descriptor and the guest's.
    fn connected_pair(port: u16) -> (Wasi<End>, Wasi<End>, Vec<u8>, Vec<u8>, u32, u32) {
        let (mut guest, mut host) = listening_pair(port);
        let (mut gm, mut hm) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        nonblocking(&mut guest, &mut gm, 3);
        let (client, conn) =
            connect_and_accept((&mut guest, &mut gm), (&mut host, &mut hm), 3, port);
        (guest, host, gm, hm, client, conn)
    }

    #[test]
    fn a_preopened_listener_accepts_and_talks() {
        let (mut guest, mut host) = listening_pair(8080);
        let (mut gm, mut hm) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        // A socket descriptor says so in its fdstat, with accept among its rights.
        assert_eq!(
            call(&mut guest, &mut gm, Func::FdFdstatGet, &[3, 200]),
            Errno::SUCCESS
        );
        assert_eq!(gm[200], crate::filetype::SOCKET_STREAM);
        nonblocking(&mut guest, &mut gm, 3);
        assert_eq!(accept(&mut guest, &mut gm, 3).0, Errno::AGAIN);

        let client = connect(&mut host, &mut hm, GUEST, 8080);
        pump(&mut guest, &mut host);
        let (e, conn) = accept(&mut guest, &mut gm, 3);
        assert_eq!(e, Errno::SUCCESS);
        assert_eq!(
            send(&mut host, &mut hm, client, b"ping"),
            (Errno::SUCCESS, 4)
        );
        pump(&mut guest, &mut host);
        assert_eq!(
            recv(&mut guest, &mut gm, conn, 64),
            (Errno::SUCCESS, b"ping".to_vec())
        );
        assert_eq!(recv(&mut guest, &mut gm, conn, 64).0, Errno::AGAIN);
        // fd_write and fd_read work on sockets too.
        gm[1024..1028].copy_from_slice(b"pong");
        gm[0..4].copy_from_slice(&1024u32.to_le_bytes());
        gm[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            call(&mut guest, &mut gm, Func::FdWrite, &[conn as u64, 0, 1, 16]),
            Errno::SUCCESS
        );
        pump(&mut guest, &mut host);
        assert_eq!(
            recv(&mut host, &mut hm, client, 64),
            (Errno::SUCCESS, b"pong".to_vec())
        );
        // The peer's shutdown reads as end of file, and the socket polls as hung up.
        assert_eq!(
            call(&mut host, &mut hm, Func::SockShutdown, &[client as u64, 2]),
            Errno::SUCCESS
        );
        pump(&mut guest, &mut host);
        assert_eq!(
            recv(&mut guest, &mut gm, conn, 64),
            (Errno::SUCCESS, vec![])
        );
        // Peer addresses as WasmEdge reports them.
        gm[32..36].copy_from_slice(&48u32.to_le_bytes());
        gm[36..40].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(
            call(
                &mut guest,
                &mut gm,
                Func::SockGetPeerAddr,
                &[conn as u64, 32, 64, 68]
            ),
            Errno::SUCCESS
        );
        assert_eq!(&gm[48..52], &HOST);
        assert_eq!(u32::from_le_bytes(gm[64..68].try_into().unwrap()), 4);
        assert_ne!(u32::from_le_bytes(gm[68..72].try_into().unwrap()), 0);
        assert_eq!(
            call(&mut guest, &mut gm, Func::FdClose, &[conn as u64]),
            Errno::SUCCESS
        );
        pump(&mut guest, &mut host);
        assert!(guest.net.as_ref().unwrap().settled());
    }

    #[test]
    fn sockets_serve_connection_after_connection_and_each_sees_only_its_own_bytes() {
        let (mut guest, mut host) = listening_pair(8080);
        let (mut gm, mut hm) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        nonblocking(&mut guest, &mut gm, 3);
        for round in 0..40 {
            let (client, conn) =
                connect_and_accept((&mut guest, &mut gm), (&mut host, &mut hm), 3, 8080);
            let request = alloc::format!("request {round}");
            assert_eq!(
                send(&mut host, &mut hm, client, request.as_bytes()).0,
                Errno::SUCCESS
            );
            pump(&mut guest, &mut host);
            assert_eq!(
                recv(&mut guest, &mut gm, conn, 64),
                (Errno::SUCCESS, request.into_bytes()),
                "round {round}"
            );
            // Bytes left unread on both sides when the connection ends: a socket that
            // serves again must not hand them to the next connection.
            assert_eq!(
                send(&mut host, &mut hm, client, b"left unread").0,
                Errno::SUCCESS
            );
            let reply = alloc::format!("reply {round}");
            assert_eq!(
                send(&mut guest, &mut gm, conn, reply.as_bytes()).0,
                Errno::SUCCESS
            );
            assert_eq!(
                send(&mut guest, &mut gm, conn, b"also unread").0,
                Errno::SUCCESS
            );
            pump(&mut guest, &mut host);
            assert_eq!(
                recv(&mut host, &mut hm, client, reply.len() as u32),
                (Errno::SUCCESS, reply.into_bytes()),
                "round {round}"
            );
            for (w, m, fd) in [(&mut guest, &mut gm, conn), (&mut host, &mut hm, client)] {
                assert_eq!(call(w, m, Func::FdClose, &[fd as u64]), Errno::SUCCESS);
            }
            // Both ends close with bytes unread, so both reset: the stacks take the
            // closed sockets back at their next polls.
            for _ in 0..3 {
                pump(&mut guest, &mut host);
            }
        }
        // Both sides' sockets served again: the guest's as spares of its listener, the
        // host's for `sock_connect`.
        for (side, w) in [("guest", &guest), ("host", &host)] {
            let reused = w.net.as_ref().unwrap().sockets_reused();
            assert!(
                reused >= 30,
                "{side}: {reused} sockets reused in 40 connections"
            );
        }
    }

    #[test]
    fn a_default_vms_socket_memory_holds_sixty_listeners_and_each_accepts() {
        // A 64 MiB VM's socket memory: a quarter of its ~60 MiB heap.
        let wire = Rc::new(RefCell::new(Wire::default()));
        let (mut guest, mut host) = (world_with_memory(&wire, 0, 15 << 20), world(&wire, 1));
        let (mut gm, mut hm) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut listeners = Vec::new();
        let refused = loop {
            let port = 9000 + listeners.len() as u16;
            match guest.preopen_listener(Listen { addr: [0; 4], port }) {
                Ok(fd) => listeners.push((fd, port)),
                Err(e) => break e,
            }
        };
        assert_eq!(refused, Errno::NOBUFS);
        assert!(listeners.len() >= 60, "{} listeners", listeners.len());
        // The stack tops the spares up as memory allows; every listener still accepts.
        pump(&mut guest, &mut host);
        let refused = guest.net.as_ref().unwrap().sockets_refused();
        for &(fd, port) in [listeners[0], listeners[listeners.len() - 1]].iter() {
            nonblocking(&mut guest, &mut gm, fd);
            let (client, conn) =
                connect_and_accept((&mut guest, &mut gm), (&mut host, &mut hm), fd, port);
            for (w, m, fd) in [(&mut guest, &mut gm, conn), (&mut host, &mut hm, client)] {
                assert_eq!(call(w, m, Func::FdClose, &[fd as u64]), Errno::SUCCESS);
            }
            pump(&mut guest, &mut host);
        }
        // With memory full, the listeners' spares are topped up in vain after every packet:
        // a refusal counts once for each listener that ran out, not once per attempt.
        let refused = guest.net.as_ref().unwrap().sockets_refused() - refused;
        assert!(
            refused <= 2,
            "{refused} refusals counted for two connections"
        );
    }

    /// A bare ACK for the TCP segment in the Ethernet `frame`, from its receiver: `ack`
    /// and `window` as given.
    fn ack_for(frame: &[u8], ack: smoltcp::wire::TcpSeqNumber, window: u16) -> Vec<u8> {
        reply_to(frame, 0, ack, window, smoltcp::wire::TcpControl::None, &[])
    }

    /// A TCP segment answering the one in the Ethernet `frame`, from its receiver: its
    /// sequence number `offset` past what the frame acknowledges (wrapping; negative is
    /// before it), with `ack`, `window`,
    /// `control` and `payload` as given.
    fn reply_to(
        frame: &[u8],
        offset: i32,
        ack: smoltcp::wire::TcpSeqNumber,
        window: u16,
        control: smoltcp::wire::TcpControl,
        payload: &[u8],
    ) -> Vec<u8> {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
            TcpPacket, TcpRepr,
        };
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let tcp_repr = TcpRepr {
            src_port: tcp.dst_port(),
            dst_port: tcp.src_port(),
            control,
            seq_number: smoltcp::wire::TcpSeqNumber(tcp.ack_number().0.wrapping_add(offset)),
            ack_number: Some(ack),
            window_len: window,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip_repr = Ipv4Repr {
            src_addr: ip.dst_addr(),
            dst_addr: ip.src_addr(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp_repr.buffer_len(),
            hop_limit: 64,
        };
        let eth_repr = EthernetRepr {
            src_addr: eth.dst_addr(),
            dst_addr: eth.src_addr(),
            ethertype: EthernetProtocol::Ipv4,
        };
        let caps = ChecksumCapabilities::default();
        let mut buf = vec![0; eth_repr.buffer_len() + ip_repr.buffer_len() + tcp_repr.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth_repr.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip_repr.emit(&mut p, &caps);
        let (src, dst) = (
            IpAddress::Ipv4(ip_repr.src_addr),
            IpAddress::Ipv4(ip_repr.dst_addr),
        );
        tcp_repr.emit(
            &mut TcpPacket::new_unchecked(p.payload_mut()),
            &src,
            &dst,
            &caps,
        );
        buf
    }

    /// The sequence number of the TCP segment in the Ethernet `frame`.
    fn seq_of(frame: &[u8]) -> smoltcp::wire::TcpSeqNumber {
        tcp_fields(frame).expect("a TCP segment").seq
    }

    #[test]
    fn data_in_flight_is_sent_again_after_a_silent_window_update_and_every_two_seconds() {
        // passt acknowledges data only as its own peer does: a slow reader's passt closes
        // the window, reopens it a little, and says nothing more until the guest sends
        // again. smoltcp then stopped its zero-window probe timer and left the data in
        // flight without a retransmission timer: the download stood still for good
        // (vendor/smoltcp/WASMVM.md).
        let (mut guest, _host, mut gm, _hm, _client, conn) = connected_pair(8080);
        let wire = guest.platform.wire.clone();
        let data = vec![9u8; 256 << 10];
        assert_eq!(send(&mut guest, &mut gm, conn, &data).0, Errno::SUCCESS);
        guest.net.as_mut().unwrap().poll(&mut guest.platform);
        // The host side takes the segments and stays silent, as passt does.
        let sent: Vec<Vec<u8>> = wire.borrow_mut().frames[1].drain(..).collect();
        let first = sent.iter().find(|f| f.len() > 100).expect("data segments");
        let una = seq_of(first);
        let last = sent.last().unwrap().clone();
        for window in [0, 16] {
            let ack = ack_for(&last, una + 1000, window);
            wire.borrow_mut().frames[0].push_back(ack);
            guest.net.as_mut().unwrap().poll(&mut guest.platform);
        }
        wire.borrow_mut().frames[1].clear();
        let start = wire.borrow().clock;
        while wire.borrow().frames[1].is_empty() {
            assert!(
                wire.borrow().clock - start < 10_000_000_000,
                "nothing sent again in 10 s with data in flight"
            );
            guest.net.as_mut().unwrap().poll(&mut guest.platform);
        }
        let again = wire.borrow().frames[1][0].clone();
        assert_eq!(
            seq_of(&again),
            una + 1000,
            "the first unacknowledged byte, sent again"
        );
        // The peer answers the retransmission with its window closed again, still without
        // acknowledging anything new, and then stays silent (a reader that paused): the
        // guest keeps probing, at most 2 s apart however long the pause (upstream went
        // idle when its retransmission timer met the closed window; RFC 6298's 60 s cap
        // held a download still for up to a minute after its reader resumed).
        wire.borrow_mut().frames[1].clear();
        let ack = ack_for(&again, una + 1000, 0);
        wire.borrow_mut().frames[0].push_back(ack);
        let (mut last_sent, mut longest) = (wire.borrow().clock, 0);
        while wire.borrow().clock - start < 60_000_000_000 {
            guest.net.as_mut().unwrap().poll(&mut guest.platform);
            let mut w = wire.borrow_mut();
            if !w.frames[1].is_empty() {
                w.frames[1].clear();
                longest = longest.max(w.clock - last_sent);
                last_sent = w.clock;
            }
        }
        assert!(
            longest <= 2_100_000_000 && wire.borrow().clock - last_sent <= 2_100_000_000,
            "{} ms between retransmissions or probes",
            longest / 1_000_000
        );
    }

    #[test]
    fn a_buffer_halved_for_lack_of_memory_advertises_all_of_itself() {
        // There the window bounds throughput: half of a 4 KiB buffer halved the rate of an
        // upload beside 60 idle connections.
        let wire = Rc::new(RefCell::new(Wire::default()));
        let (mut guest, mut host) = (world_with_memory(&wire, 0, 1 << 20), world(&wire, 1));
        let listener = guest
            .preopen_listener(Listen {
                addr: [0; 4],
                port: 8080,
            })
            .unwrap();
        let (mut gm, mut hm) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        nonblocking(&mut guest, &mut gm, listener);
        let (_, conn) =
            connect_and_accept((&mut guest, &mut gm), (&mut host, &mut hm), listener, 8080);
        gm[200..204].copy_from_slice(&4u32.to_le_bytes());
        let args = [conn as u64, 0, opt::RCVBUF as u64, 100, 200];
        assert_eq!(
            call(&mut guest, &mut gm, Func::SockGetSockOpt, &args),
            Errno::SUCCESS
        );
        let rx = u32::from_le_bytes(gm[100..104].try_into().unwrap()) as usize;
        // Small enough that its SYN-ACK's window (never scaled) shows all of it.
        assert!(rx <= usize::from(u16::MAX), "a {rx}-byte receive buffer");
        let syn_ack = wire.borrow().last_guest_segment.clone().unwrap();
        assert_eq!(usize::from(tcp_window(&syn_ack).unwrap()), rx);
    }

    #[test]
    fn a_peer_that_sends_past_the_free_buffer_right_after_the_handshake_gets_what_fits() {
        // The guest's SYN-ACK advertises its window unscaled; smoltcp read it as scaled
        // until the guest's next segment, so it accepted twice its 256 KiB buffer, and the
        // ring buffer panicked: any peer on a tap network could end the VM that way.
        let (mut guest, _host, mut gm, _hm, _client, conn) = connected_pair(8080);
        let wire = guest.platform.wire.clone();
        let syn_ack = wire.borrow().last_guest_segment.clone().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for (i, chunk) in data.chunks(1400).enumerate() {
            let segment = reply_to(
                &syn_ack,
                i as i32 * 1400,
                seq_of(&syn_ack) + 1,
                65535,
                smoltcp::wire::TcpControl::None,
                chunk,
            );
            wire.borrow_mut().frames[0].push_back(segment);
        }
        // One poll takes every segment before the guest sends anything.
        guest.net.as_mut().unwrap().poll(&mut guest.platform);
        let mut got = Vec::new();
        loop {
            match recv(&mut guest, &mut gm, conn, 100_000) {
                (Errno::SUCCESS, chunk) if !chunk.is_empty() => got.extend(chunk),
                _ => break,
            }
        }
        assert!(
            !got.is_empty() && got.len() <= crate::net::TCP_RX_BUFFER && data.starts_with(&got),
            "took {} bytes of {}",
            got.len(),
            data.len()
        );
    }

    #[test]
    fn crafted_segments_from_a_peer_never_panic_the_guest() {
        // Whoever reaches a published port speaks TCP to the guest's stack: segments at,
        // around and far from the expected sequence numbers, with any flags, windows and
        // lengths, interleaved with the app reading and writing, must never panic it.
        use smoltcp::wire::TcpControl;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut total = 0;
        for round in 0..40 {
            let (mut guest, _host, mut gm, _hm, _client, conn) = connected_pair(8080);
            let wire = guest.platform.wire.clone();
            let syn_ack = wire.borrow().last_guest_segment.clone().unwrap();
            let their_ack = seq_of(&syn_ack) + 1;
            let payload = vec![round as u8; 60_000];
            // Where the peer's in-order stream has got to: most segments continue it.
            let mut cursor = 0i32;
            let mut received = 0;
            for _ in 0..200 {
                let r = next();
                let offset = match r % 8 {
                    0 => (r >> 8) as i32 % 4096,
                    1 => (r >> 8) as i32 % (600 << 10),
                    2 => -((r >> 8) as i32 % 4096),
                    3 => (r >> 8) as i32,
                    _ => cursor,
                };
                let ack = match (r >> 20) % 8 {
                    0 => their_ack + (r >> 24) as usize % (700 << 10),
                    1 => smoltcp::wire::TcpSeqNumber((r >> 32) as i32),
                    _ => their_ack,
                };
                // A reset ends the connection and a SYN may: both rare, so that most of a
                // round works on a live connection.
                let control = match (r >> 40) % 64 {
                    0 => TcpControl::Rst,
                    1 | 2 => TcpControl::Syn,
                    3..=6 => TcpControl::Fin,
                    7..=14 => TcpControl::Psh,
                    _ => TcpControl::None,
                };
                let len = match (r >> 44) % 4 {
                    0 => 0,
                    1 => (r >> 48) as usize % 1500,
                    _ => (r >> 48) as usize % payload.len(),
                };
                let window = (r >> 52) as u16;
                let segment = reply_to(&syn_ack, offset, ack, window, control, &payload[..len]);
                if offset == cursor {
                    cursor = cursor.wrapping_add(len as i32);
                }
                wire.borrow_mut().frames[0].push_back(segment);
                if r % 11 == 0 {
                    let (_, got) = recv(&mut guest, &mut gm, conn, 100_000);
                    received += got.len();
                }
                if r % 13 == 0 {
                    let _ = send(
                        &mut guest,
                        &mut gm,
                        conn,
                        &payload[..(r as usize >> 8) % 50_000],
                    );
                }
                // Bursts: the guest takes several segments before it answers any.
                if (r >> 60) % 8 == 0 {
                    guest.net.as_mut().unwrap().poll(&mut guest.platform);
                    wire.borrow_mut().frames[1].clear();
                }
            }
            total += received;
        }
        // The rounds exercised live connections, not only resets.
        assert!(total > 1 << 20, "the app read {total} bytes in all");
    }

    /// The end of the TCP segment in an Ethernet frame: its sequence number plus its
    /// payload's length.
    fn end_of(frame: &[u8]) -> smoltcp::wire::TcpSeqNumber {
        let tcp = tcp_fields(frame).expect("a TCP segment");
        tcp.seq + tcp.payload_len
    }

    #[test]
    fn a_closed_window_that_takes_each_probe_byte_is_probed_less_and_less_often() {
        // A download to a reader that stopped: passt's socket to it takes a probe's one byte
        // now and then and acknowledges it with the window still closed. Upstream restarts
        // the probe timer at the retransmission timeout (50 ms here) on every such ACK, and
        // each stuck reader woke its VM 20 times a second for good (vendor/smoltcp/WASMVM.md).
        let (mut guest, _host, mut gm, _hm, _client, conn) = connected_pair(8080);
        let wire = guest.platform.wire.clone();
        assert_eq!(
            send(&mut guest, &mut gm, conn, &vec![5u8; 256 << 10]).0,
            Errno::SUCCESS
        );
        guest.net.as_mut().unwrap().poll(&mut guest.platform);
        // Everything sent is acknowledged, and the window closes with data still to send.
        let sent: Vec<Vec<u8>> = wire.borrow_mut().frames[1].drain(..).collect();
        let last = sent
            .iter()
            .rfind(|f| f.len() > 100)
            .expect("data segments")
            .clone();
        let ack = ack_for(&last, end_of(&last), 0);
        wire.borrow_mut().frames[0].push_back(ack);
        let start = wire.borrow().clock;
        let mut probes = Vec::new();
        while wire.borrow().clock - start < 30_000_000_000 {
            guest.net.as_mut().unwrap().poll(&mut guest.platform);
            let probe = wire.borrow_mut().frames[1].pop_front();
            if let Some(probe) = probe {
                assert_eq!(end_of(&probe) - seq_of(&probe), 1, "a one-byte probe");
                probes.push(wire.borrow().clock);
                let ack = ack_for(&probe, end_of(&probe), 0);
                wire.borrow_mut().frames[0].push_back(ack);
            }
        }
        // 100, 200, 400... ms apart, then every 2 s: not 600 probes in 30 s.
        assert!(
            (10..=25).contains(&probes.len()),
            "{} probes in 30 s",
            probes.len()
        );
        let gaps: Vec<u64> = probes
            .windows(2)
            .map(|p| (p[1] - p[0]) / 1_000_000)
            .collect();
        assert!(
            gaps.last().is_some_and(|&ms| (1900..=2100).contains(&ms)),
            "probes ms apart: {gaps:?}"
        );
    }

    #[test]
    fn a_lost_segment_is_sent_again_within_a_tenth_of_a_second() {
        // passt drops a segment when its socket to the host's peer is full and waits for
        // the retransmission: RFC 6298's 1 s floor for the timeout made each drop a stall
        // of seconds; the patched smoltcp's floor is 50 ms (vendor/smoltcp/WASMVM.md).
        let (mut guest, mut host, mut gm, mut hm, client, conn) = connected_pair(8080);
        // A first exchange gives the guest's stack its round-trip estimate.
        let data = [7u8; 1000];
        assert_eq!(
            send(&mut guest, &mut gm, conn, &data),
            (Errno::SUCCESS, 1000)
        );
        pump(&mut guest, &mut host);
        assert_eq!(
            recv(&mut host, &mut hm, client, 4096),
            (Errno::SUCCESS, data.to_vec())
        );
        let wire = guest.platform.wire.clone();
        wire.borrow_mut().lose_data[0] = 1;
        assert_eq!(
            send(&mut guest, &mut gm, conn, &data),
            (Errno::SUCCESS, 1000)
        );
        let lost_at = wire.borrow().clock;
        let mut got = Vec::new();
        while got.len() < 1000 {
            assert!(
                wire.borrow().clock - lost_at < 2_000_000_000,
                "the lost segment was never sent again"
            );
            // One poll each at a time: the clock moves a millisecond per reading. (With
            // RFC 6298's floor the segment comes again after 1004 ms here, with 50 ms after 56.)
            guest.net.as_mut().unwrap().poll(&mut guest.platform);
            host.net.as_mut().unwrap().poll(&mut host.platform);
            if let (Errno::SUCCESS, bytes) = recv(&mut host, &mut hm, client, 4096) {
                got.extend(bytes);
            }
        }
        assert_eq!(wire.borrow().lose_data[0], 0, "a segment was lost");
        let waited_ms = (wire.borrow().clock - lost_at) / 1_000_000;
        assert!(
            waited_ms < 100,
            "the lost segment came again after {waited_ms} ms"
        );
    }

    #[test]
    fn poll_oneoff_reports_a_pending_connection_and_data() {
        let (mut guest, mut host) = listening_pair(80);
        let (mut gm, mut hm) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let sub = |mem: &mut [u8], at: usize, userdata: u64, kind: u8, fd: u32| {
            mem[at..at + 8].copy_from_slice(&userdata.to_le_bytes());
            mem[at + 8] = kind;
            mem[at + 16..at + 20].copy_from_slice(&fd.to_le_bytes());
        };
        // A clock of 5 ms and the listener: nothing pending, so the clock fires.
        sub(&mut gm, 4096, 1, 1, 3);
        gm[4096 + 48 + 8] = 0;
        gm[4096 + 48..4096 + 56].copy_from_slice(&2u64.to_le_bytes());
        gm[4096 + 48 + 16..4096 + 48 + 20].copy_from_slice(&1u32.to_le_bytes());
        gm[4096 + 48 + 24..4096 + 48 + 32].copy_from_slice(&5_000_000u64.to_le_bytes());
        assert_eq!(
            call(&mut guest, &mut gm, Func::PollOneoff, &[4096, 8192, 2, 300]),
            Errno::SUCCESS
        );
        assert_eq!(u32::from_le_bytes(gm[300..304].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(gm[8192..8200].try_into().unwrap()), 2);

        let client = connect(&mut host, &mut hm, GUEST, 80);
        pump(&mut guest, &mut host);
        assert_eq!(
            call(&mut guest, &mut gm, Func::PollOneoff, &[4096, 8192, 2, 300]),
            Errno::SUCCESS
        );
        assert_eq!(u32::from_le_bytes(gm[300..304].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(gm[8192..8200].try_into().unwrap()), 1);
        assert_eq!(gm[8192 + 10], 1);
        let (e, conn) = accept(&mut guest, &mut gm, 3);
        assert_eq!(e, Errno::SUCCESS);
        send(&mut host, &mut hm, client, b"abc");
        pump(&mut guest, &mut host);
        sub(&mut gm, 4096, 7, 1, conn);
        assert_eq!(
            call(&mut guest, &mut gm, Func::PollOneoff, &[4096, 8192, 1, 300]),
            Errno::SUCCESS
        );
        assert_eq!(
            u64::from_le_bytes(gm[8192 + 16..8192 + 24].try_into().unwrap()),
            3
        );
    }

    #[test]
    fn a_large_transfer_arrives_intact() {
        let (mut guest, mut host, mut gm, mut hm, client, conn) = connected_pair(9);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        for _ in 0..100_000 {
            if sent < data.len() {
                let end = (sent + 60_000).min(data.len());
                let (e, n) = send(&mut host, &mut hm, client, &data[sent..end]);
                assert!(e == Errno::SUCCESS || e == Errno::AGAIN, "{e:?}");
                if e == Errno::SUCCESS {
                    sent += n as usize;
                }
            }
            pump(&mut guest, &mut host);
            let (e, chunk) = recv(&mut guest, &mut gm, conn, 100_000);
            if e == Errno::SUCCESS {
                got.extend_from_slice(&chunk);
            }
            if got.len() == data.len() {
                break;
            }
        }
        assert!(
            got == data,
            "received {} of {} bytes, or corrupted",
            got.len(),
            data.len()
        );
    }

    #[test]
    fn the_advertised_window_stays_steady_while_unread_data_fits_beside_it() {
        let (mut guest, mut host, mut gm, mut hm, client, conn) = connected_pair(9);
        let wire = guest.platform.wire.clone();
        let windows = |from: usize| wire.borrow().guest_windows[from..].to_vec();
        let data = vec![7u8; 60_000];
        // Half the receive buffer is the window: 120 KB left unread leaves room for it, so
        // every ACK advertises the same window (passt clamps its host socket's window to
        // each one the guest advertises, and a shrinking clamp stalled uploads).
        let start = wire.borrow().guest_windows.len();
        for _ in 0..2 {
            assert_eq!(send(&mut host, &mut hm, client, &data).0, Errno::SUCCESS);
            pump(&mut guest, &mut host);
        }
        let steady = windows(start);
        assert!(steady.len() >= 2, "the guest acknowledged: {steady:?}");
        assert!(steady.iter().all(|&w| w == steady[0]), "{steady:?}");
        // Half the buffer, in the units of its window scale (3 for 256 KiB).
        assert_eq!(usize::from(steady[0]), (crate::net::TCP_RX_BUFFER / 2) >> 3);
        // Past that, the window shrinks as the buffer fills...
        let start = wire.borrow().guest_windows.len();
        for _ in 0..2 {
            assert_eq!(send(&mut host, &mut hm, client, &data).0, Errno::SUCCESS);
            pump(&mut guest, &mut host);
        }
        let filling = windows(start);
        assert!(
            filling.last().is_some_and(|&w| w < steady[0]),
            "{filling:?}"
        );
        // ...and once the app has read it all, it is steady at its size again.
        let mut got = 0;
        while got < 4 * data.len() {
            let (e, chunk) = recv(&mut guest, &mut gm, conn, 100_000);
            assert_eq!(e, Errno::SUCCESS);
            got += chunk.len();
        }
        let start = wire.borrow().guest_windows.len();
        assert_eq!(send(&mut host, &mut hm, client, &data).0, Errno::SUCCESS);
        pump(&mut guest, &mut host);
        let again = windows(start);
        assert!(
            !again.is_empty() && again.iter().all(|&w| w == steady[0]),
            "{again:?}"
        );
    }

    #[test]
    fn many_connections_open_and_close_without_leaking() {
        let (mut guest, mut host) = listening_pair(7);
        let (mut gm, mut hm) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        nonblocking(&mut guest, &mut gm, 3);
        // The listener's spares once the stack has topped them up.
        pump(&mut guest, &mut host);
        let baseline = guest.net.as_ref().unwrap().set_len();
        for round in 0..300 {
            let (client, conn) =
                connect_and_accept((&mut guest, &mut gm), (&mut host, &mut hm), 3, 7);
            // Alternate which side closes first.
            let mut scratch = [0u8; 64];
            if round % 2 == 0 {
                call(&mut guest, &mut scratch, Func::FdClose, &[conn as u64]);
                pump(&mut guest, &mut host);
                call(&mut host, &mut scratch, Func::FdClose, &[client as u64]);
            } else {
                call(&mut host, &mut scratch, Func::FdClose, &[client as u64]);
                pump(&mut guest, &mut host);
                call(&mut guest, &mut scratch, Func::FdClose, &[conn as u64]);
            }
            pump(&mut guest, &mut host);
        }
        assert!(
            guest.fds.len() <= 6,
            "descriptors leak: {}",
            guest.fds.len()
        );
        assert_eq!(
            guest.net.as_ref().unwrap().set_len(),
            baseline,
            "sockets leak"
        );
    }

    /// Frames on the wire from side `from` with the TCP RST flag.
    fn resets(wire: &Rc<RefCell<Wire>>, side: usize) -> usize {
        wire.borrow().frames[side]
            .iter()
            .filter(|f| f.len() > 47 && f[12..14] == [8, 0] && f[23] == 6 && f[47] & 4 != 0)
            .count()
    }

    #[test]
    fn an_http_style_close_sends_no_reset() {
        let wire = Rc::new(RefCell::new(Wire::default()));
        let (mut guest, mut host) = (world(&wire, 0), world(&wire, 1));
        guest
            .preopen_listener(Listen {
                addr: [0; 4],
                port: 80,
            })
            .unwrap();
        let (mut gm, mut hm) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        nonblocking(&mut guest, &mut gm, 3);
        for round in 0..20 {
            let (client, conn) =
                connect_and_accept((&mut guest, &mut gm), (&mut host, &mut hm), 3, 80);
            send(&mut host, &mut hm, client, b"GET / HTTP/1.1\r\n\r\n");
            pump(&mut guest, &mut host);
            assert_eq!(recv(&mut guest, &mut gm, conn, 100).0, Errno::SUCCESS);
            send(&mut guest, &mut gm, conn, b"HTTP/1.1 200 OK\r\n\r\n");
            if round % 2 == 0 {
                call(&mut guest, &mut gm, Func::SockShutdown, &[conn as u64, 2]);
            } else {
                call(&mut guest, &mut gm, Func::FdClose, &[conn as u64]);
            }
            for _ in 0..50 {
                // Watch every frame the guest sends for a reset.
                guest.net.as_mut().unwrap().poll(&mut guest.platform);
                assert_eq!(resets(&wire, 1), 0, "round {round}: the guest reset");
                host.net.as_mut().unwrap().poll(&mut host.platform);
            }
            assert_eq!(recv(&mut host, &mut hm, client, 100).0, Errno::SUCCESS);
            call(&mut host, &mut hm, Func::FdClose, &[client as u64]);
            for _ in 0..50 {
                guest.net.as_mut().unwrap().poll(&mut guest.platform);
                assert_eq!(resets(&wire, 1), 0, "round {round}: the guest reset");
                host.net.as_mut().unwrap().poll(&mut host.platform);
            }
            if round % 2 == 0 {
                assert_eq!(
                    recv(&mut guest, &mut gm, conn, 100),
                    (Errno::SUCCESS, vec![])
                );
                call(&mut guest, &mut gm, Func::FdClose, &[conn as u64]);
                pump(&mut guest, &mut host);
            }
        }
    }

    #[test]
    fn hostile_arguments_fail_cleanly() {
        let (mut guest, _host) = pair();
        guest
            .preopen_listener(Listen {
                addr: [0; 4],
                port: 80,
            })
            .unwrap();
        let mut m = vec![0u8; 4096];
        // Not a socket, no such descriptor, bad flags, pointers off the end of memory.
        let cases: &[(Func, &[u64], Errno)] = &[
            (Func::SockAccept, &[1, 0, 0], Errno::NOTSOCK),
            (Func::SockAccept, &[99, 0, 0], Errno::BADF),
            (Func::SockAccept, &[3, 1, 0], Errno::INVAL),
            (Func::SockAccept, &[3, 0, 4094], Errno::FAULT),
            (Func::SockRecv, &[3, 4090, 2, 0, 0, 0], Errno::FAULT),
            (Func::SockRecv, &[3, 0, 0, 8, 16, 20], Errno::INVAL),
            (Func::SockSend, &[3, 0, 0, 1, 16], Errno::INVAL),
            (Func::SockShutdown, &[3, 4], Errno::INVAL),
            (Func::SockShutdown, &[3, 2], Errno::NOTCONN),
            (Func::SockOpen, &[2, 2, 0], Errno::AFNOSUPPORT),
            (Func::SockOpen, &[1, 9, 0], Errno::INVAL),
            (Func::SockOpen, &[1, 2, 4093], Errno::FAULT),
        ];
        for &(func, args, want) in cases {
            assert_eq!(
                call(&mut guest, &mut m, func, args),
                want,
                "{func:?} {args:?}"
            );
        }
        // An address struct pointing outside memory, or of an unknown size.
        call(&mut guest, &mut m, Func::SockOpen, &[1, 2, 100]);
        let fd = u32::from_le_bytes(m[100..104].try_into().unwrap()) as u64;
        m[32..36].copy_from_slice(&4094u32.to_le_bytes());
        m[36..40].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            call(&mut guest, &mut m, Func::SockConnect, &[fd, 32, 80]),
            Errno::FAULT
        );
        m[36..40].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            call(&mut guest, &mut m, Func::SockConnect, &[fd, 32, 80]),
            Errno::INVAL
        );
        assert_eq!(
            call(&mut guest, &mut m, Func::SockConnect, &[fd, 32, 1 << 20]),
            Errno::INVAL
        );
        // A port already listening on is refused.
        m[48..52].copy_from_slice(&[0; 4]);
        m[32..36].copy_from_slice(&48u32.to_le_bytes());
        m[36..40].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            call(&mut guest, &mut m, Func::SockBind, &[fd, 32, 80]),
            Errno::ADDRINUSE
        );
        // Options: SO_REUSEADDR is taken, an unknown level is not.
        m[200..204].copy_from_slice(&1i32.to_le_bytes());
        assert_eq!(
            call(
                &mut guest,
                &mut m,
                Func::SockSetSockOpt,
                &[fd, 0, 0, 200, 4]
            ),
            Errno::SUCCESS
        );
        assert_eq!(
            call(
                &mut guest,
                &mut m,
                Func::SockSetSockOpt,
                &[fd, 6, 0, 200, 4]
            ),
            Errno::INVAL
        );
        m[208..212].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            call(
                &mut guest,
                &mut m,
                Func::SockGetSockOpt,
                &[fd, 0, 1, 204, 208]
            ),
            Errno::SUCCESS
        );
        assert_eq!(i32::from_le_bytes(m[204..208].try_into().unwrap()), 2);
        // A world without a network card has no sockets.
        let mut bare = crate::state::tests::wasi();
        assert_eq!(
            bare.call(Func::SockOpen, &mut m, &[1, 2, 100]),
            Ok(Errno::NETUNREACH)
        );
        assert_eq!(
            bare.call(Func::SockRecv, &mut m, &[1, 0, 0, 0, 16, 20]),
            Ok(Errno::NOTSOCK)
        );
    }
}
