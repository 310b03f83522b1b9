//! passt, the built-in VMM's user-mode network: one `passt` process per run, on one end of
//! a socketpair whose other end is the card's [`StreamLink`](super::link::StreamLink). It is
//! started while the VM is built and is ready once it answers an ARP request for the gateway.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmvm_abi::net::{DNS, GATEWAY, GUEST_ADDR, GUEST_MAC, PREFIX_LEN};

use super::link::FrameLink;
use crate::run::network::{NetError, Proto, Publish};

/// The descriptor number passt finds its end of the socketpair at.
const PASST_FD: i32 = 3;
/// passt's own MAC address: QEMU's user-mode network uses the same for its gateway.
const PASST_MAC: &str = "52:55:0a:00:02:02";
/// How long passt may take to answer the first ARP request.
const PASST_READY: Duration = Duration::from_secs(10);

/// A running passt serving one VM's user-mode network; killed and reaped when dropped.
pub struct Passt {
    child: Child,
    /// passt's stderr (an unlinked temporary file), for error messages.
    log: File,
}

fn quad(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// passt's command line (without the program): the guest at 10.0.2.15/24 behind gateway
/// 10.0.2.2 (which also stands for the host's loopback: passt's default `--map-gw`), DNS
/// queries to 10.0.2.3 forwarded to the host's resolver, IPv4 only, and one `-t`/`-u` per
/// published port (`none` without any, which also stops passt mirroring TCP ports to UDP).
pub fn passt_args(publish: &[Publish], mtu: u16, default_route: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--foreground",
        "--quiet",
        "--fd",
        &PASST_FD.to_string(),
        "--ipv4-only",
        "--address",
        &quad(GUEST_ADDR),
        "--netmask",
        &PREFIX_LEN.to_string(),
        "--gateway",
        &quad(GATEWAY),
        "--mac-addr",
        PASST_MAC,
        "--dns-forward",
        &quad(DNS),
        "--mtu",
        &mtu.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !default_route {
        // passt derives its settings from the interface of the host's default route and
        // refuses to start without one (this version); everything is given above, so the
        // loopback interface serves as that template. Outbound connections are unaffected.
        args.extend(["--interface".to_string(), "lo".to_string()]);
    }
    for (proto, flag) in [(Proto::Tcp, "--tcp-ports"), (Proto::Udp, "--udp-ports")] {
        let mut any = false;
        for p in publish.iter().filter(|p| p.proto == proto) {
            args.push(flag.to_string());
            args.push(format!("{}/{}:{}", p.host_addr, p.host_port, p.guest_port));
            any = true;
        }
        if !any {
            args.push(flag.to_string());
            args.push("none".to_string());
        }
    }
    args
}

/// Whether the host has a default IPv4 route (/proc/net/route: destination and mask 0).
fn has_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000"
        })
    })
}

/// An ARP request for the gateway from the guest's addresses: passt learns the guest's MAC
/// from it (this version sends to 00:00:00:00:00:00 until it has seen a guest frame, which
/// a guest would drop), and its reply shows that passt is up, its ports bound.
fn arp_request() -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&GUEST_MAC);
    f[28..32].copy_from_slice(&GUEST_ADDR);
    f[38..42].copy_from_slice(&GATEWAY);
    f
}

fn is_arp_reply_from_gateway(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == GATEWAY
}

