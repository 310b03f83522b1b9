//! Everything that starts a wasmvm VM, as a library: image packing and parsing, module
//! checks, the host end of the guest channel, and the VMM backends. The `wasmvm` CLI is a
//! thin layer over this crate, and the integration tests drive it in-process.

pub mod builtin;
pub mod channel;
pub mod devices;
pub mod disk;
pub mod elf;
pub mod frame_link;
pub mod image;
pub mod kvm;
pub mod libvirt;
pub mod mapped;
pub mod module;
pub mod net;
pub mod p9;
pub mod pack;
pub mod qemu;
pub mod reference;
pub mod seccomp;
pub mod signing;
pub mod virtio_9p;
pub mod virtio_console;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod volume;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use thiserror::Error;
use wasmvm_abi::channel::{ExitKind, ExitRecord};
use wasmvm_abi::exit;

/// Which hypervisor accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation: slow, but needs no `/dev/kvm`.
    Tcg,
}

/// Per-run settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Guest RAM in MiB; `None` sizes it from the module's needs.
    pub memory_mib: Option<u64>,
    pub timeout: Option<Duration>,
    /// Replace argv[0].
    pub argv0: Option<Vec<u8>>,
    /// Replace the packed arguments after argv[0].
    pub args: Option<Vec<Vec<u8>>>,
    /// `KEY=VALUE` entries that override or extend the packed environment.
    pub env: Vec<Vec<u8>>,
    /// Live host directories (`--dir`), preopened after the packed ones, in order.
    pub shares: Vec<ShareSpec>,
    /// Persistent volumes (`--volume`), preopened after the shares; see [`with_volumes`].
    pub volumes: Vec<VolumeSpec>,
    /// `--network`; `None` attaches the user-mode network only when the app needs one
    /// (see [`net::plan`]).
    pub network: Option<net::NetworkMode>,
    /// `Some` replaces the image's listening sockets (`--listen`).
    pub listens: Option<Vec<wasmvm_abi::net::Listen>>,
    /// Host ports forwarded to the guest (`-p/--publish`; user-mode network only).
    pub publish: Vec<net::Publish>,
    /// The guest's static settings on a tap network (`--ip`, `--gateway`); `None` asks DHCP.
    pub tap_config: Option<wasmvm_abi::net::NetConfig>,
    pub accel: Accel,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The passt binary (the built-in VMM's user-mode network).
    pub passt: PathBuf,
    /// How the built-in VMM enters the kernel.
    pub boot: kvm::BootPath,
    /// Confine the built-in VMM's worker threads with `seccomp::vmm_filter` once the VM is
    /// built. Off by default for embedders (a violation kills the whole process); the CLI
    /// turns it on.
    pub seccomp: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            memory_mib: None,
            timeout: None,
            argv0: None,
            args: None,
            env: Vec::new(),
            shares: Vec::new(),
            volumes: Vec::new(),
            network: None,
            listens: None,
            publish: Vec::new(),
            tap_config: None,
            accel: Accel::Kvm,
            qemu: std::env::var_os("WASMVM_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            passt: std::env::var_os("WASMVM_PASST")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("passt")),
            boot: kvm::BootPath::default(),
            seccomp: false,
        }
    }
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
            .map_err(|source| RunError::Share {
                path: self.host.clone(),
                source,
            })
    }
}

/// Which VM backend [`run_captured`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Builtin,
    Qemu,
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
/// and tests (volumes included; the seccomp filter only if `opts.seccomp`).
pub fn run_captured(
    image: &std::path::Path,
    opts: &RunOptions,
    backend: Backend,
    stdin: Vec<u8>,
) -> Result<Captured, RunError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let ending = with_volumes(opts, |opts| {
        let io = RunIo {
            stdin: Box::new(std::io::Cursor::new(stdin)),
            stdout: &mut stdout,
            stderr: &mut stderr,
            log: &mut |_| {},
        };
        match backend {
            Backend::Builtin => builtin::run(image, opts, io, Control::default()),
            Backend::Qemu => qemu::run(image, opts, io, Control::default()),
        }
    })?;
    Ok(Captured {
        ending,
        stdout,
        stderr,
    })
}

/// A persistent volume for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The FAT image (`wasmvm volume create`).
    pub image: PathBuf,
    /// The path the app sees its files under.
    pub guest: Vec<u8>,
}

