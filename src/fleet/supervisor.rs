//! The supervisor: one small process per VM started with `run -d` (the hidden
//! `wasmvm supervise DIR -- RUN_ARGS`). It leaves the terminal's session, runs the VMM as its
//! child (`wasmvm run RUN_ARGS` with the output going to the VM's log), records each start
//! and end in the VM's state file, applies the restart policy, forwards `wasmvm stop`'s
//! SIGTERM to the VMM, and exits when the VM has ended for good.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use wasmvm_abi::exit;

use super::state::{RestartPolicy, Status, Vm, now};
use super::sys::{self, ProcId};

/// The hidden `run` flag that makes a VMM started by a supervisor run in the foreground,
/// whatever else its (replayed) command line says.
pub const SUPERVISED_FLAG: &str = "--supervised";

/// A run that lasted this long resets the restart backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// The one line `run -d` waits for on the supervisor's stdout: `ok` once the VMM runs and
/// is recorded, or `error: WHY`.
struct Readiness {
    pending: bool,
}

impl Readiness {
    fn report(&mut self, line: &str) {
        if std::mem::take(&mut self.pending) {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{}", line.replace('\n', "; "));
            let _ = out.flush();
            // `run -d` has what it waited for; nothing holds its pipe any longer.
            let _ = sys::detach_stdout();
        }
    }
}

/// Runs the supervisor of the VM in `dir` to the VM's end; its status is 0 unless it could
/// not do its job (the message then also goes to `run -d` and to the log).
pub fn supervise(dir: &Path, run_args: &[OsString]) -> Result<i32> {
    let mut ready = Readiness { pending: true };
    match run(dir, run_args, &mut ready) {
        Ok(()) => Ok(0),
        Err(e) => {
            ready.report(&format!("error: {e:#}"));
            Err(e.context("supervisor"))
        }
    }
}

fn run(dir: &Path, run_args: &[OsString], ready: &mut Readiness) -> Result<()> {
    // Out of the terminal's session and process group: Ctrl-C and the hangup of a closing
    // terminal no longer reach the supervisor or its VMM. (This fails only for a process
    // group leader, which `run -d`'s child is not; such a supervisor would still work.)
    if let Err(e) = sys::new_session() {
        eprintln!("wasmvm: supervisor: cannot start a session of its own: {e}");
    }
    let vm = Vm::at(dir);
    let mut state = vm.load()?;
    if state.status != Status::Starting {
        bail!("VM `{}` already has a supervisor", vm.name);
    }
    // Signals arrive as messages, so one thread decides everything: no race between a
    // SIGTERM and a child that is being spawned or reaped. The command's own handler
    // (`signals`) stands aside.
    crate::signals::handled_elsewhere();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        .context("cannot install signal handlers")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if tx.send(signal).is_err() {
                break;
            }
        }
    });
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(vm.log_path())
        .with_context(|| format!("cannot open {}", vm.log_path().display()))?;
    state.supervisor = Some(ProcId::current().context("cannot read /proc")?);

    let mut stopping = false;
    let mut failures_in_a_row = 0u32;
    loop {
        take_signals(&rx, &mut stopping);
        if stopping {
            // Stopped between two runs (during the backoff).
            state.status = Status::Stopped;
            state.supervisor = None;
            state.creator = None;
            vm.save(&state)?;
            ready.report("error: stopped before the VM started");
            return Ok(());
        }
        let mut child = match spawn_vmm(dir, run_args, &log) {
            Ok(child) => child,
            Err(e) => {
                state.status = Status::Failed;
                state.reason = Some(format!("cannot start the VMM: {e}"));
                state.finished_at = Some(now());
                state.supervisor = None;
                state.creator = None;
                vm.save(&state)?;
                ready.report(&format!("error: cannot start the VMM: {e}"));
                return Ok(());
            }
        };
        let recorded = ProcId::of(child.id())
            .context("cannot read /proc")
            .and_then(|vmm| {
                state.vmm = Some(vmm);
                state.status = Status::Running;
                state.started_at = Some(now());
                state.creator = None;
                vm.save(&state)
            });
        if let Err(e) = recorded {
            // A VMM nobody could find or stop must not run.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        ready.report("ok");
        let started = Instant::now();

        let ended = wait_vmm(&mut child, &rx, &mut stopping)?;
        state.vmm = None;
        state.finished_at = Some(now());
        let failed = match ended.code() {
            Some(code) => {
                state.exit_code = Some(code);
                state.reason = exit_reason(code);
                code != 0
            }
            None => {
                state.exit_code = None;
                state.reason = Some(format!(
                    "VMM killed by signal {}",
                    ended.signal().unwrap_or(0)
                ));
                true
            }
        };
        if stopping {
            state.status = Status::Stopped;
            state.reason = None;
        } else if let RestartPolicy::OnFailure { max } = state.restart
            && failed
        {
            if max.is_none_or(|max| state.restarts < max) {
                if started.elapsed() >= STABLE_RUN {
                    failures_in_a_row = 0;
                }
                let backoff = Duration::from_millis(100 << failures_in_a_row.min(7));
                failures_in_a_row += 1;
                state.status = Status::Restarting;
                vm.save(&state)?;
                if !sleep_unless_stopped(&rx, backoff, &mut stopping) {
                    state.restarts += 1;
                }
                continue;
            }
            let gave_up = format!("gave up after {} restarts", state.restarts);
            state.reason = Some(match state.reason.take() {
                Some(r) => format!("{r}; {gave_up}"),
                None => gave_up,
            });
            state.status = final_status(&ended);
        } else {
            state.status = final_status(&ended);
        }
        state.supervisor = None;
        vm.save(&state)?;
        return Ok(());
    }
}

