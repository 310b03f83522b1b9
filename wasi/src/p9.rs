//! The 9P2000.L client behind *shares*: live host directories the VMM serves over virtio-9p.
//! `share.rs` builds the WASI calls on it; this module speaks the protocol and resolves paths.
//!
//! One [`Session`] per share number, negotiated on first use (`Tversion`, `Tattach` of fid
//! 0). Every exchange goes through [`Platform::p9_transact`]; a transport failure, a reply
//! that does not decode, carries another tag or answers with the wrong type is `EIO`.
//! `Rlerror` carries a Linux errno, mapped by [`errno_from_linux`].
//!
//! # Path resolution
//!
//! The server follows no symlinks (walking through one fails, and it hands out the link's
//! own qid), so the client resolves them exactly as the in-memory [`crate::fs::Fs`] does:
//! beneath the directory the walk starts from, `..` never above it, absolute targets and
//! escapes refused with `EPERM`, at most [`MAX_SYMLINKS`] links (`ELOOP`). Runs of plain
//! names go in one `Twalk`; only when a run meets a symlink or fails is it retried one name
//! at a time, which yields the exact errno and the link to read. The server's `..` is
//! logical (it pops the fid's path), and the client only ever descends by real directory
//! names, so the server's parent is always the directory the walk came from.
//!
//! Temporary fids (walk positions, directory listings) are clunked as soon as they are not
//! needed: a resolution holds at most two at a time, whatever the path.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use wasmvm_abi::p9::{self as wire, Attr, DirEntry, Qid, Rmessage, SetAttr, Tmessage};

use crate::errno::{Errno, WasiResult};
use crate::filetype;
use crate::fs::{MAX_SYMLINKS, split_parent};
use crate::platform::Platform;

/// The `msize` asked for in `Tversion`.
pub(crate) const MSIZE: u32 = if wire::MAX_MSIZE < 128 * 1024 {
    wire::MAX_MSIZE
} else {
    128 * 1024
};
/// The fid `Tattach` names the share root with; it lives as long as the session.
const ROOT_FID: u32 = 0;
const UNAME: &[u8] = b"wasmvm";

/// Maps the Linux errno of an `Rlerror` to WASI's.
pub(crate) fn errno_from_linux(ecode: u32) -> Errno {
    match ecode {
        1 => Errno::PERM,
        2 => Errno::NOENT,
        3 => Errno::SRCH,
        4 => Errno::INTR,
        5 => Errno::IO,
        6 => Errno::NXIO,
        7 => Errno::TOOBIG,
        9 => Errno::BADF,
        11 => Errno::AGAIN,
        12 => Errno::NOMEM,
        13 => Errno::ACCES,
        16 => Errno::BUSY,
        17 => Errno::EXIST,
        18 => Errno::XDEV,
        19 => Errno::NODEV,
        20 => Errno::NOTDIR,
        21 => Errno::ISDIR,
        22 => Errno::INVAL,
        23 => Errno::NFILE,
        24 => Errno::MFILE,
        26 => Errno::TXTBSY,
        27 => Errno::FBIG,
        28 => Errno::NOSPC,
        29 => Errno::SPIPE,
        30 => Errno::ROFS,
        31 => Errno::MLINK,
        34 => Errno::RANGE,
        35 => Errno::DEADLK,
        36 => Errno::NAMETOOLONG,
        37 => Errno::NOLCK,
        38 => Errno::NOSYS,
        39 => Errno::NOTEMPTY,
        40 => Errno::LOOP,
        75 => Errno::OVERFLOW,
        84 => Errno::ILSEQ,
        95 => Errno::NOTSUP,
        110 => Errno::TIMEDOUT,
        116 => Errno::STALE,
        122 => Errno::DQUOT,
        // EFAULT (a host buffer, not the guest's), EMSGSIZE (a message that did not fit the
        // negotiated size), and anything else: the transport's problem, not the app's.
        _ => Errno::IO,
    }
}

