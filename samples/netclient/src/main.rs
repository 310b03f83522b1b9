//! The `netclient` sample: outbound TCP through the WasmEdge socket extension (the
//! `wasmedge_wasi_socket` crate, whose `sock_open`/`sock_connect`/`sock_send`/`sock_recv`/
//! `sock_shutdown` are extra imports in `wasi_snapshot_preview1`).
//!
//! `netclient HOST:PORT BYTES` connects to an IPv4 address, sends BYTES bytes of the test
//! pattern (byte i = (i * 31 + 7) % 251) to an echo server while reading what comes back,
//! reads until all of it came back (or the server closes), and prints
//! `sent N received M fnv1a64 HEX` (FNV-1a 64 of the received bytes). Exit status 0 when
//! everything was sent and came back unchanged, else 1 with the reason on stderr; 2 for a
//! usage error.
//!
//! `netclient --resolve NAME` prints NAME's IPv4 addresses, one a line, through the
//! extension's `sock_getaddrinfo` (feature `resolve`, on by default; a build with
//! `--no-default-features` does not import `sock_getaddrinfo` at all).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use wasmedge_wasi_socket::TcpStream;
use wasmedge_wasi_socket::poll::{EventType, Subscription, poll};

const CHUNK: usize = 64 * 1024;
/// Poll userdata of the two subscriptions.
const READ: u64 = 0;
const WRITE: u64 = 1;

/// The test pattern, as in the `http` sample: byte `i` is `(i * 31 + 7) % 251`.
fn pattern_byte(i: u64) -> u8 {
    ((i % 251 * 31 + 7) % 251) as u8
}

/// 64-bit FNV-1a.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: netclient IPV4:PORT BYTES\n       netclient --resolve NAME");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, name] if flag == "--resolve" => resolve(name),
        [addr, bytes] => {
            let (Ok(addr), Ok(bytes)) = (addr.parse::<SocketAddrV4>(), bytes.parse::<u64>()) else {
                return usage();
            };
            match transfer(addr, bytes) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("netclient: {addr}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}

/// What came back so far.
struct Received {
    count: u64,
    hash: Fnv1a,
    /// The first byte that differs from the pattern: offset, value.
    mismatch: Option<(u64, u8)>,
}

impl Received {
    fn add(&mut self, data: &[u8]) {
        if self.mismatch.is_none()
            && let Some(k) =
                (data.iter().zip(self.count..)).position(|(&b, i)| b != pattern_byte(i))
        {
            self.mismatch = Some((self.count + k as u64, data[k]));
        }
        self.hash.update(data);
        self.count += data.len() as u64;
    }
}

/// Sends `total` pattern bytes to `addr` and reads the echo, interleaved on a nonblocking
/// socket so that neither side's buffers filling up can deadlock a large transfer.
fn transfer(addr: SocketAddrV4, total: u64) -> io::Result<ExitCode> {
    let mut stream = TcpStream::connect(SocketAddr::V4(addr))?;
    stream.set_nonblocking(true)?;

    let mut sent = 0u64;
    // Pattern bytes generated but not yet sent: `out[out_pos..]`, starting at offset `sent`.
    let mut out: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut out_pos = 0;
    let mut sending = true;
    let mut received = Received {
        count: 0,
        hash: Fnv1a::new(),
        mismatch: None,
    };
    let mut buf = vec![0u8; CHUNK];

    // Done once every byte came back: no half-close and wait for EOF, which some
    // user-mode networks (Debian 12's passt) never deliver after a guest's half-close.
    'io: while received.count < total || sent < total {
        if sending && sent == total {
            sending = false;
        }
        let mut subscriptions = vec![Subscription::io(READ, &stream, true, false, None)];
        if sending {
            subscriptions.push(Subscription::io(WRITE, &stream, false, true, None));
        }
        let (mut readable, mut writable) = (false, false);
        for event in poll(&subscriptions)? {
            // An error event is acted on like readiness: the read or write then reports it.
            if matches!(event.event_type, EventType::Timeout) {
                continue;
            }
            readable |= event.userdata == READ;
            writable |= event.userdata == WRITE;
        }

        if readable {
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break 'io,
                    Ok(n) => received.add(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }

        while writable && sent < total {
            if out_pos == out.len() {
                out.clear();
                out_pos = 0;
                out.extend((0..(total - sent).min(CHUNK as u64)).map(|k| pattern_byte(sent + k)));
            }
            match stream.write(&out[out_pos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out_pos += n;
                    sent += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    println!(
        "sent {sent} received {} fnv1a64 {:016x}",
        received.count, received.hash.0
    );
    let failure = if let Some((at, got)) = received.mismatch {
        Some(format!(
            "byte {at} came back as {got}, not {}",
            pattern_byte(at)
        ))
    } else if sent != total {
        Some(format!("the server closed after {sent} of {total} bytes"))
    } else if received.count != sent {
        Some(format!("sent {sent} bytes but received {}", received.count))
    } else {
        None
    };
    Ok(match failure {
        Some(why) => {
            eprintln!("netclient: {why}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    })
}

#[cfg(feature = "resolve")]
fn resolve(name: &str) -> ExitCode {
    match wasmedge_wasi_socket::nslookup_with_host(name, "http") {
        Ok(addrs) if !addrs.is_empty() => {
            for a in addrs {
                println!("{}", a.ip());
            }
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("netclient: {name}: no IPv4 address");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("netclient: {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "resolve"))]
fn resolve(_name: &str) -> ExitCode {
    eprintln!("netclient: built without the `resolve` feature");
    ExitCode::from(2)
}
