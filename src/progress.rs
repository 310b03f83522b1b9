//! A progress line on stderr for work that takes seconds (compiling a large module): shown
//! only on a terminal and only after the first second, rewritten in place with the time
//! taken so far, and erased when the work ends.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long work may take before a line appears.
const QUIET_FOR: Duration = Duration::from_secs(1);
/// How often the line is rewritten.
const TICK: Duration = Duration::from_millis(250);

pub struct Progress {
    done: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `what` (e.g. "packing app.wasm (12 MiB)") if stderr is a terminal.
    pub fn start(what: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                done: None,
                thread: None,
            };
        }
        let (done, wait) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            if wait.recv_timeout(QUIET_FOR) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let mut stderr = std::io::stderr();
            loop {
                let _ = write!(
                    stderr,
                    "\r\x1b[2Kwasmvm: {what}: {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                let _ = stderr.flush();
                if wait.recv_timeout(TICK) != Err(mpsc::RecvTimeoutError::Timeout) {
                    let _ = write!(stderr, "\r\x1b[2K");
                    let _ = stderr.flush();
                    return;
                }
            }
        });
        Progress {
            done: Some(done),
            thread: Some(thread),
        }
    }

    /// Ends the line (erasing it) before anything else is printed.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
