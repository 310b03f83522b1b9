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
}

pub enum NetworkNamespace {
    /// Stay in the shim's.
    Inherit,
    /// A new, empty one.
    New,
    /// Join this one (an open `/var/run/netns/...` file, kept open by the caller).
    Join(RawFd),
}

/// Arranges for `cmd`'s child to die with the shim, join the cgroups and network namespace
/// of its container, and find its start pipe at [`START_FD`], all before `exec`.
pub fn confine(cmd: &mut Command, confinement: Confinement) {
    let shim = std::process::id();
    let Confinement {
        cgroup_procs,
        network,
        start,
    } = confinement;
    let network = match network {
        NetworkNamespace::Inherit => None,
        NetworkNamespace::New => Some(None),
        NetworkNamespace::Join(fd) => Some(Some(fd)),
    };
    let check = |ret: libc::c_int| {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    };
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed: it makes raw system calls (prctl, getppid, open, write, close, setns,
    // unshare, dup2, fcntl) on values prepared before the fork, and allocates nothing
    // (`io::Error::last_os_error` holds an errno, not a heap value).
    unsafe {
        cmd.pre_exec(move || {
            // The VM dies with the shim, even by SIGKILL; if the shim is already gone,
            // the child must not run on as an orphan.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() as u32 != shim {
                libc::_exit(1);
            }
            for procs in &cgroup_procs {
                let fd = check(libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))?;
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            match network {
                None => {}
                Some(None) => {
                    check(libc::unshare(libc::CLONE_NEWNET))?;
                }
                Some(Some(fd)) => {
                    check(libc::setns(fd, libc::CLONE_NEWNET))?;
                }
            }
            if start == START_FD {
                // dup2 onto itself would leave close-on-exec set.
                check(libc::fcntl(START_FD, libc::F_SETFD, 0))?;
            } else {
                check(libc::dup2(start, START_FD))?;
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
