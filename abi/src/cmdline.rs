//! The kernel command line: how a VMM announces virtio-mmio devices, as
//! `virtio_mmio.device=SIZE@ADDR:IRQ` words (the convention of Linux, QEMU microvm and
//! Firecracker). Our VMM writes these words and the kernel reads them.

/// One announced virtio-mmio register block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}

const KEY: &str = "virtio_mmio.device=";

/// The announced devices, in command-line order; malformed words are skipped.
pub fn virtio_mmio_devices(cmdline: &[u8]) -> impl Iterator<Item = MmioDevice> + '_ {
    cmdline
        .split(|&b| b == b' ' || b == b'\n' || b == b'\t')
        .filter_map(|word| core::str::from_utf8(word).ok()?.strip_prefix(KEY))
        .filter_map(parse_device)
}

/// Parses `SIZE@ADDR:IRQ` where SIZE is decimal with an optional `K` or `M` suffix and ADDR
/// is hexadecimal with `0x`.
pub fn parse_device(spec: &str) -> Option<MmioDevice> {
    let (size, rest) = spec.split_once('@')?;
    let (addr, irq) = rest.split_once(':').unwrap_or((rest, "0"));
    let size = if let Some(k) = size.strip_suffix(['K', 'k']) {
        k.parse::<u64>().ok()?.checked_mul(1 << 10)?
    } else if let Some(m) = size.strip_suffix(['M', 'm']) {
        m.parse::<u64>().ok()?.checked_mul(1 << 20)?
    } else {
        size.parse::<u64>().ok()?
    };
    let addr = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
    Some(MmioDevice {
        addr,
        size,
        irq: irq.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_and_firecracker_forms() {
        let line = b"console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                     virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=bogus";
        let mut it = virtio_mmio_devices(line);
        assert_eq!(
            it.next(),
            Some(MmioDevice {
                addr: 0xfeb0_0e00,
                size: 512,
                irq: 12
            })
        );
        assert_eq!(
            it.next(),
            Some(MmioDevice {
                addr: 0xd000_0000,
                size: 4096,
                irq: 5
            })
        );
        assert_eq!(it.next(), None);
        assert_eq!(parse_device("512@feb00000:1"), None);
        assert_eq!(parse_device("99999999999999999999K@0x1:1"), None);
    }
}
