//! `wasmvm`: turn a wasm32-wasip1 program into its own micro-VM. A thin CLI over
//! `wasmvm_loader`; the command-line contract is docs/cli.md.

mod cli;
mod commands;
mod export;
mod fleet;
mod keys;
mod output;
mod progress;
mod signals;

use std::process::ExitCode;

use clap::Parser;
use wasmvm_abi::exit;

/// The guest kernels, one per engine, built by build.rs and embedded so an installed
/// `wasmvm` is complete.
pub static KERNELS: wasmvm_loader::image::pack::Kernels = wasmvm_loader::image::pack::Kernels {
    wasmi: include_bytes!(env!("WASMVM_KERNEL_ELF")),
    wasmtime: include_bytes!(env!("WASMVM_KERNEL_WASMTIME_ELF")),
};

/// Stops `anyhow` errors from capturing stack traces, unless the user asked for them with
/// `RUST_LIB_BACKTRACE`: wasmvm prints its errors as messages (`{:#}`), never their traces.
/// `RUST_BACKTRACE=1`, which many Rust developers keep set, otherwise turns them on too, and
/// `wasi-common` (host reference mode) makes an error for every call that would block. In
/// the static musl binary each capture scans all of `.eh_frame` (the threads' entry frames
/// have no unwind entry, so libunwind falls back to a linear search): with it, host mode
/// served ~1,300 HTTP requests/s instead of ~36,000. Panics still print their backtrace, as
/// `RUST_BACKTRACE` says.
fn no_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any thread exists, so nothing reads
        // or writes the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

fn main() -> ExitCode {
    // Before any thread exists: the VMM's confined threads must not get malloc arenas of
    // their own (see the function).
    wasmvm_loader::vmm::seccomp::single_arena();
    no_error_backtraces();
    if let Err(e) = signals::install() {
        eprintln!("wasmvm: error: {e:#}");
        return ExitCode::from(exit::USAGE as u8);
    }
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
