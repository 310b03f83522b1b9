//! A 9P2000.L file server that shares one live host directory with a guest, as the Linux
//! v9fs client (and QEMU's virtio-9p) speak the protocol. A transport (virtio-9p over
//! virtio-mmio) hands each request to [`Server::handle`] and returns the one reply it
//! writes; this module knows nothing of guest memory.
//!
//! # Confinement
//!
//! The guest is hostile, so the server never names a host file by an absolute path and
//! never opens anything by a host path string:
//!
//! - The share is an open directory descriptor. Each fid keeps an `O_PATH | O_NOFOLLOW`
//!   descriptor of what it names plus its path from the root as validated components (no
//!   `/`, NUL, `.` or `..`). Walks go one component at a time relative to the previous
//!   descriptor; `..` pops the path (like a chroot, the root's parent is the root) and the
//!   parent is reopened from the root, so the kernel never resolves a guest `..`.
//! - Every lookup of more than a single name goes through `openat2(2)` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS` (and `O_NOFOLLOW`),
//!   falling back to one `openat(O_NOFOLLOW)` per component where openat2 is missing. The
//!   server follows no symlinks at all: 9P clients resolve them (walk returns the symlink's
//!   qid and the client reads it), and a symlink to `/etc`, `../outside` or a magic link
//!   can then only be created and read as text, never traversed or opened.
//! - Operations that create, remove, rename or link take a directory fid's descriptor and a
//!   single-component name (`mkdirat`, `unlinkat`, `renameat`, `linkat`, `symlinkat`,
//!   `mknodat`, `openat2(O_CREAT | O_NOFOLLOW)`), none of which follow a symlink in the last
//!   component. Attribute changes act on the fid's own inode (`AT_EMPTY_PATH`).
//! - Opening a fid (`Tlopen`, truncation) reopens its path beneath the root and checks the
//!   result is the fid's inode (`ESTALE` if not); `/proc/self/fd` is never used. Only
//!   regular files and directories can be opened (symlinks: `ELOOP`; devices, FIFOs and
//!   sockets: `EOPNOTSUPP`), device nodes cannot be created, and modes set by the guest
//!   lose set-user-ID and set-group-ID (kept on directories).
//! - A read-only share refuses every change with `EROFS`. Fids are limited to
//!   [`MAX_FIDS`], and every reply fits the negotiated `msize` (at most [`MAX_MSIZE`]).
//! - Guest bytes are decoded once, with bounds checks ([`wire`]); malformed messages get
//!   `Rlerror(EINVAL)`, unknown types `Rlerror(EOPNOTSUPP)`.
//!
//! Host processes changing the share meanwhile can at worst make a fid stale; they cannot
//! make the server reach outside the root, except by moving a directory the guest has open
//! out of the share themselves.

mod attrs;
mod dirs;
mod files;
mod server;
mod sys;
pub use wasmvm_abi::p9 as wire;

#[cfg(test)]
mod tests;

pub use server::{MAX_FIDS, Server};
pub(crate) use server::{RDATA_HDR, check_new_fid, component};

