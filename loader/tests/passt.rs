//! The built-in VMM's user-mode network without a guest: passt started as `builtin::run`
//! starts it, spoken to over the frame link with hand-made frames. Skipped when passt is not
//! installed, unless `WASMVM_REQUIRE_PASST=1` (as CI sets).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use wasmvm_abi::net::{GATEWAY, GUEST_ADDR, GUEST_MAC};
use wasmvm_loader::run::network::{BUILTIN_USER_MTU, NetError, Publish};
use wasmvm_loader::vmm::devices::net::link::{FrameLink, StreamLink};
use wasmvm_loader::vmm::devices::net::passt::Passt;

fn passt_installed() -> bool {
    let found = std::process::Command::new("passt")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("WASMVM_REQUIRE_PASST").as_deref() != Ok("1"),
            "WASMVM_REQUIRE_PASST=1 but passt is not installed"
        );
        eprintln!("note: passt is not installed; skipping");
    }
    found
}

/// passt on one end of a socketpair, up (it answered the ARP request `wait_ready` sends).
fn start(publish: &[Publish]) -> (Passt, StreamLink) {
    let (vmm, peer) = UnixStream::pair().unwrap();
    let mut passt = Passt::spawn(Path::new("passt"), publish, BUILTIN_USER_MTU, &peer).unwrap();
    drop(peer);
    let mut link = StreamLink::new(vmm).unwrap();
    passt.wait_ready(&mut link).unwrap();
    (passt, link)
}

/// The next frame passt sends, within a few seconds.
fn next_frame(link: &mut StreamLink) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(f) = link.peek() {
            let f = f.to_vec();
            link.consume();
            return f;
        }
        assert!(!link.is_closed(), "passt closed the link");
        assert!(Instant::now() < deadline, "passt sent nothing");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment from the guest's address and MAC (port 40000) to `dst:port` through the
/// gateway.
fn tcp_to(dst: [u8; 4], port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp.extend_from_slice(payload);
    let tcp_len = tcp.len() as u16;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST_ADDR);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(20 + tcp_len).to_be_bytes());
    ip.extend_from_slice(&GUEST_ADDR);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// A TCP SYN from the guest to `dst:port`.
fn syn_to(dst: [u8; 4], port: u16) -> Vec<u8> {
    tcp_to(dst, port, 1000, 0, SYN, &[])
}

/// (sequence, acknowledgement, flags, payload length) of a TCP frame passt sent.
fn tcp_of(frame: &[u8]) -> Option<(u32, u32, u8, usize)> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ip_len = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let tcp = &frame[34..];
    let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(tcp[8..12].try_into().unwrap());
    let header = usize::from(tcp[12] >> 4) * 4;
    Some((seq, ack, tcp[13], ip_len - 20 - header))
}

#[test]
fn passt_answers_arp_and_exits_with_its_socket() {
    if !passt_installed() {
        return;
    }
    let started = Instant::now();
    let (mut passt, link) = start(&[]);
    eprintln!("passt up in {:?}", started.elapsed());
    drop(link);
    // passt leaves by itself once its socket closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match passt.exit_status() {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            None => panic!("passt is still running without its socket"),
        }
    };
    assert!(status.success(), "passt failed: {}", passt.messages());
}

#[test]
fn guest_connections_to_the_gateway_reach_host_loopback() {
    if !passt_installed() {
        return;
    }
    let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = host.local_addr().unwrap().port();
    let (_passt, mut link) = start(&[]);
    link.send(&syn_to(GATEWAY, port));
    link.flush();
    host.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let peer = loop {
        match host.accept() {
            Ok((_, peer)) => break peer,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("no connection from passt: {e}"),
        }
    };
    assert!(peer.ip().is_loopback(), "{peer}");
    // And the guest gets its SYN-ACK, from the gateway.
    let reply = next_frame(&mut link);
    assert_eq!(&reply[..6], &GUEST_MAC);
    assert_eq!(&reply[26..30], &GATEWAY);
    assert_eq!(reply[14 + 20 + 13] & 0x12, 0x12, "not a SYN-ACK");
}

