//! Every container process is forked by one long-lived thread. A process's parent-death
//! signal fires when the *thread* that forked it ends, and the ttrpc server's worker
//! threads come and go; this thread lives as long as the shim (a job that panics is
//! caught), so the VMs die with the shim and only then.
//!
//! The shim's reaper (containerd-shim's SIGCHLD handler) collects every child, so an exit
//! status comes from its process monitor, subscribed to before the fork.

use std::io::{self, PipeReader, PipeWriter, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use containerd_shim::monitor::{Topic, monitor_subscribe, wait_pid};

use crate::sys::SetupFailure;

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static Mutex<Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for job in rx {
                    if catch_unwind(AssertUnwindSafe(job)).is_err() {
                        log::error!("a spawn panicked; the spawner goes on");
                    }
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    })
}

/// The error pipe of one spawn: the child's setup (`sys::confine`) reports a failed step
/// on the writer; the reader sees end of file once the child has `exec`ed.
pub struct ErrorPipe {
    pub reader: PipeReader,
    pub writer: PipeWriter,
}

/// Forks `cmd` on the spawner thread; `on_exit` gets its exit status (128+N for signal N)
/// on a thread of its own. Never waits on the child: the reaper does.
pub fn spawn(
    mut cmd: Command,
    errors: ErrorPipe,
    on_exit: impl FnOnce(u32) + Send + 'static,
) -> io::Result<u32> {
    let (reply_tx, reply_rx) = channel();
    let job: Job = Box::new(move || {
        let result = (|| {
            let subscription = monitor_subscribe(Topic::Pid)
                .map_err(|e| io::Error::other(format!("process monitor: {e}")))?;
            let ErrorPipe { mut reader, writer } = errors;
            let child = cmd.spawn()?;
            let pid = child.id();
            // Dropping `child` neither waits nor kills; dropping `cmd` and the writer
            // leaves the child's copy as the pipe's only writer.
            drop((child, cmd, writer));
            let mut record = Vec::new();
            let _ = (&mut reader).take(16).read_to_end(&mut record);
            if let Some(failure) = SetupFailure::decode(&record) {
                // The child has exited (127); the reaper collects it.
                return Err(io::Error::other(failure.to_string()));
            }
            std::thread::Builder::new()
                .name(format!("wait-{pid}"))
                .spawn(move || {
                    let code = wait_pid(pid as i32, subscription);
                    on_exit(code as u32);
                })?;
            Ok(pid)
        })();
        let _ = reply_tx.send(result);
    });
    spawner()
        .lock()
        .unwrap()
        .send(job)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawn failed (see the shim's log)"))?
}