impl Passt {
    /// Starts `binary` as the user-mode network of one VM, on `peer` (the other end of the
    /// VMM's socketpair, inherited as descriptor 3), forwarding the `publish`ed host ports.
    pub fn spawn(
        binary: &Path,
        publish: &[Publish],
        mtu: u16,
        peer: &UnixStream,
    ) -> Result<Passt, NetError> {
        let spawn_err = |cause: std::io::Error| match cause.kind() {
            ErrorKind::NotFound => NetError::PasstMissing(binary.display().to_string()),
            _ => NetError::PasstSpawn {
                path: binary.display().to_string(),
                cause,
            },
        };
        let log = tempfile::tempfile().map_err(spawn_err)?;
        let fd = peer.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.args(passt_args(publish, mtu, has_default_route()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().map_err(spawn_err)?);
        // The parent-death signal ends passt with this thread (passt also exits when its
        // socket closes, which covers the case where it cleared the signal by changing user,
        // as it does when started as root); dup2 puts the peer at PASST_FD for passt.
        // SAFETY: only async-signal-safe calls (prctl, fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = match fd == PASST_FD {
                    true => libc::fcntl(fd, libc::F_SETFD, 0),
                    false => libc::dup2(fd, PASST_FD),
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        Ok(Passt { child, log })
    }

    /// Announces the guest to passt over `link` and waits until passt answers: the
    /// user-mode network is up. A passt that exits or stays silent is an error with its
    /// messages. Frames before the answer are dropped (the guest is not running yet).
    pub fn wait_ready(&mut self, link: &mut dyn FrameLink) -> Result<(), NetError> {
        link.send(&arp_request());
        link.flush();
        let deadline = Instant::now() + PASST_READY;
        loop {
            while let Some(frame) = link.peek() {
                let answered = is_arp_reply_from_gateway(frame);
                link.consume();
                if answered {
                    return Ok(());
                }
            }
            if link.is_closed() {
                return Err(self.failure());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(NetError::PasstTimeout {
                    secs: PASST_READY.as_secs(),
                    stderr: self.messages(),
                });
            }
            let mut pfd = libc::pollfd {
                fd: link.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        }
    }

    /// The error for a passt that closed its socket: its exit status and messages.
    fn failure(&mut self) -> NetError {
        // It closed the socket because it is exiting; give it a moment to finish.
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break "closed its socket".to_string(),
            }
        };
        NetError::PasstFailed {
            status,
            stderr: self.messages(),
        }
    }

    /// What passt wrote to stderr, without its routine notices, at most a few KiB.
    pub fn messages(&mut self) -> String {
        let mut text = String::new();
        if self.log.rewind().is_ok() {
            let _ = (&mut self.log).take(16 * 1024).read_to_string(&mut text);
        }
        text.lines()
            .filter(|l| {
                !l.starts_with("Failed to send") // no syslog socket here
                    && !l.starts_with("Don't run as root") // it drops to nobody by itself
                    && !l.trim().is_empty()
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// passt's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// If passt has failed (exited unsuccessfully) already, how and why.
    pub fn failed(&mut self) -> Option<String> {
        match self.exit_status() {
            Some(status) if !status.success() => {
                Some(format!("passt exited ({status}): {}", self.messages()))
            }
            _ => None,
        }
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_arguments() {
        let publish = [
            Publish::parse("127.0.0.1:8080:80").unwrap(),
            Publish::parse("9000:9000/udp").unwrap(),
        ];
        let args = passt_args(&publish, 65520, true).join(" ");
        assert!(
            args.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2"),
            "{args}"
        );
        assert!(args.contains("--dns-forward 10.0.2.3"), "{args}");
        assert!(args.contains("--tcp-ports 127.0.0.1/8080:80"), "{args}");
        assert!(args.contains("--udp-ports 0.0.0.0/9000:9000"), "{args}");
        assert!(!args.contains("--interface"), "{args}");
        let args = passt_args(&[], 1500, false).join(" ");
        assert!(
            args.ends_with("--interface lo --tcp-ports none --udp-ports none"),
            "{args}"
        );
    }

    #[test]
    fn a_missing_passt_is_explained() {
        let e = Passt::spawn(
            Path::new("/nonexistent/passt"),
            &[],
            1500,
            &UnixStream::pair().unwrap().0,
        )
        .err()
        .unwrap();
        assert!(e.to_string().starts_with("passt is not installed"), "{e}");
    }
}
