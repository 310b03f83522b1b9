//! A container's process before it starts. The shim forks it at `create` (so the container
//! has its pid, cgroup and network namespace from then on) running this binary in launcher
//! mode; it waits for one byte on its start pipe, sent at `start`, and then becomes what
//! the container is: `wasmvm run` (by exec, keeping the pid), a refusal, or CRI's
//! placeholder sandbox. The start pipe closing without that byte means the container was
//! deleted unstarted.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::spec::REFUSED_STATUS;
use crate::sys;

/// The first argument that selects launcher mode: no containerd flag looks like it.
pub const FLAG: &str = "--wasmvm-launch";

/// The argument lists the shim gives a launcher.
pub fn exec_args(program: &std::path::Path, args: &[OsString]) -> Vec<OsString> {
    let mut v = vec![FLAG.into(), "exec".into(), program.into()];
    v.extend(args.iter().cloned());
    v
}

pub fn refuse_args(why: &str) -> Vec<OsString> {
    vec![FLAG.into(), "refuse".into(), why.into()]
}

pub fn placeholder_args() -> Vec<OsString> {
    vec![FLAG.into(), "placeholder".into()]
}

/// Runs launcher mode with the arguments after [`FLAG`]; never returns.
pub fn main(args: Vec<OsString>) -> ! {
    let mut start = sys::take_start_pipe();
    let mut byte = [0u8; 1];
    match start.read(&mut byte) {
        Ok(1) => {}
        // Deleted before it started (or the shim died): nothing to do.
        _ => std::process::exit(0),
    }
    drop(start);
    let mode = args.first().and_then(|m| m.to_str()).unwrap_or("");
    match mode {
        "exec" if args.len() >= 2 => {
            let err = Command::new(&args[1]).args(&args[2..]).exec();
            eprintln!(
                "containerd-shim-wasmvm: cannot run {}: {err}",
                args[1].to_string_lossy()
            );
            std::process::exit(REFUSED_STATUS);
        }
        "refuse" if args.len() == 2 => {
            eprintln!("wasmvm: {}", args[1].to_string_lossy());
            std::process::exit(REFUSED_STATUS);
        }
        "placeholder" => loop {
            // Ends by a signal (stop, kill): the default actions of SIGTERM and SIGKILL.
            std::thread::park();
        },
        _ => {
            eprintln!("containerd-shim-wasmvm: bad launcher arguments");
            std::process::exit(REFUSED_STATUS);
        }
    }
}
