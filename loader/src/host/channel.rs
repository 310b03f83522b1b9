//! The host end of the framed guest channel (`wasmvm_abi::channel`): demultiplexes the
//! guest's stdout, stderr, log lines and exit record, and frames stdin for the guest.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

use wasmvm_abi::channel::{
    CHANNEL_WINDOW, ExitRecord, FRAME_HEADER_LEN, FrameHeader, frame_cost, to_guest, to_host,
};

/// Where the guest's output goes.
pub struct Sinks<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    /// Kernel log lines, shown with `--verbose`.
    pub log: &'a mut dyn FnMut(&str),
    /// Where the guest's stdin credit goes (the stdin pump's window).
    pub stdin_window: Option<&'a StdinWindow>,
}

/// How much stdin the host may still send before the app reads
/// (`abi::channel::STDIN_WINDOW`). Unlimited until the guest's first `STDIN_CREDIT` says it
/// keeps count; a kernel from before that frame never does, and gets stdin as before.
#[derive(Default)]
pub struct StdinWindow {
    state: Mutex<WindowState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct WindowState {
    /// The guest keeps count (it sent its first credit).
    counted: bool,
    /// Bytes that may go.
    room: u64,
    /// Bytes sent before the guest began to count: its first grant covers them too.
    sent_uncounted: u64,
    /// The run is over.
    closed: bool,
}

impl StdinWindow {
    /// The guest returned `bytes` of room (its first grant turns counting on, less what
    /// went before it).
    pub fn grant(&self, bytes: u32) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = u64::from(bytes);
        if !state.counted {
            state.counted = true;
            bytes = bytes.saturating_sub(std::mem::take(&mut state.sent_uncounted));
        }
        state.room += bytes;
        self.changed.notify_all();
    }

    /// The run is over: a pump waiting for room gives up.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        self.changed.notify_all();
    }

    /// Waits until some stdin may go and returns how much (at most `max`); `max` at once
    /// while the guest does not count; `None` once the run is over.
    fn wait_room(&self, max: usize) -> Option<usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.counted && state.room == 0 && !state.closed {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            None
        } else if state.counted {
            Some(max.min(state.room as usize))
        } else {
            Some(max)
        }
    }

    /// Records that `bytes` of stdin went to the guest.
    fn spend(&self, bytes: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.counted {
            state.room = state.room.saturating_sub(bytes as u64);
        } else {
            state.sent_uncounted += bytes as u64;
        }
    }
}

/// How the guest's stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The guest sent its exit record.
    Exit(ExitRecord),
    /// The stream closed without one.
    Closed,
    /// The guest sent bytes that are not a valid frame: it is treated as crashed.
    Garbled(String),
}

/// Sends one frame to the guest. Frames from several threads (stdin, credit) go through one
/// lock so they never interleave.
pub fn send_frame<W: Write + ?Sized>(out: &Mutex<W>, kind: u8, payload: &[u8]) -> io::Result<()> {
    let header = FrameHeader {
        kind,
        len: payload.len() as u32,
    }
    .encode();
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    out.write_all(&header)?;
    out.write_all(payload)?;
    out.flush()
}

/// A source of the guest's frames that knows whether its next read is served from what it
/// already holds (so the pump can tell when a read may block).
pub trait FrameSource: Read {
    /// True if the next read returns at once, from bytes already read in.
    fn has_buffered(&self) -> bool;
}

impl FrameSource for &[u8] {
    fn has_buffered(&self) -> bool {
        !self.is_empty()
    }
}

/// The largest run of stdout (or stderr) frames the pump joins into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// Consecutive payloads of one stream, not yet written out, and what they will return as
/// credit once they are.
#[derive(Default)]
struct Batch {
    kind: Option<u8>,
    bytes: Vec<u8>,
    credit: u32,
}

