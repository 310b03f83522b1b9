//! WASI preview1 error numbers (`errno`).

/// A WASI errno; `Errno::SUCCESS` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub u16);

impl Errno {
    pub const SUCCESS: Errno = Errno(0);
    pub const TOOBIG: Errno = Errno(1);
    pub const ACCES: Errno = Errno(2);
    pub const ADDRINUSE: Errno = Errno(3);
    pub const ADDRNOTAVAIL: Errno = Errno(4);
    pub const AFNOSUPPORT: Errno = Errno(5);
    pub const AGAIN: Errno = Errno(6);
    pub const CONNREFUSED: Errno = Errno(14);
    pub const CONNRESET: Errno = Errno(15);
    pub const HOSTUNREACH: Errno = Errno(23);
    pub const INPROGRESS: Errno = Errno(26);
    pub const ISCONN: Errno = Errno(30);
    pub const NETUNREACH: Errno = Errno(40);
    pub const NOBUFS: Errno = Errno(42);
    pub const NOPROTOOPT: Errno = Errno(50);
    pub const NOTCONN: Errno = Errno(53);
    pub const PIPE: Errno = Errno(64);
    /// WasmEdge's `sock_getaddrinfo` errors (past the preview1 range): the name does not
    /// resolve, and resolution failed.
    pub const AI_FAIL: Errno = Errno(80);
    pub const AI_NONAME: Errno = Errno(84);
    pub const ILSEQ: Errno = Errno(25);
    pub const BADF: Errno = Errno(8);
    pub const BUSY: Errno = Errno(10);
    pub const DEADLK: Errno = Errno(16);
    pub const DQUOT: Errno = Errno(19);
    pub const EXIST: Errno = Errno(20);
    pub const FAULT: Errno = Errno(21);
    pub const INTR: Errno = Errno(27);
    pub const INVAL: Errno = Errno(28);
    pub const IO: Errno = Errno(29);
    pub const FBIG: Errno = Errno(22);
    pub const ISDIR: Errno = Errno(31);
    pub const LOOP: Errno = Errno(32);
    pub const MFILE: Errno = Errno(33);
    pub const MLINK: Errno = Errno(34);
    pub const MSGSIZE: Errno = Errno(35);
    pub const NAMETOOLONG: Errno = Errno(37);
    pub const NFILE: Errno = Errno(41);
    pub const NODEV: Errno = Errno(43);
    pub const NOENT: Errno = Errno(44);
    pub const NOLCK: Errno = Errno(46);
    pub const NOMEM: Errno = Errno(48);
    pub const NOSPC: Errno = Errno(51);
    pub const NOSYS: Errno = Errno(52);
    pub const NOTDIR: Errno = Errno(54);
    pub const NOTEMPTY: Errno = Errno(55);
    pub const NOTSOCK: Errno = Errno(57);
    pub const NOTSUP: Errno = Errno(58);
    pub const NXIO: Errno = Errno(60);
    pub const OVERFLOW: Errno = Errno(61);
    pub const PERM: Errno = Errno(63);
    pub const RANGE: Errno = Errno(68);
    pub const ROFS: Errno = Errno(69);
    pub const SPIPE: Errno = Errno(70);
    pub const SRCH: Errno = Errno(71);
    pub const STALE: Errno = Errno(72);
    pub const TIMEDOUT: Errno = Errno(73);
    pub const TXTBSY: Errno = Errno(74);
    pub const XDEV: Errno = Errno(75);
    pub const NOTCAPABLE: Errno = Errno(76);

    pub fn raw(self) -> u32 {
        self.0 as u32
    }

    /// What the errno means, for messages (the C name beside it); `None` for numbers this
    /// crate never returns.
    pub fn meaning(self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Errno::ACCES => ("permission denied", "EACCES"),
            Errno::ADDRINUSE => ("address in use", "EADDRINUSE"),
            Errno::ADDRNOTAVAIL => ("address not available", "EADDRNOTAVAIL"),
            Errno::BADF => ("bad file descriptor", "EBADF"),
            Errno::EXIST => ("already exists", "EEXIST"),
            Errno::FBIG => ("file too large", "EFBIG"),
            Errno::INVAL => ("invalid argument", "EINVAL"),
            Errno::IO => ("input/output error", "EIO"),
            Errno::ISDIR => ("is a directory", "EISDIR"),
            Errno::LOOP => ("too many symbolic links", "ELOOP"),
            Errno::NAMETOOLONG => ("name too long", "ENAMETOOLONG"),
            Errno::NOBUFS => ("no buffer space", "ENOBUFS"),
            Errno::NOENT => ("no such file or directory", "ENOENT"),
            Errno::NOMEM => ("out of memory", "ENOMEM"),
            Errno::NOSPC => ("no space left", "ENOSPC"),
            Errno::NOTDIR => ("not a directory", "ENOTDIR"),
            Errno::NOTEMPTY => ("directory not empty", "ENOTEMPTY"),
            Errno::NOTSUP => ("not supported", "ENOTSUP"),
            Errno::PERM => ("not permitted", "EPERM"),
            Errno::NOTCAPABLE => ("outside the directory", "ENOTCAPABLE"),
            _ => return None,
        })
    }
}

/// "no such file or directory (ENOENT)", or "errno N" for a number without a meaning here.
impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.meaning() {
            Some((meaning, name)) => write!(f, "{meaning} ({name})"),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// Result of one WASI call body: success, or an errno to return to the guest.
pub type WasiResult<T = ()> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errno_says_what_it_means() {
        assert_eq!(
            alloc::format!("{}", Errno::NOENT),
            "no such file or directory (ENOENT)"
        );
        assert_eq!(alloc::format!("{}", Errno::TIMEDOUT), "errno 73");
    }
}
