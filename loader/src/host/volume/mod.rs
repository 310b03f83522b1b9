//! Persistent volumes (`wasmvm volume create`, `wasmvm run --volume IMAGE::GUEST`): FAT disk
//! images (the `fatfs` crate; `mtools`, `fsck.fat` or a loop mount read them on any host)
//! whose files survive the VM.
//!
//! A run first takes an exclusive lock on the image (resolved once, through symlinks: two
//! runs can never open one volume read-write at once) and [`check`]s it: a crafted or
//! damaged image is refused before anything trusts it. Then, by backend:
//!
//! - the built-in VMM serves the image itself ([`live`]): writes reach it during the run,
//!   `fd_sync` makes them durable, a full volume answers `ENOSPC` at the write;
//! - QEMU and host mode serve a directory, so the tree is checked out into one and written
//!   back into a fresh image when the run ends ([`checkout`]).
//!
//! The guest never parses a disk format either way.

pub mod check;
pub mod checkout;
mod disk;
pub mod live;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use checkout::Checkout;
pub use live::{LiveVolume, VolumeServer};

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
    #[error("{}: damaged or crafted volume image, refused: {damage}", path.display())]
    Damaged {
        path: PathBuf,
        damage: check::Damage,
    },
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

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
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

pub(crate) fn format(file: &mut File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    // One FAT: with two, a writer killed between updating the first copy and the second
    // leaves them different (the next run would put that right, but until then every
    // fsck.fat reports it). Every FAT driver reads a single copy.
    fatfs::format_volume(
        &mut *file,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"WASMVM     ")
            .fats(1),
    )?;
    // On FAT32 the formatter leaves the free-cluster count "unknown", which fsck.fat
    // reports; counting once and unmounting records it.
    file.seek(std::io::SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut *file, fatfs::FsOptions::new())?;
    fs.stats()?;
    fs.unmount()?;
    file.seek(std::io::SeekFrom::Start(0)).map(drop)
}

/// A volume image opened for one run: the real file (symlinks resolved once), locked
/// exclusively for the run, and checked.
pub(crate) struct Locked {
    /// The resolved path.
    pub image: PathBuf,
    pub file: File,
    pub summary: check::Summary,
}

impl Locked {
    pub fn open(image: &Path) -> Result<Locked, VolumeError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        // Resolved once: a symlinked volume is the file it points to, which is locked and
        // written; the link itself stays a link.
        let resolved = std::fs::canonicalize(image).map_err(io_at(image))?;
        let image = resolved.as_path();
        // Not a FIFO or device: a volume is a regular file (O_NONBLOCK keeps a FIFO's open
        // from waiting for a writer; the check below refuses it).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(image)
            .map_err(io_at(image))?;
        let held = file.metadata().map_err(io_at(image))?;
        if !held.is_file() {
            return Err(VolumeError::NotFat {
                path: image.to_path_buf(),
                cause: io::Error::other("not a regular file"),
            });
        }
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(VolumeError::Busy(image.to_path_buf()));
        }
        // A run that committed between our open and our lock replaced the file: what we
        // hold is the old one. The newer run's work must not be used stale.
        let now = std::fs::metadata(image).map_err(io_at(image))?;
        if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
            return Err(VolumeError::Busy(image.to_path_buf()));
        }
        let summary = check::check(&file, held.len()).map_err(|damage| match damage.not_fat {
            true => VolumeError::NotFat {
                path: image.to_path_buf(),
                cause: io::Error::other(damage.what),
            },
            false => VolumeError::Damaged {
                path: image.to_path_buf(),
                damage,
            },
        })?;
        // Under the lock, after a check that found no chain crossing another: what a killed
        // run left half-done is put right before anything reads the volume. Entries first:
        // clusters they let go of are then the FAT's lost ones.
        use std::os::unix::fs::FileExt;
        for (at, entry) in &summary.repaired_entries {
            file.write_all_at(entry, *at).map_err(io_at(image))?;
        }
        if let Some(fat) = &summary.repaired_fat {
            let g = summary.geometry;
            for copy in 0..g.fats {
                file.write_all_at(fat, g.fat_offset + copy * g.fat_bytes)
                    .map_err(io_at(image))?;
            }
        }
        if summary.repaired_fat.is_some() || !summary.repaired_entries.is_empty() {
            file.sync_data().map_err(io_at(image))?;
        }
        Ok(Locked {
            image: resolved,
            file,
            summary,
        })
    }
}

/// Opens the volume at `image` for the built-in VMM: locked, checked, ready to serve live.
pub fn open_live(image: &Path) -> Result<LiveVolume, VolumeError> {
    let locked = Locked::open(image)?;
    let head_len = locked.summary.geometry.data_offset;
    LiveVolume::new(&locked.image, locked.file, head_len).map_err(|cause| VolumeError::NotFat {
        path: locked.image.clone(),
        cause,
    })
}

#[cfg(test)]
mod live_tests;

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
