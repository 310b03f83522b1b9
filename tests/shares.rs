//! Live host directories (`wasmvm run --dir`, `--dir-ro`): served over virtio-9p by the
//! built-in VMM's own 9P server and by QEMU's `-fsdev local`, checked against host reference
//! mode, and attacked from inside.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};

use common::*;

fn share(dir: &Path, guest: &str) -> String {
    format!("{}::{guest}", dir.display())
}

#[test]
fn the_files_sample_on_a_live_directory_matches_the_host() {
    let dir = scratch();
    std::fs::write(dir.path().join("input.txt"), "hello from the host\n").unwrap();
    let spec = share(dir.path(), "/data");
    let vm = run(&sample("files"), &["--dir", &spec], b"");
    assert_eq!(vm.status.code(), Some(0), "{}", stderr(&vm));
    let host = run(&sample("files"), &["--vmm", "host", "--dir", &spec], b"");
    assert_eq!(stdout(&vm), stdout(&host));
    assert_eq!(stderr(&vm), stderr(&host));
    assert!(stdout(&vm).contains("input.txt: \"hello from the host\\n\""));
    // The app cleaned up after itself: only the input is left on the host.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn the_host_sees_the_apps_writes() {
    for vmm in backends() {
        let dir = scratch();
        std::fs::write(dir.path().join("input.txt"), "make me loud").unwrap();
        let o = run_on(
            vmm,
            &sample("files"),
            &[
                "--dir",
                &share(dir.path(), "/data"),
                "--",
                "/data",
                "convert",
            ],
            b"",
        );
        assert_eq!(o.status.code(), Some(0), "{vmm}: {}", stderr(&o));
        assert_eq!(stdout(&o), "converted 12 bytes\n");
        let out = std::fs::read_to_string(dir.path().join("output.txt")).unwrap();
        assert_eq!(out, "MAKE ME LOUD", "{vmm}");
    }
}

#[test]
fn files_move_both_ways_while_the_app_runs() {
    for vmm in backends() {
        let dir = scratch();
        let mut child = wasmvm()
            .args(["run", "--vmm", vmm, "--accel", accel()])
            .arg(sample("files"))
            .args(["--dir", &share(dir.path(), "/srv"), "--", "/srv", "relay"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = Lines::new(child.stdout.take().unwrap());
        expect_line(&mut out, &mut child, "ready\n", vmm);
        // Written after the VM started: the app must see it.
        std::fs::write(dir.path().join("from-host.txt"), "abc123").unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        expect_line(&mut out, &mut child, "relayed 6 bytes\n", vmm);
        let o = wait_with_output_within(child, RUN_LIMIT);
        assert_eq!(o.status.code(), Some(0), "{vmm}: {}", stderr(&o));
        let back = std::fs::read_to_string(dir.path().join("from-guest.txt")).unwrap();
        assert_eq!(back, "321cba", "{vmm}");
    }
}

/// The next line of `child`'s stdout, which must be `expected`; otherwise (or if none comes
/// within [`RUN_LIMIT`]) the child is killed and the test fails with its stderr.
fn expect_line(lines: &mut Lines, child: &mut Child, expected: &str, vmm: &str) {
    match lines.next_within(RUN_LIMIT) {
        Ok(Some(line)) if line == expected => {}
        got => kill_and_panic(child, &format!("{vmm}: expected {expected:?}, got {got:?}")),
    }
}

#[test]
fn a_read_only_share_refuses_every_change() {
    let dir = scratch();
    std::fs::write(dir.path().join("input.txt"), "keep me").unwrap();
    let o = run(
        &sample("files"),
        &[
            "--dir-ro",
            &share(dir.path(), "/ro"),
            "--",
            "/ro",
            "try-write",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "create: refused (ReadOnlyFilesystem)\nmkdir: refused (ReadOnlyFilesystem)\n\
         remove: refused (ReadOnlyFilesystem)\nread: \"keep me\"\n"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["input.txt"]);
}

#[test]
fn symlinks_and_dot_dot_cannot_leave_a_share() {
    let outer = scratch();
    std::fs::write(outer.path().join("secret.txt"), "top secret").unwrap();
    let inner = outer.path().join("share");
    std::fs::create_dir(&inner).unwrap();
    std::os::unix::fs::symlink(outer.path(), inner.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("..", inner.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", inner.join("file-link")).unwrap();
    let spec = share(&inner, "/data");
    let args = ["--dir", &spec, "--", "/data", "escape"];
    let vm = run(&sample("files"), &args, b"");
    assert_eq!(vm.status.code(), Some(0), "{}", stderr(&vm));
    let text = stdout(&vm);
    for path in [
        "../secret.txt",
        "abs-link/secret.txt",
        "rel-link/secret.txt",
        "file-link",
    ] {
        assert!(text.contains(&format!("{path}: refused")), "{text}");
    }
    assert!(text.contains("plant: refused"), "{text}");
    assert!(!outer.path().join("planted.txt").exists());
    // wasmtime's wasi-common refuses the same paths.
    let host = run(
        &sample("files"),
        &["--vmm", "host", "--dir", &spec, "--", "/data", "escape"],
        b"",
    );
    assert_eq!(stdout(&host), text);
}

#[test]
fn a_missing_share_is_a_clear_error() {
    for vmm in backends() {
        let o = run_on(
            vmm,
            &sample("hello"),
            &["--dir", "/nonexistent/wasmvm-share::/data"],
            b"",
        );
        assert_eq!(o.status.code(), Some(253), "{vmm}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--dir /nonexistent/wasmvm-share: No such file or directory"),
            "{vmm}: {}",
            stderr(&o)
        );
    }
}
