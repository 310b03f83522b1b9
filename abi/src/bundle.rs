//! The app bundle inside an image, and the run-time configuration a host hands to the guest.
//!
//! An image is the kernel ELF with one extra `PT_LOAD` segment, the *bundle*, loaded at
//! [`bundle_load_addr`] (right after the kernel's last loaded byte, page aligned), so every
//! PVH loader (QEMU, Firecracker, Cloud Hypervisor, our VMM) places it in guest memory
//! without knowing anything about it. Layout of the bundle:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `WASMVMB\0` |
//! | 8 | 4 | [`ABI_VERSION`](crate::ABI_VERSION) |
//! | 12 | 4 | header length (128) |
//! | 16 | 4 | manifest length `M` |
//! | 20 | 4 | [engine](Engine): 0 wasmi (the module is interpreted), 1 wasmtime (a compiled artifact runs) |
//! | 24 | 8 | module length `N` |
//! | 32 | 32 | SHA-256 of the module |
//! | 64 | 8 | artifact offset from the bundle's start: a multiple of 4096 (0: no artifact) |
//! | 72 | 8 | artifact length `A` |
//! | 80 | 32 | SHA-256 of the artifact |
//! | 112 | 16 | reserved, zero |
//! | 128 | M | manifest: [records](crate::Records) |
//! | 128+M | N | the wasm module (kept with an artifact too: host mode, `inspect`, re-packing) |
//! | offset | A | the compiled artifact, page aligned so the guest runs its code in place |
//!
//! The manifest's [`tag::ENGINE_ID`] names the exact engine build and configuration an
//! artifact was compiled for; a kernel runs only an artifact whose id is its own.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

#[cfg(feature = "alloc")]
use crate::net::{Listen, NetConfig};
use crate::{ABI_VERSION, DecodeError, le_u32, le_u64};

pub const BUNDLE_MAGIC: [u8; 8] = *b"WASMVMB\0";
pub const BUNDLE_HEADER_LEN: usize = 128;
/// Alignment of the bundle's load address and file offset, and of a compiled artifact's
/// offset in the bundle: its code runs where it lies.
pub const BUNDLE_ALIGN: u64 = 4096;

/// Which engine runs the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The wasmi interpreter runs the module.
    #[default]
    Wasmi,
    /// wasmtime's runtime runs code Cranelift compiled when the image was packed.
    Wasmtime,
}

impl Engine {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Engine::Wasmi),
            1 => Some(Engine::Wasmtime),
            _ => None,
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Engine::Wasmi => 0,
            Engine::Wasmtime => 1,
        }
    }

    /// Its name on the command line and in `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Wasmi => "wasmi",
            Engine::Wasmtime => "wasmtime",
        }
    }
}

/// Where a compiled artifact lies in the bundle, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactRef {
    /// From the bundle's start; a multiple of [`BUNDLE_ALIGN`].
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// Where the bundle segment is loaded, given the end (exclusive) of the kernel's highest
/// `PT_LOAD` segment in memory. The packer writes the segment there and the kernel looks there.
pub const fn bundle_load_addr(kernel_end: u64) -> u64 {
    crate::align_up(kernel_end, BUNDLE_ALIGN)
}

/// The fixed-size header at the start of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleHeader {
    pub manifest_len: u32,
    pub engine: Engine,
    pub module_len: u64,
    pub module_sha256: [u8; 32],
    /// The compiled artifact, for [`Engine::Wasmtime`].
    pub artifact: Option<ArtifactRef>,
}

