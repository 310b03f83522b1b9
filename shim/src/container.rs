//! One container: its process (a launcher that becomes `wasmvm run`), its cgroup, its
//! mounted root file system, and its state as containerd sees it.

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io::{PipeWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};

use cgroups_rs::fs::{Cgroup, hierarchies};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use oci_spec::runtime::Spec;

use crate::launcher;
use crate::options::Settings;
use crate::spawner;
use crate::spec::{App, Network, Plan, Role};
use crate::sys::{self, Confinement, NetworkNamespace};

/// What containerd sends at create, less what the shim reads itself.
pub struct Request {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub settings: Settings,
}

pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Created,
    Running,
    Stopped { code: u32, at: Timestamp },
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: [String; 3],
    pub pid: u32,
    status: Mutex<Status>,
    changed: Condvar,
    /// The launcher's start pipe; `None` once started.
    start: Mutex<Option<PipeWriter>>,
    cgroup: Option<Cgroup>,
    /// The root file system the shim mounted (unmounted at delete).
    mounted_rootfs: Option<PathBuf>,
}

/// Why a container could not be created at all (as opposed to a refusal, which the
/// container itself reports when started).
#[derive(Debug)]
pub struct CreateError(pub String);

impl Container {
    /// Mounts the root file system, makes the cgroup and forks the launcher; the process
    /// waits for [`Container::start`]. `on_exit` is told the exit status once it is known
    /// (from the shim's reaper, via `spawner`).
    pub fn create(
        req: Request,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> Result<Container, CreateError> {
        let spec = Spec::load(req.bundle.join("config.json")).map_err(|e| {
            CreateError(format!(
                "cannot read {}: {e}",
                req.bundle.join("config.json").display()
            ))
        })?;
        let plan = Plan::from_spec(&spec);
        let rootfs = rootfs_dir(&req.bundle, &spec);
        let mounted_rootfs = mount_rootfs(&req.rootfs, &rootfs)?;
        // Everything after the mount undoes it on failure.
        let unmount = |e: CreateError| {
            if let Some(dir) = &mounted_rootfs {
                unmount_rootfs(dir);
            }
            e
        };
        let cgroup = match &plan.cgroups_path {
            Some(path) => Some(make_cgroup(path, &spec).map_err(unmount)?),
            None => None,
        };
        let cleanup = |e: CreateError| {
            if let Some(cg) = &cgroup {
                let _ = cg.delete();
            }
            unmount(e)
        };
        let args = launcher_args(&plan, &rootfs, &req.settings);
        let (stdin, stdout, stderr) = stdio(&req).map_err(cleanup)?;
        let netns = match &plan.network {
            Network::Join(path) => Some(File::open(path).map_err(|e| {
                cleanup(CreateError(format!(
                    "cannot open the network namespace {}: {e}",
                    path.display()
                )))
            })?),
            _ => None,
        };
        let cgroup_procs = cgroup.as_ref().map(procs_files).unwrap_or_default();
        if cgroup.is_some() && cgroup_procs.is_empty() {
            return Err(cleanup(CreateError(format!(
                "cannot put the container in its cgroup {}: no cgroup hierarchy is mounted at /sys/fs/cgroup",
                plan.cgroups_path.as_deref().unwrap_or_default()
            ))));
        }
        let (start_reader, start_writer) =
            std::io::pipe().map_err(|e| cleanup(CreateError(format!("pipe: {e}"))))?;

        let exe = std::env::current_exe()
            .map_err(|e| cleanup(CreateError(format!("cannot find the shim binary: {e}"))))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .current_dir(&req.bundle);
        use std::os::fd::AsRawFd;
        sys::confine(
            &mut cmd,
            Confinement {
                cgroup_procs,
                network: match (&plan.network, &netns) {
                    (Network::Join(_), Some(f)) => NetworkNamespace::Join(f.as_raw_fd()),
                    (Network::None, _) => NetworkNamespace::New,
                    _ => NetworkNamespace::Inherit,
                },
                start: start_reader.as_raw_fd(),
            },
        );
        let pid = spawner::spawn(cmd, on_exit).map_err(|e| {
            cleanup(CreateError(format!(
                "cannot start the container's process: {e}"
            )))
        })?;
        drop(start_reader);
        drop(netns);
        Ok(Container {
            id: req.id,
            bundle: req.bundle,
            stdio: [req.stdin, req.stdout, req.stderr],
            pid,
            status: Mutex::new(Status::Created),
            changed: Condvar::new(),
            start: Mutex::new(Some(start_writer)),
            cgroup,
            mounted_rootfs,
        })
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    /// Lets the launcher go on. Fails if it already ended or was started.
    pub fn start(&self) -> Result<(), String> {
        let mut status = self.status.lock().unwrap();
        if *status != Status::Created {
            return Err(format!("container {} is not in the created state", self.id));
        }
        let mut start = self.start.lock().unwrap();
        let Some(mut pipe) = start.take() else {
            return Err(format!("container {} was already started", self.id));
        };
        pipe.write_all(&[1])
            .map_err(|e| format!("cannot start container {}: {e}", self.id))?;
        *status = Status::Running;
        Ok(())
    }

    /// Records the exit the reaper saw.
    pub fn exited(&self, code: u32) {
        let at = containerd_shim::util::timestamp().unwrap_or_default();
        *self.status.lock().unwrap() = Status::Stopped { code, at };
        self.start.lock().unwrap().take();
        self.changed.notify_all();
    }

    /// Blocks until the process has exited; returns its status and time.
    pub fn wait(&self) -> (u32, Timestamp) {
        let mut status = self.status.lock().unwrap();
        loop {
            if let Status::Stopped { code, at } = &*status {
                return (*code, at.clone());
            }
            status = self.changed.wait(status).unwrap();
        }
    }

    /// Sends `signal` to the container's process, unless it has already exited.
    pub fn kill(&self, signal: u32) -> Result<(), String> {
        // The pid is only reused after the reaper collected it, and the exit is recorded
        // (under this lock) a thread hop after that: the window for signalling a stranger
        // is that hop.
        let status = self.status.lock().unwrap();
        if matches!(*status, Status::Stopped { .. }) {
            return Err(format!("process already finished: container {}", self.id));
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| format!("{signal} is not a signal"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig)
            .map_err(|e| format!("cannot signal container {}: {e}", self.id))
    }

    /// Every process of the container: the VMM and passt, when it has a cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = match &self.cgroup {
            Some(cg) => cg.procs().iter().map(|p| p.pid as u32).collect(),
            None => Vec::new(),
        };
        if pids.is_empty() && !matches!(self.status(), Status::Stopped { .. }) {
            pids.push(self.pid);
        }
        pids
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Removes what the container left on the host; the process must have exited.
    pub fn remove(&self) {
        if let Some(cg) = &self.cgroup {
            // Stragglers (passt outliving its VMM) go first: a cgroup with processes
            // cannot be removed.
            let _ = cg.kill();
            if let Err(e) = cg.delete() {
                log::warn!("cannot remove the cgroup of {}: {e}", self.id);
            }
        }
        if let Some(dir) = &self.mounted_rootfs {
            unmount_rootfs(dir);
        }
        // A stdin relay still waiting for containerd to open the FIFO is released.
        if !self.stdio[0].is_empty() {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.stdio[0]);
        }
    }
}

/// The container's root: `root.path` of the spec, relative to the bundle.
fn rootfs_dir(bundle: &Path, spec: &Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    bundle.join(root)
}

fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<Option<PathBuf>, CreateError> {
    if mounts.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(target)
        .map_err(|e| CreateError(format!("cannot create {}: {e}", target.display())))?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) =
            containerd_shim::mount::mount_rootfs(Some(&m.kind), Some(&m.source), &m.options, target)
        {
            if i > 0 {
                unmount_rootfs(target);
            }
            return Err(CreateError(format!(
                "cannot mount the root file system ({} {}): {e}",
                m.kind, m.source
            )));
        }
    }
    Ok(Some(target.to_path_buf()))
}

