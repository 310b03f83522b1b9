//! The `wasi_snapshot_preview1` import table: every function's name and signature. It is
//! part of the host/guest contract: `wasmvm pack` checks a module's imports against it, and
//! the kernel links exactly these functions, so both sides read this one table.

/// Import module name of WASI preview1.
pub const MODULE: &str = "wasi_snapshot_preview1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    I32,
    I64,
}

/// Name and signature of one WASI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig {
    pub func: Func,
    pub name: &'static str,
    pub params: &'static [ValType],
    /// Every function returns one `errno` (i32) except `proc_exit`, which returns nothing.
    pub results: &'static [ValType],
}

macro_rules! functions {
    ($($variant:ident $name:literal ($($p:ident)*) -> ($($r:ident)*);)*) => {
        /// One WASI preview1 function.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Func { $($variant),* }

        /// Every function of `wasi_snapshot_preview1`, in the order of [`Func`].
        pub const FUNCTIONS: &[Sig] = &[
            $(Sig {
                func: Func::$variant,
                name: $name,
                params: &[$(ValType::$p),*],
                results: &[$(ValType::$r),*],
            }),*
        ];
    };
}

functions! {
    ArgsGet "args_get" (I32 I32) -> (I32);
    ArgsSizesGet "args_sizes_get" (I32 I32) -> (I32);
    EnvironGet "environ_get" (I32 I32) -> (I32);
    EnvironSizesGet "environ_sizes_get" (I32 I32) -> (I32);
    ClockResGet "clock_res_get" (I32 I32) -> (I32);
    ClockTimeGet "clock_time_get" (I32 I64 I32) -> (I32);
    FdAdvise "fd_advise" (I32 I64 I64 I32) -> (I32);
    FdAllocate "fd_allocate" (I32 I64 I64) -> (I32);
    FdClose "fd_close" (I32) -> (I32);
    FdDatasync "fd_datasync" (I32) -> (I32);
    FdFdstatGet "fd_fdstat_get" (I32 I32) -> (I32);
    FdFdstatSetFlags "fd_fdstat_set_flags" (I32 I32) -> (I32);
    FdFdstatSetRights "fd_fdstat_set_rights" (I32 I64 I64) -> (I32);
    FdFilestatGet "fd_filestat_get" (I32 I32) -> (I32);
    FdFilestatSetSize "fd_filestat_set_size" (I32 I64) -> (I32);
    FdFilestatSetTimes "fd_filestat_set_times" (I32 I64 I64 I32) -> (I32);
    FdPread "fd_pread" (I32 I32 I32 I64 I32) -> (I32);
    FdPrestatGet "fd_prestat_get" (I32 I32) -> (I32);
    FdPrestatDirName "fd_prestat_dir_name" (I32 I32 I32) -> (I32);
    FdPwrite "fd_pwrite" (I32 I32 I32 I64 I32) -> (I32);
    FdRead "fd_read" (I32 I32 I32 I32) -> (I32);
    FdReaddir "fd_readdir" (I32 I32 I32 I64 I32) -> (I32);
    FdRenumber "fd_renumber" (I32 I32) -> (I32);
    FdSeek "fd_seek" (I32 I64 I32 I32) -> (I32);
    FdSync "fd_sync" (I32) -> (I32);
    FdTell "fd_tell" (I32 I32) -> (I32);
    FdWrite "fd_write" (I32 I32 I32 I32) -> (I32);
    PathCreateDirectory "path_create_directory" (I32 I32 I32) -> (I32);
    PathFilestatGet "path_filestat_get" (I32 I32 I32 I32 I32) -> (I32);
    PathFilestatSetTimes "path_filestat_set_times" (I32 I32 I32 I32 I64 I64 I32) -> (I32);
    PathLink "path_link" (I32 I32 I32 I32 I32 I32 I32) -> (I32);
    PathOpen "path_open" (I32 I32 I32 I32 I32 I64 I64 I32 I32) -> (I32);
    PathReadlink "path_readlink" (I32 I32 I32 I32 I32 I32) -> (I32);
    PathRemoveDirectory "path_remove_directory" (I32 I32 I32) -> (I32);
    PathRename "path_rename" (I32 I32 I32 I32 I32 I32) -> (I32);
    PathSymlink "path_symlink" (I32 I32 I32 I32 I32) -> (I32);
    PathUnlinkFile "path_unlink_file" (I32 I32 I32) -> (I32);
    PollOneoff "poll_oneoff" (I32 I32 I32 I32) -> (I32);
    ProcExit "proc_exit" (I32) -> ();
    ProcRaise "proc_raise" (I32) -> (I32);
    SchedYield "sched_yield" () -> (I32);
    RandomGet "random_get" (I32 I32) -> (I32);
    SockAccept "sock_accept" (I32 I32 I32) -> (I32);
    SockRecv "sock_recv" (I32 I32 I32 I32 I32 I32) -> (I32);
    SockSend "sock_send" (I32 I32 I32 I32 I32) -> (I32);
    SockShutdown "sock_shutdown" (I32 I32) -> (I32);
    // The WasmEdge socket extension, as the `wasmedge_wasi_socket` crate imports it. Two
    // names exist in two shapes; a module is linked to the one its import's type names.
    SockAcceptV1 "sock_accept" (I32 I32) -> (I32);
    SockOpen "sock_open" (I32 I32 I32) -> (I32);
    SockBind "sock_bind" (I32 I32 I32) -> (I32);
    SockListen "sock_listen" (I32 I32) -> (I32);
    SockConnect "sock_connect" (I32 I32 I32) -> (I32);
    SockRecvFrom "sock_recv_from" (I32 I32 I32 I32 I32 I32 I32 I32) -> (I32);
    SockRecvFromV1 "sock_recv_from" (I32 I32 I32 I32 I32 I32 I32) -> (I32);
    SockSendTo "sock_send_to" (I32 I32 I32 I32 I32 I32 I32) -> (I32);
    SockGetLocalAddr "sock_getlocaladdr" (I32 I32 I32 I32) -> (I32);
    SockGetPeerAddr "sock_getpeeraddr" (I32 I32 I32 I32) -> (I32);
    SockSetSockOpt "sock_setsockopt" (I32 I32 I32 I32 I32) -> (I32);
    SockGetSockOpt "sock_getsockopt" (I32 I32 I32 I32 I32) -> (I32);
    SockGetAddrInfo "sock_getaddrinfo" (I32 I32 I32 I32 I32 I32 I32 I32) -> (I32);
}

