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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::network::Publish;

    fn line(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The value after the last `flag` whose value starts with `prefix`.
    fn value<'a>(args: &'a [OsString], flag: &str, prefix: &str) -> Option<&'a OsString> {
        args.windows(2)
            .filter(|w| w[0] == flag && w[1].to_string_lossy().starts_with(prefix))
            .map(|w| &w[1])
            .next_back()
    }

    #[test]
    fn a_plain_run_is_a_microvm_with_the_channel_and_the_exit_port() {
        let args = command_line(
            Path::new("/i/app.img"),
            Path::new("/tmp/run"),
            96,
            Accel::Kvm,
            &[],
            None,
        );
        let l = line(&args);
        assert!(
            l.starts_with("-nodefaults -no-user-config -no-reboot"),
            "{l}"
        );
        assert!(
            l.contains("-M microvm,pit=off,pic=off,rtc=off,isa-serial=off,acpi=off -accel kvm"),
            "{l}"
        );
        assert!(l.contains(&format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1")));
        assert!(l.contains(&format!("socket,id=wasmvm,fd={CHANNEL_FD}")));
        assert!(
            l.contains("-device virtconsole,chardev=wasmvm -m 96M"),
            "{l}"
        );
        assert!(l.ends_with("-kernel /i/app.img -initrd /tmp/run"), "{l}");
        assert!(!l.contains("-netdev") && !l.contains("-fsdev"), "{l}");
        let tcg = command_line(Path::new("a"), Path::new("b"), 64, Accel::Tcg, &[], None);
        assert!(line(&tcg).contains("-accel tcg"));
    }

    #[test]
    fn shares_are_9p_devices_tagged_in_order_with_commas_escaped() {
        let shares = [
            ShareSpec {
                host: "/srv/a,b".into(),
                guest: b"/data".to_vec(),
                read_only: false,
            },
            ShareSpec {
                host: "/etc/app".into(),
                guest: b"/etc/app".to_vec(),
                read_only: true,
            },
        ];
        let args = command_line(
            Path::new("a"),
            Path::new("b"),
            64,
            Accel::Kvm,
            &shares,
            None,
        );
        assert_eq!(
            value(&args, "-fsdev", "local,id=share0").unwrap(),
            "local,id=share0,security_model=none,path=/srv/a,,b"
        );
        assert_eq!(
            value(&args, "-fsdev", "local,id=share1").unwrap(),
            "local,id=share1,security_model=none,path=/etc/app,readonly=on"
        );
        for i in 0..2 {
            let device = format!("virtio-9p-device,fsdev=share{i},mount_tag={}", share_tag(i));
            assert!(
                value(&args, "-device", &device).is_some(),
                "{}",
                line(&args)
            );
        }
    }

    #[test]
    fn the_user_network_forwards_published_ports_and_tap_names_are_escaped() {
        let plan = NetPlan {
            nic: Nic::User,
            publish: vec![
                Publish::parse("127.0.0.1:8080:80").unwrap(),
                Publish::parse("5353:53/udp").unwrap(),
            ],
            mtu: 1500,
            config: None,
        };
        let args = command_line(
            Path::new("a"),
            Path::new("b"),
            64,
            Accel::Kvm,
            &[],
            Some(&plan),
        );
        let netdev = value(&args, "-netdev", "user").unwrap().to_string_lossy();
        assert!(
            netdev.contains("net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3"),
            "{netdev}"
        );
        assert!(
            netdev.contains(",hostfwd=tcp:127.0.0.1:8080-:80"),
            "{netdev}"
        );
        assert!(netdev.contains(",hostfwd=udp:0.0.0.0:5353-:53"), "{netdev}");
        assert!(
            value(
                &args,
                "-device",
                "virtio-net-device,netdev=net0,mac=52:54:00"
            )
            .is_some(),
            "{}",
            line(&args)
        );
        let tap = NetPlan {
            nic: Nic::Tap("tap,0".into()),
            ..plan
        };
        let args = command_line(
            Path::new("a"),
            Path::new("b"),
            64,
            Accel::Kvm,
            &[],
            Some(&tap),
        );
        assert_eq!(
            value(&args, "-netdev", "tap").unwrap(),
            "tap,id=net0,script=no,downscript=no,ifname=tap,,0"
        );
    }
}
