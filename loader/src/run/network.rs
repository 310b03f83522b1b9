//! The host side of the guest's network: what a run asks for (`--network`, `-p/--publish`,
//! `--listen`, `--ip`/`--gateway`), whether the VM gets a network card at all, and the checks
//! made before any backend starts (published host ports free, addresses ours).
//!
//! The card itself is `vmm::devices::net` on the built-in VMM (with a frame link: passt
//! for the user-mode network, or a tap device) and QEMU's `virtio-net-device` with its own
//! user-mode network (libslirp) or tap backend. Both user-mode networks use the addressing
//! plan of `wasmvm_abi::net`: the guest is 10.0.2.15/24, the host's loopback services answer
//! at 10.0.2.2, DNS at 10.0.2.3.

use std::fmt;
use std::net::Ipv4Addr;

use thiserror::Error;
use wasmvm_abi::bundle::Manifest;
use wasmvm_abi::net::{DEFAULT_MTU, Listen, MAX_MTU, NetConfig};

/// The link MTU of the built-in VMM's user-mode network (passt's default, the largest IPv4
/// packet in 32-bit words): fewer, larger frames mean fewer exits.
pub const BUILTIN_USER_MTU: u16 = MAX_MTU;
/// The link MTU of QEMU's user-mode network (libslirp's fixed interface MTU).
pub const QEMU_USER_MTU: u16 = DEFAULT_MTU;
/// The link MTU of a tap device (the kernel's default for a new one).
pub const TAP_MTU: u16 = DEFAULT_MTU;

/// WasmEdge's socket functions: a module that imports any of them makes connections of its
/// own, so it gets a network card even without listeners or published ports.
const SOCKET_IMPORTS: [&str; 4] = ["sock_open", "sock_connect", "sock_bind", "sock_getaddrinfo"];

/// `--network`: which network card, if any, the VM gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// The user-mode network: the guest reaches what the host reaches, unprivileged.
    User,
    /// No network card.
    None,
    /// An existing tap device on the host (`--network tap:IFNAME`).
    Tap(String),
}

impl NetworkMode {
    /// Parses `user`, `none` or `tap:IFNAME`.
    pub fn parse(spec: &str) -> Result<NetworkMode, String> {
        match spec {
            "user" => Ok(NetworkMode::User),
            "none" => Ok(NetworkMode::None),
            _ => match spec.strip_prefix("tap:") {
                Some(name) => {
                    check_ifname(name)?;
                    Ok(NetworkMode::Tap(name.to_string()))
                }
                None => Err(format!(
                    "`{spec}` is not a network: use user, none or tap:IFNAME"
                )),
            },
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::User => f.write_str("user"),
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Tap(name) => write!(f, "tap:{name}"),
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
fn check_ifname(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    match valid {
        true => Ok(()),
        false => Err(format!(
            "`{name}` is not an interface name (1 to 15 characters, no `/`, `:` or spaces)"
        )),
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `-p/--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]`: the host listens on
/// `host_addr:host_port` and forwards to the guest's `guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub proto: Proto,
    /// `0.0.0.0` (the default) for every host address, as `docker -p`.
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl Publish {
    pub fn parse(spec: &str) -> Result<Publish, String> {
        let bad = |why: &str| format!("`{spec}`: {why}");
        let (ports, proto) = match spec.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Proto::Tcp),
            Some((ports, "udp")) => (ports, Proto::Udp),
            Some((_, other)) => {
                return Err(bad(&format!(
                    "unknown protocol `{other}` (use /tcp or /udp)"
                )));
            }
            None => (spec, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (addr, host, guest) = match parts[..] {
            [host, guest] => (None, host, guest),
            [addr, host, guest] => (Some(addr), host, guest),
            [_] => {
                return Err(bad("give both ports, HOST_PORT:GUEST_PORT (e.g. 8080:80)"));
            }
            _ => {
                return Err(bad(
                    "not of the form [HOST_ADDR:]HOST_PORT:GUEST_PORT (IPv4 only)",
                ));
            }
        };
        let host_addr = match addr {
            Some(a) => a
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(&format!("`{a}` is not an IPv4 address like 127.0.0.1")))?,
            None => Ipv4Addr::UNSPECIFIED,
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("`{p}` is not a port from 1 to 65535"))),
        };
        Ok(Publish {
            proto,
            host_addr,
            host_port: port(host)?,
            guest_port: port(guest)?,
        })
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}/{}",
            self.host_addr, self.host_port, self.guest_port, self.proto
        )
    }
}

