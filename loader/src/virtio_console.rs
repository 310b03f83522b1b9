//! The built-in VMM's virtio console: a virtio-mmio (version 2) device whose port 0 carries
//! the framed guest channel (`wasmvm_abi::channel`). Queues are parsed by `virtio-queue`, which
//! validates every descriptor against guest memory; nothing here trusts a guest address.
//!
//! There are no interrupts: the guest polls its used rings. Transmit buffers are consumed in
//! the notify exit that announces them; receive buffers are filled whenever the vCPU exits
//! (notifies, and the kernel's wait exits while it waits for input or credit).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

/// Where the device's registers live, and how the kernel learns it.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const DEVICE_ID_CONSOLE: u32 = 3;

/// The `virtio_mmio.device=` word announcing this device on the kernel command line.
pub fn cmdline_word() -> String {
    format!("virtio_mmio.device={MMIO_SIZE}@{MMIO_BASE:#x}:5")
}

pub struct Console {
    /// Guest → host bytes (frames) go here.
    to_host: UnixStream,
    /// Host → guest bytes (stdin, credit) come from here; non-blocking.
    from_host: UnixStream,
    /// Host bytes read but not yet placed in a guest buffer.
    pending: Vec<u8>,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    status: u32,
    queue_sel: usize,
    queues: [Queue; 2],
    host_closed: bool,
}

impl Console {
    pub fn new(to_host: UnixStream, from_host: UnixStream) -> std::io::Result<Self> {
        from_host.set_nonblocking(true)?;
        let queue = || Queue::new(QUEUE_SIZE).expect("valid queue size");
        Ok(Console {
            to_host,
            from_host,
            pending: Vec::new(),
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            status: 0,
            queue_sel: 0,
            queues: [queue(), queue()],
            host_closed: false,
        })
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel)
    }

    /// A guest read of the register block at `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value: u32 = match offset {
            0x000 => 0x7472_6976, // "virt"
            0x004 => 2,
            0x008 => DEVICE_ID_CONSOLE,
            0x00c => 0x4d56_5741, // "AWVM"
            0x010 => match self.device_features_sel {
                0 => 0,
                1 => (VIRTIO_F_VERSION_1 >> 32) as u32,
                _ => 0,
            },
            0x034 => QUEUE_SIZE as u32,
            0x044 => self.queue().is_some_and(|q| q.ready()) as u32,
            0x060 => 0,
            0x070 => self.status,
            0x0fc => 0,
            // Config space: cols, rows (0: no size), max_nr_ports 1, emerg_wr.
            0x100 => 0,
            0x104 => 1,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest write to the register block at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                1 => {
                    self.driver_features = (self.driver_features & 0xffff_ffff) | ((v as u64) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v as usize,
            0x038 => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x044 => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x050 => {
                // Queue notify: take what the guest queued, and fill what it offered.
                self.process_tx(mem);
                self.process_rx(mem);
            }
            0x064 => {}
            0x070 => {
                self.status = v;
                if v == 0 {
                    // Reset.
                    for q in &mut self.queues {
                        q.reset();
                    }
                }
            }
            0x080 => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(Some(v), None)),
            0x084 => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(None, Some(v))),
            0x090 => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(Some(v), None)),
            0x094 => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(None, Some(v))),
            0x0a0 => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(Some(v), None)),
            0x0a4 => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }

    /// Sends every queued transmit buffer to the host.
    fn process_tx(&mut self, mem: &GuestMemoryMmap) {
        let q = &mut self.queues[TX];
        if !q.ready() || !q.is_valid(mem) {
            return;
        }
        let mut buf = Vec::new();
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            for desc in chain.readable() {
                let start = buf.len();
                buf.resize(start + desc.len() as usize, 0);
                if mem.read_slice(&mut buf[start..], desc.addr()).is_err() {
                    buf.truncate(start);
                }
            }
            let _ = q.add_used(mem, head, 0);
        }
        if !buf.is_empty() {
            // The host end is gone when the run is over; the guest is about to be stopped.
            let _ = self.to_host.write_all(&buf);
        }
    }

    /// Moves host bytes into the guest's receive buffers, as far as both allow. Returns
    /// whether the guest has something to look at: bytes delivered now, or bytes still
    /// waiting for receive buffers.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap) -> bool {
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
        let q = &mut self.queues[RX];
        if self.pending.is_empty() || !q.ready() || !q.is_valid(mem) {
            return !self.pending.is_empty();
        }
        let before = self.pending.len();
        while !self.pending.is_empty() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain.writable() {
                let n = (desc.len() as usize).min(self.pending.len() - written);
                if n == 0
                    || mem
                        .write_slice(&self.pending[written..written + n], desc.addr())
                        .is_err()
                {
                    break;
                }
                written += n;
            }
            self.pending.drain(..written);
            let _ = q.add_used(mem, head, written as u32);
        }
        self.pending.len() != before || !self.pending.is_empty()
    }

    /// The fd to wait on for host input.
    pub fn host_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.from_host.as_fd()
    }
}
