//! The app's TCP/IP stack: smoltcp over the platform's network card, and the sockets the
//! WASI calls (`sockets.rs`) work on. Nothing here touches guest memory.
//!
//! The card is driven through four [`Platform`] calls (receive a frame, send a frame, flush
//! a batch, wait for the host), so the same stack runs in the kernel over virtio-net and in
//! host tests over a loopback.
//!
//! smoltcp has no accept queue: a listening socket *becomes* the connection. A [`Listener`]
//! therefore keeps a few sockets in LISTEN and, after every ingress packet, hands any that
//! left LISTEN to its queue of incoming connections and opens a fresh one, so a burst of
//! SYNs finds a listening socket for each (up to the backlog, past which new SYNs are reset
//! as on a full Linux backlog).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, dns, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address,
    Ipv4Cidr,
};
use wasmvm_abi::net::NetConfig;

use crate::errno::{Errno, WasiResult};
use crate::platform::{Clock, Platform};

/// Receive buffer of each TCP connection while socket memory is plentiful; fresh heap pages
/// the app never fills are never touched (reused heap is zeroed). The window advertised is
/// at most half of it (`configure_tcp_socket`): 128 KiB keeps a fast link busy (smoltcp scales
/// the window past 64 KiB), and the other half holds what arrived while the app has not
/// read yet, so the window stays steady instead of shrinking with each unread segment.
/// passt, the user-mode network, clamps its host socket's receive window to every window
/// the guest advertises, and after a shrinking clamp the host's sender paused for 17-140 ms
/// (uploads to a wasmi app ran at 43-56 MB/s, 116-123 with the steady window). A 512 KiB
/// buffer advertised whole left the reopened window unused for seconds.
pub(crate) const TCP_RX_BUFFER: usize = 256 * 1024;
/// Send buffer of each TCP connection while socket memory is plentiful: room for eight
/// 64 KiB segments in flight. A segment the peer drops (passt does when its host socket is
/// full) is then followed by others that draw duplicate ACKs, and smoltcp retransmits at
/// once, where with two in flight it waits for its retransmission timeout (50 ms at least
/// with the vendored smoltcp, 1 s upstream).
pub(crate) const TCP_TX_BUFFER: usize = 512 * 1024;
/// The smallest buffers a connection gets when socket memory runs low; below that, new
/// connections are refused (see [`SocketMemory`]).
const MIN_TCP_BUFFER: usize = 4 * 1024;
/// How often at most the stack reports going quiet (see [`Net::poll`]).
const QUIET_REPORT_NS: u64 = 500_000_000;
/// Sockets kept in LISTEN per listener, ready for simultaneous SYNs.
const LISTEN_SPARES: usize = 4;
/// Connections a listener queues for `accept` before it resets new ones (Linux's somaxconn
/// default).
pub const MAX_BACKLOG: usize = 4096;
/// Datagrams a UDP socket buffers each way, and their total bytes.
const UDP_PACKETS: usize = 64;
const UDP_BYTES: usize = 64 * 1024;
/// Ingress packets handled per poll before the stack sends what they produced.
const INGRESS_BATCH: usize = 512;
/// Bounds on the sockets one app may hold, so a leaking app fails with EMFILE/ENOBUFS
/// instead of exhausting the kernel heap.
const MAX_SOCKETS: usize = 16 * 1024;
/// How long a closed connection stays in TIME-WAIT.
const TIME_WAIT_NS: u64 = 200_000_000;
/// How long a connection the app closed may wait in FIN-WAIT-2 for the peer's FIN.
const FIN_WAIT_TIMEOUT_NS: u64 = 10_000_000_000;
/// How long a connection the app closed may linger in any state (a peer that never reads
/// keeps it in FIN-WAIT-1 or LAST-ACK, answering every window probe) before it is reset;
/// under memory pressure, [`FIN_WAIT_TIMEOUT_NS`].
const ORPHAN_TIMEOUT_NS: u64 = 60_000_000_000;
/// How long a connection may wait on a listener's queue without a packet from its peer
/// (a handshake never completed, or a client that never speaks before `accept`) before it is
/// reset: a flood of half-open connections must not hold the socket budget for good.
const QUEUED_TIMEOUT: Duration = Duration::from_secs(20);
/// The first port handed out for connections and unbound UDP sockets.
const EPHEMERAL_FIRST: u16 = 49152;

/// The network card as the platform describes it when the kernel attaches it.
#[derive(Debug, Clone, Copy)]
pub struct Nic {
    pub mac: [u8; 6],
    /// Static settings; `None` asks DHCP.
    pub config: Option<NetConfig>,
    /// The link MTU (IP packet size).
    pub mtu: u16,
    /// Bytes the sockets' buffers may take in all: the rest of the heap stays for the
    /// engine and the app, which allocate infallibly.
    pub socket_memory: usize,
}

/// The sockets' buffers, counted against a budget so that no peer, app or load can make
/// the stack take the heap the engine needs. A connection gets full-size buffers while
/// memory is plentiful and smaller ones as it runs low; when even the smallest do not fit,
/// a new connection is refused (a listener has no spare socket, so the peer's SYN is reset;
/// `sock_connect` and UDP sockets get `ENOBUFS`) and counted.
struct SocketMemory {
    budget: usize,
    /// Buffer bytes of the sockets in the set.
    in_use: usize,
    /// The buffer bytes of each smoltcp socket that has them.
    sizes: BTreeMap<SocketHandle, usize>,
    /// TCP sockets removed from the set, oldest first, kept with their buffers for the next
    /// connections of the same size:
    /// a new socket's buffers are zeroed (the heap zeroes reused memory), 768 KiB at full
    /// size: with one request per connection that `memset` took a fifth of the guest's time.
    /// Each is reset (`listen`/`connect`) before it serves again; smoltcp reads only the
    /// bytes a connection wrote, so an old connection's bytes never reach a new one. Their
    /// memory counts against the budget beside `in_use`, and is given back whenever a new
    /// socket needs it.
    idle: Vec<IdleTcp>,
    /// TCP sockets handed out again from `idle`.
    reused: u64,
    /// New sockets refused for lack of memory.
    refused: u64,
}

/// A TCP socket kept for reuse, and its buffer bytes.
struct IdleTcp {
    socket: tcp::Socket<'static>,
    bytes: usize,
}

/// TCP sockets kept for reuse at most: enough for the connections a burst opens and closes
/// between two polls of a busy listener.
const IDLE_TCP_SOCKETS: usize = 16;

impl SocketMemory {
    fn new(budget: usize) -> Self {
        SocketMemory {
            budget,
            in_use: 0,
            sizes: BTreeMap::new(),
            idle: Vec::new(),
            reused: 0,
            refused: 0,
        }
    }

