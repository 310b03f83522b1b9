//! Image files mapped read-only instead of read: booting touches only the pages it needs (the
//! ELF headers, notes and the bundle's module for its checksum), and the built-in VMM maps
//! the kernel and bundle segments straight from the file into guest memory
//! ([`MappedImage::map_into`]), so every VM of one image shares them in the page cache.
//!
//! The hazards of file mappings: a private mapping still shows later writes to the file in
//! pages nobody has written, and touching pages lost to a truncation raises SIGBUS. So the
//! built-in VMM copies instead whenever a guest could reach the file (a writable live
//! directory); host processes changing an image under running VMs are the user's business
//! (`docs/design.md`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use crate::image::file::ImageFileError;

/// A whole file mapped read-only and private.
pub struct MappedImage {
    file: File,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing `&[u8]` views of it
// between threads is as safe as sharing any immutable slice.
unsafe impl Send for MappedImage {}
// SAFETY: as above.
unsafe impl Sync for MappedImage {}

impl MappedImage {
    /// Maps the image at `path`, which `image::file::open` checks first (a regular file of
    /// bounded size, opened without blocking).
    pub fn open(path: &Path) -> Result<Self, ImageFileError> {
        let (file, len) = crate::image::file::open(path)?;
        // At most `MAX_IMAGE_BYTES`, so it fits the address space.
        let len = len as usize;
        if len == 0 {
            return Err(ImageFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: a fresh read-only private mapping of `len` bytes of an open file; the kernel
        // picks the address, so it overlaps nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        let mapping_failed = |cause| ImageFileError::Io {
            path: path.to_path_buf(),
            cause,
        };
        if ptr == libc::MAP_FAILED {
            return Err(mapping_failed(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast())
            .ok_or_else(|| mapping_failed(std::io::Error::last_os_error()))?;
        Ok(MappedImage { file, ptr, len })
    }

    /// The file mapped.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives, and nothing
        // writes through the private read-only mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Maps `len` bytes of the file from `offset` over `host` (copy-on-write), replacing the
    /// pages there. `offset`, `host` and `len` must be page aligned and `offset + len` within
    /// the file; returns false (mapping nothing) otherwise.
    ///
    /// # Safety
    /// `[host, host + len)` must be part of a private mapping the caller owns, with no live
    /// Rust references into it (the guest-memory region of a VM that has not run yet).
    pub unsafe fn map_into(&self, host: *mut u8, offset: u64, len: usize) -> std::io::Result<bool> {
        let page = 4096;
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.len as u64);
        let aligned = [offset, len as u64, host as u64]
            .iter()
            .all(|v| v.is_multiple_of(page));
        if !fits || !aligned {
            return Ok(false);
        }
        // SAFETY: the caller owns `[host, host + len)`; MAP_FIXED replaces exactly those
        // pages with a private (copy-on-write) view of the file, which is within bounds.
        let got = unsafe {
            libc::mmap(
                host.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }
}

impl Drop for MappedImage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `open` made; no view outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
