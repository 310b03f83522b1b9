//! The file server: fids, path resolution confined to the share, and one handler per
//! request type. See the module docs of [`super`] for the confinement design.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use libc::c_int;

use super::sys::{
    Errno, Res, cvt, cvt_long, err, fstat, fstatat, io_result, openat, openat2, renameat, retry,
    set_nonblock, timespec,
};
use super::wire::{self, Attr, DirEntry, Frame, GetLock, Qid, Rmessage, SetAttr, StatFs, Tmessage};

/// At most this many fids per session; more get `ENFILE`. Each fid holds one or two host
/// file descriptors, so the VMM should allow about twice as many open files.
pub const MAX_FIDS: usize = 4096;
/// Longest file name component (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest symlink target accepted from the guest (Linux `PATH_MAX` minus the NUL).
const TARGET_MAX: usize = 4095;
/// `size[4] type[1] tag[2] count[4]`: what `Rread`/`Rreaddir` add around their data.
const RDATA_HDR: u32 = 11;
/// `fchmodat2(2)` (Linux 6.6), the same number on every architecture; libc does not
/// define it everywhere yet.
const SYS_FCHMODAT2: libc::c_long = 452;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    /// Devices, FIFOs, sockets: they can be seen and removed, never opened.
    Special,
}

impl Kind {
    fn of(mode: libc::mode_t) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// A file opened by `Tlopen`/`Tlcreate`.
struct Open {
    file: std::fs::File,
    read: bool,
    write: bool,
}

/// What a fid names.
struct Fid {
    /// Components from the share root to the object: never empty, `.`, `..`, nor containing
    /// `/` or NUL. Used to find the parent (remove, rename), to reopen the object, and for
    /// `..`; kept up to date across renames made through this server.
    path: Vec<CString>,
    /// An `O_PATH | O_NOFOLLOW` descriptor of the object itself (for a created file, its
    /// open descriptor): the base of every `*at` call made relative to the fid.
    fd: OwnedFd,
    kind: Kind,
    open: Option<Open>,
}

/// A 9P2000.L server for one directory tree; see [`super`].
pub struct Server {
    root: OwnedFd,
    root_dev: u64,
    read_only: bool,
    msize: u32,
    fids: HashMap<u32, Fid>,
    max_fids: usize,
    /// `openat2(2)` is missing (Linux before 5.6, or filtered by seccomp): paths are opened
    /// one `O_NOFOLLOW` component at a time, and the later `fchmodat2(2)` and
    /// `utimensat(AT_EMPTY_PATH)` are not tried either.
    legacy: bool,
}

impl Server {
    /// `root`: an open directory (`O_PATH` or `O_DIRECTORY` descriptor) that is the share's
    /// root. Nothing outside it is ever reachable through the server.
    pub fn new(root: OwnedFd, read_only: bool) -> Self {
        let root_dev = fstat(root.as_fd()).map(|st| st.st_dev).unwrap_or(0);
        let legacy = matches!(
            openat2(root.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0),
            Err(Errno(libc::ENOSYS | libc::EPERM))
        );
        Server {
            root,
            root_dev,
            read_only,
            msize: wire::MAX_MSIZE,
            fids: HashMap::new(),
            max_fids: MAX_FIDS,
            legacy,
        }
    }

    /// Handles one request message (`size[4] type[1] tag[2] ...`) and appends exactly one
    /// response message to `out`. Malformed input gets `Rlerror(EINVAL)` with the request's
    /// tag if it can be read (else [`wire::NOTAG`]); unknown types get `EOPNOTSUPP`.
    pub fn handle(&mut self, request: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let (tag, reply) = match Frame::new_checked(request) {
            Err(e) => (
                Frame::peek_tag(request).unwrap_or(wire::NOTAG),
                Err(e.into()),
            ),
            Ok(frame) if frame.size() > self.msize as usize => (frame.tag(), err(libc::EMSGSIZE)),
            Ok(frame) => {
                let reply = Tmessage::decode(frame.ty(), frame.body())
                    .map_err(Errno::from)
                    .and_then(|msg| self.dispatch(msg));
                (frame.tag(), reply)
            }
        };
        let reply = reply.unwrap_or_else(|Errno(e)| Rmessage::Lerror {
            ecode: u32::try_from(e).unwrap_or(libc::EIO as u32),
        });
        reply.encode(tag, out);
        // Replies are bounded by construction; this keeps the promise to the transport even
        // if one were not (the buffers the guest posted are `msize` bytes).
        if out.len() - start > self.msize as usize {
            out.truncate(start);
            Rmessage::Lerror {
                ecode: libc::EMSGSIZE as u32,
            }
            .encode(tag, out);
        }
    }

