//! The WASI state of one app (arguments, environment, descriptors) and the call dispatcher.

use alloc::vec::Vec;

use crate::Exit;
use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::platform::{Clock, Platform, Stdio};
use crate::signature::Func;

/// `filetype::character_device`.
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHT_FD_FILESTAT_GET: u64 = 1 << 21;
const RIGHT_POLL_FD_READWRITE: u64 = 1 << 27;
/// Largest buffer one `random_get` or `fd_read` fills in one go from the platform.
const CHUNK: usize = 64 * 1024;

/// The WASI world of one app.
pub struct Wasi<P> {
    platform: P,
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    /// Whether fds 0, 1 and 2 are still open.
    stdio_open: [bool; 3],
}

impl<P: Platform> Wasi<P> {
    /// `args` includes argv[0]; `env` holds `KEY=VALUE` entries.
    pub fn new(platform: P, args: Vec<Vec<u8>>, env: Vec<Vec<u8>>) -> Self {
        Wasi {
            platform,
            args,
            env,
            stdio_open: [true; 3],
        }
    }

    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    /// Runs one WASI function. `args` are the wasm arguments, zero-extended to 64 bits, in the
    /// order of the function's signature (the caller checked their count and types).
    pub fn call(&mut self, func: Func, memory: &mut [u8], args: &[u64]) -> Result<Errno, Exit> {
        let mut mem = GuestMemory::new(memory);
        let a32 = |i: usize| args.get(i).copied().unwrap_or(0) as u32;
        let result = match func {
            Func::ArgsGet => Self::strings_get(&self.args, &mut mem, a32(0), a32(1)),
            Func::ArgsSizesGet => Self::strings_sizes(&self.args, &mut mem, a32(0), a32(1)),
            Func::EnvironGet => Self::strings_get(&self.env, &mut mem, a32(0), a32(1)),
            Func::EnvironSizesGet => Self::strings_sizes(&self.env, &mut mem, a32(0), a32(1)),
            Func::ClockResGet => self.clock_res_get(&mut mem, a32(0), a32(1)),
            Func::ClockTimeGet => self.clock_time_get(&mut mem, a32(0), a32(2)),
            Func::FdWrite => self.fd_write(&mut mem, a32(0), a32(1), a32(2), a32(3)),
            Func::FdRead => self.fd_read(&mut mem, a32(0), a32(1), a32(2), a32(3)),
            Func::FdClose => self.fd_close(a32(0)),
            Func::FdFdstatGet => self.fd_fdstat_get(&mut mem, a32(0), a32(1)),
            Func::FdPrestatGet | Func::FdPrestatDirName => {
                self.check_fd(a32(0)).and(Err(Errno::BADF))
            }
            Func::FdSeek | Func::FdTell => self.check_fd(a32(0)).and(Err(Errno::SPIPE)),
            Func::RandomGet => self.random_get(&mut mem, a32(0), a32(1)),
            Func::SchedYield => Ok(()),
            Func::ProcExit => return Err(Exit(a32(0))),
            _ => Err(Errno::NOSYS),
        };
        Ok(result.err().unwrap_or(Errno::SUCCESS))
    }

    fn check_fd(&self, fd: u32) -> WasiResult {
        match self.stdio_open.get(fd as usize) {
            Some(true) => Ok(()),
            _ => Err(Errno::BADF),
        }
    }

    fn strings_sizes(
        list: &[Vec<u8>],
        mem: &mut GuestMemory,
        count_ptr: u32,
        size_ptr: u32,
    ) -> WasiResult {
        let bytes: usize = list.iter().map(|s| s.len() + 1).sum();
        mem.write_u32(count_ptr, list.len() as u32)?;
        mem.write_u32(size_ptr, u32::try_from(bytes).map_err(|_| Errno::OVERFLOW)?)
    }

    fn strings_get(list: &[Vec<u8>], mem: &mut GuestMemory, ptrs: u32, buf: u32) -> WasiResult {
        let mut at = buf;
        for (i, s) in list.iter().enumerate() {
            mem.write_u32(ptrs.checked_add(4 * i as u32).ok_or(Errno::FAULT)?, at)?;
            mem.write_bytes(at, s)?;
            let end = at.checked_add(s.len() as u32).ok_or(Errno::FAULT)?;
            mem.write_u8(end, 0)?;
            at = end + 1;
        }
        Ok(())
    }