fn unmount_rootfs(dir: &Path) {
    if let Err(e) = containerd_shim::mount::umount_recursive(dir.to_str(), libc::MNT_DETACH) {
        log::warn!("cannot unmount {}: {e}", dir.display());
    }
}

/// The cgroup at `path` (cgroupfs layout, on v1 or v2) with the spec's limits.
fn make_cgroup(path: &str, spec: &Spec) -> Result<Cgroup, CreateError> {
    if path.contains(':') {
        return Err(CreateError(format!(
            "the cgroup path `{path}` is in systemd's slice:prefix:name form, which the wasmvm shim does not manage: use containerd's cgroupfs driver for this runtime"
        )));
    }
    let cg = Cgroup::new(hierarchies::auto(), path.trim_start_matches('/'))
        .map_err(|e| CreateError(format!("cannot create the cgroup {path}: {e}")))?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if let Some(resources) = resources {
        if let Err(e) = containerd_shim::cgroup::update_resources(&cg, resources) {
            let _ = cg.delete();
            return Err(CreateError(format!(
                "cannot set the limits of the cgroup {path}: {e}"
            )));
        }
    }
    Ok(cg)
}

/// `cgroup.procs` of each hierarchy of `cg`, once each (v1 mounts some controllers
/// together).
fn procs_files(cg: &Cgroup) -> Vec<CString> {
    let mut files: Vec<CString> = Vec::new();
    for sub in cg.subsystems() {
        let file = sub.to_controller().path().join("cgroup.procs");
        let Ok(c) = CString::new(file.into_os_string().into_encoded_bytes()) else {
            continue;
        };
        if !files.contains(&c) {
            files.push(c);
        }
    }
    files
}