    /// Lowers the fid limit (to test `ENFILE` without thousands of descriptors).
    #[cfg(test)]
    pub(super) fn set_max_fids(&mut self, max: usize) {
        self.max_fids = max;
    }

    /// Works as on kernels before 5.6: no `openat2`, `fchmodat2`, `utimensat(AT_EMPTY_PATH)`.
    #[cfg(test)]
    pub(super) fn set_legacy(&mut self) {
        self.legacy = true;
    }

    fn dispatch(&mut self, msg: Tmessage<'_>) -> Res<Rmessage> {
        if self.read_only && mutates(&msg) {
            return err(libc::EROFS);
        }
        match msg {
            Tmessage::Version { msize, version } => self.version(msize, version),
            Tmessage::Auth { .. } | Tmessage::Xattrwalk { .. } | Tmessage::Xattrcreate { .. } => {
                err(libc::EOPNOTSUPP)
            }
            Tmessage::Attach { fid, .. } => self.attach(fid),
            Tmessage::Flush { .. } => Ok(Rmessage::Flush),
            Tmessage::Walk { fid, newfid, names } => self.walk(fid, newfid, &names),
            Tmessage::Lopen { fid, flags } => self.lopen(fid, flags),
            Tmessage::Lcreate {
                fid,
                name,
                flags,
                mode,
                ..
            } => self.lcreate(fid, name, flags, mode),
            Tmessage::Read { fid, offset, count } => self.read(fid, offset, count),
            Tmessage::Write { fid, offset, data } => self.write(fid, offset, data),
            Tmessage::Clunk { fid } => {
                self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
                Ok(Rmessage::Clunk)
            }
            Tmessage::Remove { fid } => self.remove(fid),
            Tmessage::Getattr { fid, .. } => self.getattr(fid),
            Tmessage::Setattr { fid, attr } => self.setattr(fid, &attr),
            Tmessage::Readdir { fid, offset, count } => self.readdir(fid, offset, count),
            Tmessage::Mkdir {
                dfid, name, mode, ..
            } => self.mkdir(dfid, name, mode),
            Tmessage::Symlink {
                dfid, name, target, ..
            } => self.symlink(dfid, name, target),
            Tmessage::Mknod {
                dfid, name, mode, ..
            } => self.mknod(dfid, name, mode),
            Tmessage::Readlink { fid } => self.readlink(fid),
            Tmessage::Link { dfid, fid, name } => self.link(dfid, fid, name),
            Tmessage::Rename { fid, dfid, name } => self.rename(fid, dfid, name),
            Tmessage::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => self.renameat(olddirfid, oldname, newdirfid, newname),
            Tmessage::Unlinkat { dfid, name, flags } => self.unlinkat(dfid, name, flags),
            Tmessage::Statfs { fid } => self.statfs(fid),
            Tmessage::Fsync { fid, datasync } => self.fsync(fid, datasync),
            Tmessage::Lock { fid, .. } => {
                // Locks are advisory and this server has one client: every lock is granted.
                self.fid(fid)?;
                Ok(Rmessage::Lock {
                    status: wire::LOCK_SUCCESS,
                })
            }
            Tmessage::Getlock { fid, lock } => {
                // Nothing ever conflicts: report the range as unlocked.
                self.fid(fid)?;
                Ok(Rmessage::Getlock(GetLock {
                    ty: wire::LOCK_TYPE_UNLCK,
                    start: lock.start,
                    length: lock.length,
                    proc_id: lock.proc_id,
                    client_id: lock.client_id.to_vec(),
                }))
            }
        }
    }

    fn fid(&self, fid: u32) -> Res<&Fid> {
        self.fids.get(&fid).ok_or(Errno(libc::EBADF))
    }

    /// A fid that must be a directory (the base of a name).
    fn dir_fid(&self, fid: u32) -> Res<&Fid> {
        let f = self.fid(fid)?;
        if f.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        Ok(f)
    }

