//! Descriptor and path calls: stdio, preopened directories and the in-memory [`Fs`]. Calls
//! on share-backed descriptors check what every backend checks here, then go to `share.rs`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::errno::{Errno, WasiResult};
use crate::filetype;
use crate::fs::{Ino, Kind, Node};
use crate::memory::GuestMemory;
use crate::platform::Platform;
use crate::state::{Entry, Fd, Handle, Wasi, fdflags, rights};

/// `lookupflags::symlink_follow`.
const SYMLINK_FOLLOW: u32 = 1;
pub(crate) const OFLAG_CREAT: u32 = 1;
pub(crate) const OFLAG_DIRECTORY: u32 = 2;
pub(crate) const OFLAG_EXCL: u32 = 4;
pub(crate) const OFLAG_TRUNC: u32 = 8;
pub(crate) const FST_ATIM: u32 = 1;
pub(crate) const FST_ATIM_NOW: u32 = 2;
pub(crate) const FST_MTIM: u32 = 4;
pub(crate) const FST_MTIM_NOW: u32 = 8;
/// Rights that make an open "for writing", which directories refuse.
pub(crate) const WRITE_RIGHTS: u64 =
    rights::FD_WRITE | rights::FD_DATASYNC | rights::FD_ALLOCATE | rights::FD_FILESTAT_SET_SIZE;

fn node_filetype(node: &Node) -> u8 {
    match node.kind {
        Kind::File(_) => filetype::REGULAR_FILE,
        Kind::Dir(..) => filetype::DIRECTORY,
        Kind::Symlink(_) => filetype::SYMBOLIC_LINK,
    }
}

fn node_size(node: &Node) -> u64 {
    match &node.kind {
        Kind::File(data) | Kind::Symlink(data) => data.len() as u64,
        Kind::Dir(entries, _) => entries.len() as u64,
    }
}

/// A path argument: bounds-checked, copied out of guest memory, and valid UTF-8 as WASI
/// requires.
fn path_arg(mem: &GuestMemory, ptr: u32, len: u32) -> WasiResult<Vec<u8>> {
    core::str::from_utf8(mem.slice(ptr, len)?).map_err(|_| Errno::ILSEQ)?;
    mem.copy(ptr, len)
}

/// A WASI `filestat`.
pub(crate) struct Filestat {
    pub dev: u64,
    pub ino: u64,
    pub filetype: u8,
    pub nlink: u64,
    pub size: u64,
    pub atim: u64,
    pub mtim: u64,
    pub ctim: u64,
}

impl Filestat {
    pub fn write(&self, mem: &mut GuestMemory, out: u32) -> WasiResult {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16] = self.filetype;
        b[24..32].copy_from_slice(&self.nlink.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        b[40..48].copy_from_slice(&self.atim.to_le_bytes());
        b[48..56].copy_from_slice(&self.mtim.to_le_bytes());
        b[56..64].copy_from_slice(&self.ctim.to_le_bytes());
        mem.write_bytes(out, &b)
    }
}

fn write_filestat(mem: &mut GuestMemory, out: u32, ino: Ino, node: &Node) -> WasiResult {
    Filestat {
        dev: 1,
        ino,
        filetype: node_filetype(node),
        nlink: node.nlink,
        size: node_size(node),
        atim: node.atim,
        mtim: node.mtim,
        ctim: node.ctim,
    }
    .write(mem, out)
}