    /// A TCP socket with buffers sized to what is left, or `None` (counted) if nothing fits.
    fn tcp_socket(&mut self) -> Option<(tcp::Socket<'static>, usize)> {
        let socket = self.spare_tcp_socket();
        if socket.is_none() {
            self.refused += 1;
        }
        socket
    }

    /// [`tcp_socket`](Self::tcp_socket) for a listener's spare, a refusal not counted: the
    /// stack tops spares up after every packet, so while memory is short most attempts
    /// fail, and `promote` counts a listener running out instead.
    fn spare_tcp_socket(&mut self) -> Option<(tcp::Socket<'static>, usize)> {
        // Idle sockets' memory is free for this one.
        let free = self.budget.saturating_sub(self.in_use);
        // Keep room for eight more connections of the chosen size, so memory runs low
        // gradually rather than all at once: both buffers halve together.
        let sizes = |halvings: u32| {
            (
                (TCP_RX_BUFFER >> halvings).max(MIN_TCP_BUFFER),
                (TCP_TX_BUFFER >> halvings).max(MIN_TCP_BUFFER),
            )
        };
        let mut halvings = 0;
        let (mut rx, mut tx) = sizes(0);
        while rx + tx > 2 * MIN_TCP_BUFFER && (rx + tx) * 8 > free {
            halvings += 1;
            (rx, tx) = sizes(halvings);
        }
        if rx + tx > free {
            return None;
        }
        // An idle socket of exactly this size: a larger one would hold more of the budget
        // than memory now allows a connection (under load that refused ten times as many
        // connections), a smaller one would serve with less than it could.
        let reusable = self
            .idle
            .iter()
            .rposition(|i| i.socket.recv_capacity() == rx && i.socket.send_capacity() == tx);
        if let Some(at) = reusable {
            self.reused += 1;
            let IdleTcp { socket, bytes } = self.idle.remove(at);
            return Some((reuse_tcp_socket(socket), bytes));
        }
        self.make_room(rx + tx);
        Some((new_tcp_socket(rx, tx), rx + tx))
    }

    fn idle_bytes(&self) -> usize {
        self.idle.iter().map(|i| i.bytes).sum()
    }

    /// Drops idle sockets, the oldest first, until `bytes` more fit beside them.
    fn make_room(&mut self, bytes: usize) {
        let mut idle_bytes = self.idle_bytes();
        while self.in_use + idle_bytes + bytes > self.budget && !self.idle.is_empty() {
            idle_bytes -= self.idle.remove(0).bytes;
        }
    }

    /// Room for `bytes` more, or `ENOBUFS` (counted).
    fn reserve(&mut self, bytes: usize) -> WasiResult {
        if self.in_use + bytes > self.budget {
            self.refused += 1;
            return Err(Errno::NOBUFS);
        }
        self.make_room(bytes);
        Ok(())
    }

    fn add<T: smoltcp::socket::AnySocket<'static>>(
        &mut self,
        set: &mut SocketSet<'static>,
        socket: T,
        bytes: usize,
    ) -> SocketHandle {
        let handle = set.add(socket);
        self.in_use += bytes;
        self.sizes.insert(handle, bytes);
        handle
    }

    /// Whether `handle`'s buffers are smaller than full size (made while memory ran low)
    /// and could be full size now, with room to spare: after the swap
    /// [`tcp_socket`](Self::tcp_socket) would still give full-size buffers. Without that
    /// margin a budget near the threshold would swap a spare at every connection.
    fn can_restore(&self, handle: SocketHandle) -> bool {
        let full = TCP_RX_BUFFER + TCP_TX_BUFFER;
        let Some(&bytes) = self.sizes.get(&handle) else {
            return false;
        };
        let free = self.budget.saturating_sub(self.in_use);
        bytes < full && free >= full * 8 + (full - bytes)
    }

    /// Whether `handle`'s buffers are smaller than full size.
    #[cfg(test)]
    fn is_undersized(&self, handle: SocketHandle) -> bool {
        self.sizes
            .get(&handle)
            .is_some_and(|&bytes| bytes < TCP_RX_BUFFER + TCP_TX_BUFFER)
    }

    /// Removes `handle` from the set; a TCP socket is kept for reuse (the oldest kept one
    /// goes when 16 are).
    fn remove(&mut self, set: &mut SocketSet<'static>, handle: SocketHandle) {
        let socket = set.remove(handle);
        let Some(bytes) = self.sizes.remove(&handle) else {
            return;
        };
        self.in_use -= bytes;
        if let smoltcp::socket::Socket::Tcp(socket) = socket {
            if self.idle.len() == IDLE_TCP_SOCKETS {
                self.idle.remove(0);
            }
            self.idle.push(IdleTcp { socket, bytes });
        }
    }
}

/// What a socket descriptor refers to: an index into [`Net::sockets`].
pub(crate) type SockId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockType {
    Stream,
    Dgram,
}

/// Options an app set with `sock_setsockopt` before the socket had a smoltcp socket.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    pub reuse_addr: bool,
    pub keep_alive: bool,
    /// Receive and send timeouts in nanoseconds (`SO_RCVTIMEO`, `SO_SNDTIMEO`).
    pub recv_timeout: Option<u64>,
    pub send_timeout: Option<u64>,
}

pub(crate) struct Listener {
    endpoint: IpListenEndpoint,
    /// Sockets in LISTEN.
    spares: Vec<SocketHandle>,
    /// Sockets that left LISTEN, in arrival order, until `accept` takes them.
    incoming: VecDeque<SocketHandle>,
    backlog: usize,
    /// It has no spare and memory for none: its peers' SYNs are reset (counted once in
    /// `SocketMemory::refused` each time it gets here).
    starved: bool,
}

impl Listener {
    /// How many sockets it keeps in LISTEN: a few, and none past its backlog.
    fn spares_wanted(&self) -> usize {
        LISTEN_SPARES.min(self.backlog.saturating_sub(self.incoming.len()))
    }
}

pub(crate) enum Socket {
    /// Opened with `sock_open` (WasmEdge), not yet listening or connected.
    Fresh {
        kind: SockType,
        bound: Option<IpListenEndpoint>,
    },
    Listener(Listener),
    Stream {
        handle: SocketHandle,
        /// The app shut its reading side: received bytes are discarded.
        read_shut: bool,
    },
    Dgram {
        handle: SocketHandle,
        /// Where `sock_send` without an address goes (`sock_connect` on UDP).
        peer: Option<IpEndpoint>,
    },
}

pub(crate) struct SocketEntry {
    pub socket: Socket,
    pub options: Options,
}

/// A connection the app closed, lingering until its FIN exchange is through.
#[derive(Debug, Clone, Copy)]
struct Closing {
    handle: SocketHandle,
    /// When the app closed it, to give up on a peer FIN that never comes.
    closed_at: u64,
    /// When it was first seen in TIME-WAIT.
    time_wait_since: Option<u64>,
}

