//! The 9P2000.L wire format, spoken between the guest kernel's client and the built-in VMM's
//! server for live host directories: message type numbers, a bounds-checked decoder for
//! T-messages (the guest's requests) and an encoder for R-messages (the replies).
//!
//! Every message is `size[4] type[1] tag[2] body`, little-endian; strings are `len[2]` plus
//! that many bytes. Guest bytes are validated exactly once, by [`Frame::new_checked`] and
//! [`Tmessage::decode`]; nothing here indexes a slice without a length check, so malformed
//! input is a [`DecodeError`], never a panic. The opposite directions (encoding T-messages,
//! decoding R-messages) exist for tests and tools that play the client.

use alloc::vec::Vec;

/// The largest message this server negotiates (`Tversion.msize` is clamped to it).
pub const MAX_MSIZE: u32 = 128 * 1024;
/// The smallest `msize` the server accepts (Linux's own minimum). A reply that would not
/// fit (only a symlink target near `PATH_MAX` could) becomes `Rlerror(EMSGSIZE)`.
pub const MIN_MSIZE: u32 = 4096;
/// `size[4] type[1] tag[2]`.
pub const HEADER_LEN: usize = 7;
/// The header of `Tread`/`Twrite` (`size type tag fid offset count`): `msize - IOHDRSZ` is
/// the largest payload per I/O message.
pub const IOHDRSZ: u32 = 24;
/// The tag of `Tversion`, and of replies to requests whose tag could not be read.
pub const NOTAG: u16 = 0xffff;
/// "No fid", e.g. `Tattach.afid` without authentication.
pub const NOFID: u32 = 0xffff_ffff;
/// The only protocol version spoken.
pub const VERSION_9P2000_L: &[u8] = b"9P2000.L";
/// `Rversion.version` when the client's version is not spoken.
pub const VERSION_UNKNOWN: &[u8] = b"unknown";
/// Walks carry at most this many names.
pub const MAXWELEM: usize = 16;

/// Qid types.
pub const QTDIR: u8 = 0x80;
pub const QTSYMLINK: u8 = 0x02;
pub const QTFILE: u8 = 0x00;

/// Message type numbers (9P2000.L plus the 9P2000 base messages it keeps).
pub const TLERROR: u8 = 6;
pub const RLERROR: u8 = 7;
pub const TSTATFS: u8 = 8;
pub const RSTATFS: u8 = 9;
pub const TLOPEN: u8 = 12;
pub const RLOPEN: u8 = 13;
pub const TLCREATE: u8 = 14;
pub const RLCREATE: u8 = 15;
pub const TSYMLINK: u8 = 16;
pub const RSYMLINK: u8 = 17;
pub const TMKNOD: u8 = 18;
pub const RMKNOD: u8 = 19;
pub const TRENAME: u8 = 20;
pub const RRENAME: u8 = 21;
pub const TREADLINK: u8 = 22;
pub const RREADLINK: u8 = 23;
pub const TGETATTR: u8 = 24;
pub const RGETATTR: u8 = 25;
pub const TSETATTR: u8 = 26;
pub const RSETATTR: u8 = 27;
pub const TXATTRWALK: u8 = 30;
pub const RXATTRWALK: u8 = 31;
pub const TXATTRCREATE: u8 = 32;
pub const RXATTRCREATE: u8 = 33;
pub const TREADDIR: u8 = 40;
pub const RREADDIR: u8 = 41;
pub const TFSYNC: u8 = 50;
pub const RFSYNC: u8 = 51;
pub const TLOCK: u8 = 52;
pub const RLOCK: u8 = 53;
pub const TGETLOCK: u8 = 54;
pub const RGETLOCK: u8 = 55;
pub const TLINK: u8 = 70;
pub const RLINK: u8 = 71;
pub const TMKDIR: u8 = 72;
pub const RMKDIR: u8 = 73;
pub const TRENAMEAT: u8 = 74;
pub const RRENAMEAT: u8 = 75;
pub const TUNLINKAT: u8 = 76;
pub const RUNLINKAT: u8 = 77;
pub const TVERSION: u8 = 100;
pub const RVERSION: u8 = 101;
pub const TAUTH: u8 = 102;
pub const RAUTH: u8 = 103;
pub const TATTACH: u8 = 104;
pub const RATTACH: u8 = 105;
pub const TFLUSH: u8 = 108;
pub const RFLUSH: u8 = 109;
pub const TWALK: u8 = 110;
pub const RWALK: u8 = 111;
pub const TREAD: u8 = 116;
pub const RREAD: u8 = 117;
pub const TWRITE: u8 = 118;
pub const RWRITE: u8 = 119;
pub const TCLUNK: u8 = 120;
pub const RCLUNK: u8 = 121;
pub const TREMOVE: u8 = 122;
pub const RREMOVE: u8 = 123;