fn final_status(ended: &ExitStatus) -> Status {
    match ended.code() {
        Some(_) => Status::Exited,
        None => Status::Failed,
    }
}

/// What a VMM exit status means, when it is not the app's own (docs/cli.md).
fn exit_reason(code: i32) -> Option<String> {
    Some(
        match code {
            exit::INTERRUPTED => "the VMM got SIGINT",
            exit::TRAP => "the app trapped",
            exit::TERMINATED => "the VMM got SIGTERM",
            exit::KERNEL_PANIC => "the guest kernel panicked",
            exit::GUEST_CRASH => "the guest crashed",
            exit::TIMEOUT => "--timeout expired",
            exit::USAGE => "host error (see `wasmvm logs`)",
            _ => return None,
        }
        .to_string(),
    )
}

/// `wasmvm run --supervised RUN_ARGS`, its output appended to the log, stdin empty, and
/// SIGTERM on its way should the supervisor die.
fn spawn_vmm(dir: &Path, run_args: &[OsString], log: &File) -> std::io::Result<Child> {
    let mut cmd = super::wasmvm_command();
    cmd.env(super::FLUSH_MARK_ENV, dir.join(super::FLUSH_MARK_FILE))
        .arg("run")
        .arg(SUPERVISED_FLAG)
        .args(run_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    sys::terminate_with_parent(&mut cmd);
    cmd.spawn()
}

/// Notes a pending SIGTERM or SIGINT (a stop request) without waiting.
fn take_signals(rx: &Receiver<i32>, stopping: &mut bool) {
    while let Ok(signal) = rx.try_recv() {
        *stopping |= signal == SIGTERM || signal == SIGINT;
    }
}

/// Waits for the VMM to end; a stop request on the way is forwarded to it as SIGTERM (its
/// guest then stops cleanly, status 143).
fn wait_vmm(child: &mut Child, rx: &Receiver<i32>, stopping: &mut bool) -> Result<ExitStatus> {
    take_signals(rx, stopping);
    let mut forwarded = false;
    loop {
        if *stopping && !forwarded {
            forwarded = true;
            let _ = sys::signal_child(child, Signal::TERM);
        }
        if let Some(status) = child.try_wait().context("cannot wait for the VMM")? {
            return Ok(status);
        }
        // SIGCHLD wakes this; the timeout is only a safety net.
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(signal) => *stopping |= signal == SIGTERM || signal == SIGINT,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sleeps for `backoff` unless a stop request comes first; true if one came.
fn sleep_unless_stopped(rx: &Receiver<i32>, backoff: Duration, stopping: &mut bool) -> bool {
    let until = Instant::now() + backoff;
    while !*stopping {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(signal) => *stopping |= signal == SIGTERM || signal == SIGINT,
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(left),
        }
    }
    *stopping
}
