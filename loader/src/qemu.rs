//! The QEMU backend: boots an image on `qemu-system-x86_64 -M microvm` with the virtio
//! console carrying the framed guest channel over a socketpair, the run configuration as the
//! PVH module (`-initrd`), and `isa-debug-exit` at the ABI's exit port.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmvm_abi::exit::EXIT_PORT;

use crate::channel::{StreamEnd, pump_stdin};
use crate::image::Image;
use crate::net::{self, NetPlan, Nic, Proto};
use crate::{
    Accel, Control, Ending, RunError, RunEvent, RunIo, RunOptions, ShareSpec, io_err, pump_output,
};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use wasmvm_abi::bundle::share_tag;

/// The fd number QEMU finds the channel socket at.
const CHANNEL_FD: i32 = 3;

/// Appends `value` to a QEMU option, doubling commas (QEMU's escape).
fn push_escaped(option: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        option.push(b);
        if b == b',' {
            option.push(b',');
        }
    }
}

/// The network card's options: QEMU's user-mode network (libslirp) with the addressing plan
/// of `wasmvm_abi::net` and one `hostfwd` per published port, or a tap device.
fn netdev(plan: &NetPlan) -> Vec<u8> {
    let mut netdev = Vec::new();
    match &plan.nic {
        Nic::User => {
            netdev.extend_from_slice(
                b"user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,ipv6=off",
            );
            for p in &plan.publish {
                let proto = match p.proto {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                };
                netdev.extend_from_slice(
                    format!(
                        ",hostfwd={proto}:{}:{}-:{}",
                        p.host_addr, p.host_port, p.guest_port
                    )
                    .as_bytes(),
                );
            }
        }
        Nic::Tap(name) => {
            netdev.extend_from_slice(b"tap,id=net0,script=no,downscript=no,ifname=");
            push_escaped(&mut netdev, name.as_bytes());
        }
    }
    netdev
}

/// The QEMU command line for `image`, without the process plumbing.
pub fn command_line(
    image: &Path,
    run_config: &Path,
    memory_mib: u64,
    accel: Accel,
    shares: &[ShareSpec],
    net: Option<&NetPlan>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-M",
        "microvm,pit=off,pic=off,rtc=off,isa-serial=off,acpi=off",
        "-accel",
        match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        },
        "-smp",
        "1",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-device",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1").into());
    args.extend(
        [
            "-chardev",
            &format!("socket,id=wasmvm,fd={CHANNEL_FD}"),
            "-device",
            "virtio-serial-device,max_ports=1",
            "-device",
            "virtconsole,chardev=wasmvm",
            "-m",
            &format!("{memory_mib}M"),
        ]
        .iter()
        .map(OsString::from),
    );
    // Live directories: QEMU's own 9P server, one virtio-9p device per share, tagged as the
    // kernel expects (`share_tag`). Commas in a path are doubled, QEMU's option escape.
    for (i, share) in shares.iter().enumerate() {
        let mut fsdev = format!("local,id=share{i},security_model=none,path=").into_bytes();
        push_escaped(&mut fsdev, share.host.as_os_str().as_bytes());
        if share.read_only {
            fsdev.extend_from_slice(b",readonly=on");
        }
        args.push("-fsdev".into());
        args.push(OsString::from_vec(fsdev));
        args.push("-device".into());
        args.push(format!("virtio-9p-device,fsdev=share{i},mount_tag={}", share_tag(i)).into());
    }
    // The network card after the shares, as on the built-in VMM (the kernel finds it by its
    // device ID wherever it is).
    if let Some(plan) = net {
        let [a, b, c, d, e, f] = wasmvm_abi::net::GUEST_MAC;
        args.push("-netdev".into());
        args.push(OsString::from_vec(netdev(plan)));
        args.push("-device".into());
        args.push(
            format!(
                "virtio-net-device,netdev=net0,mac={a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}"
            )
            .into(),
        );
    }
    args.push("-kernel".into());
    args.push(image.into());
    args.push("-initrd".into());
    args.push(run_config.into());
    args
}

fn spawn(opts: &RunOptions, args: &[OsString], guest_end: &UnixStream) -> Result<Child, RunError> {
    let fd = guest_end.as_raw_fd();
    let mut cmd = Command::new(&opts.qemu);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The parent-death signal ends QEMU with this thread even if wasmvm is killed outright
    // (QEMU would otherwise run on, holding published ports); dup2 puts the guest end of the
    // socketpair at CHANNEL_FD (dup2 clears close-on-exec on the copy).
    // SAFETY: only async-signal-safe calls (prctl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(fd, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RunError::QemuMissing(opts.qemu.display().to_string()),
        _ => RunError::Io {
            context: "starting QEMU",
            source: e,
        },
    })
}