/// What a share-backed descriptor holds: one fid of its share's session, and what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remote {
    pub share: u32,
    pub fid: u32,
    pub qid: Qid,
}

impl Remote {
    /// The descriptor's position, borrowed: resolutions start here and never clunk it.
    pub fn cur(&self) -> Cur {
        Cur::borrowed(self.fid, self.qid)
    }
}

/// One `fd_readdir` entry.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub name: Vec<u8>,
    pub ino: u64,
    pub filetype: u8,
}

/// The protocol state of one share.
#[derive(Debug)]
pub(crate) struct Session {
    msize: u32,
    root: Qid,
    next_fid: u32,
    /// Clunked fids, to hand out again.
    free: Vec<u32>,
    tag: u16,
    request: Vec<u8>,
    reply: Vec<u8>,
    /// The snapshot `fd_readdir` pages through, per directory fid: taken at cookie 0, as a
    /// directory stream is, so cookies stay valid while the host changes the directory.
    listings: BTreeMap<u32, Vec<Listed>>,
}

impl Session {
    /// Negotiates the protocol with share `share` and attaches its root.
    pub fn connect<P: Platform>(platform: &mut P, share: u32) -> WasiResult<Session> {
        let mut s = Session {
            msize: MSIZE,
            root: Qid::default(),
            next_fid: ROOT_FID + 1,
            free: Vec::new(),
            tag: 0,
            request: Vec::new(),
            reply: Vec::new(),
            listings: BTreeMap::new(),
        };
        let mut c = Client {
            platform,
            share,
            s: &mut s,
        };
        let version = Tmessage::Version {
            msize: MSIZE,
            version: wire::VERSION_9P2000_L,
        };
        match c.call(&version)? {
            Rmessage::Version { msize, version }
                if version == wire::VERSION_9P2000_L && msize >= wire::MIN_MSIZE =>
            {
                c.s.msize = msize.min(MSIZE);
            }
            _ => return Err(Errno::IO),
        }
        let attach = Tmessage::Attach {
            fid: ROOT_FID,
            afid: wire::NOFID,
            uname: UNAME,
            aname: b"",
            n_uname: 0,
        };
        match c.call(&attach)? {
            Rmessage::Attach { qid } if is_dir(&qid) => c.s.root = qid,
            Rmessage::Attach { .. } => return Err(Errno::NOTDIR),
            _ => return Err(Errno::IO),
        }
        Ok(s)
    }

    /// The share root, as a position to clone descriptors from.
    pub fn root(&self) -> Cur {
        Cur::borrowed(ROOT_FID, self.root)
    }
}

pub(crate) fn is_dir(qid: &Qid) -> bool {
    qid.ty & wire::QTDIR != 0
}

fn is_symlink(qid: &Qid) -> bool {
    qid.ty & wire::QTSYMLINK != 0
}

/// A position during path resolution: a fid and what it names. An *owned* position is a
/// temporary fid that [`Client::release`] clunks; a borrowed one belongs to a descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cur {
    pub fid: u32,
    pub qid: Qid,
    owned: bool,
}

impl Cur {
    pub fn borrowed(fid: u32, qid: Qid) -> Cur {
        Cur {
            fid,
            qid,
            owned: false,
        }
    }

    /// The same position, borrowed: using it never clunks this one.
    pub fn alias(&self) -> Cur {
        Cur {
            owned: false,
            ..*self
        }
    }

    pub fn is_dir(&self) -> bool {
        is_dir(&self.qid)
    }

    pub fn is_symlink(&self) -> bool {
        is_symlink(&self.qid)
    }
}

/// The answer to a `Twalk`.
enum Walked {
    /// Every name was walked; the new fid exists and the qids are one per name.
    Full(u32, Vec<Qid>),
    /// The walk stopped after these (at least one) names; no fid was made.
    Partial(Vec<Qid>),
}