impl BundleHeader {
    /// Validates the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < BUNDLE_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if bytes[..8] != BUNDLE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = le_u32(bytes, 8)?;
        if version != ABI_VERSION {
            return Err(DecodeError::VersionMismatch { found: version });
        }
        if le_u32(bytes, 12)? as usize != BUNDLE_HEADER_LEN {
            return Err(DecodeError::Malformed("bundle header length"));
        }
        let engine =
            Engine::from_u32(le_u32(bytes, 20)?).ok_or(DecodeError::Malformed("bundle engine"))?;
        let sha = |at: usize| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[at..at + 32]);
            out
        };
        let manifest_len = le_u32(bytes, 16)?;
        let module_len = le_u64(bytes, 24)?;
        let (artifact_offset, artifact_len) = (le_u64(bytes, 64)?, le_u64(bytes, 72)?);
        let artifact = match (engine, artifact_offset, artifact_len) {
            (Engine::Wasmi, 0, 0) => None,
            (Engine::Wasmi, _, _) => {
                return Err(DecodeError::Malformed("an artifact in a wasmi bundle"));
            }
            (Engine::Wasmtime, offset, len) => {
                // The artifact follows the module, page aligned, and its end is computable.
                let module_end = (BUNDLE_HEADER_LEN as u64)
                    .checked_add(manifest_len as u64)
                    .and_then(|n| n.checked_add(module_len))
                    .ok_or(DecodeError::Malformed("module length"))?;
                if len == 0
                    || offset < module_end
                    || !offset.is_multiple_of(BUNDLE_ALIGN)
                    || offset.checked_add(len).is_none()
                {
                    return Err(DecodeError::Malformed("artifact placement"));
                }
                Some(ArtifactRef {
                    offset,
                    len,
                    sha256: sha(80),
                })
            }
        };
        if bytes[112..128].iter().any(|&b| b != 0) {
            return Err(DecodeError::Malformed("reserved bundle header bytes"));
        }
        Ok(BundleHeader {
            manifest_len,
            engine,
            module_len,
            module_sha256: sha(32),
            artifact,
        })
    }

    /// Total bundle length: header, manifest, module and artifact. Saturates instead of
    /// wrapping (a decoded header's fields are checked; a hand-made one may not be).
    pub fn total_len(&self) -> u64 {
        let module_end = (BUNDLE_HEADER_LEN as u64)
            .saturating_add(self.manifest_len as u64)
            .saturating_add(self.module_len);
        match self.artifact {
            Some(a) => module_end.max(a.offset.saturating_add(a.len)),
            None => module_end,
        }
    }

    /// Where an artifact of a bundle with this manifest and module starts: the first page
    /// boundary after the module.
    pub fn artifact_offset(manifest_len: u32, module_len: u64) -> u64 {
        crate::align_up(
            BUNDLE_HEADER_LEN as u64 + manifest_len as u64 + module_len,
            BUNDLE_ALIGN,
        )
    }

    pub fn encode(&self) -> [u8; BUNDLE_HEADER_LEN] {
        let mut b = [0u8; BUNDLE_HEADER_LEN];
        b[..8].copy_from_slice(&BUNDLE_MAGIC);
        b[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BUNDLE_HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.engine.to_u32().to_le_bytes());
        b[24..32].copy_from_slice(&self.module_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.module_sha256);
        if let Some(a) = self.artifact {
            b[64..72].copy_from_slice(&a.offset.to_le_bytes());
            b[72..80].copy_from_slice(&a.len.to_le_bytes());
            b[80..112].copy_from_slice(&a.sha256);
        }
        b
    }
}

/// A whole bundle, borrowed: the validated header with its manifest, module and artifact
/// bytes.
#[derive(Debug, Clone, Copy)]
pub struct BundleRef<'a> {
    pub header: BundleHeader,
    pub manifest: &'a [u8],
    pub module: &'a [u8],
    /// The compiled artifact, for [`Engine::Wasmtime`].
    pub artifact: Option<&'a [u8]>,
}

impl<'a> BundleRef<'a> {
    /// Splits `bytes` (which may extend past the bundle) into header, manifest and module.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let header = BundleHeader::decode(bytes)?;
        let manifest_end = BUNDLE_HEADER_LEN
            .checked_add(header.manifest_len as usize)
            .ok_or(DecodeError::Malformed("manifest length"))?;
        let module_end = usize::try_from(header.module_len)
            .ok()
            .and_then(|n| manifest_end.checked_add(n))
            .ok_or(DecodeError::Malformed("module length"))?;
        if bytes.len() < module_end {
            return Err(DecodeError::Truncated);
        }
        let artifact = match header.artifact {
            None => None,
            Some(a) => {
                // Placement was checked by the header; only the length against `bytes` here.
                let start = usize::try_from(a.offset).map_err(|_| DecodeError::Truncated)?;
                let end = usize::try_from(a.offset + a.len).map_err(|_| DecodeError::Truncated)?;
                Some(bytes.get(start..end).ok_or(DecodeError::Truncated)?)
            }
        };
        Ok(BundleRef {
            header,
            manifest: &bytes[BUNDLE_HEADER_LEN..manifest_end],
            module: &bytes[manifest_end..module_end],
            artifact,
        })
    }
}

