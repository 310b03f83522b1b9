//! Signed images: `wasmvm key generate`, `pack --sign`, `run --verify`, and `inspect`'s
//! signature line; every reader of images still boots a signed one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const GREETING: &str = "Hello from a wasmvm VM!";

/// `wasmvm key generate -o DIR/NAME`, asserting success; returns (private, public, the
/// printed fingerprint).
fn generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let prefix = dir.join(name);
    let o = wasmvm()
        .args(["key", "generate", "-o"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(o.status.success(), "key generate: {}", stderr(&o));
    let out = stdout(&o);
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint line in {out:?}"))
        .to_string();
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    (prefix.clone(), dir.join(format!("{name}.pub")), fingerprint)
}

fn inspect_json(img: &Path) -> serde_json::Value {
    let o = wasmvm()
        .arg("inspect")
        .arg(img)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "inspect: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The file offset of the app bundle: the `p_offset` of the image's last program header
/// (the packer appends the bundle's `PT_LOAD` after the kernel's own entries).
fn bundle_offset(bytes: &[u8]) -> usize {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let phoff = u64_at(32) as usize;
    let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    let offset = u64_at(phoff + (phnum - 1) * 56 + 8) as usize;
    assert_eq!(&bytes[offset..offset + 8], b"WASMVMB\0");
    offset
}

fn run_verified(vmm: &str, img: &Path, pubkey: &Path) -> Output {
    let key = pubkey.to_str().unwrap();
    run_on(vmm, img, &["--verify", key], b"")
}

/// A refused run: status 253, the expected one-line message, and no VM booted.
fn assert_refused(o: &Output, says: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(253), "{what}: {err}");
    assert!(err.contains(says), "{what}: expected {says:?} in {err:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: one line: {err:?}"
    );
    assert!(err.starts_with("wasmvm: error: "), "{what}: {err}");
    assert!(
        o.stdout.is_empty(),
        "{what}: the VM must not boot: {}",
        stdout(o)
    );
}

#[test]
fn a_signed_image_runs_verified_on_every_backend() {
    let dir = scratch();
    let (private, public, fingerprint) = generate_key(dir.path(), "release");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o600);
    assert!(
        std::fs::read_to_string(&private)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );

    let img = dir.path().join("hello.img");
    let unsigned = dir.path().join("unsigned.img");
    pack(
        &sample("hello"),
        &img,
        &["--sign", private.to_str().unwrap()],
    );
    pack(&sample("hello"), &unsigned, &[]);
    let (signed_bytes, unsigned_bytes) = (
        std::fs::read(&img).unwrap(),
        std::fs::read(&unsigned).unwrap(),
    );
    // The trailer is all that differs; signing is deterministic, like packing.
    assert_eq!(signed_bytes.len(), unsigned_bytes.len() + 120);
    assert_eq!(
        &signed_bytes[..unsigned_bytes.len()],
        unsigned_bytes.as_slice()
    );
    let again = dir.path().join("again.img");
    pack(
        &sample("hello"),
        &again,
        &["--sign", private.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&again).unwrap(), signed_bytes);

    // inspect names the signer, in JSON and text; an unsigned image has none.
    let v = inspect_json(&img);
    assert_eq!(v["signature"]["algorithm"], "ed25519");
    assert_eq!(v["signature"]["key_fingerprint"], fingerprint.as_str());
    assert_eq!(v["signature"]["valid"], true);
    assert_eq!(v["module"]["name"], "hello.wasm");
    assert_eq!(
        inspect_json(&unsigned)["signature"],
        serde_json::Value::Null
    );
    let text = stdout(&wasmvm().arg("inspect").arg(&img).output().unwrap());
    assert!(
        text.contains(&format!(
            "signature:      ed25519, key {fingerprint} (valid)"
        )),
        "{text}"
    );

    // Every reader of images takes a signed one as it is: both VMMs (the built-in one maps
    // the file, QEMU loads it as -kernel) and host mode.
    let o = run(&img, &[], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(GREETING));
    for vmm in backends_and_host() {
        let o = run_verified(vmm, &img, &public);
        assert_eq!(o.status.code(), Some(0), "{vmm}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("{GREETING}\n"), "{vmm}");
    }
}

#[test]
fn tampered_unsigned_and_foreign_images_are_refused() {
    let dir = scratch();
    let (private, public, fingerprint) = generate_key(dir.path(), "k");
    let (_, other_public, other_fingerprint) = generate_key(dir.path(), "other");
    let img = dir.path().join("hello.img");
    pack(
        &sample("hello"),
        &img,
        &["--sign", private.to_str().unwrap()],
    );
    let good = std::fs::read(&img).unwrap();
    let trailer = good.len() - 120;
    let bundle = bundle_offset(&good);
    let phdr_end = {
        let phoff = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
        phoff + u16::from_le_bytes([good[56], good[57]]) as usize * 56
    };
    // The verification comes before any VM, so the first backend is enough.
    let vmm = backends()[0];

    let changed =
        "the image's signature does not match its contents: the image was changed after signing";
    for (what, at, says) in [
        ("a kernel byte", 0x1000, changed),
        ("the ELF header's e_phoff", 32, changed),
        ("a bundle byte", bundle + 100, changed),
        ("a module byte", trailer - 4096, changed),
        ("a program header byte", phdr_end - 20, changed),
        (
            "the trailer's signed length",
            trailer + 16,
            "the image's signature trailer is corrupt",
        ),
        ("a signature byte", good.len() - 1, changed),
        ("the first signature byte", trailer + 56, changed),
    ] {
        assert!(at < bundle || what != "a kernel byte");
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let tampered = dir.path().join("tampered.img");
        std::fs::write(&tampered, &bad).unwrap();
        let o = run_verified(vmm, &tampered, &public);
        assert_refused(&o, says, what);
        assert!(stderr(&o).contains("refusing to run"), "{what}");
    }

    // Cut short: the trailer is gone (or broken), so is the signature.
    let cut = dir.path().join("cut.img");
    std::fs::write(&cut, &good[..good.len() - 1]).unwrap();
    assert_refused(
        &run_verified(vmm, &cut, &public),
        "the image is not signed",
        "truncated",
    );

    // Unsigned.
    let unsigned = dir.path().join("unsigned.img");
    pack(&sample("hello"), &unsigned, &[]);
    assert_refused(
        &run_verified(vmm, &unsigned, &public),
        "the image is not signed (sign it with `wasmvm pack --sign KEY`)",
        "unsigned",
    );

    // Signed by another key: both fingerprints are named.
    let o = run_verified(vmm, &img, &other_public);
    assert_refused(
        &o,
        &format!(
            "the image is signed by key {fingerprint}, not by the trusted key {other_fingerprint}"
        ),
        "wrong key",
    );

    // A module has nothing to verify; nor does the wrong half of a key pair.
    assert_refused(
        &run_verified(vmm, &sample("hello"), &public),
        "it is a WebAssembly module, not an image: there is no signature to verify",
        "module",
    );
    assert_refused(
        &run_verified(vmm, &img, &private),
        "this is a private key",
        "private key for --verify",
    );

    // inspect still reads a tampered image, and says its signature is broken.
    let mut bad = good.clone();
    bad[0x1000] ^= 1;
    std::fs::write(dir.path().join("t.img"), &bad).unwrap();
    let v = inspect_json(&dir.path().join("t.img"));
    assert_eq!(v["signature"]["valid"], false);
    assert_eq!(v["signature"]["key_fingerprint"], fingerprint.as_str());
}

#[test]
fn key_generate_never_overwrites() {
    let dir = scratch();
    let (private, public, _) = generate_key(dir.path(), "k");
    let before = (
        std::fs::read(&private).unwrap(),
        std::fs::read(&public).unwrap(),
    );
    let o = wasmvm()
        .args(["key", "generate", "-o"])
        .arg(&private)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(
        (
            std::fs::read(&private).unwrap(),
            std::fs::read(&public).unwrap()
        ),
        before
    );

    // Only PREFIX.pub there: refused too, and no private key is left behind.
    let lone = dir.path().join("lone");
    std::fs::write(dir.path().join("lone.pub"), "mine").unwrap();
    let o = wasmvm()
        .args(["key", "generate", "-o"])
        .arg(&lone)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("lone.pub already exists"),
        "{}",
        stderr(&o)
    );
    assert!(!lone.exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lone.pub")).unwrap(),
        "mine"
    );

    // The default prefix, in the working directory.
    let o = wasmvm()
        .args(["key", "generate"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("wasmvm-key").exists());
    assert!(dir.path().join("wasmvm-key.pub").exists());
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    o
}

#[test]
fn openssl_reads_the_keys_and_checks_the_signature() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("note: openssl is not installed; skipping");
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let (private, _, fingerprint) = generate_key(d, "k");

    // OpenSSL reads both keys, and derives the same public key from the private one.
    let text = stdout(&openssl(&["pkey", "-in", "k", "-noout", "-text"], d));
    assert!(text.contains("ED25519 Private-Key"), "{text}");
    let derived = openssl(&["pkey", "-in", "k", "-pubout"], d).stdout;
    assert_eq!(derived, std::fs::read(d.join("k.pub")).unwrap());
    // The fingerprint: SHA-256 of the raw key, the last 32 bytes of the DER form.
    let der = openssl(&["pkey", "-pubin", "-in", "k.pub", "-outform", "DER"], d).stdout;
    std::fs::write(d.join("raw"), &der[der.len() - 32..]).unwrap();
    let digest = stdout(&openssl(&["dgst", "-sha256", "-r", "raw"], d));
    assert_eq!(digest.split_whitespace().next(), Some(fingerprint.as_str()));

    // OpenSSL verifies an image's signature: every byte before the last 64.
    let img = d.join("hello.img");
    pack(
        &sample("hello"),
        &img,
        &["--sign", private.to_str().unwrap()],
    );
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(d.join("signed"), &bytes[..bytes.len() - 64]).unwrap();
    std::fs::write(d.join("sig"), &bytes[bytes.len() - 64..]).unwrap();
    let o = openssl(
        &[
            "pkeyutl", "-verify", "-pubin", "-inkey", "k.pub", "-rawin", "-in", "signed",
            "-sigfile", "sig",
        ],
        d,
    );
    assert!(stdout(&o).contains("Signature Verified Successfully"));

    // And the other way round: a key from `openssl genpkey` signs, its public key verifies.
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ossl.pem"], d);
    openssl(
        &["pkey", "-in", "ossl.pem", "-pubout", "-out", "ossl.pub"],
        d,
    );
    let ossl = d.join("ossl.img");
    pack(
        &sample("hello"),
        &ossl,
        &["--sign", d.join("ossl.pem").to_str().unwrap()],
    );
    let o = run_verified("host", &ossl, &d.join("ossl.pub"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(GREETING));
}
