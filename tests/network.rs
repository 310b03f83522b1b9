//! Networking end to end: the samples serve and connect from inside VMs on every backend,
//! driven from the host through published ports (`-p`), with preopened listeners
//! (`--listen`) and the WasmEdge socket extension for outbound connections.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// A VM serving on a published host port; stopped (SIGTERM, as a user would) when dropped.
struct Guest {
    child: Child,
    port: u16,
}

impl Drop for Guest {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Guest {
    /// Boots `image` on `vmm` with host port → guest `guest_port` and waits for the app's
    /// readiness line.
    fn start(vmm: &str, image: &Path, guest_port: u16, ready: &str, extra: &[&str]) -> Guest {
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:{guest_port}");
        let mut cmd = wasmvm();
        cmd.args(["run", "--vmm", vmm, "--accel", accel(), "-p", &publish])
            .args(extra)
            .arg(image)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let child = spawn_ready(cmd, ready);
        Guest { child, port }
    }

    /// A connection to the published port; connecting, reads and writes fail after a minute
    /// instead of hanging.
    fn connect(&self) -> TcpStream {
        let limit = Duration::from_secs(60);
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let s = TcpStream::connect_timeout(&at, limit)
            .unwrap_or_else(|e| panic!("connecting to {at}: {e}"));
        s.set_read_timeout(Some(limit)).unwrap();
        s.set_write_timeout(Some(limit)).unwrap();
        s
    }

    /// Waits (within [`RUN_LIMIT`]) for the VM to end; returns its exit status and stderr.
    fn wait(mut self) -> (i32, String) {
        let o = collect_within(&mut self.child, RUN_LIMIT);
        (o.status.code().unwrap_or(-1), stderr(&o))
    }
}

/// The byte at offset `i` of the samples' test pattern.
fn pattern(i: u64) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Reads one HTTP/1.1 response (Content-Length framed) off a keep-alive connection.
fn read_response<R: Read>(r: &mut BufReader<R>) -> (u16, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {status:?}"))
        .parse()
        .unwrap();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (code, body)
}

fn request(guest: &Guest, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = guest.connect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    read_response(&mut BufReader::new(s))
}

fn http_image() -> &'static PathBuf {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = scratch();
            let img = dir.path().join("http.img");
            pack(&sample("http"), &img, &["--listen", "8080"]);
            (dir, img)
        })
        .1
}

const HTTP_READY: &str = "listening on fd 3";

/// The HTTP sample packed for the compiled engine.
fn http_image_compiled() -> &'static PathBuf {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = scratch();
            let img = dir.path().join("http-wasmtime.img");
            pack(
                &sample("http"),
                &img,
                &["--listen", "8080", "--engine", "wasmtime"],
            );
            (dir, img)
        })
        .1
}

/// Every backend with the HTTP sample packed for each engine.
fn http_runs() -> impl Iterator<Item = (&'static str, &'static PathBuf)> {
    backends()
        .iter()
        .flat_map(|&vmm| [(vmm, http_image()), (vmm, http_image_compiled())])
}

#[test]
fn the_http_sample_answers_from_every_backend_on_both_engines() {
    for (vmm, image) in http_runs() {
        let guest = Guest::start(vmm, image, 8080, HTTP_READY, &[]);
        let (code, body) = request(&guest, "GET", "/", b"");
        assert_eq!(
            (code, &body[..]),
            (200, &b"hello from wasmvm\n"[..]),
            "{vmm}"
        );
        let (code, _) = request(&guest, "GET", "/nope", b"");
        assert_eq!(code, 404, "{vmm}");
        let (code, body) = request(&guest, "GET", "/exit/7", b"");
        assert_eq!((code, &body[..]), (200, &b"bye\n"[..]), "{vmm}");
        let (status, err) = guest.wait();
        assert_eq!(status, 7, "{vmm}: {err}");
    }
}