/// Appends one `dirent` (and its name) to an `fd_readdir` buffer.
pub(crate) fn push_dirent(out: &mut Vec<u8>, next: u64, ino: u64, name: &[u8], filetype: u8) {
    let mut d = [0u8; 24];
    d[0..8].copy_from_slice(&next.to_le_bytes());
    d[8..16].copy_from_slice(&ino.to_le_bytes());
    d[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
    d[20] = filetype;
    out.extend_from_slice(&d);
    out.extend_from_slice(name);
}

/// `EINVAL` for unknown or contradictory `fst_flags`.
pub(crate) fn check_fst_flags(flags: u32) -> WasiResult {
    if flags & !(FST_ATIM | FST_ATIM_NOW | FST_MTIM | FST_MTIM_NOW) != 0
        || flags & (FST_ATIM | FST_ATIM_NOW) == (FST_ATIM | FST_ATIM_NOW)
        || flags & (FST_MTIM | FST_MTIM_NOW) == (FST_MTIM | FST_MTIM_NOW)
    {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// New timestamps from `fst_flags`, or `EINVAL` for contradictory flags.
fn set_times(node: &mut Node, atim: u64, mtim: u64, flags: u32, now: u64) -> WasiResult {
    check_fst_flags(flags)?;
    if flags & FST_ATIM != 0 {
        node.atim = atim;
    } else if flags & FST_ATIM_NOW != 0 {
        node.atim = now;
    }
    if flags & FST_MTIM != 0 {
        node.mtim = mtim;
    } else if flags & FST_MTIM_NOW != 0 {
        node.mtim = now;
    }
    node.ctim = now;
    Ok(())
}

impl<P: Platform> Wasi<P> {
    fn dir_node(&self, fd: u32) -> WasiResult<Handle> {
        match self.fd(fd)?.entry {
            Entry::Dir { node, .. } => Ok(node),
            _ => Err(Errno::NOTDIR),
        }
    }

    /// The size of a file descriptor's file.
    fn file_size(&mut self, node: Handle) -> WasiResult<u64> {
        match node {
            Handle::Mem(ino) => Ok(node_size(self.fs.node(ino)?)),
            Handle::Share(r) => self.share_size(r),
        }
    }

    /// A copy of descriptor `fd`, which must hold `right` (else `EBADF`, as wasmtime).
    fn fd_with(&self, fd: u32, right: u64) -> WasiResult<Fd> {
        let d = self.fd(fd)?;
        if d.rights & right == 0 {
            return Err(Errno::BADF);
        }
        Ok(d.clone())
    }

    /// Moves a file descriptor's position.
    fn set_offset(&mut self, fd: u32, pos: u64) {
        if let Some(Fd {
            entry: Entry::File { offset, .. },
            ..
        }) = self.fds.get_mut(fd as usize).and_then(Option::as_mut)
        {
            *offset = pos;
        }
    }

    fn file_data(&mut self, ino: Ino) -> WasiResult<&mut Vec<u8>> {
        match &mut self.fs.node_mut(ino)?.kind {
            Kind::File(data) => Ok(data),
            _ => Err(Errno::ISDIR),
        }
    }

    pub(crate) fn fd_write(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        iovs: u32,
        count: u32,
        at: Option<u64>,
        nwritten: u32,
    ) -> WasiResult {
        let d = self.fd_with(fd, rights::FD_WRITE)?;
        let iovs = mem.iovecs(iovs, count)?;
        let mut total: u32 = 0;
        match d.entry {
            Entry::Out(stream) => {
                if at.is_some() {
                    return Err(Errno::SPIPE);
                }
                for (ptr, len) in iovs {
                    self.platform.write(stream, mem.slice(ptr, len)?);
                    total = total.checked_add(len).ok_or(Errno::INVAL)?;
                }
            }
            Entry::File {
                node: Handle::Share(r),
                offset,
            } => {
                let append = d.flags & fdflags::APPEND != 0;
                let (n, pos) = self.share_write(mem, r, &iovs, at, offset, append)?;
                if at.is_none() {
                    self.set_offset(fd, pos);
                }
                total = n;
            }
            Entry::File {
                node: Handle::Mem(ino),
                offset,
            } => {
                let now = self.now();
                let append = d.flags & fdflags::APPEND != 0;
                let data = self.file_data(ino)?;
                let mut pos = match (at, append) {
                    (_, true) => data.len() as u64,
                    (Some(at), false) => at,
                    (None, false) => offset,
                };
                for (ptr, len) in iovs {
                    let bytes = mem.slice(ptr, len)?;
                    let start = usize::try_from(pos).map_err(|_| Errno::FBIG)?;
                    let end = start.checked_add(bytes.len()).ok_or(Errno::FBIG)?;
                    if data.len() < end {
                        grow_file(data, end)?;
                    }
                    data[start..end].copy_from_slice(bytes);
                    pos = end as u64;
                    total = total.checked_add(len).ok_or(Errno::INVAL)?;
                }
                if at.is_none() {
                    self.set_offset(fd, pos);
                }
                let node = self.fs.node_mut(ino)?;
                node.mtim = now;
                node.ctim = now;
            }
            Entry::Socket { .. } if at.is_some() => return Err(Errno::SPIPE),
            Entry::Socket { .. } => total = self.socket_write(mem, fd, &iovs)?,
            Entry::Stdin => return Err(Errno::BADF),
            Entry::Dir { .. } => return Err(Errno::ISDIR),
        }
        mem.write_u32(nwritten, total)
    }

    pub(crate) fn fd_read(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        iovs: u32,
        count: u32,
        at: Option<u64>,
        nread: u32,
    ) -> WasiResult {
        let d = self.fd_with(fd, rights::FD_READ)?;
        let iovs = mem.iovecs(iovs, count)?;
        let total = match d.entry {
            Entry::Stdin if at.is_some() => return Err(Errno::SPIPE),
            Entry::Stdin => self.read_stdin(mem, &iovs)?,
            Entry::File {
                node: Handle::Share(r),
                offset,
            } => {
                let (total, pos) = self.share_read(mem, r, &iovs, at.unwrap_or(offset))?;
                if at.is_none() {
                    self.set_offset(fd, pos);
                }
                total
            }
            Entry::File {
                node: Handle::Mem(ino),
                offset,
            } => {
                let data = self.file_data(ino)?;
                let mut pos = at.unwrap_or(offset);
                let mut total: u32 = 0;
                for (ptr, len) in iovs {
                    let start = usize::try_from(pos).unwrap_or(usize::MAX).min(data.len());
                    let n = (len as usize).min(data.len() - start);
                    mem.write_bytes(ptr, &data[start..start + n])?;
                    pos = (start + n) as u64;
                    total += n as u32;
                    if n < len as usize {
                        break;
                    }
                }
                if at.is_none() {
                    self.set_offset(fd, pos);
                }
                total
            }
            Entry::Socket { .. } if at.is_some() => return Err(Errno::SPIPE),
            Entry::Socket { .. } => self.socket_read(mem, fd, &iovs, 0)?.0,
            Entry::Out(_) => return Err(Errno::BADF),
            Entry::Dir { .. } => return Err(Errno::ISDIR),
        };
        mem.write_u32(nread, total)
    }

    pub(crate) fn fd_close(&mut self, fd: u32) -> WasiResult {
        self.fd(fd)?;
        if let Some(closed) = self.fds[fd as usize].take() {
            self.release_entry(&closed.entry);
        }
        Ok(())
    }

    pub(crate) fn fd_renumber(&mut self, from: u32, to: u32) -> WasiResult {
        let moved = self.fd(from)?.clone();
        self.fd(to)?;
        if from != to {
            if let Some(replaced) = self.fds[to as usize].replace(moved) {
                self.release_entry(&replaced.entry);
            }
            self.fds[from as usize] = None;
        }
        Ok(())
    }

    pub(crate) fn fd_fdstat_get(&mut self, mem: &mut GuestMemory, fd: u32, out: u32) -> WasiResult {
        let d = self.fd(fd)?;
        let ty = match d.entry {
            Entry::Stdin | Entry::Out(_) => self.stdio_filetype(&d.entry),
            Entry::Dir { .. } => filetype::DIRECTORY,
            Entry::File { .. } => filetype::REGULAR_FILE,
            Entry::Socket { kind, .. } => socket_filetype(kind),
        };
        let mut stat = [0u8; 24];
        stat[0] = ty;
        stat[2..4].copy_from_slice(&d.flags.to_le_bytes());
        stat[8..16].copy_from_slice(&d.rights.to_le_bytes());
        stat[16..24].copy_from_slice(&d.inheriting.to_le_bytes());
        mem.write_bytes(out, &stat)
    }

    pub(crate) fn fd_fdstat_set_flags(&mut self, fd: u32, flags: u32) -> WasiResult {
        let d = self.fd_mut(fd)?;
        let allowed = (fdflags::APPEND | fdflags::NONBLOCK) as u32;
        if flags & !0x1f != 0 {
            return Err(Errno::INVAL);
        }
        if flags & !allowed != 0 {
            return Err(Errno::NOTSUP);
        }
        d.flags = flags as u16;
        Ok(())
    }

    pub(crate) fn fd_fdstat_set_rights(
        &mut self,
        fd: u32,
        base: u64,
        inheriting: u64,
    ) -> WasiResult {
        let d = self.fd_mut(fd)?;
        if base & !d.rights != 0 || inheriting & !d.inheriting != 0 {
            return Err(Errno::NOTCAPABLE);
        }
        d.rights = base;
        d.inheriting = inheriting;
        Ok(())
    }

    pub(crate) fn fd_prestat_get(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        out: u32,
    ) -> WasiResult {
        match &self.fd(fd)?.entry {
            Entry::Dir {
                preopen: Some(name),
                ..
            } => {
                let mut b = [0u8; 8];
                b[4..8].copy_from_slice(&(name.len() as u32).to_le_bytes());
                mem.write_bytes(out, &b)
            }
            _ => Err(Errno::BADF),
        }
    }

    pub(crate) fn fd_prestat_dir_name(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        buf: u32,
        len: u32,
    ) -> WasiResult {
        match &self.fd(fd)?.entry {
            Entry::Dir {
                preopen: Some(name),
                ..
            } => {
                if (len as usize) < name.len() {
                    return Err(Errno::NAMETOOLONG);
                }
                let name = name.clone();
                mem.write_bytes(buf, &name)
            }
            _ => Err(Errno::BADF),
        }
    }

    pub(crate) fn fd_seek(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        delta: i64,
        whence: u32,
        out: u32,
    ) -> WasiResult {
        let d = self.fd(fd)?.clone();
        let Entry::File { node, offset } = d.entry else {
            return Err(match d.entry {
                Entry::Dir { .. } => Errno::BADF,
                _ => Errno::SPIPE,
            });
        };
        let needed = if whence == 1 && delta == 0 {
            rights::FD_TELL
        } else {
            rights::FD_SEEK
        };
        if d.rights & (needed | rights::FD_SEEK) == 0 {
            return Err(Errno::BADF);
        }
        let base = match whence {
            0 => 0,
            1 => offset as i64,
            2 => self.file_size(node)? as i64,
            _ => return Err(Errno::INVAL),
        };
        let pos = base
            .checked_add(delta)
            .filter(|p| *p >= 0)
            .ok_or(Errno::INVAL)? as u64;
        self.set_offset(fd, pos);
        mem.write_u64(out, pos)
    }

    /// A no-op in memory; `Tfsync` for a share file.
    pub(crate) fn fd_sync(&mut self, fd: u32, datasync: bool) -> WasiResult {
        match self.fd(fd)?.entry {
            Entry::File {
                node: Handle::Share(r),
                ..
            } => self.share_sync(r, datasync),
            _ => Ok(()),
        }
    }

    pub(crate) fn fd_advise(&mut self, fd: u32, advice: u32) -> WasiResult {
        match self.fd(fd)?.entry {
            Entry::Dir { .. } => Err(Errno::BADF),
            _ if advice > 5 => Err(Errno::INVAL),
            _ => Ok(()),
        }
    }

    pub(crate) fn fd_allocate(&mut self, fd: u32, offset: u64, len: u64) -> WasiResult {
        let Entry::File { node, .. } = self.fd(fd)?.entry else {
            return Err(Errno::BADF);
        };
        let end = offset.checked_add(len).ok_or(Errno::FBIG)?;
        let ino = match node {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_allocate(r, end),
        };
        let data = self.file_data(ino)?;
        if (data.len() as u64) < end {
            grow_file(data, usize::try_from(end).map_err(|_| Errno::FBIG)?)?;
        }
        Ok(())
    }

    pub(crate) fn fd_filestat_get(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        out: u32,
    ) -> WasiResult {
        match self.fd(fd)?.entry {
            Entry::Dir { node, .. } | Entry::File { node, .. } => match node {
                Handle::Mem(ino) => {
                    let node = self.fs.node(ino)?.clone();
                    write_filestat(mem, out, ino, &node)
                }
                Handle::Share(r) => self.share_filestat(mem, out, r),
            },
            ref entry @ (Entry::Stdin | Entry::Out(_)) => {
                let mut b = [0u8; 64];
                b[16] = self.stdio_filetype(entry);
                mem.write_bytes(out, &b)
            }
            Entry::Socket { kind, .. } => {
                let mut b = [0u8; 64];
                b[16] = socket_filetype(kind);
                mem.write_bytes(out, &b)
            }
        }
    }

    pub(crate) fn fd_filestat_set_size(&mut self, fd: u32, size: u64) -> WasiResult {
        let Entry::File { node, .. } = self.fd_with(fd, rights::FD_FILESTAT_SET_SIZE)?.entry else {
            return Err(Errno::BADF);
        };
        let ino = match node {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_set_size(r, size),
        };
        let now = self.now();
        let size = usize::try_from(size).map_err(|_| Errno::FBIG)?;
        let data = self.file_data(ino)?;
        if data.len() < size {
            grow_file(data, size)?;
        } else {
            data.truncate(size);
        }
        let node = self.fs.node_mut(ino)?;
        node.mtim = now;
        node.ctim = now;
        Ok(())
    }

    pub(crate) fn fd_filestat_set_times(
        &mut self,
        fd: u32,
        atim: u64,
        mtim: u64,
        flags: u32,
    ) -> WasiResult {
        let ino = match self.fd(fd)?.entry {
            Entry::Dir {
                node: Handle::Mem(ino),
                ..
            }
            | Entry::File {
                node: Handle::Mem(ino),
                ..
            } => ino,
            Entry::Dir {
                node: Handle::Share(r),
                ..
            }
            | Entry::File {
                node: Handle::Share(r),
                ..
            } => return self.share_set_times(r, atim, mtim, flags),
            _ => return Err(Errno::BADF),
        };
        let now = self.now();
        set_times(self.fs.node_mut(ino)?, atim, mtim, flags, now)
    }

    pub(crate) fn fd_readdir(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        buf: u32,
        len: u32,
        cookie: u64,
        used: u32,
    ) -> WasiResult {
        let dir = match self.fd(fd)?.entry {
            Entry::Dir {
                node: Handle::Mem(ino),
                ..
            } => ino,
            Entry::Dir {
                node: Handle::Share(r),
                ..
            } => return self.share_readdir(mem, r, buf, len, cookie, used),
            Entry::File { .. } => return Err(Errno::NOTDIR),
            _ => return Err(Errno::BADF),
        };
        let mut entries = alloc::vec![
            (b".".to_vec(), dir),
            (b"..".to_vec(), self.fs.parent_of(dir)?)
        ];
        entries.extend(self.fs.list(dir)?);
        let mut out = Vec::new();
        for (i, (name, ino)) in entries
            .iter()
            .enumerate()
            .skip(cookie.min(usize::MAX as u64) as usize)
        {
            if out.len() >= len as usize {
                break;
            }
            let ty = node_filetype(self.fs.node(*ino)?);
            push_dirent(&mut out, i as u64 + 1, *ino, name, ty);
        }
        // A full buffer tells the caller to read on from the last cookie.
        out.truncate(len as usize);
        mem.write_bytes(buf, &out)?;
        mem.write_u32(used, out.len() as u32)
    }

    pub(crate) fn path_open(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        let (fd, dirflags, oflags) = (a(0) as u32, a(1) as u32, a(4) as u32);
        let (base, inheriting, flags, out) = (a(5), a(6), a(7) as u32, a(8) as u32);
        let dir = self.dir_node(fd)?;
        let dir_rights = self.fd(fd)?.rights;
        let needed = rights::PATH_OPEN
            | if oflags & OFLAG_CREAT != 0 {
                rights::PATH_CREATE_FILE
            } else {
                0
            }
            | if oflags & OFLAG_TRUNC != 0 {
                rights::PATH_FILESTAT_SET_SIZE
            } else {
                0
            };
        if dir_rights & needed != needed {
            return Err(Errno::NOTCAPABLE);
        }
        let path = path_arg(mem, a(2) as u32, a(3) as u32)?;
        if flags & !0x1f != 0 || oflags & !0xf != 0 {
            return Err(Errno::INVAL);
        }
        let follow = dirflags & SYMLINK_FOLLOW != 0;
        let entry = match dir {
            Handle::Mem(dir) => self.mem_open(dir, &path, follow, oflags, base)?,
            Handle::Share(r) => self.share_open(r, &path, follow, oflags, base)?,
        };
        let kind_rights = match entry {
            Entry::Dir { .. } => rights::DIR,
            _ => rights::FILE,
        };
        let new = self.insert(Fd {
            entry,
            rights: base & kind_rights,
            inheriting: inheriting & (rights::DIR | rights::FILE),
            flags: flags as u16,
        });
        mem.write_u32(out, new).inspect_err(|_| {
            if let Some(opened) = self.fds[new as usize].take() {
                self.release_entry(&opened.entry);
            }
        })
    }

    /// `path_open` beneath in-memory directory `dir`.
    fn mem_open(
        &mut self,
        dir: Ino,
        path: &[u8],
        follow: bool,
        oflags: u32,
        base: u64,
    ) -> WasiResult<Entry> {
        let now = self.now();
        let ino = match self.fs.lookup(dir, path, follow) {
            Ok(_) if oflags & OFLAG_CREAT != 0 && oflags & OFLAG_EXCL != 0 => {
                return Err(Errno::EXIST);
            }
            Ok(ino) => ino,
            Err(Errno::NOENT) if oflags & OFLAG_CREAT != 0 => {
                let p = self.fs.parent(dir, path)?;
                if p.trailing_slash || oflags & OFLAG_DIRECTORY != 0 {
                    return Err(Errno::ISDIR);
                }
                self.fs.create(p.dir, p.name, Kind::File(Vec::new()), now)?
            }
            Err(e) => return Err(e),
        };
        let node = self.fs.node(ino)?;
        let entry = match node.kind {
            Kind::Symlink(_) => return Err(Errno::LOOP),
            Kind::Dir(..) => {
                if base & WRITE_RIGHTS != 0 || oflags & OFLAG_TRUNC != 0 {
                    return Err(Errno::ISDIR);
                }
                Entry::Dir {
                    node: Handle::Mem(ino),
                    preopen: None,
                }
            }
            Kind::File(_) if oflags & OFLAG_DIRECTORY != 0 => return Err(Errno::NOTDIR),
            Kind::File(_) => {
                if oflags & OFLAG_TRUNC != 0 {
                    self.file_data(ino)?.clear();
                    let node = self.fs.node_mut(ino)?;
                    node.mtim = now;
                    node.ctim = now;
                }
                Entry::File {
                    node: Handle::Mem(ino),
                    offset: 0,
                }
            }
        };
        Ok(entry)
    }

    pub(crate) fn path_create_directory(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        ptr: u32,
        len: u32,
    ) -> WasiResult {
        let dir = self.dir_node(fd)?;
        let path = path_arg(mem, ptr, len)?;
        let dir = match dir {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_create_directory(r, &path),
        };
        let p = self.fs.parent(dir, &path)?;
        let now = self.now();
        self.fs
            .create(p.dir, p.name, Kind::Dir(BTreeMap::new(), 0), now)
            .map(drop)
    }

    pub(crate) fn path_remove(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        ptr: u32,
        len: u32,
        dir_wanted: bool,
    ) -> WasiResult {
        let dir = self.dir_node(fd)?;
        let path = path_arg(mem, ptr, len)?;
        let dir = match dir {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_remove(r, &path, dir_wanted),
        };
        let p = self.fs.parent(dir, &path)?;
        if p.trailing_slash && !dir_wanted {
            let ino = self.fs.lookup(p.dir, p.name, false)?;
            return Err(if self.fs.node(ino)?.is_dir() {
                Errno::ISDIR
            } else {
                Errno::NOTDIR
            });
        }
        let now = self.now();
        self.fs.remove(p.dir, p.name, dir_wanted, now)
    }

    pub(crate) fn path_filestat_get(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        flags: u32,
        ptr: u32,
        len: u32,
        out: u32,
    ) -> WasiResult {
        let dir = self.dir_node(fd)?;
        let path = path_arg(mem, ptr, len)?;
        let follow = flags & SYMLINK_FOLLOW != 0;
        let dir = match dir {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_path_filestat_get(mem, r, follow, &path, out),
        };
        let ino = self.fs.lookup(dir, &path, follow)?;
        let node = self.fs.node(ino)?.clone();
        write_filestat(mem, out, ino, &node)
    }

    pub(crate) fn path_filestat_set_times(
        &mut self,
        mem: &mut GuestMemory,
        args: &[u64],
    ) -> WasiResult {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        let dir = self.dir_node(a(0) as u32)?;
        let path = path_arg(mem, a(2) as u32, a(3) as u32)?;
        let follow = a(1) as u32 & SYMLINK_FOLLOW != 0;
        let dir = match dir {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => {
                return self.share_path_set_times(r, follow, &path, a(4), a(5), a(6) as u32);
            }
        };
        let ino = self.fs.lookup(dir, &path, follow)?;
        let now = self.now();
        set_times(self.fs.node_mut(ino)?, a(4), a(5), a(6) as u32, now)
    }

    pub(crate) fn path_rename(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| args.get(i).copied().unwrap_or(0) as u32;
        let (fd, old, old_len, new_fd, new, new_len) = (a(0), a(1), a(2), a(3), a(4), a(5));
        let from_dir = self.dir_node(fd)?;
        let to_dir = self.dir_node(new_fd)?;
        let old = path_arg(mem, old, old_len)?;
        let new = path_arg(mem, new, new_len)?;
        let (from_dir, to_dir) = match (from_dir, to_dir) {
            (Handle::Mem(f), Handle::Mem(t)) => (f, t),
            (Handle::Share(f), Handle::Share(t)) if f.share == t.share => {
                return self.share_rename(f, &old, t, &new);
            }
            // Different file systems.
            _ => return Err(Errno::XDEV),
        };
        let from = self.fs.parent(from_dir, &old)?;
        let to = self.fs.parent(to_dir, &new)?;
        let source = self.fs.lookup(from.dir, from.name, false)?;
        if (from.trailing_slash || to.trailing_slash) && !self.fs.node(source)?.is_dir() {
            return Err(Errno::NOTDIR);
        }
        let now = self.now();
        let (fd_, fn_, td, tn) = (from.dir, from.name.to_vec(), to.dir, to.name.to_vec());
        self.fs.rename(fd_, &fn_, td, &tn, now)
    }

    pub(crate) fn path_symlink(
        &mut self,
        mem: &mut GuestMemory,
        old: u32,
        old_len: u32,
        fd: u32,
        new: u32,
        new_len: u32,
    ) -> WasiResult {
        let dir = self.dir_node(fd)?;
        let target = path_arg(mem, old, old_len)?;
        let path = path_arg(mem, new, new_len)?;
        let dir = match dir {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_symlink(r, &target, &path),
        };
        let p = self.fs.parent(dir, &path)?;
        if p.trailing_slash {
            return Err(if self.fs.lookup(p.dir, p.name, false).is_ok() {
                Errno::EXIST
            } else {
                Errno::NOENT
            });
        }
        // A link to an absolute path could never be followed beneath a preopen.
        if target.first() == Some(&b'/') {
            return Err(Errno::PERM);
        }
        let now = self.now();
        self.fs
            .create(p.dir, p.name, Kind::Symlink(target), now)
            .map(drop)
    }

    pub(crate) fn path_readlink(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| args.get(i).copied().unwrap_or(0) as u32;
        let dir = self.dir_node(a(0))?;
        let path = path_arg(mem, a(1), a(2))?;
        let dir = match dir {
            Handle::Mem(ino) => ino,
            Handle::Share(r) => return self.share_readlink(mem, r, &path, a(3), a(4), a(5)),
        };
        let ino = self.fs.lookup(dir, &path, false)?;
        let Kind::Symlink(target) = &self.fs.node(ino)?.kind else {
            return Err(Errno::INVAL);
        };
        let n = target.len().min(a(4) as usize);
        let target = target[..n].to_vec();
        mem.write_bytes(a(3), &target)?;
        mem.write_u32(a(5), n as u32)
    }

    pub(crate) fn path_link(&mut self, mem: &mut GuestMemory, args: &[u64]) -> WasiResult {
        let a = |i: usize| args.get(i).copied().unwrap_or(0) as u32;
        let old_dir = self.dir_node(a(0))?;
        let new_dir = self.dir_node(a(4))?;
        let old = path_arg(mem, a(2), a(3))?;
        let new = path_arg(mem, a(5), a(6))?;
        let follow = a(1) & SYMLINK_FOLLOW != 0;
        let (old_dir, new_dir) = match (old_dir, new_dir) {
            (Handle::Mem(o), Handle::Mem(n)) => (o, n),
            (Handle::Share(o), Handle::Share(n)) if o.share == n.share => {
                return self.share_link(o, follow, &old, n, &new);
            }
            _ => return Err(Errno::XDEV),
        };
        let ino = self.fs.lookup(old_dir, &old, follow)?;
        let p = self.fs.parent(new_dir, &new)?;
        if p.trailing_slash {
            return Err(Errno::NOENT);
        }
        let now = self.now();
        let (d, n) = (p.dir, p.name.to_vec());
        self.fs.link(ino, d, &n, now)
    }
}

fn socket_filetype(kind: crate::net::SockType) -> u8 {
    match kind {
        crate::net::SockType::Stream => filetype::SOCKET_STREAM,
        crate::net::SockType::Dgram => filetype::SOCKET_DGRAM,
    }
}

/// Grows an in-memory file to `len` bytes (zeros), or fails with `ENOSPC` when the kernel
/// heap has no room: a file is the app's data, and running out of room for it is the
/// app's error to handle, not the kernel's end. Amortized growth first, then exact.
fn grow_file(data: &mut Vec<u8>, len: usize) -> Result<(), Errno> {
    let additional = len.saturating_sub(data.len());
    if data.try_reserve(additional).is_err() && data.try_reserve_exact(additional).is_err() {
        return Err(Errno::NOSPC);
    }
    data.resize(len, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Func;
    use crate::state::tests::{u32_at, wasi};

    /// Puts `bytes` at `at` in `mem` and returns (at, len) for a path argument.
    fn put(mem: &mut [u8], at: usize, bytes: &[u8]) -> (u64, u64) {
        mem[at..at + bytes.len()].copy_from_slice(bytes);
        (at as u64, bytes.len() as u64)
    }

    #[test]
    fn stdio_is_a_character_device_only_where_the_host_has_a_terminal() {
        let filetypes = |w: &mut Wasi<crate::state::tests::Mock>| {
            let mut mem = vec![0u8; 128];
            [0u64, 1, 2].map(|fd| {
                assert_eq!(
                    w.call(Func::FdFdstatGet, &mut mem, &[fd, 0]),
                    Ok(Errno::SUCCESS)
                );
                assert_eq!(
                    w.call(Func::FdFilestatGet, &mut mem, &[fd, 64]),
                    Ok(Errno::SUCCESS)
                );
                assert_eq!(mem[0], mem[64 + 16], "fdstat and filestat agree");
                mem[0]
            })
        };
        let (tty, unknown) = (filetype::CHARACTER_DEVICE, filetype::UNKNOWN);
        // A host that does not say: all three, as before.
        let mut w = wasi();
        assert_eq!(filetypes(&mut w), [tty; 3]);
        // stdout piped, stdin and stderr on a terminal.
        w.set_terminals(0b101);
        assert_eq!(filetypes(&mut w), [tty, unknown, tty]);
        // The stream's kind follows it to another descriptor.
        let mut mem = vec![0u8; 64];
        assert_eq!(
            w.call(Func::FdRenumber, &mut mem, &[1, 0]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFdstatGet, &mut mem, &[0, 0]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(mem[0], unknown);
    }

    #[test]
    fn preopen_create_write_read_list_and_remove() {
        let mut w = wasi();
        let root = w.fs().mkdir_all(b"0").unwrap();
        let fd = w.preopen(root, b"/data");
        assert_eq!(fd, 3);
        let mut mem = vec![0u8; 1024];
        // fd_prestat_get / dir_name
        assert_eq!(
            w.call(Func::FdPrestatGet, &mut mem, &[3, 0]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 4), 5);
        assert_eq!(
            w.call(Func::FdPrestatDirName, &mut mem, &[3, 16, 5]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(&mem[16..21], b"/data");
        assert_eq!(
            w.call(Func::FdPrestatGet, &mut mem, &[4, 0]),
            Ok(Errno::BADF)
        );

        // path_open(O_CREAT) and a write through an iovec.
        let (p, l) = put(&mut mem, 100, b"sub/f.txt");
        assert_eq!(
            w.call(Func::PathCreateDirectory, &mut mem, &[3, p, 3]),
            Ok(Errno::SUCCESS)
        );
        let rights = rights::FD_READ | rights::FD_WRITE | rights::FD_SEEK;
        let open = [3, 0, p, l, OFLAG_CREAT as u64, rights, 0, 0, 200];
        assert_eq!(w.call(Func::PathOpen, &mut mem, &open), Ok(Errno::SUCCESS));
        let file = u32_at(&mem, 200) as u64;
        assert_eq!(file, 4);
        put(&mut mem, 300, b"hello");
        mem[0..8].copy_from_slice(&[44, 1, 0, 0, 5, 0, 0, 0]); // iovec {300, 5}
        assert_eq!(
            w.call(Func::FdWrite, &mut mem, &[file, 0, 1, 204]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 204), 5);
        // Seek back and read it.
        assert_eq!(
            w.call(Func::FdSeek, &mut mem, &[file, 0, 0, 208]),
            Ok(Errno::SUCCESS)
        );
        mem[0..8].copy_from_slice(&[144, 1, 0, 0, 16, 0, 0, 0]); // iovec {400, 16}
        assert_eq!(
            w.call(Func::FdRead, &mut mem, &[file, 0, 1, 204]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!((u32_at(&mem, 204), &mem[400..405]), (5, &b"hello"[..]));
        // O_CREAT|O_EXCL on an existing file, a directory opened for writing.
        let excl = [
            3,
            0,
            p,
            l,
            (OFLAG_CREAT | OFLAG_EXCL) as u64,
            rights,
            0,
            0,
            200,
        ];
        assert_eq!(w.call(Func::PathOpen, &mut mem, &excl), Ok(Errno::EXIST));
        let dir_w = [3, 0, p, 3, 0, rights::FD_WRITE, 0, 0, 200];
        assert_eq!(w.call(Func::PathOpen, &mut mem, &dir_w), Ok(Errno::ISDIR));
        // Escapes are refused.
        let (q, ql) = put(&mut mem, 500, b"../x");
        let escape = [3, 0, q, ql, OFLAG_CREAT as u64, rights, 0, 0, 200];
        assert_eq!(w.call(Func::PathOpen, &mut mem, &escape), Ok(Errno::PERM));

        // readdir of the preopen: ".", "..", "sub".
        assert_eq!(
            w.call(Func::FdReaddir, &mut mem, &[3, 600, 256, 0, 204]),
            Ok(Errno::SUCCESS)
        );
        let used = u32_at(&mem, 204) as usize;
        assert_eq!(used, 3 * 24 + 1 + 2 + 3);
        assert_eq!(&mem[600 + 3 * 24 + 3..600 + 3 * 24 + 3 + 3], b"sub");
        // A cookie resumes after the first two entries.
        assert_eq!(
            w.call(Func::FdReaddir, &mut mem, &[3, 600, 256, 2, 204]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 204), 24 + 3);

        // Unlink, then rmdir.
        assert_eq!(
            w.call(Func::PathRemoveDirectory, &mut mem, &[3, p, 3]),
            Ok(Errno::NOTEMPTY)
        );
        assert_eq!(
            w.call(Func::PathUnlinkFile, &mut mem, &[3, p, l]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::PathRemoveDirectory, &mut mem, &[3, p, 3]),
            Ok(Errno::SUCCESS)
        );
        // The open descriptor still reads the unlinked file.
        assert_eq!(
            w.call(Func::FdPread, &mut mem, &[file, 0, 1, 0, 204]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 204), 5);
        assert_eq!(w.call(Func::FdClose, &mut mem, &[file]), Ok(Errno::SUCCESS));
        assert_eq!(w.call(Func::FdClose, &mut mem, &[file]), Ok(Errno::BADF));
    }

    #[test]
    fn bad_paths_are_errors_not_panics() {
        let mut w = wasi();
        let root = w.fs().mkdir_all(b"0").unwrap();
        w.preopen(root, b"/");
        let mut mem = vec![0u8; 64];
        mem[0] = 0xff; // not UTF-8
        assert_eq!(
            w.call(Func::PathCreateDirectory, &mut mem, &[3, 0, 1]),
            Ok(Errno::ILSEQ)
        );
        assert_eq!(
            w.call(Func::PathCreateDirectory, &mut mem, &[3, 60, 10]),
            Ok(Errno::FAULT)
        );
        assert_eq!(
            w.call(Func::PathCreateDirectory, &mut mem, &[1, 0, 1]),
            Ok(Errno::NOTDIR)
        );
        assert_eq!(
            w.call(Func::PathCreateDirectory, &mut mem, &[9, 0, 1]),
            Ok(Errno::BADF)
        );
        let (p, l) = put(&mut mem, 8, b"/abs");
        assert_eq!(
            w.call(Func::PathCreateDirectory, &mut mem, &[3, p, l]),
            Ok(Errno::PERM)
        );
    }

    #[test]
    fn links_times_rights_and_renumbering() {
        let mut w = wasi();
        let root = w.fs().mkdir_all(b"0").unwrap();
        w.preopen(root, b"/");
        let mut mem = vec![0u8; 1024];
        let (f, fl) = put(&mut mem, 100, b"file");
        let open = [3, 0, f, fl, OFLAG_CREAT as u64, rights::FILE, 0, 0, 200];
        assert_eq!(w.call(Func::PathOpen, &mut mem, &open), Ok(Errno::SUCCESS));
        let fd = u32_at(&mem, 200) as u64;

        // symlink + readlink (truncating to the buffer), and the absolute-target refusal.
        let (l, ll) = put(&mut mem, 120, b"link");
        assert_eq!(
            w.call(Func::PathSymlink, &mut mem, &[f, fl, 3, l, ll]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::PathReadlink, &mut mem, &[3, l, ll, 300, 2, 204]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!((u32_at(&mem, 204), &mem[300..302]), (2, &b"fi"[..]));
        assert_eq!(
            w.call(Func::PathReadlink, &mut mem, &[3, f, fl, 300, 8, 204]),
            Ok(Errno::INVAL)
        );
        let (a, al) = put(&mut mem, 140, b"/etc");
        let (l2, l2l) = put(&mut mem, 150, b"abs");
        assert_eq!(
            w.call(Func::PathSymlink, &mut mem, &[a, al, 3, l2, l2l]),
            Ok(Errno::PERM)
        );

        // A hard link shares the node: nlink 2 in path_filestat_get.
        let (h, hl) = put(&mut mem, 160, b"hard");
        assert_eq!(
            w.call(Func::PathLink, &mut mem, &[3, 0, f, fl, 3, h, hl]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::PathFilestatGet, &mut mem, &[3, 0, h, hl, 400]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(mem[416], filetype::REGULAR_FILE);
        assert_eq!(u64::from_le_bytes(mem[424..432].try_into().unwrap()), 2);
        // Without SYMLINK_FOLLOW the link itself is seen.
        assert_eq!(
            w.call(Func::PathFilestatGet, &mut mem, &[3, 0, l, ll, 400]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(mem[416], filetype::SYMBOLIC_LINK);

        // Times: explicit values stick; contradictory flags are EINVAL.
        let set = [fd, 5, 6, (FST_ATIM | FST_MTIM) as u64];
        assert_eq!(
            w.call(Func::FdFilestatSetTimes, &mut mem, &set),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFilestatGet, &mut mem, &[fd, 400]),
            Ok(Errno::SUCCESS)
        );
        let at = |m: &[u8], o: usize| u64::from_le_bytes(m[o..o + 8].try_into().unwrap());
        assert_eq!((at(&mem, 440), at(&mem, 448)), (5, 6));
        let bad = [fd, 0, 0, (FST_MTIM | FST_MTIM_NOW) as u64];
        assert_eq!(
            w.call(Func::FdFilestatSetTimes, &mut mem, &bad),
            Ok(Errno::INVAL)
        );

        // fd_allocate grows; set_size truncates.
        assert_eq!(
            w.call(Func::FdAllocate, &mut mem, &[fd, 10, 6]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFilestatGet, &mut mem, &[fd, 400]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(at(&mem, 432), 16);
        assert_eq!(
            w.call(Func::FdFilestatSetSize, &mut mem, &[fd, 3]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFilestatGet, &mut mem, &[fd, 400]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(at(&mem, 432), 3);

        // Rights only shrink, and a right taken away is enforced.
        let keep = rights::FD_READ | rights::FD_SEEK;
        assert_eq!(
            w.call(Func::FdFdstatSetRights, &mut mem, &[fd, keep, 0]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFdstatSetRights, &mut mem, &[fd, rights::FILE, 0]),
            Ok(Errno::NOTCAPABLE)
        );
        mem[0..8].copy_from_slice(&[44, 1, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            w.call(Func::FdWrite, &mut mem, &[fd, 0, 1, 204]),
            Ok(Errno::BADF)
        );
        assert_eq!(
            w.call(
                Func::FdFdstatSetFlags,
                &mut mem,
                &[fd, fdflags::APPEND as u64]
            ),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFdstatSetFlags, &mut mem, &[fd, 1 << 4]),
            Ok(Errno::NOTSUP)
        );

        // Renumber onto an open descriptor moves it; the source is closed.
        assert_eq!(
            w.call(Func::FdRenumber, &mut mem, &[fd, 2]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(
            w.call(Func::FdFdstatGet, &mut mem, &[2, 400]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(mem[400], filetype::REGULAR_FILE);
        assert_eq!(w.call(Func::FdClose, &mut mem, &[fd]), Ok(Errno::BADF));
        assert_eq!(w.call(Func::FdRenumber, &mut mem, &[2, 9]), Ok(Errno::BADF));
        assert_eq!(
            w.call(Func::FdAdvise, &mut mem, &[2, 0, 0, 9]),
            Ok(Errno::INVAL)
        );
        assert_eq!(w.call(Func::FdSync, &mut mem, &[2]), Ok(Errno::SUCCESS));
    }
}