    /// Checks that `fid` may be (re)defined by this request.
    fn check_new_fid(&self, fid: u32, replacing: Option<u32>) -> Res<()> {
        if replacing == Some(fid) {
            return Ok(());
        }
        if self.fids.contains_key(&fid) {
            return err(libc::EBADF);
        }
        if self.fids.len() >= self.max_fids {
            return err(libc::ENFILE);
        }
        Ok(())
    }

    fn qid(&self, st: &libc::stat) -> Qid {
        Qid {
            ty: match Kind::of(st.st_mode) {
                Kind::Dir => wire::QTDIR,
                Kind::Symlink => wire::QTSYMLINK,
                _ => wire::QTFILE,
            },
            version: 0,
            path: self.qid_path(st.st_dev, st.st_ino),
        }
    }

    /// The inode number, made unique across file systems mounted inside the share.
    fn qid_path(&self, dev: u64, ino: u64) -> u64 {
        if dev == self.root_dev {
            ino
        } else {
            // A fixed mix of (dev, ino), in the upper half so it cannot meet the root
            // file system's small inode numbers.
            let mut x = dev.rotate_left(32) ^ ino;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x ^ (x >> 31)) | 1 << 63
        }
    }

    /// Opens `path` (validated components) beneath the directory `dir`, never following a
    /// symlink and never leaving `dir`. An empty path is `dir` itself.
    fn open_beneath(
        &self,
        dir: BorrowedFd<'_>,
        path: &[CString],
        flags: c_int,
        mode: u32,
    ) -> Res<OwnedFd> {
        let mut flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if flags & libc::O_PATH == 0 {
            flags |= libc::O_NOCTTY;
        }
        if !self.legacy {
            let mut joined = Vec::new();
            for c in path {
                if !joined.is_empty() {
                    joined.push(b'/');
                }
                joined.extend_from_slice(c.as_bytes());
            }
            if joined.is_empty() {
                joined.push(b'.');
            }
            let joined = CString::new(joined).map_err(|_| Errno(libc::EINVAL))?;
            return openat2(dir, &joined, flags, mode);
        }
        // Component by component: every intermediate step must be a real directory.
        let Some((last, dirs)) = path.split_last() else {
            return openat(dir, c".", flags, mode);
        };
        let mut cur: Option<OwnedFd> = None;
        for c in dirs {
            let base = cur.as_ref().map_or(dir, |f| f.as_fd());
            let next = openat(
                base,
                c,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            )?;
            cur = Some(next);
        }
        let base = cur.as_ref().map_or(dir, |f| f.as_fd());
        openat(base, last, flags, mode)
    }

    /// Opens the fid's object again with `flags` (by its path from the root) and checks
    /// that it is still the same inode; `ESTALE` if something else now has its name.
    fn reopen(&self, fid: &Fid, flags: c_int) -> Res<OwnedFd> {
        let fd = self.open_beneath(self.root.as_fd(), &fid.path, flags, 0)?;
        let (a, b) = (fstat(fd.as_fd())?, fstat(fid.fd.as_fd())?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return err(libc::ESTALE);
        }
        Ok(fd)
    }

