//! Builds the guest kernel (`kernel/`, its own workspace) with a nested cargo and embeds the
//! resulting ELF in the `wasmvm` binary, so an installed `wasmvm` needs nothing else.
//!
//! The nested build runs with a cleaned environment (nothing of this build's `CARGO_*`,
//! `RUSTFLAGS` or target settings leaks into it) and its own target directory, always in
//! release mode: wasmi is unusably slow unoptimised. `WASMVM_KERNEL=path` skips it and embeds
//! that ELF instead.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WASMVM_KERNEL");
    if let Some(prebuilt) = env::var_os("WASMVM_KERNEL") {
        let path = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", path.display());
        println!("cargo:rustc-env=WASMVM_KERNEL_ELF={}", path.display());
        return;
    }

    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for input in [
        "kernel/src",
        "kernel/Cargo.toml",
        "kernel/Cargo.lock",
        "kernel/linker.ld",
        "kernel/.cargo/config.toml",
        "abi/src",
        "abi/Cargo.toml",
        "wasi/src",
        "wasi/Cargo.toml",
        "engine/src",
        "engine/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("kernel");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("kernel"))
        .args(["build", "--release", "--locked", "--target-dir"])
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
        panic!("building the wasmvm kernel (kernel/) failed; its errors are above");
    }
    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/wasmvm-kernel");
    println!("cargo:rustc-env=WASMVM_KERNEL_ELF={}", elf.display());
}