/// Runs `backend` with the volumes of `opts` checked out (`volume::Checkout`) and added as
/// live directories after the other shares, then writes every volume back, however the
/// run ended. A failed write-back is an error even after a successful run.
pub fn with_volumes<T>(
    opts: &RunOptions,
    backend: impl FnOnce(&RunOptions) -> Result<T, RunError>,
) -> Result<T, RunError> {
    let checkouts = opts
        .volumes
        .iter()
        .map(|v| volume::Checkout::open(&v.image))
        .collect::<Result<Vec<_>, _>>()?;
    let mut with = opts.clone();
    for (spec, checkout) in opts.volumes.iter().zip(&checkouts) {
        with.shares.push(ShareSpec {
            host: checkout.dir().to_path_buf(),
            guest: spec.guest.clone(),
            read_only: false,
        });
    }
    let outcome = backend(&with);
    let mut first_error = None;
    for checkout in checkouts {
        if let Err(e) = checkout.commit() {
            first_error.get_or_insert(e);
        }
    }
    match (outcome, first_error) {
        // Both failed: the volume's message says where the run's files were kept.
        (Err(e), Some(v)) => Err(RunError::Host(format!("{e}; and volume {v}"))),
        (Err(e), None) => Err(e),
        (Ok(_), Some(e)) => Err(e.into()),
        (Ok(t), None) => Ok(t),
    }
}

/// The guest's standard streams, as the host provides them.
pub struct RunIo<'a> {
    /// Forwarded to the guest on a thread of its own, with end of file.
    pub stdin: Box<dyn Read + Send>,
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
    /// Kernel log lines and boot timings, for `--verbose`.
    pub log: &'a mut (dyn FnMut(&str) + Send),
}

/// Why a VM was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Interrupt,
    Terminate,
}

/// A handle that stops a running VM (e.g. from a signal-handling thread).
#[derive(Debug, Clone)]
pub struct Stopper(mpsc::Sender<RunEvent>);

impl Stopper {
    pub fn stop(&self, reason: StopReason) {
        let _ = self.0.send(RunEvent::Stop(reason));
    }
}

/// Events the backend's supervising loop waits for.
#[derive(Debug)]
pub(crate) enum RunEvent {
    Stream(std::io::Result<channel::StreamEnd>),
    Stop(StopReason),
}

/// A channel for run events, and the [`Stopper`] that feeds it.
pub struct Control {
    pub(crate) tx: mpsc::Sender<RunEvent>,
    pub(crate) rx: mpsc::Receiver<RunEvent>,
}

impl Default for Control {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Control { tx, rx }
    }
}

impl Control {
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Waits for the first run event; `None` when `deadline` passes first.
    pub(crate) fn wait(&self, deadline: Option<std::time::Instant>) -> Option<RunEvent> {
        use std::time::Instant;
        loop {
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match self.rx.recv_timeout(wait) {
                Ok(e) => return Some(e),
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => return None,
                Err(_) => {}
            }
        }
    }
}

/// The body of a backend's output thread: pumps guest frames to `stdout`/`stderr` (kernel
/// log lines to `log`, stamped with the host time since `started`), returns credit through
/// `to_guest` (first granting `grant` bytes of extra window), and reports how the stream
/// ended on `events`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pump_output<W: Write + ?Sized>(
    from_guest: &mut dyn Read,
    to_guest: &std::sync::Mutex<W>,
    stdout: &mut (dyn Write + Send),
    stderr: &mut (dyn Write + Send),
    log: &mut (dyn FnMut(&str) + Send),
    started: std::time::Instant,
    events: mpsc::Sender<RunEvent>,
    grant: u32,
) {
    let mut log_line = |line: &str| {
        log(&format!(
            "guest: {line} (host +{:.1} ms)",
            started.elapsed().as_secs_f64() * 1e3
        ))
    };
    let mut sinks = channel::Sinks {
        stdout,
        stderr,
        log: &mut log_line,
    };
    let end = channel::pump_with_credit(from_guest, to_guest, &mut sinks, grant);
    let _ = events.send(RunEvent::Stream(end));
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The app exited with this WASI status (0–125).
    Exited(i32),
    /// The app called `proc_exit` with a status outside WASI's range.
    InvalidExitStatus,
    Trapped {
        message: String,
        backtrace: Vec<String>,
    },
    KernelPanic(String),
    BootFailed(String),
    /// The VM ended without an exit record.
    Crashed(String),
    TimedOut,
    Stopped(StopReason),
}

impl Ending {
    pub(crate) fn from_record(r: ExitRecord) -> Self {
        match r.kind {
            ExitKind::Exited if (0..=exit::MAX_APP_STATUS).contains(&r.status) => {
                Ending::Exited(r.status)
            }
            ExitKind::Exited => Ending::InvalidExitStatus,
            ExitKind::Trapped => Ending::Trapped {
                message: r.message,
                backtrace: r.backtrace,
            },
            ExitKind::KernelPanic => Ending::KernelPanic(r.message),
            ExitKind::BootFailed => Ending::BootFailed(r.message),
        }
    }

    /// The process exit status, per the table in `wasmvm_abi::exit` and docs/cli.md.
    pub fn status(&self) -> i32 {
        match self {
            Ending::Exited(s) => exit::app_status(*s),
            Ending::InvalidExitStatus => exit::APP_STATUS_OUT_OF_RANGE,
            Ending::Trapped { .. } => exit::TRAP,
            Ending::KernelPanic(_) | Ending::BootFailed(_) => exit::KERNEL_PANIC,
            Ending::Crashed(_) => exit::GUEST_CRASH,
            Ending::TimedOut => exit::TIMEOUT,
            Ending::Stopped(StopReason::Interrupt) => exit::INTERRUPTED,
            Ending::Stopped(StopReason::Terminate) => exit::TERMINATED,
        }
    }

