//! The user's stdout and stderr as a run's sinks, decoupled from the run by a bounded
//! queue and a writer thread of their own: a reader that stops reading (`wasmvm run app |
//! sleep 20`) slows the guest, as it should, but can no longer hold a stopped run. Once a
//! stop or timeout has given the reader a grace period, what it will not take is dropped
//! (docs/cli.md says so) and the run ends in bounded time.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Bytes queued before a writer waits for the reader.
const CAPACITY: usize = 1 << 20;
/// How long a stopped run still waits for a slow reader before dropping its output.
pub const GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer thread is writing a chunk it took off the queue.
    writing: bool,
    /// Drop everything from now on: the run was stopped and the reader had its grace.
    abandoned: bool,
    /// The reader is gone (EPIPE or another error): drop everything.
    broken: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

/// One output stream of the run: a `Write` that queues, and a thread that writes.
#[derive(Clone)]
pub struct Output {
    shared: Arc<Shared>,
}

impl Output {
    /// Starts the writer thread for `target` (this process's stdout or stderr).
    pub fn new(mut target: impl Write + Send + 'static) -> Output {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        // Detached: if the reader never reads, this thread stays blocked in `write` until
        // the process exits, and nothing waits for it.
        std::thread::spawn(move || {
            loop {
                let chunk = {
                    let mut q = lock(&writer);
                    while q.chunks.is_empty() {
                        q = writer.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                    }
                    let chunk = q.chunks.pop_front().expect("not empty");
                    q.bytes -= chunk.len();
                    q.writing = true;
                    writer.changed.notify_all();
                    chunk
                };
                let ok = target
                    .write_all(&chunk)
                    .and_then(|()| target.flush())
                    .is_ok();
                let mut q = lock(&writer);
                q.writing = false;
                if !ok {
                    q.broken = true;
                    q.chunks.clear();
                    q.bytes = 0;
                }
                writer.changed.notify_all();
            }
        });
        Output { shared }
    }

    /// Drops whatever the reader has not taken, now and from now on.
    pub fn abandon(&self) {
        let mut q = lock(&self.shared);
        q.abandoned = true;
        q.chunks.clear();
        q.bytes = 0;
        self.shared.changed.notify_all();
    }

    /// Waits until everything queued has been written (or dropped).
    pub fn drain(&self) {
        let mut q = lock(&self.shared);
        let pending = |q: &Queue| !q.chunks.is_empty() || q.writing;
        while pending(&q) && !q.abandoned && !q.broken {
            q = self
                .shared
                .changed
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut q = lock(&self.shared);
        while q.bytes >= CAPACITY && !q.abandoned && !q.broken {
            q = self
                .shared
                .changed
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
        if !q.abandoned && !q.broken && !buf.is_empty() {
            q.chunks.push_back(buf.to_vec());
            q.bytes += buf.len();
            self.shared.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that takes nothing until told to.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cond) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cond.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_never_reads_blocks_writers_only_until_abandoned() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::new(Stuck(Arc::clone(&gate), Arc::clone(&got)));
        let mut writer = out.clone();
        let t = std::thread::spawn(move || {
            // More than the queue holds: the writer must wait...
            for _ in 0..3 {
                writer.write_all(&vec![b'x'; CAPACITY]).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "the writer waits for the reader");
        // ...until the run gives up on the reader.
        out.abandon();
        t.join().unwrap();
        out.drain();
    }

    #[test]
    fn everything_arrives_in_order_when_the_reader_reads() {
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::new(Stuck(gate, Arc::clone(&got)));
        let mut writer = out.clone();
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            let line = format!("line {i}\n");
            writer.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        out.drain();
        assert_eq!(*got.lock().unwrap(), expected);
    }
}