impl Batch {
    /// Writes the batch to its stream, then returns its credit.
    fn flush(&mut self, sinks: &mut Sinks, credit: &mut dyn FnMut(u32)) {
        let Some(kind) = self.kind.take() else {
            return;
        };
        let sink = match kind {
            to_host::STDOUT => &mut *sinks.stdout,
            _ => &mut *sinks.stderr,
        };
        let _ = sink.write_all(&self.bytes).and_then(|()| sink.flush());
        self.bytes.clear();
        credit(std::mem::take(&mut self.credit));
    }
}

/// Reads frames from `input` until the exit record or end of stream, writing output as it
/// arrives and returning each frame's bytes to the guest as credit (see
/// `wasmvm_abi::channel::CHANNEL_WINDOW`) once it has been written out, so a slow consumer
/// slows the guest instead of losing data. Output errors on the host side (e.g. a closed
/// pipe) drop that stream's data rather than stopping the guest.
///
/// Consecutive frames of one stream that arrived together are written with one call: an
/// app that writes a line at a time sends a frame per line, and a write (with a wake-up of
/// the CLI's writer thread) per line made the host's side cost more than the guest's. What
/// is batched is written before any read that may wait for the guest, before any other
/// kind of frame, and at [`BATCH_BYTES`], so output is as prompt and as ordered as before;
/// its credit goes back once it is written.
pub fn pump_guest_output(
    input: &mut dyn FrameSource,
    sinks: &mut Sinks,
    credit: &mut dyn FnMut(u32),
) -> io::Result<StreamEnd> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut payload = Vec::new();
    let mut batch = Batch::default();
    let end = loop {
        match read_full(input, &mut header, &mut || batch.flush(sinks, credit))? {
            0 => break StreamEnd::Closed,
            n if n < FRAME_HEADER_LEN => break StreamEnd::Closed,
            _ => {}
        }
        let frame = match FrameHeader::decode(&header) {
            Ok(f) => f,
            Err(e) => break StreamEnd::Garbled(format!("bad frame header: {e}")),
        };
        let data = matches!(frame.kind, to_host::STDOUT | to_host::STDERR);
        if !data || batch.kind.is_some_and(|k| k != frame.kind) {
            batch.flush(sinks, credit);
        }
        payload.resize(frame.len as usize, 0);
        if read_full(input, &mut payload, &mut || batch.flush(sinks, credit))? < payload.len() {
            break StreamEnd::Closed;
        }
        let cost = frame_cost(FRAME_HEADER_LEN + payload.len());
        match frame.kind {
            to_host::STDOUT | to_host::STDERR => {
                if batch.bytes.len() + payload.len() > BATCH_BYTES {
                    batch.flush(sinks, credit);
                }
                batch.kind = Some(frame.kind);
                if batch.bytes.is_empty() {
                    // A batch's first frame (often its only one, a large write) is not copied.
                    std::mem::swap(&mut batch.bytes, &mut payload);
                } else {
                    batch.bytes.extend_from_slice(&payload);
                }
                batch.credit += cost;
                continue;
            }
            to_host::LOG => (sinks.log)(&String::from_utf8_lossy(&payload)),
            to_host::STDIN_CREDIT => {
                let Ok(bytes) = <[u8; 4]>::try_from(&payload[..]) else {
                    break StreamEnd::Garbled("bad stdin credit".into());
                };
                if let Some(window) = sinks.stdin_window {
                    window.grant(u32::from_le_bytes(bytes));
                }
            }
            to_host::EXIT => {
                break match ExitRecord::decode(&payload) {
                    Ok(r) => StreamEnd::Exit(r),
                    Err(e) => StreamEnd::Garbled(format!("bad exit record: {e}")),
                };
            }
            other => break StreamEnd::Garbled(format!("unknown frame kind {other}")),
        }
        credit(cost);
    };
    // What came before the end is written out, whatever the end.
    batch.flush(sinks, credit);
    Ok(end)
}

