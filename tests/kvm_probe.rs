//! The VMM as a library, in this test process: the bare boot path of `wasmvm_loader::vmm`
//! (loads an image into guest memory itself, enters the kernel and sees the guest reach the
//! exit port, or die), and `run_captured`, which runs an image on any backend (both VMs and
//! host mode) and returns its exit and output. Needs KVM (fails without it under `WASMVM_REQUIRE_KVM=1`).

mod common;

use common::*;
use wasmvm_abi::bundle::RunConfig;
use wasmvm_loader::qemu::Qemu;
use wasmvm_loader::reference::HostMode;
use wasmvm_loader::vmm::Builtin;
use wasmvm_loader::vmm::vcpu::{VcpuEnd, probe};
use wasmvm_loader::{Backend, Ending, RunOptions, run_captured};

#[test]
fn the_builtin_vmm_boots_an_image_to_its_exit_port() {
    if !builtin_vmm_usable() {
        return;
    }
    let dir = scratch();
    let img = dir.path().join("silent.img");
    // An app that prints nothing: without devices the guest has no console yet.
    pack(&sample("exitcode"), &img, &["--", "exit", "0"]);
    let (end, ms) = probe(&img, 64, &RunConfig::default()).expect("probe");
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
    let (end, _) = probe(&img, 64, &RunConfig::default()).expect("probe");
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
    let e = probe(&img, 4, &RunConfig::default()).unwrap_err();
    assert!(
        e.to_string().contains("does not fit in guest memory"),
        "{e}"
    );
}

#[test]
fn the_library_runs_an_image_and_returns_exit_and_output() {
    let dir = scratch();
    let img = dir.path().join("exit.img");
    pack(&sample("exitcode"), &img, &[]);
    let mut runs: Vec<Box<dyn Backend>> = vec![Box::new(HostMode)];
    for vmm in backends() {
        match *vmm {
            "builtin" => runs.push(Box::new(Builtin::default())),
            _ => runs.push(Box::new(Qemu::default())),
        }
    }
    for backend in &runs {
        let vmm = backend.name();
        let opts = RunOptions {
            args: Some(vec![b"cat".to_vec()]),
            ..RunOptions::default()
        };
        let out = run_captured(&**backend, &img, &opts, b"in and out".to_vec()).expect("run");
        assert_eq!(out.ending, Ending::Exited(0), "{vmm}");
        assert_eq!(out.stdout, b"in and out", "{vmm}");
        assert!(out.stderr.is_empty(), "{vmm}");
        let opts = RunOptions {
            args: Some(vec![b"exit".to_vec(), b"7".to_vec()]),
            ..RunOptions::default()
        };
        let out = run_captured(&**backend, &img, &opts, Vec::new()).expect("run");
        assert_eq!(out.ending, Ending::Exited(7), "{vmm}");
    }
}
