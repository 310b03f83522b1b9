//! The built-in VMM's virtio-9p device (behind `devices::mmio`): a live host directory, served
//! by the 9P2000.L server of `host::p9` on a worker thread of its own.
//!
//! The device model runs in the vCPU thread, whose seccomp filter allows no filesystem
//! calls; the server needs them. So each request crosses to the share's worker thread,
//! which runs under a filter with the filesystem calls added and holds nothing but the
//! share's directory. The vCPU waits for the reply: 9P is synchronous from the guest's side.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::host::p9::{MAX_MSIZE, Server};
use crate::vmm::devices::mmio::{VirtioDevice, read_chain, usable, writable, write_descriptors};
use crate::vmm::seccomp::{self, BpfProgram};

const DEVICE_ID_9P: u32 = 9;
/// `VIRTIO_9P_MOUNT_TAG`: the configuration space holds the mount tag.
const F_MOUNT_TAG: u64 = 1;
/// The most a request may carry: the largest message the server negotiates.
const MAX_REQUEST: usize = MAX_MSIZE as usize;

pub struct P9Device {
    /// `u16` tag length, then the tag.
    config: Vec<u8>,
    requests: SyncSender<Vec<u8>>,
    replies: Receiver<Vec<u8>>,
    /// The run's stop flag: a request stuck in the host filesystem must not keep the vCPU
    /// from stopping.
    stop: Arc<AtomicBool>,
}

impl P9Device {
    /// A device with mount tag `tag` whose requests `worker` (from [`spawn_worker`]) serves;
    /// waiting for a reply gives up once `stop` is set.
    pub fn new(tag: &str, worker: Worker, stop: Arc<AtomicBool>) -> Self {
        let mut config = (tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(tag.as_bytes());
        P9Device {
            config,
            requests: worker.requests,
            replies: worker.replies,
            stop,
        }
    }

    /// One request through the worker; `None` if it is gone or the run is stopping.
    fn transact(&self, request: Vec<u8>) -> Option<Vec<u8>> {
        self.requests.send(request).ok()?;
        loop {
            match self.replies.recv_timeout(Duration::from_millis(100)) {
                Ok(reply) => return Some(reply),
                Err(RecvTimeoutError::Timeout) if !self.stop.load(Ordering::Relaxed) => {}
                Err(_) => return None,
            }
        }
    }
}

impl VirtioDevice for P9Device {
    fn device_id(&self) -> u32 {
        DEVICE_ID_9P
    }

    fn features(&self) -> u64 {
        F_MOUNT_TAG
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn notify(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        let Some(q) = usable(queues, 0, mem) else {
            return;
        };
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let mut request = Vec::new();
            // An oversized or unreadable request is answered with nothing: the guest's
            // client sees an empty reply and fails the call with EIO.
            let written = if read_chain(&chain, mem, MAX_REQUEST, &mut request) {
                match self.transact(request) {
                    Some(reply) => write_descriptors(&writable(&chain), mem, &reply),
                    None => 0,
                }
            } else {
                0
            };
            let _ = q.add_used(mem, chain.head_index(), written as u32);
        }
    }
}

/// The device's end of a share's worker thread.
pub struct Worker {
    requests: SyncSender<Vec<u8>>,
    replies: Receiver<Vec<u8>>,
}

/// Starts the worker thread serving the directory `root` (confined by `filter` first, when
/// given). It ends when the device is dropped.
pub fn spawn_worker(
    name: &str,
    root: OwnedFd,
    read_only: bool,
    filter: Option<std::sync::Arc<BpfProgram>>,
) -> std::io::Result<Worker> {
    let (requests, incoming) = sync_channel::<Vec<u8>>(1);
    let (outgoing, replies) = sync_channel::<Vec<u8>>(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(filter) = filter
                && seccomp::confine_thread(&filter).is_err()
            {
                // Unconfined it would not serve: the guest's calls fail with EIO.
                return;
            }
            let mut server = Server::new(root, read_only);
            for request in incoming {
                let mut reply = Vec::new();
                server.handle(&request, &mut reply);
                if outgoing.send(reply).is_err() {
                    return;
                }
            }
        })?;
    Ok(Worker { requests, replies })
}
