//! Supervising a VM run from the host: the output pump every VM backend runs on a thread of
//! its own, which carries guest frames to the user's streams and reports how the guest
//! channel ended as a [`RunEvent`].

use std::io::{Read, Write};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use super::control::RunEvent;
use crate::host::channel;

/// The body of a backend's output thread: pumps guest frames to `stdout`/`stderr` (kernel
/// log lines to `log`, stamped with the host time since `started`), returns credit through
/// `to_guest` (first granting `grant` bytes of extra window), and reports how the stream
/// ended on `events`.
pub(crate) struct OutputPump<'a, W: Write + ?Sized> {
    pub to_guest: &'a Mutex<W>,
    pub stdout: &'a mut (dyn Write + Send),
    pub stderr: &'a mut (dyn Write + Send),
    pub log: &'a mut (dyn FnMut(&str) + Send),
    pub started: Instant,
    pub events: mpsc::Sender<RunEvent>,
    /// Extra window granted at once, beyond the channel's initial one.
    pub grant: u32,
    /// The stdin pump's window, which the guest's stdin credit refills.
    pub stdin_window: &'a channel::StdinWindow,
}

impl<W: Write + ?Sized> OutputPump<'_, W> {
    /// Pumps until the guest channel `from_guest` ends, then reports how.
    pub(crate) fn run(self, from_guest: &mut dyn Read) {
        let OutputPump {
            to_guest,
            stdout,
            stderr,
            log,
            started,
            events,
            grant,
            stdin_window,
        } = self;
        let mut log_line = |line: &str| {
            log(&format!(
                "guest: {line} (host +{:.1} ms)",
                started.elapsed().as_secs_f64() * 1e3
            ))
        };
        let mut sinks = channel::Sinks {
            stdout,
            stderr,
            log: &mut log_line,
            stdin_window: Some(stdin_window),
        };
        let end = channel::pump_with_credit(from_guest, to_guest, &mut sinks, grant);
        let _ = events.send(RunEvent::Stream(end));
    }
}
