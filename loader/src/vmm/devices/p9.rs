//! The built-in VMM's virtio-9p device (behind `devices::mmio`): a live host directory served
//! by the 9P2000.L server of `host::p9`, or a volume image served by `host::volume::live`,
//! on a worker thread of its own.
//!
//! The device model runs in the vCPU thread, whose seccomp filter allows no filesystem
//! calls; the servers need them. So each request crosses to the share's worker thread,
//! which runs under a filter with the calls its server makes added and holds nothing but
//! the share's directory or volume. The vCPU waits for the reply: 9P is synchronous from the
//! guest's side. When the device goes, the worker closes its server (a volume is unmounted
//! and synced) and ends; the VMM joins it before the run ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::host::p9::{FileServer, MAX_MSIZE};
use crate::vmm::devices::mmio::{VirtioDevice, read_chain, usable, writable, write_descriptors};
use crate::vmm::seccomp::{self, BpfProgram};

const DEVICE_ID_9P: u32 = 9;
/// `VIRTIO_9P_MOUNT_TAG`: the configuration space holds the mount tag.
const F_MOUNT_TAG: u64 = 1;
/// The most a request may carry: the largest message the server negotiates.
const MAX_REQUEST: usize = MAX_MSIZE as usize;

/// One request and its reply, in buffers that go back and forth between the device and the
/// worker and are used again: a 128 KiB message would otherwise be a fresh allocation each
/// way, which the static musl build's allocator maps and unmaps every time (page faults,
/// zeroing, a TLB shootdown on each core): reads of a share went 1.6x slower than with glibc.
#[derive(Debug, Default)]
pub struct Exchange {
    pub request: Vec<u8>,
    pub reply: Vec<u8>,
}

pub struct P9Device {
    /// `u16` tag length, then the tag.
    config: Vec<u8>,
    requests: SyncSender<Exchange>,
    replies: Receiver<Exchange>,
    /// The buffers of the last exchange, for the next one.
    spare: Option<Exchange>,
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
            spare: None,
            stop,
        }
    }

    /// One request through the worker, which fills the reply; `None` if it is gone or the
    /// run is stopping (the buffers go with it).
    fn transact(&self, exchange: Exchange) -> Option<Exchange> {
        self.requests.send(exchange).ok()?;
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
            let mut exchange = self.spare.take().unwrap_or_default();
            exchange.request.clear();
            // An oversized or unreadable request is answered with nothing: the guest's
            // client sees an empty reply and fails the call with EIO.
            let written = if read_chain(&chain, mem, MAX_REQUEST, &mut exchange.request) {
                match self.transact(exchange) {
                    Some(done) => {
                        let written = write_descriptors(&writable(&chain), mem, &done.reply);
                        self.spare = Some(done);
                        written
                    }
                    None => 0,
                }
            } else {
                self.spare = Some(exchange);
                0
            };
            let _ = q.add_used(mem, chain.head_index(), written as u32);
        }
    }
}

/// The device's end of a share's worker thread.
pub struct Worker {
    requests: SyncSender<Exchange>,
    replies: Receiver<Exchange>,
}

/// What a worker runs: made on the worker's thread, once it is confined.
pub type MakeServer = Box<dyn FnOnce() -> std::io::Result<Box<dyn FileServer>> + Send>;

