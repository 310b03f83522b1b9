//! Runs the app: decodes the bundle, merges the run configuration, checks that this kernel
//! runs the bundle's engine, builds the app's WASI world (packed files, live directories,
//! network), hands it to the engine and turns however the app ends into an [`ExitRecord`].
//!
//! The engines, one module each and chosen by cargo feature (an image carries the kernel of
//! the engine its app uses; a kernel built with both runs either kind of bundle):
//!
//! - [`wasmi`] (`engine-wasmi`, the default): the interpreter runs the module.
//! - [`wasmtime`] (`engine-wasmtime`): wasmtime's runtime runs the artifact Cranelift
//!   compiled when the image was packed, natively.
//!
//! Both end the same way for the same app: the same exit statuses, trap codes and
//! messages, the same log line, the same network linger.

#[cfg(not(any(feature = "engine-wasmi", feature = "engine-wasmtime")))]
compile_error!("the kernel needs an engine: enable `engine-wasmi` or `engine-wasmtime`");

#[cfg(feature = "engine-wasmi")]
mod wasmi;
#[cfg(feature = "engine-wasmtime")]
mod wasmtime;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wasmvm_abi::bundle::{BundleRef, Engine, FsNode, FsNodeKind, Manifest, RunConfig, Share};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
use wasmvm_abi::net::{Listen, NetConfig};
use wasmvm_wasi::fs::Kind;
use wasmvm_wasi::{Errno, Nic, Wasi};

use crate::platform::KernelPlatform;

/// Everything the app needs to start, merged from the bundle and the run configuration.
pub struct Launch {
    /// The engine the bundle is for (one this kernel runs: checked by [`Launch::new`]).
    pub engine: Engine,
    /// The wasm module, which wasmi runs (next to an artifact it is there for the host).
    #[cfg(feature = "engine-wasmi")]
    pub module: &'static [u8],
    /// The compiled artifact, for [`Engine::Wasmtime`]: page aligned, run in place.
    #[cfg(feature = "engine-wasmtime")]
    pub artifact: Option<&'static [u8]>,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub seed: Option<[u8; 32]>,
    pub preopens: Vec<Vec<u8>>,
    pub fs_nodes: Vec<FsNode>,
    /// Wall-clock time for the packed files' timestamps.
    pub now_ns: u64,
    pub invoke: Option<String>,
    pub stub_imports: bool,
    /// Live host directories, preopened after the packed ones.
    pub shares: Vec<Share>,
    /// Listening sockets, preopened after every directory.
    pub listens: Vec<Listen>,
    /// The guest's static network settings (none: DHCP).
    pub net: Option<NetConfig>,
    /// Which of the host's stdio streams are terminals (none: the host does not say).
    pub stdio_terminals: Option<u8>,
}

impl Launch {
    /// Fails (a boot failure) on a bad manifest, or a bundle for an engine this kernel does
    /// not run.
    pub fn new(bundle: BundleRef<'static>, run: Option<RunConfig>) -> Result<Self, String> {
        let manifest =
            Manifest::decode(bundle.manifest).map_err(|e| format!("bundle manifest: {e}"))?;
        check_engine(bundle.header.engine, manifest.engine_id.as_deref())?;
        let run = run.unwrap_or_default();
        let settings = manifest.settings(&run);
        Ok(Launch {
            engine: bundle.header.engine,
            #[cfg(feature = "engine-wasmi")]
            module: bundle.module,
            #[cfg(feature = "engine-wasmtime")]
            artifact: bundle.artifact,
            args: settings.args,
            env: settings.env,
            seed: run.random_seed,
            preopens: manifest.preopens,
            fs_nodes: manifest.fs_nodes,
            now_ns: run.realtime_ns.unwrap_or(0),
            invoke: manifest
                .invoke
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            stub_imports: manifest.stub_imports,
            shares: run.shares,
            listens: settings.listens,
            net: run.net,
            stdio_terminals: run.stdio_terminals,
        })
    }
}

/// Whether this kernel was built with `engine`.
fn runs(engine: Engine) -> bool {
    match engine {
        Engine::Wasmi => cfg!(feature = "engine-wasmi"),
        Engine::Wasmtime => cfg!(feature = "engine-wasmtime"),
    }
}

/// The engine an artifact must have been compiled for to run here.
#[cfg(feature = "engine-wasmtime")]
const COMPILED_ENGINE_ID: Option<&str> = Some(wasmvm_engine::compiled::ENGINE_ID);
#[cfg(not(feature = "engine-wasmtime"))]
const COMPILED_ENGINE_ID: Option<&str> = None;

