//! The server driven only through encoded messages, as a guest would.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::wire::{self, Attr, DirEntry, Frame, GetLock, Qid, Rmessage, SetAttr, Tmessage};
use super::{MAX_MSIZE, Server};

const SECRET: &[u8] = b"host secret";
const ROOT: u32 = 0;

/// A temporary tree: `share/` is served; `outside/secret` must stay out of reach.
struct Fixture {
    tmp: tempfile::TempDir,
    share: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        fs::create_dir(&share).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), SECRET).unwrap();
        fs::create_dir(share.join("sub")).unwrap();
        fs::write(share.join("sub/inner"), b"inner").unwrap();
        fs::write(share.join("hello.txt"), b"hello world").unwrap();
        Fixture {
            tmp,
            share,
            outside,
        }
    }

    fn client(&self, read_only: bool, openat2: bool) -> Client {
        Client::new(&self.share, read_only, openat2)
    }

    /// Everything under `outside/`: names, contents, modes, mtimes.
    fn outside_snapshot(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32, i64)> {
        snapshot(&self.outside)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Tests (and the fuzzer) may leave unreadable directories behind.
        restore_perms(self.tmp.path());
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, i64)> {
    let mut map = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let data = if m.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        map.insert(e.path(), (data, m.mode(), m.mtime()));
        if m.is_dir() {
            map.extend(snapshot(&e.path()));
        }
    }
    map
}

fn restore_perms(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                restore_perms(&e.path());
            }
        }
    }
}

/// A test-side 9P client: encodes T-messages, decodes and checks the R-messages.
struct Client {
    srv: Server,
    tag: u16,
}

impl Client {
    /// A session with the share's root attached as fid 0.
    fn new(dir: &Path, read_only: bool, openat2: bool) -> Self {
        let root: OwnedFd = fs::File::open(dir).unwrap().into();
        let mut srv = Server::new(root, read_only);
        if !openat2 {
            srv.set_legacy();
        }
        let mut c = Client { srv, tag: 0 };
        let r = c.call(Tmessage::Version {
            msize: 1 << 20,
            version: wire::VERSION_9P2000_L,
        });
        assert_eq!(
            r,
            Ok(Rmessage::Version {
                msize: MAX_MSIZE,
                version: b"9P2000.L".to_vec()
            })
        );
        c.attach(ROOT).unwrap();
        c
    }

    /// Sends raw bytes; returns the reply's tag and message, checked to be well formed.
    fn raw(&mut self, req: &[u8]) -> (u16, Rmessage) {
        let mut out = vec![0xaa; 3]; // Replies are appended after what is there.
        self.srv.handle(req, &mut out);
        assert_eq!(&out[..3], &[0xaa; 3]);
        Rmessage::decode(&out[3..]).expect("one well-formed reply")
    }

    fn call(&mut self, msg: Tmessage<'_>) -> Result<Rmessage, i32> {
        self.tag = (self.tag + 1) % 0x8000;
        let mut req = Vec::new();
        msg.encode(self.tag, &mut req);
        let (tag, reply) = self.raw(&req);
        assert_eq!(tag, self.tag);
        match reply {
            Rmessage::Lerror { ecode } => Err(ecode as i32),
            reply => {
                assert_eq!(reply.ty(), msg.ty() + 1, "{reply:?} answers {msg:?}");
                Ok(reply)
            }
        }
    }