/// Record tags of the bundle manifest and of the run configuration.
pub mod tag {
    /// One argument after argv[0], in order (repeatable).
    pub const ARG: u32 = 1;
    /// One environment variable `KEY=VALUE` (repeatable).
    pub const ENV: u32 = 2;
    /// argv[0] as the app sees it.
    pub const ARGV0: u32 = 3;
    /// Bytes of guest RAM the module needs at least (u64), for the host's default `--memory`.
    pub const MIN_MEMORY: u32 = 4;
    /// The module's file name, shown by `inspect` and the default argv[0].
    pub const MODULE_NAME: u32 = 5;
    /// Run configuration only: the ARG records replace the packed arguments (empty value).
    pub const ARGS_REPLACE: u32 = 6;
    /// Run configuration only: wall-clock time at launch, nanoseconds since the Unix epoch (u64).
    pub const REALTIME_NS: u32 = 7;
    /// Run configuration only: 32 bytes of fresh host entropy for the guest's CSPRNG seed.
    pub const RANDOM_SEED: u32 = 8;
    /// A preopened directory: its guest path. Preopens get descriptors 3, 4, ... in order.
    pub const PREOPEN: u32 = 9;
    /// One file, directory or symlink inside a preopen: `u32` preopen index, `u8` kind
    /// ([`FsNodeKind`](super::FsNodeKind)), `u32` path length, the path (relative, `/`
    /// separated, parents before children), then the contents (file data, symlink target).
    pub const FS_NODE: u32 = 10;
    /// Reactor mode: the export to call (after `_initialize`) instead of `_start`.
    pub const INVOKE: u32 = 11;
    /// Link function imports the kernel does not provide as stubs returning zeros (empty).
    pub const STUB_IMPORTS: u32 = 12;
    /// Run configuration only: a live host directory (`wasmvm run --dir`): `u8` flags
    /// ([`SHARE_READ_ONLY`](super::SHARE_READ_ONLY)), then its guest path. The N-th SHARE
    /// record (from 0) is the virtio-9p device with mount tag [`share_tag`](super::share_tag)`(N)`;
    /// shares are preopened after the packed preopens, in order.
    pub const SHARE: u32 = 13;
    /// A listening TCP socket preopened for the app ([`crate::net::Listen`], 6 bytes), in
    /// descriptor order after every directory. In the manifest (`pack --listen`) and in the
    /// run configuration (`run --listen`).
    pub const LISTEN: u32 = 14;
    /// Run configuration: its LISTEN records replace the packed ones (even when none follow).
    pub const LISTEN_REPLACE: u32 = 15;
    /// Run configuration: the guest's static IPv4 settings ([`crate::net::NetConfig`]).
    pub const NET: u32 = 16;
    /// Manifest: the engine build and configuration a compiled artifact is for (bytes).
    pub const ENGINE_ID: u32 = 17;
    /// Run configuration only: the host counts stdin against
    /// [`STDIN_WINDOW`](crate::channel::STDIN_WINDOW) and takes `STDIN_CREDIT` frames
    /// (empty). A kernel sends them only when this says so, so it runs under older hosts.
    pub const STDIN_WINDOW: u32 = 18;
    /// Run configuration only: which of the host's stdin, stdout and stderr are terminals
    /// (one byte: bits 0, 1 and 2). Without it the guest takes all three for terminals, as
    /// kernels did before the host said.
    pub const STDIO_TERMINALS: u32 = 19;
}

/// [`tag::SHARE`] flag: the host refuses every change.
pub const SHARE_READ_ONLY: u8 = 1;

/// The virtio-9p mount tag of the `index`-th share: `wasmvm0`, `wasmvm1`, ...
#[cfg(feature = "alloc")]
pub fn share_tag(index: usize) -> alloc::string::String {
    alloc::format!("wasmvm{index}")
}

/// A live host directory as the guest sees it.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub guest_path: Vec<u8>,
    pub read_only: bool,
}

