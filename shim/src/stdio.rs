//! containerd's FIFOs as the container's stdio.

use std::fs::{File, OpenOptions};
use std::io::{self, PipeReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys;

/// Opens the write end of an output FIFO without waiting for a reader: containerd opens
/// its reader before create, so one is normally there; without one (the client went
/// away) the FIFO is opened for reading too, so the app's writes fill it and then wait
/// instead of failing at once.
pub fn open_output(path: &Path) -> io::Result<File> {
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?,
        other => other?,
    };
    sys::set_blocking(&file)?;
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
            // Blocks until containerd opens the write end (or `Container::remove`
            // releases it).
            if let Ok(mut fifo) = File::open(&path) {
                let _ = io::copy(&mut fifo, &mut writer);
            }
        })?;
    Ok(reader)
}
