//! Builds the guest kernel (`kernel/`, its own workspace) with a nested cargo, once per engine
//! flavour, and embeds both ELFs in the `wasmvm` binary, so an installed `wasmvm` needs nothing
//! else. An image carries only the flavour of its engine: the wasmi kernel interprets modules,
//! the wasmtime kernel runs code compiled when the image was packed.
//!
//! Each nested build runs with a cleaned environment (nothing of this build's `CARGO_*`,
//! `RUSTFLAGS` or target settings leaks into it) and its own target directory
//! (`target/kernel-wasmi`, `target/kernel-wasmtime`, so the flavours never rebuild each other),
//! always in release mode: wasmi is unusably slow unoptimised. `WASMVM_KERNEL=path` and
//! `WASMVM_KERNEL_WASMTIME=path` skip a build and embed that ELF instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One kernel flavour: its name, the cargo features that select it, the variable that
/// overrides it, and the variable that hands its path to `src/main.rs`.
struct Flavour {
    name: &'static str,
    features: &'static [&'static str],
    prebuilt: &'static str,
    embed: &'static str,
}

const FLAVOURS: [Flavour; 2] = [
    Flavour {
        name: "wasmi",
        features: &[],
        prebuilt: "WASMVM_KERNEL",
        embed: "WASMVM_KERNEL_ELF",
    },
    Flavour {
        name: "wasmtime",
        features: &["--no-default-features", "--features", "engine-wasmtime"],
        prebuilt: "WASMVM_KERNEL_WASMTIME",
        embed: "WASMVM_KERNEL_WASMTIME_ELF",
    },
];

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for input in [
        "kernel/src",
        "kernel/Cargo.toml",
        "kernel/Cargo.lock",
        "kernel/linker.ld",
        "kernel/.cargo/config.toml",
        "kernel/stubs",
        "abi/src",
        "abi/Cargo.toml",
        "wasi/src",
        "wasi/Cargo.toml",
        "engine/src",
        "engine/Cargo.toml",
        "vendor/smoltcp",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for flavour in &FLAVOURS {
        println!("cargo:rerun-if-env-changed={}", flavour.prebuilt);
        let elf = match env::var_os(flavour.prebuilt) {
            Some(prebuilt) => {
                let path = PathBuf::from(prebuilt);
                println!("cargo:rerun-if-changed={}", path.display());
                path
            }
            None => build(&root, &target_root, flavour),
        };
        println!("cargo:rustc-env={}={}", flavour.embed, elf.display());
    }
    pack_relative_relocations();
}

/// Links the `wasmvm` binary with its relative relocations packed (`DT_RELR`) when the
/// linker and the C library both support it. A position-independent binary this size has
/// ~20,000 of them: unpacked, a 490 KiB table read at every start, and with the pages the
/// kernel maps around each read, about 1 MiB of every VM's VMM process (and ~0.4 ms of its
/// start).
///
/// - musl (the default build, `.cargo/config.toml`): the binary is static and applies its
///   own relocations with the start code of the musl that Rust's target bundles (1.2.4 or
///   later reads `DT_RELR`), so only the linker has to know the flag. A probe is linked
///   with it by the system's `cc`: a linker that ignores the flag (and warns) leaves it out.
/// - glibc: the C library the binary will run with must apply the table too (glibc 2.36
///   or later), so the probe is also run; a cross build, which cannot run it, leaves the
///   flag out. A binary so linked needs glibc 2.36 or later wherever it runs.
///
/// `WASMVM_PACK_RELOCS=0` leaves the flag out.
fn pack_relative_relocations() {
    const FLAG: &str = "-Wl,-z,pack-relative-relocs";
    println!("cargo:rerun-if-env-changed=WASMVM_PACK_RELOCS");
    if env::var("WASMVM_PACK_RELOCS").as_deref() == Ok("0") {
        return;
    }
    let native = env::var("TARGET").ok() == env::var("HOST").ok();
    let linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let static_musl = linux && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl");
    let native_glibc = native && linux && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !static_musl && !native_glibc {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let source = out.join("relr-probe.c");
    let probe = out.join("relr-probe");
    std::fs::write(
        &source,
        "static int target;\nstatic int *volatile pointer = &target;\nint main(void) { return pointer == &target ? 0 : 1; }\n",
    )
    .expect("write the relocation probe");
    let linked = Command::new("cc")
        .args(["-pie", "-fPIE", FLAG, "-o"])
        .arg(&probe)
        .arg(&source)
        .output();
    let clean_link = linked.is_ok_and(|o| o.status.success() && o.stderr.is_empty());
    // The probe is a glibc program: it tells whether glibc applies the table, which a
    // static musl binary does not depend on.
    let runs =
        clean_link && (static_musl || Command::new(&probe).status().is_ok_and(|s| s.success()));
    if runs {
        println!("cargo:rustc-link-arg-bin=wasmvm={FLAG}");
    }
}

/// Builds one flavour and returns the path of its ELF.
fn build(root: &Path, target_root: &Path, flavour: &Flavour) -> PathBuf {
    let target_dir = target_root.join(format!("kernel-{}", flavour.name));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("kernel"))
        .args(["build", "--release", "--locked"])
        .args(flavour.features)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_clear();
    for keep in [
        "PATH",
        "HOME",
        "RUSTUP_HOME",
        "CARGO_HOME",
        "RUSTUP_TOOLCHAIN",
        "TERM",
        "TMPDIR",
    ] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let output = cmd.output().expect("failed to run cargo for the kernel");
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!(
            "building the {} kernel (kernel/) failed; its errors are above",
            flavour.name
        );
    }
    target_dir.join("x86_64-unknown-linux-gnu/release/wasmvm-kernel")
}