/// What an [`FsNode`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsNodeKind {
    Dir = 0,
    File = 1,
    Symlink = 2,
}

/// One entry of a packed directory tree.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsNode {
    pub preopen: u32,
    pub kind: FsNodeKind,
    pub path: Vec<u8>,
    pub contents: Vec<u8>,
}

#[cfg(feature = "alloc")]
impl FsNode {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + self.path.len() + self.contents.len());
        v.extend_from_slice(&self.preopen.to_le_bytes());
        v.push(self.kind as u8);
        v.extend_from_slice(&(self.path.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.path);
        v.extend_from_slice(&self.contents);
        v
    }

    fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let preopen = le_u32(b, 0)?;
        let kind = match b.get(4) {
            Some(0) => FsNodeKind::Dir,
            Some(1) => FsNodeKind::File,
            Some(2) => FsNodeKind::Symlink,
            Some(_) => return Err(DecodeError::Malformed("file system node kind")),
            None => return Err(DecodeError::Truncated),
        };
        let len = le_u32(b, 5)? as usize;
        let path = b.get(9..9 + len).ok_or(DecodeError::Truncated)?.to_vec();
        Ok(FsNode {
            preopen,
            kind,
            path,
            contents: b[9 + len..].to_vec(),
        })
    }
}

/// Packed configuration of the app, stored in the bundle manifest.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub module_name: Vec<u8>,
    pub argv0: Option<Vec<u8>>,
    pub args: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries, in order.
    pub env: Vec<Vec<u8>>,
    pub min_memory: u64,
    /// Guest paths of the preopened directories, in descriptor order.
    pub preopens: Vec<Vec<u8>>,
    /// Their contents.
    pub fs_nodes: Vec<FsNode>,
    /// Reactor mode: call `_initialize` (if exported), then this export; an i32 result is
    /// the exit status.
    pub invoke: Option<Vec<u8>>,
    /// Link unknown function imports as stubs that return zero values.
    pub stub_imports: bool,
    /// Listening sockets preopened after the directories.
    pub listens: Vec<Listen>,
    /// With a compiled artifact: the engine build and configuration it was compiled for
    /// (`wasmvm_engine::compiled::ENGINE_ID`).
    pub engine_id: Option<Vec<u8>>,
}

#[cfg(feature = "alloc")]
impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        use crate::records::push_record;
        let mut out = Vec::new();
        push_record(&mut out, tag::MODULE_NAME, &self.module_name);
        if let Some(argv0) = &self.argv0 {
            push_record(&mut out, tag::ARGV0, argv0);
        }
        for arg in &self.args {
            push_record(&mut out, tag::ARG, arg);
        }
        for var in &self.env {
            push_record(&mut out, tag::ENV, var);
        }
        push_record(&mut out, tag::MIN_MEMORY, &self.min_memory.to_le_bytes());
        for p in &self.preopens {
            push_record(&mut out, tag::PREOPEN, p);
        }
        for n in &self.fs_nodes {
            push_record(&mut out, tag::FS_NODE, &n.encode());
        }
        if let Some(export) = &self.invoke {
            push_record(&mut out, tag::INVOKE, export);
        }
        if self.stub_imports {
            push_record(&mut out, tag::STUB_IMPORTS, &[]);
        }
        for listen in &self.listens {
            push_record(&mut out, tag::LISTEN, &listen.encode());
        }
        if let Some(id) = &self.engine_id {
            push_record(&mut out, tag::ENGINE_ID, id);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut m = Manifest::default();
        for record in crate::Records::new(bytes) {
            let record = record?;
            match record.tag {
                tag::MODULE_NAME => m.module_name = record.value.to_vec(),
                tag::ARGV0 => m.argv0 = Some(record.value.to_vec()),
                tag::ARG => m.args.push(record.value.to_vec()),
                tag::ENV => m.env.push(record.value.to_vec()),
                tag::MIN_MEMORY => m.min_memory = le_u64(record.value, 0)?,
                tag::PREOPEN => m.preopens.push(record.value.to_vec()),
                tag::FS_NODE => m.fs_nodes.push(FsNode::decode(record.value)?),
                tag::INVOKE => m.invoke = Some(record.value.to_vec()),
                tag::STUB_IMPORTS => m.stub_imports = true,
                tag::LISTEN => m.listens.push(Listen::decode(record.value)?),
                tag::ENGINE_ID => m.engine_id = Some(record.value.to_vec()),
                _ => {}
            }
        }
        Ok(m)
    }
}

