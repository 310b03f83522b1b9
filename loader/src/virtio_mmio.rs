//! The virtio-mmio (version 2) register block every device of the built-in VMM sits behind,
//! and bounded helpers to move bytes through descriptor chains. Queues are `virtio-queue`
//! queues, which validate every descriptor against guest memory; nothing here trusts a guest
//! address or length.
//!
//! There are no interrupts: the guest polls its used rings. A device does its work in the
//! notify exit that announces new buffers (the console also at the guest's wait exits, the
//! network card at every exit: see `virtio_net`).

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

/// Size of each device's register window.
pub const WINDOW: u64 = 0x1000;
/// The largest queue any device offers.
pub const QUEUE_SIZE: u16 = 256;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// What a device model provides behind the common register block.
pub trait VirtioDevice {
    /// The virtio device ID (3 console, 9 9P, ...).
    fn device_id(&self) -> u32;
    /// Feature bits offered besides `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64 {
        0
    }
    fn queue_count(&self) -> usize;
    /// The device-specific configuration space.
    fn config(&self) -> &[u8];
    /// The guest notified one of the queues: process what it offered.
    fn notify(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap);
    /// The driver reset the device (its queues are reset already).
    fn reset(&mut self) {}
}

/// A device's register block: feature negotiation, queue setup, status and notify.
pub struct Mmio<D> {
    pub device: D,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    status: u32,
    queue_sel: usize,
}

impl<D: VirtioDevice> Mmio<D> {
    pub fn new(device: D) -> Self {
        let queues = (0..device.queue_count())
            .map(|_| Queue::new(QUEUE_SIZE).expect("valid queue size"))
            .collect();
        Mmio {
            device,
            queues,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            status: 0,
            queue_sel: 0,
        }
    }

    /// Sets the device up as a driver would have: `VIRTIO_F_VERSION_1` negotiated, each queue
    /// `q` of `size` entries laid out from `rings + q * span` (descriptors at 0, available
    /// ring at `avail`, used ring at `used`), status DRIVER_OK. The guest is told so in its
    /// boot info (`wasmvm_abi::direct::flags::CONSOLE_READY`) and skips the exits.
    pub fn preset(&mut self, rings: u64, size: u16, span: u64, avail: u64, used: u64) {
        self.driver_features = VIRTIO_F_VERSION_1;
        for (q, queue) in self.queues.iter_mut().enumerate() {
            let base = rings + q as u64 * span;
            let split = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
            queue.set_size(size);
            let (lo, hi) = split(base);
            queue.set_desc_table_address(lo, hi);
            let (lo, hi) = split(base + avail);
            queue.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(base + used);
            queue.set_used_ring_address(lo, hi);
            queue.set_ready(true);
        }
        self.status = 0xf; // ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK
    }

    /// The device and its queues, e.g. to deliver host input outside a notify.
    pub fn parts(&mut self) -> (&mut D, &mut [Queue]) {
        (&mut self.device, &mut self.queues)
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel)
    }

    fn features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }
}

/// A register block on the MMIO bus.
pub trait MmioHandler {
    /// A guest read of `data.len()` bytes at `offset` in the window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` in the window.
    fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap);
}

impl<D: VirtioDevice> MmioHandler for Mmio<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            // Configuration space, byte granular; past its end reads as zero.
            let config = self.device.config();
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = usize::try_from(offset - 0x100 + i as u64)
                    .ok()
                    .and_then(|at| config.get(at))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        let value: u32 = match offset {
            0x000 => 0x7472_6976, // "virt"
            0x004 => 2,
            0x008 => self.device.device_id(),
            0x00c => 0x4d56_5741, // "AWVM"
            0x010 => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => match self.queue() {
                Some(_) => u32::from(QUEUE_SIZE),
                None => 0,
            },
            0x044 => self.queue().is_some_and(|q| q.ready()) as u32,
            0x070 => self.status,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) {
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
            0x050 => self.device.notify(&mut self.queues, mem),
            0x070 => {
                self.status = v;
                if v == 0 {
                    for q in &mut self.queues {
                        q.reset();
                    }
                    self.device.reset();
                }
            }
            0x080 => self.set_address(|q| q.set_desc_table_address(Some(v), None)),
            0x084 => self.set_address(|q| q.set_desc_table_address(None, Some(v))),
            0x090 => self.set_address(|q| q.set_avail_ring_address(Some(v), None)),
            0x094 => self.set_address(|q| q.set_avail_ring_address(None, Some(v))),
            0x0a0 => self.set_address(|q| q.set_used_ring_address(Some(v), None)),
            0x0a4 => self.set_address(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }
}

impl<D: VirtioDevice> Mmio<D> {
    fn set_address(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.queue() {
            set(q);
        }
    }
}

/// The queue if the guest made it ready and its rings lie in guest memory.
pub fn usable<'q>(
    queues: &'q mut [Queue],
    index: usize,
    mem: &GuestMemoryMmap,
) -> Option<&'q mut Queue> {
    queues
        .get_mut(index)
        .filter(|q| q.ready() && q.is_valid(mem))
}

type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// Appends the bytes of the chain's device-readable descriptors to `out`, refusing (false)
/// a chain whose readable part exceeds `limit` bytes or points outside guest memory.
pub fn read_chain(
    chain: &Chain<'_>,
    mem: &GuestMemoryMmap,
    limit: usize,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    for desc in chain.clone().readable() {
        let len = desc.len() as usize;
        if out.len() - start + len > limit {
            out.truncate(start);
            return false;
        }
        let at = out.len();
        out.resize(at + len, 0);
        if mem.read_slice(&mut out[at..], desc.addr()).is_err() {
            out.truncate(start);
            return false;
        }
    }
    true
}

/// The device-writable descriptors of a chain.
pub fn writable(chain: &Chain<'_>) -> Vec<Descriptor> {
    chain.clone().writable().collect()
}

/// Writes `data` across `descs` in order; returns the bytes written (short if the buffers
/// are, or if one points outside guest memory).
pub fn write_descriptors(descs: &[Descriptor], mem: &GuestMemoryMmap, data: &[u8]) -> usize {
    let mut written = 0;
    for desc in descs {
        let n = (desc.len() as usize).min(data.len() - written);
        if n == 0
            || mem
                .write_slice(&data[written..written + n], desc.addr())
                .is_err()
        {
            break;
        }
        written += n;
    }
    written
}

/// Writes the concatenation of `parts` across `descs` in order; returns the bytes written
/// (short if the buffers are, or if one points outside guest memory).
pub fn write_parts(descs: &[Descriptor], mem: &GuestMemoryMmap, parts: &[&[u8]]) -> usize {
    let mut written = 0;
    let mut parts = parts.iter().copied().filter(|p| !p.is_empty());
    let mut part = parts.next();
    for desc in descs {
        let mut at = desc.addr();
        let mut room = desc.len() as usize;
        while room > 0 {
            let Some(data) = part else {
                return written;
            };
            let n = room.min(data.len());
            if mem.write_slice(&data[..n], at).is_err() {
                return written;
            }
            written += n;
            room -= n;
            at = match at.checked_add(n as u64) {
                Some(next) => next,
                None => return written,
            };
            part = match n == data.len() {
                true => parts.next(),
                false => Some(&data[n..]),
            };
        }
    }
    written
}
