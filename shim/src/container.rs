//! One container: its process (a launcher that becomes `wasmvm run`), its cgroup, its
//! mounted root file system, and its state as containerd sees it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{PipeWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard};

use cgroups_rs::fs::Cgroup;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::options::Settings;
use crate::spawner::{self, ErrorPipe};
use crate::spec::{Network, Plan, Role};
use crate::sys::{self, Confinement, NetworkNamespace};
use crate::{cgroup, command, launcher, stdio};

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

struct State {
    status: Status,
    /// The launcher's start pipe; `None` once started (or abandoned).
    start: Option<PipeWriter>,
    /// The exit event has gone to containerd (delete waits for it, so the event can
    /// never follow the shim's shutdown).
    exit_published: bool,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: [String; 3],
    pub pid: u32,
    state: Mutex<State>,
    changed: Condvar,
    cgroup: Option<Cgroup>,
    /// The root file system the shim mounted (unmounted at delete).
    mounted_rootfs: Option<PathBuf>,
}

/// Why a container could not be created at all (as opposed to a refusal, which the
/// container itself reports when started).
#[derive(Debug)]
pub struct CreateError(pub String);

pub enum KillError {
    /// The process has already exited (containerd expects "not found").
    Finished(String),
    BadSignal(String),
    Failed(String),
}

/// The environment file `wasmvm run --env-file` reads, in the bundle (which only root
/// can read, and containerd removes at delete).
const ENV_FILE: &str = "wasmvm.env";

/// Undoes a failed create step by step: whatever was set up is torn down in reverse.
#[derive(Default)]
struct Undo {
    mounted: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    stdin_fifo: Option<PathBuf>,
}

impl Undo {
    fn fail(self, why: String) -> CreateError {
        if let Some(fifo) = &self.stdin_fifo {
            stdio::release_stdin(fifo);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cgroup::remove(cg);
        }
        if let Some(dir) = &self.mounted {
            unmount_rootfs(dir);
        }
        CreateError(why)
    }
}

