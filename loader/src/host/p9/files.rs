//! Opening, creating, reading, writing and syncing files: `Tlopen`, `Tlcreate`, `Tread`,
//! `Twrite`, `Tfsync`.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use libc::c_int;

use super::server::{Kind, Open, RDATA_HDR, Server, component, guest_mode};
use super::sys::{Errno, Res, cvt, err, fstat, fstatat, io_result, retry, set_nonblock};
use super::wire::{self, Rmessage};

impl Server {
    pub(super) fn lopen(&mut self, fid: u32, flags: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if f.open.is_some() {
            return err(libc::EBADF);
        }
        let (mut oflags, read, write) = open_flags(flags)?;
        let trunc = oflags & libc::O_TRUNC != 0;
        if self.read_only && (write || trunc) {
            return err(libc::EROFS);
        }
        match f.kind {
            Kind::File => {}
            Kind::Dir if write => return err(libc::EISDIR),
            Kind::Dir => oflags |= libc::O_DIRECTORY,
            Kind::Symlink => return err(libc::ELOOP),
            Kind::Special => return err(libc::EOPNOTSUPP),
        }
        // Truncate only once the inode is known to be the fid's; don't block on anything
        // swapped in meanwhile (a FIFO) before that check.
        let nonblock = oflags & libc::O_NONBLOCK != 0;
        let file = self.reopen(f, (oflags & !libc::O_TRUNC) | libc::O_NONBLOCK)?;
        if !nonblock {
            set_nonblock(file.as_fd(), false)?;
        }
        if trunc && f.kind == Kind::File {
            retry(|| {
                // SAFETY: ftruncate on a descriptor we own; no memory is passed.
                cvt(unsafe { libc::ftruncate(file.as_raw_fd(), 0) })
            })?;
        }
        let st = fstat(file.as_fd())?;
        let qid = self.qid(&st);
        let iounit = self.msize - wire::IOHDRSZ;
        if let Some(f) = self.fids.get_mut(&fid) {
            f.open = Some(Open {
                file: file.into(),
                read,
                write,
            });
        }
        Ok(Rmessage::Lopen { qid, iounit })
    }

    pub(super) fn lcreate(
        &mut self,
        fid: u32,
        name: &[u8],
        flags: u32,
        mode: u32,
    ) -> Res<Rmessage> {
        let f = self.dir_fid(fid)?;
        if f.open.is_some() {
            return err(libc::EBADF);
        }
        let name = component(name)?;
        let (oflags, read, write) = open_flags(flags)?;
        let dir = f.fd.as_fd();
        let path = std::slice::from_ref(&name);
        // O_NOFOLLOW (added by open_beneath) makes an existing symlink of that name an
        // error instead of a way to create or truncate its target.
        let created = self.open_beneath(
            dir,
            path,
            oflags | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK,
            guest_mode(mode, Kind::File),
        );
        let file = match created {
            // Without EXCL an existing regular file is opened; anything else of that name
            // (a symlink, FIFO or device) is left alone, not even opened.
            Err(Errno(libc::EEXIST)) if oflags & libc::O_EXCL == 0 => {
                if Kind::of(fstatat(dir, &name)?.st_mode) != Kind::File {
                    return err(libc::EEXIST);
                }
                self.open_beneath(dir, path, oflags | libc::O_NONBLOCK, 0)?
            }
            other => other?,
        };
        let st = fstat(file.as_fd())?;
        if Kind::of(st.st_mode) != Kind::File {
            // Swapped in by someone else meanwhile.
            return err(libc::EEXIST);
        }
        if oflags & libc::O_NONBLOCK == 0 {
            set_nonblock(file.as_fd(), false)?;
        }
        let qid = self.qid(&st);
        let iounit = self.msize - wire::IOHDRSZ;
        let fd = file.try_clone()?;
        if let Some(f) = self.fids.get_mut(&fid) {
            f.path.push(name);
            f.fd = fd;
            f.kind = Kind::File;
            f.open = Some(Open {
                file: file.into(),
                read,
                write,
            });
        }
        Ok(Rmessage::Lcreate { qid, iounit })
    }

    /// Appends to `data` what a read of `count` bytes at `offset` returns (on an error,
    /// `data` may hold part of an attempt: the caller drops what it appended).
    pub(super) fn read_into(
        &self,
        fid: u32,
        offset: u64,
        count: u32,
        data: &mut Vec<u8>,
    ) -> Res<()> {
        let f = self.fid(fid)?;
        let open = f
            .open
            .as_ref()
            .filter(|o| o.read)
            .ok_or(Errno(libc::EBADF))?;
        if f.kind == Kind::Dir {
            return err(libc::EISDIR);
        }
        let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        let len = count.min(self.msize - RDATA_HDR) as usize;
        let at = data.len();
        data.resize(at + len, 0);
        let n = retry(|| io_result(open.file.read_at(&mut data[at..], offset as u64)))?;
        data.truncate(at + n);
        Ok(())
    }

    pub(super) fn write(&self, fid: u32, offset: u64, data: &[u8]) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        let open = f
            .open
            .as_ref()
            .filter(|o| o.write)
            .ok_or(Errno(libc::EBADF))?;
        let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        let n = retry(|| io_result(open.file.write_at(data, offset as u64)))?;
        Ok(Rmessage::Write {
            count: u32::try_from(n).unwrap_or(u32::MAX),
        })
    }

    pub(super) fn fsync(&self, fid: u32, datasync: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        let open = f.open.as_ref().ok_or(Errno(libc::EBADF))?;
        let fd = open.file.as_raw_fd();
        retry(|| {
            // SAFETY: fsync/fdatasync on a descriptor we own; no memory is passed.
            cvt(unsafe {
                if datasync != 0 {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                }
            })
        })?;
        Ok(Rmessage::Fsync)
    }
}

/// Host `open` flags from `Tlopen`/`Tlcreate` flags, and whether they read and write.
/// `O_CREAT` is only ever added by `Tlcreate`; flags with no use here are dropped.
fn open_flags(dotl: u32) -> Res<(c_int, bool, bool)> {
    let (mut flags, read, write) = match dotl & wire::DOTL_ACCMODE {
        wire::DOTL_RDONLY => (libc::O_RDONLY, true, false),
        wire::DOTL_WRONLY => (libc::O_WRONLY, false, true),
        wire::DOTL_RDWR => (libc::O_RDWR, true, true),
        _ => return err(libc::EINVAL),
    };
    for (dotl_flag, flag) in [
        (wire::DOTL_EXCL, libc::O_EXCL),
        (wire::DOTL_TRUNC, libc::O_TRUNC),
        (wire::DOTL_APPEND, libc::O_APPEND),
        (wire::DOTL_NONBLOCK, libc::O_NONBLOCK),
        (wire::DOTL_DSYNC, libc::O_DSYNC),
        (wire::DOTL_SYNC, libc::O_SYNC),
    ] {
        if dotl & dotl_flag != 0 {
            flags |= flag;
        }
    }
    Ok((flags, read, write))
}
