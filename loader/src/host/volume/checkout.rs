//! A volume checked out into a host directory for a run, for the backends whose file
//! servers need one (QEMU's virtio-9p and host mode): the image's tree is copied out under
//! the run's lock, served as a live directory, and written back into a fresh image that
//! atomically replaces the old one when the run ends, however it ended.
//!
//! So an image is never seen half-written, but changes reach it only at the end of a run,
//! and a kill of the `wasmvm` process loses the run's changes (the image keeps its previous
//! contents). The files this leaves when killed (the checkout directory, the fresh image
//! beside the old one) have names derived from the volume, so the next run of that volume
//! removes them under its lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::check::Geometry;
use super::disk::Disk;
use super::{Locked, VolumeError, format, io_at};

/// A volume checked out for one run: the locked image and the directory holding its tree.
pub struct Checkout {
    image: PathBuf,
    /// Keeps the exclusive lock for the whole run.
    _lock: File,
    size: u64,
    /// `$TMPDIR/wasmvm-volume-KEY.PID`; removed when the checkout is dropped.
    dir: PathBuf,
}

/// A short name for a volume, the same for every run of it: FNV-1a of its resolved path.
fn key(image: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in image.as_os_str().as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Where the fresh image is written before it replaces `image`: beside it, so the rename
/// stays on one file system.
fn fresh_path(image: &Path) -> PathBuf {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    image.with_file_name(format!(".{name}.wasmvm-new"))
}

/// Removes what a killed run of this volume left: its checkout directories and a fresh
/// image it did not get to rename. Only called under the volume's lock, so no live run
/// owns them.
fn remove_stale(image: &Path, key: &str) {
    let _ = std::fs::remove_file(fresh_path(image));
    let prefix = format!("wasmvm-volume-{key}.");
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Checkout {
    /// Locks and checks the image at `image` and copies its tree into a private directory.
    pub fn open(image: &Path) -> Result<Checkout, VolumeError> {
        let Locked {
            image,
            file,
            summary,
        } = Locked::open(image)?;
        let key = key(&image);
        remove_stale(&image, &key);
        let dir = std::env::temp_dir().join(format!("wasmvm-volume-{key}.{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io_at(&dir))?;
        let checkout = Checkout {
            size: file_len(&file).map_err(io_at(&image))?,
            _lock: file.try_clone().map_err(io_at(&image))?,
            image,
            dir,
        };
        let image = checkout.image.clone();
        // The metadata cached: fatfs reads the FAT an entry at a time.
        let disk = Disk::new(file, summary.geometry.data_offset).map_err(io_at(&image))?;
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).map_err(|cause| {
            VolumeError::NotFat {
                path: image.clone(),
                cause,
            }
        })?;
        copy_out(&fs.root_dir(), &checkout.dir).map_err(io_at(&image))?;
        drop(fs);
        Ok(checkout)
    }

    /// The directory the guest gets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the tree back: a fresh image of the same size next to the old one, then an
    /// atomic rename over it. If that fails (e.g. the app made a symlink, which FAT cannot
    /// store, or the files no longer fit), the old image stays and the run's tree is kept
    /// on disk, named in the error.
    pub fn commit(mut self) -> Result<(), VolumeError> {
        match self.write_back() {
            Ok(()) => Ok(()),
            Err(cause) => {
                // Out of the way of the next run's clean-up.
                let kept = self.dir.with_file_name(format!(
                    "wasmvm-kept-{}.{}",
                    key(&self.image),
                    std::process::id()
                ));
                let kept = match std::fs::rename(&self.dir, &kept) {
                    Ok(()) => kept,
                    Err(_) => self.dir.clone(),
                };
                self.dir = PathBuf::new();
                Err(VolumeError::NotCommitted {
                    image: self.image.clone(),
                    kept,
                    cause: Box::new(cause),
                })
            }
        }
    }

    fn write_back(&self) -> Result<(), VolumeError> {
        let fresh_at = fresh_path(&self.image);
        let fail = io_at(&self.image);
        let _ = std::fs::remove_file(&fresh_at);
        let mut fresh = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&fresh_at)
            .map_err(io_at(&fresh_at))?;
        let written = (|| {
            format(&mut fresh, self.size).map_err(io_at(&self.image))?;
            {
                // The fresh volume's metadata cached, as at checkout.
                let mut boot = [0u8; 512];
                use std::os::unix::fs::FileExt;
                fresh
                    .read_exact_at(&mut boot, 0)
                    .map_err(io_at(&self.image))?;
                let head = Geometry::parse(&boot, self.size).map_or(0, |g| g.data_offset);
                let disk = Disk::new(fresh.try_clone().map_err(io_at(&self.image))?, head)
                    .map_err(io_at(&self.image))?;
                let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new())
                    .map_err(io_at(&self.image))?;
                copy_in(&self.dir, &fs.root_dir())?;
                fs.unmount().map_err(io_at(&self.image))?;
            }
            // Keep the image's permissions.
            let mode = std::fs::metadata(&self.image)
                .map_err(io_at(&self.image))?
                .permissions();
            fresh.set_permissions(mode).map_err(io_at(&self.image))?;
            fresh.sync_all().map_err(io_at(&self.image))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&fresh_at);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&fresh_at, &self.image) {
            let _ = std::fs::remove_file(&fresh_at);
            return Err(fail(e));
        }
        // The rename itself must survive a crash too.
        let parent = self.image.parent().unwrap_or(Path::new("/"));
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_at(&self.image))?;
        Ok(())
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn file_len(file: &File) -> io::Result<u64> {
    file.metadata().map(|m| m.len())
}

fn copy_out<T: fatfs::ReadWriteSeek>(from: &fatfs::Dir<'_, T>, to: &Path) -> io::Result<()> {
    for entry in from.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        // Names come from an image that may have been crafted: one that is not a single
        // plain component could place a file anywhere.
        if name.is_empty() || name.contains(['/', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the volume holds an invalid file name {name:?}"),
            ));
        }
        let target = to.join(&name);
        if entry.is_dir() {
            std::fs::create_dir(&target)?;
            copy_out(&entry.to_dir(), &target)?;
        } else {
            // Streamed: a file may be as large as FAT allows (4 GiB).
            let mut out = std::fs::File::create(&target)?;
            io::copy(&mut entry.to_file(), &mut out)?;
        }
    }
    Ok(())
}

