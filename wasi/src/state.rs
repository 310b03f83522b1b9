//! The WASI state of one app (arguments, environment, descriptors) and the call dispatcher.
//! Filesystem calls live in `files.rs` (those on host shares in `share.rs`, over `p9.rs`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::Exit;
use crate::Func;
use crate::errno::{Errno, WasiResult};
use crate::filetype;
use crate::fs::{Fs, Ino};
use crate::memory::GuestMemory;
use crate::net::{Net, SockId, SockType};
use crate::p9::{Remote, Session};
use crate::platform::{Clock, Platform, Stdio};

pub(crate) mod rights {
    pub const FD_DATASYNC: u64 = 1 << 0;
    pub const FD_READ: u64 = 1 << 1;
    pub const FD_SEEK: u64 = 1 << 2;
    pub const FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
    pub const FD_SYNC: u64 = 1 << 4;
    pub const FD_TELL: u64 = 1 << 5;
    pub const FD_WRITE: u64 = 1 << 6;
    pub const FD_ADVISE: u64 = 1 << 7;
    pub const FD_ALLOCATE: u64 = 1 << 8;
    pub const PATH_CREATE_FILE: u64 = 1 << 10;
    pub const PATH_OPEN: u64 = 1 << 13;
    pub const FD_READDIR: u64 = 1 << 14;
    pub const PATH_FILESTAT_SET_SIZE: u64 = 1 << 19;
    pub const FD_FILESTAT_GET: u64 = 1 << 21;
    pub const FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
    pub const FD_FILESTAT_SET_TIMES: u64 = 1 << 23;
    pub const POLL_FD_READWRITE: u64 = 1 << 27;
    pub const SOCK_SHUTDOWN: u64 = 1 << 28;
    pub const SOCK_ACCEPT: u64 = 1 << 29;
    /// A socket: read, write, poll, shut down; `SOCK_ACCEPT` only on listeners.
    pub const SOCKET: u64 = FD_READ
        | FD_WRITE
        | FD_FDSTAT_SET_FLAGS
        | FD_FILESTAT_GET
        | POLL_FD_READWRITE
        | SOCK_SHUTDOWN
        | SOCK_ACCEPT;
    /// Every right of a regular file.
    pub const FILE: u64 = FD_DATASYNC
        | FD_READ
        | FD_SEEK
        | FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_TELL
        | FD_WRITE
        | FD_ADVISE
        | FD_ALLOCATE
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_SIZE
        | FD_FILESTAT_SET_TIMES
        | POLL_FD_READWRITE;
    /// Every right of a directory (the path_* rights, readdir and stat).
    pub const DIR: u64 = FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_ADVISE
        | FD_READDIR
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_TIMES
        | (0xfff << 9) // path_create_directory .. path_filestat_set_times
        | (0b111 << 24) // path_symlink, path_remove_directory, path_unlink_file
        | (1 << 15); // path_readlink
    pub const STDIN: u64 = FD_READ | FD_FDSTAT_SET_FLAGS | FD_FILESTAT_GET | POLL_FD_READWRITE;
    pub const STDOUT: u64 = FD_WRITE | FD_FDSTAT_SET_FLAGS | FD_FILESTAT_GET | POLL_FD_READWRITE;
}

pub(crate) mod fdflags {
    pub const APPEND: u16 = 1 << 0;
    pub const NONBLOCK: u16 = 1 << 2;
}

/// Largest buffer one `random_get` or `fd_read` fills in one go from the platform.
const CHUNK: usize = 64 * 1024;

/// Where a directory or file descriptor's object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handle {
    /// A node of the in-memory [`Fs`].
    Mem(Ino),
    /// A file or directory of a host share, through a fid this descriptor owns (clunked
    /// when the descriptor goes away).
    Share(Remote),
}

