//! The same image on Firecracker and Cloud Hypervisor (docs/deploy.md, section 5): each VMM
//! loads it as a PVH kernel, the run configuration goes in as the initrd (`wasmvm image
//! run-config`), and the app's output and exit status come out of the serial port.
//!
//! Each test runs when its VMM is on PATH and says so when it is not;
//! `WASMVM_REQUIRE_OTHER_VMMS=1` (where they are installed) makes absence a failure.
//!
//! On a nested host without hardware virtualisation (`kvm_pvm`, like the one this project is
//! developed on), port I/O at CPL 3 triple-faults, and the serial port is the only console
//! either VMM offers the image: the app runs, and the VM stops at its first byte of output.
//! There the tests check that documented behaviour instead.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `name` on PATH, or `None` after saying so (a failure with `WASMVM_REQUIRE_OTHER_VMMS=1`).
fn vmm_binary(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("WASMVM_REQUIRE_OTHER_VMMS").as_deref() != Ok("1"),
            "{name} is required (WASMVM_REQUIRE_OTHER_VMMS=1) but not on PATH"
        );
        eprintln!("note: {name} not on PATH; skipping (see docs/deploy.md)");
    }
    found
}

/// Whether KVM here is PVM (nested, no hardware virtualisation): see the module docs.
fn nested_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// What one boot showed.
struct Boot {
    /// What the guest wrote to the serial port.
    console: String,
    /// The VMM's own messages.
    log: String,
}

impl Boot {
    /// The status in the kernel's closing line, `[wasmvm] app exited with status N`.
    fn app_status(&self) -> Option<i32> {
        self.console
            .lines()
            .find_map(|l| l.trim().strip_prefix("[wasmvm] app exited with status "))
            .and_then(|n| n.trim().parse().ok())
    }
}

/// Runs `cmd` (a VMM whose serial port is its stdout, its messages on stderr) to its end;
/// after `give_up` it is killed (a VMM that reboots a guest that stopped), and after two
/// minutes the test fails.
fn boot(mut cmd: Command, give_up: Option<Duration>) -> Boot {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if give_up.is_some_and(|t| started.elapsed() > t) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Boot {
        console: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        log: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// Firecracker with `image` (and `run_config` as its initrd) from a config file.
fn firecracker(fc: &Path, dir: &Path, image: &Path, run_config: Option<&Path>) -> Boot {
    let initrd = run_config
        .map(|p| format!(r#""initrd_path": "{}", "#, p.display()))
        .unwrap_or_default();
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
  "boot-source": {{ "kernel_image_path": "{}", {initrd}"boot_args": "" }},
  "drives": [],
  "machine-config": {{ "vcpu_count": 1, "mem_size_mib": 128 }}
}}"#,
            image.display()
        ),
    )
    .unwrap();
    let log = dir.join("firecracker.log");
    std::fs::write(&log, "").unwrap();
    let mut cmd = Command::new(fc);
    cmd.arg("--no-api")
        .arg("--config-file")
        .arg(&config)
        .arg("--log-path")
        .arg(&log);
    let mut b = boot(cmd, None);
    b.log
        .push_str(&std::fs::read_to_string(&log).unwrap_or_default());
    b
}

/// Cloud Hypervisor with `image` (and `run_config` as its initramfs), serial on stdout.
/// It reboots a guest that triple-faults, so on PVM it is stopped after a few seconds.
fn cloud_hypervisor(ch: &Path, image: &Path, run_config: Option<&Path>) -> Boot {
    let mut cmd = Command::new(ch);
    cmd.arg("--kernel").arg(image);
    if let Some(cfg) = run_config {
        cmd.arg("--initramfs").arg(cfg);
    }
    cmd.args([
        "--cpus",
        "boot=1",
        "--memory",
        "size=128M",
        "--serial",
        "tty",
        "--console",
        "off",
    ]);
    boot(cmd, nested_pvm().then_some(Duration::from_secs(3)))
}

/// Writes a run configuration with `args` for the app.
fn run_config(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let o = wasmvm()
        .args(["image", "run-config", "-o"])
        .arg(&path)
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    path
}

