//! Why a run could not start or finish: one variant per failure, each message complete on
//! its own (what failed, naming the file, size or device concerned, and the cause), so the
//! CLI prints it once. No error of this crate also hands out as `source()` a cause its
//! message already printed: fields holding a cause are called `cause`, never `source`.

use std::path::PathBuf;

use thiserror::Error;

use crate::host::volume::VolumeError;
use crate::image::ImageError;
use crate::run::network::NetError;
use crate::vmm::BootError;

#[derive(Debug, Error)]
pub enum RunError {
    /// The image file parsed, but is not a sound wasmvm image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image path names something that cannot be an image, or cannot be read.
    #[error(transparent)]
    ImageFile(#[from] crate::image::file::ImageFileError),
    #[error(
        "QEMU (`{0}`) was not found: install it (Debian: `apt-get install qemu-system-x86`) or set WASMVM_QEMU"
    )]
    QemuMissing(String),
    #[error("QEMU failed to start the VM (status {status}): {stderr}")]
    QemuFailed { status: String, stderr: String },
    #[error("host reference run failed: {0}")]
    Host(String),
    /// `/dev/kvm` cannot be opened: no VM can be built at all.
    #[error("KVM is not usable: {0}")]
    KvmUnavailable(String),
    /// The built-in VMM could not build this VM (memory, image layout, a KVM call).
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("volume {0}")]
    Volume(VolumeError),
    /// The run failed, and so did writing a volume back (whose message says where the run's
    /// files were kept).
    #[error("{run}; and volume {volume}")]
    RunAndVolume {
        run: Box<RunError>,
        volume: VolumeError,
    },
    #[error("--dir {}: {cause}", path.display())]
    Share {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{context}: {cause}")]
    Io {
        context: &'static str,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] NetError),
}

impl From<VolumeError> for RunError {
    fn from(e: VolumeError) -> Self {
        RunError::Volume(e)
    }
}

/// A `map_err` adapter for an I/O failure while `context`.
pub(crate) fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
    move |cause| RunError::Io { context, cause }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI prints an error with its `source()` chain: a message that already holds its
    /// cause must not hand it out again, or users read it twice.
    #[test]
    fn no_message_repeats_its_cause() {
        let errors: Vec<RunError> = vec![
            ImageError::Bundle(wasmvm_abi::DecodeError::Truncated).into(),
            io_err("reading the image")(std::io::Error::other("boom")),
            RunError::Share {
                path: "/x".into(),
                cause: std::io::Error::other("boom"),
            },
            VolumeError::Busy("/v.img".into()).into(),
            BootError::NoEntry.into(),
        ];
        for e in errors {
            let message = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                assert!(
                    !message.contains(&c.to_string()),
                    "`{message}` repeats its cause `{c}`"
                );
                cause = c.source();
            }
        }
    }
}
