//! Host reference mode (`wasmvm run --vmm host`): the same image, run on the host by the same
//! wasmi version with `wasi-common` (through `wasmi_wasi`) as the WASI implementation. Tests
//! use it as the oracle the VM must match byte for byte.
//!
//! Packed directories are written out to a temporary directory first and preopened from
//! there, so, as in the VM, the app's writes vanish when it ends.
//!
//! Listening sockets (packed, or `--listen`) are host sockets bound to the listener's own
//! address and port, preopened after the directories as in the VM; `-p HOST:GUEST` binds
//! the listener on guest port GUEST to the host address and port instead. wasi-common has
//! no outbound sockets, so a tap network or a published port no listener uses is refused.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::time::{Duration, Instant};

use wasmi::{CallHook, Engine, Linker, Module, Store};
use wasmi_wasi::WasiCtx;
use wasmi_wasi::sync::{Dir, TcpListener, WasiCtxBuilder, ambient_authority};
use wasmvm_abi::bundle::{FsNodeKind, RunConfig};
use wasmvm_abi::channel::trap;
use wasmvm_engine::{call_entry, engine_config};

use crate::error::io_err;
use crate::image::Image;
use crate::run::control::RunEvent;
use crate::run::network::{NetError, NetworkMode, Proto};
use crate::run::{Control, RunIo};
use crate::{Backend, Ending, RunError, RunOptions};

/// `bytes` as text for wasi-common, whose arguments, environment and preopen names are
/// Rust strings: anything else is refused, naming `what`, rather than changed (a VM hands
/// the app the bytes as they are).
fn text(bytes: &[u8], what: &str) -> Result<String, RunError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        RunError::Host(format!(
            "{what} {:?} is not UTF-8, which host mode (wasi-common) cannot pass on; a VM passes any bytes",
            String::from_utf8_lossy(bytes)
        ))
    })
}

/// Stack for the interpreter thread: wasmi and wasi-common recurse more than a main
/// thread's default allows in unoptimised builds.
const STACK_SIZE: usize = 256 << 20;

/// Host reference mode as a [`Backend`]: the image's module run in this process.
///
/// A stop (a signal, `--timeout`) cannot preempt an interpreter running on one of this
/// process's threads, so host calls are its boundary: once a stop is requested the app may
/// neither start nor return from one ([`StopGate`]). The run then returns
/// ([`Ending::Stopped`] or [`Ending::TimedOut`]) at once if the app is computing, else when
/// its call returns or [`HOST_CALL_GRACE`] has passed, so its volumes are written back and
/// its scratch directory removed, as for a VM; from then on nothing the app does changes a
/// file or the output, except a call still running past the grace. An app that has not
/// ended is left behind: one computing runs on (a core's worth of CPU) and one blocked in a
/// call keeps its descriptors, listeners included, until the process exits. The CLI exits
/// right after; a long-lived embedder that stops host-mode runs of untrusted apps should run
/// them in a process of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostMode;

/// How long a host call in progress at a stop request gets to return before the run ends
/// without it. File calls return well within it; one still running is most likely waiting
/// for input (stdin, a socket, a sleep), which changes nothing. One that is still writing
/// (a huge write, a stalled output pipe) finishes after the run returned, as if the app had
/// been stopped in the middle of it.
const HOST_CALL_GRACE: Duration = Duration::from_millis(500);