impl Container {
    /// Mounts the root file system, makes the cgroup and forks the launcher; the process
    /// waits for [`Container::start`]. `on_exit` is told the exit status once it is known
    /// (from the shim's reaper, via `spawner`).
    pub fn create(
        req: Request,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> Result<Container, CreateError> {
        let config = req.bundle.join("config.json");
        let spec = Spec::load(&config)
            .map_err(|e| CreateError(format!("cannot read {}: {e}", config.display())))?;
        let plan = Plan::from_spec(&spec);
        let mut undo = Undo::default();
        let rootfs = rootfs_dir(&req.bundle, &spec, !req.rootfs.is_empty())?;
        undo.mounted = mount_rootfs(&req.rootfs, &rootfs)?;
        if let Some(path) = &plan.cgroups_path {
            match cgroup::create(path, &spec) {
                Ok(cg) => undo.cgroup = Some(cg),
                Err(e) => return Err(undo.fail(e)),
            }
        }
        let args = match launcher_args(&plan, &rootfs, &req.bundle, &req.settings) {
            Ok(args) => args,
            Err(e) => return Err(undo.fail(e)),
        };
        if !req.stdin.is_empty() {
            undo.stdin_fifo = Some(PathBuf::from(&req.stdin));
        }
        let (stdin, stdout, stderr) = match open_stdio(&req) {
            Ok(s) => s,
            Err(e) => return Err(undo.fail(e)),
        };
        let netns = match &plan.network {
            Network::Join(path) => match File::open(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    return Err(undo.fail(format!(
                        "cannot open the network namespace {}: {e}",
                        path.display()
                    )));
                }
            },
            _ => None,
        };
        let pipes = std::io::pipe().and_then(|start| Ok((start, std::io::pipe()?)));
        let ((start_reader, start_writer), (err_reader, err_writer)) = match pipes {
            Ok(p) => p,
            Err(e) => return Err(undo.fail(format!("pipe: {e}"))),
        };

        // The shim's own binary, by the kernel's link: still there after an upgrade in
        // place replaced the file.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .current_dir(&req.bundle);
        use std::os::fd::AsRawFd;
        sys::confine(
            &mut cmd,
            Confinement {
                cgroup_procs: undo
                    .cgroup
                    .as_ref()
                    .map(cgroup::procs_files)
                    .unwrap_or_default(),
                network: match (&plan.network, &netns) {
                    (Network::Join(_), Some(f)) => NetworkNamespace::Join(f.as_raw_fd()),
                    (Network::None, _) => NetworkNamespace::New,
                    _ => NetworkNamespace::Inherit,
                },
                start: start_reader.as_raw_fd(),
                errors: err_writer.as_raw_fd(),
            },
        );
        let errors = ErrorPipe {
            reader: err_reader,
            writer: err_writer,
        };
        let pid = match spawner::spawn(cmd, errors, on_exit) {
            Ok(pid) => pid,
            Err(e) => {
                return Err(undo.fail(format!("cannot start the container's process: {e}")));
            }
        };
        drop((start_reader, netns));
        Ok(Container {
            id: req.id,
            bundle: req.bundle,
            stdio: [req.stdin, req.stdout, req.stderr],
            pid,
            state: Mutex::new(State {
                status: Status::Created,
                start: Some(start_writer),
                exit_published: false,
            }),
            changed: Condvar::new(),
            cgroup: undo.cgroup.take(),
            mounted_rootfs: undo.mounted.take(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-written: every change is one
        // assignment. Go on with it rather than take the shim down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        self.state().status.clone()
    }

    /// Lets the launcher go on; `started` runs before anything else can happen to the
    /// container (so containerd hears of the start before the exit).
    pub fn start(&self, started: impl FnOnce()) -> Result<(), String> {
        let mut state = self.state();
        if state.status != Status::Created {
            return Err(format!("container {} is not in the created state", self.id));
        }
        let Some(mut pipe) = state.start.take() else {
            return Err(format!("container {} is being deleted", self.id));
        };
        pipe.write_all(&[1])
            .map_err(|e| format!("cannot start container {}: {e}", self.id))?;
        state.status = Status::Running;
        started();
        Ok(())
    }

    /// Ends a container that was never started: its launcher sees its start pipe close
    /// and exits; the kill makes sure. Does nothing once started.
    pub fn abandon(&self) {
        let mut state = self.state();
        if state.status == Status::Created {
            state.start = None;
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// Records the exit the reaper saw.
    pub fn exited(&self, code: u32) {
        let at = containerd_shim::util::timestamp().unwrap_or_default();
        let mut state = self.state();
        state.status = Status::Stopped { code, at };
        state.start = None;
        self.changed.notify_all();
    }

    /// Records that containerd has been told of the exit.
    pub fn exit_published(&self) {
        self.state().exit_published = true;
        self.changed.notify_all();
    }

    /// Blocks until the process has exited; returns its status and time.
    pub fn wait(&self) -> (u32, Timestamp) {
        self.wait_for(|s| matches!(s.status, Status::Stopped { .. }))
    }

    /// Blocks until the exit has been published too.
    pub fn wait_published(&self) -> (u32, Timestamp) {
        self.wait_for(|s| s.exit_published)
    }

    fn wait_for(&self, done: impl Fn(&State) -> bool) -> (u32, Timestamp) {
        let mut state = self.state();
        loop {
            if let (true, Status::Stopped { code, at }) = (done(&state), &state.status) {
                return (*code, at.clone());
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sends `signal` to the container's process (`all`: to every process in its
    /// cgroup), unless it has already exited. Signal 0 only checks that.
    pub fn kill(&self, signal: u32, all: bool) -> Result<(), KillError> {
        // The pid is only reused after the reaper collected it, and the exit is recorded
        // (under this lock) a thread hop after that: the window for signalling a stranger
        // is that hop.
        let state = self.state();
        if matches!(state.status, Status::Stopped { .. }) {
            return Err(KillError::Finished(format!(
                "process already finished: container {}",
                self.id
            )));
        }
        if signal == 0 {
            return Ok(());
        }
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| KillError::BadSignal(format!("{signal} is not a signal")))?;
        let mut pids = vec![self.pid];
        if all {
            pids.extend(self.cgroup_pids().into_iter().filter(|&p| p != self.pid));
        }
        for pid in pids {
            kill(Pid::from_raw(pid as i32), sig).map_err(|e| {
                KillError::Failed(format!("cannot signal container {}: {e}", self.id))
            })?;
        }
        Ok(())
    }

    fn cgroup_pids(&self) -> Vec<u32> {
        match &self.cgroup {
            Some(cg) => cg.procs().iter().map(|p| p.pid as u32).collect(),
            None => Vec::new(),
        }
    }

    /// Every process of the container: the VMM and passt, when it has a cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.cgroup_pids();
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
        if let Some(cg) = &self.cgroup
            && let Err(e) = cgroup::remove(cg)
        {
            log::warn!("cannot remove the cgroup of {}: {e}", self.id);
        }
        if let Some(dir) = &self.mounted_rootfs {
            unmount_rootfs(dir);
        }
        if !self.stdio[0].is_empty() {
            stdio::release_stdin(Path::new(&self.stdio[0]));
        }
    }
}

/// The container's root: `bundle/rootfs` when the shim mounts it (containerd's layout;
/// a spec naming another place is refused, so no mount lands outside the bundle), else
/// the spec's `root.path`, relative to the bundle.
fn rootfs_dir(bundle: &Path, spec: &Spec, mounting: bool) -> Result<PathBuf, CreateError> {
    let root = spec.root().as_ref().map(|r| r.path().clone());
    if !mounting {
        return Ok(bundle.join(root.unwrap_or_else(|| PathBuf::from("rootfs"))));
    }
    match root {
        None => Ok(bundle.join("rootfs")),
        Some(p) if p == Path::new("rootfs") || p == bundle.join("rootfs") => {
            Ok(bundle.join("rootfs"))
        }
        Some(p) => Err(CreateError(format!(
            "root.path `{}` is not the bundle's rootfs, where containerd's mounts go",
            p.display()
        ))),
    }
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

/// The launcher's arguments: `wasmvm run ...` for an app, else a refusal or placeholder.
/// Only a failure to write the environment file fails the create.
fn launcher_args(
    plan: &Plan,
    rootfs: &Path,
    bundle: &Path,
    settings: &Settings,
) -> Result<Vec<OsString>, String> {
    Ok(match &plan.role {
        Role::Placeholder => launcher::placeholder_args(),
        Role::Refused(why) => launcher::refuse_args(why),
        Role::App(app) => {
            let env_file = bundle.join(ENV_FILE);
            match command::wasmvm_args(app, &plan.network, rootfs, &env_file, settings) {
                Ok((wasmvm, args)) => launcher::exec_args(&wasmvm, &args),
                Err(why) => launcher::refuse_args(&why),
            }
        }
    })
}

/// The process's stdin, stdout and stderr from containerd's FIFOs (empty paths: none).
fn open_stdio(req: &Request) -> Result<(Stdio, Stdio, Stdio), String> {
    let stdin = if req.stdin.is_empty() {
        Stdio::null()
    } else {
        stdio::stdin_relay(Path::new(&req.stdin))
            .map_err(|e| format!("cannot open stdin {}: {e}", req.stdin))?
            .into()
    };
    let out = |uri: &str| -> Result<Stdio, String> {
        if uri.is_empty() {
            return Ok(Stdio::null());
        }
        stdio::open_output(uri).map(Stdio::from)
    };
    Ok((stdin, out(&req.stdout)?, out(&req.stderr)?))
}

/// What a container whose shim died left: its root file system mount and its cgroup (the
/// processes in it are killed first). For containerd's `delete` action.
pub fn remove_leftovers(bundle: &Path) {
    // Only the place the shim mounts: never a path the spec names.
    let rootfs = bundle.join("rootfs");
    if rootfs.is_dir() {
        unmount_rootfs(&rootfs);
    }
    let Ok(spec) = Spec::load(bundle.join("config.json")) else {
        return;
    };
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    if let Some(path) = path {
        cgroup::remove_leftover(&path);
    }
}
