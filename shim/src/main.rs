//! `containerd-shim-wasmvm-v1`: containerd's runtime shim v2 for wasmvm. Every container
//! is a wasm app in its own VM, run by `wasmvm run` installed beside this binary
//! (docs/deploy.md says how to install and configure it).

mod cgroup;
mod command;
mod container;
mod launcher;
mod options;
mod service;
mod spawner;
mod spec;
mod stdio;
mod sys;

/// The runtime name containerd knows this shim by (`--runtime io.containerd.wasmvm.v1`).
const RUNTIME: &str = "io.containerd.wasmvm.v1";

fn main() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == launcher::FLAG) {
        launcher::main(args.collect());
    }
    containerd_shim::run::<service::Shim>(RUNTIME, None);
}