impl Backend for HostMode {
    fn name(&self) -> &'static str {
        "host"
    }

    /// Runs the app on a thread of its own, until it ends, `control` stops it or
    /// `opts.timeout` passes. With `io.process_stdio` the app gets this process's stdin,
    /// stdout and stderr; otherwise pipes, pumped from and to `io`'s streams.
    fn run(
        &self,
        image: &Path,
        opts: &RunOptions,
        io: RunIo,
        control: Control,
    ) -> Result<Ending, RunError> {
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        // The packed directories are written out here, owned by this call rather than the
        // interpreter thread: the directory goes when the run returns, even when the
        // thread is left behind.
        let scratch = tempfile::Builder::new()
            .prefix("wasmvm-host-")
            .tempdir()
            .map_err(io_err("creating a scratch directory"))?;
        std::thread::scope(|scope| {
            let RunIo {
                stdin,
                stdout,
                stderr,
                process_stdio,
                ..
            } = io;
            let (app_streams, pumps) = match process_stdio {
                true => (None, None),
                false => {
                    let (streams, pumps) = Piped::start(scope, stdin, stdout, stderr)?;
                    (Some(streams), Some(pumps))
                }
            };
            let gate = Arc::new(StopGate::default());
            let prepared = prepare(image, opts, app_streams, scratch.path(), gate.clone())?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // The deadline passed during setup: the app never starts (a stop that came
                // meanwhile is already queued and ends the wait below first). Started, an
                // app that ends at once would race the deadline to the wait.
                drop(prepared);
                if let Some(pumps) = pumps {
                    pumps.finish(true);
                }
                return Ok(Ending::TimedOut);
            }
            let interpreter = {
                let ended = EndedOnDrop(control.tx.clone());
                std::thread::Builder::new()
                    .name("wasmvm-host".into())
                    .stack_size(STACK_SIZE)
                    .spawn(move || {
                        let _ended = ended;
                        run_app(prepared)
                    })
                    .map_err(io_err("starting the interpreter thread"))?
            };
            let stopped = loop {
                match control.wait(deadline) {
                    Some(RunEvent::Stop(reason)) => break Ending::Stopped(reason),
                    None => break Ending::TimedOut,
                    Some(RunEvent::AppEnded) => {
                        let ending = interpreter
                            .join()
                            .map_err(|_| RunError::Host("the interpreter thread panicked".into()));
                        if let Some(pumps) = pumps {
                            pumps.finish(true);
                        }
                        return ending;
                    }
                    // Only the VMs' guest channel sends it.
                    Some(RunEvent::Stream(_)) => {}
                }
            };
            let app_ended = stop(&gate, &control);
            if app_ended {
                // Its store is dropped (its files closed) before the volumes are read.
                let _ = interpreter.join();
            }
            if let Some(pumps) = pumps {
                // The app's ends of the pipes close when it ends, and the pumps end with
                // them; those of an app left behind stay open, so the pumps take what the
                // pipes hold and end.
                pumps.finish(app_ended);
            }
            Ok(stopped)
        })
    }
}

/// Tells the run that the interpreter thread ended, however it ended (a panic too).
struct EndedOnDrop(std::sync::mpsc::Sender<RunEvent>);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(RunEvent::AppEnded);
    }
}

/// Stops the app at a host call boundary; returns whether its thread has ended (else it
/// is left behind, with nothing more to change).
fn stop(gate: &StopGate, control: &Control) -> bool {
    if !gate.stop() {
        // Computing in wasm: its next host call is refused, so nothing changes any more.
        return false;
    }
    let until = Instant::now() + HOST_CALL_GRACE;
    loop {
        match control.wait(Some(until)) {
            Some(RunEvent::AppEnded) => return true,
            // A second signal changes nothing; the first stop goes on.
            Some(RunEvent::Stop(_) | RunEvent::Stream(_)) => {}
            None => return false,
        }
    }
}

/// Where a stop request meets the app's host calls (the interpreter's call hook): once a
/// stop is requested, a host call can neither start nor return to the app, which then
/// ends with an error at its next boundary. One word for both facts, so that a call and a
/// stop request racing each other are ordered. One bit of "in a call" suffices because no
/// WASI function (nor a stub) calls back into wasm, so host calls never nest.
#[derive(Debug, Default)]
pub(crate) struct StopGate(AtomicU8);

impl StopGate {
    const STOPPING: u8 = 1;
    const IN_HOST_CALL: u8 = 2;