/// The checks both VMMs share: hello's greeting and status 0; run-time arguments through
/// the run configuration; an exit status. On PVM, the documented stop at the first output.
fn check_vmm(name: &str, run: &dyn Fn(&Path, Option<&Path>) -> Boot, stopped_by: &str) {
    let dir = scratch();
    let hello = dir.path().join("hello.img");
    pack(&sample("hello"), &hello, &[]);
    let exitcode = dir.path().join("exitcode.img");
    pack(&sample("exitcode"), &exitcode, &["--", "exit", "0"]);
    if nested_pvm() {
        let b = run(&hello, None);
        assert!(
            b.console.is_empty() && b.log.contains(stopped_by),
            "{name} on kvm_pvm: expected the VM to stop at its first output ({stopped_by:?});\
             console {:?}, log:\n{}",
            b.console,
            b.log
        );
        eprintln!("note: {name} on kvm_pvm stops the VM at the app's first output, as documented");
        return;
    }
    let b = run(&hello, None);
    assert!(
        b.console.contains("Hello from a wasmvm VM!"),
        "{name}: console {:?}\n{}",
        b.console,
        b.log
    );
    assert_eq!(b.app_status(), Some(0), "{name}: {:?}", b.console);
    let args = run_config(dir.path(), "args.cfg", &["args", "two words", "x"]);
    let b = run(&exitcode, Some(&args));
    assert!(
        b.console.contains("two words\n") || b.console.contains("two words\r\n"),
        "{name}: {:?}",
        b.console
    );
    let seven = run_config(dir.path(), "seven.cfg", &["exit", "7"]);
    let b = run(&exitcode, Some(&seven));
    assert_eq!(b.app_status(), Some(7), "{name}: {:?}", b.console);
}

#[test]
fn firecracker_boots_the_same_image() {
    let Some(fc) = vmm_binary("firecracker") else {
        return;
    };
    let dir = scratch();
    check_vmm(
        "firecracker",
        &|image, cfg| firecracker(&fc, dir.path(), image, cfg),
        "Unexpected exit reason on vcpu run: Shutdown",
    );
}

#[test]
fn cloud_hypervisor_boots_the_same_image() {
    let Some(ch) = vmm_binary("cloud-hypervisor") else {
        return;
    };
    check_vmm(
        "cloud-hypervisor",
        &|image, cfg| cloud_hypervisor(&ch, image, cfg),
        "Guest likely triple-faulted",
    );
}

/// `wasmvm image run-config` writes what the kernel reads as PVH module 0; checked end to
/// end on a bare QEMU under TCG (the serial path these VMMs use, which works there), with
/// the file as `-initrd` just as Firecracker's `initrd_path` hands it over.
#[test]
fn a_run_config_file_gives_the_app_its_arguments_on_a_vmm_without_wasmvm() {
    let dir = scratch();
    let img = dir.path().join("exitcode.img");
    pack(&sample("exitcode"), &img, &["--", "exit", "0"]);
    let cfg = run_config(dir.path(), "run.cfg", &["args", "from the file"]);
    let decoded = wasmvm_abi::bundle::RunConfig::decode(&std::fs::read(&cfg).unwrap()).unwrap();
    assert_eq!(
        decoded.args,
        Some(vec![b"args".to_vec(), b"from the file".to_vec()])
    );
    assert_eq!(
        decoded.random_seed, None,
        "one file serves many boots: no seed"
    );
    let o = bare_qemu_with(&img, &["-initrd".as_ref(), cfg.as_os_str()]);
    let console = stdout(&o);
    assert!(console.contains("from the file"), "{console:?}");
    assert!(
        console.contains("[wasmvm] app exited with status 0"),
        "{console:?}"
    );
    let bad = wasmvm()
        .args(["image", "run-config", "-o"])
        .arg(dir.path().join("bad.cfg"))
        .args(["--env", "NOEQUALS"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(253));
    assert!(
        stderr(&bad).contains("expected KEY=VALUE"),
        "{}",
        stderr(&bad)
    );
}