fn copy_in<T: fatfs::ReadWriteSeek>(
    from: &Path,
    to: &fatfs::Dir<'_, T>,
) -> Result<(), VolumeError> {
    let entries = std::fs::read_dir(from).map_err(io_at(from))?;
    let mut entries: Vec<_> = entries.collect::<Result<_, _>>().map_err(io_at(from))?;
    entries.sort_by_key(|e| e.file_name());
    // FAT names are case-insensitive: `A` and `a` would silently become one file.
    let mut seen = std::collections::HashSet::new();
    for entry in &entries {
        if !seen.insert(entry.file_name().to_string_lossy().to_lowercase()) {
            return Err(VolumeError::Unsupported {
                path: entry.path(),
                what: "a name differing from another only in case",
            });
        }
    }
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(io_at(&path))?;
        let name = entry.file_name();
        let name = name.to_str().ok_or(VolumeError::Unsupported {
            path: path.clone(),
            what: "a file name that is not UTF-8",
        })?;
        let fat_err = |cause| VolumeError::Io {
            path: path.clone(),
            cause,
        };
        if kind.is_dir() {
            let dir = to.create_dir(name).map_err(fat_err)?;
            copy_in(&path, &dir)?;
        } else if kind.is_file() {
            let mut data = std::fs::File::open(&path).map_err(io_at(&path))?;
            let mut file = to.create_file(name).map_err(fat_err)?;
            file.truncate().map_err(fat_err)?;
            io::copy(&mut data, &mut file).map_err(fat_err)?;
        } else {
            return Err(VolumeError::Unsupported {
                path,
                what: if kind.is_symlink() {
                    "a symlink"
                } else {
                    "a special file"
                },
            });
        }
    }
    Ok(())
}