/// `Tlopen`/`Tlcreate` flags (`P9_DOTL_*`): Linux's x86 `O_*` values, which are not the
/// host's on every architecture, so the server translates them.
pub const DOTL_RDONLY: u32 = 0o0;
pub const DOTL_WRONLY: u32 = 0o1;
pub const DOTL_RDWR: u32 = 0o2;
pub const DOTL_ACCMODE: u32 = 0o3;
pub const DOTL_CREATE: u32 = 0o100;
pub const DOTL_EXCL: u32 = 0o200;
pub const DOTL_NOCTTY: u32 = 0o400;
pub const DOTL_TRUNC: u32 = 0o1000;
pub const DOTL_APPEND: u32 = 0o2000;
pub const DOTL_NONBLOCK: u32 = 0o4000;
pub const DOTL_DSYNC: u32 = 0o10000;
pub const DOTL_DIRECTORY: u32 = 0o200000;
pub const DOTL_NOFOLLOW: u32 = 0o400000;
pub const DOTL_SYNC: u32 = 0o4000000;

/// `Tsetattr.valid` bits.
pub const SETATTR_MODE: u32 = 0x1;
pub const SETATTR_UID: u32 = 0x2;
pub const SETATTR_GID: u32 = 0x4;
pub const SETATTR_SIZE: u32 = 0x8;
pub const SETATTR_ATIME: u32 = 0x10;
pub const SETATTR_MTIME: u32 = 0x20;
pub const SETATTR_CTIME: u32 = 0x40;
pub const SETATTR_ATIME_SET: u32 = 0x80;
pub const SETATTR_MTIME_SET: u32 = 0x100;

/// `Rgetattr.valid`: the basic `stat` fields (mode through blocks).
pub const GETATTR_BASIC: u64 = 0x7ff;

/// `Tunlinkat.flags`: remove a directory.
pub const AT_REMOVEDIR: u32 = 0x200;

/// `Rlock.status` and `Tlock`/`Tgetlock` lock types.
pub const LOCK_SUCCESS: u8 = 0;
pub const LOCK_TYPE_RDLCK: u8 = 0;
pub const LOCK_TYPE_WRLCK: u8 = 1;
pub const LOCK_TYPE_UNLCK: u8 = 2;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadSize,
    BadString,
    TooManyNames,
    UnknownType(u8),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("message shorter than its fields"),
            DecodeError::BadSize => f.write_str("size field does not match the message"),
            DecodeError::BadString => f.write_str("string contains a NUL byte"),
            DecodeError::TooManyNames => write!(f, "walk with more than {MAXWELEM} names"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type {t}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// A file's identity as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Qid {
    pub ty: u8,
    pub version: u32,
    pub path: u64,
}

/// The fields of `Rgetattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub valid: u64,
    pub qid: Qid,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
    pub ctime_sec: u64,
    pub ctime_nsec: u64,
    pub btime_sec: u64,
    pub btime_nsec: u64,
    pub generation: u64,
    pub data_version: u64,
}

/// The fields of `Tsetattr` after the fid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub valid: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
}

/// The fields of `Rstatfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    pub ty: u32,
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub fsid: u64,
    pub namelen: u32,
}

/// A byte range lock, as `Tgetlock` asks about it and `Rgetlock` answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetLock<S> {
    pub ty: u8,
    pub start: u64,
    pub length: u64,
    pub proc_id: u32,
    pub client_id: S,
}

