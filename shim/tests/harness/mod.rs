//! A containerd of the test's own: its config, state and sockets in a temporary folder,
//! the shim under test first on its PATH, run inside a network namespace the test creates
//! (so CNI bridges and pod addresses never touch the host's network), and stopped by its
//! PID at the end, with any shim it left.
//!
//! The tests need root, containerd, ctr and iproute2; without them they say so and pass,
//! unless `WASMVM_REQUIRE_CONTAINERD=1` (as `.ci/run` sets) makes that a failure.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
pub mod common;
pub mod cri;
pub mod oci;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use common::*;

/// containerd's name for the runtime under test.
pub const RUNTIME: &str = "io.containerd.wasmvm.v1";

/// Whether the machine can run these tests (else they return early, having said why).
pub fn available() -> bool {
    let required = std::env::var("WASMVM_REQUIRE_CONTAINERD").as_deref() == Ok("1");
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["containerd", "ctr", "ip", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            missing.push(tool.to_string());
        }
    }
    // Pods get their network from these (Debian's containernetworking-plugins).
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            missing.push(format!("/usr/lib/cni/{plugin}"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !required,
        "WASMVM_REQUIRE_CONTAINERD=1 but these are missing: {}",
        missing.join(", ")
    );
    eprintln!(
        "note: skipping the containerd tests: they need {}",
        missing.join(", ")
    );
    false
}

pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wasmvm-v1"))
}

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub netns: String,
    pub socket: PathBuf,
    /// The containerd namespace the test's containers live in (ctr's `-n`).
    pub namespace: String,
    child: Child,
}