/// A 9P2000.L server as the virtio-9p transport drives it: a live directory ([`Server`])
/// or a volume image (`host::volume::live`).
pub trait FileServer {
    /// Handles one request message and appends exactly one reply to `out`.
    fn handle(&mut self, request: &[u8], out: &mut Vec<u8>);
    /// The device is going away (the VM ended): make everything durable and release it.
    fn close(self: Box<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

impl FileServer for Server {
    fn handle(&mut self, request: &[u8], out: &mut Vec<u8>) {
        Server::handle(self, request, out)
    }
}

/// `Tversion` as every server answers it: the negotiated `msize` (`Some` when the session
/// may go on with it) and the reply. A new session drops every fid of the old one first.
pub fn negotiate_version(msize: u32, version: &[u8]) -> Result<(Option<u32>, Rmessage), Errno> {
    let msize = msize.min(wire::MAX_MSIZE);
    if version != wire::VERSION_9P2000_L {
        let reply = Rmessage::Version {
            msize,
            version: wire::VERSION_UNKNOWN.to_vec(),
        };
        return Ok((None, reply));
    }
    if msize < wire::MIN_MSIZE {
        return Err(Errno(libc::EINVAL));
    }
    let reply = Rmessage::Version {
        msize,
        version: wire::VERSION_9P2000_L.to_vec(),
    };
    Ok((Some(msize), reply))
}

/// `Tlock` and `Tgetlock` as a server with one client answers them (locks are advisory):
/// every lock is granted, and nothing ever conflicts. `None` for other messages.
pub fn single_client_lock(msg: &Tmessage<'_>) -> Option<Rmessage> {
    match msg {
        Tmessage::Lock { .. } => Some(Rmessage::Lock {
            status: wire::LOCK_SUCCESS,
        }),
        Tmessage::Getlock { lock, .. } => Some(Rmessage::Getlock(wire::GetLock {
            ty: wire::LOCK_TYPE_UNLCK,
            start: lock.start,
            length: lock.length,
            proc_id: lock.proc_id,
            client_id: lock.client_id.to_vec(),
        })),
        _ => None,
    }
}

/// The framing every server shares: decodes one request (`size[4] type[1] tag[2] ...`),
/// hands it to `dispatch` and appends exactly one reply to `out`. Malformed input gets
/// `Rlerror(EINVAL)` with the request's tag if it can be read (else [`wire::NOTAG`]);
/// unknown types `EOPNOTSUPP`; a request or reply larger than `msize`, `EMSGSIZE`.
pub fn answer(
    msize: u32,
    request: &[u8],
    out: &mut Vec<u8>,
    dispatch: impl FnOnce(Tmessage<'_>) -> Result<Rmessage, Errno>,
) {
    let start = out.len();
    let (tag, reply) = match wire::Frame::new_checked(request) {
        Err(e) => (
            wire::Frame::peek_tag(request).unwrap_or(wire::NOTAG),
            Err(e.into()),
        ),
        Ok(frame) if frame.size() > msize as usize => (frame.tag(), Err(Errno(libc::EMSGSIZE))),
        Ok(frame) => {
            let reply = Tmessage::decode(frame.ty(), frame.body())
                .map_err(Errno::from)
                .and_then(dispatch);
            (frame.tag(), reply)
        }
    };
    let reply = reply.unwrap_or_else(|Errno(e)| Rmessage::Lerror {
        ecode: u32::try_from(e).unwrap_or(libc::EIO as u32),
    });
    reply.encode(tag, out);
    // Replies are bounded by construction; this keeps the promise to the transport even
    // if one were not (the buffers the guest posted are `msize` bytes).
    if out.len() - start > msize as usize {
        out.truncate(start);
        Rmessage::Lerror {
            ecode: libc::EMSGSIZE as u32,
        }
        .encode(tag, out);
    }
}
/// Answers a read (`Tread`) with the bytes `read` appends straight to `out`, after the
/// reply's header, rather than into a buffer of their own that the reply's encoding then
/// copies: reads are most of a share's traffic, up to `msize` bytes each. `read` gets the
/// fid, offset and count and appends at most `msize - 11` bytes. Returns `false`, with
/// `out` as it was, for any other message and for a read that fails; the server's general
/// path ([`answer`]) then answers it, with its error.
pub fn answer_read_in_place(
    msize: u32,
    request: &[u8],
    out: &mut Vec<u8>,
    read: impl FnOnce(u32, u64, u32, &mut Vec<u8>) -> Result<(), Errno>,
) -> bool {
    let Ok(frame) = wire::Frame::new_checked(request) else {
        return false;
    };
    if frame.ty() != wire::TREAD || frame.size() > msize as usize {
        return false;
    }
    let Ok(Tmessage::Read { fid, offset, count }) = Tmessage::decode(frame.ty(), frame.body())
    else {
        return false;
    };
    let start = out.len();
    // The header of an empty Rread (size, type, tag, count), patched once the bytes are in.
    Rmessage::Read { data: Vec::new() }.encode(frame.tag(), out);
    let data_at = out.len();
    if read(fid, offset, count, out).is_err() || out.len() - start > msize as usize {
        out.truncate(start);
        return false;
    }
    let (size, count) = ((out.len() - start) as u32, (out.len() - data_at) as u32);
    out[start..start + 4].copy_from_slice(&size.to_le_bytes());
    out[data_at - 4..data_at].copy_from_slice(&count.to_le_bytes());
    true
}

pub use sys::Errno;
pub use wire::{
    DecodeError, MAX_MSIZE, MIN_MSIZE, Qid, RATTACH, RAUTH, RCLUNK, RFLUSH, RFSYNC, RGETATTR,
    RGETLOCK, RLCREATE, RLERROR, RLINK, RLOCK, RLOPEN, RMKDIR, RMKNOD, RREAD, RREADDIR, RREADLINK,
    RREMOVE, RRENAME, RRENAMEAT, RSETATTR, RSTATFS, RSYMLINK, RUNLINKAT, RVERSION, RWALK, RWRITE,
    RXATTRCREATE, RXATTRWALK, Rmessage, TATTACH, TAUTH, TCLUNK, TFLUSH, TFSYNC, TGETATTR, TGETLOCK,
    TLCREATE, TLERROR, TLINK, TLOCK, TLOPEN, TMKDIR, TMKNOD, TREAD, TREADDIR, TREADLINK, TREMOVE,
    TRENAME, TRENAMEAT, TSETATTR, TSTATFS, TSYMLINK, TUNLINKAT, TVERSION, TWALK, TWRITE,
    TXATTRCREATE, TXATTRWALK, Tmessage,
};
