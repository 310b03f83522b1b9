//! The fleet's contact with the operating system: process identities that survive pid reuse,
//! signals through pidfds, sessions, and the VMM's parent-death signal. The fleet's only
//! `unsafe` is here.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::{Deserialize, Serialize};

/// One process, as recorded when it started: its pid and its start time (clock ticks after
/// boot, field 22 of `/proc/PID/stat`). A pid reused by another process since has another
/// start time; records from another boot are told apart by [`boot_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

/// What the fleet reads from `/proc/PID/stat`.
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::other(format!("/proc/{pid}/stat is not as expected"));
    // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses, and ends at the last
    // `)`. STATE is field 3, the first after it; the start time is field 22.
    let (_, rest) = text.rsplit_once(')').ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(bad)?;
    let start_time = fields
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Stat { state, start_time })
}

impl ProcId {
    /// The process with this pid now (which must not be reaped while the caller relies on it:
    /// a child not yet waited for, or the caller itself).
    pub fn of(pid: u32) -> io::Result<ProcId> {
        let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        Ok(ProcId {
            pid,
            start_time: read_stat(pid)?.start_time,
        })
    }

    pub fn current() -> io::Result<ProcId> {
        ProcId::of(std::process::id())
    }

    /// Whether this very process still runs: its pid exists with the recorded start time
    /// and it is not a zombie (ended, waiting to be reaped).
    pub fn alive(&self) -> bool {
        matches!(read_stat(self.pid), Ok(s) if s.start_time == self.start_time
            && !matches!(s.state, 'Z' | 'X' | 'x'))
    }

    /// Sends `signal` if this process still runs; `Ok(false)` if it has ended. The signal
    /// goes through a pidfd opened before the identity check, so it cannot reach a process
    /// that took over the pid in between.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let Some(pid) = Pid::from_raw(self.pid) else {
            return Ok(false);
        };
        let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => return Ok(false),
            // Before Linux 5.3: check, then signal by pid (a reuse in between is unlikely).
            Err(Errno::NOSYS) if !self.alive() => return Ok(false),
            Err(Errno::NOSYS) => {
                return match rustix::process::kill_process(pid, signal) {
                    Ok(()) => Ok(true),
                    Err(Errno::SRCH) => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        if !self.alive() {
            return Ok(false);
        }
        match pidfd_send_signal(&pidfd, signal) {
            Ok(()) => Ok(true),
            Err(Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Resident memory of this process and of its children (passt, or QEMU under
    /// `--vmm qemu`), in bytes; `None` once it has ended, or if `/proc` does not say. Read
    /// between two identity checks, so a pid reused meanwhile is not counted.
    pub fn resident_bytes(&self) -> Option<u64> {
        if !self.alive() {
            return None;
        }
        let mut total = rss_bytes(self.pid)?;
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                total += rss_bytes(child).unwrap_or(0);
            }
        }
        self.alive().then_some(total)
    }
}

/// `VmRSS` of `/proc/PID/status`, in bytes.
fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// This boot of the machine (`/proc/sys/kernel/random/boot_id`): pids recorded in another
/// boot name no process of ours.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Leaves the caller's session and process group: the terminal's signals (Ctrl-C, the hangup
/// when it closes) no longer reach it, and it has no controlling terminal.
pub fn new_session() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// Signals a child of the caller that has not been waited for (so its pid is still its own).
pub fn signal_child(child: &std::process::Child, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other("pid out of range"))?;
    match rustix::process::kill_process(pid, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes the process `cmd` starts receive SIGTERM when the calling thread ends, so that a
/// supervisor killed outright takes its VMM with it (which then stops its guest cleanly).
/// Call it from the thread that outlives the child (the supervisor's main thread).
pub fn terminate_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and makes only two system
    // calls (prctl, getppid), which are async-signal-safe; it allocates nothing (an error is
    // a raw errno) and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
            // A parent that died before the prctl would never send it.
            if rustix::process::getppid() != Some(parent) {
                return Err(Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

/// Replaces the caller's stdout with `/dev/null` (after a one-line report to whoever reads
/// it), so nothing holds that pipe open any longer.
pub fn detach_stdout() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcId::current().unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(!other.signal(Signal::TERM).unwrap());
        assert!(!boot_id().is_empty());
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let id = ProcId::of(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!id.alive());
        assert!(!id.signal(Signal::KILL).unwrap());
    }
}
