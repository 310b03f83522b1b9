//! Attributes: Tsetattr's size, mode, times and owner, with and without `openat2`.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{Fixture, ROOT, chmod_to, truncate_to};
use crate::host::p9::wire::{self, SetAttr};

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