impl Containerd {
    /// Starts containerd and waits for the line that says it booted.
    pub fn start() -> Containerd {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("wasmvm-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // The shim and wasmvm, found by containerd on PATH; the shim finds wasmvm beside
        // its own (resolved) path.
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(shim_binary(), bin.join("containerd-shim-wasmvm-v1")).unwrap();
        // CRI's pod network: a bridge in the test's namespace, addresses from a subnet
        // that exists only there, allocations kept in the temporary folder.
        let cni = d.join("cni");
        std::fs::create_dir(&cni).unwrap();
        std::fs::write(
            cni.join("10-wasmvm-test.conflist"),
            format!(
                r#"{{"cniVersion":"0.4.0","name":"wasmvm-test","plugins":[
                    {{"type":"bridge","bridge":"wvm0","isGateway":true,"ipMasq":false,
                      "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{POD_SUBNET}"}}]]}}}},
                    {{"type":"loopback"}}]}}"#,
                d.join("cni-state").display()
            ),
        )
        .unwrap();
        let socket = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmvm]
    runtime_type = "{RUNTIME}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            d = d.display(),
            sock = socket.display(),
            cni = cni.display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();

        let netns = format!("wasmvm-ctd-{tag}");
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        run_ok(Command::new("ip").args(["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]));
        let child = boot(d, &netns).unwrap_or_else(|log| {
            let _ = Command::new("ip").args(["netns", "del", &netns]).output();
            panic!("containerd did not boot:\n{log}")
        });
        Containerd {
            dir,
            netns,
            socket,
            namespace: format!("wasmvm-test-{tag}"),
            child,
        }
    }

    /// Kills containerd with SIGKILL (its shims and their VMs go on) and starts it again
    /// on the same configuration and state, as after a crash or an upgrade.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = boot(self.dir.path(), &self.netns)
            .unwrap_or_else(|log| panic!("containerd did not boot again:\n{log}"));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` on this containerd and namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", &self.namespace]);
        cmd
    }

    /// `ctr images import` of a wasm OCI tarball into the test's namespace.
    pub fn import(&self, tarball: &Path) {
        self.import_into(&self.namespace.clone(), tarball, "wasip1/wasm");
    }

    /// `ctr images import` into namespace `ns` (CRI's is `k8s.io`) for `platform`.
    pub fn import_into(&self, ns: &str, tarball: &Path, platform: &str) {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", ns, "images", "import", "--platform", platform])
            .arg(tarball)
            .stdin(Stdio::null());
        let o = output_within(cmd, Duration::from_secs(120));
        assert!(o.status.success(), "import: {}", stderr(&o));
    }

    /// `ctr run --rm` of `image` as container `id` with the app's arguments (ctr replaces
    /// the image's entrypoint and command with them).
    pub fn run(&self, image: &str, id: &str, ctr_args: &[&str], args: &[&str]) -> Output {
        let mut cmd = self.run_command(image, id, ctr_args, args);
        cmd.stdin(Stdio::null());
        output_within(cmd, Duration::from_secs(120))
    }

    pub fn run_command(&self, image: &str, id: &str, ctr_args: &[&str], args: &[&str]) -> Command {
        let mut cmd = self.ctr();
        cmd.args([
            "run",
            "--rm",
            "--platform",
            "wasip1/wasm",
            "--runtime",
            RUNTIME,
        ])
        .args(ctr_args)
        .args([image, id])
        .args(args);
        cmd
    }

    /// `ctr run` of a container whose first line of output is `ready` (stdin and stderr
    /// piped: the container runs until its stdin closes or it is killed).
    pub fn start_ready(
        &self,
        image: &str,
        id: &str,
        ctr_args: &[&str],
        args: &[&str],
        ready: &str,
    ) -> Child {
        let mut cmd = self.run_command(image, id, ctr_args, args);
        cmd.stdin(Stdio::piped()).stderr(Stdio::piped());
        spawn_ready(cmd, ready)
    }

    /// The shim processes of this containerd.
    pub fn shims(&self) -> Vec<u32> {
        processes_mentioning(&self.socket.to_string_lossy())
            .into_iter()
            .filter(|&p| is_shim(p))
            .collect()
    }

    /// The pid of a running task (`ctr task ls`).
    pub fn task_pid(&self, id: &str) -> u32 {
        let o = output_within(self.ctr().args(["task", "ls"]), Duration::from_secs(60));
        let out = stdout(&o);
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id)).then(|| f.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no task {id} in:\n{out}"))
    }
}

/// Starts the containerd configured in `d` inside network namespace `netns` and waits for
/// the line that says it booted (else kills it: `Err` holds its log); its log is appended
/// to `d/containerd.log`.
fn boot(d: &Path, netns: &str) -> Result<Child, String> {
    let path = format!(
        "{}:{}",
        d.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // nsenter joins only the network namespace; `ip netns exec` would also give
    // containerd a fresh /sys without the cgroup mounts.
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .args(["containerd", "--config"])
        .arg(d.join("config.toml"))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let log = d.join("containerd.log");
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            use std::io::Write;
            let _ = writeln!(file, "{line}");
            if line.contains("containerd successfully booted") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default());
    }
    Ok(child)
}

/// How long one clean-up command may take.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

impl Drop for Containerd {
    fn drop(&mut self) {
        // Through containerd first, so it unmounts root file systems and removes
        // cgroups; a test that failed midway leaves tasks behind.
        for ns in [self.namespace.as_str(), "k8s.io"] {
            let ctr = |args: &[&str]| {
                let mut cmd = Command::new("ctr");
                cmd.arg("-a").arg(&self.socket).args(["-n", ns]).args(args);
                cmd.stdin(Stdio::null());
                // Never a panic here: this also runs while a failed test unwinds.
                output_or_kill(cmd, CLEANUP_LIMIT)
                    .map(|o| stdout(&o))
                    .unwrap_or_default()
            };
            for task in ctr(&["tasks", "ls", "-q"]).lines() {
                ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
                ctr(&["tasks", "rm", "-f", task]);
            }
            for container in ctr(&["containers", "ls", "-q"]).lines() {
                ctr(&["containers", "rm", container]);
            }
        }
        // Then the shims that are left (their VMs die with them), then containerd.
        for pid in processes_mentioning(&self.socket.to_string_lossy()) {
            if pid != self.child.id() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        // SAFETY: as above; the pid is our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Mounts left under the temporary folder (overlays, pod network namespaces),
        // deepest first, so the folder can go.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = output_or_kill(Command::new("umount").args(["-l", p]), CLEANUP_LIMIT);
        }
        let _ = output_or_kill(
            Command::new("ip").args(["netns", "del", &self.netns]),
            CLEANUP_LIMIT,
        );
        // ctr's cgroups are /NAMESPACE/ID and the pods' /NAMESPACE-POD/ID: the shim
        // removed each ID; the parents are the test's (as runc leaves /default).
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
        roots.extend(
            std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
        let ours = |name: &str| {
            name == self.namespace || name.starts_with(&format!("{}-", self.namespace))
        };
        for root in roots {
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if ours(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }
}

/// Whether process `pid` runs the shim under test.
pub fn is_shim(pid: u32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmd).contains("containerd-shim-wasmvm-v1")
}

/// The socket file serving shim `pid` listens on (its `-socket unix://PATH` argument).
pub fn shim_socket(pid: u32) -> PathBuf {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmd
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let address = args
        .iter()
        .position(|a| a == "-socket")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("no -socket in shim {pid}'s command line: {args:?}"));
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Waits (bounded) until nothing is at `path`; false if something still is after 30 s.
pub fn wait_removed(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while path.symlink_metadata().is_ok() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

/// Waits (bounded) until process `pid` is gone; false if it is still there after 30 s.
pub fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie has gone as far as it can (its parent reaps it).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Runs `cmd`, which must succeed within two minutes.
pub fn run_ok(cmd: &mut Command) -> Output {
    let o = output_within(&mut *cmd, Duration::from_secs(120));
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    o
}

/// The pods' subnet, inside the test's network namespace.
pub const POD_SUBNET: &str = "10.88.0.0/24";

/// The image CRI's pod sandboxes use (`sandbox_image`): any image will do, since the
/// shim's sandbox is a placeholder process.
pub const PAUSE_IMAGE: &str = "wasmvm.test/pause:1";

/// `wasmvm pack MODULE` (with `pack_args`) exported as an OCI tarball tagged `tag`.
pub fn oci_image(dir: &Path, module: &Path, tag: &str, pack_args: &[&str]) -> PathBuf {
    let name = tag.replace([':', '/'], "_");
    let img = dir.join(format!("{name}.img"));
    pack(module, &img, pack_args);
    let tar = dir.join(format!("{name}.tar"));
    let o = wasmvm()
        .args(["image", "export"])
        .arg(&img)
        .arg("-o")
        .arg(&tar)
        .args(["--format", "oci", "--tag", tag])
        .output()
        .unwrap();
    assert!(o.status.success(), "export: {}", stderr(&o));
    tar
}
