//! WASI preview1 over live host directories: `wasmvm_wasi::Wasi` with shares served by the
//! loader's 9P2000.L server, in-process. The platform hands every 9P exchange straight to
//! `Server::handle`, and the app's calls go through `Wasi::call` with a byte-array memory,
//! so this is the guest kernel's path minus the virtio transport.
//!
//! It is one of the root crate's tests because it joins the guest's `wasmvm-wasi` and the
//! host's `wasmvm-loader`, and the loader must not depend on the guest's crate (that would
//! compile the guest's TCP/IP stack into the host binary).

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmvm_loader::host::p9::Server;
use wasmvm_loader::host::p9::wire::{Frame, Rmessage, Tmessage};
use wasmvm_wasi::{Clock, Errno, Func, Platform, Stdio, Wasi};

/// Descriptors of the fixture: an in-memory preopen, share 0 (writable), share 1 (read-only).
const MEM: u32 = 3;
const DATA: u32 = 4;
const RO: u32 = 5;

const SECRET: &[u8] = b"host secret";

// Rights.
const FD_DATASYNC: u64 = 1 << 0;
const FD_READ: u64 = 1 << 1;
const FD_SEEK: u64 = 1 << 2;
const FD_WRITE: u64 = 1 << 6;
const FD_ALLOCATE: u64 = 1 << 8;
const PATH_CREATE_FILE: u64 = 1 << 10;
const FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
const ALL: u64 = (1 << 30) - 1;
/// What wasi-libc asks for `O_RDONLY`.
const READ_ONLY: u64 = ALL & !(FD_WRITE | FD_DATASYNC | FD_ALLOCATE | FD_FILESTAT_SET_SIZE);

// Open flags.
const FOLLOW: u64 = 1;
const CREAT: u32 = 1;
const DIRECTORY: u32 = 2;
const EXCL: u32 = 4;
const TRUNC: u32 = 8;
const APPEND: u16 = 1;

// fst_flags.
const ATIM: u32 = 1;
const ATIM_NOW: u32 = 2;
const MTIM: u32 = 4;
const MTIM_NOW: u32 = 8;

// Filetypes.
const DIR_TYPE: u8 = 3;
const FILE_TYPE: u8 = 4;
const LINK_TYPE: u8 = 7;

// Guest memory layout.
const OUT: u32 = 0;
const IOV: u32 = 64;
const PATH1: u32 = 1024;
const PATH2: u32 = 2048;
const BUF: u32 = 4096;
const MEM_SIZE: usize = 1 << 20;

/// The platform: stdio in buffers, 9P straight into in-process servers, and a count of
/// the fids each server holds, from the messages that make and drop them.
struct Host {
    servers: Vec<Option<Server>>,
    broken: bool,
    exchanges: usize,
    walks: usize,
    writes: usize,
    fids: BTreeSet<(u32, u32)>,
}

impl Host {
    fn track(&mut self, share: u32, request: &[u8], reply: &[u8]) {
        let frame = Frame::new_checked(request).expect("a whole T-message");
        let msg = Tmessage::decode(frame.ty(), frame.body()).expect("a valid T-message");
        let (tag, r) = Rmessage::decode(reply).expect("a valid R-message");
        assert_eq!(tag, frame.tag());
        match (msg, r) {
            (Tmessage::Attach { fid, .. }, Rmessage::Attach { .. }) => {
                self.fids.insert((share, fid));
            }
            (Tmessage::Walk { newfid, names, .. }, r) => {
                self.walks += 1;
                if matches!(r, Rmessage::Walk { qids } if qids.len() == names.len()) {
                    self.fids.insert((share, newfid));
                }
            }
            (Tmessage::Write { .. }, _) => self.writes += 1,
            (Tmessage::Clunk { fid } | Tmessage::Remove { fid }, _) => {
                self.fids.remove(&(share, fid));
            }
            _ => {}
        }
    }

    fn live_fids(&self, share: u32) -> usize {
        self.fids.iter().filter(|(s, _)| *s == share).count()
    }
}

