//! The live volume server driven as the guest's 9P client drives it, and a corpus of crafted
//! images replayed against the check (each under a watchdog: a hang fails, slowly).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::{self, Geometry};
use super::*;
use crate::host::p9::FileServer;
use crate::host::p9::wire::{self, Rmessage, SetAttr, Tmessage};
use crate::test_support::within;

/// A reproducible stream of pseudo-random numbers (xorshift64) from `seed` (not 0).
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

struct Client {
    server: VolumeServer,
    tag: u16,
}

impl Client {
    fn new(image: &Path) -> Client {
        let server = open_live(image).unwrap().serve().unwrap();
        let mut c = Client { server, tag: 0 };
        assert!(matches!(
            c.call(Tmessage::Version {
                msize: 65536,
                version: wire::VERSION_9P2000_L
            }),
            Ok(Rmessage::Version { .. })
        ));
        c.call(Tmessage::Attach {
            fid: 0,
            afid: wire::NOFID,
            uname: b"",
            aname: b"",
            n_uname: 0,
        })
        .unwrap();
        c
    }

    /// One request; `Err(errno)` for `Rlerror`.
    fn call(&mut self, msg: Tmessage<'_>) -> Result<Rmessage, u32> {
        self.tag += 1;
        let mut request = Vec::new();
        msg.encode(self.tag, &mut request);
        let mut out = Vec::new();
        self.server.handle(&request, &mut out);
        let (tag, reply) = Rmessage::decode(&out).unwrap();
        assert_eq!(tag, self.tag);
        match reply {
            Rmessage::Lerror { ecode } => Err(ecode),
            r => Ok(r),
        }
    }

    fn walk(&mut self, newfid: u32, names: &[&[u8]]) -> Result<Rmessage, u32> {
        self.call(Tmessage::Walk {
            fid: 0,
            newfid,
            names: names.to_vec(),
        })
    }

    fn create(&mut self, fid: u32, name: &[u8]) -> Result<Rmessage, u32> {
        self.walk(fid, &[])?;
        self.call(Tmessage::Lcreate {
            fid,
            name,
            flags: wire::DOTL_RDWR | wire::DOTL_CREATE,
            mode: 0o644,
            gid: 0,
        })
    }

    fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Result<u32, u32> {
        match self.call(Tmessage::Write { fid, offset, data })? {
            Rmessage::Write { count } => Ok(count),
            other => panic!("{other:?}"),
        }
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> Vec<u8> {
        match self.call(Tmessage::Read { fid, offset, count }).unwrap() {
            Rmessage::Read { data } => data,
            other => panic!("{other:?}"),
        }
    }

    fn names(&mut self, fid: u32) -> Vec<String> {
        self.call(Tmessage::Lopen { fid, flags: 0 }).unwrap();
        let data = match self
            .call(Tmessage::Readdir {
                fid,
                offset: 0,
                count: 8192,
            })
            .unwrap()
        {
            Rmessage::Readdir { data } => data,
            other => panic!("{other:?}"),
        };
        wire::DirEntry::decode_all(&data)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(e.name).into_owned())
            .collect()
    }

    fn close(self) {
        Box::new(self.server).close().unwrap();
    }
}

fn volume(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.img");
    create(&img, size).unwrap();
    (dir, img)
}

/// Reads `path` from the image with `fatfs`, as a later run would.
fn read_back(img: &Path, path: &str) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(img)?;
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new())?;
    let mut data = Vec::new();
    fs.root_dir().open_file(path)?.read_to_end(&mut data)?;
    Ok(data)
}

