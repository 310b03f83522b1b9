//! `wasmvm`: turn a wasm32-wasip1 program into its own micro-VM. A thin CLI over
//! `wasmvm_loader`; the command-line contract is docs/cli.md.

mod cli;
mod commands;
mod export;
mod fleet;
mod keys;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use wasmvm_abi::exit;

/// The guest kernels, one per engine, built by build.rs and embedded so an installed
/// `wasmvm` is complete.
pub static KERNELS: wasmvm_loader::image::pack::Kernels = wasmvm_loader::image::pack::Kernels {
    wasmi: include_bytes!(env!("WASMVM_KERNEL_ELF")),
    wasmtime: include_bytes!(env!("WASMVM_KERNEL_WASMTIME_ELF")),
};

fn main() -> ExitCode {
    // Before any thread exists: the VMM's confined threads must not get malloc arenas of
    // their own (see the function).
    wasmvm_loader::vmm::seccomp::single_arena();
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage_error { exit::USAGE as u8 } else { 0 });
        }
    };
    match commands::dispatch(args) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("wasmvm: error: {e:#}");
            ExitCode::from(exit::USAGE as u8)
        }
    }
}
