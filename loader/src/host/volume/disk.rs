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
//!
//! It reads directory entries one field at a time too (1, 2, 4 and 11 bytes), and the server
//! looks a file's path up at every message: each small read past the head is served from
//! the one [`BLOCK`]-byte block around it, read whole once and written through like the head
//! (a dozen system calls per entry became one per block).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The largest head kept in memory; beyond it, reads go to the file too.
const MAX_HEAD: u64 = 64 << 20;

/// The block that small reads past the head are served from: a cluster of most volumes.
const BLOCK: usize = 4096;

pub struct Disk {
    file: File,
    pos: u64,
    /// The image's first bytes, as the file holds them.
    head: Vec<u8>,
    /// The last block a small read past the head needed: its offset in the image and its
    /// bytes as the file holds them (fewer than [`BLOCK`] at the image's end).
    block: Option<(u64, Vec<u8>)>,
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
        Ok(Disk {
            file,
            pos: 0,
            head,
            block: None,
        })
    }

    /// A read of fewer than [`BLOCK`] bytes at `self.pos`, past the head, from the block
    /// that holds its first byte (read now unless it is the one kept).
    fn read_small(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = self.pos - self.pos % BLOCK as u64;
        if self.block.as_ref().is_none_or(|(at, _)| *at != start) {
            let mut bytes = vec![0u8; BLOCK];
            let mut len = 0;
            while len < BLOCK {
                match self.file.read_at(&mut bytes[len..], start + len as u64) {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            bytes.truncate(len);
            self.block = Some((start, bytes));
        }
        let (_, bytes) = self.block.as_ref().expect("just kept");
        let from = (self.pos - start) as usize;
        // Past the image's end there is nothing to read (`from` may lie beyond the bytes).
        let rest = bytes.get(from..).unwrap_or_default();
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Copies into `cache`, which holds the image's bytes from `cache_at` on, the part of
/// `written` (just written at `pos`) that falls inside it.
fn overlay(cache: &mut [u8], cache_at: u64, pos: u64, written: &[u8]) {
    let from = pos.max(cache_at);
    let to = (pos + written.len() as u64).min(cache_at + cache.len() as u64);
    if from < to {
        let (inside, at, len) = (
            (from - cache_at) as usize,
            (from - pos) as usize,
            (to - from) as usize,
        );
        cache[inside..inside + len].copy_from_slice(&written[at..at + len]);
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
            None if buf.len() < BLOCK => self.read_small(buf)?,
            None => self.file.read_at(buf, self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        // Both copies see the bytes of the write that fall in them.
        overlay(&mut self.head, 0, self.pos, &buf[..n]);
        if let Some((at, bytes)) = self.block.as_mut() {
            overlay(bytes, *at, self.pos, &buf[..n]);
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

    #[test]
    fn small_reads_past_the_head_see_every_write_and_the_image_end() {
        let mut tmp = tempfile::tempfile().unwrap();
        let image: Vec<u8> = (0..3 * BLOCK as u32 + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        tmp.write_all(&image).unwrap();
        let mut disk = Disk::new(tmp.try_clone().unwrap(), 512).unwrap();
        let mut expected = image.clone();
        let read_at = |disk: &mut Disk, at: u64, len: usize| {
            disk.seek(SeekFrom::Start(at)).unwrap();
            let mut got = vec![0u8; len];
            let mut done = 0;
            while done < len {
                let n = disk.read(&mut got[done..]).unwrap();
                if n == 0 {
                    break;
                }
                done += n;
            }
            got.truncate(done);
            got
        };
        // Field-sized reads within a block, then across a block's end.
        assert_eq!(read_at(&mut disk, 5000, 11), &expected[5000..5011]);
        assert_eq!(read_at(&mut disk, 8190, 4), &expected[8190..8194]);
        // Writes inside, straddling and outside the kept block: all seen at once.
        for (at, len) in [(8200u64, 3usize), (8190, 10), (12_000, 50), (4090, 20)] {
            let bytes: Vec<u8> = (0..len).map(|i| 200 + i as u8).collect();
            disk.seek(SeekFrom::Start(at)).unwrap();
            disk.write_all(&bytes).unwrap();
            expected[at as usize..at as usize + len].copy_from_slice(&bytes);
            for (from, n) in [(at, len), (at.saturating_sub(3), 8), (8188, 16)] {
                assert_eq!(
                    read_at(&mut disk, from, n),
                    &expected[from as usize..from as usize + n],
                    "read {n} at {from} after the write of {len} at {at}"
                );
            }
        }
        // The image's last, partial block, and past the end.
        let end = image.len() as u64;
        assert_eq!(
            read_at(&mut disk, end - 5, 10),
            &expected[end as usize - 5..]
        );
        assert_eq!(read_at(&mut disk, end + 10, 4), b"");
        // Large reads go to the file, and agree.
        assert_eq!(
            read_at(&mut disk, 100, 3 * BLOCK),
            &expected[100..100 + 3 * BLOCK]
        );
    }
}