impl Platform for Host {
    fn write(&mut self, _: Stdio, _: &[u8]) {}
    fn read_stdin(&mut self, _: &mut [u8]) -> usize {
        0
    }
    fn now_ns(&mut self, _: Clock) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }
    fn resolution_ns(&self, _: Clock) -> u64 {
        1
    }
    fn random(&mut self, buf: &mut [u8]) {
        buf.fill(4);
    }
    fn p9_transact(&mut self, share: u32, request: &[u8], reply: &mut Vec<u8>) -> bool {
        if self.broken {
            return false;
        }
        let Some(Some(server)) = self.servers.get_mut(share as usize) else {
            return false;
        };
        reply.clear();
        server.handle(request, reply);
        self.exchanges += 1;
        self.track(share, request, reply);
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    filetype: u8,
    nlink: u64,
    size: u64,
    atim: u64,
    mtim: u64,
    ctim: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirent {
    next: u64,
    ino: u64,
    filetype: u8,
    name: String,
}

/// A temporary host tree: `share/` is share 0, `ro/` is share 1 (read-only), and
/// `outside/secret` must stay out of reach. `vm` has them preopened at fds 4 and 5, after
/// an in-memory directory at fd 3.
struct Fixture {
    _tmp: tempfile::TempDir,
    share: PathBuf,
    ro: PathBuf,
    outside: PathBuf,
    w: Wasi<Host>,
    mem: Vec<u8>,
}

fn server(dir: &Path, read_only: bool) -> Server {
    let root: OwnedFd = fs::File::open(dir).unwrap().into();
    Server::new(root, read_only)
}

fn ns_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Opening (read-only, and creating) and stat'ing `path` in the share all give EPERM.
fn assert_open_and_stat_refused(f: &mut Fixture, path: &str) {
    assert_eq!(f.open(DATA, path, 0, READ_ONLY), Err(Errno::PERM), "{path}");
    assert_eq!(
        f.open(DATA, path, CREAT | TRUNC, ALL),
        Err(Errno::PERM),
        "{path}"
    );
    assert_eq!(f.stat(DATA, true, path), Err(Errno::PERM), "{path}");
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let ro = tmp.path().join("ro");
        let outside = tmp.path().join("outside");
        for d in [&share, &ro, &outside] {
            fs::create_dir(d).unwrap();
        }
        fs::write(outside.join("secret"), SECRET).unwrap();
        fs::write(share.join("hello.txt"), b"hello world").unwrap();
        fs::create_dir(share.join("sub")).unwrap();
        fs::write(share.join("sub/inner"), b"inner").unwrap();
        fs::write(ro.join("readme"), b"read me").unwrap();
        fs::create_dir(ro.join("docs")).unwrap();
        let host = Host {
            servers: vec![Some(server(&share, false)), Some(server(&ro, true))],
            broken: false,
            exchanges: 0,
            walks: 0,
            writes: 0,
            fids: BTreeSet::new(),
        };
        let mut w = Wasi::new(host, vec![b"app".to_vec()], Vec::new());
        let root = w.fs().mkdir_all(b"m").unwrap();
        assert_eq!(w.preopen(root, b"/mem"), MEM);
        assert_eq!(w.preopen_share(b"/data", 0), Ok(DATA));
        assert_eq!(w.preopen_share(b"/ro", 1), Ok(RO));
        Fixture {
            _tmp: tmp,
            share,
            ro,
            outside,
            w,
            mem: vec![0; MEM_SIZE],
        }
    }

    fn host(&mut self) -> &mut Host {
        self.w.platform()
    }

    fn call(&mut self, func: Func, args: &[u64]) -> Errno {
        self.w
            .call(func, &mut self.mem, args)
            .expect("no proc_exit")
    }

    fn put(&mut self, at: u32, bytes: &[u8]) -> (u64, u64) {
        self.mem[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        (u64::from(at), bytes.len() as u64)
    }

    fn u32_at(&self, at: u32) -> u32 {
        u32::from_le_bytes(self.mem[at as usize..at as usize + 4].try_into().unwrap())
    }

    fn u64_at(&self, at: u32) -> u64 {
        u64::from_le_bytes(self.mem[at as usize..at as usize + 8].try_into().unwrap())
    }

    fn ok<T>(e: Errno, v: impl FnOnce() -> T) -> Result<T, Errno> {
        if e == Errno::SUCCESS { Ok(v()) } else { Err(e) }
    }

    fn open_with(
        &mut self,
        dir: u32,
        lookup: u64,
        path: &str,
        oflags: u32,
        rights: u64,
        fdflags: u16,
    ) -> Result<u32, Errno> {
        let (p, l) = self.put(PATH1, path.as_bytes());
        let args = [
            u64::from(dir),
            lookup,
            p,
            l,
            u64::from(oflags),
            rights,
            rights,
            u64::from(fdflags),
            u64::from(OUT),
        ];
        let e = self.call(Func::PathOpen, &args);
        Self::ok(e, || self.u32_at(OUT))
    }

    fn open(&mut self, dir: u32, path: &str, oflags: u32, rights: u64) -> Result<u32, Errno> {
        self.open_with(dir, FOLLOW, path, oflags, rights, 0)
    }

    fn set_iov(&mut self, at: u32, len: usize) {
        self.mem[IOV as usize..IOV as usize + 4].copy_from_slice(&at.to_le_bytes());
        self.mem[IOV as usize + 4..IOV as usize + 8].copy_from_slice(&(len as u32).to_le_bytes());
    }

    fn write_at(&mut self, fd: u32, data: &[u8], at: Option<u64>) -> Result<u32, Errno> {
        self.put(BUF, data);
        self.set_iov(BUF, data.len());
        let e = match at {
            None => self.call(Func::FdWrite, &[fd.into(), IOV.into(), 1, OUT.into()]),
            Some(off) => self.call(Func::FdPwrite, &[fd.into(), IOV.into(), 1, off, OUT.into()]),
        };
        Self::ok(e, || self.u32_at(OUT))
    }

    fn write(&mut self, fd: u32, data: &[u8]) -> Result<u32, Errno> {
        self.write_at(fd, data, None)
    }

    fn read_at(&mut self, fd: u32, n: usize, at: Option<u64>) -> Result<Vec<u8>, Errno> {
        self.set_iov(BUF, n);
        let e = match at {
            None => self.call(Func::FdRead, &[fd.into(), IOV.into(), 1, OUT.into()]),
            Some(off) => self.call(Func::FdPread, &[fd.into(), IOV.into(), 1, off, OUT.into()]),
        };
        Self::ok(e, || {
            let got = self.u32_at(OUT) as usize;
            self.mem[BUF as usize..BUF as usize + got].to_vec()
        })
    }

    fn read(&mut self, fd: u32, n: usize) -> Result<Vec<u8>, Errno> {
        self.read_at(fd, n, None)
    }

    fn seek(&mut self, fd: u32, delta: i64, whence: u8) -> Result<u64, Errno> {
        let e = self.call(
            Func::FdSeek,
            &[fd.into(), delta as u64, whence.into(), OUT.into()],
        );
        Self::ok(e, || self.u64_at(OUT))
    }

    fn tell(&mut self, fd: u32) -> Result<u64, Errno> {
        let e = self.call(Func::FdTell, &[fd.into(), OUT.into()]);
        Self::ok(e, || self.u64_at(OUT))
    }

    fn close(&mut self, fd: u32) -> Errno {
        self.call(Func::FdClose, &[fd.into()])
    }

    /// `path_create_directory`, `path_remove_directory`, `path_unlink_file`.
    fn path_call(&mut self, func: Func, fd: u32, path: &str) -> Errno {
        let (p, l) = self.put(PATH1, path.as_bytes());
        self.call(func, &[fd.into(), p, l])
    }

    fn mkdir(&mut self, fd: u32, path: &str) -> Errno {
        self.path_call(Func::PathCreateDirectory, fd, path)
    }

    fn rmdir(&mut self, fd: u32, path: &str) -> Errno {
        self.path_call(Func::PathRemoveDirectory, fd, path)
    }

    fn unlink(&mut self, fd: u32, path: &str) -> Errno {
        self.path_call(Func::PathUnlinkFile, fd, path)
    }

    fn rename(&mut self, fd: u32, old: &str, new_fd: u32, new: &str) -> Errno {
        let (p1, l1) = self.put(PATH1, old.as_bytes());
        let (p2, l2) = self.put(PATH2, new.as_bytes());
        self.call(
            Func::PathRename,
            &[fd.into(), p1, l1, new_fd.into(), p2, l2],
        )
    }

    fn link(&mut self, fd: u32, follow: bool, old: &str, new_fd: u32, new: &str) -> Errno {
        let (p1, l1) = self.put(PATH1, old.as_bytes());
        let (p2, l2) = self.put(PATH2, new.as_bytes());
        self.call(
            Func::PathLink,
            &[fd.into(), u64::from(follow), p1, l1, new_fd.into(), p2, l2],
        )
    }

    fn symlink(&mut self, target: &str, fd: u32, path: &str) -> Errno {
        let (p1, l1) = self.put(PATH1, target.as_bytes());
        let (p2, l2) = self.put(PATH2, path.as_bytes());
        self.call(Func::PathSymlink, &[p1, l1, fd.into(), p2, l2])
    }

    fn readlink(&mut self, fd: u32, path: &str, room: u32) -> Result<Vec<u8>, Errno> {
        let (p, l) = self.put(PATH1, path.as_bytes());
        let e = self.call(
            Func::PathReadlink,
            &[fd.into(), p, l, BUF.into(), room.into(), OUT.into()],
        );
        Self::ok(e, || {
            let n = self.u32_at(OUT) as usize;
            self.mem[BUF as usize..BUF as usize + n].to_vec()
        })
    }

    fn stat_at(&self, at: u32) -> Stat {
        Stat {
            dev: self.u64_at(at),
            ino: self.u64_at(at + 8),
            filetype: self.mem[at as usize + 16],
            nlink: self.u64_at(at + 24),
            size: self.u64_at(at + 32),
            atim: self.u64_at(at + 40),
            mtim: self.u64_at(at + 48),
            ctim: self.u64_at(at + 56),
        }
    }

    fn fstat(&mut self, fd: u32) -> Result<Stat, Errno> {
        let e = self.call(Func::FdFilestatGet, &[fd.into(), OUT.into()]);
        Self::ok(e, || self.stat_at(OUT))
    }

    fn stat(&mut self, fd: u32, follow: bool, path: &str) -> Result<Stat, Errno> {
        let (p, l) = self.put(PATH1, path.as_bytes());
        let e = self.call(
            Func::PathFilestatGet,
            &[fd.into(), u64::from(follow), p, l, OUT.into()],
        );
        Self::ok(e, || self.stat_at(OUT))
    }

    fn set_size(&mut self, fd: u32, size: u64) -> Errno {
        self.call(Func::FdFilestatSetSize, &[fd.into(), size])
    }

    fn set_times(&mut self, fd: u32, atim: u64, mtim: u64, flags: u32) -> Errno {
        self.call(
            Func::FdFilestatSetTimes,
            &[fd.into(), atim, mtim, flags.into()],
        )
    }

    fn path_set_times(&mut self, fd: u32, path: &str, atim: u64, mtim: u64, flags: u32) -> Errno {
        let (p, l) = self.put(PATH1, path.as_bytes());
        self.call(
            Func::PathFilestatSetTimes,
            &[fd.into(), FOLLOW, p, l, atim, mtim, flags.into()],
        )
    }

    /// One `fd_readdir` into a `room`-byte buffer: the bytes it filled.
    fn readdir_raw(&mut self, fd: u32, cookie: u64, room: u32) -> Result<Vec<u8>, Errno> {
        let e = self.call(
            Func::FdReaddir,
            &[fd.into(), BUF.into(), room.into(), cookie, OUT.into()],
        );
        Self::ok(e, || {
            let used = self.u32_at(OUT) as usize;
            self.mem[BUF as usize..BUF as usize + used].to_vec()
        })
    }

    /// The whole directory, read through a small buffer so that cookies must resume.
    fn list(&mut self, fd: u32) -> Result<Vec<Dirent>, Errno> {
        const ROOM: u32 = 80;
        let mut all: Vec<Dirent> = Vec::new();
        let mut cookie = 0;
        loop {
            let buf = self.readdir_raw(fd, cookie, ROOM)?;
            let entries = parse_dirents(&buf);
            if buf.len() < ROOM as usize {
                all.extend(entries);
                return Ok(all);
            }
            let last = entries.last().expect("a buffer fits at least one entry");
            cookie = last.next;
            all.extend(entries);
        }
    }

    fn names(&mut self, fd: u32) -> Vec<String> {
        self.list(fd).unwrap().into_iter().map(|d| d.name).collect()
    }

    /// Every file under `outside/` with its contents: must never change.
    fn outside_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let data = fs::read(&p).unwrap_or_default();
                (p, data)
            })
            .collect();
        v.sort();
        v
    }
}

/// The entries wholly inside an `fd_readdir` buffer.
fn parse_dirents(mut buf: &[u8]) -> Vec<Dirent> {
    let mut out = Vec::new();
    while buf.len() >= 24 {
        let namlen = u32::from_le_bytes(buf[16..20].try_into().unwrap()) as usize;
        if buf.len() < 24 + namlen {
            break;
        }
        out.push(Dirent {
            next: u64::from_le_bytes(buf[0..8].try_into().unwrap()),
            ino: u64::from_le_bytes(buf[8..16].try_into().unwrap()),
            filetype: buf[20],
            name: String::from_utf8(buf[24..24 + namlen].to_vec()).unwrap(),
        });
        buf = &buf[24 + namlen..];
    }
    out
}

