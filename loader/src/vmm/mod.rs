//! The built-in VMM (`wasmvm run --vmm builtin`, the default): an image on our own KVM
//! micro-VMM, no QEMU. The guest channel runs over the virtio console and two socketpairs to
//! the same host pumps the QEMU backend uses, so stdout, stderr, stdin, credit and exit
//! records behave identically.
//!
//! | module      | its one job |
//! |-------------|-------------|
//! | [`layout`]  | where things sit in guest-physical memory |
//! | [`boot`]    | the vCPU's entry state, as data; [`BootError`] |
//! | [`machine`] | building a VM: guest memory, the image, boot structures, the vCPU |
//! | [`ram`]     | guest RAM, aligned to huge pages in the host's address space |
//! | [`vcpu`]    | the vCPU loop and the guest's wait exits |
//! | [`trim`]    | giving back an idle guest's zero pages |
//! | [`kick`]    | interrupting a vCPU blocked in KVM_RUN |
//! | [`seccomp`] | the filters that confine the VMM's threads |
//! | [`devices`] | the MMIO bus and the virtio devices behind it |

pub mod boot;
pub mod devices;
pub mod kick;
pub mod layout;
pub mod machine;
pub mod ram;
pub mod seccomp;
pub mod trim;
pub mod vcpu;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmvm_abi::bundle::share_tag;
use wasmvm_abi::channel::{CHANNEL_WINDOW, MAX_CHANNEL_WINDOW};

pub use boot::{BootError, BootPath};
use devices::Devices;
use devices::console::Console;
use devices::mmio::Mmio;
use devices::net::NetDevice;
use devices::net::link::{FrameLink, StreamLink, TapLink};
use devices::net::passt::Passt;
use devices::p9::{self as p9_device, MakeServer, P9Device};
use layout::MMIO_BASE;
use machine::MachineConfig;
use vcpu::VcpuEnd;

use crate::error::io_err;
use crate::host;
use crate::host::channel::{StdinWindow, pump_stdin};
use crate::host::volume::VolumeError;
use crate::image::Image;
use crate::image::mapped::MappedImage;
use crate::run::control::RunEvent;
use crate::run::ending::{Outcome, outcome};
use crate::run::network::{self, Nic};
use crate::run::prepare::{Prepared, check_kvm};
use crate::run::supervise::OutputPump;
use crate::run::volumes::FlushMark;
use crate::run::{Control, Ending, RunIo, RunOptions};
use crate::{Backend, RunError};

/// How long a stopped run keeps the guest's output channel open for the vCPU's last exit,
/// which hands over output queued during a quiet window (`devices::quiet`).
const STOP_GRACE: Duration = Duration::from_millis(100);
/// Send buffer of passt's end of the network socket: room for what passt relays to the
/// guest between two exits of a busy vCPU.
const PASST_SEND_BUFFER: i32 = 4 << 20;

/// The built-in VMM as a [`Backend`], with what only it needs.
#[derive(Debug, Clone)]
pub struct Builtin {
    /// How the vCPU enters the kernel.
    pub boot: BootPath,
    /// Confine the VMM's worker threads with `seccomp::vmm_filter` once the VM is built. Off
    /// by default for embedders (a violation kills the whole process); the CLI turns it on.
    pub seccomp: bool,
    /// The passt binary (the user-mode network): `$WASMVM_PASST`, else `passt` on PATH.
    pub passt: PathBuf,
    /// Back guest RAM with transparent huge pages (faster start, more resident memory; see
    /// `machine::advise_huge_pages`).
    pub huge_pages: bool,
}

impl Default for Builtin {
    fn default() -> Self {
        Builtin {
            boot: BootPath::default(),
            seccomp: false,
            passt: std::env::var_os("WASMVM_PASST")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("passt")),
            huge_pages: true,
        }
    }
}

impl Backend for Builtin {
    fn serves_volumes(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "builtin"
    }

    fn run(
        &self,
        image: &Path,
        opts: &RunOptions,
        io: RunIo,
        control: Control,
    ) -> Result<Ending, RunError> {
        run(self, image, opts, io, control)
    }
}