/// The WASI filetype of a `Rgetattr` mode.
pub(crate) fn mode_filetype(mode: u32) -> u8 {
    match mode & 0o170000 {
        0o040000 => filetype::DIRECTORY,
        0o100000 => filetype::REGULAR_FILE,
        0o120000 => filetype::SYMBOLIC_LINK,
        0o020000 => filetype::CHARACTER_DEVICE,
        0o060000 => filetype::BLOCK_DEVICE,
        0o140000 => filetype::SOCKET_STREAM,
        _ => filetype::UNKNOWN,
    }
}

/// The WASI filetype of a directory entry (`d_type`, or the qid when the host did not say).
fn dirent_filetype(d_type: u8, qid: &Qid) -> u8 {
    match d_type {
        4 => filetype::DIRECTORY,
        8 => filetype::REGULAR_FILE,
        10 => filetype::SYMBOLIC_LINK,
        2 => filetype::CHARACTER_DEVICE,
        6 => filetype::BLOCK_DEVICE,
        12 => filetype::SOCKET_STREAM,
        0 if is_dir(qid) => filetype::DIRECTORY,
        0 if is_symlink(qid) => filetype::SYMBOLIC_LINK,
        0 => filetype::REGULAR_FILE,
        _ => filetype::UNKNOWN,
    }
}

/// Depth below the walk's start after walking `names` (`..` climbs one).
fn depth_after(depth: usize, names: &[&[u8]]) -> usize {
    names.iter().fold(depth, |d, n| {
        if *n == b".." {
            d.saturating_sub(1)
        } else {
            d + 1
        }
    })
}

/// One share's session together with the platform that carries its messages.
pub(crate) struct Client<'a, P> {
    pub platform: &'a mut P,
    pub share: u32,
    pub s: &'a mut Session,
}