#[test]
fn writes_reach_the_image_during_the_run() {
    let (_dir, img) = volume(8 << 20);
    let mut c = Client::new(&img);
    c.call(Tmessage::Mkdir {
        dfid: 0,
        name: b"A long directory name",
        mode: 0o755,
        gid: 0,
    })
    .unwrap();
    c.walk(1, &[b"A long directory name"]).unwrap();
    c.call(Tmessage::Lcreate {
        fid: 1,
        name: b"data.json",
        flags: wire::DOTL_RDWR | wire::DOTL_CREATE,
        mode: 0o644,
        gid: 0,
    })
    .unwrap();
    let data = vec![b'x'; 100_000];
    let mut off = 0;
    for chunk in data.chunks(30_000) {
        assert_eq!(c.write(1, off, chunk).unwrap(), chunk.len() as u32);
        off += chunk.len() as u64;
    }
    // Before any sync or close: another reader of the image sees the bytes already.
    assert_eq!(
        read_back(&img, "A long directory name/data.json").unwrap(),
        data
    );
    assert_eq!(c.read(1, 99_990, 100), vec![b'x'; 10]);
    // Names compare as FAT does: case-insensitively.
    assert!(c.walk(2, &[b"a LONG directory NAME", b"DATA.JSON"]).is_ok());
    assert_eq!(
        c.names(0),
        vec![".", "..", "A long directory name"],
        "the root"
    );
    // Renames replace, and keep the fids in step.
    c.create(3, b"other.txt").unwrap();
    c.write(3, 0, b"other").unwrap();
    c.call(Tmessage::Renameat {
        olddirfid: 0,
        oldname: b"other.txt",
        newdirfid: 0,
        newname: b"Other.TXT",
    })
    .unwrap();
    assert_eq!(c.read(3, 0, 100), b"other");
    c.walk(4, &[b"A long directory name"]).unwrap();
    c.call(Tmessage::Renameat {
        olddirfid: 0,
        oldname: b"Other.TXT",
        newdirfid: 4,
        newname: b"data.json",
    })
    .unwrap();
    assert_eq!(c.read(3, 0, 100), b"other", "the fid followed its file");
    assert_eq!(
        read_back(&img, "A long directory name/data.json").unwrap(),
        b"other"
    );
    // Growing past the end fills with zeroes; truncation shortens.
    c.write(3, 10, b"!").unwrap();
    assert_eq!(c.read(3, 0, 100), b"other\0\0\0\0\0!");
    c.call(Tmessage::Setattr {
        fid: 3,
        attr: SetAttr {
            valid: wire::SETATTR_SIZE,
            size: 2,
            ..SetAttr::default()
        },
    })
    .unwrap();
    assert_eq!(c.read(3, 0, 100), b"ot");
    // What FAT cannot hold is refused by name.
    assert_eq!(
        c.call(Tmessage::Symlink {
            dfid: 0,
            name: b"link",
            target: b"x",
            gid: 0
        }),
        Err(libc::EOPNOTSUPP as u32)
    );
    assert_eq!(c.create(5, b"a:b"), Err(libc::EINVAL as u32));
    assert_eq!(c.create(6, b".."), Err(libc::EINVAL as u32));
    assert_eq!(
        c.call(Tmessage::Unlinkat {
            dfid: 0,
            name: b"A long directory name",
            flags: 0x200
        }),
        Err(libc::ENOTEMPTY as u32)
    );
    c.close();
    // Closed cleanly: a later mount sees no dirty flag.
    let fs = fatfs::FileSystem::new(std::fs::File::open(&img).unwrap(), fatfs::FsOptions::new())
        .unwrap();
    assert!(!fs.read_status_flags().unwrap().dirty());
}

#[test]
fn a_full_volume_answers_enospc_at_the_write_and_keeps_what_it_has() {
    let (_dir, img) = volume(1 << 20);
    let mut c = Client::new(&img);
    c.create(1, b"keep.txt").unwrap();
    c.write(1, 0, b"kept").unwrap();
    c.create(2, b"big.bin").unwrap();
    let chunk = vec![7u8; 16 << 10];
    let mut off = 0u64;
    let errno = loop {
        match c.write(2, off, &chunk) {
            Ok(n) => off += u64::from(n),
            Err(e) => break e,
        }
        assert!(off < 2 << 20, "wrote more than the volume holds");
    };
    assert_eq!(errno, libc::ENOSPC as u32);
    assert!(off > 800 << 10, "only {off} bytes fit in a 1 MiB volume");
    // A hole that cannot be backed is refused before anything is written.
    c.create(3, b"sparse.bin").unwrap();
    assert_eq!(c.write(3, 500 << 20, b"x"), Err(libc::ENOSPC as u32));
    // FAT files end at 4 GiB.
    assert_eq!(
        c.write(3, u64::from(u32::MAX), b"x"),
        Err(libc::EFBIG as u32)
    );
    assert_eq!(c.read(1, 0, 100), b"kept");
    c.close();
    assert_eq!(read_back(&img, "keep.txt").unwrap(), b"kept");
    assert_eq!(read_back(&img, "big.bin").unwrap().len() as u64, off);
}

#[test]
fn a_second_open_of_a_live_volume_is_refused() {
    let (_dir, img) = volume(1 << 20);
    let live = open_live(&img).unwrap();
    assert!(matches!(open_live(&img), Err(VolumeError::Busy(_))));
    assert!(matches!(Checkout::open(&img), Err(VolumeError::Busy(_))));
    drop(live);
    assert!(open_live(&img).is_ok());
}

/// A small volume holding `A.TXT` (3 clusters), `B.TXT` (1 cluster) and directory `D`
/// holding `C.TXT`, and where their raw entries lie.
struct Sample {
    _dir: tempfile::TempDir,
    img: PathBuf,
    g: Geometry,
}