/// [`pump_guest_output`], returning credit to the guest through `to_guest`: first `grant`
/// extra bytes of window (0 keeps `CHANNEL_WINDOW`; see `MAX_CHANNEL_WINDOW`), then the
/// bytes of every frame written out, batched: credit is sent once a quarter of the window
/// has come back, and always before the pump waits for more input, so the guest never
/// waits for credit the host is holding.
pub fn pump_with_credit<W: Write + ?Sized>(
    from_guest: &mut dyn Read,
    to_guest_frames: &Mutex<W>,
    sinks: &mut Sinks,
    grant: u32,
) -> io::Result<StreamEnd> {
    let send = |n: u32| {
        let _ = send_frame(to_guest_frames, to_guest::CREDIT, &n.to_le_bytes());
    };
    if grant > 0 {
        send(grant);
    }
    let batch = (CHANNEL_WINDOW + grant) / 4;
    let owed = Cell::new(0u32);
    let mut reader = CreditingReader {
        inner: io::BufReader::with_capacity(256 * 1024, from_guest),
        owed: &owed,
        send: &send,
    };
    let mut per_frame = |n: u32| {
        owed.set(owed.get() + n);
        if owed.get() >= batch {
            send(owed.replace(0));
        }
    };
    pump_guest_output(&mut reader, sinks, &mut per_frame)
}

/// A buffered reader of the guest's stream that returns owed credit before it blocks.
struct CreditingReader<'a, R: Read> {
    inner: io::BufReader<R>,
    owed: &'a Cell<u32>,
    send: &'a dyn Fn(u32),
}

impl<R: Read> Read for CreditingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.buffer().is_empty() && self.owed.get() > 0 {
            (self.send)(self.owed.replace(0));
        }
        self.inner.read(buf)
    }
}

impl<R: Read> FrameSource for CreditingReader<'_, R> {
    fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }
}

