//! Malformed and random requests: each gets exactly one well-formed reply, and the share's
//! surroundings stay untouched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;

use super::{Fixture, ROOT, SECRET, restore_perms};
use crate::host::p9::MAX_MSIZE;
use crate::host::p9::wire::{self, Frame, GetLock, Rmessage, SetAttr, Tmessage};

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
