//! A live volume: the FAT image itself, served to the guest by a 9P2000.L server of its own
//! (`fatfs` over [`Disk`]), so what the app writes reaches the image during the run.
//!
//! The built-in VMM serves volumes this way. Compared with checking the tree out into a host
//! directory (`super::checkout`, still used by QEMU and host mode, whose file servers need a
//! directory): no copy of the volume, no temporary folder, capacity enforced at the write
//! (`ENOSPC`, and `EFBIG` past FAT's 4 GiB file limit), and a kill of the host process loses
//! nothing the app was told was written (see [`super::disk`]).
//!
//! The guest is hostile and the image may be too: the image passed [`super::check`] before
//! this server exists; names from the guest are single UTF-8 components checked here, and
//! `fatfs` refuses what FAT cannot store (`EINVAL`). Symlinks, hard links and device nodes
//! do not exist on FAT (`EOPNOTSUPP`); modes and owners are fixed (directories 0755, files
//! 0644) and changing them is accepted and ignored, as Linux's vfat does. A panic inside
//! `fatfs` ends service (every later request gets `EIO`) rather than the VMM.
//!
//! Fids name objects by path (the components as stored on the volume); `fatfs` objects
//! borrow its file system, so each request opens what it needs afresh and drops it before
//! replying, which also writes its directory entry back (size, times).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use crate::host::p9::wire::{self, Attr, DirEntry, Qid, Rmessage, StatFs, Tmessage};
use crate::host::p9::{
    self, Errno, FileServer, MAX_FIDS, RDATA_HDR, answer, answer_read_in_place, single_client_lock,
};

use super::disk::Disk;

type Fs = fatfs::FileSystem<Disk>;
type Dir<'a> = fatfs::Dir<'a, Disk>;
type Res<T> = Result<T, Errno>;

/// `MSDOS_SUPER_MAGIC`, as Linux's `statfs` reports FAT.
const MSDOS_SUPER_MAGIC: u32 = 0x4d44;
/// `AT_REMOVEDIR` in `Tunlinkat`.
const AT_REMOVEDIR: u32 = 0x200;
/// Zeroes written at a time when a file grows past its end.
const ZEROES: [u8; 4096] = [0; 4096];

fn err<T>(errno: i32) -> Res<T> {
    Err(Errno(errno))
}

/// The errno for a `fatfs` or host failure.
fn errno(e: io::Error) -> Errno {
    if let Some(os) = e.raw_os_error() {
        return Errno(os);
    }
    Errno(match e.kind() {
        io::ErrorKind::NotFound => libc::ENOENT,
        io::ErrorKind::AlreadyExists => libc::EEXIST,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        // The fixed root directory of FAT12/16 is full (its region takes no more entries).
        io::ErrorKind::WriteZero => libc::ENOSPC,
        _ => match e.to_string().as_str() {
            "No space left on device" => libc::ENOSPC,
            "Directory not empty" => libc::ENOTEMPTY,
            "Is a directory" => libc::EISDIR,
            "Not a directory" => libc::ENOTDIR,
            "File name too long" => libc::ENAMETOOLONG,
            "File name is empty" | "File name contains unsupported characters" => libc::EINVAL,
            _ => libc::EIO,
        },
    })
}

/// The clock `fatfs` stamps entries with: UTC from the system clock (FAT stores local
/// time without a zone; UTC keeps volumes the same on every host). Reading the host's zone
/// would open files, which the volume thread's seccomp filter forbids.
#[derive(Debug)]
struct UtcClock;

static UTC_CLOCK: UtcClock = UtcClock;