impl Sample {
    fn new() -> Sample {
        let (dir, img) = volume(1 << 20);
        {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
            {
                let root = fs.root_dir();
                let cs = fs.cluster_size() as usize;
                root.create_file("A.TXT")
                    .unwrap()
                    .write_all(&vec![b'a'; cs * 3])
                    .unwrap();
                root.create_file("B.TXT").unwrap().write_all(b"b").unwrap();
                let d = root.create_dir("D").unwrap();
                d.create_file("C.TXT").unwrap().write_all(b"c").unwrap();
            }
            fs.unmount().unwrap();
        }
        let mut boot = [0u8; 512];
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut boot, 0)
            .unwrap();
        let g = Geometry::parse(&boot, 1 << 20).unwrap();
        assert_eq!(g.fat_type, check::FatType::Fat12);
        Sample { _dir: dir, img, g }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.img).unwrap()
    }

    /// The offset of the short-name entry `name` (11 bytes, space padded) in the root.
    fn entry(&self, bytes: &[u8], name: &[u8; 11]) -> usize {
        let root = self.g.root_offset as usize;
        (root..root + self.g.root_bytes as usize)
            .step_by(32)
            .find(|&o| &bytes[o..o + 11] == name)
            .unwrap()
    }

    fn first_cluster(bytes: &[u8], entry: usize) -> u32 {
        u32::from(u16::from_le_bytes([bytes[entry + 26], bytes[entry + 27]]))
    }

    fn set_fat(&self, bytes: &mut [u8], cluster: u32, value: u32) {
        let o = self.g.fat_offset as usize + (cluster as usize * 3) / 2;
        let pair = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let pair = if cluster.is_multiple_of(2) {
            (pair & 0xf000) | value as u16
        } else {
            (pair & 0x000f) | ((value as u16) << 4)
        };
        bytes[o..o + 2].copy_from_slice(&pair.to_le_bytes());
    }
}

/// Each crafted image, made from a sound one, and the words its refusal must contain.
/// (what, how it is made from a sound image, the words its refusal must contain).
type Case = (
    &'static str,
    Box<dyn Fn(&Sample, &mut Vec<u8>)>,
    &'static str,
);

fn corpus() -> Vec<Case> {
    vec![
        (
            "a directory whose chain points to itself",
            Box::new(|s, b| {
                let d = Sample::first_cluster(b, s.entry(b, b"D          "));
                s.set_fat(b, d, d);
            }),
            "loops or crosses",
        ),
        (
            "two files sharing a cluster",
            Box::new(|s, b| {
                let a = Sample::first_cluster(b, s.entry(b, b"A       TXT"));
                let e = s.entry(b, b"B       TXT");
                b[e + 26..e + 28].copy_from_slice(&((a + 1) as u16).to_le_bytes());
            }),
            "loops or crosses",
        ),
        (
            "a chain running into a free cluster",
            Box::new(|s, b| {
                let a = Sample::first_cluster(b, s.entry(b, b"A       TXT"));
                s.set_fat(b, a, s.g.clusters);
            }),
            "free cluster",
        ),
        (
            "a first cluster past the end",
            Box::new(|s, b| {
                let e = s.entry(b, b"B       TXT");
                b[e + 26..e + 28].copy_from_slice(&0xff0u16.to_le_bytes());
            }),
            "out of range",
        ),
        (
            "an entry named . outside a directory's first slots",
            Box::new(|s, b| {
                let e = s.entry(b, b"B       TXT");
                b[e..e + 11].copy_from_slice(b".          ");
            }),
            "out of place",
        ),
        ("no boot signature", Box::new(|_, b| b[510] = 0), "55AA"),
        (
            "3 bytes per sector",
            Box::new(|_, b| b[11..13].copy_from_slice(&3u16.to_le_bytes())),
            "bytes per sector",
        ),
        (
            "3 sectors per cluster",
            Box::new(|_, b| b[13] = 3),
            "sectors per cluster",
        ),
        ("no FATs", Box::new(|_, b| b[16] = 0), "FATs"),
        (
            "more sectors than the file",
            Box::new(|_, b| {
                b[19..21].copy_from_slice(&0u16.to_le_bytes());
                b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
            }),
            "the file has",
        ),
        (
            "truncated to half",
            Box::new(|_, b| b.truncate(b.len() / 2)),
            "the file has",
        ),
        (
            "shorter than a boot sector",
            Box::new(|_, b| b.truncate(100)),
            "shorter than a boot sector",
        ),
    ]
}

