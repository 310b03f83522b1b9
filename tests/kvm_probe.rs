//! The VMM as a library, in this test process: the bare boot path of `wasmvm_loader::vmm`
//! (loads an image into guest memory itself, enters the kernel and sees the guest reach the
//! exit port, or die), and `run_captured`, which runs an image on any backend (both VMs and
//! host mode) and returns its exit and output. Needs KVM (fails without it under `WASMVM_REQUIRE_KVM=1`).

mod common;

use std::path::Path;

use common::*;
use wasmvm_abi::bundle::RunConfig;
use wasmvm_loader::qemu::Qemu;
use wasmvm_loader::reference::HostMode;
use wasmvm_loader::vmm::Builtin;
use wasmvm_loader::vmm::vcpu::{VcpuEnd, probe};
use wasmvm_loader::{Backend, Ending, RunError, RunOptions, run_captured};

/// The VM backends' own timeout for the library runs (a stuck guest ends as a timeout).
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// [`probe`] of `img` in `memory_mib` of RAM, on a thread of its own: a vCPU that never
/// comes back fails the test after [`RUN_LIMIT`] instead of hanging it.
fn probe_within(img: &Path, memory_mib: u64) -> Result<(VcpuEnd, f64), RunError> {
    let img = img.to_path_buf();
    within(RUN_LIMIT, "the vCPU probe", move || {
        probe(&img, memory_mib, &RunConfig::default())
    })
}

#[test]
fn the_builtin_vmm_boots_an_image_to_its_exit_port() {
    if !builtin_vmm_usable() {
        return;
    }
    let dir = scratch();
    let img = dir.path().join("silent.img");
    // An app that prints nothing: without devices the guest has no console yet.
    pack(&sample("exitcode"), &img, &["--", "exit", "0"]);
    let (end, ms) = probe_within(&img, 64).expect("probe");
    assert_eq!(end, VcpuEnd::ExitPort, "after {ms:.1} ms");
    eprintln!("built-in VMM: image loaded, booted and at the exit port in {ms:.1} ms");
}

#[test]
fn the_builtin_vmm_reports_a_triple_fault() {
    if !builtin_vmm_usable() {
        return;
    }
    let dir = scratch();
    let img = dir.path().join("crash.img");
    pack(&sample("exitcode"), &img, &["--", "exit", "0"]);
    patch_entry_with_ud2(&img);
    let (end, _) = probe_within(&img, 64).expect("probe");
    assert!(matches!(end, VcpuEnd::Crashed(_)), "{end:?}");
}

#[test]
fn the_builtin_vmm_refuses_an_image_larger_than_guest_memory() {
    if !builtin_vmm_usable() {
        return;
    }
    let dir = scratch();
    let img = dir.path().join("big.img");
    pack(&sample("exitcode"), &img, &[]);
    // 4 MiB of RAM cannot hold the kernel's 4 MiB stack plus the bundle above 1 MiB.
    let e = probe_within(&img, 4).unwrap_err();
    assert!(
        e.to_string().contains("does not fit in guest memory"),
        "{e}"
    );
}

/// The backend `--vmm NAME` names, with its defaults (made on the thread that runs it).
fn backend_named(name: &str) -> Box<dyn Backend> {
    match name {
        "host" => Box::new(HostMode),
        "builtin" => Box::new(Builtin::default()),
        _ => Box::new(Qemu::default()),
    }
}

#[test]
fn the_library_runs_an_image_and_returns_exit_and_output() {
    let dir = scratch();
    let img = dir.path().join("exit.img");
    pack(&sample("exitcode"), &img, &[]);
    for vmm in backends_and_host() {
        // Each run on a thread of its own (the backend made there), bounded: a hang fails
        // the test instead of stalling it.
        let run = |args: &[&str], stdin: &[u8]| {
            let (vmm, img, stdin): (&'static str, _, _) = (vmm, img.clone(), stdin.to_vec());
            let opts = RunOptions {
                args: Some(args.iter().map(|a| a.as_bytes().to_vec()).collect()),
                timeout: Some(RUN_TIMEOUT),
                ..RunOptions::default()
            };
            within(RUN_LIMIT, &format!("{vmm}: run_captured"), move || {
                let backend = backend_named(vmm);
                assert_eq!(backend.name(), vmm);
                run_captured(&*backend, &img, &opts, stdin).expect("run")
            })
        };
        let out = run(&["cat"], b"in and out");
        assert_eq!(out.ending, Ending::Exited(0), "{vmm}");
        assert_eq!(out.stdout, b"in and out", "{vmm}");
        assert!(out.stderr.is_empty(), "{vmm}");
        let out = run(&["exit", "7"], b"");
        assert_eq!(out.ending, Ending::Exited(7), "{vmm}");
    }
}

#[test]
fn a_library_run_that_times_out_returns_with_what_the_app_wrote() {
    // `tick` sleeps in a system call: host mode refuses its return after the deadline, so
    // its thread ends too (the computing case is in tests/host_mode.rs).
    let dir = scratch();
    let img = dir.path().join("tick.img");
    pack(&sample("exitcode"), &img, &[]);
    for vmm in backends_and_host() {
        let img = img.clone();
        let opts = RunOptions {
            args: Some(vec![b"tick".to_vec()]),
            timeout: Some(std::time::Duration::from_secs(3)),
            ..RunOptions::default()
        };
        let captured = within(RUN_LIMIT, &format!("{vmm}: run_captured"), move || {
            run_captured(&*backend_named(vmm), &img, &opts, Vec::new()).expect("run")
        });
        assert_eq!(captured.ending, Ending::TimedOut, "{vmm}");
        assert_eq!(captured.stdout, b"ticking\n", "{vmm}");
    }
}
