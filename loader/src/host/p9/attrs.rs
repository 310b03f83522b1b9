//! Attributes: `Tgetattr`, `Tsetattr` (mode, times, owner, size) and `Tstatfs`, always of
//! the fid's own inode, never of a symlink's target.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use super::server::{Fid, Kind, Server, guest_mode};
use super::sys::{Errno, Res, cvt, cvt_long, err, fstat, retry, timespec};
use super::wire::{self, Attr, Rmessage, SetAttr, StatFs};

/// `fchmodat2(2)` (Linux 6.6), the same number on every architecture; libc does not
/// define it everywhere yet.
const SYS_FCHMODAT2: libc::c_long = 452;

impl Server {
    // `nlink_t` is narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    pub(super) fn getattr(&self, fid: u32) -> Res<Rmessage> {
        let st = fstat(self.fid(fid)?.fd.as_fd())?;
        Ok(Rmessage::Getattr(Attr {
            valid: wire::GETATTR_BASIC,
            qid: self.qid(&st),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: u64::from(st.st_nlink),
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blksize: st.st_blksize as u64,
            blocks: st.st_blocks as u64,
            atime_sec: st.st_atime as u64,
            atime_nsec: st.st_atime_nsec as u64,
            mtime_sec: st.st_mtime as u64,
            mtime_nsec: st.st_mtime_nsec as u64,
            ctime_sec: st.st_ctime as u64,
            ctime_nsec: st.st_ctime_nsec as u64,
            ..Attr::default()
        }))
    }

    pub(super) fn setattr(&self, fid: u32, a: &SetAttr) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if a.valid & wire::SETATTR_MODE != 0 {
            self.chmod(f, guest_mode(a.mode, f.kind))?;
        }
        if a.valid & (wire::SETATTR_ATIME | wire::SETATTR_MTIME) != 0 {
            let time = |set: u32, now: u32, sec: u64, nsec: u64| {
                if a.valid & set == 0 {
                    timespec(0, libc::UTIME_OMIT)
                } else if a.valid & now == 0 {
                    timespec(0, libc::UTIME_NOW)
                } else {
                    // Times are signed, sent as two's complement; utimensat checks nsec.
                    timespec(sec as i64, nsec as libc::c_long)
                }
            };
            let times = [
                time(
                    wire::SETATTR_ATIME,
                    wire::SETATTR_ATIME_SET,
                    a.atime_sec,
                    a.atime_nsec,
                ),
                time(
                    wire::SETATTR_MTIME,
                    wire::SETATTR_MTIME_SET,
                    a.mtime_sec,
                    a.mtime_nsec,
                ),
            ];
            self.utimes(f, &times)?;
        }
        if a.valid & (wire::SETATTR_UID | wire::SETATTR_GID) != 0 {
            let uid = if a.valid & wire::SETATTR_UID != 0 {
                a.uid
            } else {
                u32::MAX
            };
            let gid = if a.valid & wire::SETATTR_GID != 0 {
                a.gid
            } else {
                u32::MAX
            };
            // SAFETY: the empty path outlives the call; AT_EMPTY_PATH acts on the fid's
            // inode itself (-1 leaves an id unchanged).
            cvt(unsafe {
                libc::fchownat(
                    f.fd.as_raw_fd(),
                    c"".as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if a.valid & wire::SETATTR_SIZE != 0 {
            let size = i64::try_from(a.size).map_err(|_| Errno(libc::EFBIG))?;
            match f.kind {
                Kind::File => {}
                Kind::Dir => return err(libc::EISDIR),
                Kind::Symlink | Kind::Special => return err(libc::EINVAL),
            }
            let reopened;
            let file = match f.open.as_ref().filter(|o| o.write) {
                Some(o) => o.file.as_fd(),
                None => {
                    reopened = self.reopen(f, libc::O_WRONLY | libc::O_NONBLOCK)?;
                    reopened.as_fd()
                }
            };
            retry(|| {
                // SAFETY: ftruncate on a live descriptor; no memory is passed.
                cvt(unsafe { libc::ftruncate(file.as_raw_fd(), size) })
            })?;
        }
        // SETATTR_CTIME alone: any change above already updated ctime.
        Ok(Rmessage::Setattr)
    }

    /// Changes the fid's permission bits without ever following a symlink.
    fn chmod(&self, f: &Fid, mode: u32) -> Res<()> {
        if f.kind == Kind::Symlink {
            return err(libc::EOPNOTSUPP);
        }
        if !self.legacy {
            // SAFETY: the empty path outlives the call; AT_EMPTY_PATH makes fchmodat2 act
            // on the fid's own inode.
            let ret = cvt_long(unsafe {
                libc::syscall(
                    SYS_FCHMODAT2,
                    f.fd.as_raw_fd(),
                    c"".as_ptr(),
                    mode,
                    libc::AT_EMPTY_PATH,
                )
            });
            match ret {
                // Before Linux 6.6, or hidden by seccomp.
                Err(Errno(libc::ENOSYS | libc::EPERM | libc::EINVAL)) => {}
                other => return other.map(drop),
            }
        }
        // Through a real open of the same inode (fchmod needs ownership, not write access).
        let flags = if f.kind == Kind::Dir {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            libc::O_RDONLY | libc::O_NONBLOCK
        };
        let fd = self.reopen(f, flags)?;
        // SAFETY: fchmod on a descriptor we own; no memory is passed.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
        Ok(())
    }

    /// Sets the fid's access and modification times; a symlink's own, never its target's.
    fn utimes(&self, f: &Fid, times: &[libc::timespec; 2]) -> Res<()> {
        if !self.legacy {
            // SAFETY: the empty path and `times` outlive the call; AT_EMPTY_PATH makes it
            // act on the fid's own inode.
            let ret = cvt(unsafe {
                libc::utimensat(
                    f.fd.as_raw_fd(),
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            });
            match ret {
                // Before Linux 5.8 there is no AT_EMPTY_PATH here: go by the name.
                Err(Errno(libc::EINVAL | libc::ENOENT)) => {}
                other => return other.map(drop),
            }
        }
        let (dir, name) = match self.parent(f) {
            Ok((dir, name)) => (dir, name),
            Err(Errno(libc::EBUSY)) => (self.root.try_clone()?, c"."),
            Err(e) => return Err(e),
        };
        // SAFETY: `name` and `times` outlive the call; AT_SYMLINK_NOFOLLOW leaves a
        // symlink's target alone.
        cvt(unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(())
    }

    // `c_ulong` is narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    pub(super) fn statfs(&self, fid: u32) -> Res<Rmessage> {
        let fd = self.fid(fid)?.fd.as_raw_fd();
        let mut sfs = MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: `sfs` is valid for writes of one `statfs`.
        cvt(unsafe { libc::fstatfs(fd, sfs.as_mut_ptr()) })?;
        // SAFETY: fstatfs succeeded, so it filled `sfs`.
        let sfs = unsafe { sfs.assume_init() };
        let mut svfs = MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `svfs` is valid for writes of one `statvfs`. (It is only asked for
        // f_fsid, which libc's statfs keeps private.)
        cvt(unsafe { libc::fstatvfs(fd, svfs.as_mut_ptr()) })?;
        // SAFETY: fstatvfs succeeded, so it filled `svfs`.
        let svfs = unsafe { svfs.assume_init() };
        Ok(Rmessage::Statfs(StatFs {
            ty: sfs.f_type as u32,
            bsize: sfs.f_bsize as u32,
            blocks: sfs.f_blocks,
            bfree: sfs.f_bfree,
            bavail: sfs.f_bavail,
            files: sfs.f_files,
            ffree: sfs.f_ffree,
            fsid: u64::from(svfs.f_fsid),
            namelen: sfs.f_namelen as u32,
        }))
    }
}