#[test]
fn crafted_images_are_refused_quickly_and_by_name() {
    let sample = Sample::new();
    let sound = sample.bytes();
    // The sound image passes, and says what it holds.
    let summary = check::check(
        &std::fs::File::open(&sample.img).unwrap(),
        sound.len() as u64,
    )
    .unwrap();
    assert_eq!((summary.files, summary.directories), (3, 2));
    for (name, craft, expected) in corpus() {
        let mut bytes = sound.clone();
        craft(&sample, &mut bytes);
        let crafted = sample.img.with_file_name("crafted.img");
        std::fs::write(&crafted, &bytes).unwrap();
        let path = crafted.clone();
        let result = within(Duration::from_secs(20), name, move || {
            open_live(&path).map(drop)
        });
        match result {
            Err(VolumeError::Damaged { damage, .. }) => {
                assert!(damage.what.contains(expected), "{name}: {damage}")
            }
            // No boot sector at all: named as not a volume.
            Err(VolumeError::NotFat { cause, .. }) => {
                assert!(cause.to_string().contains(expected), "{name}: {cause}")
            }
            other => panic!("{name}: {other:?}"),
        }
        // The checkout path refuses it the same way.
        let path = crafted.clone();
        let result = within(Duration::from_secs(20), name, move || {
            Checkout::open(&path).map(drop)
        });
        assert!(
            matches!(
                result,
                Err(VolumeError::Damaged { .. } | VolumeError::NotFat { .. })
            ),
            "{name}: {result:?}"
        );
    }
}

#[test]
fn what_a_killed_writer_leaves_is_put_right_at_the_next_open() {
    let sample = Sample::new();
    let mut bytes = sample.bytes();
    // A cluster allocated but recorded in no entry (killed between the two writes).
    let lost = sample.g.clusters - 5;
    sample.set_fat(&mut bytes, lost, 0xfff);
    std::fs::write(&sample.img, &bytes).unwrap();
    let file = std::fs::File::open(&sample.img).unwrap();
    let summary = check::check(&file, bytes.len() as u64).unwrap();
    assert_eq!(summary.lost_clusters, 1);
    drop(open_live(&sample.img).unwrap());
    let summary = check::check(&file, bytes.len() as u64).unwrap();
    assert_eq!((summary.lost_clusters, summary.repaired_fat), (0, None));

    // Two FAT copies that differ (killed between the first and the second): made equal.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("two.img");
    let mut two = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&img)
        .unwrap();
    two.set_len(1 << 20).unwrap();
    fatfs::format_volume(&mut two, fatfs::FormatVolumeOptions::new().fats(2)).unwrap();
    let g = {
        let mut boot = [0u8; 512];
        use std::os::unix::fs::FileExt;
        two.read_exact_at(&mut boot, 0).unwrap();
        Geometry::parse(&boot, 1 << 20).unwrap()
    };
    assert_eq!(g.fats, 2);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[(g.fat_offset + g.fat_bytes) as usize + 10] = 0x55;
    std::fs::write(&img, &bytes).unwrap();
    drop(open_live(&img).unwrap());
    let bytes = std::fs::read(&img).unwrap();
    let fat = |i: u64| &bytes[(g.fat_offset + i * g.fat_bytes) as usize..][..g.fat_bytes as usize];
    assert_eq!(fat(0), fat(1));
}

