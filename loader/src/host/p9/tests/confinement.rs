//! Confinement: no request reaches outside the share or changes a read-only one, whatever
//! the guest sends or the host does meanwhile.

use std::fs;
use std::os::unix::fs::symlink;

use super::{Fixture, ROOT, SECRET, chmod_to, snapshot, truncate_to};
use crate::host::p9::wire::{self, Rmessage, SetAttr, Tmessage};

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
