//! Host mode as a library, alone in its test binary: an app that computes without system
//! calls cannot be preempted in this process, so a stopped run returns and leaves its thread
//! spinning until the process exits. Here that is the end of this one test, not a core
//! taken from the other tests' VMs.

mod common;

use common::*;
use wasmvm_loader::reference::HostMode;
use wasmvm_loader::{Ending, RunOptions, run_captured};

#[test]
fn a_timeout_ends_a_computing_host_mode_app_and_keeps_its_output() {
    // `run_captured` pumps the app's pipes: the app left computing keeps them open, and the
    // run still returns, with what the app wrote before.
    let dir = scratch();
    let img = dir.path().join("spin.img");
    pack(&sample("exitcode"), &img, &[]);
    let opts = RunOptions {
        timeout: Some(std::time::Duration::from_secs(3)),
        args: Some(vec![b"spin".to_vec()]),
        ..Default::default()
    };
    let captured = within(RUN_LIMIT, "a host-mode run with a timeout", move || {
        run_captured(&HostMode, &img, &opts, Vec::new())
    })
    .unwrap();
    assert_eq!(captured.ending, Ending::TimedOut);
    assert_eq!(captured.stdout, b"spinning\n");
}
