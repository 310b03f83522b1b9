//! Runs the server natively (it is portable POSIX) on a listener inherited as fd 3, the way
//! wasmvm preopens it, and drives it over loopback: keep-alive, concurrency, large streamed
//! transfers, bad input, descriptor leaks, idle CPU, and `/exit`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_http"));
        cmd.stdout(Stdio::piped()).env_remove("LISTEN_FD");
        // SAFETY: dup2 and fcntl are async-signal-safe. dup2 puts the listener at fd 3
        // without close-on-exec; if it is at 3 already, clear the flag instead.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(listener);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "listening on fd 3\n");
        Server { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// User plus system CPU time, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one response: status code, head, and the body (hashed, or kept if `keep`).
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
    len: u64,
}

fn read_response(r: &mut BufReader<&TcpStream>, keep: bool) -> Response {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "EOF in head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status = head[9..12].parse().unwrap();
    let len: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = Vec::new();
    if keep {
        r.take(len).read_to_end(&mut body).unwrap();
        assert_eq!(body.len() as u64, len);
    } else {
        // Check the /bytes pattern on the fly instead of keeping a large body.
        let mut buf = vec![0; 65536];
        let mut at = 0u64;
        while at < len {
            let n = r.read(&mut buf[..(len - at).min(65536) as usize]).unwrap();
            assert!(n > 0, "EOF in body");
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, http::pattern_byte(at + k as u64));
            }
            at += n as u64;
        }
    }
    Response {
        status,
        head,
        body,
        len,
    }
}

fn get(s: &TcpStream, r: &mut BufReader<&TcpStream>, path: &str) -> Response {
    (&*s)
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    read_response(r, !path.starts_with("/bytes/"))
}

fn assert_eof(s: &TcpStream) {
    let mut rest = Vec::new();
    (&*s).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn keep_alive_and_concurrency() {
    let server = Server::start();
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let s = server.connect();
            std::thread::spawn(move || {
                let mut r = BufReader::new(&s);
                for i in 0..50 {
                    let resp = get(&s, &mut r, "/");
                    assert_eq!(resp.status, 200);
                    assert_eq!(resp.body, b"hello from wasmvm\n");
                    let n = (t * 1000 + i * 37) % 100_000;
                    let resp = get(&s, &mut r, &format!("/bytes/{n}"));
                    assert_eq!((resp.status, resp.len), (200, n as u64));
                }
                s
            })
        })
        .collect();
    let conns: Vec<TcpStream> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // 32 idle keep-alive connections: the server sleeps in poll, it does not spin.
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    assert!(server.cpu_ticks() - before <= 2, "busy while idle");
    drop(conns);
}

#[test]
fn large_transfers() {
    let server = Server::start();
    let s = server.connect();
    let mut r = BufReader::new(&s);

    let resp = get(&s, &mut r, "/bytes/60000000");
    assert_eq!((resp.status, resp.len), (200, 60_000_000));

    // /sum of 30 MB, sent in one go before reading.
    let body: Vec<u8> = (0..30_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut want = http::Fnv1a::default();
    want.update(&body);
    (&s).write_all(
        format!(
            "POST /sum HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    (&s).write_all(&body).unwrap();
    let resp = read_response(&mut r, true);
    assert_eq!(resp.body, format!("{:016x}\n", want.finish()).as_bytes());

    // /echo of 8 MB written whole before reading (most clients do that).
    let echo = &body[..8_000_000];
    (&s).write_all(
        format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            echo.len()
        )
        .as_bytes(),
    )
    .unwrap();
    (&s).write_all(echo).unwrap();
    assert!(read_response(&mut r, true).body == echo);

    // /echo of 200 MB with a reader running alongside: streamed, any size.
    let n = 200_000_000u64;
    let writer = server.connect();
    let reader = writer.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut w = &writer;
        w.write_all(format!("POST /echo HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").as_bytes())
            .unwrap();
        let mut chunk = Vec::new();
        for off in (0..n).step_by(1 << 20) {
            chunk.clear();
            http::extend_pattern(&mut chunk, off, (n - off).min(1 << 20) as usize);
            w.write_all(&chunk).unwrap();
        }
        writer
    });
    let resp = read_response(&mut BufReader::new(&reader), false);
    assert_eq!(resp.len, n);
    t.join().unwrap();

    // The first connection still works.
    assert_eq!(get(&s, &mut r, "/").status, 200);
}

#[test]
fn bad_requests_and_closing() {
    let server = Server::start();
    for input in [
        &b"garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        b"GET /bytes/x HTTP/1.1\r\n\r\n",
    ] {
        let s = server.connect();
        (&s).write_all(input).unwrap();
        let resp = read_response(&mut BufReader::new(&s), true);
        assert_eq!(resp.status, 400);
        assert!(resp.head.contains("Connection: close\r\n"));
        assert_eof(&s);
    }
    let s = server.connect();
    (&s).write_all(&vec![b'A'; 40_000]).unwrap();
    assert_eq!(read_response(&mut BufReader::new(&s), true).status, 431);

    let s = server.connect();
    let mut r = BufReader::new(&s);
    assert_eq!(get(&s, &mut r, "/nowhere").status, 404);
    (&s).write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, true).body, b"hello from wasmvm\n");
    assert_eof(&s);

    // Half-close after the request: the response still comes.
    let s = server.connect();
    (&s).write_all(b"GET /bytes/3000000 HTTP/1.1\r\n\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_response(&mut BufReader::new(&s), false).len, 3_000_000);
    assert_eof(&s);
}

#[test]
fn no_descriptor_leak() {
    let server = Server::start();
    let baseline = server.open_fds();
    for i in 0..3000 {
        let s = server.connect();
        match i % 4 {
            0 => {}
            1 => {
                let mut r = BufReader::new(&s);
                assert_eq!(get(&s, &mut r, "/").status, 200);
            }
            2 => (&s)
                .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial")
                .unwrap(),
            _ => {
                // Abort with a reset in the middle of a large response.
                (&s).write_all(b"GET /bytes/100000000 HTTP/1.1\r\n\r\n")
                    .unwrap();
                let mut buf = [0; 1000];
                (&s).read_exact(&mut buf).unwrap();
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and option of the right size.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.open_fds() > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.open_fds(), baseline);
}

#[test]
fn exit_ends_the_process_with_connections_open() {
    let mut server = Server::start();
    let idle = server.connect();
    let s = server.connect();
    let mut r = BufReader::new(&s);
    let resp = get(&s, &mut r, "/exit/7");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"bye\n"[..]));
    assert_eof(&s);
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    drop(idle);
}
