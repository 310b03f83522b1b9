//! Helpers shared by the crate's unit tests.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on a thread of its own and returns its result; fails if it takes longer than
/// `secs` seconds (a hang), instead of hanging the test. A panic in `f` is the caller's.
pub(crate) fn within<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not done within {secs} s (a hang)")
        }
    }
}