/// Whether a socket is ready, for `poll_oneoff`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// Bytes (or connections) available to read; `None` when a read would block.
    pub readable: Option<u64>,
    /// Room to write; `None` when a write would block.
    pub writable: Option<u64>,
    /// The peer will send nothing more.
    pub hangup: bool,
}

/// The stack and every socket of the app.
pub(crate) struct Net {
    iface: Interface,
    set: SocketSet<'static>,
    /// The frame most recently taken from the card (kept to reuse its allocation).
    rx_frame: Vec<u8>,
    mtu: u16,
    dhcp: Option<SocketHandle>,
    /// The DNS server, once configured.
    pub dns: Option<Ipv4Address>,
    sockets: Vec<Option<SocketEntry>>,
    /// Connections the app closed, kept until their FIN is through.
    closing: Vec<Closing>,
    /// The monotonic time of the last poll.
    now_ns: u64,
    next_port: u16,
    /// The name lookup in progress (`sock_getaddrinfo`).
    query: Option<(SocketHandle, dns::QueryHandle)>,
    mem: SocketMemory,
    /// Connections accepted or opened by the app so far.
    connections: u64,
    /// Whether connections came and went since the last quiet report.
    report_pending: bool,
    /// When the last quiet report went out, and when the next one is due.
    reported_at: Option<u64>,
    report_due: Option<u64>,
}

fn instant(ns: u64) -> Instant {
    Instant::from_micros((ns / 1000) as i64)
}

/// smoltcp's view of the platform's card for the length of one poll.
struct Card<'a, P: Platform> {
    platform: &'a mut P,
    rx_frame: &'a mut Vec<u8>,
    mtu: u16,
    sent: bool,
}

struct Rx<'a>(&'a [u8]);

struct Tx<'a, P: Platform> {
    platform: &'a mut P,
    sent: &'a mut bool,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<P: Platform> phy::TxToken for Tx<'_, P> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let mut result = None;
        let sent = self.platform.net_send(len, &mut |buf| {
            if let Some(f) = f.take() {
                result = Some(f(buf));
            }
        });
        *self.sent |= sent;
        match result {
            Some(r) => r,
            // The card had no room: smoltcp still needs its closure run; the frame is then
            // dropped like a full hardware queue drops it, and TCP sends it again.
            None => {
                let mut scratch = vec![0; len];
                (f.take().expect("closure not yet run"))(&mut scratch)
            }
        }
    }
}

