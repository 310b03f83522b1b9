//! The server driven only through encoded messages, as a guest would: the shared fixture
//! and test-side client here, the tests by theme in the submodules.

mod attrs;
mod confinement;
mod dirs;
mod files;
mod malformed;
mod session;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::wire::{self, Attr, DirEntry, Qid, Rmessage, SetAttr, Tmessage};
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