/// What this kernel runs, in words.
fn this_kernel_runs() -> String {
    match (cfg!(feature = "engine-wasmi"), COMPILED_ENGINE_ID) {
        (true, Some(id)) => format!("wasmi and {id}"),
        (false, Some(id)) => String::from(id),
        _ => String::from("wasmi"),
    }
}

/// Refuses a bundle this kernel cannot run: one for an engine it was not built with, or an
/// artifact compiled for another wasmtime build or configuration (wasmtime would refuse it
/// too, less clearly, or, for a setting it does not record, run it wrongly).
fn check_engine(engine: Engine, engine_id: Option<&[u8]>) -> Result<(), String> {
    let artifact_fits = match engine {
        Engine::Wasmi => true,
        Engine::Wasmtime => {
            engine_id.is_some() && engine_id == COMPILED_ENGINE_ID.map(str::as_bytes)
        }
    };
    if runs(engine) && artifact_fits {
        return Ok(());
    }
    let theirs = match engine {
        Engine::Wasmi => String::from("this image's module is for the wasmi interpreter"),
        Engine::Wasmtime => format!(
            "this image's artifact was compiled for {}",
            engine_id.map_or_else(
                || String::from("an unnamed engine"),
                |id| String::from_utf8_lossy(id).into_owned()
            )
        ),
    };
    Err(format!(
        "{theirs}, but this kernel runs {}: pack the module again with this wasmvm",
        this_kernel_runs()
    ))
}

/// Runs the app to completion.
pub fn run(launch: Launch) -> ExitRecord {
    match launch.engine {
        #[cfg(feature = "engine-wasmi")]
        Engine::Wasmi => wasmi::run(launch),
        #[cfg(feature = "engine-wasmtime")]
        Engine::Wasmtime => wasmtime::run(launch),
        // Refused by `Launch::new` already; unreachable with both engines built in.
        #[allow(unreachable_patterns)]
        engine => ExitRecord::failed(
            ExitKind::BootFailed,
            format!(
                "this kernel does not run {}: pack the module again with this wasmvm",
                engine.name()
            ),
        ),
    }
}

/// How long the VM outlives an app whose last sent bytes are not yet acknowledged.
const LINGER_NS: u64 = 2_000_000_000;

/// Builds the app's WASI world: its arguments and environment, the packed directories, the
/// live host directories and the network, in that order. Takes the launch's argument,
/// environment and file lists; an error is a boot failure.
fn world(launch: &mut Launch) -> Result<Wasi<KernelPlatform>, String> {
    let platform = KernelPlatform::new(launch.seed);
    let mut wasi = Wasi::new(
        platform,
        core::mem::take(&mut launch.args),
        core::mem::take(&mut launch.env),
    );
    if let Some(terminals) = launch.stdio_terminals {
        wasi.set_terminals(terminals);
    }
    populate(
        &mut wasi,
        &launch.preopens,
        core::mem::take(&mut launch.fs_nodes),
        launch.now_ns,
    )?;
    preopen_shares(&mut wasi, &launch.shares)?;
    attach_network(&mut wasi, launch.net, &launch.listens)?;
    Ok(wasi)
}

/// Logs (for `-v`) how long the module took to become ready, from `started` (before the
/// engine saw it) and `loaded` (after it was `how` loaded), and the entry about to run.
fn log_ready(started: u64, loaded: u64, how: &str, invoke: Option<&str>) {
    crate::channel::log(&format!(
        "kernel: module compiled and instantiated in {} us ({how} in {} us); calling {}",
        (crate::clock::monotonic_ns() - started) / 1000,
        (loaded - started) / 1000,
        invoke.unwrap_or("_start")
    ));
}

/// The record of a trap with wasmvm's `code` (see `wasmvm_abi::channel::trap`) and its
/// message.
fn trapped(code: u32) -> ExitRecord {
    trapped_with(Some(code), String::from(trap::message(code)))
}

/// The record of a trap: `code` if wasmvm has one for it, and `message`.
fn trapped_with(code: Option<u32>, message: String) -> ExitRecord {
    let mut record = ExitRecord::failed(ExitKind::Trapped, message);
    record.trap_code = code;
    record
}

