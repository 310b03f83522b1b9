//! Files: walking to them, opening, creating, reading and writing.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{Fixture, ROOT};
use crate::host::p9::wire::{self, Rmessage, Tmessage};

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
fn p9_reads_answered_in_place_are_the_replies_the_general_path_makes() {
    let fx = Fixture::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    fs::write(fx.share.join("big.bin"), &data).unwrap();
    let mut c = fx.client(false, true);
    c.open(1, &["big.bin"], wire::DOTL_RDONLY).unwrap();
    let most = (crate::host::p9::MAX_MSIZE - crate::host::p9::server::RDATA_HDR) as usize;
    for (offset, count) in [
        (0u64, 4096u32),
        (1, 65_536),
        (299_990, 100),
        (300_000, 10),
        (400_000, 10),
        (12_345, u32::MAX),
    ] {
        let mut request = Vec::new();
        Tmessage::Read {
            fid: 1,
            offset,
            count,
        }
        .encode(9, &mut request);
        // Appended after what the buffer holds, as the device's reused buffers are not.
        let mut got = vec![0xaa; 3];
        c.srv.handle(&request, &mut got);
        let start = (offset as usize).min(data.len());
        let len = (count as usize).min(most).min(data.len() - start);
        let mut want = vec![0xaa; 3];
        Rmessage::Read {
            data: data[start..start + len].to_vec(),
        }
        .encode(9, &mut want);
        assert!(got == want, "read of {count} at {offset}");
    }
    // A read that fails is answered by the general path, with nothing of the attempt left.
    c.open(2, &["hello.txt"], wire::DOTL_WRONLY).unwrap();
    for fid in [2, 77] {
        assert_eq!(
            c.call(Tmessage::Read {
                fid,
                offset: 0,
                count: 100
            }),
            Err(libc::EBADF)
        );
    }
    c.open(3, &["sub"], wire::DOTL_RDONLY).unwrap();
    assert_eq!(
        c.call(Tmessage::Read {
            fid: 3,
            offset: 0,
            count: 100
        }),
        Err(libc::EISDIR)
    );
}
