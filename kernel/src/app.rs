//! Runs the app: decodes the bundle, merges the run configuration, links WASI into wasmi and
//! calls `_start` (or a reactor's export), and turns however that ends into an
//! [`ExitRecord`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wasmi::{Engine, Error, Linker, Module, Store};
use wasmvm_abi::bundle::{BundleRef, FsNode, FsNodeKind, Manifest, RunConfig, Share};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
use wasmvm_abi::net::{Listen, NetConfig};
use wasmvm_wasi::fs::Kind;
use wasmvm_wasi::{Nic, Wasi, link};

use crate::platform::KernelPlatform;

/// Everything the app needs to start, merged from the bundle and the run configuration.
pub struct Launch {
    pub module: &'static [u8],
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
}

impl Launch {
    pub fn new(bundle: BundleRef<'static>, run: Option<RunConfig>) -> Result<Self, String> {
        let manifest =
            Manifest::decode(bundle.manifest).map_err(|e| format!("bundle manifest: {e}"))?;
        let run = run.unwrap_or_default();
        let settings = manifest.settings(&run);
        Ok(Launch {
            module: bundle.module,
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
        })
    }
}

/// Runs the app to completion.
pub fn run(launch: Launch) -> ExitRecord {
    let started = crate::clock::monotonic_ns();
    // Function bodies are validated and translated on first call: `pack` validated the
    // whole module eagerly and the bundle checksum pins those bytes, so the boot does not
    // pay for it again (a hello's 80 KB module: 0.4 ms instead of 2 ms here).
    let mut config = wasmvm_engine::engine_config();
    config.compilation_mode(wasmi::CompilationMode::Lazy);
    let engine = Engine::new(&config);
    let module = match Module::new(&engine, launch.module) {
        Ok(m) => m,
        Err(e) => return ExitRecord::failed(ExitKind::BootFailed, format!("invalid module: {e}")),
    };
    let compiled = crate::clock::monotonic_ns();
    let platform = KernelPlatform::new(launch.seed);
    let mut wasi = Wasi::new(platform, launch.args, launch.env);
    if let Err(e) = populate(&mut wasi, &launch.preopens, launch.fs_nodes, launch.now_ns) {
        return ExitRecord::failed(ExitKind::BootFailed, e);
    }
    if let Err(e) = preopen_shares(&mut wasi, &launch.shares) {
        return ExitRecord::failed(ExitKind::BootFailed, e);
    }
    if let Err(e) = attach_network(&mut wasi, launch.net, &launch.listens) {
        return ExitRecord::failed(ExitKind::BootFailed, e);
    }
    let mut store = Store::new(&engine, wasi);
    let mut linker = Linker::new(&engine);
    let linked = link::add_to_linker(&mut linker, &module).and_then(|()| {
        if launch.stub_imports {
            wasmvm_engine::add_stubs(&mut linker, &module)
        } else {
            Ok(())
        }
    });
    if let Err(e) = linked {
        return ExitRecord::failed(ExitKind::BootFailed, format!("linking WASI: {e}"));
    }
    let instance = match linker.instantiate_and_start(&mut store, &module) {
        Ok(i) => i,
        Err(e) => return outcome(e),
    };
    crate::channel::log(&format!(
        "kernel: module compiled and instantiated in {} us (parsed in {} us); calling {}",
        (crate::clock::monotonic_ns() - started) / 1000,
        (compiled - started) / 1000,
        launch.invoke.as_deref().unwrap_or("_start")
    ));
    let record = match wasmvm_engine::call_entry(&mut store, &instance, launch.invoke.as_deref()) {
        Ok(status) => ExitRecord::exited(status.unwrap_or(0)),
        Err(e) => outcome(e),
    };
    store.data_mut().finish_network(LINGER_NS);
    record
}

/// How long the VM outlives an app whose last sent bytes are not yet acknowledged.
const LINGER_NS: u64 = 2_000_000_000;

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
    wasi.attach_network(Nic { mac, config, mtu });
    for listen in listens {
        wasi.preopen_listener(*listen)
            .map_err(|e| format!("listening on {listen}: errno {}", e.0))?;
    }
    Ok(())
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
            .map_err(|e| format!("preopen {i}: errno {}", e.0))?;
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
            .map_err(|e| format!("packed file {}: errno {}", shown(), e.0))?;
        let (dir, name) = (parent.dir, parent.name.to_vec());
        let kind = match node.kind {
            FsNodeKind::Dir => Kind::Dir(Default::default(), 0),
            FsNodeKind::File => Kind::File(node.contents),
            FsNodeKind::Symlink => Kind::Symlink(node.contents),
        };
        fs.create(dir, &name, kind, now)
            .map_err(|e| format!("packed file {}: errno {}", shown(), e.0))?;
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
            .map_err(|e| {
                format!(
                    "live directory {}: attaching failed: errno {}",
                    shown(),
                    e.0
                )
            })?;
    }
    Ok(())
}

/// Classifies how a call into the module failed.
fn outcome(e: Error) -> ExitRecord {
    if let Some(status) = e.i32_exit_status() {
        return ExitRecord::exited(status);
    }
    let (code, message) = match e.as_trap_code() {
        Some(code) => {
            let ours = u8::from(code) as u32;
            (ours, String::from(trap::message(ours)))
        }
        None => (trap::HOST_ERROR, format!("{e}")),
    };
    let mut record = ExitRecord::failed(ExitKind::Trapped, message);
    record.trap_code = Some(code);
    record
}
