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
/// Small writes join the last queued chunk up to this size, so that a chatty app's lines
/// reach the reader in a few large writes rather than one system call (and one wake-up of
/// the writer thread) each.
const COALESCE: usize = 64 * 1024;
/// Written chunks kept for reuse. A chunk is allocated once and then cycles between the
/// queue and the writer: an allocator that returns large blocks to the kernel at once (musl's
/// does, at 64 KiB) would otherwise map, fault in and unmap one per chunk, which halved the
/// compiled engine's stdout rate (500 against 244 ms for 256 MiB).
const SPARES: usize = 4;
/// How long a stopped run still waits for a slow reader before dropping its output.
pub const GRACE: Duration = Duration::from_secs(1);

/// This process's stdout without std's line buffering, for [`Output`]'s writer: it writes
/// whole chunks and flushes after each anyway, and `Stdout`'s `LineWriter` searched every
/// chunk for its last newline and copied the tail into its own buffer (2-3 % of a 256 MiB
/// run's host time). A duplicate of descriptor 1; where that fails (no descriptor 1),
/// `Stdout` itself, which quietly drops output to a closed descriptor.
pub fn unbuffered_stdout() -> Box<dyn Write + Send> {
    use std::os::fd::AsFd;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    }
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    /// Empty chunks the writer has finished with (at most `SPARES`, of `COALESCE` bytes).
    spare: Vec<Vec<u8>>,
    bytes: usize,
    /// The writer thread is writing a chunk it took off the queue.
    writing: bool,
    /// The writer thread waits for a chunk: only then does queuing one wake it.
    writer_idle: bool,
    /// Callers of `write` or `drain` waiting for the writer: only then does it wake them.
    waiting: usize,
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
                let mut chunk = {
                    let mut q = lock(&writer);
                    while q.chunks.is_empty() {
                        q.writer_idle = true;
                        q = writer.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                    }
                    q.writer_idle = false;
                    let chunk = q.chunks.pop_front().expect("not empty");
                    q.bytes -= chunk.len();
                    q.writing = true;
                    if q.waiting > 0 {
                        writer.changed.notify_all();
                    }
                    chunk
                };
                let ok = target
                    .write_all(&chunk)
                    .and_then(|()| target.flush())
                    .is_ok();
                chunk.clear();
                let mut q = lock(&writer);
                q.writing = false;
                // Only chunks of the usual size: one made for a larger write is let go.
                if q.spare.len() < SPARES && chunk.capacity() <= COALESCE {
                    q.spare.push(chunk);
                }
                if !ok {
                    q.broken = true;
                    q.chunks.clear();
                    q.bytes = 0;
                }
                if q.waiting > 0 {
                    writer.changed.notify_all();
                }
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
            q = self.shared.wait(q);
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Waits for the writer thread to take or finish a chunk (or for `abandon`), counted in
    /// `waiting` so that the writer knows to wake this caller.
    fn wait<'a>(
        &'a self,
        mut q: std::sync::MutexGuard<'a, Queue>,
    ) -> std::sync::MutexGuard<'a, Queue> {
        q.waiting += 1;
        let mut q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
        q.waiting -= 1;
        q
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut q = lock(&self.shared);
        while q.bytes >= CAPACITY && !q.abandoned && !q.broken {
            q = self.shared.wait(q);
        }
        if !q.abandoned && !q.broken && !buf.is_empty() {
            // The writer thread pops a chunk before writing it, so the last one queued is
            // still free to grow.
            match q.chunks.back_mut() {
                Some(last) if last.len() + buf.len() <= COALESCE => last.extend_from_slice(buf),
                _ => {
                    let mut chunk = q
                        .spare
                        .pop()
                        .unwrap_or_else(|| Vec::with_capacity(COALESCE.max(buf.len())));
                    chunk.extend_from_slice(buf);
                    q.chunks.push_back(chunk);
                }
            }
            q.bytes += buf.len();
            if q.writer_idle {
                self.shared.changed.notify_all();
            }
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
        // ...until the run gives up on the reader (within seconds, or the test fails).
        out.abandon();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !t.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "abandoning the reader did not release the writer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().unwrap();
        out.drain();
    }

    /// Writes `n` short lines, one write each; returns what was written.
    fn write_lines(writer: &mut Output, n: u32) -> Vec<u8> {
        let mut written = Vec::new();
        for i in 0..n {
            let line = format!("line {i}\n");
            writer.write_all(line.as_bytes()).unwrap();
            written.extend_from_slice(line.as_bytes());
        }
        written
    }

    /// Lets a [`Stuck`] reader take what it is given, from now on.
    fn open(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[test]
    fn everything_arrives_in_order_when_the_reader_reads() {
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::new(Stuck(gate, Arc::clone(&got)));
        let expected = write_lines(&mut out.clone(), 1000);
        out.drain();
        assert_eq!(*got.lock().unwrap(), expected);
    }

    #[test]
    fn small_writes_queued_behind_a_slow_reader_reach_it_in_few_writes() {
        /// Counts the writes it is given, each only once the gate opens.
        struct Counted(Stuck, Arc<Mutex<usize>>);
        impl Write for Counted {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                *self.1.lock().unwrap() += 1;
                self.0.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(Mutex::new(0));
        let stuck = Stuck(Arc::clone(&gate), Arc::clone(&got));
        let out = Output::new(Counted(stuck, Arc::clone(&calls)));
        let expected = write_lines(&mut out.clone(), 1000);
        open(&gate);
        out.drain();
        assert_eq!(*got.lock().unwrap(), expected);
        // The first line, taken before the others came, then the rest in one chunk.
        assert!(
            *calls.lock().unwrap() <= 2,
            "{} writes",
            calls.lock().unwrap()
        );
    }

    #[test]
    fn a_writer_held_at_capacity_goes_on_once_the_reader_reads() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::new(Stuck(Arc::clone(&gate), Arc::clone(&got)));
        let mut writer = out.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Three times what the queue holds: the writer waits for the reader twice.
            for i in 0..3u8 {
                writer.write_all(&vec![i; CAPACITY]).unwrap();
            }
            let _ = done.send(());
        });
        open(&gate);
        // Only the writer thread's progress can release it (nothing abandons).
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer was never woken");
        out.drain();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 3 * CAPACITY);
        assert!(
            got.chunks(CAPACITY)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8))
        );
    }
}
