//! Directories and names: Treaddir, and making, renaming, linking and removing names.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use super::{Fixture, ROOT, truncate_to};
use crate::host::p9::wire::{self, Rmessage, Tmessage};

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
    // A server that opened the FIFO would wait for a writer for ever: bounded, so that
    // fails the test instead of hanging it.
    let (mut c, opened) =
        crate::test_support::within(Duration::from_secs(30), "opening a FIFO", move || {
            let opened = c.open(6, &["fifo"], wire::DOTL_RDONLY);
            (c, opened)
        });
    assert_eq!(opened, Err(libc::EOPNOTSUPP));
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