/// `--ip ADDR/PREFIX`: a static address for the guest on a tap network.
pub fn parse_cidr(spec: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad =
        || format!("`{spec}` is not an IPv4 address with a prefix length, like 192.168.100.2/24");
    let (addr, prefix) = spec.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix == 0 || prefix > 30 || addr.is_unspecified() || addr.is_broadcast() {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// The network card a run attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// passt on the built-in VMM, libslirp on QEMU.
    User,
    Tap(String),
}

/// What [`plan`] decided for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub nic: Nic,
    /// Host ports forwarded to the guest (user mode only).
    pub publish: Vec<Publish>,
    /// The guest's static settings for the run configuration; `None` makes it ask DHCP.
    pub config: Option<NetConfig>,
    /// The link MTU the device reports.
    pub mtu: u16,
}

#[derive(Debug, Error)]
pub enum NetError {
    #[error(
        "passt is not installed (`{0}` was not found): apt install passt, or run without a network (--network none)"
    )]
    PasstMissing(String),
    #[error("cannot start passt (`{path}`): {cause}")]
    PasstSpawn { path: String, cause: std::io::Error },
    #[error("passt failed to start the user-mode network ({status}){}", detail(.stderr))]
    PasstFailed { status: String, stderr: String },
    #[error("passt did not answer within {secs} s{}", detail(.stderr))]
    PasstTimeout { secs: u64, stderr: String },
    #[error("host {}port {port}{} is already in use", proto_word(*.proto), on_addr(*.addr))]
    PortInUse {
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
    },
    #[error(
        "cannot publish host port {port}: permission denied (ports below 1024 need privileges; see the sysctl net.ipv4.ip_unprivileged_port_start)"
    )]
    PortDenied { port: u16 },
    #[error("cannot publish on {addr}: it is not an address of this host")]
    AddressNotAvailable { addr: Ipv4Addr },
    #[error("cannot publish host {}port {port}{}: {cause}", proto_word(*.proto), on_addr(*.addr))]
    Publish {
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
        cause: std::io::Error,
    },
    #[error("host {}port {port} is published twice", proto_word(*.proto))]
    PublishedTwice { proto: Proto, port: u16 },
    #[error(
        "-p/--publish forwards host ports over the user-mode network, but the run has --network {0}"
    )]
    PublishNeedsUser(NetworkMode),
    #[error("the app listens on {0} (--listen), but --network none gives the VM no network card")]
    ListenWithoutNetwork(Listen),
    #[error("--ip and --gateway set up a tap network: add --network tap:IFNAME")]
    StaticNeedsTap,
    #[error("--network tap:{name}: {cause}{}", tap_hint(.cause))]
    Tap { name: String, cause: std::io::Error },
    #[error("{0}")]
    HostMode(String),
}

fn detail(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        s => format!(": {s}"),
    }
}

fn proto_word(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "",
        Proto::Udp => "UDP ",
    }
}

fn on_addr(addr: Ipv4Addr) -> String {
    match addr.is_unspecified() {
        true => String::new(),
        false => format!(" on {addr}"),
    }
}

fn tap_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (create it first and give it to your user: `sudo ip tuntap add dev IFNAME mode tap user $USER`)"
        }
        Some(libc::EBUSY) => " (another process has it attached)",
        Some(libc::EINVAL) => " (is it a tun device rather than a tap device?)",
        Some(libc::ENOENT) => " (/dev/net/tun is missing: load the tun module)",
        _ => "",
    }
}

