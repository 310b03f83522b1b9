//! Helpers shared by the crate's unit tests, and by the workspace's integration tests
//! (`tests/common` includes this file), so a hang is caught the same way in both.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on a thread of its own and returns its result; fails if it takes longer than
/// `limit` (in-process work that could hang: a vCPU, a run through the library, a stuck
/// peer), instead of hanging the test. A panic in `f` is the caller's panic.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not done within {limit:?} (a hang)")
        }
    }
}
