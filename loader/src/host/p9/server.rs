//! The file server's core: the fid table, dispatch of each request to its handler (the
//! sessions and walks here; files, attributes and directories in the sibling modules
//! `files`, `attrs` and `dirs`), and path resolution confined to the share. See the module
//! docs of [`super`] for the confinement design.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use libc::c_int;

use super::sys::{Errno, Res, err, fstat, fstatat, openat, openat2};
use super::wire::{self, Qid, Rmessage, Tmessage};

/// At most this many fids per session; more get `ENFILE`. Each fid holds one or two host
/// file descriptors, so the VMM should allow about twice as many open files.
pub const MAX_FIDS: usize = 4096;
/// Longest file name component (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// `size[4] type[1] tag[2] count[4]`: what `Rread`/`Rreaddir` add around their data.
pub(crate) const RDATA_HDR: u32 = 11;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
    /// Devices, FIFOs, sockets: they can be seen and removed, never opened.
    Special,
}

impl Kind {
    pub(super) fn of(mode: libc::mode_t) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// A file opened by `Tlopen`/`Tlcreate`.
pub(super) struct Open {
    pub(super) file: std::fs::File,
    pub(super) read: bool,
    pub(super) write: bool,
}

/// What a fid names.
pub(super) struct Fid {
    /// Components from the share root to the object: never empty, `.`, `..`, nor containing
    /// `/` or NUL. Used to find the parent (remove, rename), to reopen the object, and for
    /// `..`; kept up to date across renames made through this server.
    pub(super) path: Vec<CString>,
    /// An `O_PATH | O_NOFOLLOW` descriptor of the object itself (for a created file, its
    /// open descriptor): the base of every `*at` call made relative to the fid.
    pub(super) fd: OwnedFd,
    pub(super) kind: Kind,
    pub(super) open: Option<Open>,
}

/// A 9P2000.L server for one directory tree; see [`super`].
pub struct Server {
    pub(super) root: OwnedFd,
    root_dev: u64,
    pub(super) read_only: bool,
    pub(super) msize: u32,
    pub(super) fids: HashMap<u32, Fid>,
    max_fids: usize,
    /// `openat2(2)` is missing (Linux before 5.6, or filtered by seccomp): paths are opened
    /// one `O_NOFOLLOW` component at a time, and the later `fchmodat2(2)` and
    /// `utimensat(AT_EMPTY_PATH)` are not tried either.
    pub(super) legacy: bool,
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
        let msize = self.msize;
        // Reads go straight into the reply (see `answer_read_in_place`).
        if super::answer_read_in_place(msize, request, out, |fid, offset, count, out| {
            self.read_into(fid, offset, count, out)
        }) {
            return;
        }
        super::answer(msize, request, out, |msg| self.dispatch(msg));
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
            Tmessage::Read { fid, offset, count } => {
                let mut data = Vec::new();
                self.read_into(fid, offset, count, &mut data)?;
                Ok(Rmessage::Read { data })
            }
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
            Tmessage::Lock { fid, .. } | Tmessage::Getlock { fid, .. } => {
                self.fid(fid)?;
                super::single_client_lock(&msg).ok_or(Errno(libc::EINVAL))
            }
        }
    }

    pub(super) fn fid(&self, fid: u32) -> Res<&Fid> {
        self.fids.get(&fid).ok_or(Errno(libc::EBADF))
    }

    /// A fid that must be a directory (the base of a name).
    pub(super) fn dir_fid(&self, fid: u32) -> Res<&Fid> {
        let f = self.fid(fid)?;
        if f.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        Ok(f)
    }

    /// Checks that `fid` may be (re)defined by this request.
    fn check_new_fid(&self, fid: u32, replacing: Option<u32>) -> Res<()> {
        check_new_fid(&self.fids, self.max_fids, fid, replacing)
    }

    pub(super) fn qid(&self, st: &libc::stat) -> Qid {
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
    pub(super) fn qid_path(&self, dev: u64, ino: u64) -> u64 {
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
    pub(super) fn open_beneath(
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
    pub(super) fn reopen(&self, fid: &Fid, flags: c_int) -> Res<OwnedFd> {
        let fd = self.open_beneath(self.root.as_fd(), &fid.path, flags, 0)?;
        let (a, b) = (fstat(fd.as_fd())?, fstat(fid.fd.as_fd())?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return err(libc::ESTALE);
        }
        Ok(fd)
    }

    /// The fid's parent directory and its own name, checked to still be the fid's inode.
    /// The share root has no parent (`EBUSY`: it cannot be removed or renamed).
    pub(super) fn parent<'f>(&self, fid: &'f Fid) -> Res<(OwnedFd, &'f CStr)> {
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
        let (negotiated, reply) = crate::host::p9::negotiate_version(msize, version)?;
        if let Some(msize) = negotiated {
            self.msize = msize;
        }
        Ok(reply)
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

/// Whether `fid` may be (re)defined in `fids` by a request that replaces `replacing`:
/// `EBADF` if it is taken, `ENFILE` past `max` fids. Every server's fid table keeps this rule.
pub(crate) fn check_new_fid<F>(
    fids: &HashMap<u32, F>,
    max: usize,
    fid: u32,
    replacing: Option<u32>,
) -> Res<()> {
    if replacing == Some(fid) {
        return Ok(());
    }
    if fids.contains_key(&fid) {
        return err(libc::EBADF);
    }
    if fids.len() >= max {
        return err(libc::ENFILE);
    }
    Ok(())
}

/// A guest name as one path component: not empty, `.` or `..`, without `/` (or NUL, which
/// decoding already refused), at most `NAME_MAX` bytes.
pub(crate) fn component(name: &[u8]) -> Res<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return err(libc::EINVAL);
    }
    if name.len() > NAME_MAX {
        return err(libc::ENAMETOOLONG);
    }
    CString::new(name).map_err(|_| Errno(libc::EINVAL))
}

/// Permission bits the guest may set. Set-user-ID and set-group-ID files are never made:
/// the files are the host's, and a host user running one would gain the owner's rights
/// (set-group-ID stays on directories, where it only means group inheritance).
pub(super) fn guest_mode(mode: u32, kind: Kind) -> libc::mode_t {
    let mode = mode & 0o7777;
    if kind == Kind::Dir {
        mode & !libc::S_ISUID
    } else {
        mode & !(libc::S_ISUID | libc::S_ISGID)
    }
}
