//! `wasmvm`: turn a wasm32-wasip1 program into its own micro-VM. A thin CLI over
//! `wasmvm_loader`; the command-line contract is docs/cli.md.

mod cli;
mod commands;
mod export;
mod fleet;
mod keys;

use std::process::ExitCode;

use clap::Parser;
use wasmvm_abi::exit;

/// The guest kernel, built by build.rs and embedded so an installed `wasmvm` is complete.
pub static KERNEL: &[u8] = include_bytes!(env!("WASMVM_KERNEL_ELF"));

fn main() -> ExitCode {
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
