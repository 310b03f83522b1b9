//! WASI calls on share-backed descriptors: live host directories over 9P2000.L (`p9.rs`).
//!
//! `files.rs` checks what every backend checks (descriptor kinds, rights, flags, guest
//! pointers) and hands share-backed work to these functions. Each mirrors the in-memory
//! call it stands for, check for check, so both report the same errnos; what only the host
//! can know (it exists, it is empty, it may be written) comes from the server's `Rlerror`.
//!
//! Times set with the `_NOW` flags are the host's "now"; file sizes, link counts and inode
//! numbers are the host's. Offsets, `O_APPEND` and rights stay on this side, like the
//! descriptor table: a file is opened once, and every read and write names its offset.

use alloc::vec::Vec;

use wasmvm_abi::p9::{self as wire, Attr, SetAttr};

use crate::errno::{Errno, WasiResult};
use crate::files::{
    FST_ATIM, FST_ATIM_NOW, FST_MTIM, FST_MTIM_NOW, Filestat, OFLAG_CREAT, OFLAG_DIRECTORY,
    OFLAG_EXCL, OFLAG_TRUNC, WRITE_RIGHTS, check_fst_flags, push_dirent,
};
use crate::fs::Fs;
use crate::memory::GuestMemory;
use crate::p9::{Client, Cur, Remote, Session, mode_filetype};
use crate::platform::Platform;
use crate::state::{Entry, Handle, Wasi, rights};

/// Mode bits asked for new files and directories (the host's umask applies, as for any
/// host program).
const FILE_MODE: u32 = 0o666;
const DIR_MODE: u32 = 0o777;
/// Largest offset or size the host accepts (`off_t`).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// `filestat.dev` of share `share`: the in-memory filesystem is device 1.
fn share_dev(share: u32) -> u64 {
    2 + u64::from(share)
}

fn ns(sec: u64, nsec: u64) -> u64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn filestat(share: u32, a: &Attr) -> Filestat {
    Filestat {
        dev: share_dev(share),
        ino: a.qid.path,
        filetype: mode_filetype(a.mode),
        nlink: a.nlink,
        size: a.size,
        atim: ns(a.atime_sec, a.atime_nsec),
        mtim: ns(a.mtime_sec, a.mtime_nsec),
        ctim: ns(a.ctime_sec, a.ctime_nsec),
    }
}

/// The `Tlopen`/`Tlcreate` access mode for a file opened with rights `base`.
fn access(base: u64) -> u32 {
    match (base & rights::FD_READ != 0, base & rights::FD_WRITE != 0) {
        (true, true) => wire::DOTL_RDWR,
        (false, true) => wire::DOTL_WRONLY,
        _ => wire::DOTL_RDONLY,
    }
}

/// Sets the times of `fid` as `fd_filestat_set_times` asks.
fn set_times<P: Platform>(
    c: &mut Client<'_, P>,
    fid: u32,
    atim: u64,
    mtim: u64,
    flags: u32,
) -> WasiResult {
    check_fst_flags(flags)?;
    let mut attr = SetAttr::default();
    if flags & FST_ATIM != 0 {
        attr.valid |= wire::SETATTR_ATIME | wire::SETATTR_ATIME_SET;
        attr.atime_sec = atim / 1_000_000_000;
        attr.atime_nsec = atim % 1_000_000_000;
    } else if flags & FST_ATIM_NOW != 0 {
        attr.valid |= wire::SETATTR_ATIME;
    }
    if flags & FST_MTIM != 0 {
        attr.valid |= wire::SETATTR_MTIME | wire::SETATTR_MTIME_SET;
        attr.mtime_sec = mtim / 1_000_000_000;
        attr.mtime_nsec = mtim % 1_000_000_000;
    } else if flags & FST_MTIM_NOW != 0 {
        attr.valid |= wire::SETATTR_MTIME;
    }
    if attr.valid == 0 {
        return Ok(());
    }
    c.setattr(fid, attr)
}

fn set_size<P: Platform>(c: &mut Client<'_, P>, fid: u32, size: u64) -> WasiResult {
    if size > MAX_OFFSET {
        return Err(Errno::FBIG);
    }
    let attr = SetAttr {
        valid: wire::SETATTR_SIZE,
        size,
        ..SetAttr::default()
    };
    c.setattr(fid, attr)
}