impl fatfs::TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        fat_time(secs)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u16, u16) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: u16, day: u16) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch as a FAT time, clamped to FAT's 1980..=2107.
fn fat_time(secs: u64) -> fatfs::DateTime {
    const MIN: u64 = 315_532_800; // 1980-01-01
    const MAX: u64 = 4_354_819_199; // 2107-12-31 23:59:59
    let secs = secs.clamp(MIN, MAX);
    let (year, month, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    fatfs::DateTime {
        date: fatfs::Date {
            year: year as u16,
            month,
            day,
        },
        time: fatfs::Time {
            hour: (rem / 3600) as u16,
            min: (rem / 60 % 60) as u16,
            sec: (rem % 60) as u16,
            millis: 0,
        },
    }
}

fn unix_time(t: &fatfs::DateTime) -> u64 {
    let days = days_from_civil(i64::from(t.date.year), t.date.month, t.date.day);
    let secs = days * 86_400
        + i64::from(t.time.hour) * 3600
        + i64::from(t.time.min) * 60
        + i64::from(t.time.sec);
    secs.max(0) as u64
}

/// What a fid names.
struct Fid {
    /// Components from the volume's root, as stored on it.
    path: Vec<String>,
    dir: bool,
    /// `Some((read, write))` once opened.
    open: Option<(bool, bool)>,
    /// An open directory's entries (name, is a directory), taken when a listing starts
    /// (offset 0) and read from until the next start: one scan per listing, not one per
    /// `Treaddir`, and offsets that stay put while it is read.
    listing: Option<Vec<(String, bool)>>,
}

/// An entry as the server reports it.
struct Found {
    /// The name as stored (its case may differ from the guest's).
    name: String,
    dir: bool,
    size: u64,
    mtime: u64,
    atime: u64,
    ctime: u64,
}

/// The 9P server of one live volume; see the module docs.
pub struct VolumeServer {
    fs: Fs,
    /// The image file again, for `fsync` (the same open file as `fs`'s).
    image_file: File,
    fids: HashMap<u32, Fid>,
    msize: u32,
    cluster_bytes: u64,
    /// Where reads and writes of each file (by first cluster) last left off, so that the
    /// next one walks its cluster chain from there: opened afresh for each message, a file
    /// would otherwise be walked from its first cluster at every read and write, which made
    /// reading a file quadratic in its size (a 128 MiB file took 2.9 s, a 1 GiB one would
    /// have taken minutes). Forgotten whenever a message could cut or free a chain.
    cursors: RefCell<Cursors>,
    /// Set when `fatfs` panicked: its state can no longer be trusted.
    broken: bool,
}

/// File (first cluster) → position and the cluster holding the byte before it.
type Cursors = HashMap<u32, (u32, Option<u32>)>;

/// Files whose cursors are kept at once; past that all are forgotten and kept afresh.
const MAX_CURSORS: usize = 64;

/// Whether `msg` leaves every cluster chain as it was, up to where any cursor stands: reads
/// and lookups, and writes (which only overwrite a chain or extend it). Anything else may
/// truncate, free or replace a file (`O_TRUNC`, a size change, a removal, a rename over
/// another file), and a freed cluster may become another file's first.
fn keeps_chains(msg: &Tmessage<'_>) -> bool {
    matches!(
        msg,
        Tmessage::Read { .. }
            | Tmessage::Write { .. }
            | Tmessage::Walk { .. }
            | Tmessage::Getattr { .. }
            | Tmessage::Readdir { .. }
            | Tmessage::Clunk { .. }
            | Tmessage::Flush { .. }
            | Tmessage::Fsync { .. }
            | Tmessage::Statfs { .. }
    )
}

/// A volume ready to be served: its image locked, checked and mounted once as a trial. It
/// can move to the thread that serves it ([`LiveVolume::serve`]); the server itself stays
/// there (`fatfs` holds its clock and code page by references that are not `Sync`).
pub struct LiveVolume {
    image: PathBuf,
    file: File,
    head_len: u64,
}

fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new()
        .time_provider(&UTC_CLOCK)
        .update_accessed_date(false)
}

impl LiveVolume {
    /// `file`: the locked and checked image at `image`, whose metadata ends at `head_len`.
    pub(super) fn new(image: &Path, file: File, head_len: u64) -> io::Result<LiveVolume> {
        // What fatfs refuses is refused now, before the VM is built.
        fatfs::FileSystem::new(Disk::new(file.try_clone()?, 0)?, fs_options())?;
        Ok(LiveVolume {
            image: image.to_path_buf(),
            file,
            head_len,
        })
    }

    /// The image (symlinks resolved).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The server, on the thread that will run it.
    pub fn serve(self) -> io::Result<VolumeServer> {
        let image_file = self.file.try_clone()?;
        let disk = Disk::new(self.file, self.head_len)?;
        let fs = fatfs::FileSystem::new(disk, fs_options())?;
        let cluster_bytes = u64::from(fs.cluster_size());
        Ok(VolumeServer {
            fs,
            image_file,
            fids: HashMap::new(),
            msize: wire::MAX_MSIZE,
            cluster_bytes,
            cursors: RefCell::new(HashMap::new()),
            broken: false,
        })
    }
}

