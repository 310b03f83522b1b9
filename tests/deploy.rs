//! Deployment: `wasmvm image export` disks boot on standard PC firmware (SeaBIOS on q35 and
//! pc, OVMF) under QEMU with no wasmvm on the host side, the app's output and exit status on
//! the serial console, the VM powering off when the app ends; the network card is virtio
//! over PCI; `--libvirt` prints a domain that libvirt's schema accepts.
//!
//! QEMU runs with `-accel tcg`: firmware (real mode) and the kernel's ring-0 setup cannot
//! run on this host's nested KVM. Needs GRUB (`grub-pc-bin`, `grub-efi-amd64-bin`),
//! `qemu-img`, OVMF and `virt-xml-validate`; without them the tests say so and pass, unless
//! `WASMVM_REQUIRE_DEPLOY_TOOLS=1` (as CI sets).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const GREETING: &str = "Hello from a wasmvm VM!";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// Generous: TCG boots firmware in seconds, but CI machines are slow and shared.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether everything the export and boot tests need is installed.
fn tools_present() -> bool {
    let missing: Vec<&str> = [
        ("grub-mkimage", have("grub-mkimage")),
        (
            "/usr/lib/grub/i386-pc",
            Path::new("/usr/lib/grub/i386-pc").is_dir(),
        ),
        (
            "/usr/lib/grub/x86_64-efi",
            Path::new("/usr/lib/grub/x86_64-efi").is_dir(),
        ),
        ("qemu-img", have("qemu-img")),
        ("qemu-system-x86_64", have("qemu-system-x86_64")),
        (OVMF_CODE, Path::new(OVMF_CODE).is_file()),
        ("virt-xml-validate", have("virt-xml-validate")),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("WASMVM_REQUIRE_DEPLOY_TOOLS").as_deref() == Ok("1") {
        panic!("WASMVM_REQUIRE_DEPLOY_TOOLS=1 but these are missing: {missing:?}");
    }
    eprintln!("note: skipping: {missing:?} not installed");
    false
}

fn export(image: &Path, out: &Path, extra: &[&str]) -> Output {
    wasmvm()
        .args(["image", "export"])
        .arg(image)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn packed(dir: &Path, sample_name: &str, extra: &[&str]) -> PathBuf {
    let img = dir.join(format!("{sample_name}.img"));
    pack(&sample(sample_name), &img, extra);
    img
}

/// Packs `sample_name` with `pack_args` and exports it to `dir/file` with `export_args`,
/// which must succeed; returns the image, the disk and what the export printed on stderr.
fn packed_disk(
    dir: &Path,
    sample_name: &str,
    pack_args: &[&str],
    file: &str,
    export_args: &[&str],
) -> (PathBuf, PathBuf, String) {
    let img = packed(dir, sample_name, pack_args);
    let disk = dir.join(file);
    let o = export(&img, &disk, export_args);
    assert!(o.status.success(), "export: {}", stderr(&o));
    (img, disk, stderr(&o))
}

#[derive(Clone, Copy, Debug)]
enum Firmware {
    SeaBios,
    Ovmf,
}

/// QEMU booting `disk` on machine `machine` under TCG, serial on stdout.
fn qemu_disk(
    disk: &Path,
    format: &str,
    machine: &str,
    firmware: Firmware,
    scratch: &Path,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-M",
        machine,
        "-m",
        "256",
        "-display",
        "none",
        // No -no-reboot: a guest that ended by triple fault instead of ACPI power-off would
        // reset and boot again, which the tests see (a second greeting, or no end at all).
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-nodefaults",
    ]);
    if let Firmware::Ovmf = firmware {
        let vars = scratch.join(format!("vars-{machine}.fd"));
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    cmd.arg("-drive")
        .arg(format!("file={},if=virtio,format={format}", disk.display()))
        .stdin(Stdio::null());
    cmd
}

/// Kills the process `pid` unless [`Deadline::met`] is called within [`BOOT_DEADLINE`].
struct Deadline {
    done: mpsc::Sender<()>,
    watchdog: std::thread::JoinHandle<bool>,
}

impl Deadline {
    fn start(pid: u32) -> Deadline {
        let (done, done_rx) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let missed = done_rx.recv_timeout(BOOT_DEADLINE).is_err();
            if missed {
                // The child is not reaped until its waiter returns, so the pid is its.
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            missed
        });
        Deadline { done, watchdog }
    }

    /// Call once the process has ended; false if the watchdog had to kill it.
    fn met(self) -> bool {
        let _ = self.done.send(());
        !self.watchdog.join().unwrap()
    }
}