#[test]
fn shares_preopen_next_to_memory_with_prestat_names() {
    let mut f = Fixture::new();
    for (fd, name) in [(MEM, "/mem"), (DATA, "/data"), (RO, "/ro")] {
        assert_eq!(f.call(Func::FdPrestatGet, &[fd.into(), 0]), Errno::SUCCESS);
        assert_eq!(f.mem[0], 0, "preopen type dir");
        assert_eq!(f.u32_at(4) as usize, name.len());
        assert_eq!(
            f.call(Func::FdPrestatDirName, &[fd.into(), 16, name.len() as u64]),
            Errno::SUCCESS
        );
        assert_eq!(&f.mem[16..16 + name.len()], name.as_bytes());
        assert_eq!(
            f.call(Func::FdPrestatDirName, &[fd.into(), 16, 2]),
            Errno::NAMETOOLONG
        );
        assert_eq!(f.call(Func::FdFdstatGet, &[fd.into(), 32]), Errno::SUCCESS);
        assert_eq!(f.mem[32], DIR_TYPE);
    }
    assert_eq!(f.call(Func::FdPrestatGet, &[6, 0]), Errno::BADF);
    // The same share preopened again reuses its session.
    let exchanges = f.host().exchanges;
    let again = f.w.preopen_share(b"/again", 0).unwrap();
    assert_eq!(again, 6);
    assert_eq!(
        f.host().exchanges,
        exchanges + 1,
        "one clone walk, no Tversion"
    );
    assert_eq!(f.names(again), f.names(DATA));
    // Each file system has its own device number.
    let devs: BTreeSet<u64> = [MEM, DATA, RO]
        .into_iter()
        .map(|fd| f.fstat(fd).unwrap().dev)
        .collect();
    assert_eq!(devs.len(), 3);
    // Memory stays memory: nothing created there reaches the host.
    assert_eq!(f.mkdir(MEM, "only-in-memory"), Errno::SUCCESS);
    assert!(!f.share.join("only-in-memory").exists());
    assert_eq!(f.names(MEM), [".", "..", "only-in-memory"]);
}

#[test]
fn written_bytes_are_on_the_host_at_once_and_read_back() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "new.txt", CREAT, ALL).unwrap();
    assert_eq!(f.write(fd, b"hello "), Ok(6));
    assert_eq!(fs::read(f.share.join("new.txt")).unwrap(), b"hello ");
    assert_eq!(f.write(fd, b"there"), Ok(5));
    assert_eq!(fs::read(f.share.join("new.txt")).unwrap(), b"hello there");
    assert_eq!(f.tell(fd), Ok(11));
    assert_eq!(f.read(fd, 10), Ok(Vec::new()), "at the end");
    assert_eq!(f.seek(fd, 0, 0), Ok(0));
    assert_eq!(f.read(fd, 5), Ok(b"hello".to_vec()));
    assert_eq!(f.read(fd, 100), Ok(b" there".to_vec()));
    // Changes made on the host are seen at once too.
    fs::write(f.share.join("new.txt"), b"HOST").unwrap();
    assert_eq!(f.read_at(fd, 100, Some(0)), Ok(b"HOST".to_vec()));
    // Reading an existing host file through a subdirectory path.
    let inner = f.open(DATA, "sub/inner", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(inner, 64), Ok(b"inner".to_vec()));
    assert_eq!(
        f.call(Func::FdFdstatGet, &[inner.into(), 32]),
        Errno::SUCCESS
    );
    assert_eq!(f.mem[32], FILE_TYPE);
    // Scatter reads across two iovecs.
    f.mem[IOV as usize..IOV as usize + 16].copy_from_slice(
        &[
            BUF.to_le_bytes(),
            2u32.to_le_bytes(),
            (BUF + 100).to_le_bytes(),
            10u32.to_le_bytes(),
        ]
        .concat(),
    );
    assert_eq!(
        f.call(Func::FdPread, &[inner.into(), IOV.into(), 2, 0, OUT.into()]),
        Errno::SUCCESS
    );
    assert_eq!(f.u32_at(OUT), 5);
    assert_eq!(&f.mem[BUF as usize..BUF as usize + 2], b"in");
    assert_eq!(&f.mem[BUF as usize + 100..BUF as usize + 103], b"ner");
    assert_eq!(f.close(inner), Errno::SUCCESS);
    assert_eq!(f.close(inner), Errno::BADF);
    assert_eq!(f.close(fd), Errno::SUCCESS);
}

#[test]
fn append_mode_always_writes_at_the_end() {
    let mut f = Fixture::new();
    fs::write(f.share.join("log"), b"one\n").unwrap();
    let fd = f.open_with(DATA, FOLLOW, "log", 0, ALL, APPEND).unwrap();
    assert_eq!(f.write(fd, b"two\n"), Ok(4));
    // Someone on the host appends too; the next append goes after it.
    let mut data = fs::read(f.share.join("log")).unwrap();
    data.extend_from_slice(b"host\n");
    fs::write(f.share.join("log"), &data).unwrap();
    assert_eq!(f.write(fd, b"three\n"), Ok(6));
    // fd_pwrite on an append descriptor appends as well, and leaves the offset.
    let before = f.tell(fd).unwrap();
    assert_eq!(f.write_at(fd, b"four\n", Some(0)), Ok(5));
    assert_eq!(f.tell(fd), Ok(before));
    assert_eq!(
        fs::read(f.share.join("log")).unwrap(),
        b"one\ntwo\nhost\nthree\nfour\n"
    );
    // Turning append off (fd_fdstat_set_flags) writes at the offset again.
    assert_eq!(f.seek(fd, 0, 0), Ok(0));
    assert_eq!(
        f.call(Func::FdFdstatSetFlags, &[fd.into(), 0]),
        Errno::SUCCESS
    );
    assert_eq!(f.write(fd, b"ONE"), Ok(3));
    assert!(
        fs::read(f.share.join("log"))
            .unwrap()
            .starts_with(b"ONE\ntwo")
    );
    assert_eq!(
        f.call(Func::FdFdstatSetFlags, &[fd.into(), APPEND.into()]),
        Errno::SUCCESS
    );
    assert_eq!(f.call(Func::FdFdstatGet, &[fd.into(), 32]), Errno::SUCCESS);
    assert_eq!(u16::from_le_bytes([f.mem[34], f.mem[35]]), APPEND);
    assert_eq!(f.write(fd, b"!"), Ok(1));
    assert!(fs::read(f.share.join("log")).unwrap().ends_with(b"four\n!"));
}

#[test]
fn seek_tell_and_positional_io_keep_the_offset() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    assert_eq!(f.seek(fd, 6, 0), Ok(6));
    assert_eq!(f.read_at(fd, 5, Some(0)), Ok(b"hello".to_vec()));
    assert_eq!(f.write_at(fd, b"J", Some(0)), Ok(1));
    assert_eq!(f.tell(fd), Ok(6), "pread and pwrite leave the offset");
    assert_eq!(f.read(fd, 5), Ok(b"world".to_vec()));
    assert_eq!(f.seek(fd, -5, 1), Ok(6));
    assert_eq!(f.seek(fd, -1, 2), Ok(10), "from the host's size");
    fs::write(f.share.join("hello.txt"), b"0123456789abcdef").unwrap();
    assert_eq!(f.seek(fd, 0, 2), Ok(16), "the size is asked each time");
    assert_eq!(f.seek(fd, -17, 2), Err(Errno::INVAL));
    assert_eq!(f.seek(fd, 0, 3), Err(Errno::INVAL));
    // Writing past the end leaves a hole of zeros, as on POSIX.
    assert_eq!(f.write_at(fd, b"Z", Some(20)), Ok(1));
    let data = fs::read(f.share.join("hello.txt")).unwrap();
    assert_eq!(data.len(), 21);
    assert_eq!(&data[16..], &[0, 0, 0, 0, b'Z']);
    // A directory has no offset; stdio cannot seek.
    assert_eq!(f.seek(DATA, 0, 0), Err(Errno::BADF));
    assert_eq!(f.seek(1, 0, 0), Err(Errno::SPIPE));
    // Reading at an offset far beyond the end is an empty read, not an error.
    assert_eq!(f.read_at(fd, 4, Some(u64::MAX)), Ok(Vec::new()));
}

#[test]
fn large_reads_and_writes_go_in_msize_pieces() {
    let mut f = Fixture::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let fd = f.open(DATA, "big", CREAT, ALL).unwrap();
    let writes = f.host().writes;
    assert_eq!(f.write(fd, &data), Ok(data.len() as u32));
    // msize is 128 KiB, so 300 000 bytes take three Twrites.
    assert_eq!(f.host().writes - writes, 3);
    assert_eq!(fs::read(f.share.join("big")).unwrap(), data);
    assert_eq!(f.read_at(fd, data.len() + 10, Some(0)), Ok(data.clone()));
    assert_eq!(f.fstat(fd).unwrap().size, data.len() as u64);
}

