//! The shim's only `unsafe` code: what happens in a container's process between `fork` and
//! `exec`, and the two file-descriptor operations std does not wrap.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The descriptor on which a launched process waits for its start signal.
pub const START_FD: RawFd = 3;

/// What a container's process becomes before it runs anything of its own.
pub struct Confinement {
    /// `cgroup.procs` of every hierarchy the process joins (one on cgroup v2).
    pub cgroup_procs: Vec<CString>,
    pub network: NetworkNamespace,
    /// Read end of the start pipe, moved to [`START_FD`] in the child.
    pub start: RawFd,
    /// Write end of a close-on-exec pipe: a step that fails writes a [`SetupFailure`]
    /// there and the child exits, so the parent learns why and `exec` never runs.
    pub errors: RawFd,
}

pub enum NetworkNamespace {
    /// Stay in the shim's.
    Inherit,
    /// A new, empty one.
    New,
    /// Join this one (an open `/var/run/netns/...` file, kept open by the caller).
    Join(RawFd),
}

/// The step of [`confine`] that failed in the child, and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupFailure {
    pub step: Step,
    pub errno: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    ParentDeathSignal = 1,
    Cgroup = 2,
    NetworkNamespace = 3,
    StartPipe = 4,
}

impl SetupFailure {
    /// Decodes what the child wrote: nothing (it reached `exec`) is `None`.
    pub fn decode(bytes: &[u8]) -> Option<SetupFailure> {
        let [step, e0, e1, e2, e3] = bytes.try_into().ok()?;
        let step = match step {
            1 => Step::ParentDeathSignal,
            2 => Step::Cgroup,
            3 => Step::NetworkNamespace,
            _ => Step::StartPipe,
        };
        Some(SetupFailure {
            step,
            errno: i32::from_le_bytes([e0, e1, e2, e3]),
        })
    }
}

impl std::fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.step {
            Step::ParentDeathSignal => "cannot set the parent-death signal",
            Step::Cgroup => "cannot join the container's cgroup",
            Step::NetworkNamespace => "cannot enter the container's network namespace",
            Step::StartPipe => "cannot set up the start pipe",
        };
        write!(f, "{what}: {}", io::Error::from_raw_os_error(self.errno))
    }
}

/// Arranges for `cmd`'s child to die with the shim, join the cgroups and network namespace
/// of its container, and find its start pipe at [`START_FD`], all before `exec`. A step
/// that fails never returns an error to std (whose `wait` for the failed child would race
/// the shim's reaper): it reports through `errors` and exits.
pub fn confine(cmd: &mut Command, confinement: Confinement) {
    let shim = std::process::id();
    let Confinement {
        cgroup_procs,
        network,
        start,
        errors,
    } = confinement;
    let network = match network {
        NetworkNamespace::Inherit => None,
        NetworkNamespace::New => Some(None),
        NetworkNamespace::Join(fd) => Some(Some(fd)),
    };
    // The closure runs in the forked child, where only async-signal-safe calls are
    // allowed: it makes raw system calls (prctl, getppid, open, write, close, setns,
    // unshare, dup2, fcntl, _exit) on values prepared before the fork, reads errno, and
    // allocates nothing.
    // SAFETY: the closure is async-signal-safe, as just said.
    unsafe {
        cmd.pre_exec(move || {
            let fail = |step: Step| -> ! {
                let errno = *libc::__errno_location();
                let e = errno.to_le_bytes();
                let record = [step as u8, e[0], e[1], e[2], e[3]];
                libc::write(errors, record.as_ptr().cast(), record.len());
                libc::_exit(127)
            };
            // The VM dies with the shim, even by SIGKILL; if the shim is already gone,
            // the child must not run on as an orphan.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                fail(Step::ParentDeathSignal);
            }
            if libc::getppid() as u32 != shim {
                libc::_exit(1);
            }
            for procs in &cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    fail(Step::Cgroup);
                }
                libc::close(fd);
            }
            let entered = match network {
                None => 0,
                Some(None) => libc::unshare(libc::CLONE_NEWNET),
                Some(Some(fd)) => libc::setns(fd, libc::CLONE_NEWNET),
            };
            if entered != 0 {
                fail(Step::NetworkNamespace);
            }
            let moved = if start == START_FD {
                // dup2 onto itself would leave close-on-exec set.
                libc::fcntl(START_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(start, START_FD)
            };
            if moved < 0 {
                fail(Step::StartPipe);
            }
            Ok(())
        });
    }
}

/// The start pipe a launched process inherited at [`START_FD`]; called once, first thing.
pub fn take_start_pipe() -> File {
    // SAFETY: the shim set up START_FD in this process (`confine`) and nothing else in it
    // opens or owns descriptor 3 before this single call takes it.
    let file = unsafe { File::from_raw_fd(START_FD) };
    // Nothing exec'd from here on may inherit it.
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    file
}

/// Clears `O_NONBLOCK` on a FIFO opened without blocking, for the app's plain blocking I/O.
pub fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl reads and writes the status flags of a descriptor `file` keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
