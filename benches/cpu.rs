//! Interpreter speed in the VM versus on the host: runs the CPU-bound sample with the same
//! wasmi version in a VM (`wasmvm run`) and in host reference mode (`wasmvm run --vmm
//! host`), and prints a table of medians and the in-VM/host ratio (target: within 1.2x).
//! `cargo bench --bench cpu`.
//!
//! Compute time is measured by the app itself around its work loop (the guest reads
//! kvmclock, the host its monotonic clock), so the ratio compares interpreter speed alone;
//! the wall column adds VM boot or process start-up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

const RUNS: usize = 7;
const SIZE: &str = "10000000";

fn compute_us(stderr: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("compute_us "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no compute_us line in {stderr:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs the image `RUNS` times with `extra` run flags: (compute ms, wall ms, stdout).
fn measure(img: &std::path::Path, extra: &[&str]) -> (f64, f64, String) {
    let (mut compute, mut wall) = (Vec::new(), Vec::new());
    let mut out = String::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let o = common::run(img, extra, b"");
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(o.status.success(), "{}", common::stderr(&o));
        compute.push(compute_us(&common::stderr(&o)) / 1e3);
        out = common::stdout(&o);
    }
    (median(compute), median(wall), out)
}

fn main() {
    let dir = common::scratch();
    let img = dir.path().join("cpu.img");
    common::pack(
        &common::sample("cpu"),
        &img,
        &["--env", "CPU_TIMING=1", "--", SIZE],
    );

    let (vm, vm_wall, vm_out) = measure(&img, &["--vmm", "builtin"]);
    let (qemu, qemu_wall, qemu_out) = measure(&img, &["--vmm", "qemu"]);
    let (host, host_wall, host_out) = measure(&img, &["--vmm", "host"]);
    assert_eq!(
        vm_out, host_out,
        "the VM and the host computed different results"
    );
    assert_eq!(
        qemu_out, host_out,
        "QEMU and the host computed different results"
    );

    println!(
        "CPU-bound sample (cpu.wasm {SIZE}), wasmi 2.0.0, median of {RUNS} runs, accel {}",
        common::accel()
    );
    println!("| where | compute (ms) | wall (ms) |");
    println!("|---|---|---|");
    println!("| VM (wasmvm run, built-in VMM) | {vm:.1} | {vm_wall:.1} |");
    println!("| VM (wasmvm run --vmm qemu, QEMU microvm) | {qemu:.1} | {qemu_wall:.1} |");
    println!("| host (wasmvm run --vmm host: wasmi + wasi-common) | {host:.1} | {host_wall:.1} |");
    println!(
        "in-VM / host compute ratio: {:.2}x built-in, {:.2}x QEMU (target: within 1.20x)",
        vm / host,
        qemu / host
    );
}