/// What the app finally sees: the packed settings with the run-time overrides applied.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// argv, argv[0] included.
    pub args: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries: the packed ones, then those the run configuration set.
    pub env: Vec<Vec<u8>>,
    /// The listening sockets to preopen, in order.
    pub listens: Vec<Listen>,
}

#[cfg(feature = "alloc")]
impl Manifest {
    /// Applies `run`: its argv0, arguments and listening sockets replace the packed ones, and each of its
    /// `KEY=VALUE` entries replaces the packed variable of the same key or is added.
    pub fn settings(&self, run: &RunConfig) -> AppSettings {
        let argv0 = run
            .argv0
            .clone()
            .or_else(|| self.argv0.clone())
            .unwrap_or_else(|| self.module_name.clone());
        let mut args = alloc::vec![argv0];
        args.extend(run.args.clone().unwrap_or_else(|| self.args.clone()));
        let env = with_env(self.env.clone(), run.env.clone());
        let listens = run.listens.clone().unwrap_or_else(|| self.listens.clone());
        AppSettings { args, env, listens }
    }
}

/// The key of a `KEY=VALUE` environment entry.
pub fn env_key(var: &[u8]) -> &[u8] {
    var.split(|&b| b == b'=').next().unwrap_or_default()
}

/// `env` with each of `vars` set in turn: a variable replaces every earlier entry of its key
/// (a later setting wins, as libc's `getenv` would otherwise find the first) and goes after
/// the entries it did not replace. The result keeps `env`'s entries whose key `vars` never
/// sets, in order, then each variable of `vars` that no later one of its key replaces, in
/// order. One pass and a map of keys: setting them one by one, with a pass over the list
/// each, took minutes for an environment of 200,000 variables (`--env-file`).
#[cfg(feature = "alloc")]
pub fn with_env(env: Vec<Vec<u8>>, vars: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    use alloc::collections::BTreeMap;
    // The last variable of each key.
    let mut last = BTreeMap::new();
    for (i, var) in vars.iter().enumerate() {
        last.insert(env_key(var), i);
    }
    let kept_env: Vec<bool> = env
        .iter()
        .map(|old| !last.contains_key(env_key(old)))
        .collect();
    let kept_vars: Vec<bool> = vars
        .iter()
        .enumerate()
        .map(|(i, var)| last.get(env_key(var)) == Some(&i))
        .collect();
    drop(last);
    let keep = |(entry, kept): (Vec<u8>, bool)| kept.then_some(entry);
    env.into_iter()
        .zip(kept_env)
        .filter_map(keep)
        .chain(vars.into_iter().zip(kept_vars).filter_map(keep))
        .collect()
}

pub const RUN_CONFIG_MAGIC: [u8; 8] = *b"WASMVMR\0";

/// Per-run settings the host hands to a booting guest (under QEMU as the PVH module given
/// with `-initrd`): a 16-byte header (magic, [`ABI_VERSION`], records length) and records.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub argv0: Option<Vec<u8>>,
    /// `Some` replaces the packed arguments after argv[0].
    pub args: Option<Vec<Vec<u8>>>,
    /// `KEY=VALUE` entries that override or extend the packed environment.
    pub env: Vec<Vec<u8>>,
    pub realtime_ns: Option<u64>,
    pub random_seed: Option<[u8; 32]>,
    /// Live host directories, in preopen order.
    pub shares: Vec<Share>,
    /// `Some` replaces the packed listening sockets.
    pub listens: Option<Vec<Listen>>,
    /// The guest's static network settings, when the VMM attached a card and knows them.
    pub net: Option<NetConfig>,
    /// The host takes stdin credit ([`tag::STDIN_WINDOW`]).
    pub stdin_window: bool,
    /// Which of the host's stdin, stdout and stderr are terminals (bits 0, 1, 2;
    /// [`tag::STDIO_TERMINALS`]); `None`: the host does not say.
    pub stdio_terminals: Option<u8>,
}

