//! How a run ended, and how a VM backend's first run event maps to that ending.

use wasmvm_abi::channel::{ExitKind, ExitRecord};
use wasmvm_abi::exit;

use super::control::{RunEvent, StopReason};
use crate::host::channel::StreamEnd;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The app exited with this WASI status (0–125).
    Exited(i32),
    /// The app called `proc_exit` with a status outside WASI's range.
    InvalidExitStatus,
    Trapped {
        message: String,
        backtrace: Vec<String>,
    },
    /// A wasm exception escaped the entry point (the compiled engine); it ends the run with
    /// status 1, as `wasmtime run` does.
    UncaughtException(String),
    KernelPanic(String),
    BootFailed(String),
    /// The VM ended without an exit record.
    Crashed(String),
    TimedOut,
    Stopped(StopReason),
}

impl Ending {
    pub(crate) fn from_record(r: ExitRecord) -> Self {
        match r.kind {
            ExitKind::Exited if (0..=exit::MAX_APP_STATUS).contains(&r.status) => {
                Ending::Exited(r.status)
            }
            ExitKind::Exited => Ending::InvalidExitStatus,
            ExitKind::Trapped => Ending::Trapped {
                message: r.message,
                backtrace: r.backtrace,
            },
            ExitKind::UncaughtException => Ending::UncaughtException(r.message),
            ExitKind::KernelPanic => Ending::KernelPanic(r.message),
            ExitKind::BootFailed => Ending::BootFailed(r.message),
        }
    }

    /// The process exit status, per the table in `wasmvm_abi::exit` and docs/cli.md.
    pub fn status(&self) -> i32 {
        match self {
            Ending::Exited(s) => exit::app_status(*s),
            Ending::InvalidExitStatus => exit::APP_STATUS_OUT_OF_RANGE,
            Ending::Trapped { .. } => exit::TRAP,
            Ending::UncaughtException(_) => exit::UNCAUGHT_EXCEPTION,
            Ending::KernelPanic(_) | Ending::BootFailed(_) => exit::KERNEL_PANIC,
            Ending::Crashed(_) => exit::GUEST_CRASH,
            Ending::TimedOut => exit::TIMEOUT,
            Ending::Stopped(StopReason::Interrupt) => exit::INTERRUPTED,
            Ending::Stopped(StopReason::Terminate) => exit::TERMINATED,
            Ending::Stopped(StopReason::Hangup) => exit::HANGUP,
        }
    }

    /// A message for the user, for every ending but a normal exit.
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            Ending::Exited(_) => return None,
            // wasmtime's words for the same case.
            Ending::InvalidExitStatus => {
                "exit with invalid exit status outside of [0..126)".to_string()
            }
            Ending::Trapped { message, backtrace } => {
                let mut m = format!("app trapped: {message}");
                for (i, f) in backtrace.iter().enumerate() {
                    m.push_str(&format!("\n    {i}: {f}"));
                }
                m
            }
            Ending::UncaughtException(m) => format!("the app failed: {m}"),
            Ending::KernelPanic(m) => format!("guest kernel panicked: {m}"),
            Ending::BootFailed(m) => format!("guest could not start the app: {m}"),
            Ending::Crashed(m) => format!("guest crashed: {m}"),
            Ending::TimedOut => "timed out: the run was stopped".to_string(),
            Ending::Stopped(StopReason::Interrupt) => {
                "interrupted: the run was stopped".to_string()
            }
            Ending::Stopped(StopReason::Terminate) => "terminated: the run was stopped".to_string(),
            Ending::Stopped(StopReason::Hangup) => "hung up: the run was stopped".to_string(),
        })
    }
}

/// What a VM backend's first run event says, before the backend adds what it knows.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The run has its ending.
    Ended(Ending),
    /// The guest channel ended without an exit record (with the read error, if one ended
    /// it): the VM died, and only the backend can say why.
    NoRecord(Option<String>),
}

/// Maps the first run event (`None`: the deadline passed) to an [`Outcome`]: the one
/// mapping both VM backends use.
pub(crate) fn outcome(event: Option<RunEvent>) -> Outcome {
    match event {
        Some(RunEvent::Stream(Ok(StreamEnd::Exit(record)))) => {
            Outcome::Ended(Ending::from_record(record))
        }
        Some(RunEvent::Stream(Ok(StreamEnd::Garbled(why)))) => Outcome::Ended(Ending::Crashed(why)),
        Some(RunEvent::Stream(Ok(StreamEnd::Closed))) => Outcome::NoRecord(None),
        Some(RunEvent::Stream(Err(e))) => Outcome::NoRecord(Some(e.to_string())),
        // Host mode's own event: if a VM's loop saw it, nothing would say how the VM ended.
        Some(RunEvent::AppEnded) => Outcome::NoRecord(None),
        Some(RunEvent::Stop(reason)) => Outcome::Ended(Ending::Stopped(reason)),
        None => Outcome::Ended(Ending::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_endings() {
        let record = ExitRecord {
            kind: ExitKind::Exited,
            status: 7,
            trap_code: None,
            message: String::new(),
            backtrace: Vec::new(),
        };
        assert_eq!(
            outcome(Some(RunEvent::Stream(Ok(StreamEnd::Exit(record))))),
            Outcome::Ended(Ending::Exited(7))
        );
        assert_eq!(outcome(None), Outcome::Ended(Ending::TimedOut));
        assert_eq!(
            outcome(Some(RunEvent::Stop(StopReason::Interrupt))),
            Outcome::Ended(Ending::Stopped(StopReason::Interrupt))
        );
        assert_eq!(
            outcome(Some(RunEvent::Stream(Ok(StreamEnd::Closed)))),
            Outcome::NoRecord(None)
        );
        assert_eq!(
            outcome(Some(RunEvent::Stream(Err(std::io::Error::other("reset"))))),
            Outcome::NoRecord(Some("reset".into()))
        );
    }

    #[test]
    fn statuses_follow_the_exit_table() {
        assert_eq!(Ending::Exited(3).status(), 3);
        assert_eq!(Ending::TimedOut.status(), exit::TIMEOUT);
        assert_eq!(
            Ending::Stopped(StopReason::Terminate).status(),
            exit::TERMINATED
        );
        assert_eq!(Ending::Crashed(String::new()).status(), exit::GUEST_CRASH);
        assert!(Ending::Exited(0).describe().is_none());
    }
}