#[test]
fn readdir_lists_dot_entries_then_names_in_order_with_cookies() {
    let mut f = Fixture::new();
    for name in ["zeta", "alpha", "mid"] {
        fs::write(f.share.join(name), name).unwrap();
    }
    symlink("alpha", f.share.join("lnk")).unwrap();
    let list = f.list(DATA).unwrap();
    let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [".", "..", "alpha", "hello.txt", "lnk", "mid", "sub", "zeta"]
    );
    // Cookies count entries, like the in-memory filesystem's.
    let nexts: Vec<u64> = list.iter().map(|d| d.next).collect();
    assert_eq!(nexts, (1..=8).collect::<Vec<u64>>());
    let types: Vec<u8> = list.iter().map(|d| d.filetype).collect();
    assert_eq!(
        types,
        [
            DIR_TYPE, DIR_TYPE, FILE_TYPE, FILE_TYPE, LINK_TYPE, FILE_TYPE, DIR_TYPE, FILE_TYPE
        ]
    );
    let alpha = fs::symlink_metadata(f.share.join("alpha")).unwrap().ino();
    assert_eq!(list[2].ino, alpha);
    assert_eq!(list[0].ino, fs::metadata(&f.share).unwrap().ino());
    // Resuming after the first two entries.
    let rest = parse_dirents(&f.readdir_raw(DATA, 2, 4096).unwrap());
    assert_eq!(rest[0].name, "alpha");
    assert_eq!(rest.len(), 6);
    // A cookie past the end is an empty read.
    assert_eq!(f.readdir_raw(DATA, 99, 4096), Ok(Vec::new()));
    // A buffer too small for one entry is filled to the brim (the caller grows it).
    assert_eq!(f.readdir_raw(DATA, 0, 10).unwrap().len(), 10);
    // A subdirectory's `..` is its parent.
    let sub = f.open(DATA, "sub", DIRECTORY, READ_ONLY).unwrap();
    let list = f.list(sub).unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[1].name, "..");
    assert_eq!(list[1].ino, fs::metadata(&f.share).unwrap().ino());
    assert_eq!(list[2].name, "inner");
    // Files are not directories; stdio is neither.
    let file = f.open(DATA, "alpha", 0, READ_ONLY).unwrap();
    assert_eq!(f.readdir_raw(file, 0, 100), Err(Errno::NOTDIR));
    assert_eq!(f.readdir_raw(1, 0, 100), Err(Errno::BADF));
}

#[test]
fn readdir_from_cookie_zero_sees_what_the_host_just_made() {
    let mut f = Fixture::new();
    assert_eq!(f.names(DATA), [".", "..", "hello.txt", "sub"]);
    fs::write(f.share.join("fresh"), b"").unwrap();
    fs::remove_file(f.share.join("hello.txt")).unwrap();
    assert_eq!(f.names(DATA), [".", "..", "fresh", "sub"]);
    // Files created through WASI show up the same way.
    let fd = f.open(DATA, "sub/made", CREAT, ALL).unwrap();
    f.close(fd);
    let sub = f.open(DATA, "sub", DIRECTORY, READ_ONLY).unwrap();
    assert_eq!(f.names(sub), [".", "..", "inner", "made"]);
}

#[test]
fn directories_are_made_and_removed_with_posix_errors() {
    let mut f = Fixture::new();
    assert_eq!(f.mkdir(DATA, "d"), Errno::SUCCESS);
    assert!(f.share.join("d").is_dir());
    assert_eq!(f.mkdir(DATA, "d"), Errno::EXIST);
    assert_eq!(
        f.mkdir(DATA, "d/e/"),
        Errno::SUCCESS,
        "a trailing slash is fine"
    );
    assert!(f.share.join("d/e").is_dir());
    assert_eq!(f.mkdir(DATA, "nope/x"), Errno::NOENT);
    assert_eq!(f.mkdir(DATA, "hello.txt/x"), Errno::NOTDIR);
    assert_eq!(f.mkdir(DATA, "."), Errno::EXIST);
    let fd = f.open(DATA, "d/e/f", CREAT, ALL).unwrap();
    f.close(fd);
    assert_eq!(f.rmdir(DATA, "d/e"), Errno::NOTEMPTY);
    assert_eq!(f.rmdir(DATA, "d/e/f"), Errno::NOTDIR);
    assert_eq!(f.unlink(DATA, "d/e"), Errno::ISDIR);
    assert_eq!(f.unlink(DATA, "d/e/f/"), Errno::NOTDIR);
    assert_eq!(f.unlink(DATA, "d/e/"), Errno::ISDIR);
    assert_eq!(f.unlink(DATA, "d/e/missing"), Errno::NOENT);
    assert_eq!(f.rmdir(DATA, "."), Errno::INVAL);
    assert_eq!(f.rmdir(DATA, "d/.."), Errno::INVAL);
    assert_eq!(f.unlink(DATA, "d/e/f"), Errno::SUCCESS);
    assert!(!f.share.join("d/e/f").exists());
    assert_eq!(f.rmdir(DATA, "d/e/"), Errno::SUCCESS);
    assert_eq!(f.rmdir(DATA, "d"), Errno::SUCCESS);
    assert!(!f.share.join("d").exists());
    // Host-made files are removable too.
    assert_eq!(f.unlink(DATA, "sub/inner"), Errno::SUCCESS);
    assert!(!f.share.join("sub/inner").exists());
}

#[test]
fn an_open_file_outlives_its_name() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    assert_eq!(f.unlink(DATA, "hello.txt"), Errno::SUCCESS);
    assert!(!f.share.join("hello.txt").exists());
    assert_eq!(f.read(fd, 64), Ok(b"hello world".to_vec()));
    assert_eq!(f.write(fd, b"!"), Ok(1));
    assert_eq!(f.fstat(fd).unwrap().nlink, 0);
    assert_eq!(f.close(fd), Errno::SUCCESS);
}

#[test]
fn rename_moves_within_a_share_and_refuses_other_file_systems() {
    let mut f = Fixture::new();
    assert_eq!(
        f.rename(DATA, "hello.txt", DATA, "sub/moved"),
        Errno::SUCCESS
    );
    assert!(!f.share.join("hello.txt").exists());
    assert_eq!(fs::read(f.share.join("sub/moved")).unwrap(), b"hello world");
    // An open descriptor follows its file.
    let fd = f.open(DATA, "sub/moved", 0, ALL).unwrap();
    assert_eq!(f.rename(DATA, "sub", DATA, "sub2"), Errno::SUCCESS);
    assert_eq!(f.read(fd, 5), Ok(b"hello".to_vec()));
    assert!(f.share.join("sub2/moved").exists());
    // POSIX rules, as in memory.
    assert_eq!(f.mkdir(DATA, "dir"), Errno::SUCCESS);
    assert_eq!(f.rename(DATA, "sub2/moved", DATA, "dir"), Errno::ISDIR);
    assert_eq!(f.rename(DATA, "dir", DATA, "sub2/moved"), Errno::NOTDIR);
    assert_eq!(f.rename(DATA, "dir", DATA, "dir/inside"), Errno::INVAL);
    assert_eq!(
        f.rename(DATA, "sub2", DATA, "dir"),
        Errno::SUCCESS,
        "onto an empty dir"
    );
    assert_eq!(f.rename(DATA, "missing", DATA, "x"), Errno::NOENT);
    assert_eq!(f.rename(DATA, "dir/moved/", DATA, "x"), Errno::NOTDIR);
    assert_eq!(f.rename(DATA, ".", DATA, "x"), Errno::BUSY);
    assert_eq!(f.rename(DATA, "..", DATA, "x"), Errno::PERM);
    assert_eq!(f.rename(DATA, "dir/moved", DATA, "../x"), Errno::PERM);
    // Across shares, and between a share and memory: different file systems.
    assert_eq!(f.rename(DATA, "dir/moved", RO, "moved"), Errno::XDEV);
    assert_eq!(f.rename(DATA, "dir/moved", MEM, "moved"), Errno::XDEV);
    assert_eq!(f.rename(MEM, ".", DATA, "x"), Errno::XDEV);
    let again = f.w.preopen_share(b"/again", 0).unwrap();
    assert_eq!(
        f.rename(DATA, "dir/moved", again, "back"),
        Errno::SUCCESS,
        "two descriptors of one share are one file system"
    );
    assert_eq!(fs::read(f.share.join("back")).unwrap(), b"hello world");
}

