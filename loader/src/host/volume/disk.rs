//! The volume image as `fatfs` reads and writes it: positioned reads and writes on the image
//! file, each one a system call that hands the bytes to the host kernel at once.
//!
//! Nothing is buffered in this process, so a write the app was told succeeded is in the host's
//! page cache: killing `wasmvm` (even with SIGKILL) loses none of it; only the host losing
//! power can, until the app's `fd_sync` (or the end of the run) makes it durable.
//!
//! `fatfs` reads the FAT one entry at a time, so the metadata head of the image (boot
//! sector, FATs, FAT12/16 root directory) is also kept in memory: reads of it are served from
//! the copy, writes go to the file first and then to the copy (write-through).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The largest head kept in memory; beyond it, reads go to the file too.
const MAX_HEAD: u64 = 64 << 20;

pub struct Disk {
    file: File,
    pos: u64,
    /// The image's first bytes, as the file holds them.
    head: Vec<u8>,
}

impl Disk {
    /// The image `file`, with its first `head_len` bytes (the metadata) read into memory
    /// when that is at most [`MAX_HEAD`].
    pub fn new(file: File, head_len: u64) -> io::Result<Disk> {
        let mut head = Vec::new();
        if head_len <= MAX_HEAD {
            head = vec![0u8; head_len as usize];
            file.read_exact_at(&mut head, 0)?;
        }
        Ok(Disk { file, pos: 0, head })
    }
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match usize::try_from(self.pos)
            .ok()
            .and_then(|p| self.head.get(p..))
            .filter(|rest| !rest.is_empty())
        {
            Some(cached) => {
                let n = buf.len().min(cached.len());
                buf[..n].copy_from_slice(&cached[..n]);
                n
            }
            None => self.file.read_at(buf, self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        if let Some(cached) = usize::try_from(self.pos)
            .ok()
            .and_then(|p| self.head.get_mut(p..))
        {
            let m = n.min(cached.len());
            cached[..m].copy_from_slice(&buf[..m]);
        }
        self.pos += n as u64;
        Ok(n)
    }

    /// Nothing is buffered here; durability is [`File::sync_data`]'s job, asked for by the
    /// app's `fd_sync` and at the end of the run, not by every `fatfs` flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Disk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.file.metadata()?.len().checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_written_through_and_read_from_memory() {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(&[1u8; 8192]).unwrap();
        let mut disk = Disk::new(tmp.try_clone().unwrap(), 4096).unwrap();
        disk.seek(SeekFrom::Start(4090)).unwrap();
        disk.write_all(&[9u8; 12]).unwrap();
        // Both the file and the copy have the bytes that straddle the head's end.
        let mut on_file = [0u8; 12];
        tmp.read_exact_at(&mut on_file, 4090).unwrap();
        assert_eq!(on_file, [9u8; 12]);
        let mut back = [0u8; 12];
        disk.seek(SeekFrom::Start(4090)).unwrap();
        disk.read_exact(&mut back).unwrap();
        assert_eq!(back, [9u8; 12]);
        assert_eq!(disk.seek(SeekFrom::End(0)).unwrap(), 8192);
        assert!(disk.seek(SeekFrom::Current(-9000)).is_err());
    }
}
