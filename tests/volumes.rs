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
    // A FAT32 volume fsck.fat has nothing to say about (the free count is recorded).
    if let Some(findings) = fsck_findings(&img) {
        assert!(findings.is_empty(), "{}", findings.join("\n"));
    }

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
    let runs = backends_and_host();
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
    assert_eq!(wait_within(&mut holder).code(), Some(0));
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

/// `fsck.fat -n IMG`'s findings, minus the dirty flag a killed writer leaves (as any FAT
/// driver does), or `None` without dosfstools (a failure under CI, which installs it).
fn fsck_findings(img: &Path) -> Option<Vec<String>> {
    match Command::new("fsck.fat").arg("-n").arg(img).output() {
        Ok(o) => {
            let text = format!("{}{}", stdout(&o), stderr(&o));
            Some(
                text.lines()
                    .filter(|l| {
                        !l.starts_with("fsck.fat ")
                            && !l.contains("Dirty bit is set")
                            && !l.contains("Automatically removing dirty bit")
                            && !l.contains("Leaving filesystem unchanged")
                            && !l.contains("files,") // the summary line
                            && !l.trim().is_empty()
                    })
                    .map(str::to_owned)
                    .collect(),
            )
        }
        Err(_) => {
            assert!(
                std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() != Ok("1"),
                "dosfstools (fsck.fat) is required"
            );
            eprintln!("note: dosfstools not installed; skipping the fsck check");
            None
        }
    }
}

/// Reads lines from `child`'s stdout until one equals `line` (the rest of its stdout is
/// drained on a thread); kills it and fails if the app ends first or no such line comes
/// within [`RUN_LIMIT`].
fn wait_for_line(child: &mut std::process::Child, line: &str) {
    let mut lines = Lines::new(child.stdout.take().unwrap());
    if let Err(e) = lines.until(RUN_LIMIT, |l| l.trim_end() == line) {
        kill_and_panic(
            child,
            &format!("waiting for the app to print {line:?}: {e}"),
        );
    }
}