/// A reply the app wrote just before it computes forever (no system call, so no exit the
/// VMM could take the frames at) still arrives: the built-in VMM's quiet windows end with a
/// timer's exit. On both engines; the VM is stopped afterwards.
#[test]
fn a_reply_reaches_the_client_while_the_app_computes_forever() {
    for (vmm, image) in http_runs() {
        let guest = Guest::start(vmm, image, 8080, HTTP_READY, &[]);
        // Traffic first, so the transmit queue is in a quiet window when the reply goes.
        for _ in 0..3 {
            assert_eq!(request(&guest, "GET", "/", b"").0, 200, "{vmm}");
        }
        let mut s = guest.connect();
        // Failing (a timeout), not hanging, if the reply is stranded.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /spin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        let got = s.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply).into_owned();
        assert!(
            got.is_ok() && text.starts_with("HTTP/1.1 200") && text.ends_with("spinning\n"),
            "{vmm}: {got:?}, {text:?}"
        );
        // Still computing: the VM has not ended on its own.
        let mut guest = guest;
        assert!(guest.child.try_wait().unwrap().is_none(), "{vmm}");
    }
}

#[test]
fn many_concurrent_keep_alive_clients_are_served() {
    for vmm in backends() {
        let mut guest = Guest::start(vmm, http_image(), 8080, HTTP_READY, &[]);
        // Connect one by one (QEMU's slirp listens on forwarded ports with a backlog of
        // one, so a burst of SYNs waits for the host's retransmissions), then talk on all
        // 48 at once.
        let conns: Vec<TcpStream> = (0..48).map(|_| guest.connect()).collect();
        let clients: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(c, s)| {
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    for i in 0..40 {
                        let body = format!("client {c} request {i}");
                        let req = format!(
                            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        w.write_all(req.as_bytes()).unwrap();
                        let (code, echoed) = read_response(&mut r);
                        assert_eq!(code, 200);
                        assert_eq!(echoed, body.as_bytes());
                    }
                })
            })
            .collect();
        let failed = clients.into_iter().filter_map(|c| c.join().err()).count();
        if failed > 0 {
            let _ = guest.child.kill();
            let (_, err) = guest.wait();
            panic!("{vmm}: {failed} of 48 clients failed; the VM said:\n{err}");
        }
        request(&guest, "GET", "/exit/0", b"");
        assert_eq!(guest.wait().0, 0, "{vmm}");
    }
}

#[test]
fn large_transfers_arrive_intact_both_ways() {
    const LEN: u64 = 64 << 20;
    for vmm in backends() {
        let guest = Guest::start(vmm, http_image(), 8080, HTTP_READY, &[]);
        // Guest to host: a generated body, checked byte by byte.
        let (code, body) = request(&guest, "GET", &format!("/bytes/{LEN}"), b"");
        assert_eq!(code, 200);
        assert_eq!(body.len() as u64, LEN, "{vmm}");
        let bad = (0..LEN).find(|&i| body[i as usize] != pattern(i));
        assert_eq!(bad, None, "{vmm}: first corrupted byte");
        // Host to guest: the guest hashes what it received.
        let upload: Vec<u8> = (0..LEN).map(|i| pattern(i * 7 + 3)).collect();
        let (code, sum) = request(&guest, "POST", "/sum", &upload);
        assert_eq!(code, 200);
        assert_eq!(
            String::from_utf8_lossy(&sum).trim(),
            format!("{:016x}", fnv1a(&upload)),
            "{vmm}"
        );
        request(&guest, "GET", "/exit/0", b"");
        assert_eq!(guest.wait().0, 0, "{vmm}");
    }
}

