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

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use wasmi::{Engine, Linker, Module, Store};
use wasmi_wasi::WasiCtx;
use wasmi_wasi::sync::{Dir, TcpListener, WasiCtxBuilder, ambient_authority};
use wasmvm_abi::bundle::{FsNodeKind, RunConfig};
use wasmvm_abi::channel::trap;
use wasmvm_engine::{call_entry, engine_config};

use crate::error::io_err;
use crate::image::Image;
use crate::run::network::{NetError, NetworkMode, Proto};
use crate::run::{Control, RunIo};
use crate::{Backend, Ending, RunError, RunOptions};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stack for the interpreter thread: wasmi and wasi-common recurse more than a main
/// thread's default allows in unoptimised builds.
const STACK_SIZE: usize = 256 << 20;

/// Host reference mode as a [`Backend`]: the image's module run in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostMode;

impl Backend for HostMode {
    fn name(&self) -> &'static str {
        "host"
    }

    fn honours_stop(&self) -> bool {
        false
    }

    /// Runs the app on a thread of its own. With `io.process_stdio` the app gets this
    /// process's stdin, stdout and stderr; otherwise pipes, pumped from and to `io`'s
    /// streams. `control` is not consulted: an interpreter in this process cannot be
    /// stopped from outside, so a signal ends the whole process, as `wasmtime run`'s does.
    fn run(
        &self,
        image: &Path,
        opts: &RunOptions,
        io: RunIo,
        _control: Control,
    ) -> Result<Ending, RunError> {
        std::thread::scope(|scope| {
            let RunIo {
                stdin,
                stdout,
                stderr,
                process_stdio,
                ..
            } = io;
            let streams = match process_stdio {
                true => None,
                false => Some(Piped::start(scope, stdin, stdout, stderr)?),
            };
            let (app_streams, pumps) = match streams {
                Some((s, p)) => (Some(s), Some(p)),
                None => (None, None),
            };
            let ending = std::thread::Builder::new()
                .name("wasmvm-host".into())
                .stack_size(STACK_SIZE)
                .spawn_scoped(scope, move || run_here(image, opts, app_streams))
                .map_err(io_err("starting the interpreter thread"))?
                .join()
                .unwrap_or_else(|_| Err(RunError::Host("the interpreter thread panicked".into())));
            // The app's ends of the pipes are closed now: the output pumps drain and end.
            if let Some(pumps) = pumps {
                pumps.finish();
            }
            ending
        })
    }
}

/// The app's ends of three pipes, for a run whose streams are not this process's.
struct AppStreams {
    stdin: std::fs::File,
    stdout: std::fs::File,
    stderr: std::fs::File,
}

/// The threads that move bytes between the pipes and the run's streams.
struct Piped<'scope> {
    outputs: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
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
        let (mut stdout_host, stdout_app) = pipe()?;
        let (mut stderr_host, stderr_app) = pipe()?;
        // stdin may block forever (a terminal): its thread is detached, not joined. A
        // write error means the app closed its end; nothing more to forward then.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdin, &mut stdin_host);
        });
        let outputs = vec![
            scope.spawn(move || {
                let _ = std::io::copy(&mut stdout_host, stdout);
            }),
            scope.spawn(move || {
                let _ = std::io::copy(&mut stderr_host, stderr);
            }),
        ];
        let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
        Ok((
            AppStreams {
                stdin: file(stdin_app.into()),
                stdout: file(stdout_app.into()),
                stderr: file(stderr_app.into()),
            },
            Piped { outputs },
        ))
    }

    /// Waits until everything the app wrote has reached the run's streams.
    fn finish(self) {
        for pump in self.outputs {
            let _ = pump.join();
        }
    }
}

fn run_here(
    image_path: &Path,
    opts: &RunOptions,
    streams: Option<AppStreams>,
) -> Result<Ending, RunError> {
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

    let scratch = tempfile::Builder::new()
        .prefix("wasmvm-host-")
        .tempdir()
        .map_err(io_err("creating a scratch directory"))?;
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
            .arg(&text(arg))
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    for var in &settings.env {
        let var = text(var);
        let (k, v) = var.split_once('=').unwrap_or((&var, ""));
        builder
            .env(k, v)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    for (i, guest) in image.manifest.preopens.iter().enumerate() {
        let root = scratch.path().join(i.to_string());
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
            .preopened_dir(dir, text(guest))
            .map_err(|e| RunError::Host(e.to_string()))?;
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
            .preopened_dir(dir, text(&share.guest))
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
    let mut linker = Linker::<WasiCtx>::new(&engine);
    wasmi_wasi::add_to_linker(&mut linker, |ctx| ctx).map_err(|e| RunError::Host(e.to_string()))?;
    if image.manifest.stub_imports {
        wasmvm_engine::add_stubs(&mut linker, &module)
            .map_err(|e| RunError::Host(e.to_string()))?;
    }
    let invoke = image.manifest.invoke.as_ref().map(|b| text(b));
    let outcome = linker
        .instantiate_and_start(&mut store, &module)
        .and_then(|instance| call_entry(&mut store, &instance, invoke.as_deref()));
    drop(store);
    Ok(match outcome {
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
    })
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
