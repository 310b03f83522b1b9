//! `wasmvm run --vmm builtin`: the image on our own KVM micro-VMM (`kvm`), no QEMU. The guest
//! channel runs over `virtio_console` and two socketpairs to the same host pumps the QEMU
//! backend uses, so stdout, stderr, stdin, credit and exit records behave identically.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::channel::{StreamEnd, pump_stdin};
use crate::devices::{Devices, MMIO_BASE};
use crate::frame_link::{FrameLink, Passt, StreamLink, TapLink};
use crate::image::Image;
use crate::kvm::{self, ProbeEnd};
use crate::mapped::MappedImage;
use crate::net::{self, Nic};
use crate::seccomp;
use crate::virtio_9p::{self, P9Device};
use crate::virtio_console::Console;
use crate::virtio_mmio::Mmio;
use crate::virtio_net::NetDevice;
use crate::{Control, Ending, RunError, RunEvent, RunIo, RunOptions, io_err, pump_output};
use wasmvm_abi::bundle::share_tag;
use wasmvm_abi::channel::{CHANNEL_WINDOW, MAX_CHANNEL_WINDOW};

/// The signal that kicks the vCPU thread out of KVM_RUN so it sees its stop flag.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time
        // signal nothing else in wasmvm uses; a zeroed sigaction with SA_RESTART unset is
        // valid, so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// Boots the image at `image_path` on the built-in VMM and runs it to its end.
pub fn run(
    image_path: &Path,
    opts: &RunOptions,
    io: RunIo,
    control: Control,
) -> Result<Ending, RunError> {
    let started = Instant::now();
    crate::check_kvm()?;
    install_kick_handler();
    let mapped = MappedImage::open(image_path).map_err(io_err("reading the image"))?;
    let image = Image::parse(mapped.bytes())?;
    let memory_mib = crate::memory_mib(opts, &image);
    let net_plan = crate::net_plan(opts, &image, net::BUILTIN_USER_MTU)?;
    if let Some(plan) = &net_plan {
        // passt only warns about a taken port; say which one, before anything starts.
        net::check_ports(&plan.publish)?;
    }
    let run_config = crate::run_config(opts, net_plan.as_ref())?;
    let filter = match opts.seccomp {
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
                    passt = Some(Passt::spawn(
                        &opts.passt,
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
    let share_filter = match opts.seccomp && !opts.shares.is_empty() {
        true => Some(Arc::new(seccomp::share_filter()?)),
        false => None,
    };
    for (i, share) in opts.shares.iter().enumerate() {
        let worker = virtio_9p::spawn_worker(
            &format!("vmm-9p-{i}"),
            share.open()?,
            share.read_only,
            share_filter.clone(),
        )
        .map_err(io_err("starting a share's thread"))?;
        devices.shares.push(Mmio::new(P9Device::new(
            &share_tag(i),
            worker,
            Arc::clone(&stop),
        )));
    }

    // The console comes up set up (the guest skips ~45 exits of negotiation); a guest that
    // enters through PVH resets and negotiates it as usual.
    if let Some(console) = devices.console.as_mut() {
        use wasmvm_abi::direct::console_rings as rings;
        console.preset(
            kvm::CONSOLE_RINGS_ADDR,
            rings::QUEUE_SIZE,
            rings::QUEUE_SPAN,
            rings::AVAIL_OFFSET,
            rings::USED_OFFSET,
        );
    }
    let mut machine = kvm::build(
        &mapped,
        memory_mib,
        &run_config,
        &devices.cmdline(),
        opts.boot,
        devices.console.as_ref().map(|_| MMIO_BASE),
        // A writable live directory could hold the image itself: a guest writing it would
        // change the code of every VM mapping it. Copy then.
        opts.shares.iter().all(|s| s.read_only),
        devices.net.is_some(),
    )?;
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
    std::thread::Builder::new()
        .name("vmm-stdin".into())
        .spawn(move || {
            // Unconfined, this thread would only read host stdin; it stops rather than run so.
            if confine(&stdin_filter).is_ok() {
                pump_stdin(&mut stdin, &*stdin_sink)
            }
        })
        .map_err(io_err("starting the stdin thread"))?;

    let vcpu_thread = AtomicU64::new(0);
    let deadline = opts.timeout.map(|t| started + t);
    let RunIo {
        stdout,
        stderr,
        log,
        ..
    } = io;
    let (event, vcpu_end) = std::thread::scope(|scope| {
        let vcpu = std::thread::Builder::new()
            .name("vmm-vcpu".into())
            .spawn_scoped(scope, || {
                // SAFETY: pthread_self has no preconditions.
                vcpu_thread.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
                let end = match confine(&filter) {
                    Ok(()) => machine.run(&mut devices, &stop),
                    Err(e) => ProbeEnd::Crashed(e),
                };
                // Closes the guest's side of the channel (the pump sees the end) and the
                // shares' request channels (their threads end).
                drop(devices);
                end
            });
        let vcpu = vcpu.map_err(io_err("starting the vCPU thread"))?;
        let tx = control.tx.clone();
        let writer = &guest_writer;
        let mut reader = &out_host;
        let log = &mut *log;
        let pump_filter = &filter;
        let output = std::thread::Builder::new()
            .name("vmm-output".into())
            .spawn_scoped(scope, move || match confine(pump_filter) {
                Ok(()) => pump_output(
                    &mut reader,
                    writer,
                    stdout,
                    stderr,
                    log,
                    started,
                    tx,
                    // The console never drops bytes (a full socket blocks the vCPU): widen
                    // the window to cut exits.
                    MAX_CHANNEL_WINDOW - CHANNEL_WINDOW,
                ),
                Err(e) => {
                    let _ = tx.send(RunEvent::Stream(Err(std::io::Error::other(e))));
                }
            });
        let event = match output {
            Ok(_) => control.wait(deadline),
            Err(e) => Some(RunEvent::Stream(Err(e))),
        };
        // Stop the vCPU unless it is already leaving: flag, then kick it out of KVM_RUN until
        // it notices (a kick can land just before it re-enters the guest).
        stop.store(true, Ordering::SeqCst);
        // A vCPU blocked writing guest output (the pump has stopped reading) gets EPIPE.
        let _ = out_host.shutdown(std::net::Shutdown::Both);
        while !vcpu.is_finished() {
            let thread = vcpu_thread.load(Ordering::SeqCst);
            if thread != 0 {
                // SAFETY: the id is that of the live vCPU thread (it has not finished), and
                // the signal's handler does nothing.
                unsafe { libc::pthread_kill(thread as libc::pthread_t, kick_signal()) };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let vcpu_end = vcpu
            .join()
            .unwrap_or(ProbeEnd::Crashed("the vCPU thread panicked".into()));
        let _ = out_host.shutdown(std::net::Shutdown::Both);
        Ok::<_, RunError>((event, vcpu_end))
    })?;
    log(&format!(
        "host: VM ended after {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    Ok(match event {
        Some(RunEvent::Stream(Ok(StreamEnd::Exit(record)))) => Ending::from_record(record),
        Some(RunEvent::Stream(Ok(StreamEnd::Garbled(why)))) => Ending::Crashed(why),
        Some(RunEvent::Stream(Err(e))) => Ending::Crashed(e.to_string()),
        Some(RunEvent::Stream(Ok(StreamEnd::Closed))) => Ending::Crashed(match vcpu_end {
            ProbeEnd::Crashed(why) => why,
            _ => "the VM stopped without an exit record".to_string(),
        }),
        Some(RunEvent::Stop(reason)) => Ending::Stopped(reason),
        None => Ending::TimedOut,
    })
}
