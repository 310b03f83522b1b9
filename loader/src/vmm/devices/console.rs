//! The built-in VMM's virtio console (behind `devices::mmio`): port 0 carries the framed guest
//! channel (`wasmvm_abi::channel`). Transmit buffers are consumed in the notify exit that
//! announces them; receive buffers are filled whenever the vCPU exits (notifies, and the
//! kernel's wait exits while it waits for input or credit).

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use crate::vmm::devices::mmio::{VirtioDevice, usable, writable, write_descriptors};

const RX: usize = 0;
const TX: usize = 1;
const DEVICE_ID_CONSOLE: u32 = 3;
/// Configuration space: cols and rows 0 (no size), `max_nr_ports` 1, `emerg_wr`.
const CONFIG: [u8; 12] = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
/// The most one transmit chain may carry: a whole channel frame of the largest size.
const MAX_TX_CHAIN: usize =
    wasmvm_abi::channel::MAX_FRAME_PAYLOAD as usize + wasmvm_abi::channel::FRAME_HEADER_LEN;

pub struct Console {
    /// Guest → host bytes (frames) go here.
    to_host: UnixStream,
    /// Host → guest bytes (stdin, credit) come from here; non-blocking.
    from_host: UnixStream,
    /// Host bytes read but not yet placed in a guest buffer.
    pending: Vec<u8>,
    host_closed: bool,
}

impl VirtioDevice for Console {
    fn device_id(&self) -> u32 {
        DEVICE_ID_CONSOLE
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn config(&self) -> &[u8] {
        &CONFIG
    }

    fn notify(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        // Take what the guest queued, and fill what it offered.
        self.process_tx(queues, mem);
        self.process_rx(queues, mem);
    }
}

/// What [`Console::process_rx`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// Nothing from the host is waiting.
    Idle,
    /// Bytes went into the guest's buffers: it has something to look at.
    Delivered,
    /// Host bytes wait, but the guest offers no receive buffer (it is not reading now).
    Backlog,
}

/// Writes all of `slices` to `out`, in order, with as few `writev` calls as it takes.
fn write_slices(out: &UnixStream, slices: &[VolatileSlice<'_, ()>]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
    let mut iov: Vec<libc::iovec> = guards
        .iter()
        .zip(slices)
        .map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect();
    let mut first = 0;
    while first < iov.len() {
        // SAFETY: every iovec describes a range vm-memory validated inside guest memory, kept
        // mapped by `guards` for this call; writev only reads it.
        let n = unsafe {
            libc::writev(
                out.as_raw_fd(),
                iov[first..].as_ptr(),
                (iov.len() - first).min(1024) as libc::c_int,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Skip what was written: whole entries, then part of the next.
        let mut n = n as usize;
        while first < iov.len() && n >= iov[first].iov_len {
            n -= iov[first].iov_len;
            first += 1;
        }
        if n > 0 {
            let entry = &mut iov[first];
            // SAFETY: `n` is less than this entry's length, so the pointer stays inside it.
            entry.iov_base = unsafe { entry.iov_base.cast::<u8>().add(n) }.cast();
            entry.iov_len -= n;
        }
    }
    Ok(())
}

impl Console {
    pub fn new(to_host: UnixStream, from_host: UnixStream) -> std::io::Result<Self> {
        from_host.set_nonblocking(true)?;
        Ok(Console {
            to_host,
            from_host,
            pending: Vec::new(),
            host_closed: false,
        })
    }

    /// Sends every queued transmit buffer to the host, straight from guest memory to the
    /// socket with one `writev` per frame (vm-memory validates each range; no copy in
    /// between). A chain larger than a whole frame, or reaching outside guest memory, is
    /// dropped: the host's frame parser then reports the guest's stream as garbled, which is
    /// all a misbehaving guest can achieve.
    fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
        let Some(q) = usable(queues, TX, mem) else {
            return;
        };
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let mut slices = Vec::new();
            let mut total = 0usize;
            let mut whole = true;
            for desc in chain.clone().readable() {
                total += desc.len() as usize;
                match mem.get_slice(desc.addr(), desc.len() as usize) {
                    Ok(slice) if total <= MAX_TX_CHAIN => slices.push(slice),
                    _ => {
                        whole = false;
                        break;
                    }
                }
            }
            if whole {
                // The host end is gone when the run is over; the guest is about to stop.
                let _ = write_slices(&self.to_host, &slices);
            }
            let _ = q.add_used(mem, chain.head_index(), 0);
        }
    }

    /// Moves host bytes into the guest's receive buffers, as far as both allow.
    pub fn process_rx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Rx {
        let mut chunk = [0u8; 16 * 1024];
        while !self.host_closed && self.pending.len() < 64 * 1024 {
            match self.from_host.read(&mut chunk) {
                Ok(0) => self.host_closed = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.host_closed = true,
            }
        }
        if self.pending.is_empty() {
            return Rx::Idle;
        }
        let Some(q) = usable(queues, RX, mem) else {
            return Rx::Backlog;
        };
        let before = self.pending.len();
        while !self.pending.is_empty() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let written = write_descriptors(&writable(&chain), mem, &self.pending);
            self.pending.drain(..written);
            let _ = q.add_used(mem, chain.head_index(), written as u32);
        }
        if self.pending.len() != before {
            Rx::Delivered
        } else {
            Rx::Backlog
        }
    }

    /// The fd to wait on for host input.
    pub fn host_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.from_host.as_fd()
    }
}
