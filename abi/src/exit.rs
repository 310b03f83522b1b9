//! Exit statuses of `wasmvm run`: one table, used by every backend and by `docs/cli.md`.
//!
//! | status | meaning |
//! |---|---|
//! | 0–125 | the app's own exit status, exactly as wasmtime passes it |
//! | 1 | also: the app called `proc_exit` with a status of 126 or more (wasmtime does the same) |
//! | 1 | also: a wasm exception escaped the entry point (the compiled engine; wasmtime does the same) |
//! | 130 | interrupted by SIGINT (Ctrl-C); the VM was stopped |
//! | 129 | hung up by SIGHUP (the terminal or session went away); the VM was stopped |
//! | 134 | the app trapped (wasmtime's status for a trap) |
//! | 143 | terminated by SIGTERM; the VM was stopped |
//! | 250 | the guest kernel panicked or could not start the app |
//! | 251 | the guest crashed: the VM ended without an exit record (e.g. a triple fault) |
//! | 252 | `--timeout` expired; the VM was stopped |
//! | 253 | usage or host error: bad flags, an invalid image, no KVM, no QEMU |

/// Largest app status passed through unchanged.
pub const MAX_APP_STATUS: i32 = 125;
/// Status for a `proc_exit` value above [`MAX_APP_STATUS`], as wasmtime does.
pub const APP_STATUS_OUT_OF_RANGE: i32 = 1;
/// Status for an uncaught wasm exception, as `wasmtime run` ends with one.
pub const UNCAUGHT_EXCEPTION: i32 = 1;
pub const HANGUP: i32 = 129;
pub const INTERRUPTED: i32 = 130;
pub const TRAP: i32 = 134;
pub const TERMINATED: i32 = 143;
pub const KERNEL_PANIC: i32 = 250;
pub const GUEST_CRASH: i32 = 251;
pub const TIMEOUT: i32 = 252;
pub const USAGE: i32 = 253;

/// The port the guest writes to (with `out imm8`, which works at CPL 3) to end the VM after its
/// exit record; QEMU's `isa-debug-exit` device and our VMM listen there.
pub const EXIT_PORT: u16 = 0xf4;

/// The port the guest writes to (with `out imm8`) whenever it waits for the host: for stdin,
/// for channel credit, or for a clock deadline. It cannot `hlt` at CPL 3, so this exit is how
/// a waiting guest hands the CPU back: the built-in VMM delivers pending input there and
/// blocks briefly when there is none; QEMU ignores the port.
pub const WAIT_PORT: u16 = 0xf5;

/// The host status for an app that exited with `status`.
pub fn app_status(status: i32) -> i32 {
    if (0..=MAX_APP_STATUS).contains(&status) {
        status
    } else {
        APP_STATUS_OUT_OF_RANGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_status_range() {
        assert_eq!(app_status(0), 0);
        assert_eq!(app_status(125), 125);
        assert_eq!(app_status(126), 1);
        assert_eq!(app_status(-1), 1);
    }
}