impl VolumeServer {
    /// Whether `fatfs` panicked (service has ended).
    #[cfg(test)]
    pub(super) fn broken(&self) -> bool {
        self.broken
    }

    fn dispatch(&mut self, msg: Tmessage<'_>) -> Res<Rmessage> {
        if !keeps_chains(&msg) {
            self.cursors.get_mut().clear();
        }
        match msg {
            Tmessage::Version { msize, version } => self.version(msize, version),
            Tmessage::Attach { fid, .. } => {
                self.check_new_fid(fid, None)?;
                self.fids.insert(
                    fid,
                    Fid {
                        path: Vec::new(),
                        dir: true,
                        open: None,
                        listing: None,
                    },
                );
                Ok(Rmessage::Attach {
                    qid: qid(&[], true),
                })
            }
            Tmessage::Flush { .. } => Ok(Rmessage::Flush),
            Tmessage::Walk { fid, newfid, names } => self.walk(fid, newfid, &names),
            Tmessage::Lopen { fid, flags } => self.lopen(fid, flags),
            Tmessage::Lcreate {
                fid, name, flags, ..
            } => self.lcreate(fid, name, flags),
            Tmessage::Read { fid, offset, count } => {
                let mut data = Vec::new();
                self.read_into(fid, offset, count, &mut data)?;
                Ok(Rmessage::Read { data })
            }
            Tmessage::Write { fid, offset, data } => self.write(fid, offset, data),
            Tmessage::Clunk { fid } => {
                self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
                Ok(Rmessage::Clunk)
            }
            Tmessage::Getattr { fid, .. } => self.getattr(fid),
            Tmessage::Setattr { fid, attr } => self.setattr(fid, &attr),
            Tmessage::Readdir { fid, offset, count } => self.readdir(fid, offset, count),
            Tmessage::Mkdir { dfid, name, .. } => self.mkdir(dfid, name),
            Tmessage::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => self.renameat(olddirfid, oldname, newdirfid, newname),
            Tmessage::Rename { fid, dfid, name } => {
                let f = self.fid(fid)?;
                let (old, parent) = f.path.split_last().ok_or(Errno(libc::EBUSY))?;
                let (old, parent) = (old.clone(), parent.to_vec());
                let new_parent = self.dir_fid(dfid)?.path.clone();
                self.rename(&parent, &old, &new_parent, name)?;
                Ok(Rmessage::Rename)
            }
            Tmessage::Unlinkat { dfid, name, flags } => self.unlinkat(dfid, name, flags),
            Tmessage::Remove { fid } => {
                // Tremove clunks the fid whatever happens (9P).
                let f = self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
                let (name, parent) = f.path.split_last().ok_or(Errno(libc::EBUSY))?;
                self.dir(parent)
                    .and_then(|dir| dir.remove(name))
                    .map_err(errno)?;
                Ok(Rmessage::Remove)
            }
            Tmessage::Statfs { fid } => {
                self.fid(fid)?;
                let stats = self.fs.stats().map_err(errno)?;
                Ok(Rmessage::Statfs(StatFs {
                    ty: MSDOS_SUPER_MAGIC,
                    bsize: stats.cluster_size(),
                    blocks: u64::from(stats.total_clusters()),
                    bfree: u64::from(stats.free_clusters()),
                    bavail: u64::from(stats.free_clusters()),
                    namelen: 255,
                    ..StatFs::default()
                }))
            }
            Tmessage::Fsync { fid, .. } => {
                self.fid(fid)?;
                self.image_file.sync_data().map_err(errno)?;
                Ok(Rmessage::Fsync)
            }
            Tmessage::Lock { fid, .. } | Tmessage::Getlock { fid, .. } => {
                self.fid(fid)?;
                single_client_lock(&msg).ok_or(Errno(libc::EINVAL))
            }
            Tmessage::Readlink { fid } => {
                // Nothing on FAT is a symlink.
                self.fid(fid)?;
                err(libc::EINVAL)
            }
            Tmessage::Symlink { .. }
            | Tmessage::Link { .. }
            | Tmessage::Mknod { .. }
            | Tmessage::Auth { .. }
            | Tmessage::Xattrwalk { .. }
            | Tmessage::Xattrcreate { .. } => err(libc::EOPNOTSUPP),
        }
    }