/// Boots the image at `image_path` and runs it to its end.
pub fn run(
    image_path: &Path,
    opts: &RunOptions,
    io: RunIo,
    control: Control,
) -> Result<Ending, RunError> {
    let started = Instant::now();
    let bytes = std::fs::read(image_path).map_err(io_err("reading the image"))?;
    let image = Image::parse(&bytes)?;
    let memory_mib = crate::memory_mib(opts, &image);
    if opts.accel == Accel::Kvm {
        crate::check_kvm()?;
    }

    let net_plan = crate::net_plan(opts, &image, net::QEMU_USER_MTU)?;
    if let Some(plan) = &net_plan {
        // QEMU's own message for a taken port names no port.
        net::check_ports(&plan.publish)?;
    }
    let run_config = crate::run_config(opts, net_plan.as_ref())?;
    let mut config_file = tempfile::Builder::new()
        .prefix("wasmvm-run-")
        .tempfile()
        .map_err(io_err("creating the run configuration"))?;
    config_file
        .write_all(&run_config.encode())
        .map_err(io_err("writing the run configuration"))?;

    drop(image);
    drop(bytes);

    let (host_end, guest_end) = UnixStream::pair().map_err(io_err("creating the channel"))?;
    for share in &opts.shares {
        share.open()?;
    }
    let args = command_line(
        image_path,
        config_file.path(),
        memory_mib,
        opts.accel,
        &opts.shares,
        net_plan.as_ref(),
    );
    let mut child = spawn(opts, &args, &guest_end)?;
    drop(guest_end);
    (io.log)(&format!(
        "host: QEMU started after {:.1} ms ({} MiB guest RAM)",
        started.elapsed().as_secs_f64() * 1e3,
        memory_mib
    ));

    // QEMU's own complaints, collected for error messages.
    let mut qemu_stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = qemu_stderr.read_to_string(&mut s);
        s
    });

    // stdin may block forever (a terminal): its thread is detached, not joined.
    let guest_writer = Arc::new(Mutex::new(
        host_end
            .try_clone()
            .map_err(io_err("cloning the channel"))?,
    ));
    let stdin_sink = Arc::clone(&guest_writer);
    let mut stdin = io.stdin;
    std::thread::spawn(move || pump_stdin(&mut stdin, &*stdin_sink));

    let deadline = opts.timeout.map(|t| started + t);
    let RunIo {
        stdout,
        stderr,
        log,
        ..
    } = io;
    let ending = std::thread::scope(|scope| {
        let tx = control.tx.clone();
        let mut reader = &host_end;
        let log = &mut *log;
        scope.spawn(move || {
            // QEMU's virtconsole drops what its socket cannot take: keep the initial window.
            pump_output(
                &mut reader,
                &guest_writer,
                stdout,
                stderr,
                log,
                started,
                tx,
                0,
            )
        });
        let event = control.wait(deadline);
        let ending = match event {
            Some(RunEvent::Stream(Ok(StreamEnd::Exit(record)))) => Ok(Ending::from_record(record)),
            Some(RunEvent::Stream(Ok(StreamEnd::Garbled(why)))) => Ok(Ending::Crashed(why)),
            Some(RunEvent::Stream(Ok(StreamEnd::Closed))) => Err(None),
            Some(RunEvent::Stream(Err(e))) => Err(Some(e.to_string())),
            Some(RunEvent::Stop(reason)) => Ok(Ending::Stopped(reason)),
            None => Ok(Ending::TimedOut),
        };
        // Whatever happened, QEMU must be gone before we return. After an exit record it is
        // already leaving through isa-debug-exit, and a closed stream means it has exited.
        let leaving = matches!(
            ending,
            Ok(Ending::Exited(_) | Ending::Trapped { .. }) | Err(_)
        );
        if !leaving {
            let _ = child.kill();
        }
        let _ = host_end.shutdown(std::net::Shutdown::Both);
        let status = child.wait();
        (ending, status)
    });
    let (ending, status) = ending;
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    log(&format!(
        "host: VM ended after {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    drop(config_file);
    match ending {
        Ok(e) => Ok(e),
        Err(why) => {
            let status = status.map_err(io_err("waiting for QEMU"))?;
            // QEMU warns about CPU features it cannot offer; only other lines are failures.
            let qemu_stderr = qemu_stderr
                .lines()
                .filter(|l| !l.contains("warning:"))
                .collect::<Vec<_>>()
                .join("\n");
            if !status.success() && !qemu_stderr.is_empty() {
                return Err(RunError::QemuFailed {
                    status: status.to_string(),
                    stderr: qemu_stderr,
                });
            }
            let mut m = why.unwrap_or_else(|| {
                "the VM stopped without an exit record (triple fault or reset)".to_string()
            });
            if !qemu_stderr.is_empty() {
                m.push_str(&format!("; QEMU said: {qemu_stderr}"));
            }
            Ok(Ending::Crashed(m))
        }
    }
}
