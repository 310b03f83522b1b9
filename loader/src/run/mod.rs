//! What a run is, whatever backend carries it: the options every backend honours, preparing
//! a run ([`prepare`]), supervising it ([`supervise`]), how it ended ([`ending`]), volumes
//! around it ([`volumes`]), the network plan ([`network`]), and the one dispatcher, [`run`].

pub mod control;
pub mod ending;
pub mod network;
pub mod prepare;
pub mod supervise;
pub mod volumes;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use control::{Control, StopReason, Stopper};
pub use ending::Ending;
pub use prepare::default_memory_mib;

use crate::{Backend, RunError};

/// What the user asked of a run; every backend honours all of it or refuses the run with an
/// error naming the option. What only one backend knows (QEMU's binary and accelerator, the
/// built-in VMM's boot path) lives in that backend's own type.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Guest RAM in MiB; `None` sizes it from the module's needs.
    pub memory_mib: Option<u64>,
    /// Which of the streams the run's stdin, stdout and stderr go to are terminals (bits 0,
    /// 1, 2): the app's `isatty` says the same. The CLI sets it from its own descriptors.
    pub stdio_terminals: u8,
    pub timeout: Option<Duration>,
    /// Replace argv[0].
    pub argv0: Option<Vec<u8>>,
    /// Replace the packed arguments after argv[0].
    pub args: Option<Vec<Vec<u8>>>,
    /// `KEY=VALUE` entries that override or extend the packed environment.
    pub env: Vec<Vec<u8>>,
    /// Live host directories (`--dir`), preopened after the packed ones, in order.
    pub shares: Vec<ShareSpec>,
    /// Persistent volumes (`--volume`), preopened after the shares; see [`volumes`].
    pub volumes: Vec<VolumeSpec>,
    /// A file that exists (holding this process's id) while the run's volumes are made
    /// durable at its end: `wasmvm stop` waits for it to go instead of killing; see
    /// [`volumes::FlushMark`].
    pub flush_mark: Option<PathBuf>,
    /// `--network`; `None` attaches the user-mode network only when the app needs one
    /// (see [`network::plan`]).
    pub network: Option<network::NetworkMode>,
    /// `Some` replaces the image's listening sockets (`--listen`).
    pub listens: Option<Vec<wasmvm_abi::net::Listen>>,
    /// Host ports forwarded to the guest (`-p/--publish`; user-mode network only).
    pub publish: Vec<network::Publish>,
    /// Also publish each TCP listener's port on the same host port (`-P/--publish-all`).
    pub publish_all: bool,
    /// The guest's static settings on a tap network (`--ip`, `--gateway`); `None` asks DHCP.
    pub tap_config: Option<wasmvm_abi::net::NetConfig>,
}

/// A live host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    pub host: PathBuf,
    /// The path the app sees it under.
    pub guest: Vec<u8>,
    pub read_only: bool,
}

impl ShareSpec {
    /// Opens the host directory for serving (beneath this descriptor, nothing else).
    pub fn open(&self) -> Result<std::os::fd::OwnedFd, RunError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.host)
            .map(std::os::fd::OwnedFd::from)
            .map_err(|cause| RunError::Share {
                path: self.host.clone(),
                cause,
            })
    }
}

/// A persistent volume for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The FAT image (`wasmvm volume create`).
    pub image: PathBuf,
    /// The path the app sees its files under.
    pub guest: Vec<u8>,
}

/// The guest's standard streams, as the host provides them.
pub struct RunIo<'a> {
    /// Forwarded to the guest on a thread of its own, with end of file.
    pub stdin: Box<dyn Read + Send>,
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
    /// Kernel log lines and boot timings, for `--verbose`.
    pub log: &'a mut (dyn FnMut(&str) + Send),
    /// Whether `log` shows what it gets. When it does not, the built-in VMM asks the guest
    /// to send no log lines (`LOG_DISCARDED`): each costs the guest an exit.
    pub verbose: bool,
    /// The three streams are this process's own (fd 0, 1 and 2): a backend that runs the
    /// app inside this process may hand them to it directly (host mode does, so the app sees
    /// the real terminal or pipe). VM backends ignore it.
    pub process_stdio: bool,
}

/// Runs the image at `image` on `backend` to its end: the one dispatcher of every run. The
/// run's volumes are served live by a backend that can, else checked out around the run
/// ([`volumes::with_volumes`]).
pub fn run(
    backend: &dyn Backend,
    image: &Path,
    opts: &RunOptions,
    io: RunIo,
    control: Control,
) -> Result<Ending, RunError> {
    if backend.serves_volumes() {
        return backend.run(image, opts, io, control);
    }
    volumes::with_volumes(opts, |opts| backend.run(image, opts, io, control))
}

/// The outcome of [`run_captured`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub ending: Ending,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs the image at `image` to its end on `backend` with `stdin` as its input, and returns
/// how it ended with everything it wrote: the library form of `wasmvm run` for embedders
/// and tests. With host mode a run that times out may leave its app's thread behind in this
/// process ([`crate::reference::HostMode`]).
pub fn run_captured(
    backend: &dyn Backend,
    image: &Path,
    opts: &RunOptions,
    stdin: Vec<u8>,
) -> Result<Captured, RunError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let io = RunIo {
        stdin: Box::new(std::io::Cursor::new(stdin)),
        stdout: &mut stdout,
        stderr: &mut stderr,
        log: &mut |_| {},
        verbose: false,
        process_stdio: false,
    };
    let ending = run(backend, image, opts, io, Control::default())?;
    Ok(Captured {
        ending,
        stdout,
        stderr,
    })
}