#[test]
fn hard_links_share_the_inode() {
    let mut f = Fixture::new();
    assert_eq!(
        f.link(DATA, false, "hello.txt", DATA, "sub/hard"),
        Errno::SUCCESS
    );
    let host = fs::metadata(f.share.join("sub/hard")).unwrap();
    assert_eq!(host.nlink(), 2);
    assert_eq!(
        host.ino(),
        fs::metadata(f.share.join("hello.txt")).unwrap().ino()
    );
    let st = f.stat(DATA, false, "sub/hard").unwrap();
    assert_eq!((st.nlink, st.ino, st.filetype), (2, host.ino(), FILE_TYPE));
    assert_eq!(
        f.link(DATA, false, "hello.txt", DATA, "sub/hard"),
        Errno::EXIST
    );
    assert_eq!(f.link(DATA, false, "sub", DATA, "sub-link"), Errno::PERM);
    assert_eq!(f.link(DATA, false, "missing", DATA, "x"), Errno::NOENT);
    assert_eq!(f.link(DATA, false, "hello.txt", DATA, "x/"), Errno::NOENT);
    assert_eq!(f.link(DATA, false, "hello.txt", RO, "x"), Errno::XDEV);
    assert_eq!(f.link(DATA, false, "hello.txt", MEM, "x"), Errno::XDEV);
    // With SYMLINK_FOLLOW a link to a symlink links its target.
    assert_eq!(f.symlink("hello.txt", DATA, "soft"), Errno::SUCCESS);
    assert_eq!(f.link(DATA, true, "soft", DATA, "via-soft"), Errno::SUCCESS);
    assert!(
        fs::symlink_metadata(f.share.join("via-soft"))
            .unwrap()
            .is_file()
    );
    assert_eq!(f.link(DATA, false, "soft", DATA, "soft2"), Errno::SUCCESS);
    assert!(
        fs::symlink_metadata(f.share.join("soft2"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn symlinks_are_made_read_and_followed_inside_the_share() {
    let mut f = Fixture::new();
    assert_eq!(f.symlink("sub/inner", DATA, "to-inner"), Errno::SUCCESS);
    assert_eq!(
        fs::read_link(f.share.join("to-inner")).unwrap(),
        Path::new("sub/inner")
    );
    assert_eq!(f.readlink(DATA, "to-inner", 64), Ok(b"sub/inner".to_vec()));
    assert_eq!(
        f.readlink(DATA, "to-inner", 3),
        Ok(b"sub".to_vec()),
        "truncated"
    );
    assert_eq!(f.readlink(DATA, "hello.txt", 64), Err(Errno::INVAL));
    assert_eq!(f.readlink(DATA, "missing", 64), Err(Errno::NOENT));
    // Followed when opening, or not.
    let fd = f.open(DATA, "to-inner", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 64), Ok(b"inner".to_vec()));
    assert_eq!(
        f.open_with(DATA, 0, "to-inner", 0, READ_ONLY, 0),
        Err(Errno::LOOP)
    );
    assert_eq!(f.stat(DATA, false, "to-inner").unwrap().filetype, LINK_TYPE);
    assert_eq!(f.stat(DATA, false, "to-inner").unwrap().size, 9);
    assert_eq!(f.stat(DATA, true, "to-inner").unwrap().filetype, FILE_TYPE);
    // Links to directories, links with `..` that stay inside, chains.
    assert_eq!(f.symlink("sub", DATA, "dirlink"), Errno::SUCCESS);
    assert_eq!(f.symlink("../hello.txt", DATA, "sub/up"), Errno::SUCCESS);
    assert_eq!(f.symlink("dirlink/up", DATA, "chain"), Errno::SUCCESS);
    let fd = f.open(DATA, "dirlink/inner", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 64), Ok(b"inner".to_vec()));
    let fd = f.open(DATA, "chain", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 64), Ok(b"hello world".to_vec()));
    assert_eq!(f.stat(DATA, false, "dirlink/").unwrap().filetype, DIR_TYPE);
    assert_eq!(f.open(DATA, "to-inner/", 0, READ_ONLY), Err(Errno::NOTDIR));
    // Loops end in ELOOP.
    assert_eq!(f.symlink("loop", DATA, "loop"), Errno::SUCCESS);
    assert_eq!(f.open(DATA, "loop", 0, READ_ONLY), Err(Errno::LOOP));
    for i in 0..40 {
        let target = format!("c{}", i + 1);
        assert_eq!(f.symlink(&target, DATA, &format!("c{i}")), Errno::SUCCESS);
    }
    fs::write(f.share.join("c40"), b"end").unwrap();
    assert_eq!(f.open(DATA, "c8", 0, READ_ONLY).map(drop), Ok(()));
    assert_eq!(f.open(DATA, "c0", 0, READ_ONLY), Err(Errno::LOOP));
    // Existing names, absolute targets, trailing slashes.
    assert_eq!(f.symlink("x", DATA, "hello.txt"), Errno::EXIST);
    assert_eq!(f.symlink("/etc/passwd", DATA, "abs"), Errno::PERM);
    assert!(fs::symlink_metadata(f.share.join("abs")).is_err());
    assert_eq!(f.symlink("x", DATA, "hello.txt/"), Errno::EXIST);
    assert_eq!(f.symlink("x", DATA, "nothing/"), Errno::NOENT);
    // O_CREAT through a dangling link: the link's name exists.
    assert_eq!(f.symlink("not-yet", DATA, "dangling"), Errno::SUCCESS);
    assert_eq!(f.open(DATA, "dangling", CREAT, ALL), Err(Errno::EXIST));
    assert!(!f.share.join("not-yet").exists());
}

#[test]
fn filestat_reports_the_hosts_types_sizes_and_times() {
    let mut f = Fixture::new();
    let host = fs::metadata(f.share.join("hello.txt")).unwrap();
    let st = f.stat(DATA, true, "hello.txt").unwrap();
    assert_eq!(st.filetype, FILE_TYPE);
    assert_eq!(st.size, 11);
    assert_eq!(st.ino, host.ino());
    assert_eq!(st.nlink, 1);
    assert_eq!(st.mtim, ns_of(host.modified().unwrap()));
    assert_eq!(st.atim, ns_of(host.accessed().unwrap()));
    assert_eq!(
        st.ctim,
        host.ctime() as u64 * 1_000_000_000 + host.ctime_nsec() as u64
    );
    let fd = f.open(DATA, "hello.txt", 0, READ_ONLY).unwrap();
    assert_eq!(f.fstat(fd), Ok(st), "fd and path agree");
    let dir = f.fstat(DATA).unwrap();
    assert_eq!(dir.filetype, DIR_TYPE);
    assert_eq!(dir.ino, fs::metadata(&f.share).unwrap().ino());
    assert_eq!(dir.nlink, fs::metadata(&f.share).unwrap().nlink());
    assert_eq!(f.stat(DATA, true, "sub").unwrap().filetype, DIR_TYPE);
    assert_eq!(f.stat(DATA, true, ".").unwrap().ino, dir.ino);
    assert_eq!(f.stat(DATA, true, "sub/..").unwrap().ino, dir.ino);
    assert_eq!(f.stat(DATA, true, "missing"), Err(Errno::NOENT));
    assert_eq!(f.stat(DATA, true, "hello.txt/"), Err(Errno::NOTDIR));
    assert_eq!(f.stat(DATA, true, "hello.txt/x"), Err(Errno::NOTDIR));
    assert_eq!(f.stat(DATA, true, ""), Err(Errno::NOENT));
    // Stdio is a character device.
    assert_eq!(f.fstat(1).unwrap().filetype, 2);
}

#[test]
fn set_size_and_allocate_change_the_host_file() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    assert_eq!(f.set_size(fd, 5), Errno::SUCCESS);
    assert_eq!(fs::read(f.share.join("hello.txt")).unwrap(), b"hello");
    assert_eq!(f.set_size(fd, 8), Errno::SUCCESS);
    assert_eq!(fs::read(f.share.join("hello.txt")).unwrap(), b"hello\0\0\0");
    assert_eq!(
        f.call(Func::FdAllocate, &[fd.into(), 10, 10]),
        Errno::SUCCESS
    );
    assert_eq!(fs::metadata(f.share.join("hello.txt")).unwrap().len(), 20);
    assert_eq!(f.call(Func::FdAllocate, &[fd.into(), 0, 4]), Errno::SUCCESS);
    assert_eq!(
        fs::metadata(f.share.join("hello.txt")).unwrap().len(),
        20,
        "never shrinks"
    );
    assert_eq!(f.set_size(fd, u64::MAX), Errno::FBIG);
    assert_eq!(f.set_size(DATA, 0), Errno::BADF);
    // Without FD_FILESTAT_SET_SIZE.
    let ro = f.open(DATA, "hello.txt", 0, READ_ONLY).unwrap();
    assert_eq!(f.set_size(ro, 0), Errno::BADF);
    assert_eq!(fs::metadata(f.share.join("hello.txt")).unwrap().len(), 20);
}