impl<P: Platform> Device for Card<'_, P> {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a, P>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_, P>)> {
        if !self.platform.net_receive(self.rx_frame) {
            return None;
        }
        Some((
            Rx(self.rx_frame),
            Tx {
                platform: self.platform,
                sent: &mut self.sent,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_, P>> {
        self.platform.net_can_send().then_some(Tx {
            platform: self.platform,
            sent: &mut self.sent,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.mtu) + 14;
        caps
    }
}

fn v4(addr: [u8; 4]) -> Ipv4Address {
    Ipv4Address::from(addr)
}

impl Net {
    pub fn new<P: Platform>(nic: Nic, platform: &mut P) -> Net {
        let mut rx_frame = Vec::new();
        let mut card = Card {
            platform,
            rx_frame: &mut rx_frame,
            mtu: nic.mtu,
            sent: false,
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(nic.mac)));
        let mut seed = [0u8; 8];
        card.platform.random(&mut seed);
        config.random_seed = u64::from_le_bytes(seed);
        let now = instant(card.platform.now_ns(Clock::Monotonic));
        let iface = Interface::new(config, &mut card, now);
        let mut net = Net {
            iface,
            set: SocketSet::new(Vec::new()),
            rx_frame,
            mtu: nic.mtu,
            dhcp: None,
            dns: None,
            sockets: Vec::new(),
            closing: Vec::new(),
            now_ns: 0,
            next_port: EPHEMERAL_FIRST,
            query: None,
            mem: SocketMemory::new(nic.socket_memory),
            connections: 0,
            report_pending: false,
            reported_at: None,
            report_due: None,
        };
        match nic.config {
            Some(c) => net.configure(
                Ipv4Cidr::new(v4(c.addr), c.prefix_len),
                Some(v4(c.gateway)),
                Some(v4(c.dns)),
            ),
            None => {
                let dhcp = dhcpv4::Socket::new();
                net.dhcp = Some(net.set.add(dhcp));
            }
        }
        net
    }

    fn configure(
        &mut self,
        cidr: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
        dns: Option<Ipv4Address>,
    ) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::Ipv4(cidr));
        });
        self.iface.routes_mut().remove_default_ipv4_route();
        if let Some(gw) = gateway {
            let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
        }
        self.dns = dns;
    }

    /// The guest's address, once it has one.
    pub fn local_addr(&self) -> Option<Ipv4Address> {
        self.iface.ipv4_addr()
    }

    /// Moves frames both ways and advances every socket's timers. Returns whether anything
    /// may have changed for the app.
    pub fn poll<P: Platform>(&mut self, platform: &mut P) -> bool {
        self.now_ns = platform.now_ns(Clock::Monotonic);
        let now = instant(self.now_ns);
        let mut card = Card {
            platform,
            rx_frame: &mut self.rx_frame,
            mtu: self.mtu,
            sent: false,
        };
        let mut changed = false;
        self.iface.poll_maintenance(now);
        for _ in 0..INGRESS_BATCH {
            match self
                .iface
                .poll_ingress_single(now, &mut card, &mut self.set)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    changed = true;
                    // A SYN may just have taken a listener's spare: replace it before the
                    // next packet, which may be another SYN.
                    for entry in self.sockets.iter_mut().flatten() {
                        if let Socket::Listener(l) = &mut entry.socket {
                            promote(&mut self.set, &mut self.mem, l);
                        }
                    }
                }
            }
        }
        while self.iface.poll_egress(now, &mut card, &mut self.set)
            == smoltcp::iface::PollResult::SocketStateChanged
        {
            changed = true;
        }
        if card.sent {
            card.platform.net_flush();
        }
        self.dhcp_poll();
        self.reap();
        // Memory freed by the reap lets listeners that ran short of spares (their SYNs were
        // being reset) listen again, and spares made while it ran low get full buffers.
        for entry in self.sockets.iter_mut().flatten() {
            if let Socket::Listener(l) = &mut entry.socket {
                if l.spares.len() < l.spares_wanted() {
                    promote(&mut self.set, &mut self.mem, l);
                }
                restore_spares(&mut self.set, &mut self.mem, l);
            }
        }
        self.report_quiet(platform);
        changed
    }

    /// Says on the kernel log (`--verbose`) when the stack has gone quiet after traffic: no
    /// connection open or lingering, with what its sockets and the heap hold then, at most
    /// every [`QUIET_REPORT_NS`]. A server's memory after a burst of connections can so be
    /// compared with before it, and a leak shows as a report that never comes.
    fn report_quiet<P: Platform>(&mut self, platform: &mut P) {
        let busy = !self.closing.is_empty()
            || self.sockets.iter().flatten().any(|e| match &e.socket {
                Socket::Stream { .. } => true,
                Socket::Listener(l) => !l.incoming.is_empty(),
                _ => false,
            });
        if busy {
            self.report_pending = true;
            self.report_due = None;
            return;
        }
        if !self.report_pending {
            return;
        }
        let due = self
            .reported_at
            .map_or(0, |t| t.saturating_add(QUIET_REPORT_NS));
        if self.now_ns < due {
            self.report_due = Some(due);
            return;
        }
        self.report_pending = false;
        self.report_due = None;
        self.reported_at = Some(self.now_ns);
        let heap = platform
            .heap_in_use()
            .map_or(alloc::string::String::from("?"), |b| {
                alloc::format!("{}", b / 1024)
            });
        platform.log(&alloc::format!(
            "net: quiet after {} connections: {} sockets, {} KiB of socket buffers, {} sockets kept for reuse ({} KiB), {} reused, {} socket allocations refused for memory, heap {heap} KiB in use",
            self.connections,
            self.set.iter().count(),
            self.mem.in_use / 1024,
            self.mem.idle.len(),
            self.mem.idle_bytes() / 1024,
            self.mem.reused,
            self.mem.refused,
        ));
    }

    /// When the stack next needs a poll even without traffic (retransmits, delayed ACKs,
    /// DHCP), in monotonic nanoseconds.
    pub fn poll_at_ns<P: Platform>(&mut self, platform: &mut P) -> Option<u64> {
        let now_ns = platform.now_ns(Clock::Monotonic);
        let stack = self
            .iface
            .poll_delay(instant(now_ns), &self.set)
            .map(|delay| now_ns.saturating_add(delay.total_micros().saturating_mul(1000)));
        // The reap's own deadlines: smoltcp sets no timer in FIN-WAIT-2, and its TIME-WAIT
        // timer is longer than ours, so an idle server would keep those sockets until the
        // next packet.
        let reap = self
            .closing
            .iter()
            .filter_map(|c| match self.set.get::<tcp::Socket>(c.handle).state() {
                tcp::State::TimeWait => Some(
                    c.time_wait_since
                        .unwrap_or(self.now_ns)
                        .saturating_add(TIME_WAIT_NS + 1),
                ),
                tcp::State::FinWait2 => Some(c.closed_at.saturating_add(FIN_WAIT_TIMEOUT_NS + 1)),
                tcp::State::Closed => None,
                _ => Some(c.closed_at.saturating_add(ORPHAN_TIMEOUT_NS + 1)),
            })
            .min();
        [stack, self.report_due, reap].into_iter().flatten().min()
    }

    fn dhcp_poll(&mut self) {
        let Some(handle) = self.dhcp else { return };
        let event = self.set.get_mut::<dhcpv4::Socket>(handle).poll();
        match event {
            Some(dhcpv4::Event::Configured(c)) => {
                let (address, router) = (c.address, c.router);
                let dns = c.dns_servers.first().copied();
                self.configure(address, router, dns);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
            }
            None => {}
        }
    }

    /// Forgets closed connections the app already let go of. TIME-WAIT is kept only
    /// [`TIME_WAIT_NS`], long enough for the last ACK to leave, not the RFC's minutes: on
    /// the VMM's private link it would only pin each connection's buffers (a churning
    /// server would run out of heap). FIN-WAIT-2 is given up after
    /// [`FIN_WAIT_TIMEOUT_NS`] (Linux's `tcp_fin_timeout` does the same for orphans), since
    /// a peer that never closes, or a user-mode network that drops its FIN, would otherwise
    /// pin the socket and its port for good. Removal sends nothing.
    ///
    /// Both hold a connection's buffers for nothing (everything the app sent is
    /// acknowledged, and it reads no more), so when socket memory is under pressure (more
    /// than half the budget in use) they go at once: a late FIN from the peer is then
    /// answered with a reset, as Linux answers data for a closed socket.
    fn reap(&mut self) {
        let (set, mem) = (&mut self.set, &mut self.mem);
        let now = self.now_ns;
        let pressure = mem.in_use.saturating_mul(2) > mem.budget;
        self.closing.retain_mut(|c| {
            let age = now.saturating_sub(c.closed_at);
            let limit = if pressure {
                FIN_WAIT_TIMEOUT_NS
            } else {
                ORPHAN_TIMEOUT_NS
            };
            let socket = set.get_mut::<tcp::Socket>(c.handle);
            if age > limit && !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                // Given up on: the peer gets a reset (on the next dispatch), and the socket
                // goes once it is closed.
                socket.abort();
                return true;
            }
            let done = match socket.state() {
                tcp::State::Closed => true,
                tcp::State::TimeWait => {
                    let since = *c.time_wait_since.get_or_insert(now);
                    pressure || now.saturating_sub(since) > TIME_WAIT_NS
                }
                tcp::State::FinWait2 => {
                    pressure || now.saturating_sub(c.closed_at) > FIN_WAIT_TIMEOUT_NS
                }
                _ => false,
            };
            if done {
                mem.remove(set, c.handle);
            }
            !done
        });
    }

    fn linger(&mut self, handle: SocketHandle) {
        self.closing.push(Closing {
            handle,
            closed_at: self.now_ns,
            time_wait_since: None,
        });
    }

    /// A TCP socket for the app with buffers from the budget, or `ENOBUFS`.
    fn tcp_socket(&mut self, options: &Options) -> WasiResult<(tcp::Socket<'static>, usize)> {
        let (mut s, bytes) = self.mem.tcp_socket().ok_or(Errno::NOBUFS)?;
        if options.keep_alive {
            s.set_keep_alive(Some(Duration::from_secs(60)));
        }
        Ok((s, bytes))
    }

    fn insert(&mut self, socket: Socket, options: Options) -> WasiResult<SockId> {
        let entry = SocketEntry { socket, options };
        if let Some(i) = self.sockets.iter().position(Option::is_none) {
            self.sockets[i] = Some(entry);
            return Ok(i as SockId);
        }
        if self.sockets.len() >= MAX_SOCKETS {
            return Err(Errno::NFILE);
        }
        self.sockets.push(Some(entry));
        Ok((self.sockets.len() - 1) as SockId)
    }

    /// The receive and send buffer sizes of stream socket `id` (halved ones too).
    pub fn stream_buffers(&self, id: SockId) -> Option<(usize, usize)> {
        match &self.entry(id).ok()?.socket {
            Socket::Stream { handle, .. } => {
                let s = self.set.get::<tcp::Socket>(*handle);
                Some((s.recv_capacity(), s.send_capacity()))
            }
            _ => None,
        }
    }

    pub fn entry(&self, id: SockId) -> WasiResult<&SocketEntry> {
        self.sockets
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or(Errno::BADF)
    }

    pub fn entry_mut(&mut self, id: SockId) -> WasiResult<&mut SocketEntry> {
        self.sockets
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(Errno::BADF)
    }

    /// A new socket that is not yet bound (WasmEdge `sock_open`).
    pub fn open(&mut self, kind: SockType) -> WasiResult<SockId> {
        self.insert(Socket::Fresh { kind, bound: None }, Options::default())
    }

    /// A listening TCP socket on `endpoint` (a preopened one, or `sock_listen`).
    pub fn listen(
        &mut self,
        endpoint: IpListenEndpoint,
        backlog: usize,
        options: Options,
    ) -> WasiResult<SockId> {
        let listener = self.new_listener(endpoint, backlog, &options)?;
        self.insert(Socket::Listener(listener), options)
    }

    fn port_in_use(&self, port: u16) -> bool {
        self.sockets.iter().flatten().any(|e| match &e.socket {
            Socket::Listener(l) => l.endpoint.port == port,
            Socket::Fresh { bound: Some(b), .. } => b.port == port,
            _ => false,
        })
    }

    fn new_listener(
        &mut self,
        endpoint: IpListenEndpoint,
        backlog: usize,
        options: &Options,
    ) -> WasiResult<Listener> {
        if endpoint.port == 0 {
            return Err(Errno::INVAL);
        }
        let mut l = Listener {
            endpoint,
            spares: Vec::new(),
            incoming: VecDeque::new(),
            backlog: backlog.clamp(1, MAX_BACKLOG),
            starved: false,
        };
        // One spare to start with: the next poll tops the spares up as memory allows, and
        // every SYN that takes one has it replaced before the next packet. Four at once
        // let a default VM's socket memory hold only 17 listeners, the first ones taking
        // spares the later ones then could not have.
        let (mut s, bytes) = self.tcp_socket(options)?;
        s.set_timeout(Some(QUEUED_TIMEOUT));
        if s.listen(endpoint).is_err() {
            return Err(Errno::INVAL);
        }
        l.spares.push(self.mem.add(&mut self.set, s, bytes));
        Ok(l)
    }

    /// Turns a fresh socket into a listener (`sock_listen`).
    pub fn listen_fresh(&mut self, id: SockId, backlog: usize) -> WasiResult {
        let entry = self.entry(id)?;
        let options = entry.options;
        let endpoint = match entry.socket {
            Socket::Fresh {
                kind: SockType::Stream,
                bound: Some(b),
            } => b,
            Socket::Fresh {
                kind: SockType::Stream,
                bound: None,
            } => IpListenEndpoint {
                addr: None,
                port: self.ephemeral_port(),
            },
            Socket::Listener(_) => return Ok(()),
            _ => return Err(Errno::INVAL),
        };
        let listener = self.new_listener(endpoint, backlog, &options)?;
        self.entry_mut(id)?.socket = Socket::Listener(listener);
        Ok(())
    }

    /// Records the local address of a fresh socket (`sock_bind`); UDP sockets bind now.
    pub fn bind(&mut self, id: SockId, endpoint: IpListenEndpoint) -> WasiResult {
        if let Some(addr) = endpoint.addr
            && !addr.is_unspecified()
            && !self.iface.has_ip_addr(addr)
        {
            return Err(Errno::ADDRNOTAVAIL);
        }
        let reuse = self.entry(id)?.options.reuse_addr;
        if endpoint.port != 0 && !reuse && self.port_in_use(endpoint.port) {
            return Err(Errno::ADDRINUSE);
        }
        let endpoint = IpListenEndpoint {
            addr: endpoint.addr.filter(|a| !a.is_unspecified()),
            port: if endpoint.port == 0 {
                self.ephemeral_port()
            } else {
                endpoint.port
            },
        };
        let entry = self.entry_mut(id)?;
        match &mut entry.socket {
            Socket::Fresh {
                kind: SockType::Stream,
                bound,
            } if bound.is_none() => {
                *bound = Some(endpoint);
                Ok(())
            }
            Socket::Fresh {
                kind: SockType::Dgram,
                bound: None,
            } => self.udp_bind(id, endpoint, None),
            _ => Err(Errno::INVAL),
        }
    }

    fn udp_bind(
        &mut self,
        id: SockId,
        endpoint: IpListenEndpoint,
        peer: Option<IpEndpoint>,
    ) -> WasiResult {
        let bytes = 2 * UDP_BYTES;
        self.mem.reserve(bytes)?;
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BYTES],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BYTES],
            ),
        );
        s.bind(endpoint).map_err(|_| Errno::INVAL)?;
        let handle = self.mem.add(&mut self.set, s, bytes);
        self.entry_mut(id)?.socket = Socket::Dgram { handle, peer };
        Ok(())
    }

    fn ephemeral_port(&mut self) -> u16 {
        for _ in 0..(u16::MAX - EPHEMERAL_FIRST) {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            let taken = self.port_in_use(port)
                || self.set.iter().any(|(_, s)| match s {
                    smoltcp::socket::Socket::Tcp(t) => {
                        t.local_endpoint().is_some_and(|e| e.port == port)
                    }
                    smoltcp::socket::Socket::Udp(u) => u.endpoint().port == port,
                    _ => false,
                });
            if !taken {
                return port;
            }
        }
        self.next_port
    }

    /// Starts connecting a fresh socket to `peer` (`sock_connect`); a stream connects in
    /// the background (see [`Net::connect_state`]).
    pub fn connect(&mut self, id: SockId, peer: IpEndpoint) -> WasiResult {
        if peer.port == 0 || peer.addr.is_unspecified() {
            return Err(Errno::INVAL);
        }
        let entry = self.entry(id)?;
        let options = entry.options;
        match entry.socket {
            Socket::Fresh {
                kind: SockType::Stream,
                bound,
            } => {
                if self.local_addr().is_none() {
                    return Err(Errno::NETUNREACH);
                }
                let port = match bound {
                    Some(b) if b.port != 0 => b.port,
                    _ => self.ephemeral_port(),
                };
                let local = IpListenEndpoint {
                    addr: bound.and_then(|b| b.addr),
                    port,
                };
                let (mut s, bytes) = self.tcp_socket(&options)?;
                s.connect(self.iface.context(), peer, local)
                    .map_err(|e| match e {
                        tcp::ConnectError::Unaddressable => Errno::NETUNREACH,
                        tcp::ConnectError::InvalidState => Errno::ISCONN,
                    })?;
                let handle = self.mem.add(&mut self.set, s, bytes);
                self.connections += 1;
                self.entry_mut(id)?.socket = Socket::Stream {
                    handle,
                    read_shut: false,
                };
                Ok(())
            }
            Socket::Fresh {
                kind: SockType::Dgram,
                bound,
            } => {
                let port = self.ephemeral_port();
                let local = bound.unwrap_or(IpListenEndpoint { addr: None, port });
                self.udp_bind(id, local, Some(peer))
            }
            Socket::Dgram { .. } => {
                if let Socket::Dgram { peer: p, .. } = &mut self.entry_mut(id)?.socket {
                    *p = Some(peer);
                }
                Ok(())
            }
            Socket::Stream { .. } => Err(Errno::ISCONN),
            Socket::Listener(_) => Err(Errno::INVAL),
        }
    }

    /// How a connecting stream is doing: `Ok(true)` connected, `Ok(false)` in progress.
    pub fn connect_state(&self, id: SockId) -> WasiResult<bool> {
        match self.entry(id)?.socket {
            Socket::Stream { handle, .. } => match self.set.get::<tcp::Socket>(handle).state() {
                tcp::State::SynSent | tcp::State::SynReceived => Ok(false),
                tcp::State::Closed => Err(Errno::CONNREFUSED),
                _ => Ok(true),
            },
            _ => Ok(true),
        }
    }

    /// Takes the next established connection off a listener.
    pub fn accept(&mut self, id: SockId) -> WasiResult<SockId> {
        let options = self.entry(id)?.options;
        let (set, mem) = (&mut self.set, &mut self.mem);
        let entry = self
            .sockets
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(Errno::BADF)?;
        let Socket::Listener(l) = &mut entry.socket else {
            return Err(Errno::INVAL);
        };
        let mut taken = None;
        let mut i = 0;
        while i < l.incoming.len() {
            let h = l.incoming[i];
            match set.get::<tcp::Socket>(h).state() {
                // Still in the handshake: leave it queued.
                tcp::State::SynReceived => i += 1,
                // Reset before the app saw it.
                tcp::State::Closed | tcp::State::Listen => {
                    l.incoming.remove(i);
                    mem.remove(set, h);
                }
                _ => {
                    l.incoming.remove(i);
                    taken = Some(h);
                    break;
                }
            }
        }
        let handle = taken.ok_or(Errno::AGAIN)?;
        // The app has it now: an idle connection is its to keep.
        set.get_mut::<tcp::Socket>(handle).set_timeout(None);
        promote(set, mem, l);
        if self.sockets.len() >= MAX_SOCKETS && !self.sockets.iter().any(Option::is_none) {
            // No descriptor for it: the connection goes, not its memory.
            set.get_mut::<tcp::Socket>(handle).abort();
            self.closing.push(Closing {
                handle,
                closed_at: self.now_ns,
                time_wait_since: None,
            });
            return Err(Errno::NFILE);
        }
        self.connections += 1;
        self.insert(
            Socket::Stream {
                handle,
                read_shut: false,
            },
            options,
        )
    }

    /// Closes a socket: a stream sends its FIN and lingers until the peer's side is done.
    pub fn close(&mut self, id: SockId) {
        let Some(entry) = self.sockets.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        match entry.socket {
            Socket::Fresh { .. } => {}
            Socket::Listener(l) => {
                for h in l.spares.into_iter().chain(l.incoming) {
                    self.set.get_mut::<tcp::Socket>(h).abort();
                    self.linger(h);
                }
            }
            Socket::Stream { handle, .. } => {
                let s = self.set.get_mut::<tcp::Socket>(handle);
                // Unread data on close means the app did not want it: reset, as Linux does.
                if s.recv_queue() > 0 {
                    s.abort();
                } else {
                    s.close();
                }
                self.linger(handle);
            }
            Socket::Dgram { handle, .. } => {
                self.mem.remove(&mut self.set, handle);
            }
        }
    }

    /// TCP sockets handed out again after serving a connection.
    #[cfg(test)]
    pub(crate) fn sockets_reused(&self) -> u64 {
        self.mem.reused
    }

    /// Socket allocations refused for memory, as the quiet report counts them.
    #[cfg(test)]
    pub(crate) fn sockets_refused(&self) -> u64 {
        self.mem.refused
    }

    /// Whether every closed connection has had its data and FIN acknowledged (or was
    /// reset), so ending the VM loses nothing the app sent.
    pub fn settled(&self) -> bool {
        self.closing.iter().all(|c| {
            let s = self.set.get::<tcp::Socket>(c.handle);
            s.send_queue() == 0
                && matches!(
                    s.state(),
                    tcp::State::Closed
                        | tcp::State::TimeWait
                        | tcp::State::FinWait2
                        | tcp::State::Listen
                )
        })
    }

    /// Starts an A query for `name` at the configured DNS server.
    pub fn start_query(&mut self, name: &str) -> WasiResult {
        let server = self.dns.ok_or(Errno::AI_FAIL)?;
        self.end_query();
        let handle = self
            .set
            .add(dns::Socket::new(&[IpAddress::Ipv4(server)], Vec::new()));
        let query = self.set.get_mut::<dns::Socket>(handle).start_query(
            self.iface.context(),
            name,
            smoltcp::wire::DnsQueryType::A,
        );
        match query {
            Ok(q) => {
                self.query = Some((handle, q));
                Ok(())
            }
            Err(_) => {
                self.set.remove(handle);
                Err(Errno::AI_NONAME)
            }
        }
    }

    /// The answer to the query in progress: EAGAIN while it is pending.
    pub fn query_result(&mut self) -> WasiResult<Vec<Ipv4Address>> {
        let (handle, query) = self.query.ok_or(Errno::INVAL)?;
        match self
            .set
            .get_mut::<dns::Socket>(handle)
            .get_query_result(query)
        {
            Ok(addrs) => Ok(addrs
                .iter()
                .map(|a| {
                    let IpAddress::Ipv4(v4) = *a;
                    v4
                })
                .collect()),
            Err(dns::GetQueryResultError::Pending) => Err(Errno::AGAIN),
            Err(dns::GetQueryResultError::Failed) => Err(Errno::AI_NONAME),
        }
    }

    pub fn end_query(&mut self) {
        if let Some((handle, _)) = self.query.take() {
            self.set.remove(handle);
        }
    }

    /// How many smoltcp sockets exist (listeners' spares included), for leak tests.
    #[cfg(test)]
    pub fn set_len(&self) -> usize {
        self.set.iter().count()
    }

    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(handle)
    }

    pub fn udp(&mut self, handle: SocketHandle) -> &mut udp::Socket<'static> {
        self.set.get_mut::<udp::Socket>(handle)
    }

    /// Readiness of socket `id` for `poll_oneoff`.
    pub fn readiness(&mut self, id: SockId) -> WasiResult<Readiness> {
        let entry = self.entry(id)?;
        Ok(match &entry.socket {
            Socket::Fresh { .. } => Readiness {
                readable: None,
                writable: None,
                hangup: true,
            },
            Socket::Listener(l) => {
                let ready = l
                    .incoming
                    .iter()
                    .filter(|&&h| {
                        !matches!(
                            self.set.get::<tcp::Socket>(h).state(),
                            tcp::State::SynReceived | tcp::State::Listen | tcp::State::Closed
                        )
                    })
                    .count();
                Readiness {
                    readable: (ready > 0).then_some(ready as u64),
                    writable: None,
                    hangup: false,
                }
            }
            Socket::Stream { handle, .. } => {
                let s = self.set.get::<tcp::Socket>(*handle);
                let connecting = matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived);
                let queued = s.recv_queue() as u64;
                let eof = !s.may_recv() && !connecting;
                let room = (s.send_capacity() - s.send_queue()) as u64;
                let dead = !s.may_send() && !connecting;
                Readiness {
                    readable: (queued > 0 || eof).then_some(queued),
                    writable: ((room > 0 && s.may_send()) || dead).then_some(room),
                    hangup: eof,
                }
            }
            Socket::Dgram { handle, .. } => {
                let s = self.set.get_mut::<udp::Socket>(*handle);
                let next = s.peek().map(|(d, _)| d.len() as u64).ok();
                Readiness {
                    readable: next,
                    writable: s.can_send().then_some(s.payload_send_capacity() as u64),
                    hangup: false,
                }
            }
        })
    }

    /// The local and remote endpoints of a socket.
    pub fn endpoints(&self, id: SockId) -> WasiResult<(Option<IpEndpoint>, Option<IpEndpoint>)> {
        let local_of = |e: IpListenEndpoint| IpEndpoint {
            addr: e.addr.unwrap_or(IpAddress::Ipv4(
                self.local_addr().unwrap_or(Ipv4Address::UNSPECIFIED),
            )),
            port: e.port,
        };
        Ok(match &self.entry(id)?.socket {
            Socket::Fresh { bound, .. } => (bound.map(local_of), None),
            Socket::Listener(l) => (Some(local_of(l.endpoint)), None),
            Socket::Stream { handle, .. } => {
                let s = self.set.get::<tcp::Socket>(*handle);
                (s.local_endpoint(), s.remote_endpoint())
            }
            Socket::Dgram { handle, peer } => {
                let s = self.set.get::<udp::Socket>(*handle);
                (Some(local_of(s.endpoint())), *peer)
            }
        })
    }
}

