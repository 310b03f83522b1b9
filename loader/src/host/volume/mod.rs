//! Persistent volumes (`wasmvm volume create`, `wasmvm run --volume IMAGE::GUEST`): FAT disk
//! images (the `fatfs` crate; `mtools`, `fsck.fat` or a loop mount read them on any host)
//! whose files survive the VM.
//!
//! A run checks the volume out: under an exclusive lock on the image, its tree is copied into
//! a private directory, which the guest gets as a live directory (virtio-9p, on either
//! backend). When the VM has ended, however it ended, the tree is written back into a fresh
//! image of the same size, which atomically replaces the old one. So an image is never seen
//! half-written, and the guest never parses a disk format; the price is that changes reach
//! the image at the end of the run, not during it, and are lost if the `wasmvm` process itself
//! is killed (the image then keeps its previous contents).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Smallest volume: below this FAT has no room worth having.
pub const MIN_SIZE: u64 = 1 << 20;
/// Largest volume: FAT32's practical limit for `fatfs`.
pub const MAX_SIZE: u64 = 2 << 40;

#[derive(Debug, Error)]
pub enum VolumeError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("{} already exists; wasmvm volume create never overwrites", .0.display())]
    Exists(PathBuf),
    #[error("volume size {0} is outside 1M..2T")]
    Size(u64),
    #[error("{}: not a wasmvm volume (a FAT disk image): {cause}", path.display())]
    NotFat { path: PathBuf, cause: io::Error },
    #[error("{} is in use by another wasmvm run", .0.display())]
    Busy(PathBuf),
    #[error("{}: {what} cannot be stored on a FAT volume", path.display())]
    Unsupported { path: PathBuf, what: &'static str },
    #[error(
        "{} was not updated ({cause}); the run's files are kept in {}",
        image.display(),
        kept.display()
    )]
    NotCommitted {
        image: PathBuf,
        kept: PathBuf,
        cause: Box<VolumeError>,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |cause| VolumeError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Creates an empty volume of `size` bytes at `path` (a sparse file: only the FAT structures
/// take disk space).
pub fn create(path: &Path, size: u64) -> Result<(), VolumeError> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(VolumeError::Size(size));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => VolumeError::Exists(path.to_path_buf()),
            _ => VolumeError::Io {
                path: path.to_path_buf(),
                cause: e,
            },
        })?;
    let made = format(&mut file, size).and_then(|()| file.sync_all());
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(io_at(path)(e));
    }
    Ok(())
}

fn format(file: &mut File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    fatfs::format_volume(
        &mut *file,
        fatfs::FormatVolumeOptions::new().volume_label(*b"WASMVM     "),
    )
}

/// A volume checked out for one run: the locked image and the directory holding its tree.
pub struct Checkout {
    image: PathBuf,
    /// Keeps the exclusive lock for the whole run.
    _lock: File,
    size: u64,
    dir: tempfile::TempDir,
}