/// A client with a small receive buffer, and one that pauses before reading: passt
/// acknowledges the guest's data only as the client takes it, and tells the guest only
/// when the guest sends again. Such downloads stopped for good after the guest's send
/// buffer (512 KiB), or resumed up to a minute after the reader did (vendored smoltcp:
/// vendor/smoltcp/WASMVM.md). Both must arrive whole, the read timeout catching a stall.
#[test]
fn slow_readers_get_their_whole_download() {
    use std::os::fd::AsRawFd;
    // Past the guest's 512 KiB send buffer.
    const LEN: u64 = 768 << 10;
    // passt's behaviour; QEMU's slirp is another network.
    if !builtin_vmm_usable() {
        return;
    }
    let guest = Guest::start("builtin", http_image(), 8080, HTTP_READY, &[]);
    for (rcvbuf, pause) in [(8192, Duration::ZERO), (0, Duration::from_secs(2))] {
        let mut s = guest.connect();
        if rcvbuf > 0 {
            let size: libc::c_int = rcvbuf;
            // SAFETY: setsockopt on a socket this test owns, with a pointer to a c_int and
            // its length.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        }
        write!(s, "GET /bytes/{LEN} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        std::thread::sleep(pause);
        let (code, body) = read_response(&mut BufReader::new(s));
        assert_eq!((code, body.len() as u64), (200, LEN), "rcvbuf {rcvbuf}");
        let bad = (0..LEN).find(|&i| body[i as usize] != pattern(i));
        assert_eq!(bad, None, "rcvbuf {rcvbuf}: first corrupted byte");
    }
    request(&guest, "GET", "/exit/0", b"");
    assert_eq!(guest.wait().0, 0);
}

/// File descriptors a process holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn thousands_of_connections_come_and_go_without_leaks() {
    for vmm in backends() {
        let guest = Guest::start(vmm, http_image(), 8080, HTTP_READY, &[]);
        let pid = guest.child.id();
        let warm = |n: usize| {
            for _ in 0..n {
                let (code, _) = request(&guest, "GET", "/", b"");
                assert_eq!(code, 200);
            }
        };
        warm(50);
        let fds_before = open_fds(pid);
        // Half close after a request, half drop the connection unannounced. The host side
        // always closes first: were the guest's side (passt or slirp on loopback) the active
        // closer, its TIME-WAIT sockets would collide with ports the host's connect() hands
        // out again, and the host kernel would refuse or reset those connections.
        for i in 0..2000 {
            let mut s = guest.connect();
            if i % 2 == 0 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                let (code, body) = read_response(&mut BufReader::new(&mut s));
                assert_eq!(
                    (code, &body[..]),
                    (200, &b"hello from wasmvm\n"[..]),
                    "{vmm}: round {i}"
                );
            }
            s.shutdown(Shutdown::Both).unwrap();
        }
        warm(50);
        let fds_after = open_fds(pid);
        assert!(
            fds_after <= fds_before + 2,
            "{vmm}: the VMM's descriptors grew from {fds_before} to {fds_after}"
        );
        request(&guest, "GET", "/exit/0", b"");
        let (status, err) = guest.wait();
        assert_eq!(status, 0, "{vmm}: {err}");
    }
}

fn echo_image() -> Option<&'static PathBuf> {
    static IMAGE: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = scratch();
            let wasm = zig_sample("c/echo.c", &dir.path().join("echo.wasm"))?;
            let img = dir.path().join("echo.img");
            pack(&wasm, &img, &["--listen", "7"]);
            Some((dir, img))
        })
        .as_ref()
        .map(|(_, img)| img)
}

#[test]
fn the_c_echo_server_exits_cleanly_with_connections_open() {
    let Some(image) = echo_image() else { return };
    for vmm in backends() {
        let guest = Guest::start(vmm, image, 7, "echo: ready", &[]);
        let mut idle: Vec<TcpStream> = (0..8).map(|_| guest.connect()).collect();
        for (i, s) in idle.iter_mut().enumerate() {
            let msg = format!("hello {i}\n");
            s.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes(), "{vmm}");
        }
        let mut quit = guest.connect();
        quit.write_all(b"QUIT\n").unwrap();
        let (status, err) = guest.wait();
        assert_eq!(status, 0, "{vmm}: {err}");
        // The open connections end with the VM instead of hanging: at their end (or reset,
        // which ends them too), never at the read timeout.
        for (i, mut s) in idle.into_iter().enumerate() {
            let mut rest = Vec::new();
            let got = s.read_to_end(&mut rest);
            assert!(
                !matches!(&got, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
                "{vmm}: connection {i} is still open after the VM ended: {got:?}"
            );
        }
    }
}

