//! Every container process is forked by one long-lived thread. A process's parent-death
//! signal fires when the *thread* that forked it ends, and the ttrpc server's worker
//! threads come and go; this thread lives as long as the shim, so the VMs die with the
//! shim and only then.
//!
//! The shim's reaper (containerd-shim's SIGCHLD handler) collects every child, so an exit
//! status comes from its process monitor, subscribed to before the fork.

use std::io;
use std::process::Command;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use containerd_shim::monitor::{Topic, monitor_subscribe, wait_pid};

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static Mutex<Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    })
}

/// Forks `cmd` on the spawner thread; `on_exit` gets its exit status (128+N for signal N)
/// on a thread of its own. Never waits on the child: the reaper does.
pub fn spawn(mut cmd: Command, on_exit: impl FnOnce(u32) + Send + 'static) -> io::Result<u32> {
    let (reply_tx, reply_rx) = channel();
    let job: Job = Box::new(move || {
        let result = (|| {
            let subscription = monitor_subscribe(Topic::Pid)
                .map_err(|e| io::Error::other(format!("process monitor: {e}")))?;
            let child = cmd.spawn()?;
            let pid = child.id();
            // Dropping `child` neither waits nor kills.
            drop(child);
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
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}