#[test]
fn what_an_operation_killed_halfway_leaves_is_repaired_not_refused() {
    let sample = Sample::new();
    let sound = sample.bytes();
    let cs = sample.g.cluster_bytes as usize;
    // A killed truncate: the chain was cut, the size not yet written.
    let mut bytes = sound.clone();
    let e = sample.entry(&bytes, b"A       TXT");
    bytes[e + 28..e + 32].copy_from_slice(&(1u32 << 30).to_le_bytes());
    std::fs::write(&sample.img, &bytes).unwrap();
    drop(open_live(&sample.img).unwrap());
    assert_eq!(read_back(&sample.img, "A.TXT").unwrap().len(), 3 * cs);
    // A killed remove: the chain freed, the entry not yet.
    let mut bytes = sound.clone();
    let a = Sample::first_cluster(&bytes, sample.entry(&bytes, b"A       TXT"));
    for c in a..a + 3 {
        sample.set_fat(&mut bytes, c, 0);
    }
    std::fs::write(&sample.img, &bytes).unwrap();
    drop(open_live(&sample.img).unwrap());
    assert_eq!(read_back(&sample.img, "A.TXT").unwrap(), b"", "left empty");
    // A killed mkdir: the entry written, its cluster not.
    let mut bytes = sound.clone();
    let e = sample.entry(&bytes, b"D          ");
    bytes[e + 26..e + 28].fill(0);
    std::fs::write(&sample.img, &bytes).unwrap();
    let file = std::fs::File::open(&sample.img).unwrap();
    let summary = check::check(&file, bytes.len() as u64).unwrap();
    assert!(!summary.repaired_entries.is_empty());
    drop(open_live(&sample.img).unwrap());
    let summary = check::check(&file, bytes.len() as u64).unwrap();
    assert_eq!(
        (
            summary.directories,
            summary.lost_clusters,
            summary.repaired_entries.len()
        ),
        (1, 0, 0),
        "the directory and its long name are gone, its clusters free again"
    );
    assert_eq!(read_back(&sample.img, "B.TXT").unwrap(), b"b");
    // A killed rename: the new entry written, the old not yet freed. One name stays, with
    // the data; nothing is refused or lost.
    let mut bytes = sound.clone();
    let e = sample.entry(&bytes, b"B       TXT");
    let free = (0..512)
        .map(|k| sample.g.root_offset as usize + 32 * k)
        .find(|&o| bytes[o] == 0)
        .unwrap();
    let mut copy = [0u8; 32];
    copy.copy_from_slice(&bytes[e..e + 32]);
    copy[..11].copy_from_slice(b"C       TXT");
    bytes[free..free + 32].copy_from_slice(&copy);
    std::fs::write(&sample.img, &bytes).unwrap();
    drop(open_live(&sample.img).unwrap());
    let kept = ["B.TXT", "C.TXT"]
        .iter()
        .filter(|n| read_back(&sample.img, n).is_ok_and(|d| d == b"b"))
        .count();
    assert_eq!(kept, 1, "exactly one name keeps the data");
}

#[test]
fn a_fat32_volume_with_mirroring_off_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("f32.img");
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&img)
        .unwrap();
    f.set_len(64 << 20).unwrap();
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32),
    )
    .unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[40] = 0x81; // mirroring off, FAT 1 active
    std::fs::write(&img, &bytes).unwrap();
    match open_live(&img).map(drop) {
        Err(VolumeError::Damaged { damage, .. }) => {
            assert!(damage.what.contains("mirroring is off"), "{damage}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_directory_moved_elsewhere_points_its_dot_dot_at_its_new_parent() {
    let (_dir, img) = volume(8 << 20);
    let mut c = Client::new(&img);
    for name in [&b"from"[..], b"to"] {
        c.call(Tmessage::Mkdir {
            dfid: 0,
            name,
            mode: 0o755,
            gid: 0,
        })
        .unwrap();
    }
    c.walk(1, &[b"from"]).unwrap();
    c.call(Tmessage::Mkdir {
        dfid: 1,
        name: b"moved",
        mode: 0o755,
        gid: 0,
    })
    .unwrap();
    c.walk(2, &[b"to"]).unwrap();
    c.call(Tmessage::Renameat {
        olddirfid: 1,
        oldname: b"moved",
        newdirfid: 2,
        newname: b"moved",
    })
    .unwrap();
    c.close();
    match std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
    {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(!text.contains(".."), "fsck.fat -n: {text}");
            assert!(o.status.success(), "fsck.fat -n: {text}");
        }
        Err(_) => eprintln!("note: dosfstools not installed; skipping the fsck check"),
    }
}

#[test]
fn a_long_listing_comes_in_pieces_each_entry_once() {
    let (_dir, img) = volume(8 << 20);
    let mut c = Client::new(&img);
    // In a subdirectory: FAT12/16's root holds a fixed number of entries (and says ENOSPC).
    c.call(Tmessage::Mkdir {
        dfid: 0,
        name: b"many",
        mode: 0o755,
        gid: 0,
    })
    .unwrap();
    c.walk(2, &[b"many"]).unwrap();
    for i in 0..300 {
        let fid = 10 + i;
        c.call(Tmessage::Walk {
            fid: 2,
            newfid: fid,
            names: vec![],
        })
        .unwrap();
        c.call(Tmessage::Lcreate {
            fid,
            name: format!("file-{i:03}.txt").as_bytes(),
            flags: wire::DOTL_RDWR | wire::DOTL_CREATE,
            mode: 0o644,
            gid: 0,
        })
        .unwrap();
        c.call(Tmessage::Clunk { fid }).unwrap();
    }
    let mut root_full = None;
    for i in 0..600 {
        if let Err(e) = c.create(1000 + i, format!("root-{i:03}.txt").as_bytes()) {
            root_full = Some(e);
            break;
        }
        c.call(Tmessage::Clunk { fid: 1000 + i }).unwrap();
    }
    assert_eq!(
        root_full,
        Some(libc::ENOSPC as u32),
        "a full root directory"
    );
    c.walk(1, &[b"many"]).unwrap();
    c.call(Tmessage::Lopen { fid: 1, flags: 0 }).unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let data = match c
            .call(Tmessage::Readdir {
                fid: 1,
                offset,
                count: 512,
            })
            .unwrap()
        {
            Rmessage::Readdir { data } => data,
            other => panic!("{other:?}"),
        };
        let entries = wire::DirEntry::decode_all(&data).unwrap();
        let Some(last) = entries.last() else { break };
        offset = last.offset;
        names.extend(
            entries
                .iter()
                .map(|e| String::from_utf8_lossy(e.name).into_owned()),
        );
    }
    assert_eq!(names.len(), 302, "., .. and 300 files, each once");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 302);
    c.close();
}