    fn attach(&mut self, fid: u32) -> Result<Qid, i32> {
        match self.call(Tmessage::Attach {
            fid,
            afid: wire::NOFID,
            uname: b"guest",
            aname: b"",
            n_uname: 0,
        })? {
            Rmessage::Attach { qid } => Ok(qid),
            r => panic!("{r:?}"),
        }
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, i32> {
        let names = names.iter().map(|n| n.as_bytes()).collect();
        match self.call(Tmessage::Walk { fid, newfid, names })? {
            Rmessage::Walk { qids } => Ok(qids),
            r => panic!("{r:?}"),
        }
    }

    /// A walk that must reach every name.
    fn walk_all(&mut self, fid: u32, newfid: u32, names: &[&str]) -> Result<Qid, i32> {
        let qids = self.walk(fid, newfid, names)?;
        assert_eq!(qids.len(), names.len(), "partial walk {names:?}");
        Ok(qids.last().copied().unwrap_or_default())
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Result<Qid, i32> {
        match self.call(Tmessage::Lopen { fid, flags })? {
            Rmessage::Lopen { qid, iounit } => {
                assert!(iounit > 0 && iounit <= MAX_MSIZE - wire::IOHDRSZ);
                Ok(qid)
            }
            r => panic!("{r:?}"),
        }
    }

    /// Walks from the root to `path` as `fid` and opens it.
    fn open(&mut self, fid: u32, path: &[&str], flags: u32) -> Result<Qid, i32> {
        self.walk_all(ROOT, fid, path)?;
        self.lopen(fid, flags)
    }

    fn lcreate(&mut self, fid: u32, name: &str, flags: u32, mode: u32) -> Result<Qid, i32> {
        match self.call(Tmessage::Lcreate {
            fid,
            name: name.as_bytes(),
            flags,
            mode,
            gid: 0,
        })? {
            Rmessage::Lcreate { qid, .. } => Ok(qid),
            r => panic!("{r:?}"),
        }
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> Result<Vec<u8>, i32> {
        match self.call(Tmessage::Read { fid, offset, count })? {
            Rmessage::Read { data } => Ok(data),
            r => panic!("{r:?}"),
        }
    }

    fn read_all(&mut self, fid: u32) -> Result<Vec<u8>, i32> {
        let mut all = Vec::new();
        loop {
            let chunk = self.read(fid, all.len() as u64, 4096)?;
            if chunk.is_empty() {
                return Ok(all);
            }
            all.extend(chunk);
        }
    }

    fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Result<u32, i32> {
        match self.call(Tmessage::Write { fid, offset, data })? {
            Rmessage::Write { count } => Ok(count),
            r => panic!("{r:?}"),
        }
    }

    fn clunk(&mut self, fid: u32) -> Result<(), i32> {
        self.call(Tmessage::Clunk { fid }).map(drop)
    }

    fn getattr(&mut self, fid: u32) -> Result<Attr, i32> {
        match self.call(Tmessage::Getattr {
            fid,
            request_mask: wire::GETATTR_BASIC,
        })? {
            Rmessage::Getattr(a) => Ok(a),
            r => panic!("{r:?}"),
        }
    }

    fn setattr(&mut self, fid: u32, attr: SetAttr) -> Result<(), i32> {
        self.call(Tmessage::Setattr { fid, attr }).map(drop)
    }

    /// Every entry of an opened directory, `count` bytes per `Treaddir`.
    fn readdir_all(&mut self, fid: u32, count: u32) -> Result<Vec<(String, Qid, u8)>, i32> {
        let mut entries = Vec::new();
        let mut offset = 0;
        loop {
            let data = match self.call(Tmessage::Readdir { fid, offset, count })? {
                Rmessage::Readdir { data } => data,
                r => panic!("{r:?}"),
            };
            assert!(data.len() <= count as usize);
            let batch = DirEntry::decode_all(&data).unwrap();
            let Some(last) = batch.last() else {
                return Ok(entries);
            };
            offset = last.offset;
            for e in &batch {
                let name = String::from_utf8(e.name.to_vec()).unwrap();
                entries.push((name, e.qid, e.ty));
            }
        }
    }

    fn names_in(&mut self, path: &[&str]) -> Vec<String> {
        let fid = 900;
        self.open(fid, path, wire::DOTL_RDONLY).unwrap();
        let mut names: Vec<_> = self
            .readdir_all(fid, 8192)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        self.clunk(fid).unwrap();
        names.sort();
        names
    }

    fn mkdir(&mut self, dfid: u32, name: &str) -> Result<Qid, i32> {
        match self.call(Tmessage::Mkdir {
            dfid,
            name: name.as_bytes(),
            mode: 0o755,
            gid: 0,
        })? {
            Rmessage::Mkdir { qid } => Ok(qid),
            r => panic!("{r:?}"),
        }
    }

    fn symlink(&mut self, dfid: u32, name: &str, target: &str) -> Result<Qid, i32> {
        match self.call(Tmessage::Symlink {
            dfid,
            name: name.as_bytes(),
            target: target.as_bytes(),
            gid: 0,
        })? {
            Rmessage::Symlink { qid } => Ok(qid),
            r => panic!("{r:?}"),
        }
    }

    fn renameat(&mut self, olddir: u32, old: &str, newdir: u32, new: &str) -> Result<(), i32> {
        self.call(Tmessage::Renameat {
            olddirfid: olddir,
            oldname: old.as_bytes(),
            newdirfid: newdir,
            newname: new.as_bytes(),
        })
        .map(drop)
    }

    fn unlinkat(&mut self, dfid: u32, name: &str, flags: u32) -> Result<(), i32> {
        self.call(Tmessage::Unlinkat {
            dfid,
            name: name.as_bytes(),
            flags,
        })
        .map(drop)
    }

    fn link(&mut self, dfid: u32, fid: u32, name: &str) -> Result<(), i32> {
        self.call(Tmessage::Link {
            dfid,
            fid,
            name: name.as_bytes(),
        })
        .map(drop)
    }

    fn readlink(&mut self, fid: u32) -> Result<Vec<u8>, i32> {
        match self.call(Tmessage::Readlink { fid })? {
            Rmessage::Readlink { target } => Ok(target),
            r => panic!("{r:?}"),
        }
    }
}

fn truncate_to(size: u64) -> SetAttr {
    SetAttr {
        valid: wire::SETATTR_SIZE,
        size,
        ..SetAttr::default()
    }
}

fn chmod_to(mode: u32) -> SetAttr {
    SetAttr {
        valid: wire::SETATTR_MODE,
        mode,
        ..SetAttr::default()
    }
}

#[test]
fn p9_version_attach_and_trivial_requests() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    // Other versions are not spoken.
    assert_eq!(
        c.call(Tmessage::Version {
            msize: 8192,
            version: b"9P2000.u"
        }),
        Ok(Rmessage::Version {
            msize: 8192,
            version: b"unknown".to_vec()
        })
    );
    assert_eq!(
        c.call(Tmessage::Version {
            msize: 100,
            version: wire::VERSION_9P2000_L
        }),
        Err(libc::EINVAL)
    );
    assert_eq!(
        c.call(Tmessage::Version {
            msize: 8192,
            version: wire::VERSION_9P2000_L
        }),
        Ok(Rmessage::Version {
            msize: 8192,
            version: b"9P2000.L".to_vec()
        })
    );
    // Tversion ended the old session: fid 0 is gone.
    assert_eq!(c.getattr(ROOT), Err(libc::EBADF));
    let qid = c.attach(ROOT).unwrap();
    assert_eq!(qid.ty, wire::QTDIR);
    assert_eq!(qid.path, fs::metadata(&fx.share).unwrap().ino());
    assert_eq!(c.attach(ROOT), Err(libc::EBADF));
    assert_eq!(
        c.call(Tmessage::Auth {
            afid: 5,
            uname: b"u",
            aname: b"",
            n_uname: 0
        }),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        c.call(Tmessage::Xattrwalk {
            fid: ROOT,
            newfid: 5,
            name: b"user.x"
        }),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        c.call(Tmessage::Xattrcreate {
            fid: ROOT,
            name: b"user.x",
            attr_size: 1,
            flags: 0
        }),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(c.call(Tmessage::Flush { oldtag: 3 }), Ok(Rmessage::Flush));
    assert_eq!(
        c.call(Tmessage::Lock {
            fid: ROOT,
            ty: wire::LOCK_TYPE_WRLCK,
            flags: 0,
            start: 0,
            length: 10,
            proc_id: 42,
            client_id: b"guest"
        }),
        Ok(Rmessage::Lock { status: 0 })
    );
    assert_eq!(
        c.call(Tmessage::Getlock {
            fid: ROOT,
            lock: GetLock {
                ty: wire::LOCK_TYPE_WRLCK,
                start: 5,
                length: 10,
                proc_id: 42,
                client_id: b"guest"
            }
        }),
        Ok(Rmessage::Getlock(GetLock {
            ty: wire::LOCK_TYPE_UNLCK,
            start: 5,
            length: 10,
            proc_id: 42,
            client_id: b"guest".to_vec()
        }))
    );
    match c.call(Tmessage::Statfs { fid: ROOT }).unwrap() {
        Rmessage::Statfs(s) => assert!(s.namelen >= 255 && s.bsize > 0),
        r => panic!("{r:?}"),
    }
    // Reads are bounded by the negotiated msize.
    fs::write(fx.share.join("big"), vec![7u8; 100_000]).unwrap();
    c.open(1, &["big"], wire::DOTL_RDONLY).unwrap();
    let data = c.read(1, 0, u32::MAX).unwrap();
    assert_eq!(data.len(), 8192 - 11);
    // A request larger than msize is refused.
    let big = vec![0u8; 9000];
    assert_eq!(
        c.call(Tmessage::Write {
            fid: 1,
            offset: 0,
            data: &big
        }),
        Err(libc::EMSGSIZE)
    );
}

#[test]
fn p9_walk_open_read_write_create() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    let qids = c.walk(ROOT, 1, &["sub", "inner"]).unwrap();
    assert_eq!(qids.len(), 2);
    assert_eq!(qids[0].ty, wire::QTDIR);
    assert_eq!(qids[1].ty, wire::QTFILE);
    assert_eq!(
        qids[1].path,
        fs::metadata(fx.share.join("sub/inner")).unwrap().ino()
    );
    c.lopen(1, wire::DOTL_RDONLY).unwrap();
    assert_eq!(c.read_all(1).unwrap(), b"inner");
    assert_eq!(c.read(1, 2, 2).unwrap(), b"ne");
    assert_eq!(c.lopen(1, wire::DOTL_RDONLY), Err(libc::EBADF));
    assert_eq!(c.write(1, 0, b"x"), Err(libc::EBADF));

    // Missing names; partial walks leave newfid alone.
    assert_eq!(c.walk(ROOT, 2, &["nope"]), Err(libc::ENOENT));
    assert_eq!(c.walk(ROOT, 2, &["sub", "nope"]).unwrap().len(), 1);
    assert_eq!(c.walk(ROOT, 2, &["hello.txt", "x"]).unwrap().len(), 1);
    assert_eq!(c.clunk(2), Err(libc::EBADF));
    // newfid in use.
    assert_eq!(c.walk(ROOT, 1, &[]), Err(libc::EBADF));
    // Unopened fids cannot be read.
    c.walk_all(ROOT, 3, &["hello.txt"]).unwrap();
    assert_eq!(c.read(3, 0, 10), Err(libc::EBADF));
    assert_eq!(
        c.call(Tmessage::Fsync {
            fid: 3,
            datasync: 0
        }),
        Err(libc::EBADF)
    );

    // Create, write, and the host sees it at once; the host writes, the guest reads.
    c.walk_all(ROOT, 4, &[]).unwrap();
    let qid = c
        .lcreate(4, "new.txt", wire::DOTL_RDWR | wire::DOTL_EXCL, 0o644)
        .unwrap();
    assert_eq!(qid.ty, wire::QTFILE);
    assert_eq!(c.write(4, 0, b"from the guest").unwrap(), 14);
    assert_eq!(
        fs::read(fx.share.join("new.txt")).unwrap(),
        b"from the guest"
    );
    assert_eq!(c.write(4, 5, b"THE").unwrap(), 3);
    assert_eq!(
        fs::read(fx.share.join("new.txt")).unwrap(),
        b"from THE guest"
    );
    fs::write(fx.share.join("new.txt"), b"from the host").unwrap();
    assert_eq!(c.read_all(4).unwrap(), b"from the host");
    assert_eq!(
        c.call(Tmessage::Fsync {
            fid: 4,
            datasync: 1
        }),
        Ok(Rmessage::Fsync)
    );
    let a = c.getattr(4).unwrap();
    assert_eq!(a.size, 13);
    assert_eq!(a.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(a.qid, qid);
    assert_eq!(
        fs::metadata(fx.share.join("new.txt")).unwrap().mode() & 0o777,
        0o644 & !current_umask()
    );
    // EXCL on an existing name.
    c.walk_all(ROOT, 5, &[]).unwrap();
    assert_eq!(
        c.lcreate(5, "new.txt", wire::DOTL_WRONLY | wire::DOTL_EXCL, 0o644),
        Err(libc::EEXIST)
    );
    // Without EXCL an existing file is opened, and TRUNC truncates it.
    c.lcreate(5, "new.txt", wire::DOTL_WRONLY | wire::DOTL_TRUNC, 0o644)
        .unwrap();
    assert_eq!(fs::read(fx.share.join("new.txt")).unwrap(), b"");
    // Tlopen with TRUNC, then append.
    fs::write(fx.share.join("hello.txt"), b"old").unwrap();
    c.open(6, &["hello.txt"], wire::DOTL_WRONLY | wire::DOTL_TRUNC)
        .unwrap();
    assert_eq!(fs::read(fx.share.join("hello.txt")).unwrap(), b"");
    c.open(7, &["hello.txt"], wire::DOTL_WRONLY | wire::DOTL_APPEND)
        .unwrap();
    c.write(7, 0, b"ab").unwrap();
    c.write(7, 0, b"cd").unwrap();
    assert_eq!(fs::read(fx.share.join("hello.txt")).unwrap(), b"abcd");
    // Directories open read-only only.
    c.walk_all(ROOT, 8, &["sub"]).unwrap();
    assert_eq!(c.lopen(8, wire::DOTL_RDWR), Err(libc::EISDIR));
    c.lopen(8, wire::DOTL_RDONLY).unwrap();
    assert_eq!(c.read(8, 0, 10), Err(libc::EISDIR));
}

fn current_umask() -> u32 {
    // Read, not set: setting it would race with other tests creating files.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

#[test]
fn p9_readdir_in_pieces() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    let mut expected: Vec<String> = (0..60).map(|i| format!("file-{i:03}")).collect();
    for name in &expected {
        fs::write(fx.share.join(name), b"").unwrap();
    }
    expected.extend(["hello.txt", "sub", ".", ".."].map(String::from));
    expected.sort();
    let root_qid = c.getattr(ROOT).unwrap().qid;
    c.open(1, &[], wire::DOTL_RDONLY).unwrap();
    // Small replies: many Treaddirs, continuing from each last entry's cookie.
    let entries = c.readdir_all(1, 100).unwrap();
    let mut names: Vec<_> = entries.iter().map(|e| e.0.clone()).collect();
    names.sort();
    assert_eq!(names, expected);
    for (name, qid, ty) in &entries {
        match name.as_str() {
            // The root's parent is the root.
            "." | ".." => assert_eq!(*qid, root_qid),
            "sub" => {
                assert_eq!(qid.ty, wire::QTDIR);
                assert_eq!(*ty, libc::DT_DIR);
            }
            _ => {
                assert_eq!(qid.ty, wire::QTFILE);
                let ino = fs::metadata(fx.share.join(name)).unwrap().ino();
                assert_eq!(qid.path, ino);
            }
        }
    }
    // Big replies, and starting over from 0.
    assert_eq!(c.readdir_all(1, 65536).unwrap().len(), expected.len());
    // Unopened, or not a directory.
    c.walk_all(ROOT, 2, &["sub"]).unwrap();
    assert_eq!(
        c.call(Tmessage::Readdir {
            fid: 2,
            offset: 0,
            count: 1000
        }),
        Err(libc::EBADF)
    );
    c.open(3, &["hello.txt"], wire::DOTL_RDONLY).unwrap();
    assert_eq!(
        c.call(Tmessage::Readdir {
            fid: 3,
            offset: 0,
            count: 1000
        }),
        Err(libc::ENOTDIR)
    );
}

#[test]
fn p9_mkdir_rename_link_unlink_remove() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    let qid = c.mkdir(ROOT, "d").unwrap();
    assert_eq!(qid.ty, wire::QTDIR);
    assert!(fx.share.join("d").is_dir());
    assert_eq!(c.mkdir(ROOT, "d"), Err(libc::EEXIST));
    c.walk_all(ROOT, 1, &["d"]).unwrap();
    c.lcreate(1, "f", wire::DOTL_WRONLY, 0o600).unwrap();
    c.write(1, 0, b"payload").unwrap();
    c.walk_all(ROOT, 2, &["d", "f"]).unwrap();

    // Renaming the directory keeps fids below it working.
    c.renameat(ROOT, "d", ROOT, "e").unwrap();
    assert_eq!(fs::read(fx.share.join("e/f")).unwrap(), b"payload");
    assert!(!fx.share.join("d").exists());
    c.lopen(2, wire::DOTL_RDONLY).unwrap();
    assert_eq!(c.read_all(2).unwrap(), b"payload");
    c.setattr(1, truncate_to(3)).unwrap();
    assert_eq!(fs::read(fx.share.join("e/f")).unwrap(), b"pay");

    // Legacy Trename moves the fid's file.
    c.walk_all(ROOT, 3, &["e", "f"]).unwrap();
    assert_eq!(
        c.call(Tmessage::Rename {
            fid: 3,
            dfid: ROOT,
            name: b"g"
        }),
        Ok(Rmessage::Rename)
    );
    assert_eq!(fs::read(fx.share.join("g")).unwrap(), b"pay");
    assert_eq!(c.getattr(3).unwrap().size, 3);

    // Hard links.
    c.link(ROOT, 3, "g2").unwrap();
    assert_eq!(fs::metadata(fx.share.join("g2")).unwrap().nlink(), 2);
    assert_eq!(c.link(ROOT, 3, "g2"), Err(libc::EEXIST));
    c.walk_all(ROOT, 4, &["sub"]).unwrap();
    assert_eq!(c.link(ROOT, 4, "subdir-link"), Err(libc::EPERM));

    // unlinkat: files, then directories with AT_REMOVEDIR.
    assert_eq!(c.unlinkat(ROOT, "e", 0), Err(libc::EISDIR));
    assert_eq!(c.unlinkat(ROOT, "e", 0x1), Err(libc::EINVAL));
    c.unlinkat(ROOT, "e", wire::AT_REMOVEDIR).unwrap();
    assert!(!fx.share.join("e").exists());
    c.unlinkat(ROOT, "g2", 0).unwrap();
    assert_eq!(c.unlinkat(ROOT, "g2", 0), Err(libc::ENOENT));

    // Tremove removes and clunks, even when it fails.
    assert_eq!(c.call(Tmessage::Remove { fid: 3 }), Ok(Rmessage::Remove));
    assert!(!fx.share.join("g").exists());
    assert_eq!(c.clunk(3), Err(libc::EBADF));
    c.walk_all(ROOT, 5, &[]).unwrap();
    assert_eq!(c.call(Tmessage::Remove { fid: 5 }), Err(libc::EBUSY));
    assert_eq!(c.clunk(5), Err(libc::EBADF));
    assert!(fx.share.is_dir());

    // FIFOs can be made but not opened; device nodes cannot be made.
    let fifo = c
        .call(Tmessage::Mknod {
            dfid: ROOT,
            name: b"fifo",
            mode: libc::S_IFIFO | 0o644,
            major: 0,
            minor: 0,
            gid: 0,
        })
        .unwrap();
    assert!(matches!(fifo, Rmessage::Mknod { .. }));
    assert_eq!(
        c.open(6, &["fifo"], wire::DOTL_RDONLY),
        Err(libc::EOPNOTSUPP)
    );
    c.walk_all(ROOT, 7, &[]).unwrap();
    assert_eq!(
        c.lcreate(7, "fifo", wire::DOTL_RDWR, 0o644),
        Err(libc::EEXIST)
    );
    assert_eq!(
        c.call(Tmessage::Mknod {
            dfid: ROOT,
            name: b"null",
            mode: libc::S_IFCHR | 0o666,
            major: 1,
            minor: 3,
            gid: 0,
        }),
        Err(libc::EPERM)
    );
    assert!(!fx.share.join("null").exists());
}

#[test]
fn p9_setattr() {
    setattr(true);
}

#[test]
fn p9_setattr_legacy_kernel() {
    setattr(false);
}

fn setattr(openat2: bool) {
    let fx = Fixture::new();
    let mut c = fx.client(false, openat2);
    let file = fx.share.join("hello.txt");
    c.walk_all(ROOT, 1, &["hello.txt"]).unwrap();
    c.setattr(1, truncate_to(5)).unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"hello");
    c.setattr(1, truncate_to(8)).unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"hello\0\0\0");
    assert_eq!(c.setattr(1, truncate_to(u64::MAX)), Err(libc::EFBIG));