#[test]
fn set_times_with_values_and_now() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    let (atim, mtim) = (1_000_000_123, 2_000_000_456);
    assert_eq!(f.set_times(fd, atim, mtim, ATIM | MTIM), Errno::SUCCESS);
    let host = fs::metadata(f.share.join("hello.txt")).unwrap();
    assert_eq!((host.atime(), host.atime_nsec()), (1, 123));
    assert_eq!((host.mtime(), host.mtime_nsec()), (2, 456));
    let st = f.fstat(fd).unwrap();
    assert_eq!((st.atim, st.mtim), (atim, mtim));
    // Only mtime, to the host's now; atime stays.
    let before = ns_of(SystemTime::now());
    assert_eq!(
        f.path_set_times(DATA, "hello.txt", 0, 0, MTIM_NOW),
        Errno::SUCCESS
    );
    let st = f.fstat(fd).unwrap();
    assert_eq!(st.atim, atim);
    assert!(st.mtim >= before - 1_000_000_000 && st.mtim <= ns_of(SystemTime::now()));
    assert_eq!(
        f.path_set_times(DATA, "sub", 0, 0, ATIM_NOW),
        Errno::SUCCESS
    );
    assert!(f.stat(DATA, true, "sub").unwrap().atim >= before - 1_000_000_000);
    // On the directory descriptor itself.
    assert_eq!(f.set_times(DATA, 5, 7, ATIM | MTIM), Errno::SUCCESS);
    let root = fs::metadata(&f.share).unwrap();
    assert_eq!((root.atime_nsec(), root.mtime_nsec()), (5, 7));
    // Contradictory or unknown flags, and missing paths.
    assert_eq!(f.set_times(fd, 0, 0, MTIM | MTIM_NOW), Errno::INVAL);
    assert_eq!(f.set_times(fd, 0, 0, 1 << 4), Errno::INVAL);
    assert_eq!(f.path_set_times(DATA, "missing", 0, 0, MTIM), Errno::NOENT);
    assert_eq!(
        f.set_times(fd, 0, 0, 0),
        Errno::SUCCESS,
        "nothing to change"
    );
}

#[test]
fn open_flags_excl_trunc_and_directory() {
    let mut f = Fixture::new();
    assert_eq!(
        f.open(DATA, "hello.txt", CREAT | EXCL, ALL),
        Err(Errno::EXIST)
    );
    assert_eq!(f.open(DATA, "sub", CREAT | EXCL, ALL), Err(Errno::EXIST));
    let fd = f.open(DATA, "excl", CREAT | EXCL, ALL).unwrap();
    assert!(f.share.join("excl").is_file());
    f.close(fd);
    let fd = f.open(DATA, "hello.txt", TRUNC, ALL).unwrap();
    assert_eq!(fs::metadata(f.share.join("hello.txt")).unwrap().len(), 0);
    assert_eq!(f.write(fd, b"new"), Ok(3));
    // O_TRUNC empties the file even for a descriptor that may only read it.
    let fd = f.open(DATA, "hello.txt", TRUNC, READ_ONLY).unwrap();
    assert_eq!(fs::metadata(f.share.join("hello.txt")).unwrap().len(), 0);
    assert_eq!(f.read(fd, 10), Ok(Vec::new()));
    // O_CREAT on an existing file opens it as it is.
    fs::write(f.share.join("hello.txt"), b"kept").unwrap();
    let fd = f.open(DATA, "hello.txt", CREAT, ALL).unwrap();
    assert_eq!(f.read(fd, 10), Ok(b"kept".to_vec()));
    assert_eq!(
        f.open(DATA, "hello.txt", DIRECTORY, READ_ONLY),
        Err(Errno::NOTDIR)
    );
    assert_eq!(
        f.open(DATA, "sub", 0, ALL),
        Err(Errno::ISDIR),
        "write rights"
    );
    assert_eq!(f.open(DATA, "sub", TRUNC, READ_ONLY), Err(Errno::ISDIR));
    assert_eq!(f.open(DATA, "missing", 0, READ_ONLY), Err(Errno::NOENT));
    assert_eq!(f.open(DATA, "missing/", CREAT, ALL), Err(Errno::ISDIR));
    assert_eq!(
        f.open(DATA, "new-dir", CREAT | DIRECTORY, ALL),
        Err(Errno::ISDIR)
    );
    assert_eq!(f.open(DATA, "nodir/file", CREAT, ALL), Err(Errno::NOENT));
    assert_eq!(
        f.open(DATA, "hello.txt/file", CREAT, ALL),
        Err(Errno::NOTDIR)
    );
    assert_eq!(f.open(DATA, "sub/", CREAT, READ_ONLY).map(drop), Ok(()));
    assert_eq!(f.open(DATA, "..", CREAT, ALL), Err(Errno::PERM));
    assert!(!f.share.join("missing").exists() && !f.share.join("new-dir").exists());
    // Bad flags are checked before anything reaches the host.
    let exchanges = f.host().exchanges;
    assert_eq!(f.open(DATA, "x", 1 << 4, ALL), Err(Errno::INVAL));
    assert_eq!(f.host().exchanges, exchanges);
    // A directory opened from the share is a base for more paths.
    let sub = f.open(DATA, "sub", DIRECTORY, READ_ONLY).unwrap();
    let fd = f.open(sub, "inner", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 10), Ok(b"inner".to_vec()));
    assert_eq!(f.call(Func::FdFdstatGet, &[sub.into(), 32]), Errno::SUCCESS);
    assert_eq!(f.mem[32], DIR_TYPE);
}

#[test]
fn rights_are_enforced_as_for_memory_files() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, READ_ONLY).unwrap();
    assert_eq!(f.write(fd, b"nope"), Err(Errno::BADF));
    assert_eq!(f.write_at(fd, b"nope", Some(0)), Err(Errno::BADF));
    assert_eq!(fs::read(f.share.join("hello.txt")).unwrap(), b"hello world");
    assert_eq!(f.read(fd, 5), Ok(b"hello".to_vec()));
    // Write-only: no reads.
    let wo = f.open(DATA, "hello.txt", 0, FD_WRITE | FD_SEEK).unwrap();
    assert_eq!(f.read(wo, 5), Err(Errno::BADF));
    assert_eq!(f.write(wo, b"J"), Ok(1));
    assert_eq!(fs::read(f.share.join("hello.txt")).unwrap(), b"Jello world");
    // Rights only shrink, and what was taken away is refused.
    let rw = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    assert_eq!(
        f.call(Func::FdFdstatSetRights, &[rw.into(), FD_READ, 0]),
        Errno::SUCCESS
    );
    assert_eq!(f.write(rw, b"x"), Err(Errno::BADF));
    assert_eq!(
        f.call(Func::FdFdstatSetRights, &[rw.into(), ALL, 0]),
        Errno::NOTCAPABLE
    );
    // A directory without PATH_CREATE_FILE cannot create.
    let sub = f
        .open(DATA, "sub", DIRECTORY, READ_ONLY & !PATH_CREATE_FILE)
        .unwrap();
    assert_eq!(f.open(sub, "new", CREAT, ALL), Err(Errno::NOTCAPABLE));
    assert!(!f.share.join("sub/new").exists());
    // Directories neither read nor write bytes.
    assert_eq!(
        f.read(DATA, 5),
        Err(Errno::BADF),
        "no FD_READ on a directory"
    );
    assert_eq!(f.write(sub, b"x"), Err(Errno::BADF));
}

#[test]
fn the_read_only_share_refuses_every_change() {
    let mut f = Fixture::new();
    let before = fs::read(f.ro.join("readme")).unwrap();
    let fd = f.open(RO, "readme", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 64), Ok(b"read me".to_vec()));
    assert_eq!(f.names(RO), [".", "..", "docs", "readme"]);
    assert_eq!(f.open(RO, "readme", 0, ALL), Err(Errno::ROFS));
    assert_eq!(f.open(RO, "new", CREAT, ALL), Err(Errno::ROFS));
    assert_eq!(f.open(RO, "readme", TRUNC, READ_ONLY), Err(Errno::ROFS));
    assert_eq!(f.mkdir(RO, "d"), Errno::ROFS);
    assert_eq!(f.rmdir(RO, "docs"), Errno::ROFS);
    assert_eq!(f.unlink(RO, "readme"), Errno::ROFS);
    assert_eq!(f.rename(RO, "readme", RO, "other"), Errno::ROFS);
    assert_eq!(f.link(RO, false, "readme", RO, "other"), Errno::ROFS);
    assert_eq!(f.symlink("readme", RO, "lnk"), Errno::ROFS);
    assert_eq!(f.set_times(fd, 1, 1, ATIM | MTIM), Errno::ROFS);
    assert_eq!(f.path_set_times(RO, "docs", 1, 1, MTIM), Errno::ROFS);
    assert_eq!(f.set_size(fd, 0), Errno::BADF, "rights are checked first");
    assert_eq!(fs::read(f.ro.join("readme")).unwrap(), before);
    assert_eq!(fs::read_dir(&f.ro).unwrap().count(), 2, "nothing made");
}