#[test]
fn the_outbound_client_reaches_a_host_service() {
    // A host echo service on loopback; the guest reaches it as the gateway, 10.0.2.2.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = back.shutdown(Shutdown::Write);
            });
        }
    });
    let dir = scratch();
    let img = dir.path().join("client.img");
    pack(&sample("netclient"), &img, &[]);
    let target = format!("10.0.2.2:{port}");
    for vmm in backends() {
        let out = run_on(vmm, &img, &["--", &target, "3000000"], b"");
        assert!(
            out.status.success(),
            "{vmm}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).starts_with("sent 3000000 received 3000000 "),
            "{vmm}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn network_mistakes_get_clear_errors() {
    let image = http_image();
    // A host port that is taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for vmm in backends() {
        let out = output_within(
            wasmvm()
                .args(["run", "--vmm", vmm, "--accel", accel(), "-p"])
                .arg(format!("127.0.0.1:{port}:8080"))
                .arg(image),
            QUICK_LIMIT,
        );
        assert!(!out.status.success(), "{vmm}");
        assert!(
            stderr(&out).contains(&port.to_string()) && stderr(&out).contains("in use"),
            "{vmm}: {}",
            stderr(&out)
        );
    }
    // Malformed specs name themselves.
    for bad in ["8080", "x:8080", "1.2.3:80:80", "80:0", "70000:80"] {
        let out = output_within(wasmvm().args(["run", "-p", bad]).arg(image), QUICK_LIMIT);
        assert!(!out.status.success(), "{bad}");
        assert!(stderr(&out).contains(bad), "{bad}: {}", stderr(&out));
    }
    let out = output_within(
        wasmvm()
            .args(["pack", "--listen", "99999", "-o", "/dev/null"])
            .arg(sample("http")),
        QUICK_LIMIT,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("99999"), "{}", stderr(&out));
    // A listener without a network card.
    let out = output_within(
        wasmvm().args(["run", "--network", "none"]).arg(image),
        QUICK_LIMIT,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("network"), "{}", stderr(&out));
}

/// Every listener keeps spare sockets in LISTEN from the VM's socket memory: a default VM
/// held only 17 listeners when each took four spares at once. It now holds sixty, and past
/// what it holds the boot says which listener and what to do.
#[test]
fn a_default_vm_listens_on_sixty_ports_and_says_when_it_cannot() {
    let dir = scratch();
    let listens = |ports: std::ops::Range<u16>| -> Vec<String> {
        ports
            .flat_map(|p| ["--listen".to_string(), p.to_string()])
            .collect()
    };
    let sixty = dir.path().join("sixty.img");
    let args = listens(8080..8140);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pack(&sample("http"), &sixty, &args);
    for vmm in backends() {
        let guest = Guest::start(vmm, &sixty, 8080, HTTP_READY, &[]);
        let (code, body) = request(&guest, "GET", "/", b"");
        assert_eq!(
            (code, body.as_slice()),
            (200, &b"hello from wasmvm\n"[..]),
            "{vmm}"
        );
    }
    let many = dir.path().join("many.img");
    let args = listens(8080..8280);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pack(&sample("http"), &many, &args);
    let port = free_port();
    let out = output_within(
        wasmvm()
            .args(["run", "--accel", accel(), "-p"])
            .arg(format!("127.0.0.1:{port}:8080"))
            .arg(&many),
        RUN_LIMIT,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no buffer space (ENOBUFS)") && err.contains("--memory"),
        "{err}"
    );
    assert_eq!(err.matches("listening on").count(), 1, "{err}");
}

/// One `GET / HTTP/1.0` on a fresh connection, which the server closes after its response
/// (the guest closes first); returns the whole response.
fn one_shot(port: u16) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    Ok(response)
}

/// The guest's `net: quiet after N connections: S sockets, B KiB of socket buffers, K
/// sockets kept for reuse (I KiB), U reused, R socket allocations refused for memory, heap
/// H KiB in use` line, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quiet {
    connections: u64,
    sockets: u64,
    buffers_kib: u64,
    kept: u64,
    kept_kib: u64,
    reused: u64,
    refused: u64,
    heap_kib: u64,
}