#[test]
fn published_host_ports_reach_the_guest() {
    if !passt_installed() {
        return;
    }
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = Publish::parse(&format!("127.0.0.1:{port}:80")).unwrap();
    wasmvm_loader::run::network::check_ports(&[publish]).unwrap();
    let (_passt, mut link) = start(&[publish]);
    // Published ports are bound once passt is up.
    let e = wasmvm_loader::run::network::check_ports(&[publish]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("host port {port} on 127.0.0.1 is already in use")
    );
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let syn = next_frame(&mut link);
    // To the guest's MAC (learnt from the ARP request), address and port 80.
    assert_eq!(&syn[..6], &GUEST_MAC);
    assert_eq!(&syn[12..14], &[0x08, 0x00]);
    assert_eq!(&syn[30..34], &GUEST_ADDR);
    assert_eq!(&syn[36..38], &80u16.to_be_bytes());
    assert_eq!(syn[47] & 0x02, 0x02, "not a SYN");
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let _ = client.read(&mut [0u8; 1]);
}

#[test]
fn a_failing_passt_is_reported_with_its_messages() {
    if !passt_installed() {
        return;
    }
    // A "passt" that complains and exits, as passt does on a host it cannot serve.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("passt");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Failed to send 40 bytes to syslog' >&2\necho 'External interface not usable' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (vmm, peer) = UnixStream::pair().unwrap();
    // Another test's fork can briefly hold the script's write descriptor (between its fork
    // and exec), and exec then fails with ETXTBSY: the known Linux race, retried as Go does.
    let mut attempts = 0;
    let mut passt = loop {
        match Passt::spawn(&fake, &[], BUILTIN_USER_MTU, &peer) {
            Err(NetError::PasstSpawn { cause, .. })
                if cause.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 =>
            {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    drop(peer);
    let mut link = StreamLink::new(vmm).unwrap();
    let e = passt.wait_ready(&mut link).unwrap_err().to_string();
    assert_eq!(
        e,
        "passt failed to start the user-mode network (exit status: 1): External interface not usable"
    );
}

/// The host's end of a connection the guest half-closed first must still reach the guest.
/// passt 0.0~git20230309 (Debian 12) never forwards that FIN (and with a real guest it can
/// spin at 100% CPU instead): apps that `shutdown(SHUT_WR)` and read to the end hang on the
/// built-in VMM. Run with `--ignored` to check another passt.
#[test]
#[ignore = "fails with passt 0.0~git20230309 (Debian 12): see docs/design.md, Known limits"]
fn the_hosts_fin_reaches_a_guest_that_half_closed_first() {
    if !passt_installed() {
        return;
    }
    use std::io::Write;
    let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = host.local_addr().unwrap().port();
    // The host side echoes until end of file, then closes its side too.
    std::thread::spawn(move || {
        let (mut conn, _) = host.accept().unwrap();
        let mut data = Vec::new();
        conn.read_to_end(&mut data).unwrap();
        conn.write_all(&data).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let (_passt, mut link) = start(&[]);
    link.send(&syn_to(GATEWAY, port));
    link.flush();
    let (their_seq, ..) = loop {
        let f = next_frame(&mut link);
        if let Some(t @ (_, _, flags, _)) = tcp_of(&f)
            && flags & 0x12 == 0x12
        {
            break t;
        }
    };
    let mut rcv = their_seq.wrapping_add(1);
    // Acknowledge, send five bytes and our FIN.
    link.send(&tcp_to(GATEWAY, port, 1001, rcv, ACK, &[]));
    link.send(&tcp_to(GATEWAY, port, 1001, rcv, ACK | 0x08, b"hello"));
    link.send(&tcp_to(GATEWAY, port, 1006, rcv, ACK | FIN, &[]));
    link.flush();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut echoed = 0;
    while Instant::now() < deadline {
        let Some(f) = link.peek().map(<[u8]>::to_vec) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        link.consume();
        let Some((seq, _, flags, len)) = tcp_of(&f) else {
            continue;
        };
        if seq == rcv {
            rcv = rcv.wrapping_add(len as u32);
            echoed += len;
        }
        if flags & FIN != 0 {
            assert_eq!(echoed, 5);
            return;
        }
        link.send(&tcp_to(GATEWAY, port, 1007, rcv, ACK, &[]));
        link.flush();
    }
    panic!("no FIN from the host after {echoed} echoed bytes");
}