/// Gives the app the network card, if the VMM attached one, and its listening sockets.
fn attach_network(
    wasi: &mut Wasi<KernelPlatform>,
    config: Option<NetConfig>,
    listens: &[Listen],
) -> Result<(), String> {
    let Some((mac, mtu)) = crate::net::info() else {
        return match listens.first() {
            Some(l) => Err(format!(
                "the app listens on {l}, but the VMM attached no network card"
            )),
            None => Ok(()),
        };
    };
    wasi.attach_network(Nic {
        mac,
        config,
        mtu,
        socket_memory: socket_memory(),
    });
    for listen in listens {
        wasi.preopen_listener(*listen).map_err(|e| match e {
            Errno::NOBUFS => format!(
                "listening on {listen}: {e}: the listeners before it took the VM's socket memory (a quarter of its heap): run with a larger --memory"
            ),
            e => format!("listening on {listen}: {e}"),
        })?;
    }
    Ok(())
}

/// Heap the kernel keeps for itself beside the app's linear memory, which takes the rest:
/// an eighth of the heap (at least 8 MiB) for WASI's buffers, tables and files written to
/// packed directories, and the engine's own structures; `engine_code` for code the engine
/// makes while the app runs; and the socket budget when the VM has a network card.
fn kernel_reserve(heap: usize, engine_code: usize) -> usize {
    let sockets = match crate::net::info() {
        Some(_) => socket_memory(),
        None => 0,
    };
    (heap / 8).max(8 << 20) + engine_code + sockets
}

/// The boot's end when the app's linear memory does not fit at its initial size: `needed`
/// bytes asked, `room` what the heap leaves for it beside the kernel's share.
fn no_room_for_memory(needed: usize, room: usize) -> ExitRecord {
    ExitRecord::failed(
        ExitKind::BootFailed,
        format!(
            "the app's linear memory needs {:.1} MiB at start, more than the {} MiB this VM's RAM leaves for it: run with a larger --memory",
            needed as f64 / f64::from(1 << 20),
            room >> 20
        ),
    )
}

/// Heap for socket buffers when the VM has a network card: a quarter of it; the rest stays
/// for the engine and the app's linear memory, which allocate infallibly.
fn socket_memory() -> usize {
    let (used, free) = crate::heap::usage();
    (used + free) / 4
}

/// Builds the packed directory trees in the WASI filesystem and preopens them, in order.
fn populate(
    wasi: &mut Wasi<KernelPlatform>,
    preopens: &[Vec<u8>],
    nodes: Vec<FsNode>,
    now: u64,
) -> Result<(), String> {
    let mut roots = Vec::new();
    for (i, guest) in preopens.iter().enumerate() {
        let root = wasi
            .fs()
            .mkdir_all(format!("{i}").as_bytes())
            .map_err(|e| format!("preopen {i}: {e}"))?;
        roots.push((root, guest));
    }
    for node in nodes {
        let shown = || String::from_utf8_lossy(&node.path).into_owned();
        let &(root, _) = roots
            .get(node.preopen as usize)
            .ok_or_else(|| format!("packed file {} names a missing preopen", shown()))?;
        let fs = wasi.fs();
        let parent = fs
            .parent(root, &node.path)
            .map_err(|e| format!("packed file {}: {e}", shown()))?;
        let (dir, name) = (parent.dir, parent.name.to_vec());
        let kind = match node.kind {
            FsNodeKind::Dir => Kind::Dir(Default::default(), 0),
            FsNodeKind::File => Kind::File(node.contents),
            FsNodeKind::Symlink => Kind::Symlink(node.contents),
        };
        fs.create(dir, &name, kind, now)
            .map_err(|e| format!("packed file {}: {e}", shown()))?;
    }
    for (root, guest) in roots {
        wasi.preopen(root, guest);
    }
    Ok(())
}

/// Preopens the live host directories, each over its 9P device.
fn preopen_shares(wasi: &mut Wasi<KernelPlatform>, shares: &[Share]) -> Result<(), String> {
    for (i, share) in shares.iter().enumerate() {
        let shown = || String::from_utf8_lossy(&share.guest_path).into_owned();
        if !crate::p9::present(i) {
            return Err(format!(
                "live directory {}: the VMM offers no 9P device tagged {}",
                shown(),
                wasmvm_abi::bundle::share_tag(i)
            ));
        }
        wasi.preopen_share(&share.guest_path, i as u32)
            .map_err(|e| format!("live directory {}: attaching failed: {e}", shown()))?;
    }
    Ok(())
}