    fn clock_res_get(&mut self, mem: &mut GuestMemory, id: u32, out: u32) -> WasiResult {
        let clock = Clock::from_id(id).ok_or(Errno::INVAL)?;
        mem.write_u64(out, self.platform.resolution_ns(clock))
    }

    fn clock_time_get(&mut self, mem: &mut GuestMemory, id: u32, out: u32) -> WasiResult {
        let clock = Clock::from_id(id).ok_or(Errno::INVAL)?;
        mem.write_u64(out, self.platform.now_ns(clock))
    }

    fn fd_write(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        iovs: u32,
        count: u32,
        nwritten: u32,
    ) -> WasiResult {
        self.check_fd(fd)?;
        let stream = match fd {
            1 => Stdio::Stdout,
            2 => Stdio::Stderr,
            _ => return Err(Errno::BADF),
        };
        let mut total: u32 = 0;
        for (ptr, len) in mem.iovecs(iovs, count)? {
            let data = mem.slice(ptr, len)?;
            self.platform.write(stream, data);
            total = total.checked_add(len).ok_or(Errno::INVAL)?;
        }
        mem.write_u32(nwritten, total)
    }

    fn fd_read(
        &mut self,
        mem: &mut GuestMemory,
        fd: u32,
        iovs: u32,
        count: u32,
        nread: u32,
    ) -> WasiResult {
        self.check_fd(fd)?;
        if fd != 0 {
            return Err(Errno::BADF);
        }
        let mut total: u32 = 0;
        for (ptr, len) in mem.iovecs(iovs, count)? {
            if len == 0 {
                continue;
            }
            let len = len.min(CHUNK as u32);
            let buf = mem.slice_mut(ptr, len)?;
            let n = self.platform.read_stdin(buf);
            total += n as u32;
            // Like a POSIX read: return what arrived instead of waiting to fill every buffer.
            if n < len as usize || n == 0 {
                break;
            }
        }
        mem.write_u32(nread, total)
    }

    fn fd_close(&mut self, fd: u32) -> WasiResult {
        self.check_fd(fd)?;
        self.stdio_open[fd as usize] = false;
        Ok(())
    }

    fn fd_fdstat_get(&mut self, mem: &mut GuestMemory, fd: u32, out: u32) -> WasiResult {
        self.check_fd(fd)?;
        let rights = if fd == 0 {
            RIGHT_FD_READ
        } else {
            RIGHT_FD_WRITE
        } | RIGHT_FD_FDSTAT_SET_FLAGS
            | RIGHT_FD_FILESTAT_GET
            | RIGHT_POLL_FD_READWRITE;
        let mut stat = [0u8; 24];
        stat[0] = FILETYPE_CHARACTER_DEVICE;
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        mem.write_bytes(out, &stat)
    }