/// Creates file `name` in `dir` for `path_open(O_CREAT)`, as `Fs::create` checks it, and
/// opens it. Consumes `dir`.
fn create_file<P: Platform>(
    c: &mut Client<'_, P>,
    dir: Cur,
    name: &[u8],
    oflags: u32,
    access: u32,
) -> WasiResult<Cur> {
    if let Err(e) = Fs::check_name(name).and(if dir.is_dir() {
        Ok(())
    } else {
        Err(Errno::NOTDIR)
    }) {
        c.release(dir);
        return Err(e);
    }
    // Tlcreate turns the directory's fid into the new file's: use a copy of our own.
    let mut file = c.own(dir)?;
    let excl = if oflags & OFLAG_EXCL != 0 {
        wire::DOTL_EXCL
    } else {
        0
    };
    match c.lcreate(file.fid, name, access | excl, FILE_MODE) {
        Ok(qid) => {
            file.qid = qid;
            Ok(file)
        }
        Err(e) => {
            c.release(file);
            Err(e)
        }
    }
}

/// Opens existing file `file` (owned) as `path_open` found it.
fn open_file<P: Platform>(
    c: &mut Client<'_, P>,
    file: Cur,
    trunc: bool,
    access: u32,
) -> WasiResult<Cur> {
    let opened = (|| {
        let mut flags = access;
        if trunc {
            if access == wire::DOTL_RDONLY {
                // O_TRUNC empties the file whatever the descriptor may do with it.
                set_size(c, file.fid, 0)?;
            } else {
                flags |= wire::DOTL_TRUNC;
            }
        }
        c.lopen(file.fid, flags)
    })();
    match opened {
        Ok(qid) => {
            let mut file = file;
            file.qid = qid;
            Ok(file)
        }
        Err(e) => {
            c.release(file);
            Err(e)
        }
    }
}

/// `path_remove_directory`/`path_unlink_file` of `name` in `dir`, as `files.rs` and
/// `Fs::remove` check them.
fn remove<P: Platform>(
    c: &mut Client<'_, P>,
    dir: &Cur,
    name: &[u8],
    trailing_slash: bool,
    dir_wanted: bool,
) -> WasiResult {
    if trailing_slash && !dir_wanted {
        let target = c.step(dir.alias(), name)?;
        let is_dir = target.is_dir();
        c.release(target);
        return Err(if is_dir { Errno::ISDIR } else { Errno::NOTDIR });
    }
    if name == b"." || name == b".." {
        return Err(if dir_wanted {
            Errno::INVAL
        } else {
            Errno::ISDIR
        });
    }
    if !dir.is_dir() {
        return Err(Errno::NOTDIR);
    }
    if name.contains(&0) {
        return Err(Errno::NOENT);
    }
    c.unlinkat(dir.fid, name, dir_wanted)
}

/// `path_rename` between two resolved parents, as `files.rs` and `Fs::rename` check it.
fn rename<P: Platform>(
    c: &mut Client<'_, P>,
    from: (&Cur, &[u8], bool),
    to: (&Cur, &[u8], bool),
) -> WasiResult {
    let (from_dir, from_name, from_slash) = from;
    let (to_dir, to_name, to_slash) = to;
    let source = c.step(from_dir.alias(), from_name)?;
    let source_is_dir = source.is_dir();
    c.release(source);
    if (from_slash || to_slash) && !source_is_dir {
        return Err(Errno::NOTDIR);
    }
    if from_name == b"." || from_name == b".." || to_name == b"." || to_name == b".." {
        return Err(Errno::BUSY);
    }
    Fs::check_name(to_name)?;
    c.renameat(from_dir.fid, from_name, to_dir.fid, to_name)
}

impl<P: Platform> Wasi<P> {
    /// Preopens host share `share` (a directory the platform serves over 9P2000.L, see
    /// [`Platform::p9_transact`]) as `guest_path`; returns its descriptor. The first use of
    /// a share negotiates the session (`Tversion`, `Tattach`); a failed transport is `EIO`.
    pub fn preopen_share(&mut self, guest_path: &[u8], share: u32) -> Result<u32, Errno> {
        if !self.shares.contains_key(&share) {
            let session = Session::connect(&mut self.platform, share)?;
            self.shares.insert(share, session);
        }
        let mut c = self.client(share)?;
        let root = c.s.root();
        let own = c.own(root)?;
        let remote = Remote {
            share,
            fid: own.fid,
            qid: own.qid,
        };
        Ok(self.insert_preopen(Handle::Share(remote), guest_path))
    }

