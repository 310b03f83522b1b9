//! Interpreter speed in the VM versus on the host: runs the CPU-bound sample with the same
//! wasmi version in a VM (`wasmvm run`) and in-process on the host, and prints a table of
//! medians and the in-VM/host ratio (target: within 1.2x). `cargo bench --bench cpu`.
//!
//! Compute time is measured by the app itself around its work loop (the guest reads
//! kvmclock, the host its monotonic clock), so the ratio compares interpreter speed alone;
//! the wall column adds VM boot and process start-up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmvm_loader::host::{self, HostPlatform};

const RUNS: usize = 5;
const SIZE: &str = "3000000";

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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

fn main() {
    let wasm_path = common::sample("cpu");
    let wasm = std::fs::read(&wasm_path).unwrap();
    let dir = common::scratch();
    let img = dir.path().join("cpu.img");
    common::pack(&wasm_path, &img, &["--", SIZE]);

    let (mut vm_compute, mut vm_wall) = (Vec::new(), Vec::new());
    let mut vm_stdout = String::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let o = common::run(&img, &[], b"");
        vm_wall.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(o.status.success(), "{}", common::stderr(&o));
        vm_compute.push(compute_us(&common::stderr(&o)) / 1e3);
        vm_stdout = common::stdout(&o);
    }

    let (mut host_compute, mut host_wall) = (Vec::new(), Vec::new());
    let mut host_stdout = String::new();
    for _ in 0..RUNS {
        let (out, err) = (Shared::default(), Shared::default());
        let t = Instant::now();
        let platform = HostPlatform::new(
            Box::new(std::io::empty()),
            Box::new(out.clone()),
            Box::new(err.clone()),
        );
        let args = vec![b"cpu.wasm".to_vec(), SIZE.as_bytes().to_vec()];
        let status = host::run(&wasm, args, Vec::new(), platform).expect("host run");
        host_wall.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 0);
        host_compute.push(compute_us(&String::from_utf8_lossy(&err.0.lock().unwrap())) / 1e3);
        host_stdout = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    }
    assert_eq!(
        vm_stdout, host_stdout,
        "the VM and the host computed different results"
    );

    let (vm, host) = (median(vm_compute), median(host_compute));
    println!(
        "CPU-bound sample (cpu.wasm {SIZE}), wasmi 2.0.0, median of {RUNS} runs, accel {}",
        common::accel()
    );
    println!("| where | compute (ms) | wall (ms) |");
    println!("|---|---|---|");
    println!(
        "| VM (wasmvm run, QEMU microvm) | {vm:.1} | {:.1} |",
        median(vm_wall)
    );
    println!(
        "| host (wasmi in-process) | {host:.1} | {:.1} |",
        median(host_wall)
    );
    println!(
        "in-VM / host compute ratio: {:.2}x (target: within 1.20x)",
        vm / host
    );
}
