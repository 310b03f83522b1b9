//! The shim process (containerd's `start`, `delete` and serve actions) and its task
//! service: containerd's ttrpc requests for the containers this shim holds.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::{Code, Error as RpcError, get_status};
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult, api,
};
use oci_spec::runtime::Spec;

use crate::container::{Container, KillError, Request, RootfsMount, Status};
use crate::options::Settings;

/// Containers of one CRI pod share a shim; this annotation names the pod.
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub struct Shim {
    exit: Arc<ExitSignal>,
    namespace: String,
    /// The socket this shim serves on (`unix:///run/containerd/s/...`; empty for the
    /// `start` and `delete` actions).
    socket: String,
}

impl containerd_shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle: a pod's containers go to its sandbox's
        // shim, everything else gets a shim of its own.
        let grouping = Spec::load("config.json")
            .ok()
            .and_then(|s| s.annotations().clone())
            .and_then(|a| a.get(CRI_SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
        // The crate would print the address and then return through the drop of its
        // signal iterator, which closes the iterator's socket while the SIGCHLD and
        // SIGPIPE handlers still write to it. The shim just spawned exits at once when the
        // pod's shim already serves (every container after a pod's first): its SIGCHLD in
        // that window makes the write raise SIGPIPE, whose handler writes again, for ever.
        // The `start` action then spins and containerd waits for it (a StartContainer
        // hung for an hour in CI). So once the shim is spawned, this process ends here,
        // whatever happens: the address printed, an error, or a panic.
        let spawned =
            std::panic::catch_unwind(move || containerd_shim::spawn(opts, &grouping, Vec::new()));
        let address = match spawned {
            Ok(Ok((_, address))) => address,
            // Nothing was spawned: no child's exit can come, and the crate reports it.
            Ok(Err(e)) => return Err(e),
            Err(_) => std::process::exit(1),
        };
        // As containerd's own shims do: the bundle says where its shim serves, for a
        // containerd that restarts and reconnects, and for `delete` after the shim died.
        let written = std::fs::write("address.tmp", &address)
            .and_then(|()| std::fs::rename("address.tmp", "address"));
        if let Err(e) = written {
            eprintln!("containerd-shim-wasmvm: cannot write the bundle's address file: {e}");
            std::process::exit(1);
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = write!(stdout, "{address}").and_then(|()| stdout.flush()) {
            eprintln!("containerd-shim-wasmvm: cannot write the shim's address: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }

    /// containerd's clean-up after a container's shim connection closed (a shim that died,
    /// or one that ended with its last container): its VMs died with it (parent-death
    /// signal); what remains is the cgroup, the root file system mount and the socket.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().unwrap_or_default();
        crate::container::remove_leftovers(&bundle);
        // The dead shim's socket (the serving shim wrote its address into the bundle), unless
        // a shim still answers there: a pod's shim serves its other containers.
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            remove_dead_socket(socket_path(&address));
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(containerd_shim::util::timestamp()?).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The crate removes the socket after the server stops if the bundle's `address`
        // file is still there, but containerd deletes the bundle right after its shutdown
        // request. No one connects after shutdown; the listener goes on until the server
        // stops.
        if !self.socket.is_empty() {
            remove_socket(socket_path(&self.socket));
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service {
            shared: Arc::new(Shared {
                namespace: self.namespace.clone(),
                exit: self.exit.clone(),
                publisher: Mutex::new(publisher),
                // Set by containerd for its shims; the crate connected to it already.
                events_address: std::env::var("TTRPC_ADDRESS").ok(),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// The file of a `unix://` socket address (containerd's form) or a bare path.
fn socket_path(address: &str) -> &str {
    let address = address.trim();
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Removes the socket at `path` if no one listens there: the connection is refused and the
/// file is the one that refused it (a shim starting meanwhile may have put a live one in
/// its place).
fn remove_dead_socket(path: &str) {
    use std::os::unix::fs::MetadataExt;
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let Ok(before) = std::fs::symlink_metadata(path).map(id) else {
        return;
    };
    let refused = matches!(
        std::os::unix::net::UnixStream::connect(path),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    if refused && std::fs::symlink_metadata(path).map(id).ok() == Some(before) {
        remove_socket(path);
    }
}

/// Removes the socket file at `path` (only a socket: never another kind of file).
fn remove_socket(path: &str) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && let Err(e) = std::fs::remove_file(path) {
        log::warn!("cannot remove the shim's socket {path}: {e}");
    }
}

#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

struct Shared {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Mutex<RemotePublisher>,
    /// containerd's ttrpc address, to connect again after containerd restarted.
    events_address: Option<String>,
    containers: Mutex<HashMap<String, Entry>>,
}

/// A container id is reserved while it is created, so two creates of one id cannot both
/// proceed, and a shutdown during a create does not end the shim under it.
enum Entry {
    Creating,
    Ready(Arc<Container>),
}

/// Where a container's exit handler finds it: the exit can come before `create` has
/// returned (a launcher killed at once), or after a create that failed.
#[derive(Default)]
struct Handoff {
    slot: Mutex<Option<Option<Arc<Container>>>>,
    filled: std::sync::Condvar,
}

impl Handoff {
    fn fill(&self, container: Option<Arc<Container>>) {
        *self.slot.lock().unwrap() = Some(container);
        self.filled.notify_all();
    }

    /// The container, once create has finished; `None` if it failed.
    fn take(&self) -> Option<Arc<Container>> {
        let mut slot = self.slot.lock().unwrap();
        loop {
            if let Some(c) = &*slot {
                return c.clone();
            }
            slot = self.filled.wait(slot).unwrap();
        }
    }
}

/// How long containerd may take to take one event, and how long the shim keeps trying. A
/// call without a deadline that containerd never answers would hold the publisher's lock
/// forever: no exit event would follow, and containerd's StopContainer, which waits for
/// that event, would hang with it. The budget covers a containerd restart; containerd's own
/// shims also retry for ~20 s.
const PUBLISH_RETRY: Retry = Retry {
    limit: Duration::from_secs(5),
    budget: Duration::from_secs(30),
    pause: Duration::from_millis(200),
    max_pause: Duration::from_secs(4),
};

impl Shared {
    /// Sends `event` to containerd after the events before it (the lock is held across
    /// retries, so an exit never overtakes its create, unless an attempt that timed out
    /// is taken by containerd after all).
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let mut publisher = self.publisher.lock().unwrap();
        let sink = EventSink {
            publisher: &mut publisher,
            address: self.events_address.as_deref(),
        };
        if let Err(e) = publish_with(sink, PUBLISH_RETRY, topic, &self.namespace, &*event) {
            log::error!(
                "cannot publish {topic} (tried for {:?}): {e}",
                PUBLISH_RETRY.budget
            );
        }
    }
}

/// Deadline per attempt; no new attempt after `budget`; the pause after the first failure,
/// doubling up to `max_pause`.
#[derive(Clone, Copy)]
struct Retry {
    limit: Duration,
    budget: Duration,
    pause: Duration,
    max_pause: Duration,
}

/// Where events go: the connection, and the address to open a new one at when it fails
/// (containerd restarted: the shim and its VMs outlive it, and the old connection is dead).
struct EventSink<'a> {
    publisher: &'a mut RemotePublisher,
    address: Option<&'a str>,
}

/// One event to containerd, each attempt bounded by `retry.limit`, a failed attempt
/// followed by a pause and a fresh connection, until `retry.budget` is spent.
fn publish_with(
    sink: EventSink<'_>,
    retry: Retry,
    topic: &str,
    namespace: &str,
    event: &dyn MessageDyn,
) -> containerd_shim::Result<()> {
    let give_up = std::time::Instant::now() + retry.budget;
    let mut pause = retry.pause;
    let mut attempt = 1;
    loop {
        let ctx = containerd_shim::protos::ttrpc::context::with_duration(retry.limit);
        match sink
            .publisher
            .publish(ctx, topic, namespace, event.clone_box())
        {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() + pause >= give_up => return Err(e),
            Err(e) => {
                log::warn!("cannot publish {topic} (attempt {attempt}): {e}; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(retry.max_pause);
                attempt += 1;
                if let Some(address) = sink.address {
                    match RemotePublisher::new(address) {
                        Ok(fresh) => *sink.publisher = fresh,
                        Err(e) => log::warn!("cannot connect to containerd at {address}: {e}"),
                    }
                }
            }
        }
    }
}

fn error(code: Code, msg: impl ToString) -> RpcError {
    RpcError::RpcStatus(get_status(code, msg))
}

fn unsupported(what: &str) -> RpcError {
    error(
        Code::UNIMPLEMENTED,
        format!("{what} is not supported: a wasmvm container is one app in its own VM"),
    )
}

impl Service {
    fn container(&self, id: &str, exec_id: &str) -> TtrpcResult<Arc<Container>> {
        if !exec_id.is_empty() {
            return Err(error(
                Code::NOT_FOUND,
                format!("exec process {exec_id} not found: exec is not supported"),
            ));
        }
        match self.shared.containers.lock().unwrap().get(id) {
            Some(Entry::Ready(c)) => Ok(c.clone()),
            Some(Entry::Creating) => Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {id} is being created"),
            )),
            None => Err(error(Code::NOT_FOUND, format!("container {id} not found"))),
        }
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(unsupported("restoring a checkpoint"));
        }
        let settings = Settings::from_task_options(req.options.as_ref())
            .map_err(|e| error(Code::INVALID_ARGUMENT, e))?;
        {
            let mut containers = self.shared.containers.lock().unwrap();
            if containers.contains_key(&req.id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("container {} already exists", req.id),
                ));
            }
            containers.insert(req.id.clone(), Entry::Creating);
        }
        let request = Request {
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            rootfs: req
                .rootfs
                .iter()
                .map(|m| RootfsMount {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            settings,
        };
        let handoff = Arc::new(Handoff::default());
        let (shared, waiting) = (self.shared.clone(), handoff.clone());
        let id = req.id.clone();
        let on_exit = move |code: u32| {
            let Some(container) = waiting.take() else {
                return;
            };
            container.exited(code);
            let (exit_status, exited_at) = container.wait();
            shared.publish(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id: id.clone(),
                    pid: container.pid,
                    exit_status,
                    exited_at: Some(exited_at).into(),
                    ..Default::default()
                }),
            );
            container.exit_published();
        };
        let container = match Container::create(request, on_exit) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                handoff.fill(None);
                self.shared.containers.lock().unwrap().remove(&req.id);
                log::error!("create {}: {}", req.id, e.0);
                return Err(error(Code::FAILED_PRECONDITION, e.0));
            }
        };
        // containerd hears of the create before anything else of this container.
        self.shared.publish(
            TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: String::new(),
                pid: container.pid,
                ..Default::default()
            }),
        );
        self.shared
            .containers
            .lock()
            .unwrap()
            .insert(req.id.clone(), Entry::Ready(container.clone()));
        handoff.fill(Some(container.clone()));
        Ok(api::CreateTaskResponse {
            pid: container.pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        container
            .start(|| {
                self.shared.publish(
                    TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: req.id.clone(),
                        pid: container.pid,
                        ..Default::default()
                    }),
                )
            })
            .map_err(|e| error(Code::FAILED_PRECONDITION, e))?;
        Ok(api::StartResponse {
            pid: container.pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        let (status, exit_status, exited_at) = match container.status() {
            Status::Created => (TaskStatus::CREATED, 0, None),
            Status::Running => (TaskStatus::RUNNING, 0, None),
            Status::Stopped { code, at } => (TaskStatus::STOPPED, code, Some(at)),
        };
        let [stdin, stdout, stderr] = container.stdio.clone();
        Ok(api::StateResponse {
            id: req.id,
            bundle: container.bundle.to_string_lossy().into_owned(),
            pid: container.pid,
            status: status.into(),
            stdin,
            stdout,
            stderr,
            terminal: false,
            exit_status,
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id, &req.exec_id)?;
        container.kill(req.signal, req.all).map_err(|e| match e {
            KillError::Finished(m) => error(Code::NOT_FOUND, m),
            KillError::BadSignal(m) => error(Code::INVALID_ARGUMENT, m),
            KillError::Failed(m) => error(Code::INTERNAL, m),
        })?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = container.wait();
        Ok(api::WaitResponse {
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        // Never started: its launcher is waiting; end it (a start racing this finds its
        // start pipe gone). A running container must be stopped first.
        container.abandon();
        if container.status() == Status::Running {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {} is running: stop it first", req.id),
            ));
        }
        // One delete takes the container out of the map; a second finds nothing.
        {
            let mut containers = self.shared.containers.lock().unwrap();
            match containers.get(&req.id) {
                Some(Entry::Ready(c)) if Arc::ptr_eq(c, &container) => {
                    containers.remove(&req.id);
                }
                _ => {
                    return Err(error(
                        Code::NOT_FOUND,
                        format!("container {} not found", req.id),
                    ));
                }
            }
        }
        // The exit event goes out before the delete event and before any shutdown.
        let (exit_status, exited_at) = container.wait_published();
        container.remove();
        self.shared.publish(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid: container.pid,
                exit_status,
                exited_at: Some(exited_at.clone()).into(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: container.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let container = self.container(&req.id, "")?;
        Ok(api::PidsResponse {
            processes: container
                .pids()
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let container = self.container(&req.id, "")?;
        let Some(cg) = container.cgroup() else {
            return Err(error(
                Code::NOT_FOUND,
                format!("container {} has no cgroup to report on", req.id),
            ));
        };
        // containerd's v1 metrics type: on cgroup v2 its fields fill from the v2 files
        // that have a v1 counterpart.
        let stats = containerd_shim::cgroup::collect_metrics(cg)
            .and_then(|m| containerd_shim::util::convert_to_any(Box::new(m)))
            .map_err(|e| error(Code::INTERNAL, format!("cannot read the cgroup: {e}")))?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.container(&req.id, "").map(|c| c.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks after every delete; the shim ends with its last container.
        if self.shared.containers.lock().unwrap().is_empty() {
            self.shared.exit.signal();
        }
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The stdin relay ends when containerd closes its end of the FIFO.
        self.container(&req.id, &req.exec_id)?;
        Ok(api::Empty::default())
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("exec"))
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("a terminal"))
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("pause"))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("resume"))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("checkpoint"))
    }

    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("changing the resources of a running VM"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;

    use containerd_shim::protos::events::task::TaskExit;
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::protos::ttrpc::{Server, TtrpcContext};
    use containerd_shim::protos::{Events, api::ForwardRequest, create_events};

    use super::*;

    /// containerd's event service that never answers the first `stuck` forwards (as a
    /// containerd too busy to take an event would) and reports the rest.
    struct Containerd {
        stuck: Mutex<u32>,
        forwarded: Mutex<mpsc::Sender<(String, String)>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Events for Containerd {
        fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> TtrpcResult<api::Empty> {
            let stuck = {
                let mut left = self.stuck.lock().unwrap();
                let stuck = *left > 0;
                *left = left.saturating_sub(1);
                stuck
            };
            if stuck {
                // Held until the test ends: the shim must not wait for it.
                let _ = self.release.lock().unwrap().recv();
                return Ok(api::Empty::default());
            }
            // containerd-shim packs events under containerd's own type URLs.
            let any = req.envelope().event();
            assert!(any.type_url.ends_with("TaskExit"), "{}", any.type_url);
            let exit = TaskExit::parse_from_bytes(&any.value).unwrap();
            let _ = self
                .forwarded
                .lock()
                .unwrap()
                .send((req.envelope().topic().to_string(), exit.container_id));
            Ok(api::Empty::default())
        }
    }

    /// A fake containerd at `socket`: the server, the events it took, and the sender whose
    /// drop lets its stuck forwards return.
    struct Fake {
        server: Server,
        forwarded: mpsc::Receiver<(String, String)>,
        release: mpsc::Sender<()>,
    }

    impl Fake {
        fn serve(socket: &Path, stuck: u32) -> Fake {
            let listener = UnixListener::bind(socket).unwrap();
            listener.set_nonblocking(true).unwrap();
            let (forwarded_tx, forwarded) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            let events = Box::new(Containerd {
                stuck: Mutex::new(stuck),
                forwarded: Mutex::new(forwarded_tx),
                release: Mutex::new(release_rx),
            }) as Box<dyn Events + Send + Sync>;
            let mut server = Server::new()
                .add_listener(listener.as_raw_fd())
                .unwrap()
                .register_service(create_events(events.into()));
            // The server owns the descriptor now.
            std::mem::forget(listener);
            server.start().unwrap();
            Fake {
                server,
                forwarded,
                release,
            }
        }

        fn stop(self) {
            drop(self.release);
            self.server.shutdown();
        }
    }

    fn exit_event(id: &str) -> TaskExit {
        TaskExit {
            container_id: id.into(),
            id: id.into(),
            exit_status: 143,
            ..Default::default()
        }
    }

    /// Room for a slow machine: a forward that is answered takes far less than `limit`.
    const QUICK: Retry = Retry {
        limit: Duration::from_secs(1),
        budget: Duration::from_secs(10),
        pause: Duration::from_millis(10),
        max_pause: Duration::from_millis(100),
    };

    /// Publishes an exit of `id` on a thread; whether it succeeded, within 30 s.
    fn publish_exit(
        publisher: RemotePublisher,
        address: Option<PathBuf>,
        retry: Retry,
        id: &str,
    ) -> bool {
        let (tx, rx) = mpsc::channel();
        let id = id.to_string();
        std::thread::spawn(move || {
            let mut publisher = publisher;
            let address = address.map(|a| a.to_string_lossy().into_owned());
            let sink = EventSink {
                publisher: &mut publisher,
                address: address.as_deref(),
            };
            let event = exit_event(&id);
            let _ = tx.send(publish_with(sink, retry, TASK_EXIT_EVENT_TOPIC, "ns", &event).is_ok());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("publish neither succeeded nor gave up")
    }

    fn connect(socket: &Path) -> RemotePublisher {
        RemotePublisher::new(socket.to_str().unwrap()).unwrap()
    }

    #[test]
    fn an_event_containerd_does_not_take_is_sent_again_and_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("events.sock");
        let fake = Fake::serve(&socket, 2);
        assert!(publish_exit(connect(&socket), None, QUICK, "web"));
        let got = fake
            .forwarded
            .recv_timeout(Duration::from_secs(30))
            .unwrap();
        assert_eq!(got, (TASK_EXIT_EVENT_TOPIC.to_string(), "web".to_string()));
        fake.stop();
    }

    #[test]
    fn a_containerd_that_never_answers_fails_the_publish_instead_of_hanging_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("events.sock");
        let fake = Fake::serve(&socket, u32::MAX);
        let short = Retry {
            budget: Duration::from_secs(2),
            ..QUICK
        };
        assert!(!publish_exit(
            connect(&socket),
            Some(socket.clone()),
            short,
            "web"
        ));
        assert!(fake.forwarded.try_recv().is_err());
        fake.stop();
    }

    #[test]
    fn after_containerd_restarts_events_go_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("events.sock");
        let old = Fake::serve(&socket, 0);
        let publisher = connect(&socket);
        old.stop();
        std::fs::remove_file(&socket).unwrap();
        let new = Fake::serve(&socket, 0);
        assert!(publish_exit(publisher, Some(socket.clone()), QUICK, "web"));
        let got = new.forwarded.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(got.1, "web");
        new.stop();
    }
}