/// A small fuzzer that runs in `cargo test`: random bytes written over the metadata of a
/// sound image, a few thousand times. Every result must come back (no hang, no panic), and
/// an image the check accepts must be served, listed and read without a panic.
#[test]
fn random_damage_never_hangs_or_panics() {
    let sample = Sample::new();
    let sound = sample.bytes();
    let g = sample.g;
    let meta_end = g.data_offset as usize + 4 * g.cluster_bytes as usize;
    let img = sample.img.clone();
    within(Duration::from_secs(120), "random damage", move || {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..1500 {
            let mut bytes = sound.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % meta_end as u64) as usize;
                bytes[at] = next() as u8;
            }
            std::fs::write(&img, &bytes).unwrap();
            match open_live(&img) {
                Ok(live) => {
                    accepted += 1;
                    let mut c = Client {
                        server: live.serve().unwrap(),
                        tag: 0,
                    };
                    let _ = c.call(Tmessage::Version {
                        msize: 65536,
                        version: wire::VERSION_9P2000_L,
                    });
                    let _ = c.call(Tmessage::Attach {
                        fid: 0,
                        afid: wire::NOFID,
                        uname: b"",
                        aname: b"",
                        n_uname: 0,
                    });
                    let _ = c.call(Tmessage::Lopen { fid: 0, flags: 0 });
                    let _ = c.call(Tmessage::Readdir {
                        fid: 0,
                        offset: 0,
                        count: 8192,
                    });
                    for name in [&b"A.TXT"[..], b"D"] {
                        if c.walk(1, &[name]).is_ok() {
                            let _ = c.call(Tmessage::Lopen { fid: 1, flags: 0 });
                            let _ = c.call(Tmessage::Read {
                                fid: 1,
                                offset: 0,
                                count: 8192,
                            });
                            let _ = c.call(Tmessage::Clunk { fid: 1 });
                        }
                    }
                    assert!(!c.server.broken(), "fatfs panicked on an accepted image");
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    });
}

/// Bytes that tell every 4-byte word of `len` bytes apart, per file (`seed`).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len.div_ceil(4) as u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes())
        .take(len)
        .collect()
}