    /// The interpreter's call hook.
    pub(crate) fn on_call(&self, hook: CallHook) -> Result<(), wasmi::Error> {
        let stopped = || wasmi::Error::new("the run was stopped");
        match hook {
            CallHook::CallingHost => self
                .0
                .fetch_update(SeqCst, SeqCst, |s| {
                    (s & Self::STOPPING == 0).then_some(s | Self::IN_HOST_CALL)
                })
                .map(drop)
                .map_err(|_| stopped()),
            CallHook::ReturningFromHost => {
                match self.0.fetch_and(!Self::IN_HOST_CALL, SeqCst) & Self::STOPPING {
                    0 => Ok(()),
                    _ => Err(stopped()),
                }
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => Ok(()),
        }
    }

    /// Requests the stop; returns whether a host call was in progress (it may still change
    /// something until it returns). A host call that ends the app with an error (`proc_exit`)
    /// never returns through the hook, so this can also be true of an app that has ended.
    pub(crate) fn stop(&self) -> bool {
        self.0.fetch_or(Self::STOPPING, SeqCst) & Self::IN_HOST_CALL != 0
    }
}

/// The app's ends of three pipes, for a run whose streams are not this process's.
struct AppStreams {
    stdin: std::fs::File,
    stdout: std::fs::File,
    stderr: std::fs::File,
}

/// The threads that move bytes from the app's output pipes to the run's streams.
struct Piped<'scope> {
    outputs: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
    /// Dropped to tell the pumps that the app was left behind: they then take what their
    /// pipe holds and end, where they would otherwise wait for its end.
    abandon: std::io::PipeWriter,
}

impl<'scope> Piped<'scope> {
    fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        mut stdin: Box<dyn std::io::Read + Send>,
        stdout: &'env mut (dyn std::io::Write + Send),
        stderr: &'env mut (dyn std::io::Write + Send),
    ) -> Result<(AppStreams, Piped<'scope>), RunError> {
        let pipe = || std::io::pipe().map_err(io_err("creating a pipe for the app"));
        let (stdin_app, mut stdin_host) = pipe()?;
        let (stdout_host, stdout_app) = pipe()?;
        let (stderr_host, stderr_app) = pipe()?;
        let (abandoned, abandon) = pipe()?;
        let abandoned = std::sync::Arc::new(abandoned);
        // stdin may block forever (a terminal): its thread is detached, not joined. A
        // write error means the app closed its end; nothing more to forward then.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdin, &mut stdin_host);
        });
        let outputs = [(stdout_host, stdout), (stderr_host, stderr)]
            .into_iter()
            .map(|(from, to)| {
                let abandoned = abandoned.clone();
                scope.spawn(move || pump(from, &abandoned, to))
            })
            .collect();
        let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
        Ok((
            AppStreams {
                stdin: file(stdin_app.into()),
                stdout: file(stdout_app.into()),
                stderr: file(stderr_app.into()),
            },
            Piped { outputs, abandon },
        ))
    }

    /// Waits until everything the app wrote has reached the run's streams: until the
    /// pipes' ends if the app has ended, else until they are empty.
    fn finish(self, app_ended: bool) {
        if !app_ended {
            drop(self.abandon);
        }
        for pump in self.outputs {
            let _ = pump.join();
        }
    }
}

