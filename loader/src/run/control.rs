//! Stopping a run from outside, and the events a backend's supervising loop waits for.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::host::channel::StreamEnd;

/// Why a VM was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP: the terminal or session went away.
    Hangup,
}

/// A handle that stops a running VM (e.g. from a signal-handling thread).
#[derive(Debug, Clone)]
pub struct Stopper(mpsc::Sender<RunEvent>);

impl Stopper {
    pub fn stop(&self, reason: StopReason) {
        let _ = self.0.send(RunEvent::Stop(reason));
    }
}

/// Events the backend's supervising loop waits for.
#[derive(Debug)]
pub enum RunEvent {
    /// The guest channel ended (an exit record, a garbled stream, or closed).
    Stream(std::io::Result<StreamEnd>),
    Stop(StopReason),
    /// Host mode's interpreter thread ended (its outcome is in its join handle). A VM
    /// backend never sends it.
    AppEnded,
}

/// A channel for run events, and the [`Stopper`] that feeds it.
pub struct Control {
    pub(crate) tx: mpsc::Sender<RunEvent>,
    rx: mpsc::Receiver<RunEvent>,
}

impl Default for Control {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Control { tx, rx }
    }
}

impl Control {
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Waits for the first run event; `None` when `deadline` passes first.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<RunEvent> {
        loop {
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match self.rx.recv_timeout(wait) {
                Ok(e) => return Some(e),
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => return None,
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_ends_the_wait_and_a_deadline_times_it_out() {
        let control = Control::default();
        assert!(control.wait(Some(Instant::now())).is_none());
        control.stopper().stop(StopReason::Terminate);
        assert!(matches!(
            control.wait(None),
            Some(RunEvent::Stop(StopReason::Terminate))
        ));
    }
}