#[test]
fn dotdot_and_absolute_paths_cannot_leave_the_share() {
    let mut f = Fixture::new();
    let snapshot = f.outside_snapshot();
    for path in [
        "../outside/secret",
        "/etc/passwd",
        "sub/../../outside/secret",
        "..",
        "sub/../..",
    ] {
        assert_open_and_stat_refused(&mut f, path);
    }
    assert_eq!(f.mkdir(DATA, "../evil"), Errno::PERM);
    assert_eq!(f.unlink(DATA, "../outside/secret"), Errno::PERM);
    assert_eq!(
        f.rename(DATA, "hello.txt", DATA, "../outside/secret"),
        Errno::PERM
    );
    assert_eq!(
        f.link(DATA, false, "hello.txt", DATA, "../outside/x"),
        Errno::PERM
    );
    assert_eq!(f.symlink("x", DATA, "../outside/x"), Errno::PERM);
    assert_eq!(f.readlink(DATA, "../outside/secret", 64), Err(Errno::PERM));
    // `..` that stays inside is fine.
    let fd = f.open(DATA, "sub/../hello.txt", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 5), Ok(b"hello".to_vec()));
    // Beneath an opened subdirectory, `..` may not climb above it (as wasmtime).
    let sub = f.open(DATA, "sub", DIRECTORY, READ_ONLY).unwrap();
    assert_eq!(f.open(sub, "../hello.txt", 0, READ_ONLY), Err(Errno::PERM));
    assert_eq!(f.stat(sub, false, ".."), Err(Errno::PERM));
    assert_eq!(f.outside_snapshot(), snapshot);
    assert!(!f.outside.join("x").exists() && !f.outside.parent().unwrap().join("evil").exists());
}

#[test]
fn host_symlinks_pointing_outside_are_refused() {
    let mut f = Fixture::new();
    let snapshot = f.outside_snapshot();
    let secret = f.outside.join("secret");
    symlink("/etc", f.share.join("etc")).unwrap();
    symlink(&secret, f.share.join("abs-secret")).unwrap();
    symlink("../outside/secret", f.share.join("rel-secret")).unwrap();
    symlink("../outside", f.share.join("outdir")).unwrap();
    symlink("../../outside/secret", f.share.join("sub/deep")).unwrap();
    symlink("sub/../../outside", f.share.join("sneaky")).unwrap();
    for path in [
        "etc/passwd",
        "abs-secret",
        "rel-secret",
        "outdir/secret",
        "sub/deep",
        "sneaky/secret",
    ] {
        assert_open_and_stat_refused(&mut f, path);
        assert_eq!(
            f.path_set_times(DATA, path, 1, 1, ATIM | MTIM),
            Errno::PERM,
            "{path}"
        );
        assert_eq!(
            f.link(DATA, true, path, DATA, "stolen"),
            Errno::PERM,
            "{path}"
        );
    }
    assert_eq!(f.mkdir(DATA, "outdir/new"), Errno::PERM);
    assert_eq!(f.unlink(DATA, "outdir/secret"), Errno::PERM);
    assert_eq!(
        f.rename(DATA, "hello.txt", DATA, "outdir/secret"),
        Errno::PERM
    );
    assert_eq!(f.symlink("x", DATA, "outdir/x"), Errno::PERM);
    // The links themselves are ordinary entries: seen, read as text, removed.
    assert_eq!(
        f.stat(DATA, false, "abs-secret").unwrap().filetype,
        LINK_TYPE
    );
    assert_eq!(
        f.readlink(DATA, "rel-secret", 64),
        Ok(b"../outside/secret".to_vec())
    );
    assert_eq!(f.unlink(DATA, "abs-secret"), Errno::SUCCESS);
    assert!(secret.exists());
    assert_eq!(f.outside_snapshot(), snapshot);
    assert_eq!(fs::read(&secret).unwrap(), SECRET);
    assert!(!f.share.join("stolen").exists());
}

#[test]
fn a_failed_transport_is_eio_and_never_a_panic() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    f.host().broken = true;
    assert_eq!(f.read(fd, 5), Err(Errno::IO));
    assert_eq!(f.write(fd, b"x"), Err(Errno::IO));
    assert_eq!(f.fstat(fd), Err(Errno::IO));
    assert_eq!(f.seek(fd, 0, 2), Err(Errno::IO));
    assert_eq!(f.tell(fd), Ok(0), "the offset lives on this side");
    assert_eq!(f.open(DATA, "hello.txt", 0, ALL), Err(Errno::IO));
    assert_eq!(f.mkdir(DATA, "d"), Errno::IO);
    assert_eq!(f.readdir_raw(DATA, 0, 100), Err(Errno::IO));
    assert_eq!(f.call(Func::FdSync, &[fd.into()]), Errno::IO);
    assert_eq!(f.rename(DATA, "a", DATA, "b"), Errno::IO);
    // Memory preopens are unaffected.
    assert_eq!(f.mkdir(MEM, "d"), Errno::SUCCESS);
    // No such share at all.
    f.host().broken = false;
    assert_eq!(f.w.preopen_share(b"/nope", 9), Err(Errno::IO));
    // Once the transport is back, the same descriptors work again.
    assert_eq!(f.read(fd, 5), Ok(b"hello".to_vec()));
    // Closing while the transport is down still closes.
    f.host().broken = true;
    assert_eq!(f.close(fd), Errno::SUCCESS);
    assert_eq!(f.close(fd), Errno::BADF);
}

#[test]
fn fids_are_clunked_so_none_pile_up() {
    let mut f = Fixture::new();
    // Root and preopen clone per share.
    assert_eq!(f.host().live_fids(0), 2);
    assert_eq!(f.host().live_fids(1), 2);
    for _ in 0..20 {
        let fd = f.open(DATA, "sub/../sub/inner", 0, READ_ONLY).unwrap();
        f.read(fd, 3).unwrap();
        assert_eq!(f.close(fd), Errno::SUCCESS);
    }
    symlink("sub", f.share.join("l1")).unwrap();
    symlink("l1/inner", f.share.join("l2")).unwrap();
    symlink("../outside", f.share.join("out")).unwrap();
    for _ in 0..10 {
        f.stat(DATA, true, "l2").unwrap();
        f.stat(DATA, true, "out/secret").unwrap_err();
        f.stat(DATA, true, "hello.txt/x").unwrap_err();
        f.stat(DATA, true, "sub/missing").unwrap_err();
        f.open(DATA, "missing/deeper/path", 0, READ_ONLY)
            .unwrap_err();
        f.list(DATA).unwrap();
        assert_eq!(f.mkdir(DATA, "l1/d"), Errno::SUCCESS);
        assert_eq!(f.rename(DATA, "l1/d", DATA, "sub/e"), Errno::SUCCESS);
        assert_eq!(f.rmdir(DATA, "sub/e"), Errno::SUCCESS);
        f.open(DATA, "fresh", CREAT | EXCL, ALL)
            .map(|fd| f.close(fd))
            .unwrap();
        assert_eq!(f.unlink(DATA, "fresh"), Errno::SUCCESS);
        f.readlink(DATA, "l2", 10).unwrap();
    }
    assert_eq!(f.host().live_fids(0), 2);
    // Renumbering onto a share descriptor gives back the replaced one's fid.
    let a = f.open(DATA, "hello.txt", 0, READ_ONLY).unwrap();
    let b = f.open(DATA, "sub", DIRECTORY, READ_ONLY).unwrap();
    f.list(b).unwrap();
    assert_eq!(f.host().live_fids(0), 4);
    assert_eq!(
        f.call(Func::FdRenumber, &[a.into(), b.into()]),
        Errno::SUCCESS
    );
    assert_eq!(f.host().live_fids(0), 3);
    assert_eq!(f.read(b, 5), Ok(b"hello".to_vec()));
    assert_eq!(f.close(b), Errno::SUCCESS);
    assert_eq!(f.close(DATA), Errno::SUCCESS);
    assert_eq!(f.host().live_fids(0), 1, "only the session's root");
}

#[test]
fn plain_paths_take_one_walk() {
    let mut f = Fixture::new();
    fs::create_dir_all(f.share.join("a/b/c/d")).unwrap();
    fs::write(f.share.join("a/b/c/d/f"), b"deep").unwrap();
    let walks = f.host().walks;
    let fd = f.open(DATA, "a/b/c/d/f", 0, READ_ONLY).unwrap();
    assert_eq!(f.host().walks - walks, 1);
    assert_eq!(f.read(fd, 10), Ok(b"deep".to_vec()));
    // A symlink in the middle costs a few more, and still resolves.
    symlink("b/c", f.share.join("a/bc")).unwrap();
    let fd = f.open(DATA, "a/bc/d/f", 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 10), Ok(b"deep".to_vec()));
    // More names than one Twalk carries (16).
    let long = ["a/b/c/d/../../../.."; 3].join("/") + "/a/b/c/d/f";
    let fd = f.open(DATA, &long, 0, READ_ONLY).unwrap();
    assert_eq!(f.read(fd, 10), Ok(b"deep".to_vec()));
    assert_eq!(
        f.open(DATA, "a/b/c/d/../../../../..", 0, READ_ONLY),
        Err(Errno::PERM)
    );
}

