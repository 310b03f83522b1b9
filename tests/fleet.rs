//! The fleet: `run -d`, `ps`, `logs`, `stop`, `rm`. Every test has its own state directory
//! (XDG_STATE_HOME, XDG_RUNTIME_DIR) and checks that nothing it started outlives it. Tests
//! wait by polling `ps --json` or a log with a deadline, never by sleeping for a guest.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// An app that stays alive at no cost: prints `ready`, then sleeps an hour at a time in
/// `poll_oneoff` (the VMM blocks in ppoll meanwhile).
const SLEEPER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; "ready\n" at 16, its iovec at 0.
  (data (i32.const 0) "\10\00\00\00\06\00\00\00")
  (data (i32.const 16) "ready\n")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
    ;; One subscription at 64: tag 0 (clock), the monotonic clock (id 1, at +16), a
    ;; relative timeout of an hour (at +24).
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 3600000000000))
    (loop $forever
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 160)))
      (br $forever))))
"#;

const DEADLINE: Duration = Duration::from_secs(60);
/// How long one fleet command (`run -d`, `stop`, `ps`...) may take before it counts as hung.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// One test's fleet: its state and runtime directories, its images, and a safety net that
/// kills whatever it started should the test fail halfway.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = scratch();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Fleet { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = wasmvm();
        cmd.args(args)
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .stdin(Stdio::null());
        cmd
    }

    /// `wasmvm ARGS` to its end, within [`COMMAND_LIMIT`].
    fn wasmvm(&self, args: &[&str]) -> Output {
        output_within(self.command(args), COMMAND_LIMIT)
    }

    /// Runs `wasmvm ARGS`, which must succeed, and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.wasmvm(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        stdout(&o)
    }

    /// Runs `wasmvm ARGS`, which must fail with 253, and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.wasmvm(args);
        assert_eq!(o.status.code(), Some(253), "{args:?}: {}", stdout(&o));
        stderr(&o)
    }

    /// An image of `module` (absolute, so the fleet's processes name this directory).
    fn image(&self, module: &Path, name: &str) -> String {
        let img = self.path(name);
        pack(module, &img, &[]);
        img.to_str().unwrap().to_string()
    }

    fn sleeper(&self) -> String {
        let wasm = self.path("sleeper.wasm");
        std::fs::write(&wasm, wat::parse_str(SLEEPER).unwrap()).unwrap();
        self.image(&wasm, "sleeper.img")
    }

    /// `wasmvm run -d --memory 32M ARGS...`, which prints the name.
    fn start(&self, args: &[&str]) -> String {
        let run: Vec<&str> = ["run", "-d", "--memory", "32M"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        self.ok(&run).trim().to_string()
    }

    fn ps(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap()
    }

    fn vm(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("`ps -a` does not list {name}"))
    }

    /// Polls `ps -a --json` until `done` holds, and returns that listing.
    fn wait_ps(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ps = self.ps();
            if done(&ps) {
                return ps;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; ps: {ps:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_vm(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let ps = self.wait_ps(&format!("{name}: {what}"), |ps| {
            ps.iter().any(|v| v["name"] == name && done(v))
        });
        ps.into_iter().find(|v| v["name"] == name).unwrap()
    }

    /// Waits until the log of `name` holds `text`.
    fn wait_log(&self, name: &str, text: &str) {
        let log = PathBuf::from(self.vm(name)["log"].as_str().unwrap());
        let deadline = Instant::now() + DEADLINE;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(text)
        {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {text:?} in the log of {name}: {:?}",
                std::fs::read_to_string(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The processes, zombies aside, whose command line names this fleet's directory:
    /// supervisors and VMMs.
    fn processes(&self) -> Vec<(i32, String)> {
        let needle = self.dir.path().to_str().unwrap().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
            if cmdline.contains(&needle) && !zombie && pid != std::process::id() as i32 {
                found.push((pid, cmdline));
            }
        }
        found
    }

    /// Asserts that nothing this fleet started still runs (allowing a moment for processes
    /// that are on their way out).
    fn assert_no_processes(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left behind: {left:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            kill(pid, rustix::process::Signal::KILL);
        }
    }
}

fn kill(pid: i32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    let _ = rustix::process::kill_process(pid, signal);
}

fn pid(v: &Value, key: &str) -> i32 {
    v[key].as_i64().unwrap_or_else(|| panic!("no {key}: {v:#}")) as i32
}

#[test]
fn fifty_vms_start_stop_and_fail_truthfully() {
    let fleet = Fleet::new();
    let img = fleet.sleeper();
    let names: Vec<String> = (0..50).map(|i| format!("vm-{i:02}")).collect();
    for name in &names {
        // `run -d` returns once the supervisor has recorded the VMM: no wait for the guest.
        assert_eq!(&fleet.start(&["--name", name, &img]), name);
    }
    // All listed as running at once (`ps` without -a lists running VMs only)...
    let ps: Vec<Value> = serde_json::from_str(&fleet.ok(&["ps", "--json"])).unwrap();
    assert_eq!(ps.len(), 50, "{ps:#?}");
    assert!(
        ps.iter()
            .all(|v| v["status"] == "running" && v["vmm_pid"].is_i64())
    );
    // ...and really booted: each app has said it is ready.
    for name in &names {
        fleet.wait_log(name, "ready\n");
    }
    // Each one's memory: the VMM's resident pages, guest RAM it touched among them (a
    // booted guest's kernel alone is ~2 MiB of it).
    for v in fleet.ps() {
        let rss = v["rss_bytes"].as_u64().unwrap_or(0);
        assert!(rss > 2 << 20 && rss < 256 << 20, "{v:#}");
    }
    let table = fleet.ok(&["ps"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "PID", "MEMORY", "IMAGE", "RESTARTS"]
    );
    assert_eq!(lines.clone().count(), 50, "{table}");
    assert!(
        lines.all(|l| l.contains(" running ") && l.contains(" MiB ") && l.contains("sleeper.img")),
        "{table}"
    );

    // Stop half: they show as stopped (the VMM stopped its guest on SIGTERM: 143), the
    // others still run.
    let (first, rest) = names.split_at(25);
    let mut stop: Vec<&str> = vec!["stop"];
    stop.extend(first.iter().map(String::as_str));
    let stopped = fleet.ok(&stop);
    assert_eq!(stopped.lines().collect::<Vec<_>>(), first, "{stopped}");
    for v in fleet.ps() {
        let name = v["name"].as_str().unwrap().to_string();
        if first.contains(&name) {
            assert_eq!(v["status"], "stopped", "{v:#}");
            assert_eq!(v["exit_code"], 143, "{v:#}");
            assert!(
                v["vmm_pid"].is_null() && v["supervisor_pid"].is_null() && v["rss_bytes"].is_null(),
                "{v:#}"
            );
        } else {
            assert_eq!(v["status"], "running", "{v:#}");
        }
    }

    // A VMM killed from outside: its supervisor records the failure and why.
    let victim = &rest[0];
    let vmm = pid(&fleet.vm(victim), "vmm_pid");
    kill(vmm, rustix::process::Signal::KILL);
    let v = fleet.wait_vm(victim, "failed", |v| v["status"] == "failed");
    assert_eq!(v["reason"], "VMM killed by signal 9", "{v:#}");
    assert_eq!(v["restarts"], 0);
    let table = fleet.ok(&["ps", "-a"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(victim.as_str())
                && l.contains("failed: VMM killed by signal 9")),
        "{table}"
    );
    assert!(!fleet.ok(&["ps"]).contains(victim.as_str()));

    // Stop the rest (the failed one too: not running, which is no error).
    let mut stop: Vec<&str> = vec!["stop"];
    stop.extend(rest.iter().map(String::as_str));
    let o = fleet.wasmvm(&stop);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("VM `{victim}` is not running")),
        "{}",
        stderr(&o)
    );
    let ps = fleet.ps();
    assert_eq!(ps.len(), 50);
    assert_eq!(
        ps.iter().filter(|v| v["status"] == "stopped").count(),
        49,
        "{ps:#?}"
    );
    assert_eq!(fleet.ok(&["ps"]).lines().count(), 1, "only the header");
    // No daemon left behind: no supervisor, no VMM.
    assert_no_supervisor_left(&fleet);
}

fn assert_no_supervisor_left(fleet: &Fleet) {
    fleet.assert_no_processes();
}

#[test]
fn names_are_unique_valid_and_known() {
    let fleet = Fleet::new();
    let img = fleet.image(&sample("hello"), "hello.img");
    assert_eq!(fleet.start(&["--name", "web", &img]), "web");
    let e = fleet.fails(&["run", "-d", "--name", "web", &img]);
    assert!(e.contains("the name `web` is already in use"), "{e}");
    let e = fleet.fails(&["run", "-d", "--name=-x", &img]);
    assert!(e.contains("is not a valid VM name"), "{e}");
    let e = fleet.fails(&["run", "-d", "--name", "a/b", &img]);
    assert!(e.contains("is not a valid VM name"), "{e}");
    let e = fleet.fails(&["run", "--name", "x", &img]);
    assert!(e.contains("--detach"), "{e}");
    let e = fleet.fails(&["run", "-d", &fleet.path("missing.img").to_string_lossy()]);
    assert!(e.contains("cannot read"), "{e}");
    for cmd in [&["logs", "nope"][..], &["stop", "nope"], &["rm", "nope"]] {
        let e = fleet.fails(cmd);
        assert!(e.contains("no VM named `nope`"), "{cmd:?}: {e}");
    }

    // Two claims of one name at once: exactly one wins.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            fleet
                .command(&["run", "-d", "--name", "twin", &img])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<_> = racers
        .into_iter()
        .map(|c| wait_with_output_within(c, COMMAND_LIMIT).status.code())
        .collect();
    codes
        .iter()
        .for_each(|c| assert!(matches!(c, Some(0 | 253)), "{codes:?}"));
    assert_eq!(
        codes.iter().filter(|c| **c == Some(0)).count(),
        1,
        "{codes:?}"
    );

    // `--verify` refuses a bad image in the foreground, before any VM is recorded.
    let key = fleet.path("key");
    let o = fleet.wasmvm(&["key", "generate", "-o", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pubkey = format!("{}.pub", key.display());
    let e = fleet.fails(&["run", "-d", "--name", "unsigned", "--verify", &pubkey, &img]);
    assert!(e.contains("not signed"), "{e}");
    assert!(
        fleet.ps().iter().all(|v| v["name"] != "unsigned"),
        "a refused image left a VM behind"
    );

    // Without --name, a fresh name from the image's.
    let generated = fleet.start(&[&img]);
    assert!(generated.starts_with("hello-"), "{generated}");
    fleet.wait_ps("every VM to exit", |ps| {
        ps.len() == 3 && ps.iter().all(|v| v["status"] == "exited")
    });
    fleet.assert_no_processes();
}

#[test]
fn logs_show_the_output_and_follow_until_the_end() {
    let fleet = Fleet::new();
    let img = fleet.image(&sample("hello"), "hello.img");
    let name = fleet.start(&["--env", "GREETING=hi", &img, "--", "a b"]);
    // `logs -f` ends by itself when the VM has ended, with everything it wrote.
    let mut follow = fleet
        .command(&["logs", "-f", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while follow.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("`logs -f` did not end with the VM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let greeting = "Hello from a wasmvm VM!\nargs: [\"a b\"]\nGREETING=hi\n";
    let followed = wait_with_output_within(follow, DEADLINE);
    assert_eq!(followed.status.code(), Some(0));
    assert_eq!(stdout(&followed), greeting);
    assert_eq!(fleet.ok(&["logs", &name]), greeting);
    let v = fleet.vm(&name);
    assert_eq!(
        (&v["status"], &v["exit_code"]),
        (&"exited".into(), &0.into()),
        "{v:#}"
    );
    assert_eq!(v["args"], serde_json::json!(["a b"]));
    let table = fleet.ok(&["ps", "-a"]);
    assert!(table.contains("exited (0) "), "{table}");

    // stderr is captured too, and a stopped VM's log says it was stopped.
    let sleeper = fleet.sleeper();
    let name = fleet.start(&[&sleeper]);
    fleet.wait_log(&name, "ready\n");
    assert_eq!(fleet.ok(&["stop", &name]).trim(), name);
    let log = fleet.ok(&["logs", &name]);
    assert!(
        log.starts_with("ready\n") && log.contains("terminated"),
        "{log}"
    );
    // Stopping an ended VM is no error.
    let o = fleet.wasmvm(&["stop", &name]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("is not running (stopped"),
        "{}",
        stderr(&o)
    );
    fleet.assert_no_processes();
}

#[test]
fn on_failure_restarts_until_max_and_after_a_killed_vmm() {
    let fleet = Fleet::new();
    let exit = fleet.image(&sample("exitcode"), "exit.img");
    let gives_up = fleet.start(&["--restart", "on-failure:2", &exit, "--", "exit", "3"]);
    let once = fleet.start(&[&exit, "--", "exit", "3"]);
    let fine = fleet.start(&["--restart", "on-failure", &exit, "--", "exit", "0"]);
    let v = fleet.wait_vm(&gives_up, "to give up", |v| v["status"] == "exited");
    assert_eq!(v["restarts"], 2, "{v:#}");
    assert_eq!(v["exit_code"], 3, "{v:#}");
    assert_eq!(v["restart"], "on-failure:2");
    assert_eq!(v["reason"], "gave up after 2 restarts", "{v:#}");
    // Three runs, three times in the log... of an app that prints nothing; the state says.
    for (name, restarts, code) in [(&once, 0, 3), (&fine, 0, 0)] {
        let v = fleet.wait_vm(name, "to exit", |v| v["status"] == "exited");
        assert_eq!(
            (v["restarts"].as_i64(), v["exit_code"].as_i64()),
            (Some(restarts), Some(code))
        );
    }

    // A VMM killed from outside is a failure: started again, under a new VMM.
    let sleeper = fleet.sleeper();
    let name = fleet.start(&["--restart", "on-failure", &sleeper]);
    fleet.wait_log(&name, "ready\n");
    let first = pid(&fleet.vm(&name), "vmm_pid");
    kill(first, rustix::process::Signal::KILL);
    let v = fleet.wait_vm(&name, "to run again", |v| {
        v["status"] == "running" && v["restarts"] == 1
    });
    assert_ne!(pid(&v, "vmm_pid"), first);
    assert_eq!(
        v["reason"], "VMM killed by signal 9",
        "the last run's end: {v:#}"
    );
    // Stopped is not a failure: no restart.
    fleet.ok(&["stop", &name]);
    let v = fleet.vm(&name);
    assert_eq!(
        (&v["status"], &v["restarts"]),
        (&"stopped".into(), &1.into()),
        "{v:#}"
    );
    fleet.assert_no_processes();
}

#[test]
fn rm_refuses_a_running_vm_without_force() {
    let fleet = Fleet::new();
    let sleeper = fleet.sleeper();
    let name = fleet.start(&["--name", "keep", &sleeper]);
    let e = fleet.fails(&["rm", &name]);
    assert!(e.contains("VM `keep` is running"), "{e}");
    assert_eq!(fleet.vm(&name)["status"], "running");
    assert_eq!(fleet.ok(&["rm", "-f", &name]).trim(), name);
    assert!(fleet.ps().is_empty());
    fleet.assert_no_processes();
    // The name is free again; an ended VM goes without -f.
    let hello = fleet.image(&sample("hello"), "hello.img");
    fleet.start(&["--name", "keep", &hello]);
    fleet.wait_vm("keep", "to exit", |v| v["status"] == "exited");
    assert_eq!(fleet.ok(&["rm", "keep"]).trim(), "keep");
    assert!(fleet.ps().is_empty());
}

#[test]
fn a_killed_supervisor_shows_as_failed_and_takes_its_vmm_along() {
    let fleet = Fleet::new();
    let sleeper = fleet.sleeper();
    let name = fleet.start(&[&sleeper]);
    fleet.wait_log(&name, "ready\n");
    let v = fleet.vm(&name);
    kill(pid(&v, "supervisor_pid"), rustix::process::Signal::KILL);
    let v = fleet.wait_vm(&name, "failed", |v| v["status"] == "failed");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with("supervisor (pid "), "{reason}");
    // Its VMM got SIGTERM from the kernel (the parent-death signal) and stopped its guest.
    fleet.assert_no_processes();
    fleet.wait_log(&name, "terminated: the run was stopped");
    let o = fleet.wasmvm(&["stop", &name]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn a_damaged_state_file_is_named_and_removable_and_hides_no_other_vm() {
    let fleet = Fleet::new();
    let hello = fleet.image(&sample("hello"), "hello.img");
    for name in ["good", "garbled", "fifo", "link"] {
        fleet.start(&["--name", name, &hello]);
    }
    fleet.wait_ps("all to exit", |ps| {
        ps.len() == 4 && ps.iter().all(|v| v["status"] == "exited")
    });
    let state = |name: &str| {
        fleet
            .path("state")
            .join(format!("wasmvm/vms/{name}/state.json"))
    };
    std::fs::write(state("garbled"), b"{ not json").unwrap();
    std::fs::remove_file(state("fifo")).unwrap();
    let made = Command::new("mkfifo").arg(state("fifo")).status().unwrap();
    assert!(made.success());
    std::fs::remove_file(state("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", state("link")).unwrap();

    // `ps` answers (a FIFO must not block it), lists the healthy VM, and names each
    // damaged one with why.
    let ps = fleet.ps();
    assert_eq!(ps.len(), 4, "{ps:?}");
    assert_eq!(fleet.vm("good")["status"], "exited");
    for name in ["garbled", "fifo", "link"] {
        let v = fleet.vm(name);
        assert_eq!(v["status"], "failed", "{name}");
        assert!(
            v["reason"].as_str().unwrap().contains("state.json"),
            "{name}: {v}"
        );
    }
    let table = fleet.ok(&["ps"]);
    assert!(table.contains("damaged state"), "{table}");
    // `rm` removes them; the healthy VM stays.
    assert_eq!(
        fleet.ok(&["rm", "garbled", "fifo", "link"]).lines().count(),
        3
    );
    let ps = fleet.ps();
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["name"], "good");
    // The symlink's target was never touched.
    assert!(std::fs::metadata("/etc/passwd").is_ok());
}

/// `wasmvm stop` never kills a VMM while it saves its volumes: on QEMU a volume is written
/// back when the VM ends, which for a big one outlasts a short grace time.
#[test]
fn stop_waits_for_a_vm_saving_its_volumes() {
    if !backends().contains(&"qemu") {
        eprintln!("note: QEMU not available; skipping");
        return;
    }
    let fleet = Fleet::new();
    let img = fleet.path("big.img");
    let o = fleet.wasmvm(&["volume", "create", img.to_str().unwrap(), "--size", "1G"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let blob = fleet.path("blob");
    let data: Vec<u8> = (0..200u32 << 20).map(|i| (i * 7 / 4096) as u8).collect();
    std::fs::write(&blob, &data).unwrap();
    if mcopy(&img, blob.to_str().unwrap(), "::/blob").is_none() {
        return;
    }
    let sleeper = fleet.sleeper();
    let volume = format!("{}::/data", img.display());
    let name = fleet.start(&[
        "--vmm",
        "qemu",
        "--accel",
        accel(),
        "--volume",
        &volume,
        &sleeper,
    ]);
    fleet.wait_log(&name, "ready\n");
    let o = fleet.wasmvm(&["stop", "-t", "1", &name]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), name);
    // Whether the save outlasted the grace time depends on this host's speed; say which.
    eprintln!("stop said: {:?}", stderr(&o));
    let v = fleet.vm(&name);
    assert_eq!(v["status"], "stopped", "{v:#}");
    assert!(
        !v["reason"].as_str().unwrap_or("").contains("killed"),
        "killed while saving: {v:#}\n{}",
        stderr(&o)
    );
    // The image was replaced whole, with the file intact, and nothing is left beside it.
    let back = fleet.path("back");
    mcopy(&img, "::/blob", back.to_str().unwrap()).unwrap();
    assert!(std::fs::read(&back).unwrap() == data, "the blob changed");
    assert!(!fleet.path(".big.img.wasmvm-new").exists());
    fleet.assert_no_processes();
}