#[cfg(feature = "alloc")]
impl RunConfig {
    pub fn encode(&self) -> Vec<u8> {
        use crate::records::push_record;
        let mut body = Vec::new();
        if let Some(argv0) = &self.argv0 {
            push_record(&mut body, tag::ARGV0, argv0);
        }
        if let Some(args) = &self.args {
            push_record(&mut body, tag::ARGS_REPLACE, &[]);
            for arg in args {
                push_record(&mut body, tag::ARG, arg);
            }
        }
        for var in &self.env {
            push_record(&mut body, tag::ENV, var);
        }
        if let Some(ns) = self.realtime_ns {
            push_record(&mut body, tag::REALTIME_NS, &ns.to_le_bytes());
        }
        if let Some(seed) = &self.random_seed {
            push_record(&mut body, tag::RANDOM_SEED, seed);
        }
        for share in &self.shares {
            let mut value = alloc::vec![u8::from(share.read_only)];
            value.extend_from_slice(&share.guest_path);
            push_record(&mut body, tag::SHARE, &value);
        }
        if let Some(listens) = &self.listens {
            push_record(&mut body, tag::LISTEN_REPLACE, &[]);
            for listen in listens {
                push_record(&mut body, tag::LISTEN, &listen.encode());
            }
        }
        if let Some(net) = &self.net {
            push_record(&mut body, tag::NET, &net.encode());
        }
        if self.stdin_window {
            push_record(&mut body, tag::STDIN_WINDOW, &[]);
        }
        if let Some(terminals) = self.stdio_terminals {
            push_record(&mut body, tag::STDIO_TERMINALS, &[terminals]);
        }
        let mut out = Vec::with_capacity(16 + body.len());
        out.extend_from_slice(&RUN_CONFIG_MAGIC);
        out.extend_from_slice(&ABI_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < 16 {
            return Err(DecodeError::Truncated);
        }
        if bytes[..8] != RUN_CONFIG_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = le_u32(bytes, 8)?;
        if version != ABI_VERSION {
            return Err(DecodeError::VersionMismatch { found: version });
        }
        let len = le_u32(bytes, 12)? as usize;
        let body = bytes.get(16..16 + len).ok_or(DecodeError::Truncated)?;
        let mut c = RunConfig::default();
        for record in crate::Records::new(body) {
            let record = record?;
            match record.tag {
                tag::ARGV0 => c.argv0 = Some(record.value.to_vec()),
                tag::ARGS_REPLACE => c.args = Some(Vec::new()),
                tag::ARG => c
                    .args
                    .get_or_insert_with(Vec::new)
                    .push(record.value.to_vec()),
                tag::ENV => c.env.push(record.value.to_vec()),
                tag::REALTIME_NS => c.realtime_ns = Some(le_u64(record.value, 0)?),
                tag::RANDOM_SEED => {
                    let seed = record
                        .value
                        .try_into()
                        .map_err(|_| DecodeError::Malformed("random seed length"))?;
                    c.random_seed = Some(seed);
                }
                tag::SHARE => {
                    let (&flags, path) = record
                        .value
                        .split_first()
                        .ok_or(DecodeError::Malformed("share record"))?;
                    c.shares.push(Share {
                        guest_path: path.to_vec(),
                        read_only: flags & SHARE_READ_ONLY != 0,
                    });
                }
                tag::LISTEN_REPLACE => c.listens = Some(Vec::new()),
                tag::LISTEN => c
                    .listens
                    .get_or_insert_with(Vec::new)
                    .push(Listen::decode(record.value)?),
                tag::NET => c.net = Some(NetConfig::decode(record.value)?),
                tag::STDIN_WINDOW => c.stdin_window = true,
                tag::STDIO_TERMINALS => match record.value {
                    [mask] => c.stdio_terminals = Some(*mask),
                    _ => return Err(DecodeError::Malformed("stdio terminals record")),
                },
                _ => {}
            }
        }
        Ok(c)
    }
}

/// The ELF note the kernel carries so hosts can read its versions without booting it.
pub mod kernel_note {
    /// Note owner name.
    pub const NAME: &[u8] = b"wasmvm";
    /// Note type whose descriptor is the kernel's [`ABI_VERSION`](crate::ABI_VERSION) (u32).
    pub const TYPE_ABI_VERSION: u32 = 1;
    /// Note type whose descriptor is the kernel's version string (UTF-8, NUL padded).
    pub const TYPE_KERNEL_VERSION: u32 = 2;
    /// Note type whose descriptor is the address of the kernel's 64-bit CPL-3 entry (u64);
    /// see [`crate::direct`].
    pub const TYPE_DIRECT_ENTRY: u32 = 3;
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn bundle_round_trip() {
        let manifest = Manifest {
            module_name: b"hello.wasm".to_vec(),
            argv0: None,
            args: vec![b"a".to_vec(), b"".to_vec()],
            env: vec![b"K=V".to_vec()],
            min_memory: 1 << 20,
            preopens: vec![b"/".to_vec()],
            fs_nodes: vec![
                FsNode {
                    preopen: 0,
                    kind: FsNodeKind::Dir,
                    path: b"d".to_vec(),
                    contents: vec![],
                },
                FsNode {
                    preopen: 0,
                    kind: FsNodeKind::File,
                    path: b"d/f".to_vec(),
                    contents: b"data".to_vec(),
                },
            ],
            invoke: Some(b"run".to_vec()),
            stub_imports: true,
            listens: vec![Listen::parse("8080").unwrap()],
            engine_id: Some(b"wasmtime 48.0.11, wasmvm settings 1".to_vec()),
        };
        let m = manifest.encode();
        let module = b"\0asm\x01\0\0\0";
        let header = BundleHeader {
            manifest_len: m.len() as u32,
            engine: Engine::Wasmi,
            module_len: module.len() as u64,
            module_sha256: [7; 32],
            artifact: None,
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&m);
        bytes.extend_from_slice(module);
        let b = BundleRef::decode(&bytes).unwrap();
        assert_eq!(b.header, header);
        assert_eq!(b.module, module);
        assert_eq!(Manifest::decode(b.manifest).unwrap(), manifest);
        assert_eq!(
            BundleRef::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            DecodeError::Truncated
        );
        bytes[8] = 99;
        assert_eq!(
            BundleRef::decode(&bytes).unwrap_err(),
            DecodeError::VersionMismatch { found: 99 }
        );
    }

