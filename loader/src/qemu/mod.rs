//! The QEMU backend: boots an image on `qemu-system-x86_64 -M microvm` with the virtio
//! console carrying the framed guest channel over a socketpair, the run configuration as the
//! PVH module (`-initrd`), and `isa-debug-exit` at the ABI's exit port. The command line is
//! [`cmdline`]'s.

pub mod cmdline;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cmdline::{CHANNEL_FD, command_line};

use crate::error::io_err;
use crate::host::channel::{StdinWindow, pump_stdin};
use crate::image::Image;
use crate::run::ending::{Outcome, outcome};
use crate::run::network;
use crate::run::prepare::{Prepared, check_kvm};
use crate::run::supervise::OutputPump;
use crate::run::{Control, Ending, RunIo, RunOptions};
use crate::{Backend, RunError};

/// Which hypervisor accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation: slow, but needs no `/dev/kvm`.
    Tcg,
}

/// QEMU as a [`Backend`], with what only it needs.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The QEMU binary: `$WASMVM_QEMU`, else `qemu-system-x86_64` on PATH.
    pub binary: PathBuf,
    pub accel: Accel,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            binary: std::env::var_os("WASMVM_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            accel: Accel::Kvm,
        }
    }
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
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

fn spawn(qemu: &Qemu, args: &[OsString], guest_end: &UnixStream) -> Result<Child, RunError> {
    let fd = guest_end.as_raw_fd();
    let mut cmd = Command::new(&qemu.binary);
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
        std::io::ErrorKind::NotFound => RunError::QemuMissing(qemu.binary.display().to_string()),
        _ => RunError::Io {
            context: "starting QEMU",
            cause: e,
        },
    })
}

/// Boots the image at `image_path` and runs it to its end.
fn run(
    qemu: &Qemu,
    image_path: &Path,
    opts: &RunOptions,
    io: RunIo,
    control: Control,
) -> Result<Ending, RunError> {
    let started = Instant::now();
    let bytes = crate::image::file::read(image_path)?;
    let image = Image::parse(&bytes)?;
    if qemu.accel == Accel::Kvm {
        check_kvm()?;
    }
    let Prepared {
        memory_mib,
        net_plan,
        run_config,
    } = Prepared::new(opts, &image, network::QEMU_USER_MTU)?;
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
        qemu.accel,
        &opts.shares,
        net_plan.as_ref(),
    );
    let mut child = spawn(qemu, &args, &guest_end)?;
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
    let stdin_window = Arc::new(StdinWindow::default());
    let pump_window = Arc::clone(&stdin_window);
    std::thread::spawn(move || pump_stdin(&mut stdin, &*stdin_sink, &pump_window));

    let deadline = opts.timeout.map(|t| started + t);
    let RunIo {
        stdout,
        stderr,
        log,
        ..
    } = io;
    let window: &StdinWindow = &stdin_window;
    let ending = std::thread::scope(|scope| {
        let tx = control.tx.clone();
        let mut reader = &host_end;
        let log = &mut *log;
        scope.spawn(move || {
            // QEMU's virtconsole drops what its socket cannot take: keep the initial window.
            OutputPump {
                to_guest: &guest_writer,
                stdout,
                stderr,
                log,
                started,
                events: tx,
                grant: 0,
                stdin_window: window,
            }
            .run(&mut reader)
        });
        let ending = outcome(control.wait(deadline));
        // Whatever happened, QEMU must be gone before we return. After an exit record it is
        // already leaving through isa-debug-exit, and a closed stream means it has exited.
        let leaving = matches!(
            ending,
            Outcome::Ended(Ending::Exited(_) | Ending::Trapped { .. }) | Outcome::NoRecord(_)
        );
        if !leaving {
            let _ = child.kill();
        }
        let _ = host_end.shutdown(std::net::Shutdown::Both);
        let status = child.wait();
        (ending, status)
    });
    let (ending, status) = ending;
    // A stdin pump waiting for the guest to read gives up (an embedder's process goes on).
    stdin_window.close();
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    log(&format!(
        "host: VM ended after {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    drop(config_file);
    match ending {
        Outcome::Ended(e) => Ok(e),
        Outcome::NoRecord(why) => {
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
