//! Volumes around a run on a backend that serves directories only (QEMU, host mode): each
//! `--volume` is checked out (`host::volume::Checkout`), served to the guest as a live
//! directory after the other shares, and written back however the run ended.

use super::{RunOptions, ShareSpec};
use crate::RunError;
use crate::host::volume;

/// Runs `backend` with the volumes of `opts` checked out and added as live directories after
/// the other shares, then writes every volume back, however the run ended. A failed
/// write-back is an error even after a successful run.
pub fn with_volumes<T>(
    opts: &RunOptions,
    backend: impl FnOnce(&RunOptions) -> Result<T, RunError>,
) -> Result<T, RunError> {
    let checkouts = opts
        .volumes
        .iter()
        .map(|v| volume::Checkout::open(&v.image))
        .collect::<Result<Vec<_>, _>>()?;
    let mut with = opts.clone();
    with.volumes.clear();
    for (spec, checkout) in opts.volumes.iter().zip(&checkouts) {
        with.shares.push(ShareSpec {
            host: checkout.dir().to_path_buf(),
            guest: spec.guest.clone(),
            read_only: false,
        });
    }
    let outcome = backend(&with);
    let _flushing = FlushMark::begin(opts);
    let mut first_error = None;
    for checkout in checkouts {
        if let Err(e) = checkout.commit() {
            first_error.get_or_insert(e);
        }
    }
    match (outcome, first_error) {
        (Err(run), Some(volume)) => Err(RunError::RunAndVolume {
            run: Box::new(run),
            volume,
        }),
        (Err(e), None) => Err(e),
        (Ok(_), Some(e)) => Err(e.into()),
        (Ok(t), None) => Ok(t),
    }
}

/// The file [`RunOptions::flush_mark`] names, present while it lives: created when the run
/// starts making its volumes durable, removed when that is done (or the process dies: a
/// reader checks the process id inside).
pub struct FlushMark(Option<std::path::PathBuf>);

impl FlushMark {
    /// Marks the flush of `opts`'s volumes, if it has volumes and a mark to make.
    pub fn begin(opts: &RunOptions) -> FlushMark {
        let path = opts.flush_mark.clone().filter(|_| !opts.volumes.is_empty());
        if let Some(path) = &path {
            // Best effort: without the mark a stop may kill, as before.
            let _ = std::fs::write(path, format!("{}\n", std::process::id()));
        }
        FlushMark(path)
    }
}

impl Drop for FlushMark {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