/// Boots the image at `image_path` on the built-in VMM and runs it to its end.
fn run(
    vmm: &Builtin,
    image_path: &Path,
    opts: &RunOptions,
    io: RunIo,
    control: Control,
) -> Result<Ending, RunError> {
    let started = Instant::now();
    check_kvm()?;
    kick::install_handler();
    let mapped = MappedImage::open(image_path)?;
    let image = Image::parse(mapped.bytes())?;
    let Prepared {
        memory_mib,
        net_plan,
        run_config,
    } = Prepared::new(opts, &image, network::BUILTIN_USER_MTU)?;
    let filter = match vmm.seccomp {
        true => Some(Arc::new(seccomp::vmm_filter()?)),
        false => None,
    };

    let (out_host, out_vmm) = UnixStream::pair().map_err(io_err("creating the channel"))?;
    let (in_host, in_vmm) = UnixStream::pair().map_err(io_err("creating the channel"))?;
    let console = Console::new(out_vmm, in_vmm).map_err(io_err("creating the console"))?;
    let stop = Arc::new(AtomicBool::new(false));
    // The network card's host side: passt (started now, so it comes up while the VM is
    // built) or a tap device.
    let mut passt = None;
    let net_device = match &net_plan {
        None => None,
        Some(plan) => {
            let link: Box<dyn FrameLink> = match &plan.nic {
                Nic::User => {
                    let (vmm_end, passt_end) =
                        UnixStream::pair().map_err(io_err("creating the network socket"))?;
                    // passt drops a frame for the guest when its end is full (the VMM takes
                    // frames only at the vCPU's exits), and a dropped one stalled its
                    // connection for passt's 2 s timeout (20 concurrent uploads: 2-8 s
                    // each instead of 0.2).
                    devices::set_send_buffer(&passt_end, PASST_SEND_BUFFER, true);
                    passt = Some(Passt::spawn(
                        &vmm.passt,
                        &plan.publish,
                        plan.mtu,
                        &passt_end,
                    )?);
                    drop(passt_end);
                    Box::new(StreamLink::new(vmm_end).map_err(io_err("setting up the network"))?)
                }
                Nic::Tap(name) => Box::new(TapLink::open(name)?),
            };
            Some(Mmio::new(NetDevice::new(link, plan.mtu)))
        }
    };
    let mut devices = Devices {
        console: Some(Mmio::new(console)),
        shares: Vec::new(),
        net: net_device,
    };
    let share_filter = match vmm.seccomp && !opts.shares.is_empty() {
        true => Some(Arc::new(seccomp::share_filter()?)),
        false => None,
    };
    let volume_filter = match vmm.seccomp && !opts.volumes.is_empty() {
        true => Some(Arc::new(seccomp::volume_filter()?)),
        false => None,
    };
    // Each share's server, then each volume's (opened, locked and checked here, before the
    // VM exists: a refused volume costs no boot).
    let mut servers: Vec<(MakeServer, Option<Arc<seccomp::BpfProgram>>, PathBuf)> = Vec::new();
    for share in &opts.shares {
        let (root, read_only) = (share.open()?, share.read_only);
        let make: MakeServer =
            Box::new(move || Ok(Box::new(host::p9::Server::new(root, read_only)) as _));
        servers.push((make, share_filter.clone(), share.host.clone()));
    }
    for volume in &opts.volumes {
        let live = host::volume::open_live(&volume.image)?;
        let image = live.image().to_path_buf();
        let make: MakeServer = Box::new(move || Ok(Box::new(live.serve()?) as _));
        servers.push((make, volume_filter.clone(), image));
    }
    // Joined after the VM ends: a volume's close makes the run's writes durable.
    let mut closers = Vec::new();
    for (i, (server, filter, path)) in servers.into_iter().enumerate() {
        let (worker, closer) = p9_device::spawn_worker(&format!("vmm-9p-{i}"), server, filter)
            .map_err(io_err("starting a share's thread"))?;
        closers.push((closer, path));
        devices.shares.push(Mmio::new(P9Device::new(
            &share_tag(i),
            worker,
            Arc::clone(&stop),
        )));
    }

    let machine_config = MachineConfig {
        memory_mib,
        run_config: &run_config,
        cmdline: &devices.cmdline(),
        boot: vmm.boot,
        ready_console: devices.console.as_ref().map(|_| MMIO_BASE),
        // A writable live directory could hold the image itself: a guest writing it would
        // change the code of every VM mapping it. Copy then. (A volume is a FAT image: the
        // guest cannot reach other host files through it.)
        map_file: opts.shares.iter().all(|s| s.read_only),
        net_batched: devices.net.is_some(),
        huge_pages: vmm.huge_pages,
        kernel_log: io.verbose,
    };
    let mut machine = machine::build(&mapped, &machine_config)?;
    // The console comes up set up (the guest skips ~45 exits of negotiation), its queues in
    // the boot area; a guest that enters through PVH resets and negotiates it as usual.
    if let Some(console) = devices.console.as_mut() {
        use wasmvm_abi::direct::console_rings as rings;
        console.preset(
            machine.boot_area.console_rings(),
            rings::QUEUE_SIZE,
            rings::QUEUE_SPAN,
            rings::AVAIL_OFFSET,
            rings::USED_OFFSET,
        );
    }
    if let Some(net) = devices.net.as_mut() {
        // The card suppresses notifications only for a guest that was told (the direct
        // entry); a PVH guest notifies as usual.
        net.device.set_batched(machine.waits_block);
        if let Some(passt) = passt.as_mut() {
            passt.wait_ready(net.device.link_mut())?;
            (io.log)(&format!(
                "host: user-mode network (passt) up after {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            ));
        }
    }
    drop(image);
    drop(mapped);
    (io.log)(&format!(
        "host: VM built after {:.1} ms ({memory_mib} MiB guest RAM)",
        started.elapsed().as_secs_f64() * 1e3
    ));

    let confine = |filter: &Option<Arc<seccomp::BpfProgram>>| match filter {
        Some(f) => seccomp::confine_thread(f),
        None => Ok(()),
    };

    let guest_writer = Arc::new(Mutex::new(in_host));
    let stdin_sink = Arc::clone(&guest_writer);
    let mut stdin = io.stdin;
    let stdin_filter = filter.clone();
    let stdin_window = Arc::new(StdinWindow::default());
    let pump_window = Arc::clone(&stdin_window);

    let vcpu_thread = AtomicU64::new(0);
    let deadline = opts.timeout.map(|t| started + t);
    let RunIo {
        stdout,
        stderr,
        log,
        ..
    } = io;
    let mut flushing = None;
    let window: &StdinWindow = &stdin_window;
    // Dropped as the vCPU thread ends, so its end is seen at once (not at the next poll).
    let (vcpu_ending, vcpu_ended) = std::sync::mpsc::channel::<()>();
    let (event, vcpu_end) = std::thread::scope(|scope| {
        let vcpu = std::thread::Builder::new()
            .name("vmm-vcpu".into())
            .spawn_scoped(scope, || {
                let _ending = vcpu_ending;
                // SAFETY: pthread_self has no preconditions.
                vcpu_thread.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
                devices.set_quiet_timers();
                let end = match confine(&filter) {
                    Ok(()) => machine.run(&mut devices, &stop),
                    Err(e) => VcpuEnd::Crashed(e),
                };
                // Closes the guest's side of the channel (the pump sees the end) and the
                // shares' request channels (their threads end).
                drop(devices);
                end
            });
        let vcpu = vcpu.map_err(io_err("starting the vCPU thread"))?;
        // The guest is running (its start matters most); then its input and output.
        let input = std::thread::Builder::new()
            .name("vmm-stdin".into())
            .spawn(move || {
                // Unconfined, this thread would only read host stdin; it stops rather than
                // run so.
                if confine(&stdin_filter).is_ok() {
                    pump_stdin(&mut stdin, &*stdin_sink, &pump_window)
                }
            });
        let tx = control.tx.clone();
        let writer = &guest_writer;
        let mut reader = &out_host;
        let log = &mut *log;
        let pump_filter = &filter;
        let output = std::thread::Builder::new()
            .name("vmm-output".into())
            .spawn_scoped(scope, move || match confine(pump_filter) {
                Ok(()) => OutputPump {
                    to_guest: writer,
                    stdout,
                    stderr,
                    log,
                    started,
                    events: tx,
                    // The console never drops bytes (a full socket blocks the vCPU): widen
                    // the window to cut exits.
                    grant: MAX_CHANNEL_WINDOW - CHANNEL_WINDOW,
                    stdin_window: window,
                }
                .run(&mut reader),
                Err(e) => {
                    let _ = tx.send(RunEvent::Stream(Err(std::io::Error::other(e))));
                }
            });
        // A pump that could not start ends the run (the guest is stopped below).
        let event = match (input, output) {
            (Ok(_), Ok(_)) => control.wait(deadline),
            (Err(e), _) => Some(RunEvent::Stream(Err(std::io::Error::new(
                e.kind(),
                format!("starting the stdin thread: {e}"),
            )))),
            (_, Err(e)) => Some(RunEvent::Stream(Err(e))),
        };
        // From here the volumes are being closed and made durable.
        flushing = Some(FlushMark::begin(opts));
        // Stop the vCPU unless it is already leaving: flag, then kick it out of KVM_RUN until
        // it notices (a kick can land just before it re-enters the guest).
        stop.store(true, Ordering::SeqCst);
        // The vCPU's last exit hands over output the guest queued without one (the
        // console's quiet period), so the channel stays open a moment for it. Only a vCPU
        // still blocked after that, writing output nobody reads, gets EPIPE.
        let grace = Instant::now() + STOP_GRACE;
        let mut channel_open = true;
        while !vcpu.is_finished() {
            if channel_open && Instant::now() >= grace {
                let _ = out_host.shutdown(std::net::Shutdown::Both);
                channel_open = false;
            }
            let thread = vcpu_thread.load(Ordering::SeqCst);
            if thread != 0 {
                // SAFETY: the id is that of the live vCPU thread (it has not finished), and
                // the signal's handler only sets that thread's vCPU's `immediate_exit`.
                unsafe { libc::pthread_kill(thread as libc::pthread_t, kick::signal()) };
            }
            if vcpu_ended.recv_timeout(Duration::from_millis(1)) != Err(RecvTimeoutError::Timeout) {
                break;
            }
        }
        let vcpu_end = vcpu
            .join()
            .unwrap_or(VcpuEnd::Crashed("the vCPU thread panicked".into()));
        let _ = out_host.shutdown(std::net::Shutdown::Both);
        Ok::<_, RunError>((event, vcpu_end))
    })?;
    // A stdin pump waiting for the guest to read gives up (an embedder's process goes on).
    stdin_window.close();
    log(&format!(
        "host: VM ended after {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    if let Some(trim) = machine.trim.as_ref() {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        if trim.released() > 0 {
            log(&format!(
                "host: gave back about {:.1} MiB of zero pages while the guest idled ({:.2} ms to find them)",
                mib(trim.released()),
                trim.spent().as_secs_f64() * 1e3
            ));
        }
        if trim.shared() > 0 {
            log(&format!(
                "host: mapped {:.1} MiB of the guest's copies of the image from the file while it idled (shared between VMs of the image)",
                mib(trim.shared())
            ));
        }
    }
    // The devices are gone with the vCPU thread: each worker closes its server and ends.
    let mut closed = Ok(());
    for (closer, path) in closers {
        let result = closer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the share's thread panicked")));
        if let Err(cause) = result
            && closed.is_ok()
        {
            closed = Err(RunError::Volume(VolumeError::Io { path, cause }));
        }
    }
    drop(flushing);
    closed?;
    Ok(match outcome(event) {
        Outcome::Ended(ending) => ending,
        Outcome::NoRecord(Some(why)) => Ending::Crashed(why),
        Outcome::NoRecord(None) => Ending::Crashed(match vcpu_end {
            VcpuEnd::Crashed(why) => why,
            _ => "the VM stopped without an exit record".to_string(),
        }),
    })
}
