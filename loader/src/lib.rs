//! Everything that starts a wasmvm VM, as a library. The `wasmvm` CLI is a thin layer over
//! this crate, and the integration tests drive it in-process.
//!
//! The modules, by role:
//!
//! | module      | its one job |
//! |-------------|-------------|
//! | [`run`]     | what a run is: options, preparing it, supervising it, how it ended, volumes, and the one dispatcher |
//! | [`vmm`]     | the built-in KVM micro-VMM backend: guest layout, boot state, the vCPU, devices |
//! | [`qemu`]    | the QEMU microvm backend |
//! | [`reference`] | host reference mode: the image run on the host, the oracle VMs are tested against |
//! | [`image`]   | the image file: ELF, packing, module checks, signing |
//! | [`export`]  | cloud disks and libvirt domains |
//! | [`host`]    | the host ends of guest contracts: the framed channel, the 9P server, volumes |
//!
//! A backend is anything that implements [`Backend`]; [`run::run`] runs an image on one, with
//! the run's volumes around it, and [`run::run_captured`] does the same with the app's output
//! collected.

pub mod error;
pub mod export;
pub mod host;
pub mod image;
pub mod qemu;
pub mod reference;
pub mod run;
#[cfg(test)]
mod test_support;
pub mod vmm;

use std::path::Path;

pub use error::RunError;
pub use run::{
    Captured, Control, Ending, RunIo, RunOptions, ShareSpec, StopReason, Stopper, VolumeSpec,
    default_memory_mib, run_captured,
};

/// A way to run a packed image to its end: the built-in VMM ([`vmm::Builtin`]), QEMU
/// ([`qemu::Qemu`]) or the host ([`reference::HostMode`]). What only one backend needs lives
/// in that backend's own type; [`RunOptions`] holds what every backend honours.
pub trait Backend {
    /// The name the CLI's `--vmm` gives it.
    fn name(&self) -> &'static str;

    /// Runs the image at `image` with `opts` (volumes already turned into shares by
    /// [`run::run`] unless it [serves volumes](Backend::serves_volumes)), its streams on
    /// `io`, until it ends or `control` stops it.
    fn run(
        &self,
        image: &Path,
        opts: &RunOptions,
        io: RunIo,
        control: Control,
    ) -> Result<Ending, RunError>;

    /// Whether it serves `--volume` images itself, live (the built-in VMM, through
    /// `host::volume::live`). Otherwise [`run::run`] checks each volume out into a
    /// directory around the run and writes it back at the end.
    fn serves_volumes(&self) -> bool {
        false
    }
}