#[test]
fn files_of_many_clusters_read_back_whole_in_any_order_across_truncation_and_reuse() {
    let (_dir, img) = volume(64 << 20);
    let mut c = Client::new(&img);
    let (chunk, len) = (60_000usize, 3_000_000usize);
    let (first, second) = (pattern(len, 1), pattern(len, 2));
    // Two files written in order in interleaved chunks (their clusters alternate on disk).
    c.create(1, b"first.bin").unwrap();
    c.create(2, b"second.bin").unwrap();
    for at in (0..len).step_by(chunk) {
        let end = (at + chunk).min(len);
        assert_eq!(
            c.write(1, at as u64, &first[at..end]),
            Ok((end - at) as u32)
        );
        assert_eq!(
            c.write(2, at as u64, &second[at..end]),
            Ok((end - at) as u32)
        );
    }
    let read_all = |c: &mut Client, fid: u32, order: &[usize]| -> Vec<u8> {
        let mut got = vec![0u8; len];
        for &at in order {
            let data = c.read(fid, at as u64, chunk as u32);
            assert_eq!(data.len(), chunk.min(len - at), "read at {at}");
            got[at..at + data.len()].copy_from_slice(&data);
        }
        got
    };
    let forward: Vec<usize> = (0..len).step_by(chunk).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    // Far jumps both ways, each file's reads between the other's.
    let scattered: Vec<usize> = (0..forward.len())
        .map(|i| forward[(i * 17) % forward.len()])
        .collect();
    for order in [&forward, &backward, &scattered] {
        assert!(read_all(&mut c, 1, order) == first, "first.bin");
        assert!(read_all(&mut c, 2, order) == second, "second.bin");
    }
    // Unaligned reads that straddle clusters.
    assert_eq!(c.read(1, 1_234_567, 9_999), &first[1_234_567..1_244_566]);
    assert_eq!(c.read(1, 7, 3), &first[7..10]);
    // Cut the first file short, then grow it again: its old clusters are freed and others
    // taken; what it reads past the cut is the zeroes and the new bytes, never old data
    // (nor data through where a read before the cut left off).
    assert_eq!(c.read(1, 1_500_000, 10), &first[1_500_000..1_500_010]);
    c.call(Tmessage::Setattr {
        fid: 1,
        attr: SetAttr {
            valid: wire::SETATTR_SIZE,
            size: 100_000,
            ..SetAttr::default()
        },
    })
    .unwrap();
    assert_eq!(c.write(1, 2_000_000, b"end"), Ok(3));
    let mut expected = first[..100_000].to_vec();
    expected.resize(2_000_000, 0);
    expected.extend_from_slice(b"end");
    let order: Vec<usize> = (0..expected.len()).step_by(chunk).collect();
    let mut got = Vec::new();
    for &at in order.iter() {
        got.extend(c.read(1, at as u64, chunk as u32));
    }
    assert!(got == expected, "first.bin after the cut and the growth");
    // Remove the second file and make a third, which reuses its clusters.
    c.call(Tmessage::Unlinkat {
        dfid: 0,
        name: b"second.bin",
        flags: 0,
    })
    .unwrap();
    let third = pattern(len, 3);
    c.create(3, b"third.bin").unwrap();
    for at in (0..len).step_by(chunk) {
        let end = (at + chunk).min(len);
        assert_eq!(
            c.write(3, at as u64, &third[at..end]),
            Ok((end - at) as u32)
        );
    }
    assert!(read_all(&mut c, 3, &scattered) == third, "third.bin");
    c.close();
    assert!(read_back(&img, "first.bin").unwrap() == expected);
    assert!(read_back(&img, "third.bin").unwrap() == third);
}

#[test]
fn random_file_operations_match_a_model_of_the_files() {
    // FAT16, then FAT32 (which fatfs formats from 512 MiB up; the image is sparse).
    for size in [32 << 20, 1 << 30] {
        random_operations_on(size);
    }
}

fn random_operations_on(size: u64) {
    // Four names; each op picks one: write (anywhere, growing past the end too), read
    // (anywhere), truncate (shorter or longer), remove, rename onto another name (replacing
    // it), or create afresh. Every read and, at the end, every file on the image must be
    // what the model holds: stale cursors, reused clusters and chains cut under a kept
    // position would all show as wrong bytes.
    let (_dir, img) = volume(size);
    let fs = fatfs::FileSystem::new(std::fs::File::open(&img).unwrap(), fatfs::FsOptions::new())
        .unwrap();
    let fat_type = fs.fat_type();
    drop(fs);
    assert_eq!(
        fat_type,
        if size < 512 << 20 {
            fatfs::FatType::Fat16
        } else {
            fatfs::FatType::Fat32
        },
        "the volume of {size} bytes"
    );
    let mut c = Client::new(&img);
    let names: [&[u8]; 4] = [b"a.bin", b"b.bin", b"c.bin", b"d.bin"];
    let mut model: Vec<Option<Vec<u8>>> = vec![None; names.len()];
    let mut random = xorshift(0x2545_f491_4f6c_dd1d);
    let mut next = move |below: u64| random() % below;
    // fid 10 + i is file i, open read-write while it exists.
    let open = |c: &mut Client, i: usize| {
        let fid = 10 + i as u32;
        let _ = c.call(Tmessage::Clunk { fid });
        c.walk(fid, &[names[i]]).unwrap();
        c.call(Tmessage::Lopen {
            fid,
            flags: wire::DOTL_RDWR,
        })
        .unwrap();
    };
    for step in 0..1500 {
        let i = next(names.len() as u64) as usize;
        let fid = 10 + i as u32;
        let what = next(100);
        let Some(data) = model[i].as_mut() else {
            let _ = c.call(Tmessage::Clunk { fid });
            c.create(fid, names[i]).unwrap();
            model[i] = Some(Vec::new());
            continue;
        };
        match what {
            0..=44 => {
                let at = next(data.len() as u64 + 20_000) as usize;
                let len = 1 + next(70_000) as usize;
                let bytes: Vec<u8> = (0..len).map(|k| (k as u64 * 131 + step) as u8).collect();
                let mut done = 0;
                while done < len {
                    // In pieces that fit the negotiated msize (64 KiB), as a client sends.
                    let piece = &bytes[done..len.min(done + 60_000)];
                    let n = c.write(fid, (at + done) as u64, piece).unwrap() as usize;
                    assert!(n > 0, "step {step}: a write made no progress");
                    done += n;
                }
                if data.len() < at + len {
                    data.resize(at + len, 0);
                }
                data[at..at + len].copy_from_slice(&bytes);
            }
            45..=79 => {
                let at = next(data.len() as u64 + 100) as usize;
                let count = 1 + next(70_000) as u32;
                let got = c.read(fid, at as u64, count);
                let end = data.len().min(at + got.len().max(1));
                let want = data.get(at..end).unwrap_or_default();
                assert_eq!(
                    got.len(),
                    want.len().min(count as usize),
                    "step {step}: read length"
                );
                assert!(
                    got == want[..got.len()],
                    "step {step}: read of {count} at {at} of {}",
                    names[i].escape_ascii()
                );
            }
            80..=89 => {
                let size = next(data.len() as u64 * 2 + 10_000);
                c.call(Tmessage::Setattr {
                    fid,
                    attr: SetAttr {
                        valid: wire::SETATTR_SIZE,
                        size,
                        ..SetAttr::default()
                    },
                })
                .unwrap();
                data.resize(size as usize, 0);
            }
            90..=94 => {
                let _ = c.call(Tmessage::Clunk { fid });
                c.call(Tmessage::Unlinkat {
                    dfid: 0,
                    name: names[i],
                    flags: 0,
                })
                .unwrap();
                model[i] = None;
            }
            _ => {
                let j = (i + 1 + next(names.len() as u64 - 1) as usize) % names.len();
                c.call(Tmessage::Renameat {
                    olddirfid: 0,
                    oldname: names[i],
                    newdirfid: 0,
                    newname: names[j],
                })
                .unwrap();
                model[j] = model[i].take();
                let _ = c.call(Tmessage::Clunk { fid });
                open(&mut c, j);
            }
        }
    }
    for i in 0..names.len() {
        let _ = c.call(Tmessage::Clunk { fid: 10 + i as u32 });
    }
    c.close();
    for (name, data) in names.iter().zip(&model) {
        let name = std::str::from_utf8(name).unwrap();
        match data {
            Some(data) => assert!(
                read_back(&img, name).unwrap() == *data,
                "{name} on the image"
            ),
            None => assert!(read_back(&img, name).is_err(), "{name} should be gone"),
        }
    }
}

