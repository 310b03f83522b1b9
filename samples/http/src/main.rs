//! The `http` sample: an HTTP/1.1 server on a preopened listening socket (wasmtime's
//! `--tcplisten` model), fd `$LISTEN_FD` or 3. wasip1 has no threads, so one event loop
//! serves every connection: all sockets are nonblocking and the loop sleeps in `poll`
//! (wasi-libc's, on `poll_oneoff`). Routes and protocol handling are in lib.rs.
//!
//! Portable POSIX too: the same code runs natively, which tests/server.rs uses.

use http::Session;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::process::exit;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may read or write per wakeup before the others get their turn.
const BUDGET: usize = 1 << 20;

struct Conn {
    stream: TcpStream,
    session: Session,
    /// Reset, or failed: drop without further ado.
    dead: bool,
}

fn main() {
    let fd: RawFd = match std::env::var("LISTEN_FD") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("http: LISTEN_FD={v:?} is not a file descriptor");
            exit(2)
        }),
        Err(_) => 3,
    };
    // SAFETY: the runtime hands this process the listening socket at `fd`, owned by no one
    // else in it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("http: fd {fd} is not a usable listening socket: {e}");
        exit(1);
    }
    println!("listening on fd {fd}");
    let _ = io::stdout().flush();
    serve(&listener)
}

fn serve(listener: &TcpListener) -> ! {
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut scratch = vec![0u8; READ_CHUNK];
    // Set when accept fails for lack of resources (EMFILE...): the listener stays readable,
    // so polling it would spin; retry on a timer instead.
    let mut accept_paused = false;
    loop {
        fds.clear();
        fds.push(pollfd(listener.as_raw_fd(), libc::POLLIN, accept_paused));
        for c in &conns {
            let mut events = 0;
            if c.session.wants_read() {
                events |= libc::POLLIN;
            }
            if c.session.wants_write() {
                events |= libc::POLLOUT;
            }
            // wasi-libc's poll refuses entries with no events; a negative fd is skipped.
            fds.push(pollfd(c.stream.as_raw_fd(), events, events == 0));
        }
        let timeout = if accept_paused { 100 } else { -1 };
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            eprintln!("http: poll: {e}");
            exit(1);
        }

        // Connections accepted below have no entry in `fds` yet: only the first `polled`.
        let polled = conns.len();
        if accept_paused || fds[0].revents != 0 {
            accept_paused = accept_all(listener, &mut conns);
        }
        for (c, p) in conns[..polled].iter_mut().zip(&fds[1..]) {
            if p.revents != 0 {
                service(c, p.revents, &mut scratch);
            }
        }

        let mut i = 0;
        while i < conns.len() {
            let c = &conns[i];
            if !(c.dead || c.session.is_done()) {
                i += 1;
                continue;
            }
            let c = conns.swap_remove(i);
            if let Some(code) = c.session.exit_code() {
                // The reply is out (or the peer is gone): say so, and end the process with
                // the other connections still open.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                exit(code);
            }
            if c.session.spins_after() {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                spin();
            }
            accept_paused = false; // a descriptor came free
        }
    }
}

/// Computes forever without a system call: the reply before it must reach the client all
/// the same (a runtime that sends only when the app waits would strand it).
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn pollfd(fd: RawFd, events: libc::c_short, skip: bool) -> libc::pollfd {
    libc::pollfd {
        fd: if skip { -1 } else { fd },
        events,
        revents: 0,
    }
}

/// Accepts every pending connection; returns whether accepting should pause.
fn accept_all(listener: &TcpListener, conns: &mut Vec<Conn>) -> bool {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    eprintln!("http: set_nonblocking: {e}");
                    continue;
                }
                conns.push(Conn {
                    stream,
                    session: Session::default(),
                    dead: false,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            // The client gave up before we got to it, or a signal: try the next one.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                eprintln!("http: accept: {e}");
                return true;
            }
        }
    }
}

/// Reads what a ready connection has, runs its session, and writes what it can.
fn service(c: &mut Conn, revents: libc::c_short, scratch: &mut [u8]) {
    if revents & libc::POLLNVAL != 0 {
        c.dead = true;
        return;
    }
    let mut progress = false;
    // Read on hangup and error too: the read reports the end of the stream or the error.
    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
        let mut budget = BUDGET;
        while c.session.wants_read() && budget > 0 {
            match c.stream.read(scratch) {
                Ok(0) => {
                    c.session.peer_closed();
                    progress = true;
                    break;
                }
                Ok(n) => {
                    c.session.received(&scratch[..n]);
                    budget = budget.saturating_sub(n);
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        }
    }
    // Write whenever there is output, not only on POLLOUT: a fresh response usually fits
    // in the socket buffer at once, saving a trip through poll.
    let mut budget = BUDGET;
    while c.session.wants_write() && budget > 0 {
        match c.stream.write(c.session.output()) {
            Ok(0) => {
                c.dead = true;
                return;
            }
            Ok(n) => {
                c.session.advance_output(n);
                budget = budget.saturating_sub(n);
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                c.dead = true;
                return;
            }
        }
    }
    // A hangup or error that neither a read nor a write could act on would wake every
    // poll from now on: the connection is gone.
    if !progress && revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        c.dead = true;
    }
}
