//! `poll_oneoff`: clock and descriptor readiness subscriptions.

use alloc::vec::Vec;

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::platform::{Clock, Platform};
use crate::state::{Entry, Handle, Wasi};

const SUBSCRIPTION_LEN: u32 = 48;
const EVENT_LEN: u32 = 32;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
/// `subclockflags::subscription_clock_abstime`.
const ABSTIME: u16 = 1;

/// `eventrwflags::fd_readwrite_hangup`.
const HANGUP: u16 = 1;

struct Event {
    userdata: u64,
    error: Errno,
    kind: u8,
    nbytes: u64,
    flags: u16,
}

impl Event {
    /// A clock subscription that is due.
    fn clock(userdata: u64) -> Event {
        Event {
            userdata,
            error: Errno::SUCCESS,
            kind: EVENTTYPE_CLOCK,
            nbytes: 0,
            flags: 0,
        }
    }
}

impl<P: Platform> Wasi<P> {
    pub(crate) fn poll_oneoff(
        &mut self,
        mem: &mut GuestMemory,
        subs: u32,
        events: u32,
        count: u32,
        nevents: u32,
    ) -> WasiResult {
        if count == 0 {
            return Err(Errno::INVAL);
        }
        let table = mem.copy(
            subs,
            count.checked_mul(SUBSCRIPTION_LEN).ok_or(Errno::FAULT)?,
        )?;
        // Validate the events buffer before waiting, so a bad pointer fails at once.
        mem.slice(events, count.checked_mul(EVENT_LEN).ok_or(Errno::FAULT)?)?;
        let u64_at =
            |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at =
            |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));

        let now = self.platform.now_ns(Clock::Monotonic);
        // Sockets change only when the stack runs: poll it, look, and wait for the host
        // until something is ready or the clock subscription is due.
        let ready = loop {
            if let Some(net) = self.net.as_mut() {
                net.poll(&mut self.platform);
            }
            let mut ready = Vec::new();
            let mut deadline: Option<(u64, u64)> = None; // (monotonic deadline, userdata)
            let mut waits_on_stdin = false;
            let mut waits_on_net = false;
            for sub in table.chunks_exact(SUBSCRIPTION_LEN as usize) {
                let userdata = u64_at(sub, 0);
                match sub[8] {
                    EVENTTYPE_CLOCK => {
                        let id = u32_at(sub, 16);
                        let timeout = u64_at(sub, 24);
                        let flags = u16::from_le_bytes([sub[40], sub[41]]);
                        let Some(clock) = Clock::from_id(id) else {
                            ready.push(Event {
                                userdata,
                                error: Errno::INVAL,
                                kind: EVENTTYPE_CLOCK,
                                nbytes: 0,
                                flags: 0,
                            });
                            continue;
                        };
                        let due = if flags & ABSTIME != 0 {
                            // Both clocks read together, so the conversion holds however
                            // often the loop comes round.
                            let current = self.platform.now_ns(clock);
                            let mono = self.platform.now_ns(Clock::Monotonic);
                            mono.saturating_add(timeout.saturating_sub(current))
                        } else {
                            now.saturating_add(timeout)
                        };
                        if deadline.is_none_or(|(d, _)| due < d) {
                            deadline = Some((due, userdata));
                        }
                    }
                    kind @ (EVENTTYPE_FD_READ | EVENTTYPE_FD_WRITE) => {
                        let fd = u32_at(sub, 16);
                        let event = |error, nbytes| Event {
                            userdata,
                            error,
                            kind,
                            nbytes,
                            flags: 0,
                        };
                        match self.fd(fd).map(|d| d.entry.clone()) {
                            Err(e) => ready.push(event(e, 0)),
                            Ok(Entry::Stdin) if kind == EVENTTYPE_FD_READ => {
                                if self.platform.stdin_ready() {
                                    ready.push(event(Errno::SUCCESS, 1));
                                } else {
                                    waits_on_stdin = true;
                                }
                            }
                            Ok(Entry::File { node, offset }) => {
                                let size = match node {
                                    Handle::Mem(ino) => match &self.fs.node(ino)?.kind {
                                        crate::fs::Kind::File(d) => d.len() as u64,
                                        _ => 0,
                                    },
                                    // Always ready, like a file in memory; only a read
                                    // event reports the bytes left, which the host knows.
                                    Handle::Share(_) if kind != EVENTTYPE_FD_READ => 0,
                                    Handle::Share(r) => match self.share_size(r) {
                                        Ok(size) => size,
                                        Err(e) => {
                                            ready.push(event(e, 0));
                                            continue;
                                        }
                                    },
                                };
                                let n = if kind == EVENTTYPE_FD_READ {
                                    size.saturating_sub(offset)
                                } else {
                                    0
                                };
                                ready.push(event(Errno::SUCCESS, n));
                            }
                            Ok(Entry::Socket { id, .. }) => {
                                let net = self.net.as_mut().ok_or(Errno::NOTSOCK)?;
                                match net.readiness(id) {
                                    Err(e) => ready.push(event(e, 0)),
                                    Ok(r) => {
                                        let n = if kind == EVENTTYPE_FD_READ {
                                            r.readable
                                        } else {
                                            r.writable
                                        };
                                        match n {
                                            Some(n) => ready.push(Event {
                                                flags: if r.hangup { HANGUP } else { 0 },
                                                ..event(Errno::SUCCESS, n)
                                            }),
                                            None => waits_on_net = true,
                                        }
                                    }
                                }
                            }
                            Ok(Entry::Dir { .. }) => ready.push(event(Errno::BADF, 0)),
                            Ok(_) => ready.push(event(Errno::SUCCESS, 0)),
                        }
                    }
                    _ => ready.push(Event {
                        userdata,
                        error: Errno::INVAL,
                        kind: sub[8],
                        nbytes: 0,
                        flags: 0,
                    }),
                }
            }
            if ready.is_empty() && waits_on_net {
                let due = deadline.map_or(u64::MAX, |(d, _)| d);
                let current = self.platform.now_ns(Clock::Monotonic);
                if current >= due {
                    let (_, userdata) = deadline.expect("a due deadline exists");
                    ready.push(Event::clock(userdata));
                    break ready;
                }
                if waits_on_stdin && self.platform.stdin_ready() {
                    continue;
                }
                let net = self.net.as_mut().ok_or(Errno::NOTSOCK)?;
                let wake = net
                    .poll_at_ns(&mut self.platform)
                    .map_or(due, |t| t.min(due));
                self.platform.wait_event(wake);
                continue;
            }
            if ready.is_empty() {
                match deadline {
                    Some((due, userdata)) => {
                        self.platform.wait_until(due, waits_on_stdin);
                        if waits_on_stdin && self.platform.stdin_ready() {
                            ready.extend(self.stdin_events(&table));
                        }
                        if ready.is_empty() || self.platform.now_ns(Clock::Monotonic) >= due {
                            ready.push(Event::clock(userdata));
                        }
                    }
                    None if waits_on_stdin => {
                        self.platform.wait_until(u64::MAX, true);
                        ready.extend(self.stdin_events(&table));
                    }
                    None => {}
                }
            }
            break ready;
        };
        for (i, e) in ready.iter().enumerate() {
            let mut b = [0u8; EVENT_LEN as usize];
            b[0..8].copy_from_slice(&e.userdata.to_le_bytes());
            b[8..10].copy_from_slice(&e.error.0.to_le_bytes());
            b[10] = e.kind;
            b[16..24].copy_from_slice(&e.nbytes.to_le_bytes());
            b[24..26].copy_from_slice(&e.flags.to_le_bytes());
            mem.write_bytes(events + i as u32 * EVENT_LEN, &b)?;
        }
        mem.write_u32(nevents, ready.len() as u32)
    }

    /// Read events for every stdin subscription in `table`.
    fn stdin_events(&self, table: &[u8]) -> Vec<Event> {
        table
            .chunks_exact(SUBSCRIPTION_LEN as usize)
            .filter(|s| s[8] == EVENTTYPE_FD_READ)
            .filter(|s| {
                matches!(
                    self.fd(u32::from_le_bytes(s[16..20].try_into().expect("4 bytes")))
                        .map(|d| &d.entry),
                    Ok(Entry::Stdin)
                )
            })
            .map(|s| Event {
                userdata: u64::from_le_bytes(s[0..8].try_into().expect("8 bytes")),
                error: Errno::SUCCESS,
                kind: EVENTTYPE_FD_READ,
                nbytes: 1,
                flags: 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::Func;
    use crate::errno::Errno;
    use crate::state::tests::{u32_at, wasi};

    fn clock_sub(mem: &mut [u8], at: usize, userdata: u64, timeout: u64) {
        mem[at..at + 8].copy_from_slice(&userdata.to_le_bytes());
        mem[at + 8] = super::EVENTTYPE_CLOCK;
        mem[at + 16..at + 20].copy_from_slice(&1u32.to_le_bytes()); // monotonic
        mem[at + 24..at + 32].copy_from_slice(&timeout.to_le_bytes());
    }

    fn fd_sub(mem: &mut [u8], at: usize, userdata: u64, kind: u8, fd: u32) {
        mem[at..at + 8].copy_from_slice(&userdata.to_le_bytes());
        mem[at + 8] = kind;
        mem[at + 16..at + 20].copy_from_slice(&fd.to_le_bytes());
    }

    #[test]
    fn a_clock_alone_waits_for_its_deadline() {
        let mut w = wasi();
        let mut mem = vec![0u8; 512];
        clock_sub(&mut mem, 0, 77, 5);
        assert_eq!(
            w.call(Func::PollOneoff, &mut mem, &[0, 100, 1, 200]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 200), 1);
        assert_eq!(u64::from_le_bytes(mem[100..108].try_into().unwrap()), 77);
        assert_eq!(mem[110], super::EVENTTYPE_CLOCK);
    }

    #[test]
    fn ready_descriptors_win_over_a_clock() {
        let mut w = wasi();
        let mut mem = vec![0u8; 512];
        clock_sub(&mut mem, 0, 1, 1_000_000_000);
        fd_sub(&mut mem, 48, 2, super::EVENTTYPE_FD_WRITE, 1);
        fd_sub(&mut mem, 96, 3, super::EVENTTYPE_FD_READ, 42);
        assert_eq!(
            w.call(Func::PollOneoff, &mut mem, &[0, 200, 3, 500]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 500), 2);
        // stdout is writable; fd 42 is not open.
        assert_eq!(u64::from_le_bytes(mem[200..208].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(mem[232..240].try_into().unwrap()), 3);
        assert_eq!(u16::from_le_bytes([mem[240], mem[241]]), Errno::BADF.0);
        // No subscriptions, or events that do not fit in memory, are errors.
        assert_eq!(
            w.call(Func::PollOneoff, &mut mem, &[0, 200, 0, 500]),
            Ok(Errno::INVAL)
        );
        assert_eq!(
            w.call(Func::PollOneoff, &mut mem, &[0, 500, 3, 0]),
            Ok(Errno::FAULT)
        );
    }
}
