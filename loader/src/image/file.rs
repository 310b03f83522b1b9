//! Reading an image file safely: only a regular file (never a directory, a device such as
//! `/dev/zero`, or a FIFO that would block forever), no larger than [`MAX_IMAGE_BYTES`],
//! checked before a byte is read. Every command that takes an image (`run`, `run --verify`,
//! `inspect`, `image export`) and every backend goes through here.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The largest image wasmvm reads: guest RAM is at most 3 GiB, and the bundle must fit in
/// it below the devices, so no larger image could boot.
pub const MAX_IMAGE_BYTES: u64 = 3 << 30;

#[derive(Debug, Error)]
pub enum ImageFileError {
    #[error("{}: cannot read the image: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: is a directory, not a wasmvm image", path.display())]
    Directory { path: PathBuf },
    #[error("{}: is not a regular file (a device, FIFO or socket), so not a wasmvm image", path.display())]
    NotRegular { path: PathBuf },
    #[error("{}: is {size} bytes, more than the {MAX_IMAGE_BYTES} an image can be", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}: the image file is empty", path.display())]
    Empty { path: PathBuf },
}

/// Opens `path` for reading without blocking on a FIFO, and checks what it is.
pub fn open(path: &Path) -> Result<(std::fs::File, u64), ImageFileError> {
    let io = |cause| ImageFileError::Io {
        path: path.to_path_buf(),
        cause,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(ImageFileError::Directory {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(ImageFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_IMAGE_BYTES {
        return Err(ImageFileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    Ok((file, meta.len()))
}

/// Reads the whole image at `path` after [`open`]'s checks; at most [`MAX_IMAGE_BYTES`] are
/// read even if the file grows meanwhile.
pub fn read(path: &Path) -> Result<Vec<u8>, ImageFileError> {
    let (file, len) = open(path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_IMAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|cause| ImageFileError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(ImageFileError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
        });
    }
    // As the built-in VMM's mapping says it, so every command names the same problem.
    if bytes.is_empty() {
        return Err(ImageFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_a_bounded_size_are_read() {
        let e = read(Path::new("/tmp")).unwrap_err().to_string();
        assert_eq!(e, "/tmp: is a directory, not a wasmvm image");
        let e = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.img");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_IMAGE_BYTES + 1)
            .unwrap();
        let e = read(&big).unwrap_err().to_string();
        assert!(e.contains("more than the"), "{e}");
        let e = read(Path::new("/nonexistent.img")).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent.img: cannot read the image: "),
            "{e}"
        );
        let small = dir.path().join("small.img");
        std::fs::write(&small, b"abc").unwrap();
        assert_eq!(read(&small).unwrap(), b"abc");
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        let e = read(&empty).unwrap_err().to_string();
        assert!(e.ends_with("empty.img: the image file is empty"), "{e}");
    }
}
