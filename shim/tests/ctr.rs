//! The shim under a real containerd, driven by `ctr`: output and exit codes, signals,
//! several containers at once, signed-only runtimes, refusals, cgroups, and a shim killed
//! with SIGKILL.

mod harness;

use std::io::Write;
use std::process::Stdio;

use harness::*;

const GREETING: &str = "Hello from a wasmvm VM!";

/// A containerd with the exitcode sample imported as `wasmvm.test/exitcode:1`.
fn with_exitcode() -> Option<(Containerd, tempfile::TempDir)> {
    if !available() {
        return None;
    }
    let dir = scratch();
    let tar = oci_image(
        dir.path(),
        &sample("exitcode"),
        "wasmvm.test/exitcode:1",
        &[],
    );
    let c = Containerd::start();
    c.import(&tar);
    Some((c, dir))
}

const EXITCODE: &str = "wasmvm.test/exitcode:1";

#[test]
fn ctr_run_gives_the_apps_output_arguments_environment_and_exit_code() {
    let Some((c, dir)) = with_exitcode() else {
        return;
    };
    let hello = oci_image(dir.path(), &sample("hello"), "wasmvm.test/hello:1", &[]);
    c.import(&hello);
    let o = c.run("wasmvm.test/hello:1", "hello", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(GREETING), "{}", stdout(&o));

    for code in [0, 7, 125] {
        let o = c.run(
            EXITCODE,
            &format!("exit{code}"),
            &[],
            &["/app.img", "exit", &code.to_string()],
        );
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    }
    let o = c.run(
        EXITCODE,
        "stderr",
        &[],
        &["/app.img", "stderr", "to the log"],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "out");
    assert_eq!(stderr(&o), "to the log");

    let o = c.run(
        EXITCODE,
        "args",
        &[],
        &["/app.img", "args", "one two", "three"],
    );
    assert_eq!(
        stdout(&o),
        "/app.img\nargs\none two\nthree\n",
        "{}",
        stderr(&o)
    );

    let o = c.run(
        EXITCODE,
        "env",
        &["--env", "GREETING=hi there", "--cwd", "/srv"],
        &["/app.img", "env"],
    );
    let env = stdout(&o);
    assert!(env.lines().any(|l| l == "GREETING=hi there"), "{env}");
    assert!(env.lines().any(|l| l == "PWD=/srv"), "{env}");

    // A trap is the app failing, not the shim.
    let o = c.run(EXITCODE, "trap", &[], &["/app.img", "trap"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("trap"), "{}", stderr(&o));

    // stdin reaches the app, with its end of file.
    let mut child = c
        .run_command(EXITCODE, "cat", &[], &["/app.img", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the fifo")
        .unwrap();
    assert!(wait_within(&mut child).success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "through the fifo");

    // Nothing is left: no tasks, containers or shims.
    let o = run_ok(c.ctr().args(["containers", "ls", "-q"]));
    assert_eq!(stdout(&o).trim(), "");
    assert!(
        c.shims().into_iter().all(wait_gone),
        "a shim outlived its containers"
    );
}

#[test]
fn a_container_killed_by_a_signal_reports_128_plus_the_signal() {
    let Some((c, _dir)) = with_exitcode() else {
        return;
    };
    for (signal, code) in [("SIGKILL", 137), ("SIGTERM", 143)] {
        let id = format!("idle-{}", signal.to_lowercase());
        let mut child = c.start_ready(EXITCODE, &id, &[], &["/app.img", "idle"], "ready");
        run_ok(c.ctr().args(["task", "kill", "-s", signal, &id]));
        let status = wait_within(&mut child);
        assert_eq!(status.code(), Some(code), "{signal}");
        drop(child.stdin.take());
    }
}

#[test]
fn two_containers_run_at_once_and_each_keeps_its_own_exit_code() {
    let Some((c, _dir)) = with_exitcode() else {
        return;
    };
    let start = |id: &str| c.start_ready(EXITCODE, id, &[], &["/app.img", "idle"], "ready");
    let mut a = start("a");
    let mut b = start("b");
    // Both VMs exist side by side, each its own process.
    assert_ne!(c.task_pid("a"), c.task_pid("b"));
    run_ok(c.ctr().args(["task", "kill", "-s", "SIGKILL", "a"]));
    assert_eq!(wait_within(&mut a).code(), Some(137));
    // b is untouched by a's end, and ends normally when its stdin does.
    drop(b.stdin.take());
    assert_eq!(wait_within(&mut b).code(), Some(0));
}

#[test]
fn a_signed_only_runtime_refuses_unsigned_images_and_runs_signed_ones() {
    let Some((c, dir)) = with_exitcode() else {
        return;
    };
    let key = dir.path().join("release");
    run_ok(wasmvm().args(["key", "generate", "-o"]).arg(&key));
    let signed = oci_image(
        dir.path(),
        &sample("hello"),
        "wasmvm.test/signed:1",
        &["--sign", key.to_str().unwrap()],
    );
    c.import(&signed);
    let config = dir.path().join("shim.toml");
    std::fs::write(&config, format!("verify_key = \"{}.pub\"\n", key.display())).unwrap();
    let opts = ["--runtime-config-path", config.to_str().unwrap()];

    let o = c.run("wasmvm.test/signed:1", "signed", &opts, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(GREETING));

    let o = c.run(EXITCODE, "unsigned", &opts, &["/app.img", "exit", "0"]);
    assert_eq!(o.status.code(), Some(253), "{}", stdout(&o));
    assert!(stderr(&o).contains("not signed"), "{}", stderr(&o));

    // A broken configuration fails the container, naming the file and the key.
    std::fs::write(&config, "verify_kee = \"/k.pub\"\n").unwrap();
    let o = c.run(EXITCODE, "badconfig", &opts, &["/app.img", "exit", "0"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("verify_kee"), "{}", stderr(&o));
}

#[test]
fn what_a_vm_cannot_run_fails_that_container_with_a_reason_and_others_run_on() {
    let Some((c, dir)) = with_exitcode() else {
        return;
    };
    // A long-running neighbour in the same containerd.
    let mut neighbour = c.start_ready(EXITCODE, "neighbour", &[], &["/app.img", "idle"], "ready");

    let refused = |id: &str, ctr_args: &[&str], args: &[&str], reason: &str| {
        let o = c.run(EXITCODE, id, ctr_args, args);
        assert_eq!(o.status.code(), Some(253), "{id}: {}", stderr(&o));
        assert!(stderr(&o).contains(reason), "{id}: {}", stderr(&o));
    };
    refused(
        "shell",
        &[],
        &["/bin/sh", "-c", "echo"],
        "/bin/sh is not in the image",
    );
    refused("relative", &[], &["app.img"], "not an absolute path");
    refused(
        "privileged",
        &["--privileged"],
        &["/app.img"],
        "privileged mode is not supported",
    );
    refused(
        "device",
        &["--device", "/dev/null"],
        &["/app.img"],
        "devices cannot be given",
    );
    refused(
        "tiny",
        &["--memory-limit", "33554432"],
        &["/app.img"],
        "too small for a VM",
    );

    // An image whose /app.img is not an image: wasmvm's own refusal, in the log.
    let corrupt = dir.path().join("corrupt.img");
    std::fs::write(&corrupt, b"WASMVM\0\0 but not really").unwrap();
    let tar = dir.path().join("corrupt.tar");
    let export = wasmvm()
        .args(["image", "export"])
        .arg(&corrupt)
        .arg("-o")
        .arg(&tar)
        .args(["--format", "oci", "--tag", "wasmvm.test/corrupt:1"])
        .output()
        .unwrap();
    if export.status.success() {
        c.import(&tar);
        let o = c.run("wasmvm.test/corrupt:1", "corrupt", &[], &[]);
        assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
        assert!(stderr(&o).contains("wasmvm:"), "{}", stderr(&o));
    } else {
        // export itself refuses a corrupt image: also a clear error, and nothing to run.
        assert!(stderr(&export).contains("wasmvm:"), "{}", stderr(&export));
    }

    // exec is answered, not crashed on.
    let o = output_within(
        c.ctr()
            .args(["task", "exec", "--exec-id", "x", "neighbour", "/app.img"]),
        QUICK_LIMIT,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("exec is not supported"),
        "{}",
        stderr(&o)
    );

    // The neighbour ran through all of it.
    drop(neighbour.stdin.take());
    assert_eq!(wait_within(&mut neighbour).code(), Some(0));
}

#[test]
fn the_vm_runs_in_the_containers_cgroup_and_its_memory_limit_never_kills_it() {
    let Some((c, _dir)) = with_exitcode() else {
        return;
    };
    let limit: u64 = 128 << 20;
    let mut idle = c.start_ready(
        EXITCODE,
        "limited",
        &["--memory-limit", &limit.to_string()],
        &["/app.img", "idle"],
        "ready",
    );
    let pid = c.task_pid("limited");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let expected = format!("/{}/limited", c.namespace);
    assert!(
        cgroup.lines().any(|l| l.ends_with(&expected)),
        "the VMM is not in {expected}:\n{cgroup}"
    );
    drop(idle.stdin.take());
    assert_eq!(wait_within(&mut idle).code(), Some(0));

    // An app that takes all the memory it can ends normally: the limit leaves room for
    // the VMM beside the guest.
    let o = c.run(
        EXITCODE,
        "alloc",
        &["--memory-limit", &limit.to_string()],
        &["/app.img", "alloc"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("allocated "), "{}", stdout(&o));
}

#[test]
fn a_shim_killed_with_sigkill_leaves_no_vm_running() {
    let Some((c, _dir)) = with_exitcode() else {
        return;
    };
    let mut client = c.start_ready(EXITCODE, "orphan", &[], &["/app.img", "idle"], "ready");
    let vmm = c.task_pid("orphan");
    let stat = std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap();
    let shim: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        is_shim(shim as u32),
        "the VMM's parent {shim} is not the shim"
    );
    let socket = shim_socket(shim as u32);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    assert!(wait_gone(vmm), "the VMM outlived its shim");
    // containerd's clean-up after the dead shim (the `delete` action) removes its socket.
    assert!(
        wait_removed(&socket),
        "the killed shim's socket {} stayed",
        socket.display()
    );
    // The client sees the task end instead of hanging.
    drop(client.stdin.take());
    wait_within(&mut client);
}

#[test]
fn a_plain_wasm_image_runs_packed_in_memory_unless_signatures_are_required() {
    let Some((c, dir)) = with_exitcode() else {
        return;
    };
    // runwasi's convention: the module in an ordinary layer, the entrypoint naming it.
    let tar = dir.path().join("plain.tar");
    let module = std::fs::read(sample("hello")).unwrap();
    oci::write_image(
        &tar,
        "wasmvm.test/plain:1",
        ("wasip1", "wasm"),
        &[("hello.wasm", &module)],
        &["/hello.wasm"],
    );
    c.import(&tar);
    let o = c.run("wasmvm.test/plain:1", "plain", &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(GREETING), "{}", stdout(&o));

    let key = dir.path().join("k");
    run_ok(wasmvm().args(["key", "generate", "-o"]).arg(&key));
    let config = dir.path().join("shim.toml");
    std::fs::write(&config, format!("verify_key = \"{}.pub\"\n", key.display())).unwrap();
    let o = c.run(
        "wasmvm.test/plain:1",
        "plain-signed-only",
        &["--runtime-config-path", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("carries no signature"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_environment_stays_off_command_lines_and_may_be_large() {
    let Some((c, dir)) = with_exitcode() else {
        return;
    };
    let mut idle = c.start_ready(
        EXITCODE,
        "secret",
        &["--env", "SECRET=hunter2"],
        &["/app.img", "idle"],
        "ready",
    );
    let vmm = c.task_pid("secret");
    let cmdline = std::fs::read(format!("/proc/{vmm}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("wasmvm"), "{cmdline}");
    assert!(
        !cmdline.contains("hunter2"),
        "the environment is on the command line: {cmdline}"
    );
    drop(idle.stdin.take());
    assert_eq!(wait_within(&mut idle).code(), Some(0));

    // Four variables of 60 KiB (ctr's --env-file takes lines up to 64 KiB), all of
    // which reach the app.
    let big = "x".repeat(60 << 10);
    let env_file = dir.path().join("big.env");
    let text: String = (0..4).map(|i| format!("BIG{i}={big}\n")).collect();
    std::fs::write(&env_file, text).unwrap();
    let o = c.run(
        EXITCODE,
        "bigenv",
        &["--env-file", env_file.to_str().unwrap()],
        &["/app.img", "env"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for i in 0..4 {
        let prefix = format!("BIG{i}=");
        assert!(
            out.lines()
                .any(|l| l.len() == prefix.len() + big.len() && l.starts_with(&prefix)),
            "BIG{i} did not arrive whole"
        );
    }
}

#[test]
fn a_create_that_fails_after_the_fork_fails_cleanly() {
    let Some((c, _dir)) = with_exitcode() else {
        return;
    };
    // Not a network namespace: setns fails in the forked child, before exec.
    let o = c.run(
        EXITCODE,
        "badns",
        &["--with-ns", "network:/proc/self/ns/pid"],
        &["/app.img", "exit", "0"],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("cannot enter the container's network namespace"),
        "{}",
        stderr(&o)
    );
    let cgroup = format!("/sys/fs/cgroup/memory/{}/badns", c.namespace);
    assert!(
        !std::path::Path::new(&cgroup).exists(),
        "{cgroup} left behind"
    );
    // The same containerd runs the next container as if nothing happened.
    let o = c.run(EXITCODE, "after", &[], &["/app.img", "exit", "5"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
}
