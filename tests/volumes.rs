//! Persistent volumes: `wasmvm volume create` and `wasmvm run --volume IMAGE::GUEST` on every
//! backend and in host mode, read back with host tools (mtools).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn create(img: &Path, size: &str) -> std::process::Output {
    wasmvm()
        .args(["volume", "create"])
        .arg(img)
        .args(["--size", size])
        .output()
        .unwrap()
}

/// `mtype -i IMG ::PATH`, or `None` without mtools (a failure under CI, which installs it).
fn mtype(img: &Path, path: &str) -> Option<String> {
    match Command::new("mtype")
        .arg("-i")
        .arg(img)
        .arg(format!("::{path}"))
        .output()
    {
        Ok(o) => {
            assert!(o.status.success(), "mtype: {}", stderr(&o));
            Some(stdout(&o))
        }
        Err(_) => {
            assert!(
                std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() != Ok("1"),
                "mtools (mtype) is required"
            );
            eprintln!("note: mtools not installed; skipping the host-tool check");
            None
        }
    }
}

#[test]
fn volume_create_makes_a_sparse_fat_image_and_never_overwrites() {
    let dir = scratch();
    let img = dir.path().join("data.img");
    let o = create(&img, "1G");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("created {} (1024 MiB FAT volume)\n", img.display())
    );
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "not sparse: {} blocks",
        meta.blocks()
    );

    let again = create(&img, "1G");
    assert_eq!(again.status.code(), Some(253));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let tiny = create(&dir.path().join("tiny.img"), "10K");
    assert_eq!(tiny.status.code(), Some(253));
    assert!(
        stderr(&tiny).contains("outside 1M..2T"),
        "{}",
        stderr(&tiny)
    );
}

#[test]
fn files_survive_runs_on_every_backend_and_host_tools_read_them() {
    let dir = scratch();
    let img = dir.path().join("data.img");
    assert!(create(&img, "64M").status.success());
    let spec = format!("{}::/data", img.display());
    let mut runs = backends().to_vec();
    runs.push("host");
    for (i, vmm) in runs.iter().enumerate() {
        let o = run_on(
            vmm,
            &sample("files"),
            &["--volume", &spec, "--", "/data", "counter"],
            b"",
        );
        assert_eq!(o.status.code(), Some(0), "{vmm}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("count {}\n", i + 1), "{vmm}");
    }
    if let Some(count) = mtype(&img, "/count.txt") {
        assert_eq!(count, format!("{}\n", runs.len()));
        assert_eq!(mtype(&img, "/log/run-1.txt").unwrap(), "ran\n");
    }
}

#[test]
fn a_volume_in_use_is_refused_and_a_non_volume_is_named() {
    let dir = scratch();
    let img = dir.path().join("data.img");
    assert!(create(&img, "16M").status.success());
    let spec = format!("{}::/data", img.display());
    let mut holder = start_ready(
        &[
            "--vmm",
            backends()[0],
            "--accel",
            accel(),
            "--volume",
            &spec,
        ],
        &sample("exitcode"),
        &["idle"],
        "ready\n",
    );
    let second = run_on(backends()[0], &sample("hello"), &["--volume", &spec], b"");
    drop(holder.stdin.take());
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    assert_eq!(second.status.code(), Some(253));
    assert!(
        stderr(&second).contains("is in use by another wasmvm run"),
        "{}",
        stderr(&second)
    );

    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let o = run_on(
        "builtin",
        &sample("hello"),
        &["--volume", &format!("{}::/data", junk.display())],
        b"",
    );
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("not a wasmvm volume (a FAT disk image)"),
        "{}",
        stderr(&o)
    );
    let o = run_on(
        backends()[0],
        &sample("hello"),
        &["--volume", "no-guest-path"],
        b"",
    );
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("IMAGE::GUEST"), "{}", stderr(&o));
}

#[test]
fn a_symlinked_volume_is_updated_through_its_link() {
    let dir = scratch();
    let img = dir.path().join("data.img");
    assert!(create(&img, "16M").status.success());
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let spec = format!("{}::/data", link.display());
    for count in 1..=2 {
        let o = run_on(
            backends()[0],
            &sample("files"),
            &["--volume", &spec, "--", "/data", "counter"],
            b"",
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("count {count}\n"));
    }
    // The link is still a link, and the real image holds the changes.
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    if let Some(count) = mtype(&img, "/count.txt") {
        assert_eq!(count, "2\n");
    }
}