#[test]
fn what_the_app_synced_survives_a_kill_9_of_the_host_process() {
    let dir = scratch();
    let img = dir.path().join("data.img");
    assert!(create(&img, "16M").status.success());
    let spec = format!("{}::/data", img.display());
    // Killed at different moments of a run that never stops writing.
    for (round, kill_after) in [3u64, 11, 24].into_iter().enumerate() {
        let mut app = start_ready(
            &["--volume", &spec],
            &sample("files"),
            &["/data", "churn"],
            "synced 0",
        );
        wait_for_line(&mut app, &format!("synced {kill_after}"));
        app.kill().unwrap(); // SIGKILL, mid-write
        let _ = app.wait();
        // Each round starts again at f0: the files of the last round are the ones checked.
        for i in [0, kill_after / 2, kill_after] {
            if let Some(text) = mtype(&img, &format!("/f{i}.txt")) {
                assert_eq!(text, i.to_string().repeat(700), "round {round}: f{i}.txt");
            }
        }
        // big.bin grows by 48 KiB chunks of their own index in every round, a run of
        // clusters each: whatever the kill cut short, no byte it keeps is another's.
        let copy = dir.path().join("big.bin");
        if common::mcopy(&img, "::/big.bin", copy.to_str().unwrap()).is_some() {
            let big = std::fs::read(&copy).unwrap();
            std::fs::remove_file(&copy).unwrap();
            assert!(
                big.len() >= (kill_after as usize) * (48 << 10),
                "round {round}: {} bytes",
                big.len()
            );
            let wrong = big
                .iter()
                .enumerate()
                .find(|&(at, &b)| b != (at / (48 << 10)) as u8);
            assert_eq!(wrong, None, "round {round}: big.bin ({} bytes)", big.len());
        }
        // A FAT volume has no journal: a write in flight when the process died may have
        // allocated a cluster that no entry records yet. That, and nothing else, may show.
        if let Some(findings) = fsck_findings(&img) {
            assert!(
                findings.iter().all(|f| f.starts_with("Reclaimed ")),
                "round {round}: fsck.fat -n found:\n{}",
                findings.join("\n")
            );
        }
        // The next run opens the volume (reclaiming such a cluster) and it is clean.
        let o = run_on(
            "builtin",
            &sample("files"),
            &["--volume", &spec, "--", "/data", "counter"],
            b"",
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        if let Some(findings) = fsck_findings(&img) {
            assert!(
                findings.is_empty(),
                "round {round}: {}",
                findings.join("\n")
            );
        }
    }
}

#[test]
fn a_full_volume_answers_enospc_at_the_write_and_keeps_earlier_files() {
    let dir = scratch();
    let img = dir.path().join("small.img");
    assert!(create(&img, "1M").status.success());
    let spec = format!("{}::/data", img.display());
    let o = run_on(
        "builtin",
        &sample("files"),
        &["--volume", &spec, "--", "/data", "fill"],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(": StorageFull\n"), "{out}");
    assert!(out.contains("big.bin holds them: true\n"), "{out}");
    assert!(out.contains("keep.txt: \"kept\\n\"\n"), "{out}");
    assert!(out.contains("after removing it: writable\n"), "{out}");
    if let Some(text) = mtype(&img, "/keep.txt") {
        assert_eq!(text, "kept\n");
        assert_eq!(mtype(&img, "/after.txt").unwrap(), "room again\n");
    }
    if let Some(findings) = fsck_findings(&img) {
        assert!(findings.is_empty(), "{}", findings.join("\n"));
    }
}

#[test]
fn a_damaged_volume_is_refused_before_boot_on_every_backend() {
    let dir = scratch();
    let img = dir.path().join("cut.img");
    assert!(create(&img, "16M").status.success());
    // Cut short, as a copy interrupted halfway would leave it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let spec = format!("{}::/data", img.display());
    for vmm in backends_and_host() {
        let o = run_on(vmm, &sample("hello"), &["--volume", &spec], b"");
        assert_eq!(o.status.code(), Some(253), "{vmm}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("damaged or crafted volume image, refused")
                && err.contains("the file has 8388608"),
            "{vmm}: {err}"
        );
        assert_eq!(err.matches("refused").count(), 1, "said once: {err}");
    }
}

#[test]
fn sighup_stops_the_run_and_saves_the_volume_on_every_backend() {
    let dir = scratch();
    for vmm in backends_and_host() {
        let img = dir.path().join(format!("{vmm}.img"));
        assert!(create(&img, "16M").status.success());
        let spec = format!("{}::/data", img.display());
        let mut app = start_ready(
            &["--vmm", vmm, "--accel", accel(), "--volume", &spec],
            &sample("files"),
            &["/data", "sync-and-wait"],
            "synced",
        );
        // Held open: the app waits for the end of its stdin, which must not come first.
        let stdin = app.stdin.take();
        send_signal(&app, libc::SIGHUP);
        let o = wait_with_output_within(app, RUN_LIMIT);
        drop(stdin);
        assert_eq!(o.status.code(), Some(129), "{vmm}: {}", stderr(&o));
        if let Some(text) = mtype(&img, "/written.txt") {
            assert_eq!(text, "written, not synced\n", "{vmm}");
            assert_eq!(mtype(&img, "/synced.txt").unwrap().len(), 10_000, "{vmm}");
        }
        if let Some(findings) = fsck_findings(&img) {
            assert!(findings.is_empty(), "{vmm}: {}", findings.join("\n"));
        }
    }
}

#[test]
fn file_operations_on_a_live_volume_match_host_mode() {
    let dir = scratch();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "Hello, volume\n").unwrap();
    let mut outputs = Vec::new();
    for vmm in ["builtin", "host"] {
        let img = dir.path().join(format!("{vmm}.img"));
        assert!(create(&img, "8M").status.success());
        if mcopy(&img, input.to_str().unwrap(), "::/input.txt").is_none() {
            return;
        }
        let spec = format!("{}::/data", img.display());
        let o = run_on(vmm, &sample("files"), &["--volume", &spec], b"");
        assert_eq!(o.status.code(), Some(0), "{vmm}: {}", stderr(&o));
        if let Some(findings) = fsck_findings(&img) {
            assert!(findings.is_empty(), "{vmm}: {}", findings.join("\n"));
        }
        outputs.push(stdout(&o));
    }
    assert_eq!(
        outputs[0], outputs[1],
        "the live volume vs host mode's checkout"
    );
    assert!(outputs[0].contains("renamed.txt"), "{}", outputs[0]);
}

#[test]
fn what_a_killed_checkout_left_is_removed_by_the_next_run() {
    if !backends().contains(&"qemu") {
        eprintln!("note: QEMU not available; skipping");
        return;
    }
    let dir = scratch();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let img = dir.path().join("data.img");
    assert!(create(&img, "16M").status.success());
    let spec = format!("{}::/data", img.display());
    let run = |app_args: &[&str]| {
        let mut cmd = wasmvm();
        cmd.env("TMPDIR", &tmp)
            .args([
                "run",
                "--vmm",
                "qemu",
                "--accel",
                accel(),
                "--volume",
                &spec,
            ])
            .arg(sample("files"))
            .arg("--")
            .args(app_args)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let mut app = spawn_ready(run(&["/data", "sync-and-wait"]), "synced");
    app.kill().unwrap();
    let _ = app.wait();
    let left = |prefix: &str| {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(prefix)
            })
            .count()
    };
    assert_eq!(
        left("wasmvm-volume-"),
        1,
        "the killed run's checkout is there"
    );
    // The image is as before the killed run: its changes are lost, nothing is damaged.
    let o = output_within(run(&["/data", "counter"]), RUN_LIMIT);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "count 1\n");
    assert_eq!(
        left("wasmvm-volume-"),
        0,
        "removed by the next run of the volume"
    );
    if let Some(findings) = fsck_findings(&img) {
        assert!(findings.is_empty(), "{}", findings.join("\n"));
    }
}