    fn random_get(&mut self, mem: &mut GuestMemory, buf: u32, len: u32) -> WasiResult {
        let out = mem.slice_mut(buf, len)?;
        for chunk in out.chunks_mut(CHUNK) {
            self.platform.random(chunk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[derive(Default)]
    struct Mock {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        stdin: Vec<u8>,
        clock: u64,
    }

    impl Platform for Mock {
        fn write(&mut self, stream: Stdio, bytes: &[u8]) {
            match stream {
                Stdio::Stdout => self.stdout.extend_from_slice(bytes),
                Stdio::Stderr => self.stderr.extend_from_slice(bytes),
            }
        }
        fn read_stdin(&mut self, buf: &mut [u8]) -> usize {
            let n = buf.len().min(self.stdin.len());
            buf[..n].copy_from_slice(&self.stdin[..n]);
            self.stdin.drain(..n);
            n
        }
        fn now_ns(&mut self, _clock: Clock) -> u64 {
            self.clock += 1;
            self.clock
        }
        fn resolution_ns(&self, _clock: Clock) -> u64 {
            1
        }
        fn random(&mut self, buf: &mut [u8]) {
            buf.fill(0xab);
        }
    }

    fn wasi() -> Wasi<Mock> {
        Wasi::new(
            Mock::default(),
            vec![b"app".to_vec(), b"x y".to_vec()],
            vec![b"A=1".to_vec()],
        )
    }

    fn u32_at(mem: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(mem[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn args_round_trip() {
        let mut w = wasi();
        let mut mem = vec![0u8; 256];
        assert_eq!(
            w.call(Func::ArgsSizesGet, &mut mem, &[0, 4]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!((u32_at(&mem, 0), u32_at(&mem, 4)), (2, 8));
        assert_eq!(
            w.call(Func::ArgsGet, &mut mem, &[16, 64]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 16), 64);
        assert_eq!(u32_at(&mem, 20), 68);
        assert_eq!(&mem[64..72], b"app\0x y\0");
        // A buffer that runs off the end of memory is EFAULT, not a panic.
        assert_eq!(
            w.call(Func::ArgsGet, &mut mem, &[16, 250]),
            Ok(Errno::FAULT)
        );
        assert_eq!(
            w.call(Func::EnvironSizesGet, &mut mem, &[0, 4]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!((u32_at(&mem, 0), u32_at(&mem, 4)), (1, 4));
    }

    #[test]
    fn fd_write_gathers_iovecs_per_stream() {
        let mut w = wasi();
        let mut mem = vec![0u8; 128];
        mem[64..69].copy_from_slice(b"hello");
        mem[0..4].copy_from_slice(&64u32.to_le_bytes());
        mem[4..8].copy_from_slice(&2u32.to_le_bytes());
        mem[8..12].copy_from_slice(&66u32.to_le_bytes());
        mem[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            w.call(Func::FdWrite, &mut mem, &[1, 0, 2, 32]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 32), 5);
        assert_eq!(
            w.call(Func::FdWrite, &mut mem, &[2, 0, 1, 32]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(w.platform().stdout, b"hello");
        assert_eq!(w.platform().stderr, b"he");
        assert_eq!(
            w.call(Func::FdWrite, &mut mem, &[7, 0, 1, 32]),
            Ok(Errno::BADF)
        );
        // An iovec pointing outside memory.
        mem[0..4].copy_from_slice(&127u32.to_le_bytes());
        assert_eq!(
            w.call(Func::FdWrite, &mut mem, &[1, 0, 1, 32]),
            Ok(Errno::FAULT)
        );
    }

    #[test]
    fn fd_read_reports_eof_as_zero() {
        let mut w = wasi();
        w.platform().stdin = b"abc".to_vec();
        let mut mem = vec![0u8; 128];
        mem[0..4].copy_from_slice(&64u32.to_le_bytes());
        mem[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(
            w.call(Func::FdRead, &mut mem, &[0, 0, 1, 32]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 32), 3);
        assert_eq!(&mem[64..67], b"abc");
        assert_eq!(
            w.call(Func::FdRead, &mut mem, &[0, 0, 1, 32]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(u32_at(&mem, 32), 0);
    }

    #[test]
    fn proc_exit_unimplemented_and_closed_fds() {
        let mut w = wasi();
        let mut mem = vec![0u8; 64];
        assert_eq!(w.call(Func::ProcExit, &mut mem, &[42]), Err(Exit(42)));
        assert_eq!(w.call(Func::PathOpen, &mut mem, &[0; 9]), Ok(Errno::NOSYS));
        assert_eq!(
            w.call(Func::FdPrestatGet, &mut mem, &[3, 0]),
            Ok(Errno::BADF)
        );
        assert_eq!(w.call(Func::FdClose, &mut mem, &[1]), Ok(Errno::SUCCESS));
        assert_eq!(w.call(Func::FdClose, &mut mem, &[1]), Ok(Errno::BADF));
        assert_eq!(
            w.call(Func::RandomGet, &mut mem, &[0, 8]),
            Ok(Errno::SUCCESS)
        );
        assert_eq!(&mem[..8], &[0xab; 8]);
        assert_eq!(
            w.call(Func::ClockTimeGet, &mut mem, &[9, 0, 0]),
            Ok(Errno::INVAL)
        );
    }
}