    #[test]
    fn a_compiled_artifact_lies_page_aligned_after_the_module() {
        let manifest = Manifest {
            engine_id: Some(b"wasmtime 48.0.11".to_vec()),
            ..Manifest::default()
        }
        .encode();
        let module = b"\0asm\x01\0\0\0";
        let offset = BundleHeader::artifact_offset(manifest.len() as u32, module.len() as u64);
        assert_eq!(offset, 4096);
        let artifact = [0xc3u8; 100];
        let header = BundleHeader {
            manifest_len: manifest.len() as u32,
            engine: Engine::Wasmtime,
            module_len: module.len() as u64,
            module_sha256: [1; 32],
            artifact: Some(ArtifactRef {
                offset,
                len: artifact.len() as u64,
                sha256: [2; 32],
            }),
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&manifest);
        bytes.extend_from_slice(module);
        bytes.resize(offset as usize, 0);
        bytes.extend_from_slice(&artifact);
        assert_eq!(header.total_len(), bytes.len() as u64);
        let b = BundleRef::decode(&bytes).unwrap();
        assert_eq!(b.header, header);
        assert_eq!(b.artifact, Some(&artifact[..]));
        assert_eq!(
            Manifest::decode(b.manifest).unwrap().engine_id.as_deref(),
            Some(&b"wasmtime 48.0.11"[..])
        );
        // Cut short: truncated, never an out-of-bounds slice.
        assert_eq!(
            BundleRef::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            DecodeError::Truncated
        );
        // Misplaced artifacts and unknown engines are refused by the header.
        let mut bad = bytes.clone();
        bad[64..72].copy_from_slice(&4097u64.to_le_bytes());
        assert!(BundleHeader::decode(&bad).is_err());
        let mut bad = bytes.clone();
        bad[64..72].copy_from_slice(&0u64.to_le_bytes());
        assert!(BundleHeader::decode(&bad).is_err(), "overlaps the module");
        let mut bad = bytes.clone();
        bad[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(BundleHeader::decode(&bad).is_err(), "wraps");
        let mut bad = bytes.clone();
        bad[20] = 9;
        assert!(BundleHeader::decode(&bad).is_err());
        let mut bad = bytes;
        bad[20] = 0;
        assert!(
            BundleHeader::decode(&bad).is_err(),
            "an artifact in a wasmi bundle"
        );
    }

    #[test]
    fn run_time_settings_override_packed_ones() {
        let m = Manifest {
            module_name: b"app.wasm".to_vec(),
            args: vec![b"packed".to_vec()],
            env: vec![b"A=1".to_vec(), b"B=2".to_vec()],
            ..Default::default()
        };
        let s = m.settings(&RunConfig::default());
        assert_eq!(s.args, [b"app.wasm".to_vec(), b"packed".to_vec()]);
        let run = RunConfig {
            argv0: Some(b"x".to_vec()),
            args: Some(vec![]),
            env: vec![b"A=9".to_vec(), b"C=3".to_vec()],
            ..Default::default()
        };
        let s = m.settings(&run);
        assert_eq!(s.args, [b"x".to_vec()]);
        assert_eq!(s.env, [b"B=2".to_vec(), b"A=9".to_vec(), b"C=3".to_vec()]);
        // Run-time listeners replace the packed ones, even with an empty list.
        let packed = Manifest {
            listens: vec![Listen::parse("80").unwrap()],
            ..Default::default()
        };
        assert_eq!(packed.settings(&RunConfig::default()).listens.len(), 1);
        let run = RunConfig {
            listens: Some(vec![]),
            ..Default::default()
        };
        let encoded = RunConfig::decode(&run.encode()).unwrap();
        assert!(packed.settings(&encoded).listens.is_empty());
    }

    #[test]
    fn run_config_round_trip() {
        let c = RunConfig {
            argv0: Some(b"x".to_vec()),
            args: Some(vec![]),
            env: vec![b"A=1".to_vec()],
            realtime_ns: Some(5),
            random_seed: Some([3; 32]),
            shares: vec![
                Share {
                    guest_path: b"/data".to_vec(),
                    read_only: false,
                },
                Share {
                    guest_path: b"/ro".to_vec(),
                    read_only: true,
                },
            ],
            listens: Some(vec![Listen::parse("10.0.2.15:80").unwrap()]),
            net: Some(NetConfig::user(1500)),
            stdin_window: true,
            stdio_terminals: Some(0b101),
        };
        assert_eq!(RunConfig::decode(&c.encode()).unwrap(), c);
        assert_eq!(share_tag(1), "wasmvm1");
        let none = RunConfig::default();
        assert_eq!(RunConfig::decode(&none.encode()).unwrap().args, None);
        assert_eq!(
            RunConfig::decode(b"short").unwrap_err(),
            DecodeError::Truncated
        );
    }

    #[test]
    fn load_address_is_page_aligned() {
        assert_eq!(bundle_load_addr(0x10_0001), 0x10_1000);
        assert_eq!(bundle_load_addr(0x10_1000), 0x10_1000);
    }

    #[test]
    fn with_env_sets_variables_as_one_by_one_does() {
        // The reference: each variable set in turn, with a pass over the list each.
        fn one_by_one(mut env: Vec<Vec<u8>>, vars: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
            for var in vars {
                env.retain(|old| env_key(old) != env_key(&var));
                env.push(var);
            }
            env
        }
        // Every list of up to three entries over three keys (two values each, and a
        // bare key), on each side: duplicate keys in either list, keys on both sides.
        let entries: [&[u8]; 7] = [b"A=1", b"A=2", b"B=1", b"B=2", b"C=1", b"C", b"=x"];
        let mut lists = vec![Vec::new()];
        for len in 1..=3u32 {
            for n in 0..entries.len().pow(len) {
                let mut list = Vec::new();
                let mut n = n;
                for _ in 0..len {
                    list.push(entries[n % entries.len()].to_vec());
                    n /= entries.len();
                }
                lists.push(list);
            }
        }
        let mut checked = 0;
        for env in &lists {
            for vars in &lists {
                let want = one_by_one(env.clone(), vars.clone());
                assert_eq!(
                    with_env(env.clone(), vars.clone()),
                    want,
                    "{env:?} + {vars:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100_000);
    }
}