    /// A message for the user, for every ending but a normal exit.
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            Ending::Exited(_) => return None,
            // wasmtime's words for the same case.
            Ending::InvalidExitStatus => {
                "exit with invalid exit status outside of [0..126)".to_string()
            }
            Ending::Trapped { message, backtrace } => {
                let mut m = format!("app trapped: {message}");
                for (i, f) in backtrace.iter().enumerate() {
                    m.push_str(&format!("\n    {i}: {f}"));
                }
                m
            }
            Ending::KernelPanic(m) => format!("guest kernel panicked: {m}"),
            Ending::BootFailed(m) => format!("guest could not start the app: {m}"),
            Ending::Crashed(m) => format!("guest crashed: {m}"),
            Ending::TimedOut => "timed out: the VM was stopped".to_string(),
            Ending::Stopped(StopReason::Interrupt) => "interrupted: the VM was stopped".to_string(),
            Ending::Stopped(StopReason::Terminate) => "terminated: the VM was stopped".to_string(),
        })
    }
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Image(#[from] image::ImageError),
    #[error(
        "QEMU (`{0}`) was not found: install it (Debian: `apt-get install qemu-system-x86`) or set WASMVM_QEMU"
    )]
    QemuMissing(String),
    #[error("host reference run failed: {0}")]
    Host(String),
    #[error("KVM is not usable: {0}")]
    KvmUnavailable(String),
    #[error("QEMU failed to start the VM (status {status}): {stderr}")]
    QemuFailed { status: String, stderr: String },
    #[error("volume {0}")]
    Volume(#[from] volume::VolumeError),
    #[error("--dir {}: {source}", path.display())]
    Share {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] net::NetError),
}

pub(crate) fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Io { context, source }
}

/// The network plan for a run of `image` on a backend whose user-mode network has link MTU
/// `user_mtu`; `None` for no network card.
pub(crate) fn net_plan(
    opts: &RunOptions,
    image: &image::Image,
    user_mtu: u16,
) -> Result<Option<net::NetPlan>, RunError> {
    let request = net::Request {
        network: opts.network.as_ref(),
        listens: opts.listens.as_deref(),
        publish: &opts.publish,
        tap_config: opts.tap_config,
    };
    Ok(net::plan(
        request,
        &image.manifest,
        image.bundle.module,
        user_mtu,
    )?)
}

/// The run configuration for `opts`: its overrides, the wall clock now, 32 fresh bytes of
/// host entropy for the guest's CSPRNG, and the guest's network settings from `net`.
pub(crate) fn run_config(
    opts: &RunOptions,
    net: Option<&net::NetPlan>,
) -> Result<wasmvm_abi::bundle::RunConfig, RunError> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(wasmvm_abi::bundle::RunConfig {
        argv0: opts.argv0.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        realtime_ns: std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64),
        random_seed: Some(seed),
        shares: opts
            .shares
            .iter()
            .map(|s| wasmvm_abi::bundle::Share {
                guest_path: s.guest.clone(),
                read_only: s.read_only,
            })
            .collect(),
        listens: opts.listens.clone(),
        net: net.and_then(|n| n.config),
    })
}

/// Checks that `/dev/kvm` can be opened for reading and writing.
pub fn check_kvm() -> Result<(), RunError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| {
            RunError::KvmUnavailable(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "/dev/kvm does not exist: enable virtualization (or nested virtualization) \
                     for this machine, or pass --accel tcg"
                        .to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied on /dev/kvm: add yourself to the `kvm` group".to_string()
                }
                _ => format!("/dev/kvm: {e}"),
            })
        })
}

/// Default guest RAM for a bundle: kernel, interpreter state (about 8× the bundle, which
/// holds the module and any packed files, copied once more into the heap) and twice the
/// module's minimum memory (room to grow), rounded up to 2 MiB; at least 64 MiB.
/// Guest RAM for a run of `image`: `--memory`, else [`default_memory_mib`].
pub(crate) fn memory_mib(opts: &RunOptions, image: &image::Image) -> u64 {
    opts.memory_mib.unwrap_or_else(|| {
        default_memory_mib(image.bundle.header.total_len(), image.manifest.min_memory)
    })
}

pub fn default_memory_mib(bundle_len: u64, min_memory: u64) -> u64 {
    let bytes = (32 << 20) + 8 * bundle_len + 2 * min_memory;
    // At most 3 GiB, like --memory: guest RAM must stay below the device window (and the
    // 4 GiB the page tables map).
    (bytes.div_ceil(2 << 20) * 2).clamp(64, 3072)
}
