//! The host system calls the 9P server makes, each as an errno result: the `unsafe` of the
//! server lives here, every block with its reason. `openat2` with `RESOLVE_BENEATH` is what
//! keeps every lookup inside the share (see the module docs of [`super`]).

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::c_int;

use super::wire::DecodeError;

/// How openat2 confines every lookup: never leave the starting directory (no `..` above it,
/// no absolute symlinks), and follow no symlinks at all. 9P clients resolve symlinks
/// themselves (walk returns the symlink's qid, then `Treadlink`), so the server never has
/// to; forbidding them outright also shuts out `/proc`-style magic links.
const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;

/// A Linux errno, as `Rlerror` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    fn last() -> Self {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<DecodeError> for Errno {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnknownType(_) => Errno(libc::EOPNOTSUPP),
            _ => Errno(libc::EINVAL),
        }
    }
}

pub type Res<T> = Result<T, Errno>;

pub fn err<T>(errno: c_int) -> Res<T> {
    Err(Errno(errno))
}

/// A libc return value: negative means `errno`.
pub fn cvt(ret: c_int) -> Res<c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

pub fn cvt_long(ret: libc::c_long) -> Res<libc::c_long> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// Retries a call interrupted by a signal.
/// A std I/O result as an errno result.
pub fn io_result<T>(r: std::io::Result<T>) -> Res<T> {
    r.map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
}

pub fn retry<T>(mut f: impl FnMut() -> Res<T>) -> Res<T> {
    loop {
        match f() {
            Err(Errno(libc::EINTR)) => continue,
            other => return other,
        }
    }
}

pub fn timespec(sec: i64, nsec: libc::c_long) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

pub fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: c_int, mode: u32) -> Res<OwnedFd> {
    // SAFETY: open_how is plain integers, for which all zeroes is valid (and means "no
    // extra options" to the kernel); it is non_exhaustive, so it cannot be built directly.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u32 as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = RESOLVE;
    // RESOLVE_BENEATH fails with EAGAIN when a rename elsewhere raced the lookup.
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size
        // passed; both outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &raw const how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match cvt_long(ret) {
            // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) }),
            Err(Errno(libc::EAGAIN | libc::EINTR)) if tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: c_int, mode: u32) -> Res<OwnedFd> {
    retry(|| {
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
        // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

pub fn fstat(fd: BorrowedFd<'_>) -> Res<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`. fstat works on O_PATH descriptors.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `lstat` of a single name in `dir`.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> Res<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` valid for writes of one `stat`.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

pub fn renameat(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> Res<()> {
    // SAFETY: both names are NUL-terminated and outlive the call; renameat never follows a
    // symlink in either last component.
    cvt(unsafe {
        libc::renameat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
        )
    })?;
    Ok(())
}

pub fn set_nonblock(fd: BorrowedFd<'_>, on: bool) -> Res<()> {
    // SAFETY: F_GETFL on a live descriptor; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL on a live descriptor; no memory is passed.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    Ok(())
}
