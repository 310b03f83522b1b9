//! containerd's stdio for a container: FIFOs (ctr, CRI), or files named by `file://` log
//! URIs.

use std::fs::{File, OpenOptions};
use std::io::{self, PipeReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys;

/// The app's stdout or stderr. A FIFO is opened for reading and writing, as containerd's
/// own shims keep a reader: if containerd's reader goes away (a restart, a client that
/// died), the app's writes fill the FIFO and wait instead of failing with EPIPE, and
/// opening never waits for a reader. `file://PATH` appends to PATH; other schemes
/// (`binary://`: a logging program) are refused.
pub fn open_output(uri: &str) -> Result<File, String> {
    let path = match uri.split_once("://") {
        None => uri,
        Some(("fifo", rest)) => rest,
        Some(("file", rest)) => {
            return OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(rest)
                .map_err(|e| format!("cannot open the log file {rest}: {e}"));
        }
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// log URIs are not supported by the wasmvm shim (use a FIFO, or file://PATH)"
            ));
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    sys::set_blocking(&file).map_err(|e| format!("cannot open {path}: {e}"))?;
    Ok(file)
}

/// The app's stdin: a pipe fed from the stdin FIFO by a thread. containerd may open its
/// end of the FIFO after the process starts; opening the FIFO directly without blocking
/// would show the app an end of file before then. The thread ends at the FIFO's end of
/// file (the client closed stdin) or when the app's end of the pipe is gone.
pub fn stdin_relay(path: &Path) -> io::Result<PipeReader> {
    let (reader, mut writer) = std::io::pipe()?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            // Blocks until containerd opens the write end (or `release_stdin`).
            if let Ok(mut fifo) = File::open(&path) {
                let _ = io::copy(&mut fifo, &mut writer);
            }
        })?;
    Ok(reader)
}

/// Releases a stdin relay still waiting for a writer to open the FIFO: our own open for
/// writing completes its open, and our close then gives it an end of file.
pub fn release_stdin(fifo: &Path) {
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}