/// A request. Strings and data borrow from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tmessage<'a> {
    Version {
        msize: u32,
        version: &'a [u8],
    },
    Auth {
        afid: u32,
        uname: &'a [u8],
        aname: &'a [u8],
        n_uname: u32,
    },
    Attach {
        fid: u32,
        afid: u32,
        uname: &'a [u8],
        aname: &'a [u8],
        n_uname: u32,
    },
    Flush {
        oldtag: u16,
    },
    Walk {
        fid: u32,
        newfid: u32,
        names: Vec<&'a [u8]>,
    },
    Lopen {
        fid: u32,
        flags: u32,
    },
    Lcreate {
        fid: u32,
        name: &'a [u8],
        flags: u32,
        mode: u32,
        gid: u32,
    },
    Read {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Write {
        fid: u32,
        offset: u64,
        data: &'a [u8],
    },
    Clunk {
        fid: u32,
    },
    Remove {
        fid: u32,
    },
    Getattr {
        fid: u32,
        request_mask: u64,
    },
    Setattr {
        fid: u32,
        attr: SetAttr,
    },
    Readdir {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Mkdir {
        dfid: u32,
        name: &'a [u8],
        mode: u32,
        gid: u32,
    },
    Symlink {
        dfid: u32,
        name: &'a [u8],
        target: &'a [u8],
        gid: u32,
    },
    Mknod {
        dfid: u32,
        name: &'a [u8],
        mode: u32,
        major: u32,
        minor: u32,
        gid: u32,
    },
    Readlink {
        fid: u32,
    },
    Link {
        dfid: u32,
        fid: u32,
        name: &'a [u8],
    },
    Rename {
        fid: u32,
        dfid: u32,
        name: &'a [u8],
    },
    Renameat {
        olddirfid: u32,
        oldname: &'a [u8],
        newdirfid: u32,
        newname: &'a [u8],
    },
    Unlinkat {
        dfid: u32,
        name: &'a [u8],
        flags: u32,
    },
    Statfs {
        fid: u32,
    },
    Fsync {
        fid: u32,
        datasync: u32,
    },
    Lock {
        fid: u32,
        ty: u8,
        flags: u32,
        start: u64,
        length: u64,
        proc_id: u32,
        client_id: &'a [u8],
    },
    Getlock {
        fid: u32,
        lock: GetLock<&'a [u8]>,
    },
    Xattrwalk {
        fid: u32,
        newfid: u32,
        name: &'a [u8],
    },
    Xattrcreate {
        fid: u32,
        name: &'a [u8],
        attr_size: u64,
        flags: u32,
    },
}

/// A reply. Owns its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rmessage {
    Lerror {
        ecode: u32,
    },
    Version {
        msize: u32,
        version: Vec<u8>,
    },
    Attach {
        qid: Qid,
    },
    Flush,
    Walk {
        qids: Vec<Qid>,
    },
    Lopen {
        qid: Qid,
        iounit: u32,
    },
    Lcreate {
        qid: Qid,
        iounit: u32,
    },
    Read {
        data: Vec<u8>,
    },
    Write {
        count: u32,
    },
    Clunk,
    Remove,
    Getattr(Attr),
    Setattr,
    /// Encoded directory entries (see [`DirEntry`]).
    Readdir {
        data: Vec<u8>,
    },
    Mkdir {
        qid: Qid,
    },
    Symlink {
        qid: Qid,
    },
    Mknod {
        qid: Qid,
    },
    Readlink {
        target: Vec<u8>,
    },
    Link,
    Rename,
    Renameat,
    Unlinkat,
    Statfs(StatFs),
    Fsync,
    Lock {
        status: u8,
    },
    Getlock(GetLock<Vec<u8>>),
}

/// One entry of `Rreaddir.data`: `qid[13] offset[8] type[1] name[s]`. `offset` is the
/// cookie to pass to the next `Treaddir` to continue after this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub qid: Qid,
    pub offset: u64,
    pub ty: u8,
    pub name: &'a [u8],
}

/// A message whose header has been checked: at least [`HEADER_LEN`] bytes, and exactly as
/// many as its size field says.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    buf: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Checks the header of the message at the start of `buf`. Bytes after `size` are not
    /// part of the message and are ignored.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let size = buf
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b))
            .ok_or(DecodeError::Truncated)?;
        let size = usize::try_from(size).map_err(|_| DecodeError::BadSize)?;
        if size < HEADER_LEN {
            return Err(DecodeError::BadSize);
        }
        let buf = buf.get(..size).ok_or(DecodeError::BadSize)?;
        Ok(Frame { buf })
    }

    /// The tag of a message that may not pass [`Frame::new_checked`], if its bytes reach it.
    pub fn peek_tag(buf: &[u8]) -> Option<u16> {
        buf.get(5..7)
            .and_then(|b| b.first_chunk::<2>())
            .map(|b| u16::from_le_bytes(*b))
    }

    pub fn size(&self) -> usize {
        self.buf.len()
    }

    pub fn ty(&self) -> u8 {
        self.buf.get(4).copied().unwrap_or(0)
    }

    pub fn tag(&self) -> u16 {
        Self::peek_tag(self.buf).unwrap_or(NOTAG)
    }

    pub fn body(&self) -> &'a [u8] {
        self.buf.get(HEADER_LEN..).unwrap_or(&[])
    }
}

