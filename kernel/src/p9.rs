//! virtio-9p transports for live host directories (`wasmvm run --dir`): one device per
//! share, found by its mount tag (`wasmvm_abi::bundle::share_tag`), one request in flight.
//! The WASI layer speaks 9P2000.L through [`transact`]; this module only moves messages.
//! The same driver serves QEMU's `-fsdev local` and the built-in VMM's server.

use alloc::vec;
use alloc::vec::Vec;

use spin::Mutex;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};
use wasmvm_abi::p9::MAX_MSIZE;

use crate::virtio::{KernelHal, Pinned};

/// `VIRTIO_F_VERSION_1` and `VIRTIO_9P_MOUNT_TAG`.
const FEATURES: u64 = (1 << 32) | 1;
/// One request at a time needs two descriptors; a few spare.
const QUEUE_SIZE: usize = 4;
/// Mount tags longer than this are not ours.
const MAX_TAG: usize = 32;

struct Share {
    transport: MmioTransport<'static>,
    queue: VirtQueue<KernelHal, QUEUE_SIZE>,
    /// Receives each reply; as large as the largest message a server may send.
    reply: Vec<u8>,
}

static SHARES: Mutex<Vec<Option<Pinned<Share>>>> = Mutex::new(Vec::new());

/// Reads the mount tag from the configuration space (`u16` length, then the bytes): four
/// bytes per access where they all lie inside it (each access is an exit), then single
/// bytes (QEMU answers an access reaching past the end with garbage).
fn mount_tag(transport: &MmioTransport<'static>) -> Option<Vec<u8>> {
    let len = transport.read_config_space::<u16>(0).ok()? as usize;
    if len > MAX_TAG {
        return None;
    }
    let end = 2 + len;
    let mut config = Vec::with_capacity(end);
    while config.len() + 4 <= end {
        let word: u32 = transport.read_config_space(config.len()).ok()?;
        config.extend_from_slice(&word.to_le_bytes());
    }
    while config.len() < end {
        config.push(transport.read_config_space::<u8>(config.len()).ok()?);
    }
    Some(config[2..].to_vec())
}

/// Takes a 9P device found on the command line if its tag names one of ours
/// (`wasmvmN`); returns the share number.
pub fn attach(mut transport: MmioTransport<'static>) -> Option<usize> {
    let tag = mount_tag(&transport)?;
    let index: usize = core::str::from_utf8(tag.strip_prefix(b"wasmvm")?)
        .ok()?
        .parse()
        .ok()?;
    transport.set_status(DeviceStatus::empty());
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = transport.read_device_features();
    transport.write_driver_features(offered & FEATURES);
    transport
        .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    let queue = VirtQueue::new(&mut transport, 0, false, false).ok()?;
    transport.set_status(
        DeviceStatus::ACKNOWLEDGE
            | DeviceStatus::DRIVER
            | DeviceStatus::FEATURES_OK
            | DeviceStatus::DRIVER_OK,
    );
    let mut shares = SHARES.lock();
    if shares.len() <= index {
        shares.resize_with(index + 1, || None);
    }
    shares[index] = Some(Pinned(Share {
        transport,
        queue,
        reply: vec![0; MAX_MSIZE as usize],
    }));
    Some(index)
}

/// Whether share `index` has a device.
pub fn present(index: usize) -> bool {
    SHARES.lock().get(index).is_some_and(Option::is_some)
}

/// Sends one request to share `index` and puts the reply in `reply`. False if the share has
/// no device or the device failed; the WASI call then fails with EIO.
pub fn transact(index: usize, request: &[u8], reply: &mut Vec<u8>) -> bool {
    let mut shares = SHARES.lock();
    let Some(Some(Pinned(share))) = shares.get_mut(index) else {
        return false;
    };
    let Share {
        transport,
        queue,
        reply: buf,
    } = share;
    let inputs = [request];
    let mut outputs = [&mut buf[..]];
    match queue.add_notify_wait_pop(&inputs, &mut outputs, transport) {
        Ok(len) => {
            let len = (len as usize).min(buf.len());
            reply.clear();
            reply.extend_from_slice(&buf[..len]);
            true
        }
        Err(_) => false,
    }
}