    /// The fid's parent directory and its own name, checked to still be the fid's inode.
    /// The share root has no parent (`EBUSY`: it cannot be removed or renamed).
    fn parent<'f>(&self, fid: &'f Fid) -> Res<(OwnedFd, &'f CStr)> {
        let (name, dirs) = fid.path.split_last().ok_or(Errno(libc::EBUSY))?;
        let parent =
            self.open_beneath(self.root.as_fd(), dirs, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let (a, b) = (fstatat(parent.as_fd(), name)?, fstat(fid.fd.as_fd())?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return err(libc::ESTALE);
        }
        Ok((parent, name))
    }

    fn version(&mut self, msize: u32, version: &[u8]) -> Res<Rmessage> {
        // A new session: every fid of the old one is gone.
        self.fids.clear();
        let msize = msize.min(wire::MAX_MSIZE);
        if version != wire::VERSION_9P2000_L {
            return Ok(Rmessage::Version {
                msize,
                version: wire::VERSION_UNKNOWN.to_vec(),
            });
        }
        if msize < wire::MIN_MSIZE {
            return err(libc::EINVAL);
        }
        self.msize = msize;
        Ok(Rmessage::Version {
            msize,
            version: wire::VERSION_9P2000_L.to_vec(),
        })
    }

    fn attach(&mut self, fid: u32) -> Res<Rmessage> {
        self.check_new_fid(fid, None)?;
        let fd = self.open_beneath(self.root.as_fd(), &[], libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let st = fstat(fd.as_fd())?;
        let qid = self.qid(&st);
        self.fids.insert(
            fid,
            Fid {
                path: Vec::new(),
                fd,
                kind: Kind::Dir,
                open: None,
            },
        );
        Ok(Rmessage::Attach { qid })
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Res<Rmessage> {
        self.check_new_fid(newfid, Some(fid))?;
        let start = self.fid(fid)?;
        if names.is_empty() && newfid == fid {
            // Cloning a fid onto itself changes nothing (and keeps it open).
            return Ok(Rmessage::Walk { qids: Vec::new() });
        }
        let mut path = start.path.clone();
        let mut fd = start.fd.try_clone()?;
        let mut kind = start.kind;
        let mut qids = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            match self.walk_one(&mut path, &mut fd, &mut kind, name) {
                Ok(qid) => qids.push(qid),
                Err(e) if i == 0 => return Err(e),
                // A partial walk: the qids so far, and newfid is left alone.
                Err(_) => return Ok(Rmessage::Walk { qids }),
            }
        }
        self.fids.insert(
            newfid,
            Fid {
                path,
                fd,
                kind,
                open: None,
            },
        );
        Ok(Rmessage::Walk { qids })
    }

    /// One step of a walk: `.` stays, `..` goes to the parent but never above the root,
    /// any other name must be a single component of the current directory.
    fn walk_one(
        &self,
        path: &mut Vec<CString>,
        fd: &mut OwnedFd,
        kind: &mut Kind,
        name: &[u8],
    ) -> Res<Qid> {
        if *kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        match name {
            b"." => {}
            b".." => {
                // Logical, like a chroot: the path never holds `..`, so this cannot climb
                // out, and the kernel never resolves a `..` for us.
                if path.pop().is_some() {
                    *fd = self.open_beneath(
                        self.root.as_fd(),
                        path,
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )?;
                }
            }
            _ => {
                let c = component(name)?;
                *fd = self.open_beneath(fd.as_fd(), std::slice::from_ref(&c), libc::O_PATH, 0)?;
                path.push(c);
            }
        }
        let st = fstat(fd.as_fd())?;
        *kind = Kind::of(st.st_mode);
        Ok(self.qid(&st))
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Res<Rmessage> {
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

    fn lcreate(&mut self, fid: u32, name: &[u8], flags: u32, mode: u32) -> Res<Rmessage> {
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

    fn read(&self, fid: u32, offset: u64, count: u32) -> Res<Rmessage> {
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
        let mut data = vec![0u8; len];
        let n = retry(|| io_result(open.file.read_at(&mut data, offset as u64)))?;
        data.truncate(n);
        Ok(Rmessage::Read { data })
    }

    fn write(&self, fid: u32, offset: u64, data: &[u8]) -> Res<Rmessage> {
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

    fn remove(&mut self, fid: u32) -> Res<Rmessage> {
        // The fid is clunked whether or not the removal works.
        let f = self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
        if self.read_only {
            return err(libc::EROFS);
        }
        let (parent, name) = self.parent(&f)?;
        let flags = if f.kind == Kind::Dir {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(Rmessage::Remove)
    }

    // `nlink_t` is narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    fn getattr(&self, fid: u32) -> Res<Rmessage> {
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

    fn setattr(&self, fid: u32, a: &SetAttr) -> Res<Rmessage> {
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
                    timespec(sec as libc::time_t, nsec as libc::c_long)
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

    fn readdir(&self, fid: u32, offset: u64, count: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if f.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        let open = f.open.as_ref().ok_or(Errno(libc::EBADF))?;
        let dir = open.file.as_raw_fd();
        let dev = fstat(open.file.as_fd())?.st_dev;
        let max = count.min(self.msize - RDATA_HDR) as usize;
        // The offset is a cookie this server handed out: the kernel's `d_off` of the entry
        // before, which lseek on the same directory understands (0 is the start). Nonsense
        // cookies are the file system's to reject.
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        cvt_long(unsafe { libc::lseek(dir, offset as libc::off_t, libc::SEEK_SET) })?;
        let mut raw = vec![0u8; max.clamp(1024, 64 * 1024)];
        let n = retry(|| {
            // SAFETY: `raw` is valid for writes of `raw.len()` bytes.
            cvt_long(unsafe {
                libc::syscall(libc::SYS_getdents64, dir, raw.as_mut_ptr(), raw.len())
            })
        })? as usize;
        let raw = raw.get(..n).unwrap_or(&[]);
        let mut data = Vec::with_capacity(max.min(raw.len() * 2));
        let mut rest = raw;
        // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while let Some((head, _)) = rest.split_first_chunk::<19>() {
            let ino = u64::from_ne_bytes(head[0..8].try_into().unwrap_or_default());
            let off = u64::from_ne_bytes(head[8..16].try_into().unwrap_or_default());
            let reclen = usize::from(u16::from_ne_bytes([head[16], head[17]]));
            let d_type = head[18];
            let Some(record) = rest.get(..reclen).filter(|_| reclen > 19) else {
                break;
            };
            let name = record.get(19..).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if data.len() + DirEntry::encoded_len(name.len()) > max {
                break;
            }
            let qid = if f.path.is_empty() && (name == b".." || name == b".") {
                // The root's `..` is the root: don't reveal what lies above the share.
                self.qid(&fstat(self.root.as_fd())?)
            } else {
                Qid {
                    ty: match d_type {
                        libc::DT_DIR => wire::QTDIR,
                        libc::DT_LNK => wire::QTSYMLINK,
                        _ => wire::QTFILE,
                    },
                    version: 0,
                    path: self.qid_path(dev, ino),
                }
            };
            DirEntry {
                qid,
                offset: off,
                ty: d_type,
                name,
            }
            .encode(&mut data);
            rest = rest.get(reclen..).unwrap_or_default();
        }
        Ok(Rmessage::Readdir { data })
    }

    fn mkdir(&self, dfid: u32, name: &[u8], mode: u32) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        // SAFETY: `name` is NUL-terminated and outlives the call.
        cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), guest_mode(mode, Kind::Dir)) })?;
        Ok(Rmessage::Mkdir {
            qid: self.qid(&fstatat(dir, &name)?),
        })
    }

    fn symlink(&self, dfid: u32, name: &[u8], target: &[u8]) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        if target.len() > TARGET_MAX {
            return err(libc::ENAMETOOLONG);
        }
        // The target is stored, never resolved by this server, so it may say anything.
        let target = CString::new(target).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: both strings are NUL-terminated and outlive the call.
        cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
        Ok(Rmessage::Symlink {
            qid: self.qid(&fstatat(dir, &name)?),
        })
    }

    fn mknod(&self, dfid: u32, name: &[u8], mode: u32) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        let ty = mode & libc::S_IFMT;
        // Device nodes would hand the guest whatever host device they name.
        if !matches!(ty, libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK) {
            return err(libc::EPERM);
        }
        let mode = ty | guest_mode(mode, Kind::Special);
        // SAFETY: `name` is NUL-terminated and outlives the call.
        cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })?;
        Ok(Rmessage::Mknod {
            qid: self.qid(&fstatat(dir, &name)?),
        })
    }

    fn readlink(&self, fid: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if f.kind != Kind::Symlink {
            return err(libc::EINVAL);
        }
        let mut buf = vec![0u8; TARGET_MAX + 1];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the empty path makes it
        // read the symlink the O_PATH descriptor refers to.
        let n = cvt_long(unsafe {
            libc::readlinkat(
                f.fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ) as libc::c_long
        })? as usize;
        if n > TARGET_MAX {
            return err(libc::ENAMETOOLONG);
        }
        buf.truncate(n);
        Ok(Rmessage::Readlink { target: buf })
    }

    fn link(&self, dfid: u32, fid: u32, name: &[u8]) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        let f = self.fid(fid)?;
        if f.kind == Kind::Dir {
            return err(libc::EPERM);
        }
        let (old_dir, old_name) = self.parent(f)?;
        // SAFETY: both names are NUL-terminated and outlive the call. Flags 0: a symlink
        // cause is linked itself, not followed.
        cvt(unsafe {
            libc::linkat(
                old_dir.as_raw_fd(),
                old_name.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                0,
            )
        })?;
        Ok(Rmessage::Link)
    }

    fn rename(&mut self, fid: u32, dfid: u32, name: &[u8]) -> Res<Rmessage> {
        let newdir = self.dir_fid(dfid)?;
        let name = component(name)?;
        let f = self.fid(fid)?;
        let (old_dir, old_name) = self.parent(f)?;
        let from = f.path.clone();
        let to = child_path(&newdir.path, name.clone());
        renameat(old_dir.as_fd(), old_name, newdir.fd.as_fd(), &name)?;
        self.moved(&from, to);
        Ok(Rmessage::Rename)
    }

    fn renameat(
        &mut self,
        olddirfid: u32,
        oldname: &[u8],
        newdirfid: u32,
        newname: &[u8],
    ) -> Res<Rmessage> {
        let olddir = self.dir_fid(olddirfid)?;
        let newdir = self.dir_fid(newdirfid)?;
        let oldname = component(oldname)?;
        let newname = component(newname)?;
        renameat(olddir.fd.as_fd(), &oldname, newdir.fd.as_fd(), &newname)?;
        let from = child_path(&olddir.path, oldname);
        let to = child_path(&newdir.path, newname);
        self.moved(&from, to);
        Ok(Rmessage::Renameat)
    }

    /// After a rename, every fid at or below `from` is now at or below `to`.
    fn moved(&mut self, from: &[CString], to: Vec<CString>) {
        for f in self.fids.values_mut() {
            if f.path.starts_with(from) {
                let rest = f.path.split_off(from.len());
                f.path.clone_from(&to);
                f.path.extend(rest);
            }
        }
    }

    fn unlinkat(&self, dfid: u32, name: &[u8], flags: u32) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        let flags = match flags {
            0 => 0,
            wire::AT_REMOVEDIR => libc::AT_REMOVEDIR,
            _ => return err(libc::EINVAL),
        };
        // SAFETY: `name` is NUL-terminated and outlives the call; unlinkat never follows a
        // symlink in its last component.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(Rmessage::Unlinkat)
    }

    // `c_ulong` is narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    fn statfs(&self, fid: u32) -> Res<Rmessage> {
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

    fn fsync(&self, fid: u32, datasync: u32) -> Res<Rmessage> {
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

/// Requests refused on a read-only share (`Tremove` clunks its fid first, so it checks
/// itself; `Tlopen` checks its flags).
fn mutates(msg: &Tmessage<'_>) -> bool {
    matches!(
        msg,
        Tmessage::Lcreate { .. }
            | Tmessage::Write { .. }
            | Tmessage::Setattr { .. }
            | Tmessage::Mkdir { .. }
            | Tmessage::Symlink { .. }
            | Tmessage::Mknod { .. }
            | Tmessage::Link { .. }
            | Tmessage::Rename { .. }
            | Tmessage::Renameat { .. }
            | Tmessage::Unlinkat { .. }
            | Tmessage::Xattrcreate { .. }
    )
}

/// A guest name as one path component: not empty, `.` or `..`, without `/` (or NUL, which
/// decoding already refused), at most `NAME_MAX` bytes.
fn component(name: &[u8]) -> Res<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return err(libc::EINVAL);
    }
    if name.len() > NAME_MAX {
        return err(libc::ENAMETOOLONG);
    }
    CString::new(name).map_err(|_| Errno(libc::EINVAL))
}

fn child_path(dir: &[CString], name: CString) -> Vec<CString> {
    let mut path = dir.to_vec();
    path.push(name);
    path
}

/// Permission bits the guest may set. Set-user-ID and set-group-ID files are never made:
/// the files are the host's, and a host user running one would gain the owner's rights
/// (set-group-ID stays on directories, where it only means group inheritance).
fn guest_mode(mode: u32, kind: Kind) -> libc::mode_t {
    let mode = mode & 0o7777;
    if kind == Kind::Dir {
        mode & !libc::S_ISUID
    } else {
        mode & !(libc::S_ISUID | libc::S_ISGID)
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
