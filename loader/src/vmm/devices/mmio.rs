//! The virtio-mmio (version 2) register block every device of the built-in VMM sits behind,
//! and bounded helpers to move bytes through descriptor chains. Queues are `virtio-queue`
//! queues, which validate every descriptor against guest memory; nothing here trusts a guest
//! address or length.
//!
//! There are no interrupts: the guest polls its used rings. A device does its work in the
//! notify exit that announces new buffers (the console also at the guest's wait exits, the
//! network card at every exit: see `devices::net`).
//!
//! The device status follows the virtio 1.2 state machine (section 3.1.1): the driver sets
//! ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK in that order and clears bits only by
//! writing 0 (a reset). FEATURES_OK sticks only for features the device offered, with
//! VIRTIO_F_VERSION_1; features are fixed from then on; a notify reaches the device only
//! after DRIVER_OK. Whatever breaks these rules is ignored and counted
//! ([`Mmio::violations`]), never acted on.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

/// Size of each device's register window.
pub const WINDOW: u64 = 0x1000;
/// The largest queue any device offers.
pub const QUEUE_SIZE: u16 = 256;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// The virtio-mmio register offsets (virtio 1.2, section 4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// The device-specific configuration space starts here.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// "AWVM": our vendor ID.
const VENDOR: u32 = 0x4d56_5741;

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
    /// Driver actions that broke the virtio rules and were ignored.
    violations: u64,
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
            violations: 0,
        }
    }

    /// How many driver actions broke the virtio rules (a notify before DRIVER_OK, a status
    /// write that clears bits or skips a step, features changed after FEATURES_OK) and were
    /// ignored.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// A status write other than 0: accepted only if it keeps every bit already set and adds
    /// the next steps in order; FEATURES_OK only for features the device can honour.
    fn set_status(&mut self, new: u32) {
        use status::*;
        let order = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];
        let keeps_bits = new & self.status == self.status;
        // Each step needs all the ones before it.
        let in_order = order
            .iter()
            .enumerate()
            .all(|(i, bit)| new & bit == 0 || order[..i].iter().all(|b| new & b != 0));
        if !keeps_bits || !in_order {
            self.violations += 1;
            return;
        }
        let mut new = new;
        if new & FEATURES_OK != 0 && self.status & FEATURES_OK == 0 {
            let offered = self.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // The driver reads the status back and sees the refusal.
                self.violations += 1;
                new &= !(FEATURES_OK | DRIVER_OK);
            }
        }
        self.status = new;
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
        self.status =
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
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
        if offset >= reg::CONFIG {
            // Configuration space, byte granular; past its end reads as zero.
            let config = self.device.config();
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = usize::try_from(offset - reg::CONFIG + i as u64)
                    .ok()
                    .and_then(|at| config.get(at))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        let value: u32 = match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => match self.queue() {
                Some(_) => u32::from(QUEUE_SIZE),
                None => 0,
            },
            reg::QUEUE_READY => self.queue().is_some_and(|q| q.ready()) as u32,
            reg::STATUS => self.status,
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
        let features_fixed = self.status & status::FEATURES_OK != 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES if features_fixed => self.violations += 1,
            reg::DRIVER_FEATURES => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                1 => {
                    self.driver_features = (self.driver_features & 0xffff_ffff) | ((v as u64) << 32)
                }
                _ => {}
            },
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::QUEUE_SEL => self.queue_sel = v as usize,
            reg::QUEUE_NUM => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_NOTIFY if self.status & status::DRIVER_OK == 0 => self.violations += 1,
            reg::QUEUE_NOTIFY => self.device.notify(&mut self.queues, mem),
            reg::STATUS if v == 0 => {
                self.status = 0;
                self.driver_features = 0;
                for q in &mut self.queues {
                    q.reset();
                }
                self.device.reset();
            }
            reg::STATUS => self.set_status(v),
            reg::QUEUE_DESC_LOW => self.set_address(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.set_address(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_AVAIL_LOW => self.set_address(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_AVAIL_HIGH => self.set_address(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_USED_LOW => self.set_address(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_USED_HIGH => self.set_address(|q| q.set_used_ring_address(None, Some(v))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// A device that records what the transport hands it.
    #[derive(Default)]
    struct Dummy {
        notifies: usize,
        resets: usize,
        /// Bytes of the readable descriptors of every chain it was offered.
        read: Vec<Vec<u8>>,
        read_refused: usize,
    }

    const DUMMY_FEATURE: u64 = 1 << 3;

    impl VirtioDevice for Dummy {
        fn device_id(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            DUMMY_FEATURE
        }
        fn queue_count(&self) -> usize {
            1
        }
        fn config(&self) -> &[u8] {
            &[1, 2, 3]
        }
        fn notify(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) {
            self.notifies += 1;
            let Some(q) = usable(queues, 0, mem) else {
                return;
            };
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let mut out = Vec::new();
                match read_chain(&chain, mem, 1 << 20, &mut out) {
                    true => self.read.push(out),
                    false => self.read_refused += 1,
                }
            }
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    const MEM: usize = 1 << 20;
    const RINGS: u64 = 0x1000;
    const QSIZE: u16 = 8;

    struct Bench {
        mem: GuestMemoryMmap,
        dev: Mmio<Dummy>,
    }

    impl Bench {
        fn new() -> Bench {
            Bench {
                mem: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
                dev: Mmio::new(Dummy::default()),
            }
        }
        fn w(&mut self, offset: u64, v: u32) {
            self.dev.write(offset, &v.to_le_bytes(), &self.mem);
        }
        fn r(&mut self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.dev.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        /// A driver's negotiation up to FEATURES_OK, accepting `features`.
        fn negotiate(&mut self, features: u64) -> u32 {
            self.w(reg::STATUS, 0);
            self.w(reg::STATUS, status::ACKNOWLEDGE);
            self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w(reg::DRIVER_FEATURES_SEL, 0);
            self.w(reg::DRIVER_FEATURES, features as u32);
            self.w(reg::DRIVER_FEATURES_SEL, 1);
            self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
            self.w(
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            self.r(reg::STATUS)
        }
        /// Queue 0 at RINGS: descriptors, available ring at +0x400, used ring at +0x800.
        fn set_up_queue(&mut self) {
            self.w(reg::QUEUE_SEL, 0);
            self.w(reg::QUEUE_NUM, u32::from(QSIZE));
            self.w(reg::QUEUE_DESC_LOW, RINGS as u32);
            self.w(reg::QUEUE_AVAIL_LOW, (RINGS + 0x400) as u32);
            self.w(reg::QUEUE_USED_LOW, (RINGS + 0x800) as u32);
            self.w(reg::QUEUE_READY, 1);
        }
        fn driver_ok(&mut self) {
            self.w(reg::STATUS, 0xf);
        }
        /// Writes descriptor `i`: (addr, len, flags, next).
        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(RINGS + u64::from(i) * 16))
                .unwrap();
        }
        /// Offers the chain headed by descriptor `head` as available entry `slot`.
        fn offer(&self, slot: u16, head: u16) {
            let avail = RINGS + 0x400;
            self.mem
                .write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.mem
                .write_obj(slot + 1, GuestAddress(avail + 2))
                .unwrap();
        }
    }

    const NEXT: u16 = 1;

    #[test]
    fn identification_registers_and_config_space() {
        let mut b = Bench::new();
        assert_eq!(b.r(reg::MAGIC_VALUE), MAGIC);
        assert_eq!(b.r(reg::VERSION), 2);
        assert_eq!(b.r(reg::DEVICE_ID), 42);
        assert_eq!(b.r(reg::VENDOR_ID), VENDOR);
        b.w(reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(b.r(reg::DEVICE_FEATURES), DUMMY_FEATURE as u32);
        b.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(b.r(reg::DEVICE_FEATURES), 1, "VIRTIO_F_VERSION_1");
        b.w(reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(b.r(reg::DEVICE_FEATURES), 0);
        // Config space is byte granular; past its end (and far past) reads zero.
        let mut bytes = [0xffu8; 4];
        b.dev.read(reg::CONFIG + 1, &mut bytes);
        assert_eq!(bytes, [2, 3, 0, 0]);
        b.dev.read(WINDOW - 1, &mut bytes[..1]);
        assert_eq!(bytes[0], 0);
        // An unknown register reads zero and ignores writes.
        assert_eq!(b.r(0x0fc), 0);
        b.w(0x0fc, 5);
    }

    #[test]
    fn a_driver_that_follows_the_rules_reaches_driver_ok() {
        let mut b = Bench::new();
        let s = b.negotiate(VIRTIO_F_VERSION_1 | DUMMY_FEATURE);
        assert_ne!(s & status::FEATURES_OK, 0);
        b.set_up_queue();
        assert_eq!(b.r(reg::QUEUE_READY), 1);
        b.driver_ok();
        assert_eq!(b.r(reg::STATUS), 0xf);
        assert_eq!(b.dev.violations(), 0);
        b.w(reg::QUEUE_NOTIFY, 0);
        assert_eq!(b.dev.device.notifies, 1);
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_features() {
        let mut b = Bench::new();
        assert_eq!(b.negotiate(DUMMY_FEATURE) & status::FEATURES_OK, 0);
        assert_eq!(
            b.negotiate(VIRTIO_F_VERSION_1 | 1 << 40) & status::FEATURES_OK,
            0,
            "a feature the device never offered"
        );
        assert_eq!(b.dev.violations(), 2);
        // Refused, DRIVER_OK cannot follow either.
        b.driver_ok();
        assert_eq!(b.r(reg::STATUS) & status::DRIVER_OK, 0);
    }

    #[test]
    fn features_are_fixed_once_accepted() {
        let mut b = Bench::new();
        b.negotiate(VIRTIO_F_VERSION_1);
        b.w(reg::DRIVER_FEATURES_SEL, 0);
        b.w(reg::DRIVER_FEATURES, DUMMY_FEATURE as u32);
        assert_eq!(b.dev.driver_features, VIRTIO_F_VERSION_1);
        assert_eq!(b.dev.violations(), 1);
    }

    #[test]
    fn status_bits_are_only_set_in_order_and_cleared_by_reset() {
        let mut b = Bench::new();
        // DRIVER_OK straight away, and DRIVER without ACKNOWLEDGE: both ignored.
        b.w(reg::STATUS, status::DRIVER_OK);
        b.w(reg::STATUS, status::DRIVER);
        assert_eq!(b.r(reg::STATUS), 0);
        b.negotiate(VIRTIO_F_VERSION_1);
        b.driver_ok();
        // Clearing a bit without a reset: ignored.
        b.w(reg::STATUS, status::ACKNOWLEDGE);
        assert_eq!(b.r(reg::STATUS), 0xf);
        assert_eq!(b.dev.violations(), 3);
        // FAILED may be added at any time.
        b.w(reg::STATUS, 0xf | status::FAILED);
        assert_eq!(b.r(reg::STATUS), 0xf | status::FAILED);
        // A reset clears everything: status, queues, negotiated features, and the device.
        b.w(reg::STATUS, 0);
        assert_eq!(b.r(reg::STATUS), 0);
        assert_eq!(b.r(reg::QUEUE_READY), 0);
        assert_eq!(b.dev.driver_features, 0);
        // Once in `negotiate`, once now.
        assert_eq!(b.dev.device.resets, 2);
    }

    #[test]
    fn a_notify_before_driver_ok_is_ignored_and_counted() {
        let mut b = Bench::new();
        b.w(reg::QUEUE_NOTIFY, 0);
        b.negotiate(VIRTIO_F_VERSION_1);
        b.set_up_queue();
        b.w(reg::QUEUE_NOTIFY, 0);
        assert_eq!(b.dev.device.notifies, 0);
        assert_eq!(b.dev.violations(), 2);
    }

    #[test]
    fn an_out_of_range_queue_index_touches_nothing() {
        let mut b = Bench::new();
        b.negotiate(VIRTIO_F_VERSION_1);
        for sel in [1, 255, u32::MAX] {
            b.w(reg::QUEUE_SEL, sel);
            assert_eq!(b.r(reg::QUEUE_NUM_MAX), 0, "queue {sel}");
            b.w(reg::QUEUE_NUM, 4);
            b.w(reg::QUEUE_DESC_LOW, 0x1000);
            b.w(reg::QUEUE_DESC_HIGH, 0xffff_ffff);
            b.w(reg::QUEUE_READY, 1);
            assert_eq!(b.r(reg::QUEUE_READY), 0, "queue {sel}");
        }
        b.w(reg::QUEUE_SEL, 0);
        assert_eq!(b.r(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        assert_eq!(b.r(reg::QUEUE_READY), 0);
    }

    #[test]
    fn rings_outside_guest_memory_make_the_queue_unusable() {
        let mut b = Bench::new();
        b.negotiate(VIRTIO_F_VERSION_1);
        b.set_up_queue();
        b.w(reg::QUEUE_AVAIL_LOW, 0xffff_f000);
        b.w(reg::QUEUE_AVAIL_HIGH, 0xffff);
        b.driver_ok();
        b.w(reg::QUEUE_NOTIFY, 0);
        assert_eq!(b.dev.device.notifies, 1);
        assert!(b.dev.device.read.is_empty());
        assert_eq!(b.dev.device.read_refused, 0);
    }

    #[test]
    fn hostile_descriptor_chains_end_and_read_nothing_outside_memory() {
        let mut b = Bench::new();
        b.negotiate(VIRTIO_F_VERSION_1);
        b.set_up_queue();
        b.driver_ok();
        b.mem.write_slice(b"hello", GuestAddress(0x8000)).unwrap();
        // 0: a sound one-descriptor chain.
        b.desc(0, 0x8000, 5, 0, 0);
        // 1 -> 2 -> 1: a loop.
        b.desc(1, 0x8000, 5, NEXT, 2);
        b.desc(2, 0x8000, 5, NEXT, 1);
        // 3: a buffer past the end of guest memory.
        b.desc(3, MEM as u64 - 2, 5, 0, 0);
        // 4: a next index past the table.
        b.desc(4, 0x8000, 5, NEXT, 200);
        for (slot, head) in [0, 1, 3, 4].into_iter().enumerate() {
            b.offer(slot as u16, head);
        }
        b.w(reg::QUEUE_NOTIFY, 0);
        let dummy = &b.dev.device;
        assert_eq!(dummy.read[0], b"hello");
        // The loop ends after at most a queue's worth of descriptors.
        let looped = dummy.read.get(1).map_or(0, Vec::len);
        assert!(looped <= 5 * usize::from(QSIZE), "{looped}");
        // The buffer past the end of memory is refused, not read.
        assert_eq!(dummy.read_refused, 1);
        assert_eq!(dummy.read.len() + dummy.read_refused, 4);
    }

    #[test]
    fn writes_stop_at_the_end_of_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        let descs = [
            Descriptor::new(0x1000, 4, 0, 0),
            Descriptor::new(0x1ffe, 8, 0, 0),
        ];
        assert_eq!(write_descriptors(&descs, &mem, b"abcdefgh"), 4);
        assert_eq!(write_parts(&descs, &mem, &[b"ab", b"cdefgh"]), 4);
        let far = [Descriptor::new(u64::MAX - 1, 8, 0, 0)];
        assert_eq!(write_parts(&far, &mem, &[b"x"]), 0);
    }
}
