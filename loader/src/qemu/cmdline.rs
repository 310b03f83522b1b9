//! The QEMU command line for a run: pure data, built without starting anything, so every
//! option is unit-tested.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use wasmvm_abi::bundle::share_tag;
use wasmvm_abi::exit::EXIT_PORT;

use super::Accel;
use crate::run::ShareSpec;
use crate::run::network::{NetPlan, Nic, Proto};

/// The fd number QEMU finds the channel socket at.
pub const CHANNEL_FD: i32 = 3;

/// Appends `value` to a QEMU option, doubling commas (QEMU's escape).
fn push_escaped(option: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        option.push(b);
        if b == b',' {
            option.push(b',');
        }
    }
}

/// The network card's options: QEMU's user-mode network (libslirp) with the addressing plan
/// of `wasmvm_abi::net` and one `hostfwd` per published port, or a tap device.
fn netdev(plan: &NetPlan) -> Vec<u8> {
    let mut netdev = Vec::new();
    match &plan.nic {
        Nic::User => {
            netdev.extend_from_slice(
                b"user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,ipv6=off",
            );
            for p in &plan.publish {
                let proto = match p.proto {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                };
                netdev.extend_from_slice(
                    format!(
                        ",hostfwd={proto}:{}:{}-:{}",
                        p.host_addr, p.host_port, p.guest_port
                    )
                    .as_bytes(),
                );
            }
        }
        Nic::Tap(name) => {
            netdev.extend_from_slice(b"tap,id=net0,script=no,downscript=no,ifname=");
            push_escaped(&mut netdev, name.as_bytes());
        }
    }
    netdev
}

/// The QEMU command line for `image`, without the process plumbing.
pub fn command_line(
    image: &Path,
    run_config: &Path,
    memory_mib: u64,
    accel: Accel,
    shares: &[ShareSpec],
    net: Option<&NetPlan>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-M",
        "microvm,pit=off,pic=off,rtc=off,isa-serial=off,acpi=off",
        "-accel",
        match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        },
        "-smp",
        "1",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-device",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1").into());
    args.extend(
        [
            "-chardev",
            &format!("socket,id=wasmvm,fd={CHANNEL_FD}"),
            "-device",
            "virtio-serial-device,max_ports=1",
            "-device",
            "virtconsole,chardev=wasmvm",
            "-m",
            &format!("{memory_mib}M"),
        ]
        .iter()
        .map(OsString::from),
    );
    // Live directories: QEMU's own 9P server, one virtio-9p device per share, tagged as the
    // kernel expects (`share_tag`). Commas in a path are doubled, QEMU's option escape.
    for (i, share) in shares.iter().enumerate() {
        let mut fsdev = format!("local,id=share{i},security_model=none,path=").into_bytes();
        push_escaped(&mut fsdev, share.host.as_os_str().as_bytes());
        if share.read_only {
            fsdev.extend_from_slice(b",readonly=on");
        }
        args.push("-fsdev".into());
        args.push(OsString::from_vec(fsdev));
        args.push("-device".into());
        args.push(format!("virtio-9p-device,fsdev=share{i},mount_tag={}", share_tag(i)).into());
    }
    // The network card after the shares, as on the built-in VMM (the kernel finds it by its
    // device ID wherever it is).
    if let Some(plan) = net {
        let [a, b, c, d, e, f] = wasmvm_abi::net::GUEST_MAC;
        args.push("-netdev".into());
        args.push(OsString::from_vec(netdev(plan)));
        args.push("-device".into());
        args.push(
            format!(
                "virtio-net-device,netdev=net0,mac={a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}"
            )
            .into(),
        );
    }
    args.push("-kernel".into());
    args.push(image.into());
    args.push("-initrd".into());
    args.push(run_config.into());
    args
}