/// Starts the worker thread that makes and runs a server (confined by `filter` first, when
/// given). It ends when the device is dropped, after closing the server; the handle returns
/// how the server's making and closing went.
pub fn spawn_worker(
    name: &str,
    make: MakeServer,
    filter: Option<std::sync::Arc<BpfProgram>>,
) -> std::io::Result<(Worker, std::thread::JoinHandle<std::io::Result<()>>)> {
    let (requests, incoming) = sync_channel::<Exchange>(1);
    let (outgoing, replies) = sync_channel::<Exchange>(1);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(filter) = filter
                && let Err(e) = seccomp::confine_thread(&filter)
            {
                // Unconfined it would not serve: the guest's calls fail with EIO.
                return Err(std::io::Error::other(e.to_string()));
            }
            // A server that cannot be made leaves the channel unanswered: the guest's calls
            // fail with EIO, and the run reports why at its end.
            let mut server = make()?;
            for mut exchange in incoming {
                exchange.reply.clear();
                server.handle(&exchange.request, &mut exchange.reply);
                if outgoing.send(exchange).is_err() {
                    break;
                }
            }
            server.close()
        })?;
    Ok((Worker { requests, replies }, thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::p9::wire::{self, Rmessage, Tmessage};
    use crate::vmm::devices::mmio::reg;
    use crate::vmm::devices::testing::{BUFFERS, Driver};
    use std::time::Instant;

    const REQUEST: u64 = BUFFERS;
    const REPLY: u64 = BUFFERS + 0x10_0000;

    /// A share of a temporary directory holding `hello.txt`, behind a negotiated device in
    /// 4 MiB of guest memory (room for a request past the largest message).
    fn share() -> (Driver<P9Device>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), b"hello from the host").unwrap();
        let root: std::os::fd::OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let make: MakeServer =
            Box::new(move || Ok(Box::new(crate::host::p9::Server::new(root, false)) as _));
        let (worker, _) = spawn_worker("test-9p", make, None).unwrap();
        let device = P9Device::new("share0", worker, Arc::new(AtomicBool::new(false)));
        (Driver::new(device, 4 << 20), dir)
    }

    /// Sends `msg` as the guest's client would (request buffer, then a reply buffer of
    /// `room` bytes) and returns the used length and the reply bytes.
    fn call(d: &mut Driver<P9Device>, tag: u16, msg: Tmessage<'_>, room: u32) -> (u32, Vec<u8>) {
        let mut request = Vec::new();
        msg.encode(tag, &mut request);
        d.put(REQUEST, &request);
        let head = d.post(
            0,
            &[(REQUEST, request.len() as u32, false), (REPLY, room, true)],
        );
        d.notify(0);
        let used = d.used(0);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, u32::from(head));
        let len = used[0].1;
        (len, d.get(REPLY, len as usize))
    }

    fn reply(d: &mut Driver<P9Device>, tag: u16, msg: Tmessage<'_>) -> Rmessage {
        let (len, bytes) = call(d, tag, msg, 8192);
        // Exactly the reply: nothing of an earlier, longer one through the reused buffers.
        let size = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        assert_eq!(len, size, "used length against the reply's size");
        let (got_tag, reply) = Rmessage::decode(&bytes).unwrap();
        assert_eq!(got_tag, tag);
        reply
    }

    #[test]
    fn identity_features_and_mount_tag() {
        let (mut d, _dir) = share();
        assert_eq!(d.r(reg::DEVICE_ID), 9);
        d.w(reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(u64::from(d.r(reg::DEVICE_FEATURES)), F_MOUNT_TAG);
        // `u16` length, then the tag; nothing after it.
        assert_eq!(d.config(10), b"\x06\x00share0\x00\x00");
        d.w(reg::QUEUE_SEL, 1);
        assert_eq!(d.r(reg::QUEUE_NUM_MAX), 0, "one queue only");
    }

    #[test]
    fn requests_cross_to_the_worker_and_replies_come_back() {
        let (mut d, _dir) = share();
        assert_eq!(
            reply(
                &mut d,
                1,
                Tmessage::Version {
                    msize: 8192,
                    version: wire::VERSION_9P2000_L,
                }
            ),
            Rmessage::Version {
                msize: 8192,
                version: b"9P2000.L".to_vec(),
            }
        );
        let attach = Tmessage::Attach {
            fid: 0,
            afid: wire::NOFID,
            uname: b"guest",
            aname: b"",
            n_uname: 0,
        };
        assert!(matches!(reply(&mut d, 2, attach), Rmessage::Attach { .. }));
        let walk = Tmessage::Walk {
            fid: 0,
            newfid: 1,
            names: vec![b"hello.txt"],
        };
        assert!(matches!(reply(&mut d, 3, walk), Rmessage::Walk { qids } if qids.len() == 1));
        let lopen = Tmessage::Lopen {
            fid: 1,
            flags: wire::DOTL_RDONLY,
        };
        assert!(matches!(reply(&mut d, 4, lopen), Rmessage::Lopen { .. }));
        let read = Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 100,
        };
        assert_eq!(
            reply(&mut d, 5, read),
            Rmessage::Read {
                data: b"hello from the host".to_vec()
            }
        );
        // The server's own errors come back as Rlerror.
        let missing = Tmessage::Walk {
            fid: 0,
            newfid: 2,
            names: vec![b"nope"],
        };
        assert_eq!(
            reply(&mut d, 6, missing),
            Rmessage::Lerror {
                ecode: libc::ENOENT as u32
            }
        );
        // A reply larger than the buffer offered for it is cut short, not written past it.
        let read = Tmessage::Read {
            fid: 1,
            offset: 0,
            count: 100,
        };
        d.put(REPLY + 10, &[0xee]);
        let (len, _) = call(&mut d, 7, read, 10);
        assert_eq!(len, 10);
        assert_eq!(d.get(REPLY + 10, 1), [0xee]);
    }

    #[test]
    fn oversized_or_unreadable_requests_get_an_empty_reply() {
        let (mut d, _dir) = share();
        let version = Tmessage::Version {
            msize: 8192,
            version: wire::VERSION_9P2000_L,
        };
        let mut request = Vec::new();
        version.encode(1, &mut request);
        d.put(REQUEST, &request);
        // One byte past the largest message: refused before the worker sees it.
        let too_long = d.post(
            0,
            &[
                (REQUEST, MAX_REQUEST as u32 + 1, false),
                (REPLY, 8192, true),
            ],
        );
        // The same, split over two buffers.
        let split = d.post(
            0,
            &[
                (REQUEST, MAX_REQUEST as u32 / 2, false),
                (REQUEST, MAX_REQUEST as u32 / 2 + 1, false),
                (REPLY, 8192, true),
            ],
        );
        // A request outside guest memory.
        let outside = d.post(0, &[(u64::MAX - 16, 32, false), (REPLY, 8192, true)]);
        d.notify(0);
        assert_eq!(
            d.used(0),
            [
                (u32::from(too_long), 0),
                (u32::from(split), 0),
                (u32::from(outside), 0)
            ]
        );
        // The worker is still in step: the next request gets its own reply.
        assert!(matches!(
            reply(&mut d, 2, version),
            Rmessage::Version { msize: 8192, .. }
        ));
    }

    #[test]
    fn a_gone_worker_answers_nothing() {
        let (requests, incoming) = sync_channel(1);
        let (_outgoing, replies) = sync_channel(1);
        drop(incoming);
        let worker = Worker { requests, replies };
        let device = P9Device::new("t", worker, Arc::new(AtomicBool::new(false)));
        let mut d = Driver::new(device, 4 << 20);
        let (len, _) = call(&mut d, 1, Tmessage::Flush { oldtag: 0 }, 64);
        assert_eq!(len, 0);
    }

    #[test]
    fn a_stuck_worker_does_not_keep_a_stopping_vcpu() {
        let (requests, incoming) = sync_channel(1);
        let (_outgoing, replies) = sync_channel(1);
        let worker = Worker { requests, replies };
        let stop = Arc::new(AtomicBool::new(true));
        let device = P9Device::new("t", worker, stop);
        let mut d = Driver::new(device, 4 << 20);
        let started = Instant::now();
        // On a thread of its own: a device that waits for the worker for ever fails the
        // test instead of hanging it.
        let (len, _) = crate::test_support::within(
            Duration::from_secs(30),
            "a request to a stuck worker",
            move || call(&mut d, 1, Tmessage::Flush { oldtag: 0 }, 64),
        );
        assert_eq!(len, 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The request did reach the worker.
        assert!(incoming.try_recv().is_ok());
    }
}