/// Reads fields front to back, failing on the first one that does not fit.
struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Decoder { buf }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.buf = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// `len[2] bytes`; no string in 9P may contain NUL.
    fn string(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        let s = self.bytes(usize::from(len))?;
        if s.contains(&0) {
            return Err(DecodeError::BadString);
        }
        Ok(s)
    }

    /// `count[4] bytes`.
    fn data(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        self.bytes(len)
    }

    fn qid(&mut self) -> Result<Qid, DecodeError> {
        Ok(Qid {
            ty: self.u8()?,
            version: self.u32()?,
            path: self.u64()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Appends one message to a buffer and patches its size field when done.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Encoder<'a> {
    fn begin(out: &'a mut Vec<u8>, ty: u8, tag: u16) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(ty);
        out.extend_from_slice(&tag.to_le_bytes());
        Encoder { out, start }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Strings longer than a `u16` length can express are cut (no message built here has
    /// one; the server bounds names and targets far below).
    fn string(&mut self, s: &[u8]) -> &mut Self {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.out
            .extend_from_slice(s.get(..usize::from(len)).unwrap_or(s));
        self
    }

    fn data(&mut self, d: &[u8]) -> &mut Self {
        let len = u32::try_from(d.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.out
            .extend_from_slice(d.get(..len as usize).unwrap_or(d));
        self
    }

    fn qid(&mut self, q: &Qid) -> &mut Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }

    fn finish(self) {
        let size = u32::try_from(self.out.len() - self.start).unwrap_or(u32::MAX);
        if let Some(field) = self.out.get_mut(self.start..self.start + 4) {
            field.copy_from_slice(&size.to_le_bytes());
        }
    }
}

impl<'a> Tmessage<'a> {
    /// Decodes the body of a request of type `ty`. Trailing bytes after the last field are
    /// ignored (as QEMU does); every field must be complete.
    pub fn decode(ty: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(body);
        let msg = match ty {
            TVERSION => Tmessage::Version {
                msize: d.u32()?,
                version: d.string()?,
            },
            TAUTH => Tmessage::Auth {
                afid: d.u32()?,
                uname: d.string()?,
                aname: d.string()?,
                n_uname: d.u32()?,
            },
            TATTACH => Tmessage::Attach {
                fid: d.u32()?,
                afid: d.u32()?,
                uname: d.string()?,
                aname: d.string()?,
                n_uname: d.u32()?,
            },
            TFLUSH => Tmessage::Flush { oldtag: d.u16()? },
            TWALK => {
                let fid = d.u32()?;
                let newfid = d.u32()?;
                let n = usize::from(d.u16()?);
                if n > MAXWELEM {
                    return Err(DecodeError::TooManyNames);
                }
                let names = (0..n).map(|_| d.string()).collect::<Result<_, _>>()?;
                Tmessage::Walk { fid, newfid, names }
            }
            TLOPEN => Tmessage::Lopen {
                fid: d.u32()?,
                flags: d.u32()?,
            },
            TLCREATE => Tmessage::Lcreate {
                fid: d.u32()?,
                name: d.string()?,
                flags: d.u32()?,
                mode: d.u32()?,
                gid: d.u32()?,
            },
            TREAD => Tmessage::Read {
                fid: d.u32()?,
                offset: d.u64()?,
                count: d.u32()?,
            },
            TWRITE => Tmessage::Write {
                fid: d.u32()?,
                offset: d.u64()?,
                data: d.data()?,
            },
            TCLUNK => Tmessage::Clunk { fid: d.u32()? },
            TREMOVE => Tmessage::Remove { fid: d.u32()? },
            TGETATTR => Tmessage::Getattr {
                fid: d.u32()?,
                request_mask: d.u64()?,
            },
            TSETATTR => Tmessage::Setattr {
                fid: d.u32()?,
                attr: SetAttr {
                    valid: d.u32()?,
                    mode: d.u32()?,
                    uid: d.u32()?,
                    gid: d.u32()?,
                    size: d.u64()?,
                    atime_sec: d.u64()?,
                    atime_nsec: d.u64()?,
                    mtime_sec: d.u64()?,
                    mtime_nsec: d.u64()?,
                },
            },
            TREADDIR => Tmessage::Readdir {
                fid: d.u32()?,
                offset: d.u64()?,
                count: d.u32()?,
            },
            TMKDIR => Tmessage::Mkdir {
                dfid: d.u32()?,
                name: d.string()?,
                mode: d.u32()?,
                gid: d.u32()?,
            },
            TSYMLINK => Tmessage::Symlink {
                dfid: d.u32()?,
                name: d.string()?,
                target: d.string()?,
                gid: d.u32()?,
            },
            TMKNOD => Tmessage::Mknod {
                dfid: d.u32()?,
                name: d.string()?,
                mode: d.u32()?,
                major: d.u32()?,
                minor: d.u32()?,
                gid: d.u32()?,
            },
            TREADLINK => Tmessage::Readlink { fid: d.u32()? },
            TLINK => Tmessage::Link {
                dfid: d.u32()?,
                fid: d.u32()?,
                name: d.string()?,
            },
            TRENAME => Tmessage::Rename {
                fid: d.u32()?,
                dfid: d.u32()?,
                name: d.string()?,
            },
            TRENAMEAT => Tmessage::Renameat {
                olddirfid: d.u32()?,
                oldname: d.string()?,
                newdirfid: d.u32()?,
                newname: d.string()?,
            },
            TUNLINKAT => Tmessage::Unlinkat {
                dfid: d.u32()?,
                name: d.string()?,
                flags: d.u32()?,
            },
            TSTATFS => Tmessage::Statfs { fid: d.u32()? },
            TFSYNC => {
                let fid = d.u32()?;
                // Older clients send no `datasync`.
                let datasync = if d.is_empty() { 0 } else { d.u32()? };
                Tmessage::Fsync { fid, datasync }
            }
            TLOCK => Tmessage::Lock {
                fid: d.u32()?,
                ty: d.u8()?,
                flags: d.u32()?,
                start: d.u64()?,
                length: d.u64()?,
                proc_id: d.u32()?,
                client_id: d.string()?,
            },
            TGETLOCK => Tmessage::Getlock {
                fid: d.u32()?,
                lock: GetLock {
                    ty: d.u8()?,
                    start: d.u64()?,
                    length: d.u64()?,
                    proc_id: d.u32()?,
                    client_id: d.string()?,
                },
            },
            TXATTRWALK => Tmessage::Xattrwalk {
                fid: d.u32()?,
                newfid: d.u32()?,
                name: d.string()?,
            },
            TXATTRCREATE => Tmessage::Xattrcreate {
                fid: d.u32()?,
                name: d.string()?,
                attr_size: d.u64()?,
                flags: d.u32()?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(msg)
    }

    /// The message's type number.
    pub fn ty(&self) -> u8 {
        match self {
            Tmessage::Version { .. } => TVERSION,
            Tmessage::Auth { .. } => TAUTH,
            Tmessage::Attach { .. } => TATTACH,
            Tmessage::Flush { .. } => TFLUSH,
            Tmessage::Walk { .. } => TWALK,
            Tmessage::Lopen { .. } => TLOPEN,
            Tmessage::Lcreate { .. } => TLCREATE,
            Tmessage::Read { .. } => TREAD,
            Tmessage::Write { .. } => TWRITE,
            Tmessage::Clunk { .. } => TCLUNK,
            Tmessage::Remove { .. } => TREMOVE,
            Tmessage::Getattr { .. } => TGETATTR,
            Tmessage::Setattr { .. } => TSETATTR,
            Tmessage::Readdir { .. } => TREADDIR,
            Tmessage::Mkdir { .. } => TMKDIR,
            Tmessage::Symlink { .. } => TSYMLINK,
            Tmessage::Mknod { .. } => TMKNOD,
            Tmessage::Readlink { .. } => TREADLINK,
            Tmessage::Link { .. } => TLINK,
            Tmessage::Rename { .. } => TRENAME,
            Tmessage::Renameat { .. } => TRENAMEAT,
            Tmessage::Unlinkat { .. } => TUNLINKAT,
            Tmessage::Statfs { .. } => TSTATFS,
            Tmessage::Fsync { .. } => TFSYNC,
            Tmessage::Lock { .. } => TLOCK,
            Tmessage::Getlock { .. } => TGETLOCK,
            Tmessage::Xattrwalk { .. } => TXATTRWALK,
            Tmessage::Xattrcreate { .. } => TXATTRCREATE,
        }
    }

    /// Appends the message, as a client would send it, to `out`.
    pub fn encode(&self, tag: u16, out: &mut Vec<u8>) {
        let mut e = Encoder::begin(out, self.ty(), tag);
        match self {
            Tmessage::Version { msize, version } => {
                e.u32(*msize).string(version);
            }
            Tmessage::Auth {
                afid,
                uname,
                aname,
                n_uname,
            } => {
                e.u32(*afid).string(uname).string(aname).u32(*n_uname);
            }
            Tmessage::Attach {
                fid,
                afid,
                uname,
                aname,
                n_uname,
            } => {
                e.u32(*fid)
                    .u32(*afid)
                    .string(uname)
                    .string(aname)
                    .u32(*n_uname);
            }
            Tmessage::Flush { oldtag } => {
                e.u16(*oldtag);
            }
            Tmessage::Walk { fid, newfid, names } => {
                let n = u16::try_from(names.len()).unwrap_or(u16::MAX);
                e.u32(*fid).u32(*newfid).u16(n);
                for name in names.iter().take(usize::from(n)) {
                    e.string(name);
                }
            }
            Tmessage::Lopen { fid, flags } => {
                e.u32(*fid).u32(*flags);
            }
            Tmessage::Lcreate {
                fid,
                name,
                flags,
                mode,
                gid,
            } => {
                e.u32(*fid).string(name).u32(*flags).u32(*mode).u32(*gid);
            }
            Tmessage::Read { fid, offset, count } | Tmessage::Readdir { fid, offset, count } => {
                e.u32(*fid).u64(*offset).u32(*count);
            }
            Tmessage::Write { fid, offset, data } => {
                e.u32(*fid).u64(*offset).data(data);
            }
            Tmessage::Clunk { fid }
            | Tmessage::Remove { fid }
            | Tmessage::Readlink { fid }
            | Tmessage::Statfs { fid } => {
                e.u32(*fid);
            }
            Tmessage::Getattr { fid, request_mask } => {
                e.u32(*fid).u64(*request_mask);
            }
            Tmessage::Setattr { fid, attr: a } => {
                e.u32(*fid)
                    .u32(a.valid)
                    .u32(a.mode)
                    .u32(a.uid)
                    .u32(a.gid)
                    .u64(a.size)
                    .u64(a.atime_sec)
                    .u64(a.atime_nsec)
                    .u64(a.mtime_sec)
                    .u64(a.mtime_nsec);
            }
            Tmessage::Mkdir {
                dfid,
                name,
                mode,
                gid,
            } => {
                e.u32(*dfid).string(name).u32(*mode).u32(*gid);
            }
            Tmessage::Symlink {
                dfid,
                name,
                target,
                gid,
            } => {
                e.u32(*dfid).string(name).string(target).u32(*gid);
            }
            Tmessage::Mknod {
                dfid,
                name,
                mode,
                major,
                minor,
                gid,
            } => {
                e.u32(*dfid)
                    .string(name)
                    .u32(*mode)
                    .u32(*major)
                    .u32(*minor)
                    .u32(*gid);
            }
            Tmessage::Link { dfid, fid, name } => {
                e.u32(*dfid).u32(*fid).string(name);
            }
            Tmessage::Rename { fid, dfid, name } => {
                e.u32(*fid).u32(*dfid).string(name);
            }
            Tmessage::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => {
                e.u32(*olddirfid)
                    .string(oldname)
                    .u32(*newdirfid)
                    .string(newname);
            }
            Tmessage::Unlinkat { dfid, name, flags } => {
                e.u32(*dfid).string(name).u32(*flags);
            }
            Tmessage::Fsync { fid, datasync } => {
                e.u32(*fid).u32(*datasync);
            }
            Tmessage::Lock {
                fid,
                ty,
                flags,
                start,
                length,
                proc_id,
                client_id,
            } => {
                e.u32(*fid)
                    .u8(*ty)
                    .u32(*flags)
                    .u64(*start)
                    .u64(*length)
                    .u32(*proc_id)
                    .string(client_id);
            }
            Tmessage::Getlock { fid, lock } => {
                e.u32(*fid)
                    .u8(lock.ty)
                    .u64(lock.start)
                    .u64(lock.length)
                    .u32(lock.proc_id)
                    .string(lock.client_id);
            }
            Tmessage::Xattrwalk { fid, newfid, name } => {
                e.u32(*fid).u32(*newfid).string(name);
            }
            Tmessage::Xattrcreate {
                fid,
                name,
                attr_size,
                flags,
            } => {
                e.u32(*fid).string(name).u64(*attr_size).u32(*flags);
            }
        }
        e.finish();
    }
}

impl Rmessage {
    /// The message's type number.
    pub fn ty(&self) -> u8 {
        match self {
            Rmessage::Lerror { .. } => RLERROR,
            Rmessage::Version { .. } => RVERSION,
            Rmessage::Attach { .. } => RATTACH,
            Rmessage::Flush => RFLUSH,
            Rmessage::Walk { .. } => RWALK,
            Rmessage::Lopen { .. } => RLOPEN,
            Rmessage::Lcreate { .. } => RLCREATE,
            Rmessage::Read { .. } => RREAD,
            Rmessage::Write { .. } => RWRITE,
            Rmessage::Clunk => RCLUNK,
            Rmessage::Remove => RREMOVE,
            Rmessage::Getattr(_) => RGETATTR,
            Rmessage::Setattr => RSETATTR,
            Rmessage::Readdir { .. } => RREADDIR,
            Rmessage::Mkdir { .. } => RMKDIR,
            Rmessage::Symlink { .. } => RSYMLINK,
            Rmessage::Mknod { .. } => RMKNOD,
            Rmessage::Readlink { .. } => RREADLINK,
            Rmessage::Link => RLINK,
            Rmessage::Rename => RRENAME,
            Rmessage::Renameat => RRENAMEAT,
            Rmessage::Unlinkat => RUNLINKAT,
            Rmessage::Statfs(_) => RSTATFS,
            Rmessage::Fsync => RFSYNC,
            Rmessage::Lock { .. } => RLOCK,
            Rmessage::Getlock(_) => RGETLOCK,
        }
    }

    /// Appends the reply to `out`.
    pub fn encode(&self, tag: u16, out: &mut Vec<u8>) {
        let mut e = Encoder::begin(out, self.ty(), tag);
        match self {
            Rmessage::Lerror { ecode } => {
                e.u32(*ecode);
            }
            Rmessage::Version { msize, version } => {
                e.u32(*msize).string(version);
            }
            Rmessage::Attach { qid }
            | Rmessage::Mkdir { qid }
            | Rmessage::Symlink { qid }
            | Rmessage::Mknod { qid } => {
                e.qid(qid);
            }
            Rmessage::Walk { qids } => {
                let n = u16::try_from(qids.len()).unwrap_or(u16::MAX);
                e.u16(n);
                for q in qids.iter().take(usize::from(n)) {
                    e.qid(q);
                }
            }
            Rmessage::Lopen { qid, iounit } | Rmessage::Lcreate { qid, iounit } => {
                e.qid(qid).u32(*iounit);
            }
            Rmessage::Read { data } | Rmessage::Readdir { data } => {
                e.data(data);
            }
            Rmessage::Write { count } => {
                e.u32(*count);
            }
            Rmessage::Getattr(a) => {
                e.u64(a.valid)
                    .qid(&a.qid)
                    .u32(a.mode)
                    .u32(a.uid)
                    .u32(a.gid)
                    .u64(a.nlink)
                    .u64(a.rdev)
                    .u64(a.size)
                    .u64(a.blksize)
                    .u64(a.blocks)
                    .u64(a.atime_sec)
                    .u64(a.atime_nsec)
                    .u64(a.mtime_sec)
                    .u64(a.mtime_nsec)
                    .u64(a.ctime_sec)
                    .u64(a.ctime_nsec)
                    .u64(a.btime_sec)
                    .u64(a.btime_nsec)
                    .u64(a.generation)
                    .u64(a.data_version);
            }
            Rmessage::Readlink { target } => {
                e.string(target);
            }
            Rmessage::Statfs(s) => {
                e.u32(s.ty)
                    .u32(s.bsize)
                    .u64(s.blocks)
                    .u64(s.bfree)
                    .u64(s.bavail)
                    .u64(s.files)
                    .u64(s.ffree)
                    .u64(s.fsid)
                    .u32(s.namelen);
            }
            Rmessage::Lock { status } => {
                e.u8(*status);
            }
            Rmessage::Getlock(l) => {
                e.u8(l.ty)
                    .u64(l.start)
                    .u64(l.length)
                    .u32(l.proc_id)
                    .string(&l.client_id);
            }
            Rmessage::Flush
            | Rmessage::Clunk
            | Rmessage::Remove
            | Rmessage::Setattr
            | Rmessage::Link
            | Rmessage::Rename
            | Rmessage::Renameat
            | Rmessage::Unlinkat
            | Rmessage::Fsync => {}
        }
        e.finish();
    }

    /// Decodes a whole reply (header included), as a client would; returns its tag too.
    /// Unlike [`Tmessage::decode`], trailing bytes are an error: this is the check that a
    /// reply is well formed.
    pub fn decode(buf: &[u8]) -> Result<(u16, Rmessage), DecodeError> {
        let frame = Frame::new_checked(buf)?;
        if frame.size() != buf.len() {
            return Err(DecodeError::BadSize);
        }
        let mut d = Decoder::new(frame.body());
        let msg = match frame.ty() {
            RLERROR => Rmessage::Lerror { ecode: d.u32()? },
            RVERSION => Rmessage::Version {
                msize: d.u32()?,
                version: d.string()?.to_vec(),
            },
            RATTACH => Rmessage::Attach { qid: d.qid()? },
            RFLUSH => Rmessage::Flush,
            RWALK => {
                let n = usize::from(d.u16()?);
                if n > MAXWELEM {
                    return Err(DecodeError::TooManyNames);
                }
                let qids = (0..n).map(|_| d.qid()).collect::<Result<_, _>>()?;
                Rmessage::Walk { qids }
            }
            RLOPEN => Rmessage::Lopen {
                qid: d.qid()?,
                iounit: d.u32()?,
            },
            RLCREATE => Rmessage::Lcreate {
                qid: d.qid()?,
                iounit: d.u32()?,
            },
            RREAD => Rmessage::Read {
                data: d.data()?.to_vec(),
            },
            RWRITE => Rmessage::Write { count: d.u32()? },
            RCLUNK => Rmessage::Clunk,
            RREMOVE => Rmessage::Remove,
            RGETATTR => Rmessage::Getattr(Attr {
                valid: d.u64()?,
                qid: d.qid()?,
                mode: d.u32()?,
                uid: d.u32()?,
                gid: d.u32()?,
                nlink: d.u64()?,
                rdev: d.u64()?,
                size: d.u64()?,
                blksize: d.u64()?,
                blocks: d.u64()?,
                atime_sec: d.u64()?,
                atime_nsec: d.u64()?,
                mtime_sec: d.u64()?,
                mtime_nsec: d.u64()?,
                ctime_sec: d.u64()?,
                ctime_nsec: d.u64()?,
                btime_sec: d.u64()?,
                btime_nsec: d.u64()?,
                generation: d.u64()?,
                data_version: d.u64()?,
            }),
            RSETATTR => Rmessage::Setattr,
            RREADDIR => {
                let data = d.data()?;
                // The entries must parse too.
                DirEntry::decode_all(data)?;
                Rmessage::Readdir {
                    data: data.to_vec(),
                }
            }
            RMKDIR => Rmessage::Mkdir { qid: d.qid()? },
            RSYMLINK => Rmessage::Symlink { qid: d.qid()? },
            RMKNOD => Rmessage::Mknod { qid: d.qid()? },
            RREADLINK => Rmessage::Readlink {
                target: d.string()?.to_vec(),
            },
            RLINK => Rmessage::Link,
            RRENAME => Rmessage::Rename,
            RRENAMEAT => Rmessage::Renameat,
            RUNLINKAT => Rmessage::Unlinkat,
            RSTATFS => Rmessage::Statfs(StatFs {
                ty: d.u32()?,
                bsize: d.u32()?,
                blocks: d.u64()?,
                bfree: d.u64()?,
                bavail: d.u64()?,
                files: d.u64()?,
                ffree: d.u64()?,
                fsid: d.u64()?,
                namelen: d.u32()?,
            }),
            RFSYNC => Rmessage::Fsync,
            RLOCK => Rmessage::Lock { status: d.u8()? },
            RGETLOCK => Rmessage::Getlock(GetLock {
                ty: d.u8()?,
                start: d.u64()?,
                length: d.u64()?,
                proc_id: d.u32()?,
                client_id: d.string()?.to_vec(),
            }),
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !d.is_empty() {
            return Err(DecodeError::BadSize);
        }
        Ok((frame.tag(), msg))
    }
}

impl<'a> DirEntry<'a> {
    /// The encoded size of an entry with a `name_len`-byte name.
    pub const fn encoded_len(name_len: usize) -> usize {
        13 + 8 + 1 + 2 + name_len
    }

    /// Appends the entry to `Rreaddir` data.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.qid.ty);
        out.extend_from_slice(&self.qid.version.to_le_bytes());
        out.extend_from_slice(&self.qid.path.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.push(self.ty);
        let len = u16::try_from(self.name.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(self.name.get(..usize::from(len)).unwrap_or(self.name));
    }

    /// Splits `Rreaddir` data into entries.
    pub fn decode_all(data: &'a [u8]) -> Result<Vec<DirEntry<'a>>, DecodeError> {
        let mut d = Decoder::new(data);
        let mut entries = Vec::new();
        while !d.is_empty() {
            entries.push(DirEntry {
                qid: d.qid()?,
                offset: d.u64()?,
                ty: d.u8()?,
                name: d.string()?,
            });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn p9_wire_roundtrip_and_truncation() {
        let msgs = [
            Tmessage::Version {
                msize: 8192,
                version: VERSION_9P2000_L,
            },
            Tmessage::Walk {
                fid: 1,
                newfid: 2,
                names: vec![b"a", b"bc"],
            },
            Tmessage::Write {
                fid: 3,
                offset: 9,
                data: b"hello",
            },
            Tmessage::Renameat {
                olddirfid: 1,
                oldname: b"x",
                newdirfid: 2,
                newname: b"y",
            },
        ];
        for m in msgs {
            let mut buf = Vec::new();
            m.encode(7, &mut buf);
            let frame = Frame::new_checked(&buf).unwrap();
            assert_eq!(frame.tag(), 7);
            assert_eq!(Tmessage::decode(frame.ty(), frame.body()).unwrap(), m);
            // Every strict prefix of the body is an error, never a panic.
            for cut in 0..frame.body().len() {
                assert!(Tmessage::decode(frame.ty(), &frame.body()[..cut]).is_err());
            }
        }
        assert_eq!(
            Frame::new_checked(&[3, 0, 0, 0, 100, 0, 0]).unwrap_err(),
            DecodeError::BadSize
        );
        assert_eq!(
            Frame::new_checked(&[9, 0, 0, 0, 100, 0, 0]).unwrap_err(),
            DecodeError::BadSize
        );
        assert_eq!(Frame::peek_tag(&[9, 0, 0, 0, 100, 5, 1]), Some(0x105));
        // A string with an embedded NUL.
        let mut buf = Vec::new();
        Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![b"a\0b"],
        }
        .encode(1, &mut buf);
        let frame = Frame::new_checked(&buf).unwrap();
        assert_eq!(
            Tmessage::decode(frame.ty(), frame.body()),
            Err(DecodeError::BadString)
        );
    }
}