#[test]
fn crafted_reads_get_one_well_formed_reply_each() {
    // Reads go straight into the reply; hostile offsets, counts and fids must still get
    // exactly one well-formed answer, and nothing past the file or msize.
    let (_dir, img) = volume(32 << 20);
    let mut c = Client::new(&img);
    c.create(1, b"f.bin").unwrap();
    let data = pattern(200_000, 7);
    for at in (0..data.len()).step_by(60_000) {
        let end = (at + 60_000).min(data.len());
        c.write(1, at as u64, &data[at..end]).unwrap();
    }
    c.walk(2, &[]).unwrap();
    c.call(Tmessage::Lopen { fid: 2, flags: 0 }).unwrap();
    for (fid, offset, count) in [
        (1, u64::MAX, u32::MAX),
        (1, u64::from(u32::MAX) + 5, 10),
        (1, 199_999, u32::MAX),
        (1, 200_000, 1),
        (1, 0, 0),
        (1, 4095, 2),
        (2, 0, 100),
        (99, 0, 100),
    ] {
        match c.call(Tmessage::Read { fid, offset, count }) {
            Ok(Rmessage::Read { data: got }) => {
                // At most the count, what msize leaves (65,536 - 11), and what the file has.
                let start = (offset.min(data.len() as u64)) as usize;
                let len = (count as usize).min(65_536 - 11).min(data.len() - start);
                assert!(
                    got == data[start..start + len],
                    "read of {count} at {offset}: {} bytes",
                    got.len()
                );
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => assert!(
                fid != 1,
                "read of {count} at {offset} of the file: errno {e}"
            ),
        }
    }
    // A truncated Tread and one whose size field claims more than it holds: one Rlerror
    // each, with its tag.
    let mut request = Vec::new();
    Tmessage::Read {
        fid: 1,
        offset: 0,
        count: 10,
    }
    .encode(77, &mut request);
    let mut lying = request.clone();
    lying[..4].copy_from_slice(&(request.len() as u32 + 5).to_le_bytes());
    for bad in [&request[..request.len() - 3], &lying[..]] {
        let mut out = Vec::new();
        c.server.handle(bad, &mut out);
        let (tag, reply) = Rmessage::decode(&out).unwrap();
        assert_eq!(tag, 77);
        assert!(matches!(reply, Rmessage::Lerror { .. }), "{reply:?}");
    }
    c.close();
}