/// Runs `cmd` to its end, killing it after [`BOOT_DEADLINE`] (then panics with what it
/// printed).
fn run_to_end(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 must be installed");
    let deadline = Deadline::start(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(
        deadline.met(),
        "QEMU did not power off within {BOOT_DEADLINE:?}; serial:\n{}",
        stdout(&out)
    );
    out
}

#[test]
fn exported_hello_boots_on_seabios_and_ovmf() {
    if !tools_present() {
        return;
    }
    let dir = scratch();
    let (_, disk, said) = packed_disk(dir.path(), "hello", &[], "hello.qcow2", &[]);
    assert!(said.contains("qcow2 disk"), "{said}");

    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        stdout(&check),
        stderr(&check)
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");

    for (machine, firmware) in [
        ("q35", Firmware::SeaBios),
        ("pc", Firmware::SeaBios),
        ("q35", Firmware::Ovmf),
    ] {
        let out = run_to_end(qemu_disk(&disk, "qcow2", machine, firmware, dir.path()));
        let serial = stdout(&out);
        assert!(
            serial.contains(GREETING),
            "{machine}/{firmware:?}: no greeting on the serial console:\n{serial}\n{}",
            stderr(&out)
        );
        assert!(
            serial.contains("[wasmvm] app exited with status 0"),
            "{machine}/{firmware:?}: no exit line:\n{serial}"
        );
        // QEMU ended on its own (run_to_end): ACPI power-off, since a reset would have
        // booted the app again.
        assert_eq!(
            serial.matches(GREETING).count(),
            1,
            "{machine}/{firmware:?}: the VM rebooted:\n{serial}"
        );
        assert!(
            out.status.success(),
            "{machine}/{firmware:?}: {:?}",
            out.status
        );
        assert!(!serial.contains("KernelPanic"), "{serial}");
    }
}

#[test]
fn raw_disk_reports_the_exit_status_and_keeps_the_image_intact() {
    if !tools_present() {
        return;
    }
    let dir = scratch();
    let (img, disk, _) = packed_disk(
        dir.path(),
        "exitcode",
        &["--", "exit", "7"],
        "exit.raw",
        &["--format", "raw"],
    );
    // A raw disk is a whole number of MiB, with a GPT (protective MBR signature and header).
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(bytes.len() % (1 << 20), 0);
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    assert_eq!(&bytes[512..520], b"EFI PART");
    // The image lies on the disk byte for byte (FAT stores a small file contiguously in a
    // freshly formatted volume).
    let image_bytes = std::fs::read(&img).unwrap();
    assert!(
        bytes
            .windows(4096)
            .step_by(512)
            .any(|w| w == &image_bytes[..4096]),
        "the image's first 4 KiB are not on the disk"
    );

    let out = run_to_end(qemu_disk(
        &disk,
        "raw",
        "q35",
        Firmware::SeaBios,
        dir.path(),
    ));
    let serial = stdout(&out);
    assert!(
        serial.contains("[wasmvm] app exited with status 7"),
        "{serial}"
    );
}

#[test]
fn clocks_and_randomness_work_on_a_pc() {
    if !tools_present() {
        return;
    }
    let dir = scratch();
    // sysinfo prints properties: a plausible wall clock (the CMOS RTC here), sleeps that
    // last as long as asked (the TSC calibrated against the PIT), random draws that differ.
    let (_, disk, _) = packed_disk(dir.path(), "sysinfo", &[], "sysinfo.raw", &[]);
    let out = run_to_end(qemu_disk(&disk, "raw", "pc", Firmware::SeaBios, dir.path()));
    let serial = stdout(&out);
    for property in [
        "realtime plausible: true",
        "monotonic never backwards: true",
        "slept at least 20ms: true",
        "slept under 5s: true",
        "random draws differ: true",
    ] {
        assert!(serial.contains(property), "{property}:\n{serial}");
    }
    assert!(!serial.contains(": false"), "{serial}");
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(BOOT_DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn network_card_on_pci_serves_http() {
    if !tools_present() {
        return;
    }
    let dir = scratch();
    let (_, disk, _) = packed_disk(dir.path(), "http", &["--listen", "8080"], "http.qcow2", &[]);

    // OVMF places the card's 64-bit BAR far above 4 GiB (at 896 GiB with Debian 12's OVMF):
    // the kernel maps it at CPL 0.
    for firmware in [Firmware::SeaBios, Firmware::Ovmf] {
        let port = free_port();
        let mut cmd = qemu_disk(&disk, "qcow2", "q35", firmware, dir.path());
        cmd.arg("-netdev")
            .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:8080"))
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .stdout(Stdio::piped());
        let mut vm = KillOnDrop(cmd.spawn().unwrap());
        let serial = vm.0.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(serial).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The app's readiness line (it got its address by DHCP before it listens).
        let mut seen = Vec::new();
        loop {
            match line_rx.recv_timeout(BOOT_DEADLINE) {
                Ok(line) if line.contains("listening on fd") => break,
                Ok(line) => seen.push(line),
                Err(_) => panic!("{firmware:?}: no readiness line; serial so far: {seen:?}"),
            }
        }
        let reply = http_get(port, "/");
        assert!(reply.starts_with("HTTP/1.1 200"), "{firmware:?}: {reply}");
        assert!(reply.contains("hello from wasmvm"), "{reply}");
        let _ = http_get(port, "/exit/3");
        let mut rest = Vec::new();
        loop {
            match line_rx.recv_timeout(BOOT_DEADLINE) {
                Ok(line) if line.contains("[wasmvm] app exited with status 3") => break,
                Ok(line) => rest.push(line),
                Err(_) => panic!("{firmware:?}: no exit line; serial after the request: {rest:?}"),
            }
        }
        // The VM powers off after its exit line.
        let deadline = Deadline::start(vm.0.id());
        let status = vm.0.wait().unwrap();
        assert!(deadline.met(), "{firmware:?}: QEMU did not power off");
        assert!(status.success(), "QEMU: {status:?}");
    }
}

#[test]
fn libvirt_domain_validates() {
    if !tools_present() {
        return;
    }
    let dir = scratch();
    let img = packed(dir.path(), "http", &["--listen", "8080"]);
    for (firmware, format, network) in [
        ("bios", "qcow2", None),
        ("uefi", "raw", Some("none")),
        ("bios", "qcow2", Some("isolated")),
    ] {
        let disk = dir.path().join(format!("web-{firmware}.{format}"));
        let mut extra = vec!["--libvirt", "--firmware", firmware, "--name", "web"];
        if let Some(net) = network {
            extra.extend(["--network", net]);
        }
        let o = export(&img, &disk, &extra);
        assert!(o.status.success(), "export: {}", stderr(&o));
        let xml = stdout(&o);
        assert!(xml.contains("<name>web</name>"), "{xml}");
        assert!(xml.contains(&format!("type='{format}'")), "{xml}");
        assert!(
            xml.contains(&format!("file='{}'", disk.display())),
            "the disk's absolute path: {xml}"
        );
        match network {
            // The app listens, so by default it gets a NIC on libvirt's default network.
            None => assert!(xml.contains("<source network='default'/>"), "{xml}"),
            Some("none") => assert!(!xml.contains("<interface"), "{xml}"),
            Some(net) => assert!(xml.contains(&format!("network='{net}'")), "{xml}"),
        }
        let file = dir.path().join(format!("web-{firmware}.xml"));
        std::fs::write(&file, &xml).unwrap();
        let v = Command::new("virt-xml-validate")
            .arg(&file)
            .arg("domain")
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "virt-xml-validate refused:\n{xml}\n{}{}",
            stdout(&v),
            stderr(&v)
        );
    }
}

#[test]
fn export_errors_name_the_problem() {
    let dir = scratch();
    let not_image = dir.path().join("notes.txt");
    std::fs::write(&not_image, "hello").unwrap();
    let o = export(&not_image, &dir.path().join("x.raw"), &[]);
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a wasmvm image"), "{}", stderr(&o));
    assert!(!dir.path().join("x.raw").exists());

    let img = packed(dir.path(), "hello", &[]);
    let o = wasmvm()
        .args(["image", "export"])
        .arg(&img)
        .arg("-o")
        .arg(dir.path().join("y.raw"))
        .env("WASMVM_GRUB_LIB", dir.path().join("no-grub"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("install the Debian package grub-pc-bin"),
        "{}",
        stderr(&o)
    );
    // Nothing half-written is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".wasmvm-export") || n == "y.raw")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A domain that cannot be written stops the export before the disk is.
    let o = export(
        &img,
        &dir.path().join("w.raw"),
        &["--libvirt", "--name", "a/b"],
    );
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot be a libvirt domain name"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("w.raw").exists());

    // --name and friends only make sense with --libvirt.
    let o = export(&img, &dir.path().join("z.raw"), &["--name", "web"]);
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert!(stderr(&o).contains("--libvirt"), "{}", stderr(&o));
}

#[test]
fn a_signal_during_an_export_leaves_no_partial_disk() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    if !tools_present() {
        return;
    }
    let dir = scratch();
    let img = packed(dir.path(), "hello", &[]);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("disk.qcow2");
    let entries = || -> Vec<String> {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    // The disk is built in a `.wasmvm-export-*` directory beside the output: once it
    // exists, SIGTERM. An export that ends first (it takes a fraction of a second) is tried
    // again.
    let mut interrupted = 0;
    for _ in 0..10 {
        let mut export = wasmvm()
            .args(["image", "export"])
            .arg(&img)
            .arg("-o")
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ended = None;
        while entries().is_empty() && Instant::now() < deadline {
            ended = export.try_wait().unwrap();
            if ended.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = match ended {
            Some(status) => status,
            None => {
                send_signal(&export, libc::SIGTERM);
                wait_within(&mut export)
            }
        };
        if status.signal() == Some(libc::SIGTERM) {
            interrupted += 1;
            assert_eq!(entries(), Vec::<String>::new(), "left behind");
        } else {
            assert_eq!(status.code(), Some(0), "an export that ended first");
            assert_eq!(entries(), vec!["disk.qcow2".to_string()]);
            std::fs::remove_file(&out).unwrap();
        }
    }
    assert!(interrupted > 0, "no export was interrupted in ten tries");
}