/// The launcher's arguments: `wasmvm run ...` for an app, else a refusal or placeholder.
fn launcher_args(plan: &Plan, rootfs: &Path, settings: &Settings) -> Vec<OsString> {
    match &plan.role {
        Role::Placeholder => launcher::placeholder_args(),
        Role::Refused(why) => launcher::refuse_args(why),
        Role::App(app) => match wasmvm_args(app, &plan.network, rootfs, settings) {
            Ok((wasmvm, args)) => launcher::exec_args(&wasmvm, &args),
            Err(why) => launcher::refuse_args(&why),
        },
    }
}

/// `wasmvm` beside the shim, and the arguments that run `app` from `rootfs`.
fn wasmvm_args(
    app: &App,
    network: &Network,
    rootfs: &Path,
    settings: &Settings,
) -> Result<(PathBuf, Vec<OsString>), String> {
    let wasmvm = wasmvm_binary()?;
    let entry = resolve_entry(rootfs, &app.entry)?;
    if settings.verify_key.is_some() && is_wasm_module(&entry) {
        return Err(format!(
            "/{} is a plain .wasm module, which carries no signature, and this runtime requires images signed by {}",
            app.entry.display(),
            settings.verify_key.as_ref().unwrap().display()
        ));
    }
    let mut args: Vec<OsString> = vec!["run".into(), "--argv0".into(), (&app.argv0).into()];
    for var in &app.env {
        // wasmvm refuses variables without `=`, and so does WASI; skip what a runtime
        // would pass through unnoticed.
        if var.contains('=') {
            args.push("--env".into());
            args.push(var.into());
        }
    }
    if let Some(mib) = app.memory_mib {
        args.push("--memory".into());
        args.push(format!("{mib}M").into());
    }
    if let Some(key) = &settings.verify_key {
        args.push("--verify".into());
        args.push(key.into());
    }
    for share in &app.shares {
        args.push(if share.read_only { "--dir-ro" } else { "--dir" }.into());
        let mut spec = share.host.clone().into_os_string();
        spec.push("::");
        spec.push(&share.guest);
        args.push(spec);
    }
    match network {
        Network::None => {
            args.push("--network".into());
            args.push("none".into());
        }
        // The app's listeners on the same ports of the namespace's addresses: a pod's IP
        // (or the host's, with host networking) reaches the app as it would a process.
        Network::Host | Network::Join(_) => args.push("--publish-all".into()),
    }
    args.push(entry.into());
    args.push("--".into());
    args.extend(app.args.iter().map(OsString::from));
    Ok((wasmvm, args))
}

/// `wasmvm` in the shim's own directory: the two are installed together.
fn wasmvm_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the shim binary: {e}"))?;
    let wasmvm = exe.with_file_name("wasmvm");
    if !wasmvm.is_file() {
        return Err(format!(
            "{} is missing: install wasmvm beside containerd-shim-wasmvm-v1",
            wasmvm.display()
        ));
    }
    Ok(wasmvm)
}

/// The entrypoint's file in `rootfs`, refusing anything (a symlink) that leads out of it.
fn resolve_entry(rootfs: &Path, entry: &Path) -> Result<PathBuf, String> {
    let shown = format!("/{}", entry.display());
    let root = rootfs
        .canonicalize()
        .map_err(|e| format!("the container has no root file system: {e}"))?;
    let file = root.join(entry).canonicalize().map_err(|_| {
        format!("the entrypoint {shown} is not in the image: it needs a wasm module or wasmvm image there")
    })?;
    if !file.starts_with(&root) {
        return Err(format!(
            "the entrypoint {shown} leads out of the image (a symlink)"
        ));
    }
    if !file.is_file() {
        return Err(format!("the entrypoint {shown} is not a file"));
    }
    Ok(file)
}

fn is_wasm_module(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\0asm"
}

/// The process's stdin, stdout and stderr from containerd's FIFOs (empty paths: none).
fn stdio(req: &Request) -> Result<(Stdio, Stdio, Stdio), CreateError> {
    let stdin = if req.stdin.is_empty() {
        Stdio::null()
    } else {
        crate::stdio::stdin_relay(Path::new(&req.stdin))
            .map_err(|e| CreateError(format!("cannot open stdin {}: {e}", req.stdin)))?
            .into()
    };
    let out = |path: &str| -> Result<Stdio, CreateError> {
        if path.is_empty() {
            return Ok(Stdio::null());
        }
        crate::stdio::open_output(Path::new(path))
            .map(Stdio::from)
            .map_err(|e| CreateError(format!("cannot open {path}: {e}")))
    };
    Ok((stdin, out(&req.stdout)?, out(&req.stderr)?))
}

/// What a container whose shim died left: its root file system mount and its cgroup (the
/// processes in it are killed first). For containerd's `delete` action.
pub fn remove_leftovers(bundle: &Path, spec: &Spec) {
    let rootfs = rootfs_dir(bundle, spec);
    unmount_rootfs(&rootfs);
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().trim_start_matches('/').to_owned());
    if let Some(path) = path.filter(|p| !p.is_empty() && !p.contains(':')) {
        let cg = Cgroup::load(hierarchies::auto(), path);
        if cg.exists() {
            let _ = cg.kill();
            let _ = cg.delete();
        }
    }
}
