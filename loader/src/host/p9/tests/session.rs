//! Sessions and fids: Tversion, Tattach, the requests with trivial answers, message size
//! bounds and the fid limit.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{Fixture, ROOT};
use crate::host::p9::wire::{self, GetLock, Rmessage, Tmessage};

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