impl<P: Platform> Client<'_, P> {
    /// The most file data one `Tread`/`Twrite` carries.
    pub fn iounit(&self) -> u32 {
        self.s.msize - wire::IOHDRSZ
    }

    /// One exchange. `Err` only for a failed transport or a malformed reply; an `Rlerror`
    /// is returned as a message.
    fn rpc(&mut self, msg: &Tmessage<'_>) -> WasiResult<Rmessage> {
        let tag = if matches!(msg, Tmessage::Version { .. }) {
            wire::NOTAG
        } else {
            self.s.tag = (self.s.tag + 1) % wire::NOTAG;
            self.s.tag
        };
        let mut request = core::mem::take(&mut self.s.request);
        request.clear();
        msg.encode(tag, &mut request);
        if request.len() > self.s.msize as usize {
            // Only names and symlink targets can make a request this long.
            self.s.request = request;
            return Err(Errno::NAMETOOLONG);
        }
        let mut reply = core::mem::take(&mut self.s.reply);
        let sent = self.platform.p9_transact(self.share, &request, &mut reply);
        let decoded = if sent {
            Rmessage::decode(&reply).ok()
        } else {
            None
        };
        self.s.request = request;
        self.s.reply = reply;
        match decoded {
            Some((t, reply)) if t == tag => Ok(reply),
            _ => Err(Errno::IO),
        }
    }

    /// One exchange whose `Rlerror` becomes the call's errno.
    fn call(&mut self, msg: &Tmessage<'_>) -> WasiResult<Rmessage> {
        match self.rpc(msg)? {
            Rmessage::Lerror { ecode } => Err(errno_from_linux(ecode)),
            reply => Ok(reply),
        }
    }

    fn alloc_fid(&mut self) -> WasiResult<u32> {
        if let Some(fid) = self.s.free.pop() {
            return Ok(fid);
        }
        let fid = self.s.next_fid;
        if fid == wire::NOFID {
            return Err(Errno::NFILE);
        }
        self.s.next_fid += 1;
        Ok(fid)
    }

    /// Gives `fid` back to the server. Its number is only reused once the server answered:
    /// after a failed transport the fid may still live there.
    pub fn clunk(&mut self, fid: u32) {
        self.s.listings.remove(&fid);
        if self.rpc(&Tmessage::Clunk { fid }).is_ok() {
            self.s.free.push(fid);
        }
    }

    /// Clunks a temporary position; a borrowed one is left alone.
    pub fn release(&mut self, cur: Cur) {
        if cur.owned {
            self.clunk(cur.fid);
        }
    }

    fn walk(&mut self, fid: u32, names: &[&[u8]]) -> WasiResult<Walked> {
        let newfid = self.alloc_fid()?;
        let msg = Tmessage::Walk {
            fid,
            newfid,
            names: names.to_vec(),
        };
        match self.rpc(&msg)? {
            Rmessage::Walk { qids } if qids.len() == names.len() => Ok(Walked::Full(newfid, qids)),
            Rmessage::Walk { qids } if !qids.is_empty() && qids.len() < names.len() => {
                self.s.free.push(newfid);
                Ok(Walked::Partial(qids))
            }
            Rmessage::Lerror { ecode } => {
                self.s.free.push(newfid);
                Err(errno_from_linux(ecode))
            }
            _ => Err(Errno::IO),
        }
    }

    /// A new position `names` away from `from`, which must all exist.
    fn walk_to(&mut self, from: Cur, names: &[&[u8]]) -> WasiResult<Cur> {
        match self.walk(from.fid, names)? {
            Walked::Full(fid, qids) => Ok(Cur {
                fid,
                qid: qids.last().copied().unwrap_or(from.qid),
                owned: true,
            }),
            // Something in between vanished since the last walk.
            Walked::Partial(_) => Err(Errno::NOENT),
        }
    }

    /// A fid of its own for `cur` (a clone when `cur` is borrowed), to keep in a descriptor.
    pub fn own(&mut self, cur: Cur) -> WasiResult<Cur> {
        if cur.owned {
            Ok(cur)
        } else {
            self.walk_to(cur, &[])
        }
    }

    /// Moves `cur` by `names`, clunking the position it leaves.
    fn advance(&mut self, cur: &mut Cur, names: &[&[u8]]) -> WasiResult {
        let next = self.walk_to(*cur, names)?;
        self.release(*cur);
        *cur = next;
        Ok(())
    }

    /// Follows every component of `path` from `cur`, symlinks included: `Fs::walk` over
    /// the wire. `depth` counts directories entered below the walk's start.
    fn resolve(
        &mut self,
        cur: &mut Cur,
        path: &[u8],
        depth: &mut usize,
        links: &mut usize,
    ) -> WasiResult {
        // `` and `.` change nothing, not even checking that the position is a directory.
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        let mut i = 0;
        while i < comps.len() {
            if !cur.is_dir() {
                return Err(Errno::NOTDIR);
            }
            if comps[i] == b".." && *depth == 0 {
                return Err(Errno::PERM);
            }
            if comps[i].contains(&0) {
                // No name holds a NUL, and 9P strings cannot carry one.
                return Err(Errno::NOENT);
            }
            // The run of names one Twalk can take from here: no NUL, no `..` above the start.
            let mut d = *depth;
            let mut end = i;
            while end < comps.len() && end - i < wire::MAXWELEM {
                let c = comps[end];
                if c.contains(&0) || (c == b".." && d == 0) {
                    break;
                }
                d = depth_after(d, &[c]);
                end += 1;
            }
            let run = &comps[i..end];
            if run.len() > 1 {
                // The first name's error is exactly what a walk of it alone would say.
                let clean = match self.walk(cur.fid, run)? {
                    Walked::Full(fid, qids) => match qids.iter().position(is_symlink) {
                        None => {
                            let qid = qids.last().copied().unwrap_or(cur.qid);
                            self.release(*cur);
                            *cur = Cur {
                                fid,
                                qid,
                                owned: true,
                            };
                            *depth = d;
                            i = end;
                            continue;
                        }
                        Some(link) => {
                            self.clunk(fid);
                            link
                        }
                    },
                    // Directories (`..` included) up to what stopped the walk.
                    Walked::Partial(qids) => qids
                        .iter()
                        .take_while(|q| is_dir(q) && !is_symlink(q))
                        .count(),
                };
                if clean > 0 {
                    self.advance(cur, &run[..clean])?;
                    *depth = depth_after(*depth, &run[..clean]);
                    i += clean;
                }
            }
            // One name on its own: a symlink, or the name the run stopped at.
            let name = comps[i];
            let next = self.walk_to(*cur, &[name])?;
            if name != b".." && next.is_symlink() {
                *links += 1;
                if *links > MAX_SYMLINKS {
                    self.release(next);
                    return Err(Errno::LOOP);
                }
                let target = self.readlink(next.fid);
                self.release(next);
                let target = target?;
                if target.first() == Some(&b'/') {
                    return Err(Errno::PERM);
                }
                // The target resolves from the link's directory, at its depth.
                self.resolve(cur, &target, depth, links)?;
            } else {
                self.release(*cur);
                *cur = next;
                *depth = depth_after(*depth, &[name]);
            }
            i += 1;
        }
        Ok(())
    }

    /// [`Self::resolve`] with a fresh depth and link count; the position reached, which may
    /// be `start` itself.
    fn walk_from(&mut self, start: Cur, path: &[u8]) -> WasiResult<Cur> {
        let mut cur = start;
        match self.resolve(&mut cur, path, &mut 0, &mut 0) {
            Ok(()) => Ok(cur),
            Err(e) => {
                self.release(cur);
                Err(e)
            }
        }
    }

    /// Walks `path` from `start` (a descriptor's borrowed position) to the directory holding
    /// its last component: `Fs::parent`. Returns that directory, the last component and
    /// whether the path ended in `/`.
    pub fn parent<'p>(&mut self, start: Cur, path: &'p [u8]) -> WasiResult<(Cur, &'p [u8], bool)> {
        debug_assert!(!start.owned, "resolutions start from a descriptor");
        let (dir_part, name, trailing_slash) = split_parent(path)?;
        let dir = self.walk_from(start, dir_part)?;
        Ok((dir, name, trailing_slash))
    }

    /// One component from `dir` without following a symlink, as `Fs::step` with no depth to
    /// climb back to. Consumes `dir`.
    pub fn step(&mut self, dir: Cur, name: &[u8]) -> WasiResult<Cur> {
        let result = match name {
            b"" | b"." => return Ok(dir),
            _ if !dir.is_dir() => Err(Errno::NOTDIR),
            b".." => Err(Errno::PERM),
            _ if name.contains(&0) => Err(Errno::NOENT),
            _ => self.walk_to(dir, &[name]),
        };
        self.release(dir);
        result
    }

    /// Resolves `path` from `start` (a descriptor's borrowed position, used twice for
    /// `name/`), following a final symlink when `follow`: `Fs::lookup`. The result may be
    /// `start` itself.
    pub fn lookup(&mut self, start: Cur, path: &[u8], follow: bool) -> WasiResult<Cur> {
        debug_assert!(!start.owned, "resolutions start from a descriptor");
        if path.is_empty() {
            return Err(Errno::NOENT);
        }
        if path[0] == b'/' {
            return Err(Errno::PERM);
        }
        let cur = if follow {
            self.walk_from(start, path)?
        } else {
            let (dir, name, trailing_slash) = self.parent(start, path)?;
            let cur = self.step(dir, name)?;
            if trailing_slash {
                // `name/` names the directory a symlink points to even with NOFOLLOW.
                self.release(cur);
                self.walk_from(start, path)?
            } else {
                cur
            }
        };
        if path.ends_with(b"/") && !cur.is_dir() {
            self.release(cur);
            return Err(Errno::NOTDIR);
        }
        Ok(cur)
    }

    pub fn lopen(&mut self, fid: u32, flags: u32) -> WasiResult<Qid> {
        match self.call(&Tmessage::Lopen { fid, flags })? {
            Rmessage::Lopen { qid, .. } => Ok(qid),
            _ => Err(Errno::IO),
        }
    }

    /// Creates `name` in directory `fid` and opens it; `fid` becomes the new file's.
    pub fn lcreate(&mut self, fid: u32, name: &[u8], flags: u32, mode: u32) -> WasiResult<Qid> {
        let msg = Tmessage::Lcreate {
            fid,
            name,
            flags,
            mode,
            gid: 0,
        };
        match self.call(&msg)? {
            Rmessage::Lcreate { qid, .. } => Ok(qid),
            _ => Err(Errno::IO),
        }
    }

    pub fn read(&mut self, fid: u32, offset: u64, count: u32) -> WasiResult<Vec<u8>> {
        match self.call(&Tmessage::Read { fid, offset, count })? {
            Rmessage::Read { data } if data.len() <= count as usize => Ok(data),
            _ => Err(Errno::IO),
        }
    }

    pub fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> WasiResult<u32> {
        match self.call(&Tmessage::Write { fid, offset, data })? {
            Rmessage::Write { count } if count as usize <= data.len() => Ok(count),
            _ => Err(Errno::IO),
        }
    }

    pub fn getattr(&mut self, fid: u32) -> WasiResult<Attr> {
        let msg = Tmessage::Getattr {
            fid,
            request_mask: wire::GETATTR_BASIC,
        };
        match self.call(&msg)? {
            Rmessage::Getattr(attr) => Ok(attr),
            _ => Err(Errno::IO),
        }
    }

    pub fn setattr(&mut self, fid: u32, attr: SetAttr) -> WasiResult {
        match self.call(&Tmessage::Setattr { fid, attr })? {
            Rmessage::Setattr => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    pub fn mkdir(&mut self, dfid: u32, name: &[u8], mode: u32) -> WasiResult {
        let msg = Tmessage::Mkdir {
            dfid,
            name,
            mode,
            gid: 0,
        };
        match self.call(&msg)? {
            Rmessage::Mkdir { .. } => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    pub fn symlink(&mut self, dfid: u32, name: &[u8], target: &[u8]) -> WasiResult {
        let msg = Tmessage::Symlink {
            dfid,
            name,
            target,
            gid: 0,
        };
        match self.call(&msg)? {
            Rmessage::Symlink { .. } => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    pub fn readlink(&mut self, fid: u32) -> WasiResult<Vec<u8>> {
        match self.call(&Tmessage::Readlink { fid })? {
            Rmessage::Readlink { target } => Ok(target),
            _ => Err(Errno::IO),
        }
    }

    pub fn link(&mut self, dfid: u32, fid: u32, name: &[u8]) -> WasiResult {
        match self.call(&Tmessage::Link { dfid, fid, name })? {
            Rmessage::Link => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    pub fn renameat(
        &mut self,
        olddirfid: u32,
        oldname: &[u8],
        newdirfid: u32,
        newname: &[u8],
    ) -> WasiResult {
        let msg = Tmessage::Renameat {
            olddirfid,
            oldname,
            newdirfid,
            newname,
        };
        match self.call(&msg)? {
            Rmessage::Renameat => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    pub fn unlinkat(&mut self, dfid: u32, name: &[u8], dir: bool) -> WasiResult {
        let flags = if dir { wire::AT_REMOVEDIR } else { 0 };
        match self.call(&Tmessage::Unlinkat { dfid, name, flags })? {
            Rmessage::Unlinkat => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    pub fn fsync(&mut self, fid: u32, datasync: bool) -> WasiResult {
        let msg = Tmessage::Fsync {
            fid,
            datasync: u32::from(datasync),
        };
        match self.call(&msg)? {
            Rmessage::Fsync => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    /// The entries of directory `dir` for `fd_readdir`: `.` and `..` first, then the rest
    /// by name, as the in-memory filesystem lists them. Taken afresh when `refresh` (cookie
    /// 0) or when there is no snapshot yet, else the snapshot of the last refresh.
    pub fn listing(&mut self, dir: Cur, refresh: bool) -> WasiResult<&[Listed]> {
        if refresh || !self.s.listings.contains_key(&dir.fid) {
            let reader = self.walk_to(dir, &[])?;
            let list = self.read_dir(reader.fid, dir.qid);
            self.release(reader);
            self.s.listings.insert(dir.fid, list?);
        }
        Ok(self.s.listings.get(&dir.fid).map_or(&[], Vec::as_slice))
    }

    fn read_dir(&mut self, fid: u32, qid: Qid) -> WasiResult<Vec<Listed>> {
        self.lopen(fid, wire::DOTL_RDONLY)?;
        let count = self.iounit();
        let (mut dot, mut dotdot) = (qid.path, qid.path);
        let mut rest = Vec::new();
        let mut offset = 0;
        loop {
            let data = match self.call(&Tmessage::Readdir { fid, offset, count })? {
                Rmessage::Readdir { data } => data,
                _ => return Err(Errno::IO),
            };
            let entries = DirEntry::decode_all(&data).map_err(|_| Errno::IO)?;
            let Some(next) = entries.last().map(|e| e.offset) else {
                break;
            };
            for e in &entries {
                match e.name {
                    b"." => dot = e.qid.path,
                    b".." => dotdot = e.qid.path,
                    name => rest.push(Listed {
                        name: name.to_vec(),
                        ino: e.qid.path,
                        filetype: dirent_filetype(e.ty, &e.qid),
                    }),
                }
            }
            if next == offset {
                // A server that does not move on would keep us here forever.
                break;
            }
            offset = next;
        }
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        let dir = |name: &[u8], ino| Listed {
            name: name.to_vec(),
            ino,
            filetype: filetype::DIRECTORY,
        };
        let mut list = alloc::vec![dir(b".", dot), dir(b"..", dotdot)];
        list.extend(rest);
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::{Clock, Stdio};

    /// A "server" that answers every request with the same canned bytes.
    struct Canned(Option<Vec<u8>>);

    impl Platform for Canned {
        fn write(&mut self, _: Stdio, _: &[u8]) {}
        fn read_stdin(&mut self, _: &mut [u8]) -> usize {
            0
        }
        fn now_ns(&mut self, _: Clock) -> u64 {
            0
        }
        fn resolution_ns(&self, _: Clock) -> u64 {
            1
        }
        fn random(&mut self, _: &mut [u8]) {}
        fn p9_transact(&mut self, _: u32, _: &[u8], reply: &mut Vec<u8>) -> bool {
            match &self.0 {
                Some(bytes) => {
                    reply.clone_from(bytes);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn broken_transports_and_replies_are_eio() {
        assert_eq!(
            Session::connect(&mut Canned(None), 0).unwrap_err(),
            Errno::IO
        );
        assert_eq!(
            Session::connect(&mut Canned(Some(vec![1, 2, 3])), 0).unwrap_err(),
            Errno::IO
        );
        // A well-formed reply with the wrong tag.
        let mut bytes = Vec::new();
        Rmessage::Version {
            msize: MSIZE,
            version: wire::VERSION_9P2000_L.to_vec(),
        }
        .encode(7, &mut bytes);
        assert_eq!(
            Session::connect(&mut Canned(Some(bytes)), 0).unwrap_err(),
            Errno::IO
        );
        // Rlerror carries a Linux errno.
        let mut bytes = Vec::new();
        Rmessage::Lerror { ecode: 30 }.encode(wire::NOTAG, &mut bytes);
        assert_eq!(
            Session::connect(&mut Canned(Some(bytes)), 0).unwrap_err(),
            Errno::ROFS
        );
        assert_eq!(errno_from_linux(90), Errno::IO);
        assert_eq!(errno_from_linux(39), Errno::NOTEMPTY);
        assert_eq!(errno_from_linux(12345), Errno::IO);
    }
}
