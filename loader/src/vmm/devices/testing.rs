//! A test-only virtio driver: the guest's side of a device behind [`Mmio`], through real
//! guest memory, for the device models' unit tests.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{Mmio, MmioHandler, VirtioDevice, reg, status};

pub const QSIZE: u16 = 8;
/// Queue `q`'s rings at `RINGS + q * 0x1000`: descriptors, available ring at +0x400, used
/// ring at +0x800.
pub const RINGS: u64 = 0x10000;
/// Where the tests put their buffers (above every ring).
pub const BUFFERS: u64 = 0x100000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A device set up as a virtio driver would: features accepted, every queue ready.
pub struct Driver<D> {
    pub mem: GuestMemoryMmap,
    pub dev: Mmio<D>,
    next_desc: Vec<u16>,
    avail: Vec<u16>,
    used_seen: Vec<u16>,
}

impl<D: VirtioDevice> Driver<D> {
    /// `device` behind its register block in `mem_size` bytes of guest memory, negotiated
    /// (every offered feature, `VIRTIO_F_VERSION_1` among them) up to DRIVER_OK.
    pub fn new(device: D, mem_size: usize) -> Self {
        let queues = device.queue_count();
        let mut d = Driver {
            mem: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size)]).unwrap(),
            dev: Mmio::new(device),
            next_desc: vec![0; queues],
            avail: vec![0; queues],
            used_seen: vec![0; queues],
        };
        d.w(reg::STATUS, 0);
        d.w(reg::STATUS, status::ACKNOWLEDGE);
        d.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2 {
            d.w(reg::DEVICE_FEATURES_SEL, sel);
            let offered = d.r(reg::DEVICE_FEATURES);
            d.w(reg::DRIVER_FEATURES_SEL, sel);
            d.w(reg::DRIVER_FEATURES, offered);
        }
        d.w(reg::STATUS, 0xb);
        assert_ne!(d.r(reg::STATUS) & status::FEATURES_OK, 0);
        for q in 0..queues as u64 {
            let base = RINGS + q * 0x1000;
            d.w(reg::QUEUE_SEL, q as u32);
            d.w(reg::QUEUE_NUM, u32::from(QSIZE));
            d.w(reg::QUEUE_DESC_LOW, base as u32);
            d.w(reg::QUEUE_AVAIL_LOW, (base + 0x400) as u32);
            d.w(reg::QUEUE_USED_LOW, (base + 0x800) as u32);
            d.w(reg::QUEUE_READY, 1);
        }
        d.w(reg::STATUS, 0xf);
        assert_eq!(d.r(reg::STATUS), 0xf);
        assert_eq!(d.dev.violations(), 0);
        d
    }

    /// A register write.
    pub fn w(&mut self, offset: u64, v: u32) {
        self.dev.write(offset, &v.to_le_bytes(), &self.mem);
    }

    /// A register read.
    pub fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The first `len` bytes of the configuration space.
    pub fn config(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.dev.read(reg::CONFIG, &mut bytes);
        bytes
    }

    /// The guest writes `bytes` at `addr`.
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    /// Offers one chain of `(address, length, device-writable)` buffers on queue `q`;
    /// returns its head descriptor's index.
    pub fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let base = RINGS + q as u64 * 0x1000;
        let head = self.next_desc[q];
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let mut flags = if write { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let at = base + u64::from(index) * 16;
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj((index + 1) % QSIZE, GuestAddress(at + 14))
                .unwrap();
        }
        self.next_desc[q] = (head + bufs.len() as u16) % QSIZE;
        let slot = base + 0x400 + 4 + u64::from(self.avail[q] % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(base + 0x400 + 2))
            .unwrap();
        head
    }

    /// The guest's QueueNotify write for queue `q`.
    pub fn notify(&mut self, q: u32) {
        self.w(reg::QUEUE_NOTIFY, q);
    }

    /// The used entries (head, length) the device returned on queue `q` since last time.
    pub fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let base = RINGS + q as u64 * 0x1000 + 0x800;
        let idx = self.mem.read_obj::<u16>(GuestAddress(base + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let at = base + 4 + u64::from(self.used_seen[q] % QSIZE) * 8;
            let id = self.mem.read_obj::<u32>(GuestAddress(at)).unwrap();
            let len = self.mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }
}
