//! `wasmvm pack` and `inspect`: validation, rejection messages, reproducibility. No VM.

mod common;

use std::path::Path;

use common::*;

fn pack_err(module_bytes: &[u8]) -> (i32, String) {
    let dir = scratch();
    let m = dir.path().join("app.wasm");
    std::fs::write(&m, module_bytes).unwrap();
    let o = wasmvm()
        .arg("pack")
        .arg(&m)
        .arg("-o")
        .arg(dir.path().join("app.img"))
        .output()
        .unwrap();
    assert!(
        !dir.path().join("app.img").exists(),
        "a rejected module must not leave an image"
    );
    (o.status.code().unwrap(), stderr(&o))
}

#[test]
fn rejects_a_text_file() {
    let (code, err) = pack_err(b"this is not wasm\n");
    assert_eq!(code, 253);
    assert!(err.contains("not a WebAssembly module"), "{err}");
}

#[test]
fn rejects_a_truncated_module() {
    let full = std::fs::read(sample("hello")).unwrap();
    let (code, err) = pack_err(&full[..full.len() / 2]);
    assert_eq!(code, 253);
    assert!(err.contains("invalid or unsupported module"), "{err}");
}

#[test]
fn rejects_unknown_imports_listing_every_one() {
    let wasm = wat::parse_str(
        r#"(module
            (import "env" "foo" (func))
            (import "env" "bar" (func (param i32)))
            (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "_start")))"#,
    )
    .unwrap();
    let (code, err) = pack_err(&wasm);
    assert_eq!(code, 253);
    assert!(
        err.contains("imports `env.foo`, which wasmvm does not provide"),
        "{err}"
    );
    assert!(
        err.contains("imports `env.bar`, which wasmvm does not provide"),
        "{err}"
    );
    assert!(!err.contains("fd_write"), "{err}");
}

#[test]
fn rejects_wrong_wasi_signatures_components_and_missing_start() {
    let wrong_sig = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))
            (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();
    let (_, err) = pack_err(&wrong_sig);
    assert!(err.contains("proc_exit` with the wrong signature"), "{err}");

    let (_, err) = pack_err(b"\0asm\x0d\0\x01\0");
    assert!(err.contains("component"), "{err}");

    let reactor =
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "run")))"#).unwrap();
    let (_, err) = pack_err(&reactor);
    assert!(err.contains("no `_start`"), "{err}");
}

