//! Preparing a run, the same for every VM backend: the image file checked, guest RAM sized,
//! the network planned and the run configuration (module 0 of the boot) written.

use std::io::Read;

use wasmvm_abi::bundle::RunConfig;

use super::RunOptions;
use super::network::{self, NetPlan};
use crate::RunError;
use crate::error::io_err;
use crate::image::Image;

/// What a VM backend needs to start a run of one image.
pub(crate) struct Prepared {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The network card's plan; `None` for no card.
    pub net_plan: Option<NetPlan>,
    /// The run configuration the guest reads at boot.
    pub run_config: RunConfig,
}

impl Prepared {
    /// Prepares a run of `image` with `opts` on a backend whose user-mode network has link
    /// MTU `user_mtu`. A published port that is taken is refused here, by number, before
    /// anything starts (passt only warns, and QEMU's message names no port).
    pub(crate) fn new(opts: &RunOptions, image: &Image, user_mtu: u16) -> Result<Self, RunError> {
        let net_plan = net_plan(opts, image, user_mtu)?;
        if let Some(plan) = &net_plan {
            network::check_ports(&plan.publish)?;
        }
        let run_config = run_config(opts, net_plan.as_ref())?;
        Ok(Prepared {
            memory_mib: memory_mib(opts, image),
            net_plan,
            run_config,
        })
    }
}

/// The network plan for a run of `image`; `None` for no network card.
fn net_plan(opts: &RunOptions, image: &Image, user_mtu: u16) -> Result<Option<NetPlan>, RunError> {
    let request = network::Request {
        network: opts.network.as_ref(),
        listens: opts.listens.as_deref(),
        publish: &opts.publish,
        publish_all: opts.publish_all,
        tap_config: opts.tap_config,
    };
    Ok(network::plan(
        request,
        &image.manifest,
        image.bundle.module,
        user_mtu,
    )?)
}

/// The run configuration for `opts`: its overrides, the wall clock now, 32 fresh bytes of
/// host entropy for the guest's CSPRNG, and the guest's network settings from `net`.
fn run_config(opts: &RunOptions, net: Option<&NetPlan>) -> Result<RunConfig, RunError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(RunConfig {
        argv0: opts.argv0.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        realtime_ns: std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64),
        random_seed: Some(seed),
        // Volumes come after the shares (a backend that does not serve volumes live has
        // already turned them into shares, in the same place).
        shares: opts
            .shares
            .iter()
            .map(|s| wasmvm_abi::bundle::Share {
                guest_path: s.guest.clone(),
                read_only: s.read_only,
            })
            .chain(opts.volumes.iter().map(|v| wasmvm_abi::bundle::Share {
                guest_path: v.guest.clone(),
                read_only: false,
            }))
            .collect(),
        listens: opts.listens.clone(),
        net: net.and_then(|n| n.config),
        // Both VM backends' stdin pumps keep the window (host::channel::StdinWindow).
        stdin_window: true,
        stdio_terminals: Some(opts.stdio_terminals),
    })
}

/// Checks that `/dev/kvm` can be opened for reading and writing.
pub fn check_kvm() -> Result<(), RunError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| {
            RunError::KvmUnavailable(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "/dev/kvm does not exist: enable virtualization (or nested virtualization) \
                     for this machine, or pass --accel tcg"
                        .to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied on /dev/kvm: add yourself to the `kvm` group".to_string()
                }
                _ => format!("/dev/kvm: {e}"),
            })
        })
}

/// Guest RAM for a run of `image`: `--memory`, else [`default_memory_mib`].
fn memory_mib(opts: &RunOptions, image: &Image) -> u64 {
    opts.memory_mib.unwrap_or_else(|| {
        default_memory_mib(image.bundle.header.total_len(), image.manifest.min_memory)
    })
}

/// Default guest RAM for a bundle: kernel, interpreter state (about 8× the bundle, which
/// holds the module and any packed files, copied once more into the heap) and twice the
/// module's minimum memory (room to grow), rounded up to 2 MiB; at least 64 MiB.
pub fn default_memory_mib(bundle_len: u64, min_memory: u64) -> u64 {
    // Saturating: both come from the image, which may be hostile.
    let bytes = (32u64 << 20)
        .saturating_add(bundle_len.saturating_mul(8))
        .saturating_add(min_memory.saturating_mul(2));
    // At most 3 GiB, like --memory: guest RAM must stay below the device window (and the
    // 4 GiB the page tables map).
    (bytes.div_ceil(2 << 20) * 2).clamp(64, 3072)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_memory_is_clamped() {
        assert_eq!(default_memory_mib(0, 0), 64);
        assert_eq!(default_memory_mib(0, 4 << 30), 3072);
        assert_eq!(default_memory_mib(u64::MAX, u64::MAX - 1), 3072);
    }
}