#[test]
fn sync_poll_and_advice_on_share_descriptors() {
    let mut f = Fixture::new();
    let fd = f.open(DATA, "hello.txt", 0, ALL).unwrap();
    assert_eq!(f.call(Func::FdSync, &[fd.into()]), Errno::SUCCESS);
    assert_eq!(f.call(Func::FdDatasync, &[fd.into()]), Errno::SUCCESS);
    assert_eq!(f.call(Func::FdSync, &[DATA.into()]), Errno::SUCCESS);
    assert_eq!(
        f.call(Func::FdAdvise, &[fd.into(), 0, 0, 1]),
        Errno::SUCCESS
    );
    assert_eq!(f.call(Func::FdAdvise, &[DATA.into(), 0, 0, 1]), Errno::BADF);
    f.read(fd, 4).unwrap();
    // Two subscriptions: read and write readiness of the file; both ready at once.
    let sub = |mem: &mut [u8], at: usize, userdata: u64, kind: u8| {
        mem[at..at + 48].fill(0);
        mem[at..at + 8].copy_from_slice(&userdata.to_le_bytes());
        mem[at + 8] = kind;
        mem[at + 16..at + 20].copy_from_slice(&fd.to_le_bytes());
    };
    sub(&mut f.mem, 8192, 11, 1);
    sub(&mut f.mem, 8192 + 48, 22, 2);
    assert_eq!(
        f.call(Func::PollOneoff, &[8192, 16384, 2, u64::from(OUT)]),
        Errno::SUCCESS
    );
    assert_eq!(f.u32_at(OUT), 2);
    assert_eq!(f.u64_at(16384), 11);
    assert_eq!(u16::from_le_bytes([f.mem[16392], f.mem[16393]]), 0);
    assert_eq!(f.u64_at(16384 + 16), 7, "bytes left to read");
    assert_eq!(f.u64_at(16384 + 32), 22);
    // With the transport down the event carries EIO.
    f.host().broken = true;
    assert_eq!(
        f.call(Func::PollOneoff, &[8192, 16384, 1, u64::from(OUT)]),
        Errno::SUCCESS
    );
    assert_eq!(
        u16::from_le_bytes([f.mem[16392], f.mem[16393]]),
        Errno::IO.0
    );
}

#[test]
fn long_names_and_nul_bytes_are_errors() {
    let mut f = Fixture::new();
    let long = "x".repeat(300);
    assert_eq!(f.open(DATA, &long, CREAT, ALL), Err(Errno::NAMETOOLONG));
    assert_eq!(f.open(DATA, "a\0b", 0, READ_ONLY), Err(Errno::NOENT));
    assert_eq!(f.open(DATA, "sub/a\0b/c", 0, READ_ONLY), Err(Errno::NOENT));
    assert_eq!(f.mkdir(DATA, "a\0b"), Errno::INVAL);
    assert_eq!(f.unlink(DATA, "a\0b"), Errno::NOENT);
    assert_eq!(
        f.open(DATA, "hello.txt/a\0b", 0, READ_ONLY),
        Err(Errno::NOTDIR)
    );
}

/// Runs `probe` on one directory descriptor: every call's errno (and the file type of what
/// a stat found), undoing each change that worked so the tree stays the same.
fn probe(f: &mut Fixture, dir: u32, path: &str) -> Vec<(String, u16, u8)> {
    let mut out = Vec::new();
    let mut note = |what: &str, e: Errno, ty: u8| out.push((what.to_string(), e.0, ty));
    for follow in [true, false] {
        match f.stat(dir, follow, path) {
            Ok(st) => note("stat", Errno::SUCCESS, st.filetype),
            Err(e) => note("stat", e, 0),
        }
        let lookup = u64::from(follow);
        for (oflags, rights) in [
            (0, READ_ONLY),
            (DIRECTORY, READ_ONLY),
            (0, ALL),
            (TRUNC, READ_ONLY),
        ] {
            match f.open_with(dir, lookup, path, oflags, rights, 0) {
                Ok(fd) => {
                    let st = f.fstat(fd).unwrap();
                    note("open", Errno::SUCCESS, st.filetype);
                    assert_eq!(f.close(fd), Errno::SUCCESS);
                }
                Err(e) => note("open", e, 0),
            }
        }
    }
    match f.readlink(dir, path, 64) {
        Ok(t) => note("readlink", Errno::SUCCESS, t.len() as u8),
        Err(e) => note("readlink", e, 0),
    }
    let e = f.mkdir(dir, path);
    note("mkdir", e, 0);
    if e == Errno::SUCCESS {
        note("mkdir-undo", f.rmdir(dir, path), 0);
    }
    match f.open(dir, path, CREAT | EXCL, ALL) {
        Ok(fd) => {
            note("create", Errno::SUCCESS, 0);
            f.close(fd);
            note("create-undo", f.unlink(dir, path), 0);
        }
        Err(e) => note("create", e, 0),
    }
    let e = f.symlink("target", dir, path);
    note("symlink", e, 0);
    if e == Errno::SUCCESS {
        note("symlink-undo", f.unlink(dir, path.trim_end_matches('/')), 0);
    }
    let e = f.rename(dir, path, dir, "renamed");
    note("rename-from", e, 0);
    if e == Errno::SUCCESS {
        note("rename-back", f.rename(dir, "renamed", dir, path), 0);
    }
    let e = f.rename(dir, "spare", dir, path);
    note("rename-to", e, 0);
    if e == Errno::SUCCESS {
        // Whatever `path` named is gone now; both sides lose it alike and get it back below.
        note("rename-to-undo", f.rename(dir, path, dir, "spare"), 0);
    }
    for follow in [false, true] {
        let e = f.link(dir, follow, path, dir, "hard");
        note("link-from", e, 0);
        if e == Errno::SUCCESS {
            note("link-undo", f.unlink(dir, "hard"), 0);
        }
    }
    let e = f.link(dir, false, "spare", dir, path);
    note("link-to", e, 0);
    if e == Errno::SUCCESS {
        note("link-to-undo", f.unlink(dir, path), 0);
    }
    note(
        "unlink-missing-ok",
        f.unlink(dir, &format!("{path}/nope")),
        0,
    );
    note("rmdir-missing-ok", f.rmdir(dir, &format!("{path}/nope")), 0);
    out
}

/// Builds the same small tree beneath `dir` (a memory or a share directory).
fn build_tree(f: &mut Fixture, dir: u32) {
    assert_eq!(f.mkdir(dir, "a"), Errno::SUCCESS);
    assert_eq!(f.mkdir(dir, "a/b"), Errno::SUCCESS);
    assert_eq!(f.mkdir(dir, "empty"), Errno::SUCCESS);
    for file in ["f", "a/g", "spare"] {
        let fd = f.open(dir, file, CREAT, ALL).unwrap();
        assert_eq!(f.write(fd, b"data"), Ok(4));
        f.close(fd);
    }
    for (target, name) in [
        ("f", "l"),
        ("a", "ldir"),
        ("loop", "loop"),
        ("../x", "esc"),
        ("nowhere", "dangling"),
        ("a/../f", "lup"),
        ("ldir/b", "lb"),
        ("a/b/../../f", "deep"),
        (".", "self"),
    ] {
        assert_eq!(f.symlink(target, dir, name), Errno::SUCCESS, "{name}");
    }
}

#[test]
fn memory_and_share_agree_on_every_errno() {
    let mut f = Fixture::new();
    let paths = [
        ".",
        "..",
        "./",
        "a",
        "a/",
        "a/.",
        "a/..",
        "a/../..",
        "a//b",
        "./a/./b/",
        "a/b/..",
        "f",
        "f/",
        "f/.",
        "f/..",
        "f/x",
        "l",
        "l/",
        "ldir",
        "ldir/",
        "ldir/g",
        "ldir/b/..",
        "loop",
        "loop/",
        "esc",
        "esc/x",
        "dangling",
        "dangling/",
        "lup",
        "lb",
        "lb/",
        "deep",
        "self",
        "self/f",
        "missing",
        "missing/",
        "missing/x",
        "empty",
        "empty/",
        "a/g",
        "a/g/",
        "spare/",
        "new",
        "new/",
        "/abs",
        "a\0b",
        "ldir/../esc",
    ];
    for (i, path) in paths.into_iter().enumerate() {
        // A fresh copy of the tree on each side, then the same calls on both.
        let mut dirs = Vec::new();
        for root in [MEM, DATA] {
            let name = format!("t{i}");
            assert_eq!(f.mkdir(root, &name), Errno::SUCCESS);
            let dir = f.open(root, &name, DIRECTORY, READ_ONLY).unwrap();
            build_tree(&mut f, dir);
            dirs.push(dir);
        }
        let mem = probe(&mut f, dirs[0], path);
        let share = probe(&mut f, dirs[1], path);
        assert_eq!(mem, share, "memory vs share for {path:?}");
        assert_eq!(f.names(dirs[0]), f.names(dirs[1]), "{path:?}");
        for dir in dirs {
            assert_eq!(f.close(dir), Errno::SUCCESS);
        }
    }
    // Nothing left the share.
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), SECRET);
    assert!(!f.share.parent().unwrap().join("x").exists());
}