/// A TCP socket with `rx` bytes of receive and `tx` of send buffer, and the settings every
/// one shares.
fn new_tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    configure_tcp_socket(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    ))
}

/// A socket that served a connection, closed and with the settings of a new one. Its
/// `listen` or `connect` resets the connection's state (smoltcp's own servers reuse
/// sockets the same way).
fn reuse_tcp_socket(mut s: tcp::Socket<'static>) -> tcp::Socket<'static> {
    if s.is_open() {
        s.abort();
    }
    s.set_timeout(None);
    s.set_keep_alive(None);
    s.set_hop_limit(None);
    configure_tcp_socket(s)
}

fn configure_tcp_socket(mut s: tcp::Socket<'static>) -> tcp::Socket<'static> {
    // At most half a full-size receive buffer as the window, so that it stays steady while
    // what arrived waits for the app (see [`TCP_RX_BUFFER`]). A buffer halved because
    // socket memory runs low advertises all of itself: there the window bounds throughput
    // (half of a 4 KiB buffer took uploads beside 60 idle connections from 20-31 to
    // 11-14 MB/s).
    let rx = s.recv_capacity();
    s.set_window_limit(if rx >= TCP_RX_BUFFER { rx / 2 } else { rx });
    // Apps cannot set TCP_NODELAY through preview1, and a response written in two pieces
    // must not wait for an ACK; batching happens per poll anyway.
    s.set_nagle_enabled(false);
    // With two full-size segments per window on a 64 KiB-MTU link, a delayed ACK would
    // stall the sender for the whole delay; ACKs leave in the same batch as everything else.
    s.set_ack_delay(None);
    s
}

/// Moves a listener's spares that left LISTEN to its incoming queue, takes back queued
/// sockets whose handshake was reset (smoltcp returns them to LISTEN) or that closed before
/// the app accepted them, and tops the spares up.
fn promote(set: &mut SocketSet<'static>, mem: &mut SocketMemory, l: &mut Listener) {
    let mut i = 0;
    while i < l.spares.len() {
        if set.get::<tcp::Socket>(l.spares[i]).state() == tcp::State::Listen {
            i += 1;
        } else {
            let h = l.spares.swap_remove(i);
            l.incoming.push_back(h);
        }
    }
    let mut relisten = Vec::new();
    l.incoming
        .retain(|&h| match set.get::<tcp::Socket>(h).state() {
            tcp::State::Listen => {
                relisten.push(h);
                false
            }
            tcp::State::Closed => {
                mem.remove(set, h);
                false
            }
            _ => true,
        });
    for h in relisten {
        if l.spares.len() < LISTEN_SPARES {
            l.spares.push(h);
        } else {
            mem.remove(set, h);
        }
    }
    let want = l.spares_wanted();
    while l.spares.len() < want {
        let Some((mut s, bytes)) = mem.spare_tcp_socket() else {
            // Out of socket memory: with no spare left the next SYN is reset; counted
            // once each time the listener runs out.
            if l.spares.is_empty() && !l.starved {
                l.starved = true;
                mem.refused += 1;
            }
            break;
        };
        s.set_timeout(Some(QUEUED_TIMEOUT));
        if s.listen(l.endpoint).is_err() {
            break;
        }
        l.spares.push(mem.add(set, s, bytes));
    }
    if !l.spares.is_empty() {
        l.starved = false;
    }
}

/// Replaces a listener's spares that were made with small buffers while memory ran low by
/// full-size ones once memory allows: otherwise they would serve the next connections
/// with less after every burst, until each had served one. Only spares still in LISTEN
/// are replaced, so no connection is lost.
fn restore_spares(set: &mut SocketSet<'static>, mem: &mut SocketMemory, l: &mut Listener) {
    for spare in l.spares.iter_mut() {
        // A spare a SYN just reached is a connection now (`promote` moves it on).
        let listening = set.get::<tcp::Socket>(*spare).state() == tcp::State::Listen;
        if !listening || !mem.can_restore(*spare) {
            continue;
        }
        let Some((mut s, bytes)) = mem.spare_tcp_socket() else {
            return;
        };
        s.set_timeout(Some(QUEUED_TIMEOUT));
        if s.listen(l.endpoint).is_err() {
            return;
        }
        mem.remove(set, *spare);
        *spare = mem.add(set, s, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_buffers_shrink_as_memory_runs_low_and_then_are_refused() {
        let mut mem = SocketMemory::new(8 << 20);
        let mut set = SocketSet::new(Vec::new());
        let mut handles = Vec::new();
        let mut sizes = Vec::new();
        while let Some((s, bytes)) = mem.tcp_socket() {
            sizes.push(bytes);
            handles.push(mem.add(&mut set, s, bytes));
            assert!(mem.in_use <= mem.budget);
        }
        assert_eq!(
            sizes[0],
            TCP_RX_BUFFER + TCP_TX_BUFFER,
            "full buffers while memory is plentiful"
        );
        assert_eq!(*sizes.last().unwrap(), 2 * MIN_TCP_BUFFER);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert_eq!(mem.refused, 1);
        assert!(mem.reserve(2 * UDP_BYTES).is_err());
        // Closing gives it all back.
        for h in handles {
            mem.remove(&mut set, h);
        }
        assert_eq!((mem.in_use, set.iter().count()), (0, 0));
        assert_eq!(
            mem.tcp_socket().map(|(_, b)| b),
            Some(TCP_RX_BUFFER + TCP_TX_BUFFER)
        );
    }

    #[test]
    fn closed_tcp_sockets_serve_again_within_the_budget() {
        let full = TCP_RX_BUFFER + TCP_TX_BUFFER;
        let mut mem = SocketMemory::new(200 * full);
        let held = |mem: &SocketMemory| mem.in_use + mem.idle_bytes();
        let mut set = SocketSet::new(Vec::new());
        let open = |mem: &mut SocketMemory, set: &mut SocketSet<'static>| {
            let (s, bytes) = mem.tcp_socket().unwrap();
            mem.add(set, s, bytes)
        };
        let handles: Vec<_> = (0..20).map(|_| open(&mut mem, &mut set)).collect();
        // Closed sockets are kept, up to the limit, their memory still counted.
        for h in handles {
            mem.remove(&mut set, h);
            assert!(held(&mem) <= mem.budget);
        }
        assert_eq!(mem.in_use, 0);
        assert_eq!(mem.idle.len(), IDLE_TCP_SOCKETS);
        // The next connection takes one back: no new buffers, no more memory held.
        let kept = held(&mem);
        let (s, bytes) = mem.tcp_socket().unwrap();
        assert_eq!((bytes, mem.reused), (full, 1));
        assert_eq!(s.state(), tcp::State::Closed);
        let h = mem.add(&mut set, s, bytes);
        assert_eq!(held(&mem), kept, "reuse moves memory, it adds none");
        // A reused socket is as good as new: one that was listening, with every setting
        // changed, comes back closed, with a new socket's settings, and listens again.
        let s = set.get_mut::<tcp::Socket>(h);
        s.set_timeout(Some(Duration::from_secs(5)));
        s.set_keep_alive(Some(Duration::from_secs(5)));
        s.set_hop_limit(Some(7));
        s.set_nagle_enabled(true);
        s.set_ack_delay(Some(Duration::from_millis(10)));
        s.listen(9999).unwrap();
        mem.remove(&mut set, h);
        let (mut s, bytes) = mem.tcp_socket().unwrap();
        assert_eq!((bytes, mem.reused), (full, 2));
        assert_eq!(s.state(), tcp::State::Closed);
        assert!(!s.nagle_enabled());
        assert_eq!(
            (s.timeout(), s.keep_alive(), s.ack_delay()),
            (None, None, None)
        );
        assert_eq!(s.hop_limit(), None);
        assert!(s.listen(8080).is_ok());
        // Under load a connection gets smaller buffers; a kept full-size socket is not
        // handed out instead (it would hold more than the load allows), and making the
        // smaller one gives back kept memory as needed.
        mem.budget = 16 * full;
        let mut fresh = SocketMemory::new(mem.budget);
        let mut fresh_set = SocketSet::new(Vec::new());
        let mut sizes = (Vec::new(), Vec::new());
        while let Some((s, bytes)) = fresh.tcp_socket() {
            fresh.add(&mut fresh_set, s, bytes);
            sizes.0.push(bytes);
        }
        let mut load = Vec::new();
        while let Some((s, bytes)) = mem.tcp_socket() {
            load.push(mem.add(&mut set, s, bytes));
            sizes.1.push(bytes);
            assert!(held(&mem) <= mem.budget);
        }
        assert_eq!(
            sizes.1, sizes.0,
            "kept sockets change no connection's buffers"
        );
        assert!(
            mem.reused > 2,
            "kept sockets served while full size was due"
        );
        assert!(mem.idle.is_empty());
        // A reservation that needs kept sockets' memory takes it.
        for h in load.drain(..) {
            mem.remove(&mut set, h);
        }
        assert!(!mem.idle.is_empty());
        assert!(mem.reserve(mem.budget - mem.in_use).is_ok());
        assert!(mem.idle.is_empty());
    }

    #[test]
    fn spares_made_while_memory_ran_low_get_full_buffers_once_it_is_back() {
        let full = TCP_RX_BUFFER + TCP_TX_BUFFER;
        let mut mem = SocketMemory::new(16 * full);
        let mut set = SocketSet::new(Vec::new());
        // A burst holds most of the budget while the listener tops its spares up.
        let burst: Vec<_> = (0..10)
            .map(|_| {
                let (s, bytes) = mem.tcp_socket().unwrap();
                mem.add(&mut set, s, bytes)
            })
            .collect();
        let mut l = Listener {
            endpoint: IpListenEndpoint {
                addr: None,
                port: 8080,
            },
            spares: Vec::new(),
            incoming: VecDeque::new(),
            backlog: 16,
            starved: false,
        };
        promote(&mut set, &mut mem, &mut l);
        assert_eq!(l.spares.len(), LISTEN_SPARES);
        assert!(l.spares.iter().all(|&h| mem.is_undersized(h)));
        // Still short of memory: nothing changes.
        restore_spares(&mut set, &mut mem, &mut l);
        assert!(l.spares.iter().all(|&h| mem.is_undersized(h)));
        // The burst ends: the spares get full buffers, still listening, none leaked.
        for h in burst {
            mem.remove(&mut set, h);
        }
        restore_spares(&mut set, &mut mem, &mut l);
        assert_eq!(l.spares.len(), LISTEN_SPARES);
        for &h in &l.spares {
            assert!(!mem.is_undersized(h));
            assert_eq!(set.get::<tcp::Socket>(h).state(), tcp::State::Listen);
        }
        assert_eq!(set.iter().count(), LISTEN_SPARES);
        assert_eq!(mem.in_use, LISTEN_SPARES * full);
    }
}