    fn client(&mut self, share: u32) -> WasiResult<Client<'_, P>> {
        let s = self.shares.get_mut(&share).ok_or(Errno::BADF)?;
        Ok(Client {
            platform: &mut self.platform,
            share,
            s,
        })
    }

    /// Gives back the fid a closed or replaced descriptor held.
    pub(crate) fn release_entry(&mut self, entry: &Entry) {
        if let Entry::Socket { id, .. } = *entry {
            self.release_socket(id);
            return;
        }
        if let Entry::Dir {
            node: Handle::Share(r),
            ..
        }
        | Entry::File {
            node: Handle::Share(r),
            ..
        } = entry
            && let Ok(mut c) = self.client(r.share)
        {
            c.clunk(r.fid);
        }
    }

    /// Writes the iovecs at the descriptor's offset, `at`, or the end (`append`); returns
    /// the bytes written and the offset after them. Split into `iounit` pieces; an error
    /// after some bytes went out ends the write short, as POSIX `write` does.
    pub(crate) fn share_write(
        &mut self,
        mem: &GuestMemory,
        r: Remote,
        iovs: &[(u32, u32)],
        at: Option<u64>,
        offset: u64,
        append: bool,
    ) -> WasiResult<(u32, u64)> {
        let mut c = self.client(r.share)?;
        let mut pos = if append {
            c.getattr(r.fid)?.size
        } else {
            at.unwrap_or(offset)
        };
        let piece = c.iounit() as usize;
        let mut total: u32 = 0;
        for &(ptr, len) in iovs {
            let bytes = mem.slice(ptr, len)?;
            pos.checked_add(u64::from(len))
                .filter(|end| *end <= MAX_OFFSET)
                .ok_or(Errno::FBIG)?;
            let mut done = 0;
            while done < bytes.len() {
                let chunk = &bytes[done..bytes.len().min(done + piece)];
                match c.write(r.fid, pos, chunk) {
                    Ok(n) if n > 0 => {
                        done += n as usize;
                        pos += u64::from(n);
                    }
                    failed => {
                        let e = failed.err().unwrap_or(Errno::IO);
                        let written = total.saturating_add(done as u32);
                        return if written == 0 {
                            Err(e)
                        } else {
                            Ok((written, pos))
                        };
                    }
                }
            }
            total = total.checked_add(len).ok_or(Errno::INVAL)?;
        }
        Ok((total, pos))
    }

    /// Reads into the iovecs from `pos`; returns the bytes read and the offset after them.
    /// Stops at the first short read (end of file).
    pub(crate) fn share_read(
        &mut self,
        mem: &mut GuestMemory,
        r: Remote,
        iovs: &[(u32, u32)],
        mut pos: u64,
    ) -> WasiResult<(u32, u64)> {
        let mut c = self.client(r.share)?;
        let piece = c.iounit();
        let mut total: u32 = 0;
        'iovs: for &(ptr, len) in iovs {
            if len == 0 {
                mem.write_bytes(ptr, &[])?;
                continue;
            }
            let mut got: u32 = 0;
            while got < len {
                let want = (len - got).min(piece);
                let data = if pos > MAX_OFFSET {
                    Vec::new()
                } else {
                    match c.read(r.fid, pos, want) {
                        Ok(data) => data,
                        Err(e) if total == 0 => return Err(e),
                        Err(_) => break 'iovs,
                    }
                };
                mem.write_bytes(ptr.checked_add(got).ok_or(Errno::FAULT)?, &data)?;
                let n = data.len() as u32;
                got += n;
                pos += u64::from(n);
                total = total.saturating_add(n);
                if n < want {
                    break 'iovs;
                }
            }
        }
        Ok((total, pos))
    }

    pub(crate) fn share_size(&mut self, r: Remote) -> WasiResult<u64> {
        Ok(self.client(r.share)?.getattr(r.fid)?.size)
    }

    pub(crate) fn share_sync(&mut self, r: Remote, datasync: bool) -> WasiResult {
        self.client(r.share)?.fsync(r.fid, datasync)
    }

    /// `fd_allocate`: grows the file to `end` bytes if it is shorter.
    pub(crate) fn share_allocate(&mut self, r: Remote, end: u64) -> WasiResult {
        let mut c = self.client(r.share)?;
        if c.getattr(r.fid)?.size < end {
            set_size(&mut c, r.fid, end)?;
        }
        Ok(())
    }

    pub(crate) fn share_filestat(
        &mut self,
        mem: &mut GuestMemory,
        out: u32,
        r: Remote,
    ) -> WasiResult {
        let attr = self.client(r.share)?.getattr(r.fid)?;
        filestat(r.share, &attr).write(mem, out)
    }

    pub(crate) fn share_set_size(&mut self, r: Remote, size: u64) -> WasiResult {
        set_size(&mut self.client(r.share)?, r.fid, size)
    }

    pub(crate) fn share_set_times(
        &mut self,
        r: Remote,
        atim: u64,
        mtim: u64,
        flags: u32,
    ) -> WasiResult {
        set_times(&mut self.client(r.share)?, r.fid, atim, mtim, flags)
    }

    pub(crate) fn share_readdir(
        &mut self,
        mem: &mut GuestMemory,
        r: Remote,
        buf: u32,
        len: u32,
        cookie: u64,
        used: u32,
    ) -> WasiResult {
        let mut c = self.client(r.share)?;
        let list = c.listing(r.cur(), cookie == 0)?;
        let mut out = Vec::new();
        for (i, e) in list
            .iter()
            .enumerate()
            .skip(cookie.min(usize::MAX as u64) as usize)
        {
            if out.len() >= len as usize {
                break;
            }
            push_dirent(&mut out, i as u64 + 1, e.ino, &e.name, e.filetype);
        }
        // A full buffer tells the caller to read on from the last cookie.
        out.truncate(len as usize);
        mem.write_bytes(buf, &out)?;
        mem.write_u32(used, out.len() as u32)
    }

    /// `path_open` beneath share directory `dir`, as `mem_open` does it in memory.
    pub(crate) fn share_open(
        &mut self,
        dir: Remote,
        path: &[u8],
        follow: bool,
        oflags: u32,
        base: u64,
    ) -> WasiResult<Entry> {
        let share = dir.share;
        let mut c = self.client(share)?;
        let access = access(base);
        let found = match c.lookup(dir.cur(), path, follow) {
            Ok(cur) if oflags & OFLAG_CREAT != 0 && oflags & OFLAG_EXCL != 0 => {
                c.release(cur);
                return Err(Errno::EXIST);
            }
            Ok(cur) => cur,
            Err(Errno::NOENT) if oflags & OFLAG_CREAT != 0 => {
                let (parent, name, trailing_slash) = c.parent(dir.cur(), path)?;
                if trailing_slash || oflags & OFLAG_DIRECTORY != 0 {
                    c.release(parent);
                    return Err(Errno::ISDIR);
                }
                let file = create_file(&mut c, parent, name, oflags, access)?;
                return Ok(Entry::File {
                    node: Handle::Share(Remote {
                        share,
                        fid: file.fid,
                        qid: file.qid,
                    }),
                    offset: 0,
                });
            }
            Err(e) => return Err(e),
        };
        let refused = if found.is_symlink() {
            Some(Errno::LOOP)
        } else if found.is_dir() && (base & WRITE_RIGHTS != 0 || oflags & OFLAG_TRUNC != 0) {
            Some(Errno::ISDIR)
        } else if !found.is_dir() && oflags & OFLAG_DIRECTORY != 0 {
            Some(Errno::NOTDIR)
        } else {
            None
        };
        if let Some(e) = refused {
            c.release(found);
            return Err(e);
        }
        let own = c.own(found)?;
        if own.is_dir() {
            // Directories stay unopened: a base for walks; fd_readdir opens its own fid.
            let node = Handle::Share(Remote {
                share,
                fid: own.fid,
                qid: own.qid,
            });
            return Ok(Entry::Dir {
                node,
                preopen: None,
            });
        }
        let file = open_file(&mut c, own, oflags & OFLAG_TRUNC != 0, access)?;
        Ok(Entry::File {
            node: Handle::Share(Remote {
                share,
                fid: file.fid,
                qid: file.qid,
            }),
            offset: 0,
        })
    }

    pub(crate) fn share_create_directory(&mut self, dir: Remote, path: &[u8]) -> WasiResult {
        let mut c = self.client(dir.share)?;
        let (parent, name, _) = c.parent(dir.cur(), path)?;
        let result = match Fs::check_name(name) {
            Ok(()) if !parent.is_dir() => Err(Errno::NOTDIR),
            Ok(()) => c.mkdir(parent.fid, name, DIR_MODE),
            Err(e) => Err(e),
        };
        c.release(parent);
        result
    }

    pub(crate) fn share_remove(
        &mut self,
        dir: Remote,
        path: &[u8],
        dir_wanted: bool,
    ) -> WasiResult {
        let mut c = self.client(dir.share)?;
        let (parent, name, trailing_slash) = c.parent(dir.cur(), path)?;
        let result = remove(&mut c, &parent, name, trailing_slash, dir_wanted);
        c.release(parent);
        result
    }

    pub(crate) fn share_path_filestat_get(
        &mut self,
        mem: &mut GuestMemory,
        dir: Remote,
        follow: bool,
        path: &[u8],
        out: u32,
    ) -> WasiResult {
        let mut c = self.client(dir.share)?;
        let cur = c.lookup(dir.cur(), path, follow)?;
        let attr = c.getattr(cur.fid);
        c.release(cur);
        filestat(dir.share, &attr?).write(mem, out)
    }

    pub(crate) fn share_path_set_times(
        &mut self,
        dir: Remote,
        follow: bool,
        path: &[u8],
        atim: u64,
        mtim: u64,
        flags: u32,
    ) -> WasiResult {
        let mut c = self.client(dir.share)?;
        let cur = c.lookup(dir.cur(), path, follow)?;
        let result = set_times(&mut c, cur.fid, atim, mtim, flags);
        c.release(cur);
        result
    }

    /// `path_rename` within one share.
    pub(crate) fn share_rename(
        &mut self,
        from: Remote,
        old: &[u8],
        to: Remote,
        new: &[u8],
    ) -> WasiResult {
        let mut c = self.client(from.share)?;
        let (from_dir, from_name, from_slash) = c.parent(from.cur(), old)?;
        let (to_dir, to_name, to_slash) = match c.parent(to.cur(), new) {
            Ok(p) => p,
            Err(e) => {
                c.release(from_dir);
                return Err(e);
            }
        };
        let result = rename(
            &mut c,
            (&from_dir, from_name, from_slash),
            (&to_dir, to_name, to_slash),
        );
        c.release(to_dir);
        c.release(from_dir);
        result
    }

    pub(crate) fn share_symlink(&mut self, dir: Remote, target: &[u8], path: &[u8]) -> WasiResult {
        let mut c = self.client(dir.share)?;
        let (parent, name, trailing_slash) = c.parent(dir.cur(), path)?;
        let result = if trailing_slash {
            match c.step(parent.alias(), name) {
                Ok(existing) => {
                    c.release(existing);
                    Err(Errno::EXIST)
                }
                Err(_) => Err(Errno::NOENT),
            }
        } else if target.first() == Some(&b'/') {
            // A link to an absolute path could never be followed beneath a preopen.
            Err(Errno::PERM)
        } else {
            match Fs::check_name(name) {
                Ok(()) if !parent.is_dir() => Err(Errno::NOTDIR),
                Ok(()) => c.symlink(parent.fid, name, target),
                Err(e) => Err(e),
            }
        };
        c.release(parent);
        result
    }

    pub(crate) fn share_readlink(
        &mut self,
        mem: &mut GuestMemory,
        dir: Remote,
        path: &[u8],
        buf: u32,
        buf_len: u32,
        out: u32,
    ) -> WasiResult {
        let mut c = self.client(dir.share)?;
        let cur = c.lookup(dir.cur(), path, false)?;
        let target = if cur.is_symlink() {
            c.readlink(cur.fid)
        } else {
            Err(Errno::INVAL)
        };
        c.release(cur);
        let target = target?;
        let n = target.len().min(buf_len as usize);
        mem.write_bytes(buf, &target[..n])?;
        mem.write_u32(out, n as u32)
    }

    /// `path_link` within one share.
    pub(crate) fn share_link(
        &mut self,
        old_dir: Remote,
        follow: bool,
        old: &[u8],
        new_dir: Remote,
        new: &[u8],
    ) -> WasiResult {
        let mut c = self.client(old_dir.share)?;
        let source = c.lookup(old_dir.cur(), old, follow)?;
        let (parent, name, trailing_slash) = match c.parent(new_dir.cur(), new) {
            Ok(p) => p,
            Err(e) => {
                c.release(source);
                return Err(e);
            }
        };
        let result = if trailing_slash {
            Err(Errno::NOENT)
        } else {
            match Fs::check_name(name) {
                Ok(()) if source.is_dir() => Err(Errno::PERM),
                Ok(()) if !parent.is_dir() => Err(Errno::NOTDIR),
                Ok(()) => c.link(parent.fid, source.fid, name),
                Err(e) => Err(e),
            }
        };
        c.release(parent);
        c.release(source);
        result
    }
}
