//! Bounds-checked access to the guest's linear memory.

use alloc::vec::Vec;

use crate::errno::{Errno, WasiResult};

/// The guest's linear memory. Every accessor checks `ptr + len` against the memory size (in
/// 64-bit arithmetic, so no wrap-around) and fails with `EFAULT`.
pub struct GuestMemory<'a> {
    bytes: &'a mut [u8],
}

impl<'a> GuestMemory<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Self {
        GuestMemory { bytes }
    }

    fn range(&self, ptr: u32, len: u64) -> WasiResult<core::ops::Range<usize>> {
        let start = ptr as u64;
        let end = start.checked_add(len).ok_or(Errno::FAULT)?;
        if end > self.bytes.len() as u64 {
            return Err(Errno::FAULT);
        }
        Ok(start as usize..end as usize)
    }

    pub fn slice(&self, ptr: u32, len: u32) -> WasiResult<&[u8]> {
        let r = self.range(ptr, len as u64)?;
        Ok(&self.bytes[r])
    }

    /// A copy of guest bytes, or `ENOMEM` when the kernel has no room for it: the length
    /// is the app's, so running out is the app's error, not a kernel panic.
    pub fn copy(&self, ptr: u32, len: u32) -> WasiResult<Vec<u8>> {
        let bytes = self.slice(ptr, len)?;
        let mut out = Vec::new();
        out.try_reserve_exact(bytes.len())
            .map_err(|_| Errno::NOMEM)?;
        out.extend_from_slice(bytes);
        Ok(out)
    }

    pub fn slice_mut(&mut self, ptr: u32, len: u32) -> WasiResult<&mut [u8]> {
        let r = self.range(ptr, len as u64)?;
        Ok(&mut self.bytes[r])
    }

    pub fn read_u32(&self, ptr: u32) -> WasiResult<u32> {
        let b = self.slice(ptr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn write_bytes(&mut self, ptr: u32, data: &[u8]) -> WasiResult {
        let len = u32::try_from(data.len()).map_err(|_| Errno::FAULT)?;
        self.slice_mut(ptr, len)?.copy_from_slice(data);
        Ok(())
    }

    pub fn write_u8(&mut self, ptr: u32, v: u8) -> WasiResult {
        self.write_bytes(ptr, &[v])
    }

    pub fn write_u16(&mut self, ptr: u32, v: u16) -> WasiResult {
        self.write_bytes(ptr, &v.to_le_bytes())
    }

    pub fn write_u32(&mut self, ptr: u32, v: u32) -> WasiResult {
        self.write_bytes(ptr, &v.to_le_bytes())
    }

    pub fn write_u64(&mut self, ptr: u32, v: u64) -> WasiResult {
        self.write_bytes(ptr, &v.to_le_bytes())
    }

    /// Reads an array of `(ptr, len)` pairs (`iovec`/`ciovec`) of `count` entries at `ptr`.
    pub fn iovecs(&self, ptr: u32, count: u32) -> WasiResult<alloc::vec::Vec<(u32, u32)>> {
        let bytes = count.checked_mul(8).ok_or(Errno::FAULT)?;
        let table = self.slice(ptr, bytes)?;
        Ok(table
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_without_overflow() {
        let mut buf = [0u8; 16];
        let mut m = GuestMemory::new(&mut buf);
        assert!(m.slice(0, 16).is_ok());
        assert_eq!(m.slice(1, 16).unwrap_err(), Errno::FAULT);
        assert_eq!(m.slice(u32::MAX, 2).unwrap_err(), Errno::FAULT);
        assert_eq!(m.write_u32(13, 1).unwrap_err(), Errno::FAULT);
        m.write_u32(12, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(12).unwrap(), 0xdead_beef);
        assert_eq!(m.iovecs(0, u32::MAX).unwrap_err(), Errno::FAULT);
    }
}