    fn version(&mut self, msize: u32, version: &[u8]) -> Res<Rmessage> {
        // A new session: every fid of the old one is gone.
        self.fids.clear();
        let (negotiated, reply) = crate::host::p9::negotiate_version(msize, version)?;
        if let Some(msize) = negotiated {
            self.msize = msize;
        }
        Ok(reply)
    }

    fn fid(&self, fid: u32) -> Res<&Fid> {
        self.fids.get(&fid).ok_or(Errno(libc::EBADF))
    }

    fn dir_fid(&self, fid: u32) -> Res<&Fid> {
        let f = self.fid(fid)?;
        if !f.dir {
            return err(libc::ENOTDIR);
        }
        Ok(f)
    }

    fn check_new_fid(&self, fid: u32, replacing: Option<u32>) -> Res<()> {
        p9::check_new_fid(&self.fids, MAX_FIDS, fid, replacing)
    }

    /// The directory at `path`, opened one component at a time.
    fn dir(&self, path: &[String]) -> io::Result<Dir<'_>> {
        let mut dir = self.fs.root_dir();
        for c in path {
            dir = dir.open_dir(c)?;
        }
        Ok(dir)
    }

    /// The entry `name` of the directory at `parent` (names compare as FAT does, ignoring
    /// case).
    fn find(&self, parent: &[String], name: &str) -> Res<Found> {
        let dir = self.dir(parent).map_err(errno)?;
        // Compared as fatfs compares (upper case), so that what is found here is what
        // fatfs opens, creates over, or refuses.
        let wanted = name.to_uppercase();
        for entry in dir.iter() {
            let e = entry.map_err(errno)?;
            let long = e.file_name();
            if long.to_uppercase() == wanted || e.short_file_name().to_uppercase() == wanted {
                return Ok(Found {
                    name: long,
                    dir: e.is_dir(),
                    size: e.len(),
                    mtime: unix_time(&e.modified()),
                    atime: unix_time(&fatfs::DateTime {
                        date: e.accessed(),
                        time: fatfs::Time {
                            hour: 0,
                            min: 0,
                            sec: 0,
                            millis: 0,
                        },
                    }),
                    ctime: unix_time(&e.created()),
                });
            }
        }
        err(libc::ENOENT)
    }

    /// What `path` names (the root, or an entry).
    fn lookup(&self, path: &[String]) -> Res<Found> {
        match path.split_last() {
            None => Ok(Found {
                name: String::new(),
                dir: true,
                size: 0,
                mtime: 0,
                atime: 0,
                ctime: 0,
            }),
            Some((name, parent)) => self.find(parent, name),
        }
    }

    /// The file at `path`, opened for reading and writing.
    fn file(&self, path: &[String]) -> Res<fatfs::File<'_, Disk>> {
        let (name, parent) = path.split_last().ok_or(Errno(libc::EISDIR))?;
        self.dir(parent)
            .and_then(|d| d.open_file(name))
            .map_err(errno)
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Res<Rmessage> {
        self.check_new_fid(newfid, Some(fid))?;
        let start = self.fid(fid)?;
        let mut path = start.path.clone();
        let mut dir = start.dir;
        let mut qids = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let step = if *name == b".." {
                path.pop();
                Ok(true)
            } else {
                component(name).and_then(|c| {
                    if !dir {
                        return err(libc::ENOTDIR);
                    }
                    let found = self.find(&path, &c)?;
                    path.push(found.name);
                    Ok(found.dir)
                })
            };
            match step {
                Ok(is_dir) => {
                    dir = is_dir;
                    qids.push(qid(&path, dir));
                }
                Err(e) if i == 0 => return Err(e),
                Err(_) => return Ok(Rmessage::Walk { qids }),
            }
        }
        self.fids.insert(
            newfid,
            Fid {
                path,
                dir,
                open: None,
                listing: None,
            },
        );
        Ok(Rmessage::Walk { qids })
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if f.open.is_some() {
            return err(libc::EBADF);
        }
        let (read, write) = access(flags)?;
        let (path, dir) = (f.path.clone(), f.dir);
        if dir && write {
            return err(libc::EISDIR);
        }
        if !dir {
            // Exists still (someone may have removed it through another fid).
            let mut file = self.file(&path)?;
            if write && flags & wire::DOTL_TRUNC != 0 {
                file.truncate().map_err(errno)?;
            }
        } else {
            self.dir(&path).map_err(errno)?;
        }
        if let Some(f) = self.fids.get_mut(&fid) {
            f.open = Some((read, write));
        }
        Ok(Rmessage::Lopen {
            qid: qid(&path, dir),
            iounit: 0,
        })
    }

    fn lcreate(&mut self, fid: u32, name: &[u8], flags: u32) -> Res<Rmessage> {
        let f = self.dir_fid(fid)?;
        if f.open.is_some() {
            return err(libc::EBADF);
        }
        let name = component(name)?;
        let (read, write) = access(flags)?;
        let parent = f.path.clone();
        let stored = match self.find(&parent, &name) {
            Ok(found) if flags & wire::DOTL_EXCL != 0 || found.dir => return err(libc::EEXIST),
            Ok(found) => {
                let mut path = parent.clone();
                path.push(found.name.clone());
                let mut file = self.file(&path)?;
                if write && flags & wire::DOTL_TRUNC != 0 {
                    file.truncate().map_err(errno)?;
                }
                found.name
            }
            Err(Errno(libc::ENOENT)) => {
                let dir = self.dir(&parent).map_err(errno)?;
                drop(dir.create_file(&name).map_err(errno)?);
                name
            }
            Err(e) => return Err(e),
        };
        let mut path = parent;
        path.push(stored);
        let q = qid(&path, false);
        self.fids.insert(
            fid,
            Fid {
                path,
                dir: false,
                open: Some((read, write)),
                listing: None,
            },
        );
        Ok(Rmessage::Lcreate { qid: q, iounit: 0 })
    }

    fn open_fid(&self, fid: u32, for_write: bool) -> Res<&Fid> {
        let f = self.fid(fid)?;
        match f.open {
            None => err(libc::EBADF),
            Some((_, false)) if for_write => err(libc::EBADF),
            Some((false, _)) if !for_write => err(libc::EBADF),
            Some(_) if f.dir => err(libc::EISDIR),
            Some(_) => Ok(f),
        }
    }

    /// Appends to `data` what a read of `count` bytes at `offset` returns (on an error,
    /// `data` may hold part of an attempt: the caller drops what it appended).
    fn read_into(&self, fid: u32, offset: u64, count: u32, data: &mut Vec<u8>) -> Res<()> {
        let f = self.open_fid(fid, false)?;
        let mut file = self.file(&f.path)?;
        let size = file.len().unwrap_or(0);
        let want = count.min(self.msize - RDATA_HDR) as u64;
        let len = want.min(size.saturating_sub(offset)) as usize;
        if len > 0 {
            self.seek(&mut file, offset)?;
            let at = data.len();
            data.resize(at + len, 0);
            // A file shorter than its entry says (damage met now) reads as EIO.
            file.read_exact(&mut data[at..])
                .map_err(|_| Errno(libc::EIO))?;
            self.remember(&file);
        }
        Ok(())
    }

    /// Moves `file` (just opened) to `offset`, walking its chain from where the last read
    /// or write of it left off when that is not past `offset`.
    fn seek(&self, file: &mut fatfs::File<'_, Disk>, offset: u64) -> Res<()> {
        let kept = file
            .first_cluster()
            .and_then(|first| self.cursors.borrow().get(&first).copied());
        if let Some(cursor) = kept.filter(|&(at, _)| u64::from(at) <= offset) {
            file.restore_cursor(cursor);
        }
        // Short of `offset` only if the chain ends before the size its entry records
        // (damage): reading or writing there would land elsewhere.
        if file.seek(SeekFrom::Start(offset)).map_err(errno)? != offset {
            return err(libc::EIO);
        }
        Ok(())
    }

    /// Keeps where `file` stands for the next read or write of it.
    fn remember(&self, file: &fatfs::File<'_, Disk>) {
        if let Some(first) = file.first_cluster() {
            let mut cursors = self.cursors.borrow_mut();
            if cursors.len() >= MAX_CURSORS && !cursors.contains_key(&first) {
                cursors.clear();
            }
            cursors.insert(first, file.cursor());
        }
    }

    /// Clusters needed to hold `bytes`.
    fn clusters(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_bytes)
    }

    /// `ENOSPC` unless growing a file from `from` to `to` bytes fits in the free clusters.
    fn reserve(&self, from: u64, to: u64) -> Res<()> {
        let more = self.clusters(to).saturating_sub(self.clusters(from));
        let free = u64::from(self.fs.stats().map_err(errno)?.free_clusters());
        if more > free {
            return err(libc::ENOSPC);
        }
        Ok(())
    }

    /// Extends `file` (of `size` bytes) with zeroes to `to` bytes.
    fn grow(&self, file: &mut fatfs::File<'_, Disk>, size: u64, to: u64) -> Res<()> {
        self.reserve(size, to)?;
        file.seek(SeekFrom::End(0)).map_err(errno)?;
        let mut left = to - size;
        while left > 0 {
            let n = left.min(ZEROES.len() as u64) as usize;
            file.write_all(&ZEROES[..n]).map_err(errno)?;
            left -= n as u64;
        }
        Ok(())
    }

    fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Res<Rmessage> {
        let f = self.open_fid(fid, true)?;
        // FAT sizes are 32-bit.
        offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= u64::from(u32::MAX))
            .ok_or(Errno(libc::EFBIG))?;
        let mut file = self.file(&f.path)?;
        let size = file.len().unwrap_or(0);
        if offset > size {
            self.seek(&mut file, size)?;
            self.grow(&mut file, size, offset)?;
        }
        self.seek(&mut file, offset)?;
        let mut done = 0;
        while done < data.len() {
            match file.write(&data[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                // What fit is written; the app hears of the rest on its next write.
                Err(_) if done > 0 => break,
                Err(e) => return Err(errno(e)),
            }
        }
        self.remember(&file);
        Ok(Rmessage::Write { count: done as u32 })
    }

    fn getattr(&self, fid: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        let found = self.lookup(&f.path)?;
        let mode = if found.dir {
            libc::S_IFDIR | 0o755
        } else {
            libc::S_IFREG | 0o644
        };
        Ok(Rmessage::Getattr(Attr {
            valid: wire::GETATTR_BASIC,
            qid: qid(&f.path, found.dir),
            mode,
            nlink: 1,
            size: found.size,
            blksize: self.cluster_bytes,
            blocks: self.clusters(found.size) * self.cluster_bytes / 512,
            atime_sec: found.atime,
            mtime_sec: found.mtime,
            ctime_sec: found.ctime,
            ..Attr::default()
        }))
    }

    fn setattr(&mut self, fid: u32, a: &wire::SetAttr) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        let path = f.path.clone();
        let found = self.lookup(&path)?;
        if a.valid & wire::SETATTR_SIZE != 0 {
            if found.dir {
                return err(libc::EISDIR);
            }
            if a.size > u64::from(u32::MAX) {
                return err(libc::EFBIG);
            }
            let mut file = self.file(&path)?;
            if a.size > found.size {
                self.grow(&mut file, found.size, a.size)?;
            } else if a.size < found.size {
                file.seek(SeekFrom::Start(a.size)).map_err(errno)?;
                file.truncate().map_err(errno)?;
            }
        }
        if a.valid & (wire::SETATTR_ATIME | wire::SETATTR_MTIME) != 0 && !found.dir {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut file = self.file(&path)?;
            let at = |set: u32, given: u32, sec: u64| {
                (a.valid & set != 0).then(|| {
                    if a.valid & given != 0 {
                        // Times before the epoch arrive as two's complement: clamp to 1980.
                        fat_time(if (sec as i64) < 0 { 0 } else { sec })
                    } else {
                        fat_time(now)
                    }
                })
            };
            #[allow(deprecated)] // set_* are the only way to store a given time in 0.3
            {
                if let Some(t) = at(wire::SETATTR_MTIME, wire::SETATTR_MTIME_SET, a.mtime_sec) {
                    file.set_modified(t);
                }
                if let Some(t) = at(wire::SETATTR_ATIME, wire::SETATTR_ATIME_SET, a.atime_sec) {
                    file.set_accessed(t.date);
                }
            }
            file.flush().map_err(errno)?;
        }
        // Modes and owners: FAT has none to change.
        Ok(Rmessage::Setattr)
    }

    fn readdir(&mut self, fid: u32, offset: u64, count: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if !f.dir {
            return err(libc::ENOTDIR);
        }
        if f.open.is_none() {
            return err(libc::EBADF);
        }
        let max = count.min(self.msize - RDATA_HDR) as usize;
        if offset == 0 || f.listing.is_none() {
            let listing = self.list(&f.path)?;
            if let Some(f) = self.fids.get_mut(&fid) {
                f.listing = Some(listing);
            }
        }
        let f = self.fid(fid)?;
        let entries = f.listing.as_deref().unwrap_or_default();
        let mut parent = f.path.clone();
        parent.pop();
        let mut data = Vec::new();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, is_dir)) in entries.iter().enumerate().skip(start) {
            if data.len() + DirEntry::encoded_len(name.len()) > max {
                break;
            }
            let q = match name.as_str() {
                "." => qid(&f.path, true),
                ".." => qid(&parent, true),
                _ => {
                    let mut path = f.path.clone();
                    path.push(name.clone());
                    qid(&path, *is_dir)
                }
            };
            DirEntry {
                qid: q,
                offset: i as u64 + 1,
                ty: if *is_dir { libc::DT_DIR } else { libc::DT_REG },
                name: name.as_bytes(),
            }
            .encode(&mut data);
        }
        Ok(Rmessage::Readdir { data })
    }

    /// The entries of the directory at `path`, `.` and `..` first.
    fn list(&self, path: &[String]) -> Res<Vec<(String, bool)>> {
        let dir = self.dir(path).map_err(errno)?;
        let mut entries: Vec<(String, bool)> = vec![(".".into(), true), ("..".into(), true)];
        for entry in dir.iter() {
            let e = entry.map_err(errno)?;
            let name = e.file_name();
            // Names a crafted image may hold that are no single component are not listed.
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                continue;
            }
            entries.push((name, e.is_dir()));
        }
        Ok(entries)
    }

    fn mkdir(&mut self, dfid: u32, name: &[u8]) -> Res<Rmessage> {
        let parent = self.dir_fid(dfid)?.path.clone();
        let name = component(name)?;
        match self.find(&parent, &name) {
            Ok(_) => return err(libc::EEXIST),
            Err(Errno(libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        self.dir(&parent)
            .and_then(|d| d.create_dir(&name))
            .map_err(errno)?;
        let mut path = parent;
        path.push(name);
        Ok(Rmessage::Mkdir {
            qid: qid(&path, true),
        })
    }

    fn unlinkat(&mut self, dfid: u32, name: &[u8], flags: u32) -> Res<Rmessage> {
        let parent = self.dir_fid(dfid)?.path.clone();
        let name = component(name)?;
        let found = self.find(&parent, &name)?;
        match (found.dir, flags & AT_REMOVEDIR != 0) {
            (true, false) => return err(libc::EISDIR),
            (false, true) => return err(libc::ENOTDIR),
            _ => {}
        }
        let dir = self.dir(&parent).map_err(errno)?;
        dir.remove(&found.name).map_err(errno)?;
        Ok(Rmessage::Unlinkat)
    }

    fn renameat(
        &mut self,
        olddirfid: u32,
        oldname: &[u8],
        newdirfid: u32,
        newname: &[u8],
    ) -> Res<Rmessage> {
        let old_parent = self.dir_fid(olddirfid)?.path.clone();
        let new_parent = self.dir_fid(newdirfid)?.path.clone();
        self.rename(&old_parent, &component(oldname)?, &new_parent, newname)?;
        Ok(Rmessage::Renameat)
    }

    /// Renames `old_parent/old` to `new_parent/new`, replacing a file or an empty directory
    /// there as POSIX does (FAT cannot do that atomically: the old one is removed first).
    fn rename(
        &mut self,
        old_parent: &[String],
        old: &str,
        new_parent: &[String],
        new: &[u8],
    ) -> Res<()> {
        let new = component(new)?;
        let src = self.find(old_parent, old)?;
        let mut old_path = old_parent.to_vec();
        old_path.push(src.name.clone());
        if src.dir && new_parent.starts_with(&old_path) {
            // Into itself.
            return err(libc::EINVAL);
        }
        match self.find(new_parent, &new) {
            Ok(dst) => {
                let same_dir = folded(old_parent) == folded(new_parent);
                if same_dir && dst.name.to_uppercase() == src.name.to_uppercase() {
                    if dst.name == new {
                        return Ok(());
                    }
                    // Only the case changes: FAT sees one name, so go through a free one.
                    let tmp = format!(".wasmvm-rename-{}", std::process::id());
                    {
                        let dir = self.dir(old_parent).map_err(errno)?;
                        dir.rename(&src.name, &dir, &tmp).map_err(errno)?;
                        dir.rename(&tmp, &dir, &new).map_err(errno)?;
                    }
                    self.renamed(&old_path, new_parent, &new);
                    return Ok(());
                }
                match (src.dir, dst.dir) {
                    (true, false) => return err(libc::ENOTDIR),
                    (false, true) => return err(libc::EISDIR),
                    _ => {}
                }
                // Removing a non-empty directory fails here, as rename(2) would.
                let dir = self.dir(new_parent).map_err(errno)?;
                dir.remove(&dst.name).map_err(errno)?;
            }
            Err(Errno(libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        {
            let from = self.dir(old_parent).map_err(errno)?;
            let to = self.dir(new_parent).map_err(errno)?;
            from.rename(&src.name, &to, &new).map_err(errno)?;
        }
        self.renamed(&old_path, new_parent, &new);
        Ok(())
    }

    /// Fids at or under `old` now live under `new_parent/new`.
    fn renamed(&mut self, old: &[String], new_parent: &[String], new: &str) {
        for f in self.fids.values_mut() {
            if f.path.starts_with(old) {
                let mut path = new_parent.to_vec();
                path.push(new.to_string());
                path.extend_from_slice(&f.path[old.len()..]);
                f.path = path;
            }
        }
    }
}

impl FileServer for VolumeServer {
    fn handle(&mut self, request: &[u8], out: &mut Vec<u8>) {
        let msize = self.msize;
        let mut panicked = false;
        // Reads go straight into the reply (see `answer_read_in_place`); one that fails,
        // or panics inside `fatfs`, is answered below (`EIO` once broken).
        if !self.broken
            && answer_read_in_place(msize, request, out, |fid, offset, count, out| {
                catch_unwind(AssertUnwindSafe(|| self.read_into(fid, offset, count, out)))
                    .unwrap_or_else(|_| {
                        panicked = true;
                        err(libc::EIO)
                    })
            })
        {
            return;
        }
        self.broken |= panicked;
        if self.broken {
            answer(msize, request, out, |_| err(libc::EIO));
            return;
        }
        answer(msize, request, out, |msg| {
            match catch_unwind(AssertUnwindSafe(|| self.dispatch(msg))) {
                Ok(reply) => reply,
                Err(_) => {
                    panicked = true;
                    err(libc::EIO)
                }
            }
        });
        self.broken |= panicked;
    }

    /// Writes the free-cluster summary and clears the dirty flag (unless `fatfs` panicked),
    /// then makes the image durable.
    fn close(self: Box<Self>) -> io::Result<()> {
        let VolumeServer {
            fs,
            image_file,
            broken,
            ..
        } = *self;
        if broken {
            // Its state cannot be trusted: not even the unmount its Drop would do.
            std::mem::forget(fs);
        } else {
            fs.unmount()?;
        }
        image_file.sync_all()
    }
}

/// Read and write access from `Tlopen`/`Tlcreate` flags.
fn access(flags: u32) -> Res<(bool, bool)> {
    match flags & wire::DOTL_ACCMODE {
        wire::DOTL_RDONLY => Ok((true, false)),
        wire::DOTL_WRONLY => Ok((false, true)),
        wire::DOTL_RDWR => Ok((true, true)),
        _ => err(libc::EINVAL),
    }
}

/// A guest name as one component, by the directory server's rules, and UTF-8 (FAT stores
/// names as UTF-16).
fn component(name: &[u8]) -> Res<String> {
    let name = p9::component(name)?;
    name.into_string().map_err(|_| Errno(libc::EINVAL))
}

fn folded(path: &[String]) -> Vec<String> {
    path.iter().map(|c| c.to_uppercase()).collect()
}

/// A qid for `path`: FAT has no inode numbers, so the path (as FAT compares names) is
/// hashed (FNV-1a); it stays the same for the run unless the object is renamed.
fn qid(path: &[String], dir: bool) -> Qid {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in path {
        for b in c.to_uppercase().bytes().chain([b'/']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Qid {
        ty: if dir { wire::QTDIR } else { wire::QTFILE },
        version: 0,
        path: h | 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_times_round_trip_and_clamp() {
        for secs in [
            315_532_800,
            1_700_000_000,
            951_782_400, /* 2000-02-29 */
        ] {
            assert_eq!(unix_time(&fat_time(secs)), secs);
        }
        let t = fat_time(951_782_400);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        assert_eq!(unix_time(&fat_time(0)), 315_532_800, "before 1980 clamps");
        assert_eq!(fat_time(u64::MAX).date.year, 2107);
    }
}