/// Copies what the app writes to `from` into `to` until the app closes its end, or, once
/// `abandoned` reads as closed, until `from` is empty. A stream that fails to take bytes
/// gets no more, but the pipe is still drained: an app blocked on a full pipe would never
/// end. Each read follows a poll that found the pipe readable, so none blocks.
fn pump(mut from: std::io::PipeReader, abandoned: &std::io::PipeReader, to: &mut dyn Write) {
    use rustix::event::{PollFd, PollFlags, poll};
    use std::io::{ErrorKind, Read};
    let mut buf = vec![0; 64 << 10];
    let mut to = Some(to);
    loop {
        let mut fds = [
            PollFd::new(&from, PollFlags::IN),
            PollFd::new(abandoned, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if fds[0].revents().is_empty() {
            if fds[1].revents().is_empty() {
                continue;
            }
            return; // abandoned, and the pipe is empty
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(out) = to.as_mut()
                    && out.write_all(&buf[..n]).is_err()
                {
                    to = None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The app ready to start: what [`prepare`] made.
struct Prepared {
    store: Store<WasiCtx>,
    linker: Linker<WasiCtx>,
    module: Module,
    invoke: Option<String>,
}

/// Everything before the app's first instruction: the image read and checked, its packed
/// directories written out under `scratch`, shares opened, listeners bound, the module
/// compiled, its host calls routed through `gate`. Runs no app code, so it runs on the
/// caller's thread: a stop that comes meanwhile waits for it, and nothing of it goes on
/// after the run returns.
fn prepare(
    image_path: &Path,
    opts: &RunOptions,
    streams: Option<AppStreams>,
    scratch: &Path,
    gate: Arc<StopGate>,
) -> Result<Prepared, RunError> {
    let bytes = crate::image::file::read(image_path)?;
    let image = Image::parse(&bytes)?;
    let run = RunConfig {
        argv0: opts.argv0.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        listens: opts.listens.clone(),
        ..RunConfig::default()
    };
    let settings = image.manifest.settings(&run);

    let mut builder = WasiCtxBuilder::new();
    match streams {
        None => builder.inherit_stdio(),
        Some(s) => {
            let wasi_file = |f: std::fs::File| -> Box<dyn wasmi_wasi::WasiFile> {
                Box::new(wasmi_wasi::sync::file::File::from_cap_std(
                    cap_std::fs::File::from_std(f),
                ))
            };
            builder
                .stdin(wasi_file(s.stdin))
                .stdout(wasi_file(s.stdout))
                .stderr(wasi_file(s.stderr))
        }
    };
    for arg in &settings.args {
        builder
            .arg(&text(arg, "the argument")?)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    for var in &settings.env {
        let var = text(var, "the environment variable")?;
        let (k, v) = var.split_once('=').unwrap_or((&var, ""));
        builder
            .env(k, v)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    for (i, guest) in image.manifest.preopens.iter().enumerate() {
        let root = scratch.join(i.to_string());
        std::fs::create_dir(&root).map_err(io_err("creating a preopen"))?;
        // The image is untrusted: every node must name a fresh entry inside a directory
        // created before it, so no path (`..`, `/`, or a packed symlink) can lead outside
        // the scratch directory.
        let mut dirs = std::collections::HashSet::from([Vec::new()]);
        for node in image
            .manifest
            .fs_nodes
            .iter()
            .filter(|n| n.preopen == i as u32)
        {
            let (parent, name) = match node.path.iter().rposition(|&b| b == b'/') {
                Some(at) => (&node.path[..at], &node.path[at + 1..]),
                None => (&[][..], &node.path[..]),
            };
            let absolute = node.path.first() == Some(&b'/');
            if absolute || matches!(name, b"" | b"." | b"..") || !dirs.contains(parent) {
                return Err(RunError::Image(crate::image::ImageError::Bundle(
                    wasmvm_abi::DecodeError::Malformed("packed path leaves its directory"),
                )));
            }
            let path = root.join(std::ffi::OsStr::from_bytes(&node.path));
            match node.kind {
                FsNodeKind::Dir => {
                    dirs.insert(node.path.clone());
                    std::fs::create_dir(&path)
                }
                FsNodeKind::File => std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &node.contents)),
                FsNodeKind::Symlink => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&node.contents), &path)
                }
            }
            .map_err(io_err("writing a packed file"))?;
        }
        let dir = Dir::open_ambient_dir(&root, ambient_authority())
            .map_err(io_err("opening a preopen"))?;
        builder
            .preopened_dir(dir, text(guest, "the packed directory")?)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    // The VM refuses a packed node whose preopen does not exist; so does host mode.
    if let Some(node) = image
        .manifest
        .fs_nodes
        .iter()
        .find(|n| n.preopen as usize >= image.manifest.preopens.len())
    {
        return Err(RunError::Image(crate::image::ImageError::Bundle(
            wasmvm_abi::DecodeError::Malformed(if node.kind == FsNodeKind::Dir {
                "a packed directory names a missing preopen"
            } else {
                "a packed file names a missing preopen"
            }),
        )));
    }

    // Live directories after the packed ones, as in the VM.
    for share in &opts.shares {
        if share.read_only {
            return Err(RunError::Host(
                "--dir-ro is not available with --vmm host (wasi-common has no read-only \
                 preopens); use --dir or a VM"
                    .into(),
            ));
        }
        let dir = Dir::from_std_file(std::fs::File::from(share.open()?));
        builder
            .preopened_dir(dir, text(&share.guest, "the directory name")?)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }

    // Listening sockets after every directory, as in the VM.
    let first_socket = 3 + image.manifest.preopens.len() + opts.shares.len();
    for (i, listener) in listeners(opts, &settings.listens)?.into_iter().enumerate() {
        let fd = u32::try_from(first_socket + i)
            .map_err(|_| RunError::Host("too many preopens".into()))?;
        builder
            .preopened_socket(fd, TcpListener::from_std(listener))
            .map_err(|e| RunError::Host(e.to_string()))?;
    }

    let engine = Engine::new(&engine_config());
    let module = Module::new(&engine, image.bundle.module).map_err(|e| {
        RunError::Host(match image.bundle.header.engine {
            wasmvm_abi::bundle::Engine::Wasmtime => format!(
                "host mode interprets the module with wasmi, which cannot run this one ({e}); \
                 it was packed for the compiled engine: run it in a VM"
            ),
            wasmvm_abi::bundle::Engine::Wasmi => e.to_string(),
        })
    })?;
    let mut store = Store::new(&engine, builder.build());
    store.call_hook(move |_, hook| gate.on_call(hook));
    let mut linker = Linker::<WasiCtx>::new(&engine);
    wasmi_wasi::add_to_linker(&mut linker, |ctx| ctx).map_err(|e| RunError::Host(e.to_string()))?;
    if image.manifest.stub_imports {
        wasmvm_engine::add_stubs(&mut linker, &module)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    let invoke = match &image.manifest.invoke {
        Some(name) => Some(text(name, "the export to invoke")?),
        None => None,
    };
    Ok(Prepared {
        store,
        linker,
        module,
        invoke,
    })
}

/// Runs the app to its end on this thread (instantiation runs its start function).
fn run_app(prepared: Prepared) -> Ending {
    let Prepared {
        mut store,
        linker,
        module,
        invoke,
    } = prepared;
    let outcome = linker
        .instantiate_and_start(&mut store, &module)
        .and_then(|instance| call_entry(&mut store, &instance, invoke.as_deref()));
    drop(store);
    match outcome {
        Ok(status) => match status.unwrap_or(0) {
            s if (0..=wasmvm_abi::exit::MAX_APP_STATUS).contains(&s) => Ending::Exited(s),
            _ => Ending::InvalidExitStatus,
        },
        Err(e) => {
            if let Some(status) = e.i32_exit_status() {
                Ending::Exited(status)
            } else if let Some(code) = e.as_trap_code() {
                Ending::Trapped {
                    message: trap::message(u8::from(code) as u32).to_string(),
                    backtrace: Vec::new(),
                }
            } else if e.to_string().contains("invalid exit status") {
                Ending::InvalidExitStatus
            } else {
                Ending::Trapped {
                    message: e.to_string(),
                    backtrace: Vec::new(),
                }
            }
        }
    }
}

/// Binds the host sockets for `listens` (the app's listeners, in order): each on its own
/// address and port, or where a `-p` for its port says.
fn listeners(
    opts: &RunOptions,
    listens: &[wasmvm_abi::net::Listen],
) -> Result<Vec<std::net::TcpListener>, RunError> {
    let refuse = |why: String| RunError::Net(NetError::HostMode(why));
    match (&opts.network, listens.first()) {
        (Some(mode @ NetworkMode::Tap(_)), _) => {
            return Err(refuse(format!(
                "--network {mode} needs a VM: host mode (--vmm host) has no network card"
            )));
        }
        (Some(NetworkMode::None), Some(listen)) => {
            return Err(RunError::Net(NetError::ListenWithoutNetwork(*listen)));
        }
        _ => {}
    }
    for p in &opts.publish {
        if p.proto == Proto::Udp {
            return Err(refuse(format!(
                "-p {p}: host mode (--vmm host) publishes only TCP listeners; use a VM"
            )));
        }
        if !listens.iter().any(|l| l.port == p.guest_port) {
            return Err(refuse(format!(
                "-p {p}: host mode (--vmm host) publishes only the app's listeners (--listen), and none listens on port {}",
                p.guest_port
            )));
        }
    }
    listens
        .iter()
        .map(|l| {
            let at = match opts.publish.iter().find(|p| p.guest_port == l.port) {
                Some(p) => std::net::SocketAddrV4::new(p.host_addr, p.host_port),
                None => std::net::SocketAddrV4::new(l.addr.into(), l.port),
            };
            std::net::TcpListener::bind(at).map_err(|e| {
                refuse(format!(
                    "listener {l}: cannot listen on {at} on the host (host mode binds it there): {e}"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_refuses_every_host_call_after_it_and_the_return_of_one_in_progress() {
        let gate = StopGate::default();
        assert!(gate.on_call(CallHook::CallingHost).is_ok());
        assert!(gate.on_call(CallHook::ReturningFromHost).is_ok());
        assert!(!gate.stop(), "no host call was in progress");
        assert!(gate.on_call(CallHook::CallingHost).is_err());
        // Entering and leaving wasm are not boundaries where the app could change anything.
        assert!(gate.on_call(CallHook::CallingWasm).is_ok());

        let gate = StopGate::default();
        assert!(gate.on_call(CallHook::CallingHost).is_ok());
        assert!(
            gate.stop(),
            "the call in progress may still change something"
        );
        assert!(gate.on_call(CallHook::ReturningFromHost).is_err());
        assert!(gate.on_call(CallHook::CallingHost).is_err());
    }

    #[test]
    fn a_host_call_racing_a_stop_either_starts_before_it_is_seen_or_is_refused() {
        for _ in 0..200 {
            let gate = Arc::new(StopGate::default());
            let caller = {
                let gate = gate.clone();
                std::thread::spawn(move || gate.on_call(CallHook::CallingHost).is_ok())
            };
            let in_progress = gate.stop();
            let started = caller.join().unwrap();
            // A call that started is one the stop saw in progress, and none starts unseen.
            assert_eq!(started, in_progress);
        }
    }

    #[test]
    fn the_run_hears_of_an_interpreter_thread_that_panicked() {
        let control = Control::default();
        let ended = EndedOnDrop(control.tx.clone());
        let thread = std::thread::spawn(move || {
            let _ended = ended;
            panic!("inside the interpreter");
        });
        assert!(matches!(
            control.wait(Some(Instant::now() + Duration::from_secs(60))),
            Some(RunEvent::AppEnded)
        ));
        assert!(thread.join().is_err());
    }

    #[test]
    fn a_pump_left_with_an_open_pipe_takes_what_it_holds_and_ends() {
        let (from, mut app) = std::io::pipe().unwrap();
        let (abandoned, abandon) = std::io::pipe().unwrap();
        app.write_all(b"written before the stop").unwrap();
        let out = crate::test_support::within(Duration::from_secs(10), "the pump", move || {
            let mut out = Vec::new();
            std::thread::scope(|s| {
                let pumping = s.spawn(|| pump(from, &abandoned, &mut out));
                drop(abandon);
                pumping.join().unwrap();
            });
            out
        });
        assert_eq!(out, b"written before the stop");
        drop(app);
    }

    #[test]
    fn a_pump_whose_stream_fails_still_drains_the_pipe_until_its_end() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (from, mut app) = std::io::pipe().unwrap();
        let (abandoned, _abandon) = std::io::pipe().unwrap();
        crate::test_support::within(Duration::from_secs(10), "the pump", move || {
            std::thread::scope(|s| {
                s.spawn(|| pump(from, &abandoned, &mut Broken));
                // Far more than a pipe holds: the writer blocks unless the pump drains.
                for _ in 0..64 {
                    app.write_all(&[b'x'; 64 << 10]).unwrap();
                }
                drop(app);
            })
        });
    }
}