#[test]
fn packing_is_reproducible() {
    let dir = scratch();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let args = ["--env", "K=V", "--", "x", "y"];
    pack(&sample("hello"), &a, &args);
    pack(&sample("hello"), &b, &args);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn inspect_reports_versions_module_and_settings() {
    let dir = scratch();
    let img = dir.path().join("hello.img");
    pack(
        &sample("hello"),
        &img,
        &[
            "--env",
            "GREETING=hi",
            "--argv0",
            "greeter",
            "--",
            "one",
            "two",
        ],
    );
    let o = wasmvm()
        .arg("inspect")
        .arg(&img)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["abi_version"], wasmvm_abi::ABI_VERSION);
    assert_eq!(v["engine"]["name"], "wasmi");
    assert_eq!(v["engine"]["artifact_size"], serde_json::Value::Null);
    assert_eq!(v["kernel_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["module"]["name"], "hello.wasm");
    assert_eq!(v["module"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["args"], serde_json::json!(["one", "two"]));
    assert_eq!(v["env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(v["argv0"], "greeter");
    assert!(
        v["module"]["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "wasi_snapshot_preview1.fd_write")
    );
    assert!(
        v["module"]["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "_start")
    );

    assert_eq!(v["preopens"], serde_json::json!([]));
    assert_eq!(v["invoke"], serde_json::Value::Null);

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.txt"), "12345").unwrap();
    let with_dir = dir.path().join("dir.img");
    pack(
        &sample("hello"),
        &with_dir,
        &["--dir", &format!("{}::/srv", data.display())],
    );
    let o = wasmvm()
        .arg("inspect")
        .arg(&with_dir)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["preopens"],
        serde_json::json!([{"guest_path": "/srv", "entries": 1, "bytes": 5}])
    );

    let text = wasmvm().arg("inspect").arg(&img).output().unwrap();
    let abi = format!("ABI version {}", wasmvm_abi::ABI_VERSION);
    assert!(stdout(&text).contains(&abi), "{}", stdout(&text));
    assert!(
        stdout(&text).contains("engine:         wasmi (interpreted)"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn run_names_an_image_it_refuses_once() {
    let dir = scratch();
    let not_image = dir.path().join("notes.img");
    std::fs::write(&not_image, "hello").unwrap();
    let shown = not_image.display().to_string();
    let mut vmms = vec!["host"];
    if builtin_vmm_usable() {
        vmms.push("builtin");
    }
    for vmm in vmms {
        let o = wasmvm()
            .args(["run", "--vmm", vmm])
            .arg(&not_image)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(253), "{vmm}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{shown}: not a wasmvm image")),
            "{vmm}: {err}"
        );
        assert_eq!(err.matches(&shown).count(), 1, "{vmm}: {err}");
    }
}

#[test]
fn inspect_refuses_non_images_and_tampered_bundles() {
    let dir = scratch();
    let o = wasmvm()
        .arg("inspect")
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("not a wasmvm image"), "{}", stderr(&o));

    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let mut bytes = std::fs::read(&img).unwrap();
    // Flip a byte in the middle of the module (it sits just before the program headers).
    let at = bytes.len() - 4096;
    bytes[at] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let o = wasmvm().arg("inspect").arg(&img).output().unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_253_and_version_works() {
    let o = wasmvm()
        .args(["run", "--timeout", "soon", "x.img"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("not a duration"), "{}", stderr(&o));
    let o = wasmvm()
        .args(["pack", "a.wasm", "-o", "b.img", "--env", "NOEQUALS"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("KEY=VALUE"), "{}", stderr(&o));
    let o = wasmvm().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn listeners_are_packed_and_inspected() {
    let dir = scratch();
    let img = dir.path().join("listen.img");
    pack(
        &sample("hello"),
        &img,
        &["--listen", "8080", "--listen", "127.0.0.1:9000"],
    );
    let o = wasmvm()
        .arg("inspect")
        .arg(&img)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["listens"],
        serde_json::json!(["0.0.0.0:8080", "127.0.0.1:9000"])
    );
    let text = wasmvm().arg("inspect").arg(&img).output().unwrap();
    assert!(
        stdout(&text).contains("listens:        0.0.0.0:8080, 127.0.0.1:9000"),
        "{}",
        stdout(&text)
    );
    let o = wasmvm()
        .arg("pack")
        .arg(sample("hello"))
        .arg("-o")
        .arg(dir.path().join("bad.img"))
        .args(["--listen", "80000"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("`80000`"), "{}", stderr(&o));
}

/// Network options that contradict each other, or a published port that is taken, fail
/// before any VM starts, naming the problem.
#[test]
fn network_usage_errors_are_named() {
    let dir = scratch();
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let vmm = if accel() == "kvm" { "builtin" } else { "qemu" };
    let run = |extra: &[&str]| {
        wasmvm()
            .args(["run", "--vmm", vmm, "--accel", accel()])
            .args(extra)
            .arg(&img)
            .output()
            .unwrap()
    };
    let o = run(&["--network", "none", "-p", "8080:80"]);
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("--network none"), "{}", stderr(&o));
    let o = run(&["-p", "8080:80/sctp"]);
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("unknown protocol `sctp`"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--network", "wifi"]);
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("`wifi` is not a network"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--ip", "10.9.0.2/24", "--gateway", "10.9.0.1"]);
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("--network tap:IFNAME"),
        "{}",
        stderr(&o)
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = run(&["-p", &format!("127.0.0.1:{port}:80")]);
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains(&format!("host port {port} on 127.0.0.1 is already in use")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn non_regular_image_files_are_refused_before_reading() {
    let dir = scratch();
    let fifo = dir.path().join("fifo.img");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A FIFO would block a reader forever, /dev/zero never ends, a directory is no image:
    // each is refused at once by name, whatever the command.
    for target in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        for args in [
            &["inspect"][..],
            &["run"],
            &["image", "export", "-o", "/nonexistent/disk.qcow2"],
        ] {
            let o = output_within(wasmvm().args(args).arg(target), QUICK_LIMIT);
            assert_eq!(o.status.code(), Some(253), "{args:?} {}", target.display());
            let e = stderr(&o);
            assert!(
                e.contains("not a regular file") || e.contains("is a directory"),
                "{args:?} {}: {e}",
                target.display()
            );
        }
    }
}