/// Whether `module` imports any of WasmEdge's socket functions (an unparsable module
/// imports nothing: `pack` and the guest refuse it anyway).
pub fn imports_sockets(module: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    for payload in Parser::new(0).parse_all(module) {
        match payload {
            Ok(Payload::ImportSection(reader)) => {
                return reader.into_iter().any(|import| {
                    import.is_ok_and(|i| {
                        i.module == wasmvm_abi::wasi_imports::MODULE
                            && SOCKET_IMPORTS.contains(&i.name)
                    })
                });
            }
            // Imports come before every section that follows these.
            Ok(Payload::FunctionSection(_) | Payload::CodeSectionStart { .. }) | Err(_) => {
                return false;
            }
            Ok(_) => {}
        }
    }
    false
}

/// What the user asked for, from [`crate::RunOptions`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub network: Option<&'a NetworkMode>,
    pub listens: Option<&'a [Listen]>,
    pub publish: &'a [Publish],
    /// Publish each listener's port too, where `publish` does not already.
    pub publish_all: bool,
    /// `--ip`/`--gateway` for a tap network.
    pub tap_config: Option<NetConfig>,
}

/// Decides the run's network card: `--network` if given; otherwise the user-mode network
/// iff the app has listeners (packed, or `--listen`), `-p` was given, or the module imports
/// WasmEdge's socket functions, and no card at all (no boot cost) else. `user_mtu` is the
/// backend's user-mode MTU.
pub fn plan(
    req: Request<'_>,
    manifest: &Manifest,
    module: &[u8],
    user_mtu: u16,
) -> Result<Option<NetPlan>, NetError> {
    let mut seen = std::collections::HashSet::new();
    for p in req.publish {
        if !seen.insert((p.proto, p.host_port)) {
            return Err(NetError::PublishedTwice {
                proto: p.proto,
                port: p.host_port,
            });
        }
    }
    let tapped = matches!(req.network, Some(NetworkMode::Tap(_)));
    if req.tap_config.is_some() && !tapped {
        return Err(NetError::StaticNeedsTap);
    }
    let listens = req.listens.unwrap_or(&manifest.listens);
    let mut publish = req.publish.to_vec();
    // -P forwards what the user-mode network can reach: listeners on every guest address
    // (one on 127.0.0.1 never sees a forwarded connection); a tap network is reached
    // directly and `none` not at all.
    let user_mode = matches!(req.network, None | Some(NetworkMode::User));
    if req.publish_all && user_mode {
        for listen in listens.iter().filter(|l| l.addr == [0, 0, 0, 0]) {
            let forwarded = req
                .publish
                .iter()
                .any(|p| p.proto == Proto::Tcp && p.guest_port == listen.port);
            if !forwarded && seen.insert((Proto::Tcp, listen.port)) {
                publish.push(Publish {
                    proto: Proto::Tcp,
                    host_addr: Ipv4Addr::UNSPECIFIED,
                    host_port: listen.port,
                    guest_port: listen.port,
                });
            }
        }
    }
    let nic = match req.network {
        Some(mode @ (NetworkMode::None | NetworkMode::Tap(_))) if !publish.is_empty() => {
            return Err(NetError::PublishNeedsUser(mode.clone()));
        }
        Some(NetworkMode::None) => match listens.first() {
            // Its listeners would never see a connection: say so rather than hang.
            Some(listen) => return Err(NetError::ListenWithoutNetwork(*listen)),
            None => return Ok(None),
        },
        Some(NetworkMode::Tap(name)) => Nic::Tap(name.clone()),
        Some(NetworkMode::User) => Nic::User,
        None => {
            if listens.is_empty() && publish.is_empty() && !imports_sockets(module) {
                return Ok(None);
            }
            Nic::User
        }
    };
    Ok(Some(match nic {
        Nic::User => NetPlan {
            nic,
            publish,
            config: Some(NetConfig::user(user_mtu)),
            mtu: user_mtu,
        },
        Nic::Tap(_) => NetPlan {
            nic,
            publish: Vec::new(),
            config: req.tap_config,
            mtu: req.tap_config.map_or(TAP_MTU, |c| c.mtu),
        },
    }))
}