    c.setattr(1, chmod_to(0o600)).unwrap();
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
    // No set-user-ID or set-group-ID files.
    c.setattr(1, chmod_to(0o6755)).unwrap();
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(c.getattr(1).unwrap().mode & 0o7777, 0o755);

    c.setattr(
        1,
        SetAttr {
            valid: wire::SETATTR_MTIME
                | wire::SETATTR_MTIME_SET
                | wire::SETATTR_ATIME
                | wire::SETATTR_ATIME_SET,
            mtime_sec: 1_000_000_000,
            mtime_nsec: 5,
            atime_sec: 1_200_000_000,
            ..SetAttr::default()
        },
    )
    .unwrap();
    let m = fs::metadata(&file).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
    assert_eq!(m.atime(), 1_200_000_000);
    let a = c.getattr(1).unwrap();
    assert_eq!((a.mtime_sec, a.atime_sec), (1_000_000_000, 1_200_000_000));
    // ATIME without ATIME_SET means "now"; MTIME is left alone.
    c.setattr(
        1,
        SetAttr {
            valid: wire::SETATTR_ATIME,
            ..SetAttr::default()
        },
    )
    .unwrap();
    let m = fs::metadata(&file).unwrap();
    assert!(m.atime() > 1_600_000_000);
    assert_eq!(m.mtime(), 1_000_000_000);
    // Bad nanoseconds are the kernel's to refuse.
    assert_eq!(
        c.setattr(
            1,
            SetAttr {
                valid: wire::SETATTR_MTIME | wire::SETATTR_MTIME_SET,
                mtime_nsec: 2_000_000_000,
                ..SetAttr::default()
            }
        ),
        Err(libc::EINVAL)
    );
    // Owner: to the current ids (allowed for anyone).
    let (uid, gid) = (m.uid(), m.gid());
    c.setattr(
        1,
        SetAttr {
            valid: wire::SETATTR_UID | wire::SETATTR_GID,
            uid,
            gid,
            ..SetAttr::default()
        },
    )
    .unwrap();
    // Truncating a directory.
    c.walk_all(ROOT, 2, &["sub"]).unwrap();
    assert_eq!(c.setattr(2, truncate_to(0)), Err(libc::EISDIR));
    c.setattr(2, chmod_to(0o2750)).unwrap();
    assert_eq!(
        fs::metadata(fx.share.join("sub")).unwrap().mode() & 0o7777,
        0o2750
    );
    // The share root's times can be set too.
    c.setattr(
        ROOT,
        SetAttr {
            valid: wire::SETATTR_MTIME | wire::SETATTR_MTIME_SET,
            mtime_sec: 1_100_000_000,
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(fs::metadata(&fx.share).unwrap().mtime(), 1_100_000_000);
}

#[test]
fn p9_symlink_readlink() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    let qid = c.symlink(ROOT, "ln", "hello.txt").unwrap();
    assert_eq!(qid.ty, wire::QTSYMLINK);
    assert_eq!(
        fs::read_link(fx.share.join("ln")).unwrap(),
        Path::new("hello.txt")
    );
    assert_eq!(c.symlink(ROOT, "ln", "x"), Err(libc::EEXIST));
    let qid = c.walk_all(ROOT, 1, &["ln"]).unwrap();
    assert_eq!(qid.ty, wire::QTSYMLINK);
    assert_eq!(c.readlink(1).unwrap(), b"hello.txt");
    assert_eq!(c.getattr(1).unwrap().mode & libc::S_IFMT, libc::S_IFLNK);
    // The server never follows symlinks: the client resolves them.
    assert_eq!(c.lopen(1, wire::DOTL_RDONLY), Err(libc::ELOOP));
    c.walk_all(ROOT, 2, &["hello.txt"]).unwrap();
    assert_eq!(c.readlink(2), Err(libc::EINVAL));
    let long = "x".repeat(5000);
    assert_eq!(c.symlink(ROOT, "long", &long), Err(libc::ENAMETOOLONG));
}

/// Every way out of the share must fail and leave `outside/` untouched.
fn escape_attempts(openat2: bool) {
    let fx = Fixture::new();
    let before = fx.outside_snapshot();
    let outside = fx.outside.to_str().unwrap();
    symlink(&fx.outside, fx.share.join("abs")).unwrap();
    symlink("../outside", fx.share.join("rel")).unwrap();
    symlink(fx.outside.join("secret"), fx.share.join("sf")).unwrap();
    symlink("../outside/created", fx.share.join("dangling")).unwrap();
    symlink("/proc/self/root", fx.share.join("magic")).unwrap();
    let mut c = fx.client(false, openat2);
    let root_qid = c.getattr(ROOT).unwrap().qid;
    let top_names = c.names_in(&[]);

    // `..` at the root is the root, however often.
    for (fid, path) in [
        (10, vec![".."]),
        (11, vec!["..", ".."]),
        (12, vec!["sub", "..", "..", ".."]),
        (13, vec![".", "..", ".", "sub", "..", ".."]),
    ] {
        assert_eq!(c.walk_all(ROOT, fid, &path), Ok(root_qid), "{path:?}");
        c.lopen(fid, wire::DOTL_RDONLY).unwrap();
        let mut names: Vec<_> = c
            .readdir_all(fid, 8192)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        names.sort();
        assert_eq!(names, top_names);
        assert!(!names.contains(&"outside".to_string()));
    }
    c.walk_all(ROOT, 14, &["sub", ".."]).unwrap();
    assert_eq!(c.getattr(14).unwrap().qid, root_qid);
    // `..` and `/` inside a name are not path syntax.
    for name in [
        "../outside",
        "sub/..",
        "/",
        "../..",
        "",
        "../outside/secret",
    ] {
        assert_eq!(c.walk(ROOT, 15, &[name]), Err(libc::EINVAL), "{name:?}");
    }
    // Above the root there is only the root: `outside` is not found there.
    for path in [
        &["..", "outside", "secret"][..],
        &["..", "..", "outside"],
        &["sub", "..", "..", "outside"],
    ] {
        let found = path.iter().position(|&n| n == "outside").unwrap();
        assert_eq!(c.walk(ROOT, 15, path).unwrap().len(), found, "{path:?}");
        assert_eq!(c.clunk(15), Err(libc::EBADF));
    }
    assert_eq!(c.walk(ROOT, 15, &["outside"]), Err(libc::ENOENT));

    // Symlinks pointing out: walking through them and opening them fail.
    for link in ["abs", "rel", "sf", "magic"] {
        let qid = c.walk_all(ROOT, 20, &[link]).unwrap();
        assert_eq!(qid.ty, wire::QTSYMLINK);
        assert_eq!(c.lopen(20, wire::DOTL_RDONLY), Err(libc::ELOOP), "{link}");
        assert_eq!(c.lopen(20, wire::DOTL_RDWR), Err(libc::ELOOP), "{link}");
        // Through it: the walk stops at the symlink, newfid stays unused.
        assert_eq!(c.walk(ROOT, 21, &[link, "secret"]).unwrap().len(), 1);
        assert_eq!(c.walk(20, 21, &["secret"]), Err(libc::ENOTDIR));
        assert_eq!(c.lopen(21, wire::DOTL_RDONLY), Err(libc::EBADF));
        // Using it as a directory.
        assert_eq!(
            c.lcreate(20, "planted", wire::DOTL_WRONLY, 0o644),
            Err(libc::ENOTDIR)
        );
        assert_eq!(c.mkdir(20, "planted"), Err(libc::ENOTDIR));
        assert_eq!(c.symlink(20, "planted", "x"), Err(libc::ENOTDIR));
        assert_eq!(c.unlinkat(20, "secret", 0), Err(libc::ENOTDIR));
        assert_eq!(
            c.renameat(ROOT, "hello.txt", 20, "planted"),
            Err(libc::ENOTDIR)
        );
        assert_eq!(c.renameat(20, "secret", ROOT, "stolen"), Err(libc::ENOTDIR));
        assert_eq!(c.link(20, 20, "planted"), Err(libc::ENOTDIR));
        assert_eq!(
            c.call(Tmessage::Readdir {
                fid: 20,
                offset: 0,
                count: 1000
            }),
            Err(libc::ENOTDIR)
        );
        // Attributes apply to the symlink itself, never to its target.
        assert_eq!(c.setattr(20, truncate_to(0)), Err(libc::EINVAL));
        assert_eq!(c.setattr(20, chmod_to(0o777)), Err(libc::EOPNOTSUPP));
        c.setattr(
            20,
            SetAttr {
                valid: wire::SETATTR_MTIME | wire::SETATTR_MTIME_SET,
                mtime_sec: 12345,
                ..SetAttr::default()
            },
        )
        .unwrap();
        c.clunk(20).unwrap();
    }
    // A hard link to a symlink is a symlink, not the target.
    c.walk_all(ROOT, 22, &["sf"]).unwrap();
    c.link(ROOT, 22, "sf2").unwrap();
    assert!(
        fs::symlink_metadata(fx.share.join("sf2"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Creating over a symlink (even a dangling one) never creates or truncates its target.
    for name in ["sf", "dangling", "abs"] {
        c.walk_all(ROOT, 23, &[]).unwrap();
        for flags in [
            wire::DOTL_WRONLY | wire::DOTL_TRUNC,
            wire::DOTL_RDWR | wire::DOTL_EXCL,
            wire::DOTL_RDONLY,
        ] {
            assert!(c.lcreate(23, name, flags, 0o666).is_err(), "{name}");
        }
        assert_eq!(c.mkdir(ROOT, name), Err(libc::EEXIST));
        c.clunk(23).unwrap();
    }
    assert!(!fx.outside.join("created").exists());
    // Names with `/` or `..` in mutating requests.
    c.walk_all(ROOT, 24, &["hello.txt"]).unwrap();
    for bad in [
        "../stolen",
        "..",
        ".",
        "a/b",
        "/tmp/x",
        "../outside/secret",
        "",
    ] {
        assert_eq!(c.renameat(ROOT, "hello.txt", ROOT, bad), Err(libc::EINVAL));
        assert_eq!(c.renameat(ROOT, bad, ROOT, "x"), Err(libc::EINVAL));
        assert_eq!(c.link(ROOT, 24, bad), Err(libc::EINVAL));
        assert_eq!(c.unlinkat(ROOT, bad, 0), Err(libc::EINVAL));
        assert_eq!(c.unlinkat(ROOT, bad, wire::AT_REMOVEDIR), Err(libc::EINVAL));
        assert_eq!(c.mkdir(ROOT, bad), Err(libc::EINVAL));
        assert_eq!(c.symlink(ROOT, bad, outside), Err(libc::EINVAL));
        assert_eq!(
            c.call(Tmessage::Rename {
                fid: 24,
                dfid: ROOT,
                name: bad.as_bytes()
            }),
            Err(libc::EINVAL)
        );
        c.walk_all(ROOT, 25, &[]).unwrap();
        assert_eq!(
            c.lcreate(25, bad, wire::DOTL_WRONLY, 0o644),
            Err(libc::EINVAL)
        );
        c.clunk(25).unwrap();
    }
    // Symlinks the guest makes are only text to this server.
    c.symlink(ROOT, "mine", outside).unwrap();
    assert_eq!(c.walk(ROOT, 26, &["mine", "secret"]).unwrap().len(), 1);
    c.walk_all(ROOT, 26, &["mine"]).unwrap();
    assert_eq!(c.readlink(26).unwrap(), outside.as_bytes());
    assert_eq!(c.lopen(26, wire::DOTL_RDONLY), Err(libc::ELOOP));
    // Removing a symlink removes the link.
    assert_eq!(c.call(Tmessage::Remove { fid: 26 }), Ok(Rmessage::Remove));
    c.unlinkat(ROOT, "sf", 0).unwrap();
    c.unlinkat(ROOT, "abs", 0).unwrap();
    assert_eq!(
        c.unlinkat(ROOT, "rel", wire::AT_REMOVEDIR),
        Err(libc::ENOTDIR)
    );

    assert_eq!(fx.outside_snapshot(), before);
    assert_eq!(fs::read(fx.outside.join("secret")).unwrap(), SECRET);
}

#[test]
fn p9_escape_attempts_fail() {
    escape_attempts(true);
}

#[test]
fn p9_escape_attempts_fail_legacy_kernel() {
    escape_attempts(false);
}

/// The host swaps a directory the guest holds fids in for a symlink pointing out.
fn host_swaps_dir_for_symlink(openat2: bool) {
    let fx = Fixture::new();
    fs::create_dir(fx.share.join("d")).unwrap();
    fs::write(fx.share.join("d/secret"), b"inside").unwrap();
    fs::write(fx.outside.join("other"), b"x").unwrap();
    let mut c = fx.client(false, openat2);
    c.walk_all(ROOT, 1, &["d"]).unwrap();
    c.walk_all(ROOT, 2, &["d", "secret"]).unwrap();
    c.walk_all(ROOT, 3, &["d", "secret"]).unwrap();
    let before = fx.outside_snapshot();

    fs::rename(fx.share.join("d"), fx.share.join("d.old")).unwrap();
    symlink(&fx.outside, fx.share.join("d")).unwrap();

    // Reopening by name meets the symlink and stops.
    assert!(c.lopen(2, wire::DOTL_RDONLY).is_err());
    assert!(c.setattr(3, truncate_to(0)).is_err());
    assert!(c.call(Tmessage::Remove { fid: 3 }).is_err());
    assert!(c.link(ROOT, 2, "hl").is_err());
    assert_eq!(c.walk(ROOT, 4, &["d", "secret"]).unwrap().len(), 1);
    // The fid's own descriptor still names the moved directory, inside the share.
    if c.lcreate(1, "new", wire::DOTL_WRONLY, 0o644).is_ok() {
        assert!(fx.share.join("d.old/new").exists());
    }
    c.walk_all(ROOT, 5, &["d.old"]).unwrap();
    c.unlinkat(5, "secret", 0).unwrap();
    assert_eq!(c.getattr(2).unwrap().size, 6);

    assert_eq!(fx.outside_snapshot(), before);
}

#[test]
fn p9_host_swaps_dir_for_symlink() {
    host_swaps_dir_for_symlink(true);
}

#[test]
fn p9_host_swaps_dir_for_symlink_legacy_kernel() {
    host_swaps_dir_for_symlink(false);
}

#[test]
fn p9_read_only_refuses_changes() {
    let fx = Fixture::new();
    let before = snapshot(&fx.share);
    let mut c = fx.client(true, true);
    assert_eq!(
        c.walk_all(ROOT, 1, &["hello.txt"]).unwrap().ty,
        wire::QTFILE
    );
    for flags in [
        wire::DOTL_WRONLY,
        wire::DOTL_RDWR,
        wire::DOTL_RDONLY | wire::DOTL_TRUNC,
    ] {
        assert_eq!(c.lopen(1, flags), Err(libc::EROFS));
    }
    c.lopen(1, wire::DOTL_RDONLY).unwrap();
    assert_eq!(c.read_all(1).unwrap(), b"hello world");
    assert_eq!(c.write(1, 0, b"x"), Err(libc::EROFS));
    assert_eq!(c.setattr(1, truncate_to(0)), Err(libc::EROFS));
    assert_eq!(c.setattr(1, chmod_to(0o777)), Err(libc::EROFS));
    c.walk_all(ROOT, 2, &[]).unwrap();
    assert_eq!(
        c.lcreate(2, "new", wire::DOTL_WRONLY, 0o644),
        Err(libc::EROFS)
    );
    assert_eq!(c.mkdir(ROOT, "new"), Err(libc::EROFS));
    assert_eq!(c.symlink(ROOT, "new", "x"), Err(libc::EROFS));
    assert_eq!(c.link(ROOT, 1, "new"), Err(libc::EROFS));
    assert_eq!(c.unlinkat(ROOT, "hello.txt", 0), Err(libc::EROFS));
    assert_eq!(c.renameat(ROOT, "hello.txt", ROOT, "new"), Err(libc::EROFS));
    assert_eq!(
        c.call(Tmessage::Rename {
            fid: 1,
            dfid: ROOT,
            name: b"new"
        }),
        Err(libc::EROFS)
    );
    assert_eq!(
        c.call(Tmessage::Mknod {
            dfid: ROOT,
            name: b"new",
            mode: libc::S_IFIFO | 0o644,
            major: 0,
            minor: 0,
            gid: 0
        }),
        Err(libc::EROFS)
    );
    assert_eq!(c.call(Tmessage::Remove { fid: 1 }), Err(libc::EROFS));
    assert_eq!(c.clunk(1), Err(libc::EBADF));
    // Reading still works.
    assert_eq!(c.names_in(&["sub"]), [".", "..", "inner"]);
    c.getattr(ROOT).unwrap();
    assert_eq!(snapshot(&fx.share), before);
}

#[test]
fn p9_fid_limit() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    c.srv.set_max_fids(4);
    for fid in 1..4 {
        c.walk_all(ROOT, fid, &["sub"]).unwrap();
    }
    assert_eq!(c.walk(ROOT, 4, &[]), Err(libc::ENFILE));
    assert_eq!(c.attach(4), Err(libc::ENFILE));
    // Walking a fid onto itself needs no new slot.
    c.walk_all(3, 3, &["inner"]).unwrap();
    c.clunk(3).unwrap();
    c.walk_all(ROOT, 4, &["hello.txt"]).unwrap();
}

#[test]
fn p9_malformed_messages() {
    let fx = Fixture::new();
    let mut c = fx.client(false, true);
    let einval = Rmessage::Lerror {
        ecode: libc::EINVAL as u32,
    };
    let eopnotsupp = Rmessage::Lerror {
        ecode: libc::EOPNOTSUPP as u32,
    };
    // Too short for a tag.
    assert_eq!(c.raw(&[]), (wire::NOTAG, einval.clone()));
    assert_eq!(c.raw(&[1, 2, 3]), (wire::NOTAG, einval.clone()));
    // Size field smaller than a header, or larger than the bytes.
    assert_eq!(c.raw(&[5, 0, 0, 0, 120, 9, 0]), (9, einval.clone()));
    assert_eq!(c.raw(&[20, 0, 0, 0, 120, 9, 0, 0, 0]), (9, einval.clone()));
    // Fields cut short.
    assert_eq!(
        c.raw(&[9, 0, 0, 0, wire::TCLUNK, 4, 0, 0, 0]),
        (4, einval.clone())
    );
    // A string longer than the message.
    let mut m = Vec::new();
    Tmessage::Walk {
        fid: 0,
        newfid: 1,
        names: vec![b"sub"],
    }
    .encode(6, &mut m);
    let n = m.len();
    m[n - 5] = 200;
    assert_eq!(c.raw(&m), (6, einval.clone()));
    // Seventeen names.
    let mut m = Vec::new();
    Tmessage::Walk {
        fid: 0,
        newfid: 1,
        names: vec![b"sub"; 17],
    }
    .encode(7, &mut m);
    assert_eq!(c.raw(&m), (7, einval.clone()));
    // NUL in a name.
    let mut m = Vec::new();
    Tmessage::Walk {
        fid: 0,
        newfid: 1,
        names: vec![b"su\0b"],
    }
    .encode(8, &mut m);
    assert_eq!(c.raw(&m), (8, einval.clone()));
    // Unknown types, replies as requests, and the 9P2000 messages 9P2000.L replaced.
    for ty in [0, 6, 101, 112, 114, 124, 126, 200, 255] {
        assert_eq!(c.raw(&[7, 0, 0, 0, ty, 3, 0]), (3, eopnotsupp.clone()));
    }
    // Trailing bytes after the message are not part of it.
    let mut m = Vec::new();
    Tmessage::Clunk { fid: 77 }.encode(10, &mut m);
    m.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        c.raw(&m),
        (
            10,
            Rmessage::Lerror {
                ecode: libc::EBADF as u32
            }
        )
    );
    // A write claiming more data than it carries.
    let mut m = Vec::new();
    Tmessage::Write {
        fid: 0,
        offset: 0,
        data: b"abc",
    }
    .encode(11, &mut m);
    m[19] = 0xff;
    assert_eq!(c.raw(&m), (11, einval));
}

/// xorshift64*: enough randomness to shake the decoder, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid requests of every type over a few fids and names, for the fuzzer to mutate.
fn corpus() -> Vec<Vec<u8>> {
    let names: [&[u8]; 8] = [
        b"sub",
        b"hello.txt",
        b"..",
        b".",
        b"x",
        b"inner",
        b"ln",
        b"d",
    ];
    let mut msgs = Vec::new();
    for (i, &name) in names.iter().enumerate() {
        let fid = i as u32 % 4;
        let other = (i as u32 + 1) % 6;
        msgs.extend([
            Tmessage::Version {
                msize: 8192 << (i % 3),
                version: wire::VERSION_9P2000_L,
            },
            Tmessage::Attach {
                fid: other,
                afid: wire::NOFID,
                uname: b"u",
                aname: b"",
                n_uname: 0,
            },
            Tmessage::Walk {
                fid,
                newfid: other,
                names: vec![name, b"inner"],
            },
            Tmessage::Walk {
                fid,
                newfid: fid,
                names: vec![name],
            },
            Tmessage::Lopen {
                fid,
                flags: i as u32 % 3,
            },
            Tmessage::Lcreate {
                fid,
                name,
                flags: wire::DOTL_RDWR,
                mode: 0o644,
                gid: 0,
            },
            Tmessage::Read {
                fid,
                offset: 0,
                count: 100,
            },
            Tmessage::Write {
                fid,
                offset: 3,
                data: b"fuzz",
            },
            Tmessage::Clunk { fid: other },
            Tmessage::Remove { fid: other },
            Tmessage::Getattr {
                fid,
                request_mask: !0,
            },
            Tmessage::Setattr {
                fid,
                attr: SetAttr {
                    valid: 0x1ff,
                    mode: 0o755,
                    uid: !0,
                    gid: !0,
                    size: 10,
                    ..SetAttr::default()
                },
            },
            Tmessage::Readdir {
                fid,
                offset: 0,
                count: 300,
            },
            Tmessage::Mkdir {
                dfid: fid,
                name,
                mode: 0o755,
                gid: 0,
            },
            Tmessage::Symlink {
                dfid: fid,
                name,
                target: b"../..",
                gid: 0,
            },
            Tmessage::Mknod {
                dfid: fid,
                name,
                mode: libc::S_IFIFO | 0o600,
                major: 0,
                minor: 0,
                gid: 0,
            },
            Tmessage::Readlink { fid },
            Tmessage::Link {
                dfid: fid,
                fid: other,
                name,
            },
            Tmessage::Rename {
                fid: other,
                dfid: fid,
                name,
            },
            Tmessage::Renameat {
                olddirfid: fid,
                oldname: name,
                newdirfid: other,
                newname: b"moved",
            },
            Tmessage::Unlinkat {
                dfid: fid,
                name,
                flags: 0x200 * (i as u32 % 2),
            },
            Tmessage::Statfs { fid },
            Tmessage::Fsync { fid, datasync: 1 },
            Tmessage::Lock {
                fid,
                ty: 1,
                flags: 0,
                start: 0,
                length: 0,
                proc_id: 1,
                client_id: b"c",
            },
            Tmessage::Getlock {
                fid,
                lock: GetLock {
                    ty: 0,
                    start: 0,
                    length: 0,
                    proc_id: 1,
                    client_id: b"c",
                },
            },
            Tmessage::Xattrwalk {
                fid,
                newfid: other,
                name,
            },
            Tmessage::Flush { oldtag: 1 },
        ]);
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let mut buf = Vec::new();
            m.encode(i as u16, &mut buf);
            buf
        })
        .collect()
}

#[test]
fn p9_fuzz_every_request_gets_one_well_formed_reply() {
    let fx = Fixture::new();
    let before = fx.outside_snapshot();
    symlink(&fx.outside, fx.share.join("ln")).unwrap();
    symlink("../outside", fx.share.join("d")).unwrap();
    let mut c = fx.client(false, true);
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = BTreeMap::new();
    let mut restart = false;
    for round in 0..30_000 {
        // A fresh session now and then (so fids, i.e. host descriptors, do not pile up),
        // and after every Tversion, which ends the session.
        if round % 200 == 0 || restart {
            // The guest may have locked itself out with chmod (unless running as root).
            restore_perms(&fx.share);
            c.call(Tmessage::Version {
                msize: MAX_MSIZE,
                version: wire::VERSION_9P2000_L,
            })
            .unwrap();
            c.attach(ROOT).unwrap();
            let _ = c.walk(ROOT, 1, &["sub"]);
            let _ = c.walk(ROOT, 2, &["hello.txt"]);
            let _ = c.lopen(2, wire::DOTL_RDWR);
            let _ = c.walk(ROOT, 3, &[]);
            let _ = c.lopen(3, wire::DOTL_RDONLY);
        }
        let mut req = corpus[rng.below(corpus.len())].clone();
        match rng.below(8) {
            // Pure noise.
            0 => {
                let len = rng.below(48);
                req = (0..len).map(|_| rng.next() as u8).collect();
            }
            // Noise after a plausible header.
            1 => {
                let len = rng.below(64);
                let ty = rng.next() as u8;
                req = vec![0, 0, 0, 0, ty, rng.next() as u8, 0];
                req.extend((0..len).map(|_| rng.next() as u8));
                let size = req.len() as u32;
                req[..4].copy_from_slice(&size.to_le_bytes());
            }
            // Truncated, with the size field fixed or not.
            2 => {
                let cut = rng.below(req.len() + 1);
                req.truncate(cut);
                if rng.below(2) == 0 && req.len() >= 4 {
                    let size = req.len() as u32;
                    req[..4].copy_from_slice(&size.to_le_bytes());
                }
            }
            // Flipped bytes anywhere, header included.
            3 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(req.len());
                    req[at] = rng.next() as u8;
                }
            }
            // As is: valid requests in a random order reach deep into the server.
            4 | 5 => {}
            // Flipped argument bytes (fids, lengths, counts, offsets, names, flags).
            _ => {
                for _ in 0..=rng.below(2) {
                    let at = wire::HEADER_LEN + rng.below(req.len() - wire::HEADER_LEN);
                    req[at] = if rng.below(3) == 0 {
                        [0, 1, 2, 0xff, 0x7f, 0x80, b'/', b'.'][rng.below(8)]
                    } else {
                        rng.next() as u8
                    };
                }
            }
        }
        let mut out = Vec::new();
        c.srv.handle(&req, &mut out);
        let (tag, reply) = Rmessage::decode(&out)
            .unwrap_or_else(|e| panic!("round {round}: bad reply {out:?} to {req:?}: {e}"));
        let expected_tag = Frame::peek_tag(&req).unwrap_or(wire::NOTAG);
        assert_eq!(tag, expected_tag, "round {round}: {req:?}");
        let ty = reply.ty();
        assert!(
            ty == wire::RLERROR || req.get(4).is_some_and(|&t| ty == t.wrapping_add(1)),
            "round {round}: {req:?} -> {reply:?}"
        );
        assert!(out.len() <= MAX_MSIZE as usize);
        *seen.entry(ty).or_insert(0u32) += 1;
        restart = req.get(4) == Some(&wire::TVERSION);
    }
    // The fuzzer got past the decoder into most handlers.
    let ok = seen.iter().filter(|&(&ty, _)| ty != wire::RLERROR).count();
    assert!(ok >= 20, "reply types: {seen:?}");
    drop(c);
    assert_eq!(fx.outside_snapshot(), before);
    assert_eq!(fs::read(fx.outside.join("secret")).unwrap(), SECRET);
}