fn parse_quiet(line: &str) -> Option<Quiet> {
    let rest = line.split("net: quiet after ").nth(1)?;
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    let n = numbers.get(..8)?;
    Some(Quiet {
        connections: n[0],
        sockets: n[1],
        buffers_kib: n[2],
        kept: n[3],
        kept_kib: n[4],
        reused: n[5],
        refused: n[6],
        heap_kib: n[7],
    })
}

/// Waits (up to two minutes) for a quiet report covering at least `connections`.
fn wait_quiet(lines: &std::sync::mpsc::Receiver<String>, connections: u64, what: &str) -> Quiet {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{what}: no quiet report after {connections} connections"));
        if let Some(q) = parse_quiet(&line)
            && q.connections >= connections
        {
            return q;
        }
    }
}

/// Waits (bounded) until the built-in VMM `pid` has split at least one of its guest's huge
/// pages to give back zero pages; returns at once if the host gave it fewer than two.
fn wait_for_idle_trim(pid: u32) {
    let huge = || rollup_kib(pid, "AnonHugePages:");
    let at_start = huge().expect("the VMM is gone");
    if at_start < 2 * 2048 {
        eprintln!("note: {at_start} KiB of huge pages; no trim to wait for");
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while huge().expect("the VMM is gone") + 2048 > at_start {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle guest kept its huge pages for 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The load that killed the guest once: thousands of short connections from many clients,
/// each closed by the server after one response, so every connection's buffers linger
/// through FIN-WAIT and TIME-WAIT. The guest must answer them all, keep answering, and end
/// up holding what it held before (`-v` reports it when it goes quiet).
#[test]
fn thousands_of_connections_the_server_closes_leave_it_as_it_was() {
    const CLIENTS: usize = 8;
    const EACH: usize = 300;
    for vmm in backends() {
        let mut guest = Guest::start(vmm, http_image(), 8080, HTTP_READY, &["-v"]);
        let stderr = guest.child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let port = guest.port;
        let ok = |r: &std::io::Result<Vec<u8>>| matches!(r, Ok(b) if b.starts_with(b"HTTP/1.") && b.ends_with(b"hello from wasmvm\n"));
        for i in 0..20 {
            let r = one_shot(port);
            assert!(ok(&r), "{vmm}: warm-up {i}: {r:?}");
        }
        let before = wait_quiet(&lines, 20, vmm);
        if *vmm == "builtin" {
            // The churn also meets a guest whose idle zero pages were given back (the
            // VMM's idle trim, after a second of idling): their next touch faults afresh.
            wait_for_idle_trim(guest.child.id());
        }
        let failures: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..CLIENTS)
                .map(|_| scope.spawn(move || (0..EACH).filter(|_| !ok(&one_shot(port))).count()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(failures, 0, "{vmm}: requests failed during the churn");
        let r = one_shot(port);
        assert!(ok(&r), "{vmm}: after the churn: {r:?}");
        let total = 20 + (CLIENTS * EACH) as u64 + 1;
        let after = wait_quiet(&lines, total, vmm);
        assert_eq!(
            (after.sockets, after.buffers_kib, after.refused),
            (before.sockets, before.buffers_kib, before.refused),
            "{vmm}: sockets linger: before {before:?}, after {after:?}"
        );
        // Closed sockets are kept for the next connections: the heap holds what it held
        // before beside them.
        assert!(after.kept > 0, "{vmm}: no socket kept: {after:?}");
        assert!(
            after.reused >= (CLIENTS * EACH) as u64 / 2,
            "{vmm}: few sockets served again: {after:?}"
        );
        let (heap_before, heap_after) = (
            before.heap_kib - before.kept_kib,
            after.heap_kib - after.kept_kib,
        );
        assert!(
            heap_after.abs_diff(heap_before) <= 64,
            "{vmm}: the heap beside kept sockets went from {heap_before} KiB to {heap_after} KiB: before {before:?}, after {after:?}"
        );
        request(&guest, "GET", "/exit/0", b"");
        let status = wait_within(&mut guest.child);
        assert_eq!(status.code(), Some(0), "{vmm}");
    }
}