/// What a descriptor refers to.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Stdin,
    Out(Stdio),
    Dir {
        node: Handle,
        /// The guest path it was preopened as, for `fd_prestat_*`.
        preopen: Option<Vec<u8>>,
    },
    File {
        node: Handle,
        offset: u64,
    },
    /// A socket of the app's network stack.
    Socket {
        id: SockId,
        kind: SockType,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Fd {
    pub entry: Entry,
    pub rights: u64,
    pub inheriting: u64,
    pub flags: u16,
}

/// The WASI world of one app.
pub struct Wasi<P> {
    pub(crate) platform: P,
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    pub(crate) fds: Vec<Option<Fd>>,
    pub(crate) fs: Fs,
    /// The 9P sessions of the shares preopened so far, by share number.
    pub(crate) shares: BTreeMap<u32, Session>,
    /// The TCP/IP stack, when the platform has a network card.
    pub(crate) net: Option<Net>,
    /// Which of the host's stdin, stdout and stderr are terminals (bits 0, 1, 2).
    terminals: u8,
}

impl<P: Platform> Wasi<P> {
    /// `args` includes argv[0]; `env` holds `KEY=VALUE` entries. Descriptors 0–2 are stdio.
    pub fn new(platform: P, args: Vec<Vec<u8>>, env: Vec<Vec<u8>>) -> Self {
        let stdio = |entry, rights| {
            Some(Fd {
                entry,
                rights,
                inheriting: 0,
                flags: 0,
            })
        };
        Wasi {
            platform,
            args,
            env,
            fds: alloc::vec![
                stdio(Entry::Stdin, rights::STDIN),
                stdio(Entry::Out(Stdio::Stdout), rights::STDOUT),
                stdio(Entry::Out(Stdio::Stderr), rights::STDOUT),
            ],
            fs: Fs::new(),
            shares: BTreeMap::new(),
            net: None,
            terminals: 0b111,
        }
    }

    /// Says which of the host's stdin, stdout and stderr are terminals (bits 0, 1, 2; all
    /// three until told): the others are not character devices to the app, so that its
    /// `isatty` is false where the host's is (no colours or prompts into a pipe).
    pub fn set_terminals(&mut self, mask: u8) {
        self.terminals = mask;
    }

    /// The filetype of a stdio entry: a character device if the host's stream is a
    /// terminal, else unknown (as `wasmtime run` reports a pipe or a file).
    pub(crate) fn stdio_filetype(&self, entry: &Entry) -> u8 {
        let bit = match entry {
            Entry::Stdin => 0,
            Entry::Out(Stdio::Stdout) => 1,
            Entry::Out(Stdio::Stderr) => 2,
            _ => return filetype::UNKNOWN,
        };
        match self.terminals & (1 << bit) {
            0 => filetype::UNKNOWN,
            _ => filetype::CHARACTER_DEVICE,
        }
    }

    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    /// The filesystem behind preopened directories, to fill before the app starts.
    pub fn fs(&mut self) -> &mut Fs {
        &mut self.fs
    }

    /// Preopens directory `ino` of [`Self::fs`] as `guest_path`; returns its descriptor.
    pub fn preopen(&mut self, ino: Ino, guest_path: &[u8]) -> u32 {
        self.insert_preopen(Handle::Mem(ino), guest_path)
    }

    pub(crate) fn insert_preopen(&mut self, node: Handle, guest_path: &[u8]) -> u32 {
        self.insert(Fd {
            entry: Entry::Dir {
                node,
                preopen: Some(guest_path.to_vec()),
            },
            rights: rights::DIR,
            inheriting: rights::DIR | rights::FILE,
            flags: 0,
        })
    }

    /// Puts `fd` in the lowest free slot.
    pub(crate) fn insert(&mut self, fd: Fd) -> u32 {
        match self.fds.iter().position(Option::is_none) {
            Some(i) => {
                self.fds[i] = Some(fd);
                i as u32
            }
            None => {
                self.fds.push(Some(fd));
                (self.fds.len() - 1) as u32
            }
        }
    }

    pub(crate) fn fd(&self, fd: u32) -> WasiResult<&Fd> {
        self.fds
            .get(fd as usize)
            .and_then(Option::as_ref)
            .ok_or(Errno::BADF)
    }

    pub(crate) fn fd_mut(&mut self, fd: u32) -> WasiResult<&mut Fd> {
        self.fds
            .get_mut(fd as usize)
            .and_then(Option::as_mut)
            .ok_or(Errno::BADF)
    }

    pub(crate) fn now(&mut self) -> u64 {
        self.platform.now_ns(Clock::Realtime)
    }

    /// Runs one WASI function. `args` are the wasm arguments, zero-extended to 64 bits, in the
    /// order of the function's signature (the caller checked their count and types).
    pub fn call(&mut self, func: Func, memory: &mut [u8], args: &[u64]) -> Result<Errno, Exit> {
        let mut mem = GuestMemory::new(memory);
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        let a32 = |i: usize| a(i) as u32;
        let m = &mut mem;
        let result = match func {
            Func::ArgsGet => Self::strings_get(&self.args, m, a32(0), a32(1)),
            Func::ArgsSizesGet => Self::strings_sizes(&self.args, m, a32(0), a32(1)),
            Func::EnvironGet => Self::strings_get(&self.env, m, a32(0), a32(1)),
            Func::EnvironSizesGet => Self::strings_sizes(&self.env, m, a32(0), a32(1)),
            Func::ClockResGet => self.clock_res_get(m, a32(0), a32(1)),
            Func::ClockTimeGet => self.clock_time_get(m, a32(0), a32(2)),
            Func::FdWrite => self.fd_write(m, a32(0), a32(1), a32(2), None, a32(3)),
            Func::FdPwrite => self.fd_write(m, a32(0), a32(1), a32(2), Some(a(3)), a32(4)),
            Func::FdRead => self.fd_read(m, a32(0), a32(1), a32(2), None, a32(3)),
            Func::FdPread => self.fd_read(m, a32(0), a32(1), a32(2), Some(a(3)), a32(4)),
            Func::FdClose => self.fd_close(a32(0)),
            Func::FdFdstatGet => self.fd_fdstat_get(m, a32(0), a32(1)),
            Func::FdFdstatSetFlags => self.fd_fdstat_set_flags(a32(0), a32(1)),
            Func::FdFdstatSetRights => self.fd_fdstat_set_rights(a32(0), a(1), a(2)),
            Func::FdPrestatGet => self.fd_prestat_get(m, a32(0), a32(1)),
            Func::FdPrestatDirName => self.fd_prestat_dir_name(m, a32(0), a32(1), a32(2)),
            Func::FdSeek => self.fd_seek(m, a32(0), a(1) as i64, a32(2), a32(3)),
            Func::FdTell => self.fd_seek(m, a32(0), 0, 1, a32(1)),
            Func::FdSync => self.fd_sync(a32(0), false),
            Func::FdDatasync => self.fd_sync(a32(0), true),
            Func::FdAdvise => self.fd_advise(a32(0), a32(3)),
            Func::FdAllocate => self.fd_allocate(a32(0), a(1), a(2)),
            Func::FdFilestatGet => self.fd_filestat_get(m, a32(0), a32(1)),
            Func::FdFilestatSetSize => self.fd_filestat_set_size(a32(0), a(1)),
            Func::FdFilestatSetTimes => self.fd_filestat_set_times(a32(0), a(1), a(2), a32(3)),
            Func::FdReaddir => self.fd_readdir(m, a32(0), a32(1), a32(2), a(3), a32(4)),
            Func::FdRenumber => self.fd_renumber(a32(0), a32(1)),
            Func::PathOpen => self.path_open(m, args),
            Func::PathCreateDirectory => self.path_create_directory(m, a32(0), a32(1), a32(2)),
            Func::PathRemoveDirectory => self.path_remove(m, a32(0), a32(1), a32(2), true),
            Func::PathUnlinkFile => self.path_remove(m, a32(0), a32(1), a32(2), false),
            Func::PathFilestatGet => {
                self.path_filestat_get(m, a32(0), a32(1), a32(2), a32(3), a32(4))
            }
            Func::PathFilestatSetTimes => self.path_filestat_set_times(m, args),
            Func::PathRename => self.path_rename(m, args),
            Func::PathSymlink => self.path_symlink(m, a32(0), a32(1), a32(2), a32(3), a32(4)),
            Func::PathReadlink => self.path_readlink(m, args),
            Func::PathLink => self.path_link(m, args),
            Func::RandomGet => self.random_get(m, a32(0), a32(1)),
            Func::SchedYield => Ok(()),
            Func::ProcExit => return Err(Exit(a32(0))),
            Func::ProcRaise => Err(Errno::NOSYS),
            Func::PollOneoff => self.poll_oneoff(m, a32(0), a32(1), a32(2), a32(3)),
            Func::SockAccept => self.sock_accept(m, a32(0), a32(1), a32(2)),
            Func::SockAcceptV1 => self.sock_accept_v1(m, a32(0), a32(1)),
            Func::SockRecv => self.sock_recv(m, args),
            Func::SockSend => self.sock_send(m, args),
            Func::SockShutdown => self.sock_shutdown(a32(0), a32(1)),
            Func::SockOpen => self.sock_open(m, a32(0), a32(1), a32(2)),
            Func::SockBind => self.sock_bind(m, a32(0), a32(1), a32(2)),
            Func::SockListen => self.sock_listen(a32(0), a32(1)),
            Func::SockConnect => self.sock_connect(m, a32(0), a32(1), a32(2)),
            Func::SockRecvFrom => self.sock_recv_from(m, args, true),
            Func::SockRecvFromV1 => self.sock_recv_from(m, args, false),
            Func::SockSendTo => self.sock_send_to(m, args),
            Func::SockGetLocalAddr => self.sock_addr(m, args, false),
            Func::SockGetPeerAddr => self.sock_addr(m, args, true),
            Func::SockSetSockOpt => self.sock_setsockopt(m, args),
            Func::SockGetSockOpt => self.sock_getsockopt(m, args),
            Func::SockGetAddrInfo => self.sock_getaddrinfo(m, args),
        };
        Ok(result.err().unwrap_or(Errno::SUCCESS))
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

    fn random_get(&mut self, mem: &mut GuestMemory, buf: u32, len: u32) -> WasiResult {
        let out = mem.slice_mut(buf, len)?;
        for chunk in out.chunks_mut(CHUNK) {
            self.platform.random(chunk);
        }
        Ok(())
    }

    /// Reads stdin into the iovecs: returns once some bytes arrived, like a POSIX read.
    pub(crate) fn read_stdin(
        &mut self,
        mem: &mut GuestMemory,
        iovs: &[(u32, u32)],
    ) -> WasiResult<u32> {
        let mut total: u32 = 0;
        for &(ptr, len) in iovs {
            if len == 0 {
                continue;
            }
            let len = len.min(CHUNK as u32);
            let buf = mem.slice_mut(ptr, len)?;
            let n = self.platform.read_stdin(buf);
            total += n as u32;
            if n < len as usize {
                break;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;

    #[derive(Default)]
    pub(crate) struct Mock {
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

    pub(crate) fn wasi() -> Wasi<Mock> {
        Wasi::new(
            Mock::default(),
            vec![b"app".to_vec(), b"x y".to_vec()],
            vec![b"A=1".to_vec()],
        )
    }

    pub(crate) fn u32_at(mem: &[u8], at: usize) -> u32 {
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
    fn proc_exit_raise_and_closed_fds() {
        let mut w = wasi();
        let mut mem = vec![0u8; 64];
        assert_eq!(w.call(Func::ProcExit, &mut mem, &[42]), Err(Exit(42)));
        assert_eq!(w.call(Func::PathOpen, &mut mem, &[0; 9]), Ok(Errno::NOTDIR));
        assert_eq!(
            w.call(Func::PollOneoff, &mut mem, &[0; 4]),
            Ok(Errno::INVAL)
        );
        assert_eq!(w.call(Func::ProcRaise, &mut mem, &[6]), Ok(Errno::NOSYS));
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
