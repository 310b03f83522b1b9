//! SIGINT, SIGTERM and SIGHUP: one handler for the whole command, installed first thing.
//!
//! Outside a run a signal ends the command as its default action would (the process dies
//! by the signal, which shells and supervisors read as such), but first removes the
//! temporary files the command has made so far ([`temporary`]): a pack, an export or the
//! packing before a `run app.wasm` can take seconds, and Ctrl-C then must not leave a half
//! written image in the output's directory or a copy in `$TMPDIR`. While a run goes on
//! ([`while_running`]) a signal asks it to stop instead, and the run cleans up after itself
//! (volumes written back, temporary files dropped) before the command exits with the
//! signal's status.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use wasmvm_loader::StopReason;

/// What a signal does now.
enum Mode {
    /// Remove these paths (files or directories), then die by the signal.
    Cleanup(Vec<PathBuf>),
    /// Ask the run to stop.
    Stop(Box<dyn Fn(StopReason) + Send>),
    /// Nothing: another part of the command waits for them itself (the fleet supervisor).
    Elsewhere,
}

static MODE: Mutex<Mode> = Mutex::new(Mode::Cleanup(Vec::new()));

fn mode() -> std::sync::MutexGuard<'static, Mode> {
    // A panic while the lock was held leaves a list that is still a list.
    MODE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs the handler (a thread that waits for the three signals).
pub fn install() -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                handle(signal);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn handle(signal: i32) {
    let mut mode = mode();
    match &mut *mode {
        Mode::Stop(stop) => stop(match signal {
            SIGINT => StopReason::Interrupt,
            SIGHUP => StopReason::Hangup,
            _ => StopReason::Terminate,
        }),
        Mode::Cleanup(paths) => {
            for path in paths.drain(..) {
                remove(&path);
            }
            // The lock stays held: nothing registers a file after the sweep.
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            // Only reached if the default action did not end the process.
            std::process::exit(128 + signal);
        }
        Mode::Elsewhere => {}
    }
}

/// From now on the signals are handled by a part of the command that waits for them
/// itself (the fleet supervisor, which forwards a stop to its VMM): this handler does
/// nothing.
pub fn handled_elsewhere() {
    *mode() = Mode::Elsewhere;
}

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(path)),
        Ok(_) => drop(std::fs::remove_file(path)),
        Err(_) => {}
    }
}

/// Makes a temporary file or directory with `make` and registers it in the same step: the
/// signal thread waits for the lock `make` runs under, so a signal that comes while the
/// path is being made finds it registered and removes it (registered after it was made, a
/// signal in between left it behind: one export in ten under a test that signals as soon
/// as the directory appears). `make` should do no more than make the path. The path is
/// removed if a signal ends the command while the returned guard lives; drop the guard once
/// the path is renamed into place or removed.
pub fn make_temporary<T: AsRef<Path>>(
    make: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<(T, Temporary)> {
    let mut mode = mode();
    let made = make()?;
    let path = made.as_ref().to_path_buf();
    match &mut *mode {
        Mode::Cleanup(paths) => paths.push(path.clone()),
        // During a run, which cleans up after itself; or handled elsewhere.
        Mode::Stop(_) | Mode::Elsewhere => {}
    }
    Ok((made, Temporary(path)))
}

/// A new file under `$TMPDIR` named `PREFIX…` (mode 0600) holding `bytes`, made and
/// registered as [`make_temporary`] does; errors name it `what`.
pub fn temporary_file(
    prefix: &str,
    bytes: &[u8],
    what: &str,
) -> Result<(tempfile::NamedTempFile, Temporary)> {
    let (mut file, registered) =
        make_temporary(|| tempfile::Builder::new().prefix(prefix).tempfile())
            .with_context(|| format!("cannot create {what}"))?;
    std::io::Write::write_all(&mut file, bytes).with_context(|| format!("cannot write {what}"))?;
    Ok((file, registered))
}

/// A path the signal handler removes, until dropped ([`make_temporary`]).
pub struct Temporary(PathBuf);

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Mode::Cleanup(paths) = &mut *mode() {
            paths.retain(|p| *p != self.0);
        }
    }
}

/// Runs `run` with signals turned into `stop` requests; the temporary files registered so
/// far stay registered, for the signals that come after it.
pub fn while_running<T>(stop: impl Fn(StopReason) + Send + 'static, run: impl FnOnce() -> T) -> T {
    let before = std::mem::replace(&mut *mode(), Mode::Stop(Box::new(stop)));
    let result = run();
    *mode() = before;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_path_is_forgotten_once_kept_and_kept_through_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let make = |path: &PathBuf| {
            let path = path.clone();
            make_temporary(move || std::fs::write(&path, "x").map(|()| path)).unwrap()
        };
        drop(make(&a).1);
        let (_, b_guard) = make(&b);
        // Made under the lock the signal thread takes: registered before a signal is seen.
        assert!(b.exists());
        let stops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = stops.clone();
        while_running(
            move |_| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
            || handle(SIGTERM),
        );
        assert_eq!(stops.load(std::sync::atomic::Ordering::SeqCst), 1);
        match &*mode() {
            Mode::Cleanup(paths) => assert!(paths.contains(&b) && !paths.contains(&a)),
            _ => panic!("still in the run's mode"),
        }
        drop(b_guard);
        match &*mode() {
            Mode::Cleanup(paths) => assert!(!paths.contains(&b)),
            _ => panic!("still in the run's mode"),
        }
    }
}