/// Checks that every published host port can be bound now, by binding it (and letting go):
/// passt only warns about a port it cannot bind, and QEMU's message names no port.
pub fn check_ports(publish: &[Publish]) -> Result<(), NetError> {
    for p in publish {
        let at = (p.host_addr, p.host_port);
        let bound = match p.proto {
            Proto::Tcp => std::net::TcpListener::bind(at).map(drop),
            Proto::Udp => std::net::UdpSocket::bind(at).map(drop),
        };
        bound.map_err(|cause| match cause.raw_os_error() {
            Some(libc::EADDRINUSE) => NetError::PortInUse {
                proto: p.proto,
                addr: p.host_addr,
                port: p.host_port,
            },
            Some(libc::EACCES) | Some(libc::EPERM) => NetError::PortDenied { port: p.host_port },
            Some(libc::EADDRNOTAVAIL) => NetError::AddressNotAvailable { addr: p.host_addr },
            _ => NetError::Publish {
                proto: p.proto,
                addr: p.host_addr,
                port: p.host_port,
                cause,
            },
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modes_parse() {
        assert_eq!(NetworkMode::parse("user"), Ok(NetworkMode::User));
        assert_eq!(NetworkMode::parse("none"), Ok(NetworkMode::None));
        assert_eq!(
            NetworkMode::parse("tap:tap0"),
            Ok(NetworkMode::Tap("tap0".into()))
        );
        for bad in [
            "",
            "slirp",
            "tap:",
            "tap:a/b",
            "tap:0123456789abcdef",
            "tap:a b",
            "tap:..",
        ] {
            let e = NetworkMode::parse(bad).unwrap_err();
            assert!(e.contains('`'), "{bad}: {e}");
        }
        assert_eq!(NetworkMode::Tap("t".into()).to_string(), "tap:t");
    }

    #[test]
    fn publish_specs_parse() {
        let p = Publish::parse("8080:80").unwrap();
        assert_eq!(
            p,
            Publish {
                proto: Proto::Tcp,
                host_addr: Ipv4Addr::UNSPECIFIED,
                host_port: 8080,
                guest_port: 80
            }
        );
        let p = Publish::parse("127.0.0.1:8080:80/tcp").unwrap();
        assert_eq!(p.host_addr, Ipv4Addr::LOCALHOST);
        assert_eq!(p.to_string(), "127.0.0.1:8080:80/tcp");
        let p = Publish::parse("5353:53/udp").unwrap();
        assert_eq!((p.proto, p.host_port, p.guest_port), (Proto::Udp, 5353, 53));
        for (bad, says) in [
            ("80", "both ports"),
            ("0:80", "`0` is not a port"),
            ("8080:65536", "`65536` is not a port"),
            ("8080:80/sctp", "unknown protocol `sctp`"),
            ("::1:8080:80", "not of the form"),
            ("localhost:8080:80", "not an IPv4 address"),
            ("x:y", "`x` is not a port"),
        ] {
            let e = Publish::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn cidrs_parse() {
        assert_eq!(
            parse_cidr("192.168.100.2/24"),
            Ok((Ipv4Addr::new(192, 168, 100, 2), 24))
        );
        for bad in [
            "192.168.100.2",
            "192.168.100.2/0",
            "192.168.100.2/33",
            "x/24",
            "0.0.0.0/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    fn request<'a>(network: Option<&'a NetworkMode>, publish: &'a [Publish]) -> Request<'a> {
        Request {
            network,
            listens: None,
            publish,
            publish_all: false,
            tap_config: None,
        }
    }

    #[test]
    fn publish_all_publishes_each_listener_on_its_own_port_unless_already_forwarded() {
        let packed = Manifest {
            listens: vec![
                Listen::parse("80").unwrap(),
                Listen::parse("127.0.0.1:81").unwrap(),
            ],
            ..Manifest::default()
        };
        let explicit = [Publish::parse("8080:80").unwrap()];
        let all = Request {
            publish_all: true,
            ..request(None, &explicit)
        };
        let p = plan(all, &packed, &[], 1500).unwrap().unwrap();
        // 80 is forwarded already; 81 listens on loopback only, out of a forward's reach.
        assert_eq!(p.publish, [explicit[0]]);
        let everywhere = Manifest {
            listens: vec![Listen::parse("81").unwrap()],
            ..Manifest::default()
        };
        let p = plan(all, &everywhere, &[], 1500).unwrap().unwrap();
        assert_eq!(p.publish, [explicit[0], Publish::parse("81:81").unwrap()]);
        // On tap, -P has nothing to do (and is no contradiction).
        let tap = NetworkMode::Tap("t0".into());
        let on_tap = Request {
            publish_all: true,
            ..request(Some(&tap), &[])
        };
        let p = plan(on_tap, &everywhere, &[], 1500).unwrap().unwrap();
        assert!(p.publish.is_empty());
    }

    #[test]
    fn the_card_is_attached_only_when_something_needs_it() {
        let plain = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let sockets = wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                (import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))
                (func (export "_start")))"#,
        )
        .unwrap();
        let m = Manifest::default();
        let none = request(None, &[]);
        assert_eq!(plan(none, &m, &plain, 1500).unwrap(), None);
        assert!(!imports_sockets(&plain));
        assert!(imports_sockets(&sockets));
        assert!(!imports_sockets(b"not wasm"));
        let user = plan(none, &m, &sockets, 1500).unwrap().unwrap();
        assert_eq!(user.nic, Nic::User);
        assert_eq!(user.config, Some(NetConfig::user(1500)));

        // Packed listeners attach it, unless the run replaces them with none.
        let packed = Manifest {
            listens: vec![Listen::parse("80").unwrap()],
            ..Manifest::default()
        };
        assert!(plan(none, &packed, &plain, 1500).unwrap().is_some());
        let replaced = Request {
            listens: Some(&[]),
            ..none
        };
        assert_eq!(plan(replaced, &packed, &plain, 1500).unwrap(), None);

        let published = [Publish::parse("8080:80").unwrap()];
        let p = plan(request(None, &published), &m, &plain, 65520)
            .unwrap()
            .unwrap();
        assert_eq!((p.publish.len(), p.mtu), (1, 65520));
        assert_eq!(
            plan(request(Some(&NetworkMode::None), &[]), &m, &sockets, 1500).unwrap(),
            None
        );
        let tap = plan(
            request(Some(&NetworkMode::Tap("t0".into())), &[]),
            &m,
            &plain,
            1500,
        )
        .unwrap()
        .unwrap();
        assert_eq!((tap.nic, tap.config), (Nic::Tap("t0".into()), None));
    }

    #[test]
    fn contradictions_are_refused() {
        let m = Manifest::default();
        let published = [Publish::parse("8080:80").unwrap()];
        let e = plan(request(Some(&NetworkMode::None), &published), &m, &[], 1500).unwrap_err();
        assert!(e.to_string().contains("--network none"), "{e}");
        let e = plan(
            request(Some(&NetworkMode::Tap("t".into())), &published),
            &m,
            &[],
            1500,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--network tap:t"), "{e}");
        let twice = [published[0], Publish::parse("127.0.0.1:8080:81").unwrap()];
        let e = plan(request(None, &twice), &m, &[], 1500).unwrap_err();
        assert_eq!(e.to_string(), "host port 8080 is published twice");
        let packed = Manifest {
            listens: vec![Listen::parse("8080").unwrap()],
            ..Manifest::default()
        };
        let e = plan(request(Some(&NetworkMode::None), &[]), &packed, &[], 1500).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the app listens on 0.0.0.0:8080 (--listen), but --network none gives the VM no network card"
        );
        let with_ip = Request {
            tap_config: Some(NetConfig::user(1500)),
            ..request(None, &[])
        };
        assert!(matches!(
            plan(with_ip, &m, &[], 1500),
            Err(NetError::StaticNeedsTap)
        ));
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let p = Publish::parse(&format!("127.0.0.1:{port}:80")).unwrap();
        let e = check_ports(&[p]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("host port {port} on 127.0.0.1 is already in use")
        );
        drop(taken);
        check_ports(&[p]).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let p = Publish::parse(&format!("127.0.0.1:{port}:53/udp")).unwrap();
        assert!(
            check_ports(&[p])
                .unwrap_err()
                .to_string()
                .contains("UDP port")
        );
        let foreign = Publish::parse("192.0.2.123:8080:80").unwrap();
        assert!(matches!(
            check_ports(&[foreign]),
            Err(NetError::AddressNotAvailable { .. })
        ));
    }
}