/// Reads until `buf` is full or end of stream; returns how much was read. `before_block`
/// runs before each read that may wait for the guest.
fn read_full(
    input: &mut dyn FrameSource,
    buf: &mut [u8],
    before_block: &mut dyn FnMut(),
) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        if !input.has_buffered() {
            before_block();
        }
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Copies `input` to the guest as stdin frames, then sends end of file. Returns when input
/// ends or the guest side is gone.
/// At most `window` allows ahead of the app's reading (once the guest counts).
pub fn pump_stdin<W: Write + AsFd + ?Sized>(
    input: &mut dyn Read,
    output: &Mutex<W>,
    window: &StdinWindow,
) {
    // Frames small enough to fit the socket once it polls writable (a unix socket does at
    // most a quarter full), so the lock this thread shares with the output pump's credit is
    // never held across a blocking write: a guest that stops reading stdin must not keep
    // its credit (and so its output) from flowing.
    let mut buf = vec![0u8; STDIN_FRAME_PAYLOAD];
    loop {
        let Some(room) = window.wait_room(buf.len()) else {
            return;
        };
        let n = match input.read(&mut buf[..room]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let kind = if n == 0 {
            to_guest::STDIN_EOF
        } else {
            to_guest::STDIN
        };
        window.spend(n);
        if !wait_writable(output) || send_frame(output, kind, &buf[..n]).is_err() || n == 0 {
            return;
        }
    }
}

/// The largest STDIN frame payload.
const STDIN_FRAME_PAYLOAD: usize = 16 * 1024;

/// Waits, without the lock, until the socket behind `output` has room; false if it is gone.
fn wait_writable<W: AsFd + ?Sized>(output: &Mutex<W>) -> bool {
    use std::os::fd::AsRawFd;
    let fd = {
        let guard = output.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_fd().as_raw_fd()
    };
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `pfd` is valid for the call; the descriptor stays open while `output` lives,
        // which outlives this thread's use of it.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            return pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0;
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut v = FrameHeader {
            kind,
            len: data.len() as u32,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn demultiplexes_until_exit() {
        let mut stream = frame(to_host::STDOUT, b"out");
        stream.extend(frame(to_host::STDERR, b"err"));
        stream.extend(frame(to_host::LOG, b"booted"));
        stream.extend(frame(to_host::EXIT, &ExitRecord::exited(3).encode()));
        stream.extend(frame(to_host::STDOUT, b"after"));
        let (mut out, mut err, mut logs) = (Vec::new(), Vec::new(), Vec::new());
        let mut log = |l: &str| logs.push(l.to_string());
        let mut credited = 0;
        let end = pump_guest_output(
            &mut &stream[..],
            &mut Sinks {
                stdout: &mut out,
                stderr: &mut err,
                log: &mut log,
                stdin_window: None,
            },
            &mut |n| credited += n,
        )
        .unwrap();
        assert!(matches!(end, StreamEnd::Exit(r) if r.status == 3));
        // Every data frame is returned as credit at its cost: a tiny frame costs
        // MIN_FRAME_COST, as the guest counted it.
        assert_eq!(credited, 3 * wasmvm_abi::channel::MIN_FRAME_COST);
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
        assert_eq!(logs, ["booted"]);
    }

    /// One write a sink was given, and the credit returned before it.
    type Written = (Vec<u8>, u32);

    /// A sink that keeps each write apart, shared with the test, with the credit the pump
    /// had returned (`credited`, shared with its credit callback) when the write came.
    #[derive(Clone, Default)]
    struct Writes {
        writes: std::rc::Rc<std::cell::RefCell<Vec<Written>>>,
        credited: std::rc::Rc<Cell<u32>>,
    }

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let credited = self.credited.get();
            self.writes.borrow_mut().push((buf.to_vec(), credited));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn all(&self) -> Vec<Vec<u8>> {
            self.writes
                .borrow()
                .iter()
                .map(|(w, _)| w.clone())
                .collect()
        }
        /// The credit returned before each write.
        fn credit_before(&self) -> Vec<u32> {
            self.writes.borrow().iter().map(|(_, c)| *c).collect()
        }
    }

    /// Pumps `source` into `out` (whose `credited` counts the credit returned) and a fresh
    /// stderr sink; returns the end and stderr's writes.
    fn pump_into(source: &mut dyn FrameSource, out: &Writes) -> (StreamEnd, Writes) {
        let err = Writes::default();
        let credited = std::rc::Rc::clone(&out.credited);
        let (mut out_sink, mut err_sink) = (out.clone(), err.clone());
        let mut log = |_: &str| {};
        let end = pump_guest_output(
            source,
            &mut Sinks {
                stdout: &mut out_sink,
                stderr: &mut err_sink,
                log: &mut log,
                stdin_window: None,
            },
            &mut |n| credited.set(credited.get() + n),
        )
        .unwrap();
        (end, err)
    }

    /// Pumps `stream` (all of it at hand) into fresh sinks: the end, stdout's writes,
    /// stderr's, and the credit returned.
    fn pump_all(stream: &[u8]) -> (StreamEnd, Writes, Writes, u32) {
        let out = Writes::default();
        let (end, err) = pump_into(&mut &stream[..], &out);
        let total = out.credited.get();
        (end, out, err, total)
    }

    #[test]
    fn a_batch_is_written_before_its_credit_returns_and_at_any_end() {
        let cost = wasmvm_abi::channel::MIN_FRAME_COST;
        // Output, then a garbled frame in the same read: what came before is written.
        let mut stream = frame(to_host::STDOUT, b"a");
        stream.extend(frame(to_host::STDOUT, b"b"));
        stream.extend([9u8, 1, 0, 0, 0, 0, 0, 0]);
        let (end, out, _, credited) = pump_all(&stream);
        assert!(matches!(end, StreamEnd::Garbled(_)), "{end:?}");
        assert_eq!(out.all(), [b"ab"]);
        // Its credit came back after the write, not before.
        assert_eq!(out.credit_before(), [0]);
        assert_eq!(credited, 2 * cost);
        // A stream that just stops: the same.
        let (end, out, _, credited) = pump_all(&frame(to_host::STDOUT, b"c"));
        assert!(matches!(end, StreamEnd::Closed));
        assert_eq!((out.all(), credited), (vec![b"c".to_vec()], cost));
    }

    #[test]
    fn a_batch_stops_at_64_kib() {
        let big = vec![7u8; 40 << 10];
        let mut stream = frame(to_host::STDOUT, &big);
        stream.extend(frame(to_host::STDOUT, &big));
        stream.extend(frame(to_host::STDOUT, b"tail"));
        let (_, out, _, _) = pump_all(&stream);
        let sizes: Vec<_> = out.all().iter().map(Vec::len).collect();
        assert_eq!(sizes, [40 << 10, (40 << 10) + 4]);
    }

    #[test]
    fn frames_of_one_stream_that_arrive_together_are_written_at_once_in_order() {
        let mut stream = Vec::new();
        for (kind, data) in [
            (to_host::STDOUT, &b"a"[..]),
            (to_host::STDOUT, b"b"),
            (to_host::STDOUT, b"c"),
            (to_host::STDERR, b"x"),
            (to_host::STDOUT, b"d"),
            (to_host::LOG, b"l"),
            (to_host::STDOUT, b"e"),
        ] {
            stream.extend(frame(kind, data));
        }
        stream.extend(frame(to_host::EXIT, &ExitRecord::exited(0).encode()));
        let (end, out, err, credited) = pump_all(&stream);
        assert!(matches!(end, StreamEnd::Exit(_)));
        // A run ends at a frame of another kind; what was written came out in order.
        assert_eq!(out.all(), [&b"abc"[..], b"d", b"e"]);
        assert_eq!(err.all(), [b"x"]);
        // Every frame but the exit record comes back as credit, batched or not.
        assert_eq!(credited, 7 * wasmvm_abi::channel::MIN_FRAME_COST);
    }

    /// Frames that arrive in separate reads: the pump must write (and credit) what it holds
    /// before the read that waits for the next ones, or a guest waiting on that credit, or a
    /// reader waiting on that output, would wait for ever.
    struct TwoReads {
        reads: std::collections::VecDeque<Vec<u8>>,
        current: Vec<u8>,
        /// Stdout, credit as the second read began.
        seen: Option<(Vec<Vec<u8>>, u32)>,
        out: Writes,
        credited: std::rc::Rc<Cell<u32>>,
    }

    impl Read for TwoReads {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.current.is_empty() {
                let Some(next) = self.reads.pop_front() else {
                    return Ok(0);
                };
                if self.seen.is_none() && self.reads.is_empty() {
                    self.seen = Some((self.out.all(), self.credited.get()));
                }
                self.current = next;
            }
            let n = buf.len().min(self.current.len());
            buf[..n].copy_from_slice(&self.current[..n]);
            self.current.drain(..n);
            Ok(n)
        }
    }

    impl FrameSource for TwoReads {
        fn has_buffered(&self) -> bool {
            !self.current.is_empty()
        }
    }

    #[test]
    fn what_is_batched_is_written_and_credited_before_the_pump_waits_for_more() {
        let mut first = frame(to_host::STDOUT, b"line 1\n");
        first.extend(frame(to_host::STDOUT, b"line 2\n"));
        // The next frame is split between the reads: its header waits too.
        let next = frame(to_host::STDOUT, b"line 3\n");
        first.extend_from_slice(&next[..3]);
        let mut second = next[3..].to_vec();
        second.extend(frame(to_host::EXIT, &ExitRecord::exited(0).encode()));
        let out = Writes::default();
        let mut source = TwoReads {
            reads: [first, second].into(),
            current: Vec::new(),
            seen: None,
            out: out.clone(),
            credited: std::rc::Rc::clone(&out.credited),
        };
        pump_into(&mut source, &out);
        let cost = wasmvm_abi::channel::MIN_FRAME_COST;
        assert_eq!(
            source.seen,
            Some((vec![b"line 1\nline 2\n".to_vec()], 2 * cost)),
            "written and credited before the second read"
        );
        assert_eq!(out.all().concat(), b"line 1\nline 2\nline 3\n");
    }

    #[test]
    fn truncated_or_garbled_streams_are_reported() {
        let mut stream = frame(to_host::STDOUT, b"partial");
        stream.truncate(10);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut log = |_: &str| {};
        let mut sinks = Sinks {
            stdout: &mut out,
            stderr: &mut err,
            log: &mut log,
            stdin_window: None,
        };
        assert!(matches!(
            pump_guest_output(&mut &stream[..], &mut sinks, &mut |_| {}).unwrap(),
            StreamEnd::Closed
        ));
        let bad = [9u8, 1, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            pump_guest_output(&mut &bad[..], &mut sinks, &mut |_| {}).unwrap(),
            StreamEnd::Garbled(_)
        ));
    }

    #[test]
    fn stdin_is_framed_with_eof_in_bounded_frames() {
        use std::os::unix::net::UnixStream;
        // On a thread of its own: a pump that never ends fails the test instead.
        crate::test_support::within(Duration::from_secs(60), "pumping stdin", || {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let input = vec![7u8; STDIN_FRAME_PAYLOAD + 5];
            let out = Mutex::new(ours);
            let reader = std::thread::spawn(move || {
                let mut all = Vec::new();
                let mut theirs = theirs;
                theirs.read_to_end(&mut all).unwrap();
                all
            });
            pump_stdin(&mut &input[..], &out, &StdinWindow::default());
            drop(out);
            let mut expected = frame(to_guest::STDIN, &input[..STDIN_FRAME_PAYLOAD]);
            expected.extend(frame(to_guest::STDIN, &input[STDIN_FRAME_PAYLOAD..]));
            expected.extend(frame(to_guest::STDIN_EOF, b""));
            assert_eq!(reader.join().unwrap(), expected);
        });
    }

    #[test]
    fn stdin_goes_no_further_ahead_than_the_guest_window() {
        use std::os::unix::net::UnixStream;
        let (ours, theirs) = UnixStream::pair().unwrap();
        let window = std::sync::Arc::new(StdinWindow::default());
        // The guest counts, and has room for 10 bytes only.
        window.grant(10);
        let pump_window = std::sync::Arc::clone(&window);
        let pump = std::thread::spawn(move || {
            let input = [7u8; 25];
            pump_stdin(&mut &input[..], &Mutex::new(ours), &pump_window);
        });
        let mut theirs = theirs;
        // Reads that would wait for ever fail the test instead.
        let limit = Some(std::time::Duration::from_secs(20));
        theirs.set_read_timeout(limit).unwrap();
        let mut got = vec![0u8; FRAME_HEADER_LEN + 10];
        theirs
            .read_exact(&mut got)
            .expect("the first 10 bytes within 20 s");
        assert_eq!(got, frame(to_guest::STDIN, &[7u8; 10]));
        // Nothing more until the guest returns room: the pump waits on the window.
        theirs
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut more = [0u8; 1];
        assert!(theirs.read(&mut more).is_err(), "sent past the window");
        theirs.set_read_timeout(limit).unwrap();
        window.grant(100);
        let mut rest = Vec::new();
        theirs
            .read_to_end(&mut rest)
            .expect("the rest and the end of the stream within 20 s");
        let mut expected = frame(to_guest::STDIN, &[7u8; 15]);
        expected.extend(frame(to_guest::STDIN_EOF, b""));
        assert_eq!(rest, expected);
        pump.join().unwrap();
    }
}