impl Checkout {
    /// Locks the image at `image` and copies its tree into a private directory.
    pub fn open(image: &Path) -> Result<Checkout, VolumeError> {
        // Resolved once: a symlinked volume is the file it points to, which is locked and
        // replaced at commit; the link itself stays a link.
        let resolved = std::fs::canonicalize(image).map_err(io_at(image))?;
        let image = resolved.as_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(io_at(image))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(VolumeError::Busy(image.to_path_buf()));
        }
        // A run that committed between our open and our lock replaced the file: what we
        // hold is the old one. The newer run's work must not be checked out stale.
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata().map_err(io_at(image))?;
        let now = std::fs::metadata(image).map_err(io_at(image))?;
        if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
            return Err(VolumeError::Busy(image.to_path_buf()));
        }
        let size = file.seek(SeekFrom::End(0)).map_err(io_at(image))?;
        file.seek(SeekFrom::Start(0)).map_err(io_at(image))?;
        let dir = tempfile::Builder::new()
            .prefix("wasmvm-volume-")
            .tempdir()
            .map_err(io_at(image))?;
        {
            let fs =
                fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(|cause| {
                    VolumeError::NotFat {
                        path: image.to_path_buf(),
                        cause,
                    }
                })?;
            copy_out(&fs.root_dir(), dir.path()).map_err(io_at(image))?;
        }
        Ok(Checkout {
            image: image.to_path_buf(),
            _lock: file,
            size,
            dir,
        })
    }

    /// The directory the guest gets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the tree back: a fresh image of the same size next to the old one, then an
    /// atomic rename over it. If that fails (e.g. the app made a symlink, which FAT cannot
    /// store), the old image stays and the run's tree is kept on disk, named in the error.
    pub fn commit(self) -> Result<(), VolumeError> {
        match self.write_back() {
            Ok(()) => Ok(()),
            Err(cause) => Err(VolumeError::NotCommitted {
                image: self.image,
                kept: self.dir.keep(),
                cause: Box::new(cause),
            }),
        }
    }

    fn write_back(&self) -> Result<(), VolumeError> {
        let parent = self
            .image
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut fresh = tempfile::Builder::new()
            .prefix(".wasmvm-volume-")
            .tempfile_in(parent)
            .map_err(io_at(&self.image))?;
        format(fresh.as_file_mut(), self.size).map_err(io_at(&self.image))?;
        {
            let fs = fatfs::FileSystem::new(fresh.as_file_mut(), fatfs::FsOptions::new())
                .map_err(io_at(&self.image))?;
            copy_in(self.dir.path(), &fs.root_dir())?;
            fs.unmount().map_err(io_at(&self.image))?;
        }
        // Keep the image's permissions (the temporary file starts at 0600).
        let mode = std::fs::metadata(&self.image)
            .map_err(io_at(&self.image))?
            .permissions();
        fresh
            .as_file()
            .set_permissions(mode)
            .map_err(io_at(&self.image))?;
        fresh.as_file().sync_all().map_err(io_at(&self.image))?;
        fresh
            .persist(&self.image)
            .map_err(|e| io_at(&self.image)(e.error))?;
        // The rename itself must survive a crash too.
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_at(&self.image))?;
        Ok(())
    }
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
            let mut data = Vec::with_capacity(entry.len() as usize);
            entry.to_file().read_to_end(&mut data)?;
            std::fs::write(&target, &data)?;
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
            let data = std::fs::read(&path).map_err(io_at(&path))?;
            let mut file = to.create_file(name).map_err(fat_err)?;
            file.truncate().map_err(fat_err)?;
            file.write_all(&data).map_err(fat_err)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_out_change_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.img");
        create(&img, 8 << 20).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(create(&img, 8 << 20), Err(VolumeError::Exists(_))));
        assert!(matches!(
            create(&dir.path().join("tiny.img"), 1000),
            Err(VolumeError::Size(1000))
        ));

        let out = Checkout::open(&img).unwrap();
        assert_eq!(std::fs::read_dir(out.dir()).unwrap().count(), 0);
        // A second run of the same volume is refused while the first holds it.
        assert!(matches!(Checkout::open(&img), Err(VolumeError::Busy(_))));
        std::fs::create_dir(out.dir().join("A long directory name")).unwrap();
        std::fs::write(out.dir().join("A long directory name/data.json"), "{}").unwrap();
        std::fs::write(out.dir().join("top.txt"), vec![7u8; 100_000]).unwrap();
        out.commit().unwrap();

        let back = Checkout::open(&img).unwrap();
        assert_eq!(
            std::fs::read(back.dir().join("A long directory name/data.json")).unwrap(),
            b"{}"
        );
        assert_eq!(
            std::fs::read(back.dir().join("top.txt")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
        assert_eq!(
            std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
            0o644,
            "the commit keeps the image's mode"
        );
        // Names differing only in case cannot both be stored.
        std::fs::write(back.dir().join("TOP.TXT"), "x").unwrap();
        match back.commit() {
            Err(VolumeError::NotCommitted { kept, cause, .. }) => {
                assert!(matches!(*cause, VolumeError::Unsupported { .. }), "{cause}");
                std::fs::remove_dir_all(kept).unwrap();
            }
            other => panic!("{other:?}"),
        }
        let back = Checkout::open(&img).unwrap();
        // A symlink cannot be stored: the commit fails and the image keeps its contents.
        std::os::unix::fs::symlink("top.txt", back.dir().join("link")).unwrap();
        match back.commit() {
            Err(VolumeError::NotCommitted { kept, cause, .. }) => {
                assert!(matches!(*cause, VolumeError::Unsupported { .. }));
                assert!(kept.join("link").is_symlink());
                std::fs::remove_dir_all(kept).unwrap();
            }
            other => panic!("{other:?}"),
        }
        let again = Checkout::open(&img).unwrap();
        assert!(again.dir().join("top.txt").exists());
    }

    #[test]
    fn a_file_that_is_not_fat_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("junk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        assert!(matches!(
            Checkout::open(&img),
            Err(VolumeError::NotFat { .. })
        ));
    }
}