impl Func {
    pub fn sig(self) -> &'static Sig {
        &FUNCTIONS[self as usize]
    }

    /// Looks up a function by its import name (the first shape, for names with two).
    pub fn by_name(name: &str) -> Option<Func> {
        FUNCTIONS.iter().find(|s| s.name == name).map(|s| s.func)
    }
}

impl Sig {
    /// The function an import of `name` with these parameter and result types links to:
    /// `Ok`, or `Err(Some(_))` for a known name with another shape, `Err(None)` for an
    /// unknown name.
    pub fn lookup(
        name: &str,
        params: &[ValType],
        results: &[ValType],
    ) -> Result<&'static Sig, Option<&'static Sig>> {
        let mut named = FUNCTIONS.iter().filter(|s| s.name == name).peekable();
        let first = named.peek().copied();
        named
            .find(|s| s.params == params && s.results == results)
            .ok_or(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order_and_complete() {
        assert_eq!(FUNCTIONS.len(), 59);
        for (i, s) in FUNCTIONS.iter().enumerate() {
            assert_eq!(s.func as usize, i, "{}", s.name);
        }
        assert_eq!(Func::by_name("fd_write"), Some(Func::FdWrite));
        assert_eq!(Func::by_name("nope"), None);
        assert!(Func::ProcExit.sig().results.is_empty());
        use ValType::I32;
        let v1 = Sig::lookup("sock_accept", &[I32, I32], &[I32]).unwrap();
        assert_eq!(v1.func, Func::SockAcceptV1);
        let std = Sig::lookup("sock_accept", &[I32, I32, I32], &[I32]).unwrap();
        assert_eq!(std.func, Func::SockAccept);
        let wrong = Sig::lookup("sock_accept", &[I32], &[I32]).unwrap_err();
        assert_eq!(wrong.map(|s| s.func), Some(Func::SockAccept));
        assert!(Sig::lookup("nope", &[], &[]).unwrap_err().is_none());
    }
}
